"""Every route of the gateway, for every role (issue 8, security): no login -> 401, a role
without the route's permission -> 403, a role holding it but asking about a campus not theirs
-> 404 or filtered out. A route without a permission that is not in ``PUBLIC`` fails here, so
a new unprotected route cannot slip in. A real gateway over real HTTP, logged in with
sessions (the consoles' way; the CSRF token and Origin sent as a browser page would)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute, iter_route_contexts
from starlette.routing import Mount, Route

from contract.config import ROLES, GatewayConfig, parse_config
from gateway.api.auth import PERMISSIONS, PUBLIC, permission_of
from gateway.app import create_app
from gateway.service import GatewayRuntime, run_gateway
from gateway.store.accounts import AccountStore
from tests.gwkit import client, make_event, publish_event
from tests.helpers import Mosquitto, wait_for
from webkit.passwords import hash_password

OWN = "campus-a"
SECOND = "campus-b"
FOREIGN = "campus-zz"
"""Nobody but the admin has FOREIGN; its id is distinctive enough to search answers for."""

USERS: dict[str, tuple[str, list[str]]] = {
    "guard": ("guard", [OWN]),
    "supervisor": ("supervisor", [OWN]),
    "dispatcher": ("dispatcher", [OWN, SECOND]),
    "technician": ("technician", [SECOND]),
    "inspector": ("inspector", [OWN]),
    "admin": ("admin", ["*"]),
}
PASSWORD = "role-walk-password-1"
assert {r for r, _ in USERS.values()} == set(ROLES)

GLOBAL = frozenset({"self", "users.admin", "audit.read", "health.read"})
"""Permissions over no campus (one's own account, the users, the audit log, the district's
health): no campus to be outside of."""

CAMPUS_OBJECTS = {
    "campus",
    "alarm_id",
    "command_id",
    "drill_id",
    "window_id",
    "selftest_id",
    "evidence_id",
}
"""Path parameters naming something of a campus: the walk fills them with FOREIGN's."""


def config(tmp: Path, broker: int) -> GatewayConfig:
    data: dict[str, Any] = {
        "gateway": {
            "id": "gw-roles",
            "data_dir": str(tmp / "gw"),
            "http": {"host": "127.0.0.1", "port": 0},
        },
        "mqtt": {"host": "127.0.0.1", "port": broker, "keepalive": 5},
        "database": {"url": f"sqlite+aiosqlite:///{tmp}/gw/campusguard.db"},
        "campuses": [
            {"id": OWN, "name": "School A", "account": "1001", "geo": {"lat": 39.7, "lon": 116.3}},
            {"id": SECOND, "name": "School B", "account": "1002", "address": "2 B Road"},
            {"id": FOREIGN, "name": "School Z", "account": "1003"},
        ],
    }
    return parse_config(data, GatewayConfig, "test")


@dataclass
class World:
    rt: GatewayRuntime
    base: str
    params: dict[str, str]
    """Plausible path parameters, FOREIGN's where they name a campus' thing."""
    sessions: dict[str, httpx.AsyncClient]
    csrf: dict[str, str]


async def login(base: str, user: str) -> tuple[httpx.AsyncClient, str]:
    c = httpx.AsyncClient(base_url=base, headers={"Origin": base}, follow_redirects=False)
    r = await c.post("/api/auth/login", json={"user": user, "password": PASSWORD})
    assert r.status_code == 200, r.text
    return c, str(r.json()["csrf"])


