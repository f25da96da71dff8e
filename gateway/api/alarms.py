"""Alarms: the filtered, paginated list, one alarm with its timeline and pictures, and the
police receiver's signed status updates."""

from __future__ import annotations

import json
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from pydantic import BaseModel, Field

from contract.models import ID_PATTERN
from gateway.api.auth import Principal, allowed, require
from gateway.api.common import IdPath, error_body, row_dict, scope, utc
from gateway.api.queries import AlarmFilter, UnknownCursor, alarm_page
from gateway.store.repo import aware

if TYPE_CHECKING:
    from gateway.service import GatewayRuntime

MAX_PAGE = 500
_Word = Annotated[str, Field(pattern=ID_PATTERN)]


class StepOut(BaseModel):
    state: str
    ts: datetime
    path: str | None
    note: str


class AlarmOut(BaseModel):
    id: str
    campus: str
    kind: str
    severity: str
    device: str
    point: str | None
    zone: str | None
    location: str | None
    drill: bool
    text: str
    edge_ts: datetime
    received_at: datetime
    state: str
    police_path: str | None
    police_at: datetime | None


class EvidenceOut(BaseModel):
    id: str
    camera: str
    shot: int
    taken_at: datetime
    size: int
    sha256: str | None
    error: str | None
    url: str | None = Field(description="the picture (for the roles in evidence.roles)")
    content_type: str | None = Field(None, description="image/jpeg, or video/mp4 for a clip")
    clip_start: datetime | None = Field(None, description="a clip: the video covers from ..")
    clip_end: datetime | None = Field(None, description=".. to")
    gaps: list[dict[str, Any]] = Field(
        default_factory=list, description="a clip: stretches without video (start, end, reason)"
    )


class NotifiedOut(BaseModel):
    """One person told of the alarm (issue 13, part 4): how, and whether they acknowledged."""

    recipient: str
    state: str = Field(description="pending, sent or failed")
    via: str | None = Field(description="the channel that reached them (email, sms, webhook)")
    sent_at: datetime | None
    acked_at: datetime | None


class AlarmDetail(AlarmOut):
    timeline: list[StepOut]
    evidence: list[EvidenceOut]
    notified: list[NotifiedOut] = Field(
        default_factory=list, description="school leaders told (when notify is configured)"
    )
    verification_url: str | None = Field(
        None, description="the signed link the police got (x-data V), when one is configured"
    )


def router(rt: GatewayRuntime) -> APIRouter:
    api = APIRouter(tags=["alarms"])

    @api.get("/api/alarms", response_model=list[AlarmOut])
    async def alarms(
        request: Request,
        response: Response,
        who: Annotated[Principal, Depends(require("alarms.read"))],
        campus: Annotated[
            list[_Word] | None, Query(description="repeat for several; default: all yours")
        ] = None,
        kind: Annotated[list[_Word] | None, Query(description="e.g. panic (repeatable)")] = None,
        severity: Annotated[list[_Word] | None, Query(description="repeatable")] = None,
        state: Annotated[list[_Word] | None, Query(description="repeatable")] = None,
        drill: Annotated[bool | None, Query(description="true: drills only; false: none")] = None,
        open_only: Annotated[bool, Query(description="only alarms not closed")] = False,
        since: Annotated[
            datetime | None, Query(description="received at or after (with a time zone)")
        ] = None,
        until: Annotated[
            datetime | None, Query(description="received before (with a time zone)")
        ] = None,
        before: Annotated[
            str | None,
            Query(
                pattern=ID_PATTERN,
                description="page: the alarms after this one (the X-Next-Cursor of a page)",
            ),
        ] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
    ) -> list[dict[str, Any]]:
        """Alarms newest first (by when the gateway received them). When more follow, the
        answer has ``X-Next-Cursor`` (pass it as ``before``) and a ``Link: <...>; rel="next"``
        header."""
        f = AlarmFilter(
            campuses=scope(rt, who, campus),
            kinds=kind or [],
            severities=severity or [],
            states=state or [],
            drill=drill,
            open_only=open_only,
            since=utc(since, "since"),
            until=utc(until, "until"),
        )
        try:
            rows, nxt = await alarm_page(
                rt.store, f, before, limit, every_campus=not campus and who.campus_filter() is None
            )
        except UnknownCursor:
            raise HTTPException(422, "before: no such alarm in your campuses") from None
        if nxt is not None:
            response.headers["X-Next-Cursor"] = nxt
            url = request.url.remove_query_params("before").include_query_params(before=nxt)
            response.headers["Link"] = f'<{url.path}?{url.query}>; rel="next"'
        return [row_dict(r) for r in rows]

    @api.get("/api/alarms/{alarm_id}", response_model=AlarmDetail)
    async def alarm(
        alarm_id: IdPath, who: Annotated[Principal, Depends(require("alarms.read"))]
    ) -> dict[str, Any]:
        """One alarm with its timeline (every step, each path) and its pictures."""
        found = await rt.store.alarm(alarm_id)
        if found is None or not who.may_act_on(found[0].campus):
            raise HTTPException(404, f"no alarm {alarm_id}")
        row, steps = found
        allowed(who, row.campus)
        out = row_dict(row)
        out["timeline"] = [
            {"state": s.state, "ts": aware(s.ts), "path": s.path, "note": s.note} for s in steps
        ]
        out["evidence"] = [
            {
                "id": e.id,
                "camera": e.camera,
                "shot": e.shot,
                "taken_at": aware(e.taken_at),
                "size": e.size,
                "sha256": e.sha256,
                "error": e.error,
                "url": f"/api/evidence/{e.id}" if e.path else None,
                "content_type": e.content_type,
                "clip_start": aware(e.clip_start),
                "clip_end": aware(e.clip_end),
                "gaps": e.gaps or [],
            }
            for e in await rt.store.evidence_for(alarm_id)
        ]
        out["verification_url"] = rt.vault.link_for(row.id, aware(row.edge_ts))
        out["notified"] = [
            {
                "recipient": j.recipient,
                "state": j.state,
                "via": j.via,
                "sent_at": aware(j.sent_at),
                "acked_at": aware(j.acked_at),
            }
            for j in (await rt.notifier.jobs(alarm_id) if rt.notifier is not None else [])
        ]
        return out

    @api.post("/api/police/webhook/status", tags=["police"])
    async def police_status(request: Request) -> Response:
        """The police receiver's status updates (received, dispatched, on_scene, closed),
        signed like the alarms it gets (docs/police-webhook.md); each a step for the campus.
        No login: the HMAC signature is the credential."""
        from gateway.relay.webhook import apply_status

        worker = rt.workers.get("webhook")
        if worker is None:
            raise HTTPException(404, "no webhook sink is configured")
        code, answer = await apply_status(
            rt.store,
            worker.sink.inbox,  # type: ignore[attr-defined]
            request.headers.get("X-CG-Timestamp"),
            request.headers.get("X-CG-Signature"),
            await request.body(),
        )
        if code == 200 and answer.get("changed"):
            rt.mqtt.wake_downlink.set()
        if code >= 400:
            answer = error_body(code, str(answer.get("error", "")))
        return Response(json.dumps(answer), status_code=code, media_type="application/json")

    return api
