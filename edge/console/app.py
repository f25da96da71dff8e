"""The console's web app (a factory over the running edge) and the server the edge runs it on,
in its own event loop, like the gateway's API (``gateway/app.py`` ``serve_http``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import uvicorn
from fastapi import FastAPI, Form, HTTPException, Request
from fastapi.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from fastapi.staticfiles import StaticFiles

from contract.models import BollardCommandMessage, new_id, utcnow
from drivers.onvif import CameraError
from edge.console.auth import COOKIE, CSRF_HEADER, Session, same_origin, tokens_match
from edge.console.hub import Subscriber
from edge.console.i18n import LANGUAGES, Translator
from edge.console.service import BOARD_LIMIT, CLIP_TYPES, ConsoleService
from edge.console.store import DISPOSITIONS

if TYPE_CHECKING:
    from edge.daemon import EdgeRuntime

log = logging.getLogger(__name__)

LANG_COOKIE = "cg_lang"
KEEPALIVE = 15.0
"""Seconds between SSE comments on a quiet stream: proxies and the browser keep it open, and a
dead tab is noticed at the next write."""
SNAPSHOT_MAX_AGE = 2.0
"""A gate picture younger than this is served again: several tabs refreshing every few seconds
must not multiply the requests to the camera."""
SNAPSHOT_TIMEOUT = 5.0
COMMAND_TTL = 30.0
"""Validity of a bollard command from the console (the policy's max_validity bounds it)."""
NOTE_MAX = 400


def create_app(svc: ConsoleService) -> FastAPI:
    rt = svc.rt
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    app.mount("/static", StaticFiles(directory=Path(__file__).parent / "static"), name="static")
    snapshots: dict[str, tuple[float, bytes]] = {}
    snapshot_locks: dict[str, asyncio.Lock] = {}

    def translator(request: Request) -> Translator:
        lang = request.cookies.get(LANG_COOKIE) or svc.cfg.language
        return Translator(lang)

    def address(request: Request) -> str:
        return request.client.host if request.client else "-"

    def current(request: Request) -> Session | None:
        return svc.accounts.session(request.cookies.get(COOKIE))

    def page_session(request: Request) -> Session:
        s = current(request)
        if s is None:
            raise HTTPException(303, headers={"Location": "/login?expired=1"})
        return s

    def api_session(request: Request) -> Session:
        """For a POST: a live session, from a page of this console (Origin or Referer), with
        the session's CSRF token in the header or the form."""
        if not same_origin(
            request.headers.get("origin"),
            request.headers.get("referer"),
            request.headers.get("host"),
        ):
            raise HTTPException(403, "cross-site request refused")
        s = current(request)
        if s is None:
            raise HTTPException(401, "session expired")
        if not tokens_match(s.csrf, request.headers.get(CSRF_HEADER)):
            raise HTTPException(403, "cross-site request refused")
        return s

    def page(request: Request, template: str, s: Session | None, **ctx: Any) -> HTMLResponse:
        t = translator(request)
        html = svc.render(
            template,
            t,
            session=s,
            b=svc.banner_state(),
            js=t.prefixed("js."),
            languages=LANGUAGES,
            path=request.url.path,
            **ctx,
        )
        return HTMLResponse(
            html,
            headers={
                "Cache-Control": "no-store",
                "Content-Security-Policy": (
                    "default-src 'self'; img-src 'self' data:; style-src 'self'; "
                    "script-src 'self'; frame-ancestors 'none'"
                ),
                "X-Frame-Options": "DENY",
                "Referrer-Policy": "same-origin",
            },
        )

    # --- log in -----------------------------------------------------------------------------

    @app.get("/login")
    async def login_page(request: Request, expired: int = 0) -> HTMLResponse:
        return page(request, "login.html", None, error=None, expired=bool(expired), user="")

    @app.post("/login", response_model=None)
    async def login(
        request: Request,
        user: Annotated[str, Form(max_length=64)] = "",
        password: Annotated[str, Form(max_length=256)] = "",
    ) -> Response:
        t = translator(request)
        addr = address(request)
        if not same_origin(
            request.headers.get("origin"),
            request.headers.get("referer"),
            request.headers.get("host"),
        ):
            raise HTTPException(403, "cross-site request refused")
        keys = (f"user:{user}", f"addr:{addr}")
        wait = svc.accounts.limiter.blocked(*keys)
        if wait > 0:
            await svc.audit(user or "-", addr, "login_blocked", f"{wait:.0f}s")
            resp = page(
                request,
                "login.html",
                None,
                error=t("login.too_many", minutes=max(1, round(wait / 60))),
                expired=False,
                user=user,
            )
            resp.status_code = 429
            return resp
        # argon2 is deliberately slow: verify off the event loop, alarms keep flowing.
        session = await asyncio.to_thread(svc.accounts.login, user, password)
        if session is None:
            svc.accounts.limiter.fail(*keys)
            await svc.audit(user or "-", addr, "login_failed")
            resp = page(
                request, "login.html", None, error=t("login.failed"), expired=False, user=user
            )
            resp.status_code = 401
            return resp
        svc.accounts.limiter.clear(f"user:{user}")
        await svc.audit(session.user, addr, "login", session.role)
        done = RedirectResponse("/board", status_code=303)
        done.set_cookie(COOKIE, session.token, httponly=True, samesite="strict", path="/")
        return done

    @app.post("/logout")
    async def logout(request: Request) -> JSONResponse:
        s = api_session(request)
        svc.accounts.logout(request.cookies.get(COOKIE))
        await svc.audit(s.user, address(request), "logout")
        resp = JSONResponse({"ok": True})
        resp.delete_cookie(COOKIE, path="/")
        return resp

    @app.get("/lang/{code}")
    async def language(code: str, request: Request) -> RedirectResponse:
        back = request.headers.get("referer") or "/board"
        if not same_origin(None, back, request.headers.get("host")):
            back = "/board"
        resp = RedirectResponse(back, status_code=303)
        if code in LANGUAGES:
            resp.set_cookie(LANG_COOKIE, code, samesite="strict", path="/", max_age=365 * 86400)
        return resp

    @app.get("/session")
    async def whoami(request: Request) -> JSONResponse:
        s = current(request)
        if s is None:
            return JSONResponse({"ok": False}, status_code=401)
        return JSONResponse({"ok": True, "user": s.user, "role": s.role})

    # --- pages ------------------------------------------------------------------------------

    @app.get("/")
    async def root() -> RedirectResponse:
        return RedirectResponse("/board", status_code=303)

    @app.get("/board")
    async def board(request: Request) -> HTMLResponse:
        s = page_session(request)
        alarms = [await svc.alarm_view(r) for r in await svc.store.alarms(limit=BOARD_LIMIT)]
        drills = rt.drills
        return page(
            request,
            "board.html",
            s,
            alarms=alarms,
            plan=svc.cfg.plan,
            zones=svc.zones,
            dispositions=DISPOSITIONS,
            drills_enabled=drills is not None,
            drill_kinds=("fire", "earthquake", "stampede", "intruder", "other"),
            drill_minutes=rt.cfg.drills.default_minutes,
        )

    @app.get("/bollards")
    async def bollards(request: Request) -> HTMLResponse:
        s = page_session(request)
        return page(request, "bollards.html", s, controllers=svc.bollard_view())

    @app.get("/devices")
    async def devices(request: Request) -> HTMLResponse:
        s = page_session(request)
        return page(request, "devices.html", s, rows=svc.device_rows())

    @app.get("/audit")
    async def audit(request: Request) -> HTMLResponse:
        s = page_session(request)
        if s.role != "supervisor":
            raise HTTPException(403, "supervisors only")
        return page(request, "audit.html", s, entries=await svc.store.audit_log())

    # --- live feed --------------------------------------------------------------------------

    @app.get("/stream")
    async def stream(request: Request) -> StreamingResponse:
        if current(request) is None:
            raise HTTPException(401, "session expired")
        sub = svc.hub.subscribe(translator(request).language)

        async def frames(sub: Subscriber) -> AsyncIterator[str]:
            try:
                yield "retry: 2000\n\n"
                while True:
                    try:
                        frame = await asyncio.wait_for(sub.queue.get(), KEEPALIVE)
                    except TimeoutError:
                        yield ": keep-alive\n\n"
                        continue
                    if frame is None:
                        return
                    yield frame
            finally:
                svc.hub.unsubscribe(sub)

        return StreamingResponse(
            frames(sub),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    # --- alarms -----------------------------------------------------------------------------

    @app.post("/alarms/{alarm_id}/ack")
    async def acknowledge(
        alarm_id: str, request: Request, note: Annotated[str, Form(max_length=NOTE_MAX)] = ""
    ) -> JSONResponse:
        s = api_session(request)
        t = translator(request)
        won, rec = await svc.store.acknowledge(alarm_id, s.user, utcnow().isoformat(), note)
        if rec is None:
            raise HTTPException(404, "no such alarm")
        if not won:
            by = rec.ack_by or rec.closed_by or "-"
            return JSONResponse(
                {"ok": False, "error": t("alarm.already_acked", user=by), "by": by},
                status_code=409,
            )
        await svc.audit(s.user, address(request), "alarm_acknowledged", f"{alarm_id} {note}")
        await svc.guard_action(rec, "acknowledged", s.user, note, None)
        await svc.alarm_frame(rec)
        await svc.recount()
        return JSONResponse({"ok": True})

    @app.post("/alarms/{alarm_id}/close")
    async def close(
        alarm_id: str,
        request: Request,
        disposition: Annotated[str, Form()],
        note: Annotated[str, Form(max_length=NOTE_MAX)] = "",
    ) -> JSONResponse:
        s = api_session(request)
        t = translator(request)
        if disposition not in DISPOSITIONS:
            raise HTTPException(422, "unknown disposition")
        won, acked, rec = await svc.store.close(
            alarm_id, s.user, utcnow().isoformat(), disposition, note
        )
        if rec is None:
            raise HTTPException(404, "no such alarm")
        if not won:
            by = rec.closed_by or "-"
            return JSONResponse(
                {"ok": False, "error": t("alarm.already_closed", user=by), "by": by},
                status_code=409,
            )
        await svc.audit(
            s.user, address(request), "alarm_closed", f"{alarm_id} {disposition} {note}"
        )
        if acked:
            await svc.guard_action(rec, "acknowledged", s.user, note, None)
        await svc.guard_action(rec, "closed", s.user, note, disposition)
        # Closing a latched panic is its reset: only now does the alarm end (audited).
        if await svc.rt.sink.reset(rec.event, s.user) is not None:
            await svc.audit(s.user, address(request), "alarm_reset", alarm_id)
        await svc.alarm_frame(rec)
        await svc.recount()
        return JSONResponse({"ok": True})

    @app.get("/evidence/{alarm_id}/{evidence_id}")
    async def evidence(alarm_id: str, evidence_id: str, request: Request) -> FileResponse:
        page_session(request)
        for rec in await rt.outbox.evidence_for(alarm_id):
            if rec.id == evidence_id and rec.path:
                # FileResponse answers 404 itself when the file was pruned meanwhile.
                kind = CLIP_TYPES.get(Path(rec.path).suffix.lower(), "image/jpeg")
                return FileResponse(rec.path, media_type=kind)
        raise HTTPException(404, "no such picture")

    @app.get("/plan-image")
    async def plan_image(request: Request) -> FileResponse:
        page_session(request)
        image = svc.cfg.plan.image
        if image is None or not image.is_file():
            raise HTTPException(404, "no plan image")
        return FileResponse(image)

    @app.get("/sound.wav")
    async def sound() -> Response:
        return Response(svc.sound, media_type="audio/wav")

    # --- bollards ---------------------------------------------------------------------------

    async def bollard_command(
        request: Request,
        device: str,
        index: int,
        s: Session,
        *,
        action: str | None,
        step: str,
        command_id: str | None = None,
        token: str | None = None,
        reason: str = "",
    ) -> JSONResponse:
        t = translator(request)
        poller = rt.bollards.get(device)
        if poller is None:
            raise HTTPException(404, "no such bollard controller")
        now = utcnow()
        try:
            msg = BollardCommandMessage(
                id=command_id or new_id(),
                campus=rt.cfg.campus.id,
                device=device,
                bollard=index,
                step=step,  # type: ignore[arg-type]
                action=action,  # type: ignore[arg-type]
                token=token,
                user=s.user,
                role=s.role,
                reason=reason[:200],
                issued_at=now,
                expires_at=now + timedelta(seconds=COMMAND_TTL),
            )
        except ValueError:
            raise HTTPException(422, "invalid command") from None
        decision = await poller.handle_command(msg)
        await svc.audit(
            s.user,
            address(request),
            f"bollard_{step}",
            f"{device}/{index} {action or ''} -> {decision.outcome if decision else 'invalid'}",
        )
        if decision is None:
            return JSONResponse(
                {"outcome": "refused", "message": t("refusal.invalid")}, status_code=422
            )
        message = (
            t(f"refusal.{decision.code}") if decision.code else t(f"outcome.{decision.outcome}")
        )
        return JSONResponse(
            {
                "outcome": decision.outcome,
                "code": decision.code,
                "message": message,
                "detail": decision.reason,
                "command_id": decision.command_id,
                "token": decision.token,
                "confirm_in": (
                    max(0.0, (decision.confirm_by - now).total_seconds())
                    if decision.confirm_by
                    else None
                ),
            }
        )

    @app.post("/bollards/{device}/{index}")
    async def bollard_request(
        device: str,
        index: int,
        request: Request,
        action: Annotated[str, Form()],
        reason: Annotated[str, Form(max_length=200)] = "",
    ) -> JSONResponse:
        s = api_session(request)
        if action not in ("raise", "lower", "stop", "emergency_raise"):
            raise HTTPException(422, "unknown action")
        return await bollard_command(
            request, device, index, s, action=action, step="request", reason=reason
        )

    @app.post("/bollards/{device}/{index}/confirm")
    async def bollard_confirm(
        device: str,
        index: int,
        request: Request,
        command_id: Annotated[str, Form(min_length=26, max_length=26)],
        token: Annotated[str, Form(max_length=128)],
    ) -> JSONResponse:
        s = api_session(request)
        return await bollard_command(
            request,
            device,
            index,
            s,
            action=None,
            step="confirm",
            command_id=command_id,
            token=token,
        )

    @app.get("/camera/{camera_id}.jpg")
    async def camera_image(camera_id: str, request: Request) -> Response:
        page_session(request)
        watcher = rt.cameras.get(camera_id)
        if watcher is None:
            raise HTTPException(404, "no such camera")
        lock = snapshot_locks.setdefault(camera_id, asyncio.Lock())
        async with lock:
            cached = snapshots.get(camera_id)
            if cached is None or time.monotonic() - cached[0] > SNAPSHOT_MAX_AGE:
                try:
                    image = await asyncio.wait_for(watcher.evidence_snapshot(), SNAPSHOT_TIMEOUT)
                except (CameraError, TimeoutError, OSError) as exc:
                    raise HTTPException(503, f"no picture: {exc}") from None
                cached = (time.monotonic(), image)
                snapshots[camera_id] = cached
        return Response(cached[1], media_type="image/jpeg", headers={"Cache-Control": "no-store"})

    # --- drills -----------------------------------------------------------------------------

    @app.post("/drill/start")
    async def drill_start(
        request: Request,
        kind: Annotated[str, Form()] = "other",
        minutes: Annotated[float | None, Form(gt=0)] = None,
    ) -> JSONResponse:
        s = api_session(request)
        t = translator(request)
        if s.role != "supervisor":
            raise HTTPException(403, "supervisors only")
        drills = getattr(rt, "drills", None)
        if drills is None:
            raise HTTPException(503, "drills are not available")
        from edge.drills import DrillRefused

        try:
            d = await drills.start(kind, minutes, s.user, source="console")
        except DrillRefused as exc:
            await svc.audit(s.user, address(request), "drill_refused", str(exc))
            return JSONResponse(
                {"ok": False, "error": t("drill.refused"), "detail": str(exc)}, status_code=409
            )
        await svc.audit(s.user, address(request), "drill_start", f"{d.id} {kind} {minutes}")
        svc.publish_banners()
        return JSONResponse({"ok": True, "id": d.id})

    @app.post("/drill/end")
    async def drill_end(request: Request) -> JSONResponse:
        s = api_session(request)
        if s.role != "supervisor":
            raise HTTPException(403, "supervisors only")
        drills = getattr(rt, "drills", None)
        if drills is None:
            raise HTTPException(503, "drills are not available")
        ended = await drills.end(s.user)
        await svc.audit(s.user, address(request), "drill_end", str(ended))
        svc.publish_banners()
        return JSONResponse({"ok": ended})

    return app


@contextlib.asynccontextmanager
async def serve_console(rt: EdgeRuntime) -> AsyncIterator[int]:
    """Run the console in this event loop; yields the bound port."""
    cfg = rt.cfg.console
    async with ConsoleService(rt) as svc:
        config = uvicorn.Config(
            create_app(svc),
            host=cfg.host,
            port=cfg.port,
            log_level="warning",
            lifespan="off",
            # Open SSE streams end when the hub closes; this bounds the wait for any other.
            timeout_graceful_shutdown=2,
        )
        server = uvicorn.Server(config)
        task = asyncio.create_task(server.serve(), name="console-http")
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("console HTTP server stopped at start")
            await asyncio.sleep(0.01)
        port = int(server.servers[0].sockets[0].getsockname()[1])
        rt.console = svc
        log.info("guard console on http://%s:%d/", cfg.host, port)
        try:
            yield port
        finally:
            rt.console = None
            svc.hub.close()
            server.should_exit = True
            with contextlib.suppress(asyncio.CancelledError):
                await task