@pytest.fixture
async def world(mosquitto: Mosquitto, tmp_path: Path) -> AsyncIterator[World]:
    async with run_gateway(config(tmp_path, mosquitto.port)) as rt:
        accounts = AccountStore(rt.store.engine)
        for name, (role, campuses) in USERS.items():
            await accounts.create_user(name, role, campuses, hash_password(PASSWORD))
        base = f"http://127.0.0.1:{rt.http_port}"
        await wait_for(rt.mqtt.connected.is_set)
        mine, theirs = make_event(campus=OWN), make_event(campus=FOREIGN)
        async with client(mosquitto.port) as edge:
            await publish_event(edge, mine)
            await publish_event(edge, theirs)
        await wait_for(lambda: rt.store.alarm(theirs.id), what="the foreign alarm stored")
        await wait_for(lambda: rt.store.alarm(mine.id), what="our alarm stored")
        sessions: dict[str, httpx.AsyncClient] = {}
        csrf: dict[str, str] = {}
        try:
            for name in USERS:
                sessions[name], csrf[name] = await login(base, name)
            admin = sessions["admin"]
            h = {"X-CSRF-Token": csrf["admin"]}
            made = await admin.post(
                f"/api/campuses/{FOREIGN}/bollards/plc-1/0/commands",
                json={"action": "raise", "reason": "walk"},
                headers=h,
            )
            assert made.status_code == 202, made.text
            drill = await admin.post("/api/drills", json={"campus": FOREIGN}, headers=h)
            assert drill.status_code == 201, drill.text
            window = await admin.post(
                "/api/maintenance", json={"campus": FOREIGN, "reason": "walk"}, headers=h
            )
            assert window.status_code == 201, window.text
            test = await admin.post(
                "/api/selftest", json={"campus": FOREIGN, "device": "di-1"}, headers=h
            )
            assert test.status_code == 202, test.text
            token = await admin.post("/api/tokens", json={"label": "walk"}, headers=h)
            assert token.status_code == 201, token.text
            params = {
                "campus": FOREIGN,
                "alarm_id": theirs.id,
                "command_id": made.json()["id"],
                "drill_id": drill.json()["id"],
                "window_id": str(window.json()["id"]),
                "selftest_id": test.json()["id"],
                "device": "di-1",
                "bollard": "0",
                "evidence_id": "01HZZZZZZZZZZZZZZZZZZZZZZZ",
                "token_id": token.json()["id"],
                "name": "admin",
                "code": "en",
                "token": "not-a-real-ack-token",
            }
            yield World(rt, base, params, sessions, csrf)
        finally:
            for c in sessions.values():
                await c.aclose()


BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("POST", "/api/campuses/{campus}/bollards/{device}/{bollard}/commands"): {
        "action": "raise",
        "reason": "walk",
    },
    ("POST", "/api/drills"): {"campus": FOREIGN},
    ("POST", "/api/maintenance"): {"campus": FOREIGN, "reason": "walk"},
    ("POST", "/api/selftest"): {"campus": FOREIGN, "device": "di-1"},
    ("POST", "/api/alarms/{alarm_id}/dispatch"): {"state": "received"},
    ("POST", "/api/users"): {
        "name": "walker",
        "role": "guard",
        "campuses": [OWN],
        "password": "walker-password-1",
    },
    ("PATCH", "/api/users/{name}"): {"display": "walked"},
    ("POST", "/api/tokens"): {"label": "walk"},
    ("POST", "/api/auth/password"): {"old": "x", "new": "y"},
}
"""Valid bodies, so that a refusal is about who asks, not what they sent."""

REFUSED_AT_THE_DOOR = {"/api/campuses/{campus}/bollards/{device}/{bollard}/commands"}
"""Actions on a campus not the user's answered 403 (not 404): the attempt is recorded in that
campus' command record (who tried to raise their bollards)."""

PARAM = re.compile(r"{(\w+)(?::\w+)?}")


def all_routes(app: FastAPI) -> list[Any]:
    """Every route of the app, those of included routers too (FastAPI keeps those nested)."""
    return [ctx.original_route for ctx in iter_route_contexts(app.routes)]


def is_page(route: APIRoute) -> bool:
    return not route.include_in_schema and not route.path.startswith("/api/")


def fill(world: World, path: str) -> str:
    def one(m: re.Match[str]) -> str:
        return world.params.get(m.group(1), "unknown")

    return PARAM.sub(one, path)


async def call(world: World, who: str | None, method: str, path: str, **kw: Any) -> httpx.Response:
    if who is None:
        async with httpx.AsyncClient(base_url=world.base, follow_redirects=False) as anon:
            return await anon.request(method, path, **kw)
    headers = {"X-CSRF-Token": world.csrf[who]} if method != "GET" else {}
    return await world.sessions[who].request(method, path, headers=headers, **kw)


