"""Who is asking, and may they: sessions for the consoles, bearer tokens for machine clients,
one permission table for every route, campus scoping, and the audit of logins and refusals.

Every route of the gateway names one permission (``Depends(require("alarms.read"))``) or is
listed in ``PUBLIC`` with its reason; a test walks the route table and, for every role, proves
the server refuses what the table does not grant.
"""

from __future__ import annotations

import hmac
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from fastapi import HTTPException, Request

from contract.config import ROLES, Role
from gateway.store.accounts import AccountStore, Identity
from webkit.security import RateLimiter, same_origin, tokens_match

if TYPE_CHECKING:
    from gateway.service import GatewayRuntime

log = logging.getLogger(__name__)

COOKIE = "cg_session"
CSRF_HEADER = "x-csrf-token"
UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})

_ALL: frozenset[Role] = frozenset(ROLES)
_CAMPUS_STAFF: frozenset[Role] = frozenset({"guard", "supervisor"})
_OPERATORS: frozenset[Role] = frozenset(
    {"guard", "supervisor", "dispatcher", "technician", "admin"}
)

PERMISSIONS: dict[str, frozenset[Role]] = {
    # alarms: everyone who acts on alarms; inspectors read reports, not the live queue
    "alarms.read": _OPERATORS,
    "alarms.dispatch": frozenset({"dispatcher", "admin"}),
    "evidence.read": frozenset({"guard", "supervisor", "dispatcher", "technician", "admin"}),
    "campuses.read": _ALL,  # names, addresses, map positions, contacts, edge online
    "devices.read": _OPERATORS | {"inspector"},
    "commands.bollard": _CAMPUS_STAFF | {"dispatcher", "admin"},
    "commands.read": _OPERATORS,
    "selftest.run": frozenset({"supervisor", "technician", "admin"}),
    "selftest.read": _OPERATORS,
    "reports.read": _ALL,
    "maintenance.write": frozenset({"technician", "admin"}),
    "maintenance.read": _ALL,
    "drills.run": _CAMPUS_STAFF | {"admin"},
    "drills.read": _ALL,
    "telemetry.read": frozenset({"technician", "supervisor", "admin"}),
    "health.read": frozenset({"technician", "dispatcher", "admin"}),
    "notify.read": _OPERATORS,
    "users.admin": frozenset({"admin"}),
    "audit.read": frozenset({"admin"}),
    "self": _ALL,  # one's own account: who am I, change my password, my tokens
}
"""Which roles hold each permission. Campus scoping comes on top: a user acts only on the
campuses of their account (``["*"]`` = all), checked by each route on the campus it touches."""

PUBLIC: dict[str, str] = {
    "/healthz": "liveness for load balancers: gateway id and broker connection only",
    "/api/police/webhook/status": "the police platform's status updates, HMAC-signed",
    "/verify/{alarm_id}": "the police's evidence link, signed and expiring",
    "/verify/{alarm_id}/{evidence_id}": "a picture of the police's evidence link, signed",
    "/api/notify/ack/{token}": "a notified person's ack link, signed",
    "/api/auth/login": "logging in",
    "/login": "the login page",
    "/lang/{code}": "choosing the language (a cookie)",
    "/static": "the consoles' CSS, scripts and images",
    "/": "redirects to the login page or one's console",
    "/favicon.ico": "an empty icon",
    "/docs": "the OpenAPI documentation page",
    "/docs/oauth2-redirect": "part of the documentation page",
    "/redoc": "the OpenAPI documentation page (ReDoc)",
    "/openapi.json": "the OpenAPI description",
    "/metrics": "Prometheus scrape: a bearer token with health.read unless "
    "gateway.http.metrics_public is set",
    "/stream": "the consoles' live feed: checks the session itself",
    "/dispatch/sound.wav": "the dispatch console's alert sound (a static asset)",
}
"""Paths (as routes declare them) answered without ``require``, each with why."""


@dataclass(frozen=True, slots=True)
class Principal:
    """The user behind this request, with the role and campuses of their account now."""

    user: str
    role: str
    campuses: tuple[str, ...]
    via: str  # "session", "token:<id>", "config-token"
    csrf: str | None = None
    display: str = ""

    def may_act_on(self, campus: str) -> bool:
        return "*" in self.campuses or campus in self.campuses

    def campus_filter(self) -> list[str] | None:
        """The campuses to filter lists by; None = all of them."""
        return None if "*" in self.campuses else list(self.campuses)

    def holds(self, permission: str) -> bool:
        return self.role in PERMISSIONS[permission]


