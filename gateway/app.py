"""The gateway's HTTP side: a FastAPI factory and an in-process uvicorn server.

The full REST API, accounts and consoles come with the central-consoles work; this is what the
foundation needs: health, alarms with their timeline, device and edge status, relay counters.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any, Literal

import uvicorn
from fastapi import FastAPI, Header, HTTPException, Query
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


class AlarmDetail(AlarmOut):
    timeline: list[StepOut]


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
        return out

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
