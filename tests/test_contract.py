"""The MQTT contract and the config rules."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from contract import topics
from contract.config import ConfigError, EdgeConfig, GatewayConfig, load_config, parse_config
from contract.models import Event, new_id, utcnow

ROOT = Path(__file__).resolve().parent.parent

campus_ids = st.from_regex(topics.CAMPUS_ID_PATTERN, fullmatch=True)


@given(campus_ids)
def test_topics_round_trip(campus: str) -> None:
    p = topics.parse_topic(topics.event_topic(campus))
    assert p is not None and (p.campus, p.direction, p.kind) == (campus, "up", "event")
    p = topics.parse_topic(topics.device_status_topic(campus, "di-1"))
    assert p is not None and p.device == "di-1"
    p = topics.parse_topic(topics.alarm_status_topic(campus))
    assert p is not None and p.direction == "down"


@given(st.text(max_size=80))
def test_parse_topic_never_raises(topic: str) -> None:
    topics.parse_topic(topic)


def test_campus_id_confines_topics() -> None:
    with pytest.raises(ValueError, match="campus id"):
        topics.event_topic("a/b")
    with pytest.raises(ValueError, match="must not contain"):
        topics.device_status_topic("c1", "x/#")
    assert topics.gateway_subscriptions("g") == ["$share/g/cg/v1/+/up/#"]
    assert topics.gateway_subscriptions(None, "telemetry") == [
        "cg/v1/+/up/telemetry",
        "cg/v1/+/up/device/+",
    ]
    events = topics.gateway_subscriptions("g", "events")
    assert "$share/g/cg/v1/+/up/event" in events and "$share/g/cg/v1/+/up/edge" in events
    assert not any("device" in t for t in events)  # the status flood is on the other connection
    assert not any("telemetry" in t for t in events)
    assert topics.edge_subscriptions("c1") == ["cg/v1/c1/down/#"]


def _event(**kw: object) -> dict[str, object]:
    base: dict[str, object] = {
        "id": new_id(),
        "campus": "c1",
        "edge": "e1",
        "seq": 1,
        "ts": utcnow().isoformat(),
        "kind": "panic",
        "severity": "critical",
        "device": "di-1",
    }
    base.update(kw)
    return base


def test_event_validation() -> None:
    ev = Event.model_validate_json(json.dumps(_event()))
    assert ev.is_alarm
    with pytest.raises(ValidationError):
        Event.model_validate(_event(kind="nuke"))
    with pytest.raises(ValidationError):
        Event.model_validate(_event(ts="2026-01-01T00:00:00"))  # no zone
    with pytest.raises(ValidationError):
        Event.model_validate(_event(extra_field=1))
    with pytest.raises(ValidationError):
        Event.model_validate(_event(v=2))


def test_ids_sort_by_time() -> None:
    ids = [new_id() for _ in range(50)]
    assert ids == sorted(ids)
    assert len(set(ids)) == 50


def test_config_typo_names_file_key_and_allowed(tmp_path: Path) -> None:
    f = tmp_path / "edge.yaml"
    f.write_text(
        "campus: {id: c1, name: X}\n"
        "devices:\n"
        "  - id: di\n    profile: adam-6050\n    host: 127.0.0.1\n    pol_interval: 0.05\n"
        "    inputs: [{channel: 0, id: b}]\n"
    )
    with pytest.raises(ConfigError) as err:
        load_config(f, EdgeConfig)
    msg = str(err.value)
    assert str(f) in msg
    assert "devices[0].pol_interval" in msg
    assert "did you mean 'poll_interval'" in msg
    assert "allowed keys here:" in msg


def test_config_bad_choice_and_bad_yaml(tmp_path: Path) -> None:
    f = tmp_path / "edge.yaml"
    f.write_text(
        "campus: {id: c1, name: X}\ndevices: [{id: d, profile: p, transport: tpc, "
        "host: h, inputs: [{channel: 0, id: b}]}]\n"
    )
    with pytest.raises(
        ConfigError, match=r"devices\[0\]\.transport: Input should be 'tcp' or 'rtu'"
    ):
        load_config(f, EdgeConfig)
    f.write_text("campus: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(f, EdgeConfig)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml", EdgeConfig)


def test_config_zone_reference_checked() -> None:
    with pytest.raises(ConfigError, match="names zone 'nowhere'"):
        parse_config(
            {
                "campus": {"id": "c1", "name": "x"},
                "devices": [
                    {
                        "id": "d",
                        "profile": "adam-6050",
                        "host": "h",
                        "inputs": [{"channel": 0, "id": "b", "zone": "nowhere"}],
                    }
                ],
            },
            EdgeConfig,
            "edge.yaml",
        )


def test_config_secret_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    data = {
        "campuses": [{"id": "c1", "account": "1234"}],
        "mqtt": {"password": "${CG_TEST_SECRET}"},
    }
    with pytest.raises(ConfigError, match="CG_TEST_SECRET is not set"):
        parse_config(data, GatewayConfig, "gw.yaml")
    monkeypatch.setenv("CG_TEST_SECRET", "s3cret")
    cfg = parse_config(data, GatewayConfig, "gw.yaml")
    assert cfg.mqtt.secret() == "s3cret"
    assert "s3cret" not in repr(cfg)


def test_dc09_codes_default_and_override() -> None:
    cfg = parse_config(
        {
            "campuses": [{"id": "c1", "account": "1234"}],
            "dc09": {
                "primary": {"host": "h", "port": 1},
                "codes": {"panic": {"cid": 122, "sia": "HA"}},
            },
        },
        GatewayConfig,
        "gw.yaml",
    )
    assert cfg.dc09 is not None
    assert cfg.dc09.codes["panic"].cid == 122
    assert cfg.dc09.codes["tamper"].cid == 137  # defaults kept


def test_shipped_configs_are_valid_and_schema_is_current() -> None:
    assert load_config(ROOT / "config" / "edge.example.yaml", EdgeConfig)
    assert load_config(ROOT / "config" / "gateway.example.yaml", GatewayConfig)
    from campusguard.cli import schemas

    for name, schema in schemas().items():
        on_disk = json.loads((ROOT / "config" / name).read_text())
        assert on_disk == schema, f"config/{name} is stale: run `campusguard config schema`"


def test_cli_config_error_exit_code(tmp_path: Path) -> None:
    f = tmp_path / "gw.yaml"
    f.write_text("campuses: [{id: c1, acount: '1234'}]\n")
    proc = subprocess.run(
        [sys.executable, "-m", "campusguard.cli", "gateway", "--config", str(f)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert str(f) in lines[0] and "campuses[0].acount" in lines[0]
    assert "did you mean 'account'" in lines[0]


def _check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "campusguard.cli", "config", "check", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


def test_config_check_knows_the_profiles(tmp_path: Path) -> None:
    ok = _check(ROOT / "config" / "edge.example.yaml")
    assert ok.returncode == 0, ok.stderr
    f = tmp_path / "edge.yaml"
    f.write_text(
        "campus: {id: c1, name: X}\n"
        "devices:\n"
        "  - {id: di, profile: adam-6099, host: h, inputs: [{channel: 0, id: b}]}\n"
    )
    bad = _check(f)
    assert bad.returncode == 2
    assert "devices[0].profile" in bad.stderr and "adam-6050" in bad.stderr
    # Moxa E1210 has no latch registers: latch mode is refused with the profile's reason.
    f.write_text(
        "campus: {id: c1, name: X}\n"
        "devices:\n"
        "  - {id: di, profile: moxa-e1210, host: h, inputs: [{channel: 0, id: b, mode: latch}]}\n"
    )
    bad = _check(f)
    assert bad.returncode == 2
    assert "devices[0].inputs[0] (b)" in bad.stderr and "use counter mode" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


def test_an_unknown_video_time_zone_is_a_config_error() -> None:
    data = {
        "campus": {"id": "c1", "name": "x"},
        "cameras": [{"id": "cam", "host": "10.0.0.1", "video": {"timezone": "Mars/Olympus"}}],
    }
    with pytest.raises(ConfigError, match=r"cameras\[0\]\.video\.timezone.*unknown time zone"):
        parse_config(data, EdgeConfig, "edge.yaml")


def test_config_check_tells_a_gateway_file_from_an_edge_file() -> None:
    """No ``--kind`` needed: a gateway file checked as an edge's gave a wrong message."""
    gw = _check(ROOT / "config" / "gateway.example.yaml")
    assert gw.returncode == 0, gw.stderr
    assert gw.stdout.strip().endswith("ok (gateway config)")
    edge = _check(ROOT / "config" / "edge.example.yaml")
    assert edge.stdout.strip().endswith("ok (edge config)")
    wrong = subprocess.run(
        [sys.executable, "-m", "campusguard.cli", "config", "check", "--kind", "gatway", "x"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert wrong.returncode == 2
    assert "--kind must be edge or gateway" in wrong.stderr