def client_address(request: Request) -> str:
    return request.client.host if request.client else ""


class Authenticator:
    """Resolves requests to principals; counts nothing in memory that another gateway would
    need (sessions, tokens, lock-outs live in the database), except the per-address limit on
    wrong passwords, which each gateway keeps for the addresses it serves."""

    def __init__(self, rt: GatewayRuntime) -> None:
        self.rt = rt
        self.accounts = AccountStore(rt.store.engine)
        self.limiter = RateLimiter()
        cfg = rt.cfg.accounts
        self.idle = timedelta(minutes=cfg.session_idle_minutes)
        self.lifetime = timedelta(hours=cfg.session_hours)

    async def identify(self, request: Request) -> Principal | None:
        auth = request.headers.get("authorization")
        if auth is not None:
            presented = auth.removeprefix("Bearer ").strip()
            if not presented or presented == auth.strip():
                return None
            for tok in self.rt.cfg.api_tokens:
                if hmac.compare_digest(presented.encode(), tok.secret().encode()):
                    return Principal(tok.user, tok.role, tuple(tok.campuses), "config-token")
            found = await self.accounts.by_token(presented)
            return None if found is None else _principal(found)
        cookie = request.cookies.get(COOKIE)
        if cookie:
            found = await self.accounts.by_session(cookie, self.idle)
            if found is None:
                return None
            who = _principal(found)
            if request.method in UNSAFE and not _cross_site_ok(request, who):
                raise HTTPException(403, "cross-site request refused (origin or CSRF token)")
            return who
        return None

    async def audit(
        self,
        who: Principal | None,
        action: str,
        outcome: str,
        request: Request | None = None,
        *,
        campus: str | None = None,
        target: str = "",
        detail: str = "",
        user: str | None = None,
    ) -> None:
        """One audit record; a failure to write it is logged, never hides the answer."""
        try:
            await self.accounts.audit(
                user if user is not None else (who.user if who else "-"),
                who.role if who else "",
                action,
                outcome,
                campus=campus,
                target=target,
                address=client_address(request) if request is not None else "",
                detail=detail,
            )
        except Exception:
            log.exception("could not write the audit record %s %s", action, outcome)

    def new_session_secrets(self) -> tuple[str, str]:
        return secrets.token_urlsafe(32), secrets.token_urlsafe(24)


def _principal(found: Identity) -> Principal:
    return Principal(found.user, found.role, found.campuses, found.via, found.csrf, found.display)


def _cross_site_ok(request: Request, who: Principal) -> bool:
    """A state-changing request with a session cookie must come from our own page (Origin or
    Referer names this host) and carry the session's CSRF token in ``X-CSRF-Token``."""
    host = request.headers.get("host")
    if not same_origin(request.headers.get("origin"), request.headers.get("referer"), host):
        return False
    return who.csrf is not None and tokens_match(who.csrf, request.headers.get(CSRF_HEADER))


def authenticator(request: Request) -> Authenticator:
    auth: Authenticator = request.app.state.auth
    return auth


async def current(request: Request) -> Principal:
    """The principal of this request, or 401."""
    who = await authenticator(request).identify(request)
    if who is None:
        raise HTTPException(
            401,
            "log in, or send a valid bearer token",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return who


def require(permission: str) -> Callable[[Request], Awaitable[Principal]]:
    """A dependency: the principal, if their role holds ``permission``; else 401/403 (a
    refusal is audited)."""
    if permission not in PERMISSIONS:
        raise ValueError(f"unknown permission {permission}")

    async def dependency(request: Request) -> Principal:
        who = await current(request)
        if not who.holds(permission):
            await authenticator(request).audit(
                who, permission, "denied", request, target=request.url.path
            )
            raise HTTPException(403, f"role {who.role} may not do this ({permission})")
        return who

    dependency.permission = permission  # type: ignore[attr-defined]  # the route-walk test
    return dependency


def allowed(who: Principal, campus: str) -> None:
    """404 for a campus outside the principal's own (not 403: do not confirm it exists)."""
    if not who.may_act_on(campus):
        raise HTTPException(404, f"no campus {campus}")


def permission_of(route: Any) -> str | None:
    """The permission a route requires (for the route-walk test and the docs)."""
    stack = [route.dependant]
    while stack:
        dep = stack.pop()
        perm = getattr(dep.call, "permission", None)
        if perm is not None:
            return str(perm)
        stack.extend(dep.dependencies)
    return None
