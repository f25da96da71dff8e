"""The guard console's parts without a browser: catalogues, passwords, rate limit, the
cross-site check, the store's acknowledgement race, the config section."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from campusguard.cli import app as cli
from contract.config import ConfigError, EdgeConfig, parse_config
from contract.models import Event, new_id, utcnow
from edge.console.auth import Accounts, RateLimiter, hash_password, same_origin
from edge.console.i18n import LANGUAGES, Translator, catalogue
from edge.console.service import beep_wav
from edge.console.store import ConsoleStore
from webkit import security as auth
from webkit.passwords import verify_password

CONSOLE = Path(__file__).resolve().parent.parent / "edge" / "console"


def test_catalogues_have_the_same_keys_and_cover_the_templates() -> None:
    keys = {lang: set(catalogue(lang)) for lang in LANGUAGES}
    assert keys["zh-CN"] == keys["en"]
    used: set[str] = set()
    for tpl in (CONSOLE / "templates").glob("*.html"):
        # Whole keys only: t("x." ~ value) is checked per value below.
        used |= set(re.findall(r"""t\(["']([a-z_.A-Z-]+[a-z_A-Z-])["']""", tpl.read_text()))
    js = (CONSOLE / "static" / "console.js").read_text()
    used |= set(re.findall(r"""["'](js\.[a-z_]+)["']""", js))
    assert used, "no keys found"
    assert used <= keys["en"], sorted(used - keys["en"])
    # Keys built from values (kind.<event kind>, refusal.<code>, ...) are there for every value.
    from typing import get_args

    from contract.models import AlarmState, EventKind
    from edge.bollards import BollardState, RefusalCode

    for k in get_args(EventKind):
        assert f"kind.{k}" in keys["en"]
    for s in get_args(AlarmState):
        assert f"police.{s}" in keys["en"]
    for code in get_args(RefusalCode):
        assert f"refusal.{code}" in keys["en"]
    for state in BollardState:
        assert f"bollard.state.{state.value}" in keys["en"]
    from edge.console.store import DISPOSITIONS
    from edge.drills import DRILL_KINDS

    built = [f"disposition.{d}" for d in DISPOSITIONS] + [f"drillkind.{k}" for k in DRILL_KINDS]
    built += [f"alarm.state.{s}" for s in ("new", "acknowledged", "closed")]
    built += [f"outcome.{o}" for o in ("armed", "accepted", "refused", "done", "failed")]
    built += [f"bollard.cmd.{c}" for c in ("raise", "lower", "stop", "emergency_raise")]
    built += [f"bollard.pos.{c}" for c in ("up", "down", "between", "unknown")]
    built += [f"device.kind.{c}" for c in ("modbus", "bollard", "camera")]
    built += [f"role.{r}" for r in ("guard", "supervisor")] + [f"lang.{x}" for x in LANGUAGES]
    assert set(built) <= keys["en"], sorted(set(built) - keys["en"])


def test_no_ui_text_in_the_script() -> None:
    js = (CONSOLE / "static" / "console.js").read_text()
    code = "\n".join(line for line in js.splitlines() if not line.strip().startswith("//"))
    assert not re.search(r"[\u4e00-\u9fff]", code)
    # Every textContent written by the script comes from the catalogue (T[...] / fmt(...)).
    for m in re.finditer(r"textContent\s*=\s*([^;]+);", code):
        rhs = m.group(1)
        allowed = ("text", "said.textContent")
        assert "T[" in rhs or "fmt(" in rhs or "toLocaleTimeString" in rhs or rhs in allowed, rhs


def test_translator_falls_back() -> None:
    t = Translator("zh-CN")
    assert t("alarm.ack") == "确认报警"
    assert Translator("en")("banner.uplink_down", n=3).endswith("(3 waiting)")
    assert Translator("xx").language == "zh-CN"
    assert t("no.such.key") == "no.such.key"


def test_password_hash_and_login() -> None:
    h = hash_password("correct horse")
    assert h.startswith("$argon2id$")
    cfg = parse_config(
        {
            "campus": {"id": "test-campus", "name": "x"},
            "console": {
                "enabled": True,
                "users": [{"user": "wang", "role": "guard", "password_hash": h}],
            },
        },
        EdgeConfig,
        "t",
    )
    now = [0.0]
    acc = Accounts(cfg.console.users, 1.0, clock=lambda: now[0])
    assert acc.login("wang", "wrong") is None
    assert acc.login("nobody", "correct horse") is None
    s = acc.login("wang", "correct horse")
    assert s is not None and s.role == "guard" and len(s.token) > 30
    now[0] = 59.0
    assert acc.session(s.token) is s  # used: kept alive
    now[0] = 118.0
    assert acc.session(s.token) is s
    now[0] = 179.0
    assert acc.session(s.token) is None  # a minute idle
    assert acc.session(None) is None


def test_config_rejects_plain_passwords_and_empty_console() -> None:
    base = {"campus": {"id": "test-campus", "name": "x"}}
    with pytest.raises(ConfigError, match="password_hash"):
        parse_config(
            {**base, "console": {"users": [{"user": "a", "password_hash": "secret"}]}},
            EdgeConfig,
            "t",
        )
    with pytest.raises(ConfigError, match="at least one user"):
        parse_config({**base, "console": {"enabled": True}}, EdgeConfig, "t")
    with pytest.raises(ConfigError, match="plan"):
        parse_config({**base, "zones": [{"id": "z", "plan": {"x": 1.5, "y": 0}}]}, EdgeConfig, "t")
    assert parse_config(base, EdgeConfig, "t").console.enabled is False


def test_rate_limit_per_user_and_address() -> None:
    now = [0.0]
    rl = RateLimiter(lambda: now[0])
    for _ in range(auth.MAX_FAILURES):
        assert rl.blocked("user:a", "addr:1") == 0
        rl.fail("user:a", "addr:1")
    assert rl.blocked("user:a", "addr:1") == pytest.approx(auth.FAILURE_WINDOW)
    assert rl.blocked("user:b", "addr:1") == 0  # a colleague at the same PC is not locked out
    now[0] = auth.FAILURE_WINDOW + 1
    assert rl.blocked("user:a", "addr:1") == 0
    for i in range(auth.MAX_FAILURES_PER_ADDRESS):
        rl.fail(f"user:n{i}", "addr:2")
    assert rl.blocked("user:new", "addr:2") > 0  # guessing across names stops too


def test_same_origin() -> None:
    assert same_origin("http://127.0.0.1:8090", None, "127.0.0.1:8090")
    assert same_origin(None, "http://127.0.0.1:8090/board", "127.0.0.1:8090")
    assert not same_origin("http://evil.example", None, "127.0.0.1:8090")
    assert not same_origin("null", None, "127.0.0.1:8090")
    assert not same_origin(None, None, "127.0.0.1:8090")
    assert not same_origin("http://127.0.0.1:8091", None, "127.0.0.1:8090")


def test_beep_is_a_wav() -> None:
    data = beep_wav()
    assert data[:4] == b"RIFF" and data[8:12] == b"WAVE" and len(data) > 10_000


async def test_store_one_acknowledgement_wins(tmp_path: Path) -> None:
    ev = Event(
        id=new_id(),
        campus="test-campus",
        edge="edge-1",
        seq=1,
        ts=utcnow(),
        kind="panic",
        severity="critical",
        device="di-1",
    )
    async with ConsoleStore(tmp_path / "console.db") as store:
        assert await store.add_alarm(ev)
        assert not await store.add_alarm(ev)
        assert await store.count_new() == 1
        results = await asyncio.gather(
            *(store.acknowledge(ev.id, f"g{i}", utcnow().isoformat(), "") for i in range(5))
        )
        winners = [r for r in results if r[0]]
        assert len(winners) == 1
        who = winners[0][1].ack_by if winners[0][1] else None
        assert all(r[1] is not None and r[1].ack_by == who for r in results)
        won, acked, rec = await store.close(ev.id, "x", utcnow().isoformat(), "real", "n")
        assert won and not acked and rec is not None and rec.state == "closed"
        won, _, rec = await store.close(ev.id, "y", utcnow().isoformat(), "real", "n")
        assert not won and rec is not None and rec.closed_by == "x"
        assert await store.count_new() == 0


def test_cli_hash_password() -> None:
    r = CliRunner().invoke(cli, ["console", "hash-password", "--password", "longenough1"])
    assert r.exit_code == 0, r.output
    h = r.output.strip()
    assert verify_password(h, "longenough1")
    r = CliRunner().invoke(cli, ["console", "hash-password", "--password", "short"])
    assert r.exit_code == 2


def test_schema_has_console() -> None:
    schema = json.loads(
        (Path(__file__).resolve().parent.parent / "config" / "edge.schema.json").read_text()
    )
    assert "console" in schema["properties"]
