"""The consoles' common pages: log in, language, the landing redirect and the live stream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles

from gateway.api.auth import authenticator
from gateway.web.kit import HERE, HOME, LANG_COOKIE, Web
from webkit.hub import Subscriber
from webkit.i18n import LANGUAGES

if TYPE_CHECKING:
    from gateway.service import GatewayRuntime

KEEPALIVE_S = 15.0


def _safe_next(target: str | None) -> str | None:
    """Only a path of this site (never ``//host`` or a scheme): no open redirect."""
    if target and target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return None


def add_routes(app: FastAPI, rt: GatewayRuntime) -> Web:
    web = Web(rt)
    app.state.web = web
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")

    @app.get("/login", include_in_schema=False)
    async def login_page(request: Request, next: str | None = None) -> HTMLResponse:
        return web.page(request, "login.html", None, next=_safe_next(next) or "")

    @app.get("/lang/{code}", include_in_schema=False)
    async def language(code: str, request: Request) -> RedirectResponse:
        back = _safe_next(request.headers.get("referer", "").partition(request.url.netloc)[2])
        answer = RedirectResponse(back or "/", status_code=303)
        if code in LANGUAGES:
            answer.set_cookie(LANG_COOKIE, code, max_age=365 * 86400, samesite="strict")
        return answer

    @app.get("/", include_in_schema=False)
    async def landing(request: Request) -> RedirectResponse:
        who = await authenticator(request).identify(request)
        if who is None or who.via != "session":
            return RedirectResponse("/login", status_code=303)
        return RedirectResponse(HOME.get(who.role, "/login"), status_code=303)

    @app.get("/stream", include_in_schema=False)
    async def stream(request: Request) -> StreamingResponse:
        """One SSE stream per tab: every live frame for the campuses this user may see."""
        who = await web.viewer(request)
        scope = None if "*" in who.campuses else frozenset(who.campuses)
        sub = web.hub.subscribe(web.translator(request).language, scope)

        async def frames(sub: Subscriber) -> AsyncIterator[str]:
            try:
                yield "retry: 2000\n\n"
                while True:
                    try:
                        frame = await asyncio.wait_for(sub.queue.get(), KEEPALIVE_S)
                    except TimeoutError:
                        yield ": keep-alive\n\n"
                        continue
                    if frame is None:
                        yield 'data: {"type": "reload"}\n\n'
                        return
                    yield frame
            finally:
                web.hub.unsubscribe(sub)

        return StreamingResponse(
            frames(sub),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> Response:
        return Response(status_code=204)

    return web
