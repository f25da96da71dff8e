"""Alarm pictures: for the roles in ``evidence.roles`` on their campuses, and the signed,
expiring verification links the police get (no login: the link is the credential)."""

from __future__ import annotations

import html
import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated

from fastapi import APIRouter, Depends, HTTPException
from fastapi.responses import FileResponse, HTMLResponse

from gateway.api.auth import Principal, require
from gateway.api.common import IdPath
from gateway.store.models import EvidenceRow
from gateway.store.repo import aware

if TYPE_CHECKING:
    from gateway.service import GatewayRuntime

log = logging.getLogger(__name__)


def router(rt: GatewayRuntime) -> APIRouter:
    api = APIRouter(tags=["alarms"])

    def picture(relative: str, content_type: str | None = None) -> FileResponse:
        """A picture or a video clip (range requests work: a player can seek)."""
        try:
            path = rt.vault.path(relative)
        except ValueError:
            raise HTTPException(404, "no such picture") from None
        if not path.is_file():
            raise HTTPException(410, "the picture is past its retention")
        return FileResponse(
            path,
            media_type=content_type or "image/jpeg",
            headers={"Cache-Control": "private, no-store"},
        )

    def check_link(alarm_id: str, exp: int, sig: str) -> None:
        if not rt.vault.check_link(alarm_id, exp, sig):
            raise HTTPException(403, "this link is not valid or has expired")

    @api.get(
        "/api/evidence/{evidence_id}",
        response_class=FileResponse,
        responses={200: {"content": {"image/jpeg": {}, "video/mp4": {}}}},
    )
    async def evidence(
        evidence_id: IdPath, who: Annotated[Principal, Depends(require("evidence.read"))]
    ) -> FileResponse:
        """An alarm's picture or video clip: for the roles in ``evidence.roles``, on their own
        campuses."""
        row = await rt.store.evidence(evidence_id)
        if row is None or row.path is None or not who.may_act_on(row.campus):
            raise HTTPException(404, f"no picture {evidence_id}")
        if who.role not in rt.cfg.evidence.roles:
            log.warning("refused picture %s to %s (role %s)", evidence_id, who.user, who.role)
            raise HTTPException(403, f"role {who.role} may not see alarm pictures")
        log.info("picture %s of alarm %s shown to %s", evidence_id, row.event_id, who.user)
        return picture(row.path, row.content_type)

    @api.get("/verify/{alarm_id}", response_class=HTMLResponse, include_in_schema=False)
    async def verify_page(alarm_id: str, exp: int, sig: str) -> HTMLResponse:
        """The page a DC-09 x-data V link opens: the alarm and its pictures, no login (the
        signed, expiring link is the credential); refreshes while pictures may still come."""
        check_link(alarm_id, exp, sig)
        found = await rt.store.alarm(alarm_id)
        if found is None:
            raise HTTPException(404, "no such alarm")
        row, _ = found
        campus = next((c for c in rt.cfg.campuses if c.id == row.campus), None)
        shots = await rt.store.evidence_for(alarm_id)
        log.info("verification page of alarm %s opened", alarm_id)
        q = f"exp={exp}&sig={html.escape(sig)}"
        items = []
        clips = []
        for e in shots:
            cam = html.escape(e.camera)
            when = aware(e.taken_at)
            stamp = when.strftime("%Y-%m-%d %H:%M:%S UTC") if when else ""
            if e.clip_start is not None:
                clips.append(clip_item(alarm_id, e, q))
            elif e.path:
                items.append(
                    f'<figure><img src="/verify/{alarm_id}/{e.id}?{q}" alt="{cam}">'
                    f"<figcaption>{cam} #{e.shot} {stamp}</figcaption></figure>"
                )
            else:
                items.append(
                    f"<figure><figcaption>{cam}: no picture ({html.escape(e.error or '')})"
                    "</figcaption></figure>"
                )
        title = f"{row.kind} {'(drill) ' if row.drill else ''}{row.location or ''}"
        # Refresh while pictures and clips may still come; not once a clip is there (a
        # refresh would stop the video being watched).
        age = (datetime.now(UTC) - (aware(row.edge_ts) or datetime.now(UTC))).total_seconds()
        refresh = '<meta http-equiv="refresh" content="5">' if not clips and age < 900 else ""
        page = (
            "<!doctype html><html><head><meta charset=utf-8>"
            f"{refresh}"
            f"<title>{html.escape(title)}</title>"
            "<style>body{font-family:sans-serif;margin:1em}img{max-width:100%}"
            "figure{display:inline-block;margin:.5em;max-width:48%}video{max-width:100%}</style></head><body>"
            f"<h1>{html.escape(title)}</h1>"
            f"<p>{html.escape(campus.name if campus and campus.name else row.campus)}"
            f" {html.escape(campus.address if campus else '')}</p>"
            f"<p>{html.escape(row.text)} &middot; {aware(row.edge_ts)} &middot; {row.state}</p>"
            + ("".join(items) or "<p>waiting for pictures&hellip;</p>")
            + ("<h2>Video</h2>" + "".join(clips) if clips else "")
            + "</body></html>"
        )
        return HTMLResponse(page, headers={"Cache-Control": "private, no-store"})

    @api.get("/verify/{alarm_id}/{evidence_id}", include_in_schema=False)
    async def verify_picture(alarm_id: str, evidence_id: str, exp: int, sig: str) -> FileResponse:
        check_link(alarm_id, exp, sig)
        row = await rt.store.evidence(evidence_id)
        if row is None or row.event_id != alarm_id or row.path is None:
            raise HTTPException(404, "no such picture")
        return picture(row.path, row.content_type)

    return api


def _hms(ts: datetime | None) -> str:
    t = aware(ts)
    return t.strftime("%H:%M:%S") if t else "?"


def clip_item(alarm_id: str, e: EvidenceRow, q: str) -> str:
    """A clip on the verification page: the player, a download link, the interval and gaps."""
    cam = html.escape(e.camera)
    span = f"{_hms(e.clip_start)}&ndash;{_hms(e.clip_end)} UTC"
    gaps = "".join(
        f"<li>no video {html.escape(str(g.get('start', ''))[11:19])}&ndash;"
        f"{html.escape(str(g.get('end', ''))[11:19])}: {html.escape(str(g.get('reason', '')))}"
        "</li>"
        for g in (e.gaps or [])
        if isinstance(g, dict)
    )
    gaps_html = f"<ul>{gaps}</ul>" if gaps else ""
    if not e.path:
        return (
            f"<figure><figcaption>{cam}: no video ({html.escape(e.error or '')}) "
            f"{span}</figcaption>{gaps_html}</figure>"
        )
    src = f"/verify/{alarm_id}/{e.id}?{q}"
    ctype = html.escape(e.content_type or "video/mp4")
    return (
        f'<figure class="clip"><video controls preload="metadata" src="{src}" '
        f'type="{ctype}"></video><figcaption>{cam} {span} '
        f'<a href="{src}" download="{alarm_id}-{cam}.mp4">download</a></figcaption>'
        f"{gaps_html}</figure>"
    )