async def test_every_route_refuses_who_may_not(world: World) -> None:
    app = create_app(world.rt)
    walked: list[str] = []
    unprotected: list[str] = []
    for route in all_routes(app):
        if isinstance(route, Mount):
            assert route.path in PUBLIC, f"mount {route.path} is not in PUBLIC"
            continue
        if not isinstance(route, APIRoute):
            assert isinstance(route, Route) and route.path in PUBLIC, route
            continue
        permission = permission_of(route)
        if permission is None:
            if route.path not in PUBLIC and not is_page(route):
                unprotected.append(f"{sorted(route.methods)} {route.path}")
            if route.path not in PUBLIC:
                # A console page checks the session itself (gateway.web.kit.Web.viewer):
                # without one it sends the visitor to the login page, never the page.
                for method in route.methods:
                    r = await call(world, None, method, fill(world, route.path))
                    assert r.status_code in (303, 401), (route.path, r.status_code)
                    if r.status_code == 303:
                        assert r.headers["location"].startswith("/login")
            continue
        holders = PERMISSIONS[permission]
        for method in sorted(route.methods):
            url = fill(world, route.path)
            body = BODIES.get((method, route.path))
            kw: dict[str, Any] = {} if method == "GET" else {"json": body or {}}
            where = f"{method} {route.path} ({permission})"
            walked.append(where)
            # No credentials: 401 for the API; a console page sends to the login page.
            r = await call(world, None, method, url, **kw)
            assert r.status_code in ((303, 401) if is_page(route) else (401,)), (where, r.text)
            for user, (role, campuses) in USERS.items():
                if role not in holders:
                    r = await call(world, user, method, url, **kw)
                    assert r.status_code == 403, (where, user, r.status_code, r.text)
                    assert r.json()["error"] == "forbidden"
                    continue
                if "*" in campuses or permission in GLOBAL:
                    if method == "GET":  # reads: they work (actions are tested elsewhere)
                        r = await call(world, user, method, url, **kw)
                        assert r.status_code < 500, (where, user, r.text)
                    continue
                names = set(PARAM.findall(route.path))
                if names & CAMPUS_OBJECTS or (body is not None and "campus" in body):
                    # Something of FOREIGN: as if it did not exist.
                    r = await call(world, user, method, url, **kw)
                    allowed = (403, 404) if route.path in REFUSED_AT_THE_DOOR else (404,)
                    assert r.status_code in allowed, (where, user, r.status_code, r.text)
                elif method == "GET":
                    # A list or report: FOREIGN filtered out...
                    r = await call(world, user, method, url)
                    assert r.status_code < 400, (where, user, r.status_code, r.text)
                    assert FOREIGN not in r.text, (where, user)
                    # ... and asked for by name, not there.
                    if any(p.name == "campus" for p in route.dependant.query_params):
                        r = await call(world, user, method, url, params={"campus": FOREIGN})
                        assert r.status_code == 404 or (
                            r.status_code < 400 and FOREIGN not in r.text
                        ), (where, user, r.status_code)
    assert not unprotected, f"routes with no permission and not in PUBLIC: {unprotected}"
    assert len(walked) >= 40, walked


async def test_public_routes_are_few_and_each_has_a_reason(world: World) -> None:
    assert all(reason.strip() for reason in PUBLIC.values())
    app = create_app(world.rt)
    paths = {getattr(r, "path", "") for r in all_routes(app)}
    stale = {p for p in PUBLIC if p not in paths}
    assert not stale, f"PUBLIC lists routes that do not exist: {stale}"
    # The public ones answer without a login and give nothing of a campus away.
    for path in ("/healthz", "/openapi.json", "/docs", "/login", "/favicon.ico"):
        r = await call(world, None, "GET", path)
        assert r.status_code in (200, 204), (path, r.status_code)
        assert FOREIGN not in r.text and OWN not in r.text
    assert set((await call(world, None, "GET", "/healthz")).json()) == {
        "gateway",
        "broker_connected",
    }
    # Every permission of the table is held by someone and named by some route.
    used = {permission_of(r) for r in all_routes(app) if isinstance(r, APIRoute)}
    assert set(PERMISSIONS) <= used, set(PERMISSIONS) - used
    assert all(PERMISSIONS.values())


async def test_a_campus_user_sees_only_their_campus(world: World) -> None:
    guard = world.sessions["guard"]
    alarms = (await guard.get("/api/alarms")).json()
    assert alarms and {a["campus"] for a in alarms} == {OWN}
    assert (await guard.get(f"/api/alarms/{world.params['alarm_id']}")).status_code == 404
    assert (await guard.get("/api/alarms", params={"campus": FOREIGN})).status_code == 404
    campuses = (await guard.get("/api/campuses")).json()
    assert [c["id"] for c in campuses] == [OWN]
    dispatcher = (await world.sessions["dispatcher"].get("/api/campuses")).json()
    assert [c["id"] for c in dispatcher] == [OWN, SECOND]
    admin = (await world.sessions["admin"].get("/api/campuses")).json()
    assert [c["id"] for c in admin] == [OWN, SECOND, FOREIGN]
    assert admin[0]["geo"] == {"lat": 39.7, "lon": 116.3} and admin[1]["address"] == "2 B Road"
    # A refusal is in the audit log.
    assert (await world.sessions["inspector"].get("/api/alarms")).status_code == 403
    audit = (await world.sessions["admin"].get("/api/audit", params={"outcome": "denied"})).json()
    assert any(a["user"] == "inspector" and a["target"] == "/api/alarms" for a in audit)


def test_the_readme_roles_table_is_the_permission_table() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    section = readme.split("## REST API and accounts", 1)[1]
    rows = [r for r in section.splitlines() if r.startswith("| `")]
    table = {}
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        table[cells[0].strip("`")] = {role for role, c in zip(ROLES, cells[1:], strict=True) if c}
    assert table == {p: set(roles) for p, roles in PERMISSIONS.items()}
