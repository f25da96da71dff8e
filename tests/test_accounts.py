"""Accounts of the central consoles and the API (issue 8, part 2): argon2 users in the gateway's
database, console sessions with CSRF, bearer tokens that are revoked at once, lock-out after
wrong passwords, and the audit log an admin reads and exports. A real gateway over real HTTP."""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from gateway.service import GatewayRuntime, run_gateway
from gateway.store.accounts import AccountStore
from tests.gwkit import CAMPUS, gateway_config
from tests.helpers import Mosquitto
from webkit.passwords import hash_password

PASSWORDS = {
    "admin": "admin-password-1",
    "disp": "dispatch-password-1",
    "guard": "guard-password-1",
    "insp": "inspector-password-1",
}
ROLES = {"admin": "admin", "disp": "dispatcher", "guard": "guard", "insp": "inspector"}


@pytest.fixture
async def gw(mosquitto: Mosquitto, tmp_path: Path) -> AsyncIterator[GatewayRuntime]:
    cfg = gateway_config(tmp_path, mosquitto.port, None, http=True)
    async with run_gateway(cfg) as rt:
        accounts = AccountStore(rt.store.engine)
        for name, role in ROLES.items():
            campuses = [CAMPUS] if role == "guard" else ["*"]
            await accounts.create_user(name, role, campuses, hash_password(PASSWORDS[name]))
        yield rt


def web(rt: GatewayRuntime) -> httpx.AsyncClient:
    base = f"http://127.0.0.1:{rt.http_port}"
    return httpx.AsyncClient(base_url=base, headers={"Origin": base})


async def login(c: httpx.AsyncClient, user: str, password: str | None = None) -> str:
    r = await c.post(
        "/api/auth/login", json={"user": user, "password": password or PASSWORDS[user]}
    )
    assert r.status_code == 200, r.text
    assert "httponly" in r.headers["set-cookie"].lower()
    assert "samesite=strict" in r.headers["set-cookie"].lower()
    return str(r.json()["csrf"])


async def test_login_session_csrf_and_logout(gw: GatewayRuntime) -> None:
    async with web(gw) as c:
        assert (await c.get("/api/auth/me")).status_code == 401
        csrf = await login(c, "disp")
        me = (await c.get("/api/auth/me")).json()
        assert me["user"] == "disp" and me["role"] == "dispatcher"
        assert "alarms.dispatch" in me["permissions"] and "users.admin" not in me["permissions"]
        # A state-changing request with the cookie but without the CSRF token is refused...
        r = await c.post("/api/tokens", json={"label": "x"})
        assert r.status_code == 403 and "CSRF" in r.text
        # ... and so is one from another site, even with the token.
        r = await c.post(
            "/api/tokens",
            json={"label": "x"},
            headers={"X-CSRF-Token": csrf, "Origin": "http://evil.example"},
        )
        assert r.status_code == 403
        r = await c.post("/api/tokens", json={"label": "x"}, headers={"X-CSRF-Token": csrf})
        assert r.status_code == 201
        r = await c.post("/api/auth/logout", headers={"X-CSRF-Token": csrf})
        assert r.status_code == 204
        assert (await c.get("/api/auth/me")).status_code == 401


async def test_stolen_cookie_is_useless_after_logout(gw: GatewayRuntime) -> None:
    async with web(gw) as c:
        csrf = await login(c, "guard")
        cookie = c.cookies.get("cg_session")
        assert cookie
        await c.post("/api/auth/logout", headers={"X-CSRF-Token": csrf})
    async with web(gw) as thief:
        thief.cookies.set("cg_session", cookie)
        assert (await thief.get("/api/auth/me")).status_code == 401


async def test_wrong_passwords_lock_the_account_for_every_gateway(gw: GatewayRuntime) -> None:
    async with web(gw) as c:
        for _ in range(4):
            r = await c.post("/api/auth/login", json={"user": "guard", "password": "nope-nope"})
            assert r.status_code == 401
            assert r.json()["detail"] == "wrong user name or password"
        r = await c.post("/api/auth/login", json={"user": "guard", "password": "nope-nope"})
        assert r.status_code == 429 and int(r.headers["Retry-After"]) > 60
        # Locked: even the right password is refused now (the lock is in the database).
        r = await c.post("/api/auth/login", json={"user": "guard", "password": PASSWORDS["guard"]})
        assert r.status_code == 429
        # An unknown name answers exactly like a wrong password.
        r = await c.post("/api/auth/login", json={"user": "nobody", "password": "x"})
        assert r.status_code == 401 and r.json()["detail"] == "wrong user name or password"
        # An admin unlocks it.
        csrf = await login(c, "admin")
        r = await c.post("/api/users/guard/unlock", headers={"X-CSRF-Token": csrf})
        assert r.status_code == 200 and r.json()["locked_until"] is None
        await login(c, "guard")
        # Every try is in the audit log.
        await login(c, "admin")
        rows = (await c.get("/api/audit", params={"user": "guard", "action": "login"})).json()
        outcomes = [r["outcome"] for r in rows]
        assert outcomes.count("failed") == 6 and outcomes.count("ok") == 1


