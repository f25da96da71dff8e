"""The gateway's HTTP side: a FastAPI factory and an in-process uvicorn server.

The routes live in ``gateway.api`` (REST, one module per subject), ``gateway.web`` (the
consoles) and ``gateway.notify.api``; every route names a permission
(``gateway.api.auth.PERMISSIONS``) or is listed in ``gateway.api.auth.PUBLIC``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import uvicorn
from fastapi import FastAPI

if TYPE_CHECKING:
    from gateway.service import GatewayRuntime


def create_app(rt: GatewayRuntime) -> FastAPI:
    app = FastAPI(
        title="CampusGuard gateway",
        version="0.1.0",
        description=(
            "Log in (`POST /api/auth/login`, a session cookie and a CSRF token) or send "
            "`Authorization: Bearer <token>`. Every error answers "
            '`{"detail": ..., "status": <int>, "error": "<code>"}`. Lists that grow '
            "(alarms) are paged: pass the `X-Next-Cursor` header of a page as `before`."
        ),
    )
    from gateway.api import (
        alarms,
        commands,
        devices,
        drills,
        evidence,
        maintenance,
        ops,
        reports,
        selftest,
        telemetry,
    )
    from gateway.api.common import add_error_handlers

    add_error_handlers(app)
    from gateway.api import accounts
    from gateway.api.auth import Authenticator

    app.state.auth = Authenticator(rt)
    app.include_router(accounts.router(rt))
    from gateway.web import admin, dispatch, inspector, pages, technician

    web = pages.add_routes(app, rt)  # the central consoles' login, language and live stream
    dispatch.add_routes(app, rt, web)
    technician.add_routes(app, rt, web)
    inspector.add_routes(app, rt, web)
    admin.add_routes(app, rt, web)
    from gateway.notify.api import add_routes as add_notify_routes

    add_notify_routes(app, rt)  # people told: ack links and each alarm's notifications
    for module in (
        ops,
        alarms,
        evidence,
        devices,
        commands,
        selftest,
        reports,
        maintenance,
        drills,
        telemetry,
    ):
        app.include_router(module.router(rt))
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
