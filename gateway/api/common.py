"""What the REST modules share: row conversion, campus scoping of a request, answers in JSON,
CSV or HTML, and the consistent error body of every 4xx/5xx answer."""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import FastAPI, HTTPException, Path, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from sqlalchemy.exc import DataError, DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException

from contract.models import ID_PATTERN
from gateway.api.auth import Principal
from gateway.store.repo import aware

if TYPE_CHECKING:
    from gateway.service import GatewayRuntime

log = logging.getLogger(__name__)

IdPath = Annotated[str, Path(pattern=ID_PATTERN, description="an id (letters, digits, _.:-)")]
"""A path parameter naming a campus, device, alarm, command, drill, ...: anything else is 422
before any lookup."""

_FILE_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")

ERROR_CODES: dict[int, str] = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    410: "gone",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid",
    429: "rate_limited",
    500: "internal",
    502: "bad_gateway",
    503: "unavailable",
    504: "timeout",
}
"""The ``error`` code of each status; others: ``client_error`` / ``server_error``."""


def error_code(status: int) -> str:
    return ERROR_CODES.get(status, "client_error" if status < 500 else "server_error")


def error_body(status: int, detail: Any) -> dict[str, Any]:
    """``{"detail": <str or list>, "status": <int>, "error": <code>}``."""
    return {"detail": detail, "status": status, "error": error_code(status)}


def add_error_handlers(app: FastAPI) -> None:
    """Every 4xx/5xx answer has the same body; redirects (a console page sending a visitor to
    the login page) stay redirects."""

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        headers = dict(exc.headers or {})
        if exc.status_code < 400:
            return Response(status_code=exc.status_code, headers=headers)
        return JSONResponse(
            error_body(exc.status_code, exc.detail), exc.status_code, headers=headers or None
        )

    async def invalid(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return JSONResponse(error_body(422, jsonable_encoder(exc.errors())), 422)

    async def crashed(request: Request, exc: Exception) -> Response:
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return JSONResponse(error_body(500, "internal error (logged on the gateway)"), 500)

    async def unstorable(request: Request, exc: Exception) -> Response:
        # e.g. a NUL character, which PostgreSQL refuses in text: the input's fault, not ours
        if not isinstance(exc, DataError) and "invalid byte sequence" not in str(exc):
            return await crashed(request, exc)
        log.warning(
            "%s %s: the database refused a value: %s", request.method, request.url.path, exc
        )
        return JSONResponse(error_body(422, "a value the database cannot store"), 422)

    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(DBAPIError, unstorable)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(Exception, crashed)


def aware_(ts: datetime) -> datetime:
    out = aware(ts)
    assert out is not None
    return out


def utc(ts: datetime | None, name: str) -> datetime | None:
    """A query's time as UTC (how the store compares); a time without a zone is refused."""
    if ts is None:
        return None
    if ts.tzinfo is None:
        raise HTTPException(422, f"{name} needs a time zone (e.g. +08:00 or Z)")
    return ts.astimezone(UTC)


def row_dict(row: Any) -> dict[str, Any]:
    return {
        k: (aware(v) if isinstance(v, datetime) else v)
        for k, v in row.__dict__.items()
        if not k.startswith("_")
    }


def known_campuses(rt: GatewayRuntime) -> list[str]:
    return [c.id for c in rt.cfg.campuses]


def campuses_of(rt: GatewayRuntime, who: Principal, campus: str | None) -> list[str]:
    """The campuses a request covers: the one asked for (404 if unknown or not the user's),
    else all the user's."""
    known = known_campuses(rt)
    if campus is not None:
        if campus not in known or not who.may_act_on(campus):
            raise HTTPException(404, f"no campus {campus}")
        return [campus]
    return [c for c in known if who.may_act_on(c)]


def scope(rt: GatewayRuntime, who: Principal, campuses: list[str] | None) -> list[str]:
    """Several campuses asked for (repeated ``campus=``), or all the user's."""
    if not campuses:
        return campuses_of(rt, who, None)
    out: list[str] = []
    for c in campuses:
        for one in campuses_of(rt, who, c):
            if one not in out:
                out.append(one)
    return out


def respond(fmt: str, json_body: Any, csv_text: str, html_text: str, name: str) -> Any:
    if fmt == "csv":
        safe = _FILE_UNSAFE.sub("_", name)
        return Response(
            csv_text,
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="{safe}.csv"'},
        )
    if fmt == "html":
        return HTMLResponse(html_text)
    return json_body
