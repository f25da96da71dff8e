"""The gateway's HTTP side: a FastAPI factory and an in-process uvicorn server.

The full REST API, accounts and consoles come with the central-consoles work; this is what the
foundation needs: health, alarms with their timeline, device and edge status, relay counters.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from datetime import datetime
from typing import TYPE_CHECKING, Any

import uvicorn
from fastapi import FastAPI, HTTPException, Query
from pydantic import BaseModel

from gateway.store.repo import aware

if TYPE_CHECKING:
    from gateway.service import GatewayRuntime

log = logging.getLogger(__name__)


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
