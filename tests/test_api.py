"""The REST API (issue 8, part 1): alarm filters and keyset pages, one error body for every
refusal, bad input in filters (never a 500, never another campus' data), revoked tokens, the
``campusguard users`` command, and a Schemathesis run against the published OpenAPI. A real
gateway over real HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import yaml
from pydantic import SecretStr
from typer.testing import CliRunner

from campusguard.cli import app as cli
from contract.config import ApiToken, GatewayConfig, parse_config
from contract.models import new_id
from gateway.service import GatewayRuntime, run_gateway
from gateway.store.accounts import AccountStore
from gateway.store.db import make_engine, migrate
from tests.gwkit import client, make_event, publish_event
from tests.helpers import Mosquitto, wait_for
from webkit.passwords import hash_password

A, B = "campus-a", "campus-b"
ADMIN = "admin-api-token-0123456789abcdef"
GUARD = "guard-api-token-0123456789abcdef"


def config_data(tmp: Path, broker: int, db_url: str | None = None) -> dict[str, Any]:
    return {
        "gateway": {
            "id": "gw-api",
            "data_dir": str(tmp / "gw"),
            "http": {"host": "127.0.0.1", "port": 0},
        },
        "mqtt": {"host": "127.0.0.1", "port": broker, "keepalive": 5},
        "database": {"url": db_url or f"sqlite+aiosqlite:///{tmp}/gw/campusguard.db"},
        "campuses": [
            {"id": A, "name": "School A", "account": "1001", "geo": {"lat": 39.7, "lon": 116.3}},
            {"id": B, "name": "School B", "account": "1002"},
        ],
    }


@dataclass
class Api:
    rt: GatewayRuntime
    base: str
    alarms: list[dict[str, Any]]  # what was published: id, campus, kind, severity, drill

    def client(self, token: str | None = ADMIN) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.AsyncClient(base_url=self.base, headers=headers)


@pytest.fixture
async def api(mosquitto: Mosquitto, tmp_path: Path) -> AsyncIterator[Api]:
    async with serving(mosquitto, tmp_path, None) as running:
        yield running


@pytest.fixture
async def api_db(mosquitto: Mosquitto, tmp_path: Path, db_url: str) -> AsyncIterator[Api]:
    """The same on SQLite and on PostgreSQL."""
    async with serving(mosquitto, tmp_path, db_url) as running:
        yield running


@contextlib.asynccontextmanager
async def serving(mosquitto: Mosquitto, tmp_path: Path, db_url: str | None) -> AsyncIterator[Api]:
    cfg = parse_config(config_data(tmp_path, mosquitto.port, db_url), GatewayConfig, "test")
    cfg = cfg.model_copy(
        update={
            "api_tokens": [
                ApiToken(user="root", role="admin", campuses=["*"], token=SecretStr(ADMIN)),
                ApiToken(user="gd", role="guard", campuses=[A], token=SecretStr(GUARD)),
            ]
        }
    )
    async with run_gateway(cfg) as rt:
        await wait_for(rt.mqtt.connected.is_set)
        sent: list[dict[str, Any]] = []
        kinds = ["panic", "fire", "intrusion"]
        async with client(mosquitto.port) as edge:
            for i in range(17):
                campus = A if i < 12 else B
                ev = make_event(
                    campus=campus,
                    seq=i + 1,
                    kind=kinds[i % 3],
                    severity="critical" if i % 2 else "high",
                    drill=i % 4 == 0,
                    zone_no=i + 1,
                )
                await publish_event(edge, ev)
                sent.append(
                    {
                        "id": ev.id,
                        "campus": campus,
                        "kind": ev.kind,
                        "severity": ev.severity,
                        "drill": ev.drill,
                    }
                )

        async def stored() -> bool:
            return len(await rt.store.alarms(None, 100)) == len(sent)

        await wait_for(stored, what="17 alarms stored")
        yield Api(rt, f"http://127.0.0.1:{rt.http_port}", sent)


async def pages(
    c: httpx.AsyncClient, params: dict[str, Any], limit: int
) -> list[list[dict[str, Any]]]:
    out: list[list[dict[str, Any]]] = []
    cursor: str | None = None
    while True:
        q = {**params, "limit": limit, **({"before": cursor} if cursor else {})}
        r = await c.get("/api/alarms", params=q)
        assert r.status_code == 200, r.text
        out.append(r.json())
        cursor = r.headers.get("X-Next-Cursor")
        if cursor is None:
            assert "Link" not in r.headers
            return out
        assert cursor == out[-1][-1]["id"]
        assert (
            r.headers["Link"].endswith('>; rel="next"') and f"before={cursor}" in r.headers["Link"]
        )


async def test_alarm_pages_follow_the_cursor_newest_first(api: Api) -> None:
    async with api.client() as c:
        got = await pages(c, {}, 5)
        assert [len(p) for p in got] == [5, 5, 5, 2]
        flat = [a for p in got for a in p]
        assert len({a["id"] for a in flat}) == 17
        keys = [(a["received_at"], a["id"]) for a in flat]
        assert keys == sorted(keys, reverse=True)
        # An exact fit: no empty page after the last.
        assert [len(p) for p in await pages(c, {"campus": B}, 5)] == [5]
        assert (await c.get("/api/alarms", params={"limit": 501})).status_code == 422
        assert (await c.get("/api/alarms", params={"limit": 0})).status_code == 422
        r = await c.get("/api/alarms", params={"before": new_id()})
        assert r.status_code == 422 and r.json()["error"] == "invalid"
    # A cursor of a campus not one's own is no cursor.
    b_alarm = next(a["id"] for a in api.alarms if a["campus"] == B)
    async with api.client(GUARD) as g:
        assert (await g.get("/api/alarms", params={"before": b_alarm})).status_code == 422
        mine = [a for p in await pages(g, {}, 7) for a in p]
        assert len(mine) == 12 and {a["campus"] for a in mine} == {A}


async def test_alarm_filters(api: Api) -> None:
    def expect(pred: Callable[[dict[str, Any]], bool]) -> set[str]:
        return {a["id"] for a in api.alarms if pred(a)}

    async def ids(**params: Any) -> set[str]:
        async with api.client() as c:
            r = await c.get("/api/alarms", params={"limit": 500, **params})
        assert r.status_code == 200, r.text
        return {a["id"] for a in r.json()}

    assert await ids(campus=B) == expect(lambda a: a["campus"] == B)
    assert await ids(campus=[A, B]) == expect(lambda a: True)
    assert await ids(kind="fire") == expect(lambda a: a["kind"] == "fire")
    assert await ids(kind=["fire", "panic"]) == expect(lambda a: a["kind"] in ("fire", "panic"))
    assert await ids(severity="critical", campus=A) == expect(
        lambda a: a["severity"] == "critical" and a["campus"] == A
    )
    assert await ids(drill="true") == expect(lambda a: a["drill"])
    assert await ids(drill="false") == expect(lambda a: not a["drill"])
    assert await ids(open_only="true") == expect(lambda a: True)  # none closed yet
    assert await ids(state="closed") == set()
    now = datetime.now(UTC)
    assert await ids(since=(now - timedelta(hours=1)).isoformat()) == expect(lambda a: True)
    assert await ids(since=(now + timedelta(minutes=5)).isoformat()) == set()
    local = (now + timedelta(hours=1)).astimezone(
        __import__("datetime").timezone(timedelta(hours=8))
    )
    assert await ids(until=local.isoformat()) == expect(lambda a: True)
    async with api.client() as c:
        r = await c.get("/api/alarms", params={"since": "2026-01-01T00:00:00"})
        assert r.status_code == 422 and "time zone" in r.json()["detail"]
        r = await c.get("/api/alarms", params={"campus": "nowhere"})
        assert r.status_code == 404


async def test_every_error_has_the_same_body(api: Api) -> None:
    async with api.client(None) as anon, api.client(GUARD) as guard, api.client() as admin:
        cases = [
            (await anon.get("/api/alarms"), 401, "unauthorized"),
            (await guard.get("/api/users"), 403, "forbidden"),
            (await admin.get("/api/alarms/01HZZZZZZZZZZZZZZZZZZZZZZZ"), 404, "not_found"),
            (await admin.get("/api/no-such-thing"), 404, "not_found"),
            (await admin.delete("/api/alarms"), 405, "method_not_allowed"),
            (await admin.get("/api/alarms", params={"limit": "many"}), 422, "invalid"),
            (await admin.post("/api/drills", content=b"{not json"), 422, "invalid"),
            (
                await admin.post("/api/users", json={"name": "root", "role": "nobody"}),
                422,
                "invalid",
            ),
        ]
        for r, status, code in cases:
            assert r.status_code == status, (r.request.url, r.text)
            body = r.json()
            assert body["status"] == status and body["error"] == code, body
            assert isinstance(body["detail"], str | list) and body["detail"]
        assert cases[0][0].headers["WWW-Authenticate"] == "Bearer"
        # The liveness answer is public and says no more than that; the rest is behind a login.
        assert (await anon.get("/healthz")).json() == {
            "gateway": "gw-api",
            "broker_connected": True,
        }
        assert (await anon.get("/api/health")).status_code == 401
        health = (await admin.get("/api/health")).json()
        assert {"police_paths", "police_sinks", "backlog"} <= set(health)


NASTY = [
    "x' OR 1=1 --",
    "' OR ''='",
    "a'; DROP TABLE alarms; --",
    "%",
    "_",
    "*",
    "campus-a%",
    "campus-a' --",
    "学校",
    "😀",
    "\x00",
    "campus-a\x00campus-b",
    "../../etc/passwd",
    "<script>alert(1)</script>",
    "${jndi:ldap://x}",
    "a" * 10_000,
    "",
    " ",
]


async def test_injection_attempts_in_filters_are_refused_or_empty(api_db: Api) -> None:
    api = api_db
    b_ids = {a["id"] for a in api.alarms if a["campus"] == B}
    async with api.client(GUARD) as guard:
        for value in NASTY:
            for name in ("campus", "kind", "severity", "state", "before", "since", "drill"):
                r = await guard.get("/api/alarms", params={name: value})
                assert 400 <= r.status_code < 500 or r.status_code == 200, (name, value, r.text)
                if r.status_code == 200:
                    assert not b_ids & {a["id"] for a in r.json()}, (name, value)
                    assert all(a["campus"] == A for a in r.json())
                else:
                    assert r.json()["status"] == r.status_code
            for path in (
                "/api/alarms/{}",
                "/api/commands/{}",
                "/api/drills/{}",
                "/api/selftest/{}",
                "/api/campuses/{}",
                "/api/telemetry/{}/di-1",
            ):
                url = path.format(quote(value, safe=""))
                r = await guard.get(url)
                # (an empty id: a redirect to the list, without the slash)
                redirect = value == "" and r.status_code == 307
                assert 400 <= r.status_code < 500 or redirect, (url, r.status_code)
            for report in ("/api/reports/uptime", "/api/drills/compliance", "/api/devices"):
                r = await guard.get(report, params={"campus": value})
                assert 400 <= r.status_code < 500, (report, value, r.status_code)
    # In bodies too: a NUL (PostgreSQL refuses it in text) or a quote is a 4xx, never a 500.
    async with api.client() as c:
        for value in ("x\x00y", "x' OR 1=1 --", "学校😀"):
            for method, url, body in (
                ("POST", "/api/auth/login", {"user": value, "password": value}),
                ("POST", "/api/tokens", {"label": value}),
                ("POST", "/api/maintenance", {"campus": A, "reason": value}),
                ("POST", "/api/drills", {"campus": value}),
                ("GET", "/api/audit", None),
            ):
                params = {"q": value, "user": value} if body is None else None
                r = await c.request(method, url, json=body, params=params)
                assert r.status_code < 500, (method, url, value, r.text)
    # Everything is still there.
    async with api.client() as c:
        assert len((await c.get("/api/alarms", params={"limit": 500})).json()) == 17


async def test_a_revoked_token_is_refused_on_the_next_data_request(api: Api) -> None:
    accounts = AccountStore(api.rt.store.engine)
    await accounts.create_user("disp", "dispatcher", [A], hash_password("dispatch-pw-123"))
    secret, token_id = "cgt_" + "z" * 40, new_id()
    await accounts.add_token(token_id, "disp", secret, "bridge", None)
    async with api.client(secret) as bot, api.client() as admin:
        r = await bot.get("/api/alarms")
        assert r.status_code == 200 and {a["campus"] for a in r.json()} == {A}
        assert (await bot.get(f"/api/alarms/{r.json()[0]['id']}")).status_code == 200
        revoked = await admin.delete(f"/api/tokens/{token_id}")
        assert revoked.status_code == 200, revoked.text
        r = await bot.get("/api/alarms")
        assert r.status_code == 401 and r.json()["error"] == "unauthorized"
        # Disabling the user stops a token at once too.
        await accounts.add_token(new_id(), "disp", "cgt_" + "y" * 40, "second", None)
        async with api.client("cgt_" + "y" * 40) as second:
            assert (await second.get("/api/devices")).status_code == 200
            await accounts.update_user("disp", disabled=True)
            assert (await second.get("/api/devices")).status_code == 401


# --- campusguard users ---------------------------------------------------------------------


def test_users_cli(tmp_path: Path) -> None:
    gw = tmp_path / "gw.yaml"
    gw.write_text(yaml.safe_dump(config_data(tmp_path, 1883)), encoding="utf-8")
    pw = tmp_path / "pw"
    pw.write_text("first-admin-password\n", encoding="utf-8")
    runner = CliRunner()

    def run(*args: str, input: str | None = None) -> Any:
        return runner.invoke(cli, ["users", *args], input=input)

    r = run("add", "--config", str(gw), "chief", "--role", "admin", "--campuses", "*",
            "--display", "Chief", "--password-file", str(pw))  # fmt: skip
    assert r.exit_code == 0, r.output
    assert run("add", "--config", str(gw), "chief", "--role", "admin", "--campuses", "*",
               "--password-file", str(pw)).exit_code == 1  # fmt: skip
    r = run("add", "--config", str(gw), "g1", "--role", "guard", "--campuses", f"{A},nowhere",
            "--password-file", str(pw))  # fmt: skip
    assert r.exit_code == 2 and "nowhere" in r.output
    r = run("add", "--config", str(gw), "g1", "--role", "janitor", "--campuses", A,
            "--password-file", str(pw))  # fmt: skip
    assert r.exit_code == 2
    # Asked twice, not echoed; too short is refused.
    r = run("add", "--config", str(gw), "g1", "--role", "guard", "--campuses", A,
            input="short\nshort\n")  # fmt: skip
    assert r.exit_code == 2 and "at least" in r.output
    r = run("add", "--config", str(gw), "g1", "--role", "guard", "--campuses", A,
            input="guard-password-1\nguard-password-1\n")  # fmt: skip
    assert r.exit_code == 0, r.output and "guard-password-1" not in r.output
    r = run("token", "--config", str(gw), "chief", "--label", "police bridge")
    assert r.exit_code == 0, r.output
    secret = r.output.strip().splitlines()[-1]
    assert secret.startswith("cgt_")
    assert run("disable", "--config", str(gw), "g1").exit_code == 0
    listed = run("list", "--config", str(gw)).output
    assert "chief" in listed and "admin" in listed and "disabled" in listed
    assert run("enable", "--config", str(gw), "g1").exit_code == 0
    assert run("unlock", "--config", str(gw), "g1").exit_code == 0
    assert run("passwd", "--config", str(gw), "g1", input="new-guard-pw-22\nnew-guard-pw-22\n").exit_code == 0  # fmt: skip
    assert run("passwd", "--config", str(gw), "nobody", "--password-file", str(pw)).exit_code == 1
    assert "active" in run("list", "--config", str(gw)).output

    async def check() -> None:
        engine = make_engine(f"sqlite+aiosqlite:///{tmp_path}/gw/campusguard.db")
        await migrate(engine)
        try:
            store = AccountStore(engine)
            who = await store.by_token(secret)
            assert who is not None and who.user == "chief" and who.role == "admin"
            rows = await store.audit_log(user="cli", limit=100)
            actions = sorted(r.action for r in rows)
            assert actions == sorted(
                [
                    "user.create",
                    "user.create",
                    "token.create",
                    "user.change",
                    "user.change",
                    "user.unlock",
                    "user.change",
                ]
            )
            user = await store.user("g1")
            assert user is not None and not user.disabled and user.campuses == [A]
        finally:
            await engine.dispose()

    asyncio.run(check())


# --- Schemathesis ----------------------------------------------------------------------------


def fuzz(base: str, token: str, budget: float) -> tuple[int, list[str]]:
    """Every operation of the published OpenAPI, valid and invalid inputs, a few examples
    each, against the running gateway; the calls that answered 5xx."""
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis import GenerationMode

    schema = schemathesis.openapi.from_url(f"{base}/openapi.json")
    headers = {"Authorization": f"Bearer {token}"}
    failures: list[str] = []
    calls = 0
    deadline = time.monotonic() + budget
    operations = [op.ok() for op in schema.get_all_operations()]
    assert len(operations) >= 30
    for op in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            if time.monotonic() > deadline:
                return calls, [*failures, f"out of time at {op.label}"]

            @settings(
                max_examples=8,
                deadline=None,
                database=None,
                derandomize=True,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            @given(case=op.as_strategy(mode))
            def one(case: Any) -> None:
                nonlocal calls
                calls += 1
                r = case.call(base_url=base, headers=headers, timeout=10)
                if r.status_code >= 500:
                    failures.append(f"{r.status_code} {case.as_curl_command()}: {r.text[:200]}")

            try:
                one()
            except Unsatisfiable:  # nothing to make invalid (no parameters, no body)
                assert mode is GenerationMode.NEGATIVE, op.label
    return calls, failures


async def test_schemathesis_finds_no_server_error(api: Api) -> None:
    t0 = time.monotonic()
    calls, failures = await asyncio.to_thread(fuzz, api.base, ADMIN, 50.0)
    assert not failures, "\n".join(failures[:20])
    assert calls >= 200
    assert time.monotonic() - t0 < 60
