"""The admin console: users, API tokens and the audit log.

``/admin`` lists the users (role, campuses, disabled, locked) with their controls (change role
and campuses, disable or enable, unlock, reset the password), a form to create one, every API
token with a revoke button, and the audit log with filters (user, action, outcome, dates, text)
and a CSV export of the same selection. Every change goes through the REST API
(``/api/users``, ``/api/tokens``: :mod:`gateway.api.accounts`), which checks and audits it.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse

from contract.config import ROLES as ALL_ROLES
from gateway.api.auth import authenticator
from gateway.store.repo import aware

if TYPE_CHECKING:
    from gateway.service import GatewayRuntime
    from gateway.web.kit import Web

ROLES = ("admin",)
AUDIT_LIMIT = 200
OUTCOMES = ("ok", "denied", "failed")


def _day(text: str | None, tz: ZoneInfo) -> datetime | None:
    """A ``YYYY-MM-DD`` of the date inputs as the start of that day (report time zone)."""
    if not text:
        return None
    try:
        return datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=tz)
    except ValueError:
        return None


def _iso(ts: datetime | None) -> str:
    return ts.isoformat() if ts is not None else ""


def add_routes(app: FastAPI, rt: GatewayRuntime, web: Web) -> None:
    """The admin console's page (its actions are the REST API's)."""
    names = {c.id: c.name or c.id for c in rt.cfg.campuses}

    @app.get("/admin", include_in_schema=False)
    async def page(request: Request) -> HTMLResponse:
        who = await web.viewer(request, *ROLES)
        accounts = authenticator(request).accounts
        q = request.query_params
        tz = ZoneInfo(rt.cfg.telemetry.report_timezone)
        f = {
            "user": (q.get("user") or "").strip()[:64],
            "action": (q.get("action") or "").strip()[:64],
            "outcome": q.get("outcome") if q.get("outcome") in OUTCOMES else "",
            "start": q.get("start") or "",
            "end": q.get("end") or "",
            "q": (q.get("q") or "").strip()[:100],
        }
        start = _day(f["start"], tz)
        end = _day(f["end"], tz)
        if end is not None:
            end += timedelta(days=1)  # the end day is included
        if start is None:
            f["start"] = ""
        if end is None:
            f["end"] = ""
        rows = await accounts.audit_log(
            user=f["user"] or None,
            action=f["action"] or None,
            outcome=f["outcome"] or None,
            start=start.astimezone(UTC) if start else None,
            end=end.astimezone(UTC) if end else None,
            search=f["q"] or None,
            limit=AUDIT_LIMIT,
        )
        export: dict[str, str] = {k: v for k, v in f.items() if v and k not in ("start", "end")}
        if start is not None:
            export["start"] = start.isoformat()
        if end is not None:
            export["end"] = end.isoformat()
        now = datetime.now(UTC)
        users = await accounts.users()
        tokens = await accounts.tokens(None)
        return web.page(
            request,
            "admin.html",
            who,
            js_prefixes=("admin.js.",),
            users=users,
            tokens=sorted(tokens, key=lambda t: (t.revoked_at is not None, t.user, t.label)),
            audit=rows,
            audit_limit=AUDIT_LIMIT,
            f=f,
            outcomes=OUTCOMES,
            roles=ALL_ROLES,
            campuses=names,
            csv_url="/api/audit.csv" + (("?" + urlencode(export)) if export else ""),
            now=now,
            aware=aware,
            iso=_iso,
            locked=lambda u: (lu := aware(u.locked_until)) is not None and lu > now,
            min_password=rt.cfg.accounts.min_password_length,
        )