async def test_tokens_act_as_their_user_and_revocation_is_immediate(gw: GatewayRuntime) -> None:
    async with web(gw) as c:
        csrf = await login(c, "admin")
        r = await c.post(
            "/api/tokens",
            json={"label": "police bridge", "user": "disp"},
            headers={"X-CSRF-Token": csrf},
        )
        assert r.status_code == 201
        made = r.json()
        secret, token_id = made["token"], made["id"]
        assert made["user"] == "disp"
        # The list never shows the secret again.
        listed = (await c.get("/api/tokens", params={"user": "disp"})).json()
        assert [t["id"] for t in listed] == [token_id] and "token" not in listed[0]
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{gw.http_port}",
            headers={"Authorization": f"Bearer {secret}"},
        ) as bot:
            assert (await bot.get("/api/auth/me")).json()["role"] == "dispatcher"
            # A bearer token needs no CSRF token (no cookie, no browser)...
            assert (await bot.get("/api/users")).status_code == 403  # ...but keeps its role
            r = await c.delete(f"/api/tokens/{token_id}", headers={"X-CSRF-Token": csrf})
            assert r.status_code == 200 and r.json()["revoked_at"]
            assert (await bot.get("/api/auth/me")).status_code == 401


async def test_disabling_a_user_ends_their_session_at_once(gw: GatewayRuntime) -> None:
    async with web(gw) as admin, web(gw) as guard:
        csrf = await login(admin, "admin")
        await login(guard, "guard")
        assert (await guard.get("/api/auth/me")).status_code == 200
        r = await admin.patch(
            "/api/users/guard", json={"disabled": True}, headers={"X-CSRF-Token": csrf}
        )
        assert r.status_code == 200 and r.json()["disabled"] is True
        assert (await guard.get("/api/auth/me")).status_code == 401
        r = await guard.post(
            "/api/auth/login", json={"user": "guard", "password": PASSWORDS["guard"]}
        )
        assert r.status_code == 401


async def test_admin_manages_users_and_exports_the_audit_log(gw: GatewayRuntime) -> None:
    async with web(gw) as c:
        csrf = await login(c, "admin")
        h = {"X-CSRF-Token": csrf}
        r = await c.post(
            "/api/users",
            json={"name": "tech1", "role": "technician", "campuses": ["*"], "password": "short"},
            headers=h,
        )
        assert r.status_code == 422 and "at least" in r.text
        r = await c.post(
            "/api/users",
            json={
                "name": "tech1",
                "role": "technician",
                "campuses": ["nowhere"],
                "password": "technician-pw-1",
            },
            headers=h,
        )
        assert r.status_code == 422 and "nowhere" in r.text
        r = await c.post(
            "/api/users",
            json={
                "name": "tech1",
                "role": "technician",
                "campuses": ["*"],
                "password": "technician-pw-1",
                "display": "=cmd|' /C calc'!A0",
            },
            headers=h,
        )
        assert r.status_code == 201
        assert "password" not in r.text and "hash" not in r.text
        r = await c.post(
            "/api/users",
            json={
                "name": "tech1",
                "role": "technician",
                "campuses": ["*"],
                "password": "technician-pw-1",
            },
            headers=h,
        )
        assert r.status_code == 409
        r = await c.patch("/api/users/admin", json={"role": "inspector"}, headers=h)
        assert r.status_code == 409
        names = [u["name"] for u in (await c.get("/api/users")).json()]
        assert names == sorted(["admin", "disp", "guard", "insp", "tech1"])
        r = await c.get("/api/audit.csv")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
        rows = list(csv.DictReader(io.StringIO(r.text.lstrip("\ufeff"))))
        assert any(x["action"] == "user.create" and x["target"] == "tech1" for x in rows)
        assert any(x["action"] == "login" and x["user"] == "admin" for x in rows)
    async with web(gw) as c:
        await login(c, "insp")
        assert (await c.get("/api/audit")).status_code == 403
        assert (await c.get("/api/users")).status_code == 403
    async with web(gw) as c:
        await login(c, "admin")
        denied = (await c.get("/api/audit", params={"outcome": "denied"})).json()
        assert {d["target"] for d in denied if d["user"] == "insp"} == {"/api/audit", "/api/users"}


async def test_own_password_change_ends_the_other_sessions(gw: GatewayRuntime) -> None:
    async with web(gw) as a, web(gw) as b:
        csrf = await login(a, "disp")
        await login(b, "disp")
        r = await a.post(
            "/api/auth/password",
            json={"old": "wrong-old-pw", "new": "new-dispatch-pw-2"},
            headers={"X-CSRF-Token": csrf},
        )
        assert r.status_code == 403
        r = await a.post(
            "/api/auth/password",
            json={"old": PASSWORDS["disp"], "new": "new-dispatch-pw-2"},
            headers={"X-CSRF-Token": csrf},
        )
        assert r.status_code == 204
        assert (await b.get("/api/auth/me")).status_code == 401
        await login(b, "disp", "new-dispatch-pw-2")
