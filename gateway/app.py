"""The gateway's HTTP side: a FastAPI factory and an in-process uvicorn server.

The full REST API, accounts and consoles come with the central-consoles work; this is what the
foundation needs: health, alarms with their timeline, device and edge status, relay counters.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import html
import logging
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any, Literal

import uvicorn
from fastapi import FastAPI, Header, HTTPException, Query
from fastapi.responses import FileResponse, HTMLResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from contract import topics
from contract.config import ApiToken
from contract.models import BollardCommandMessage, new_id, utcnow
from gateway.store.models import CommandRow
from gateway.store.repo import aware

if TYPE_CHECKING:
    from gateway.service import GatewayRuntime

log = logging.getLogger(__name__)


class CommandIn(BaseModel):
    """A request to operate a bollard; who asks comes from the bearer token, never the body."""

    model_config = ConfigDict(extra="forbid")

    action: Literal["raise", "lower", "stop", "emergency_raise"] | None = None
    step: Literal["request", "confirm"] = "request"
    command_id: str | None = Field(
        None, min_length=26, max_length=26, description="for confirm: the armed command's id"
    )
    token: str | None = Field(None, max_length=128, description="for confirm: from 'armed'")
    reason: str = Field("", max_length=200)
    ttl: float = Field(30.0, gt=0, le=60, description="seconds the command stays valid")


class CommandOut(BaseModel):
    id: str
    campus: str
    device: str
    bollard: int
    action: str | None
    user: str
    role: str
    reason: str
    state: str
    code: str | None
    detail: str
    token: str | None
    issued_at: datetime
    updated_at: datetime


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
    url: str | None = Field(description="the picture (bearer token with an evidence role)")


class AlarmDetail(AlarmOut):
    timeline: list[StepOut]
    evidence: list[EvidenceOut]
    verification_url: str | None = Field(
        None, description="the signed link the police got (x-data V), when one is configured"
    )


def _row(row: Any) -> dict[str, Any]:
    return {
        k: (aware(v) if isinstance(v, datetime) else v)
        for k, v in row.__dict__.items()
        if not k.startswith("_")
    }


def create_app(rt: GatewayRuntime) -> FastAPI:
    app = FastAPI(title="CampusGuard gateway", version="0.1.0")

    @app.get("/healthz")
    async def health() -> dict[str, Any]:
        return {
            "gateway": rt.cfg.gateway.id,
            "broker_connected": rt.mqtt.connected.is_set(),
            "police_paths": {
                name: {"ok": p.ok, "since": p.since, "reason": p.reason}
                for name, p in rt.paths.items()
            },
        }

    @app.get("/api/alarms", response_model=list[AlarmOut])
    async def alarms(
        campus: str | None = None, limit: int = Query(100, ge=1, le=1000)
    ) -> list[dict[str, Any]]:
        return [_row(r) for r in await rt.store.alarms(campus, limit)]

    @app.get("/api/alarms/{alarm_id}", response_model=AlarmDetail)
    async def alarm(alarm_id: str) -> dict[str, Any]:
        found = await rt.store.alarm(alarm_id)
        if found is None:
            raise HTTPException(404, f"no alarm {alarm_id}")
        row, steps = found
        out = _row(row)
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
            }
            for e in await rt.store.evidence_for(alarm_id)
        ]
        out["verification_url"] = rt.vault.link_for(row.id, aware(row.edge_ts))
        return out

    @app.get(
        "/api/evidence/{evidence_id}",
        response_class=FileResponse,
        responses={200: {"content": {"image/jpeg": {}}}},
    )
    async def evidence(
        evidence_id: str, authorization: Annotated[str | None, Header()] = None
    ) -> FileResponse:
        """An alarm's picture: for the roles in ``evidence.roles``, on their own campuses."""
        tok = authorised(authorization)
        row = await rt.store.evidence(evidence_id)
        if row is None or row.path is None or not tok.may_act_on(row.campus):
            raise HTTPException(404, f"no picture {evidence_id}")
        if tok.role not in rt.cfg.evidence.roles:
            log.warning("refused picture %s to %s (role %s)", evidence_id, tok.user, tok.role)
            raise HTTPException(403, f"role {tok.role} may not see alarm pictures")
        log.info("picture %s of alarm %s shown to %s", evidence_id, row.event_id, tok.user)
        return _picture(row.path)

    def _picture(relative: str) -> FileResponse:
        try:
            path = rt.vault.path(relative)
        except ValueError:
            raise HTTPException(404, "no such picture") from None
        if not path.is_file():
            raise HTTPException(410, "the picture is past its retention")
        return FileResponse(
            path, media_type="image/jpeg", headers={"Cache-Control": "private, no-store"}
        )

    def _check_link(alarm_id: str, exp: int, sig: str) -> None:
        if not rt.vault.check_link(alarm_id, exp, sig):
            raise HTTPException(403, "this link is not valid or has expired")

    @app.get("/verify/{alarm_id}", response_class=HTMLResponse, include_in_schema=False)
    async def verify_page(alarm_id: str, exp: int, sig: str) -> HTMLResponse:
        """The page a DC-09 x-data V link opens: the alarm and its pictures, no login (the
        signed, expiring link is the credential); refreshes while pictures may still come."""
        _check_link(alarm_id, exp, sig)
        found = await rt.store.alarm(alarm_id)
        if found is None:
            raise HTTPException(404, "no such alarm")
        row, _ = found
        campus = next((c for c in rt.cfg.campuses if c.id == row.campus), None)
        shots = await rt.store.evidence_for(alarm_id)
        log.info("verification page of alarm %s opened", alarm_id)
        q = f"exp={exp}&sig={html.escape(sig)}"
        items = []
        for e in shots:
            cam = html.escape(e.camera)
            when = aware(e.taken_at)
            stamp = when.strftime("%Y-%m-%d %H:%M:%S UTC") if when else ""
            if e.path:
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
        page = (
            "<!doctype html><html><head><meta charset=utf-8>"
            '<meta http-equiv="refresh" content="5">'
            f"<title>{html.escape(title)}</title>"
            "<style>body{font-family:sans-serif;margin:1em}img{max-width:100%}"
            "figure{display:inline-block;margin:.5em;max-width:48%}</style></head><body>"
            f"<h1>{html.escape(title)}</h1>"
            f"<p>{html.escape(campus.name if campus and campus.name else row.campus)}"
            f" {html.escape(campus.address if campus else '')}</p>"
            f"<p>{html.escape(row.text)} &middot; {aware(row.edge_ts)} &middot; {row.state}</p>"
            + ("".join(items) or "<p>waiting for pictures&hellip;</p>")
            + "</body></html>"
        )
        return HTMLResponse(page, headers={"Cache-Control": "private, no-store"})

    @app.get("/verify/{alarm_id}/{evidence_id}", include_in_schema=False)
    async def verify_picture(alarm_id: str, evidence_id: str, exp: int, sig: str) -> FileResponse:
        _check_link(alarm_id, exp, sig)
        row = await rt.store.evidence(evidence_id)
        if row is None or row.event_id != alarm_id or row.path is None:
            raise HTTPException(404, "no such picture")
        return _picture(row.path)

    @app.get("/api/devices")
    async def devices(campus: str | None = None) -> list[dict[str, Any]]:
        return [_row(r) for r in await rt.store.devices(campus)]

    @app.get("/api/edges")
    async def edges() -> list[dict[str, Any]]:
        return [_row(r) for r in await rt.store.edges()]

    def authorised(authorization: str | None) -> ApiToken:
        presented = (authorization or "").removeprefix("Bearer ").strip()
        for tok in rt.cfg.api_tokens:
            if presented and hmac.compare_digest(presented.encode(), tok.secret().encode()):
                return tok
        raise HTTPException(401, "a valid bearer token is required")

    @app.post(
        "/api/campuses/{campus}/bollards/{device}/{bollard}/commands",
        status_code=202,
        response_model=CommandOut,
    )
    async def bollard_command(
        campus: str,
        device: str,
        bollard: int,
        body: CommandIn,
        authorization: Annotated[str | None, Header()] = None,
    ) -> dict[str, Any]:
        """Send a bollard command to the campus edge, which decides and reports back."""
        tok = authorised(authorization)
        if campus not in {c.id for c in rt.cfg.campuses}:
            raise HTTPException(404, f"no campus {campus}")
        if body.step == "confirm" and (body.command_id is None or body.token is None):
            raise HTTPException(422, "a confirm needs command_id and token")
        if body.step == "request" and body.action is None:
            raise HTTPException(422, "a request needs an action")
        ts = utcnow()
        row = CommandRow(
            id=body.command_id or new_id(),
            campus=campus,
            device=device,
            bollard=bollard,
            action=body.action,
            user=tok.user,
            role=tok.role,
            reason=body.reason,
            issued_at=ts,
            state="sent",
            code=None,
            detail="",
            token=None,
            updated_at=ts,
        )
        if not tok.may_act_on(campus):
            row.state, row.code = "refused", "campus"
            row.detail = f"{tok.user} may not act on campus {campus}"
            await rt.store.record_command(row)
            log.warning("refused command by %s on campus %s: not theirs", tok.user, campus)
            raise HTTPException(403, row.detail)
        try:
            msg = BollardCommandMessage(
                id=row.id,
                campus=campus,
                device=device,
                bollard=bollard,
                step=body.step,
                action=body.action,
                token=body.token,
                user=tok.user,
                role=tok.role,
                reason=body.reason,
                issued_at=ts,
                expires_at=ts + timedelta(seconds=body.ttl),
            )
        except ValidationError as exc:
            raise HTTPException(422, str(exc.errors()[0]["msg"])) from None
        await rt.store.record_command(row)
        try:
            await rt.mqtt.publish(topics.command_topic(campus), msg.model_dump_json().encode())
        except ConnectionError as exc:
            row.state, row.detail, row.updated_at = "failed", str(exc), utcnow()
            await rt.store.record_command(row)
            raise HTTPException(503, f"cannot reach the campus now: {exc}") from None
        return _row(row)

    @app.get("/api/commands/{command_id}", response_model=CommandOut)
    async def command(
        command_id: str, authorization: Annotated[str | None, Header()] = None
    ) -> dict[str, Any]:
        tok = authorised(authorization)
        row = await rt.store.command(command_id)
        if row is None or not tok.may_act_on(row.campus):
            raise HTTPException(404, f"no command {command_id}")
        return _row(row)

    @app.get("/api/commands", response_model=list[CommandOut])
    async def commands(
        campus: str | None = None,
        limit: int = Query(100, ge=1, le=1000),
        authorization: Annotated[str | None, Header()] = None,
    ) -> list[dict[str, Any]]:
        tok = authorised(authorization)
        rows = await rt.store.commands(campus, limit)
        return [_row(r) for r in rows if tok.may_act_on(r.campus)]

    @app.get("/api/stats")
    async def stats() -> dict[str, Any]:
        return {
            "accepted": dict(rt.ingest.accepted),
            "rejected": dict(rt.ingest.reject.counts),
            "duplicates": rt.ingest.duplicates,
            "relay": {
                name: {"delivered": w.delivered, "failed_attempts": w.failed_attempts}
                for name, w in rt.workers.items()
            },
            "relay_pending": await rt.store.pending_jobs(),
        }

    return app


@contextlib.asynccontextmanager
async def serve_http(rt: GatewayRuntime) -> AsyncIterator[int]:
    """Serve the API in this event loop; yields the bound port."""
    assert rt.cfg.gateway.http is not None
    config = uvicorn.Config(
        create_app(rt),
        host=rt.cfg.gateway.http.host,
        port=rt.cfg.gateway.http.port,
        log_level="warning",
        lifespan="off",
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(), name="http")
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError("HTTP server stopped at start")
        await asyncio.sleep(0.01)
    port = int(server.servers[0].sockets[0].getsockname()[1])
    try:
        yield port
    finally:
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await task
