"""Signed commands (issue 11, security 2): the gateway signs, the edge verifies before acting.

The pure part (contract.signing) is property-tested; the edge's refusals (forged, replayed,
expired, unsigned when required) run against the real edge over the real Mosquitto, and a
valid signed bollard command goes through the real gateway API.
"""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import SecretStr
from typer.testing import CliRunner

from campusguard.cli import app
from contract import signing, topics
from contract.config import ApiToken, EdgeSigningConfig, GatewaySigningConfig
from contract.models import DrillCommand, new_id, utcnow
from edge.command_auth import CommandGuard
from edge.daemon import event_listener_queue, run_edge
from gateway.service import run_gateway
from simulators.bollard import BollardSimulator
from tests.gwkit import CAMPUS, client, gateway_config
from tests.helpers import Mosquitto, wait_for
from tests.test_bollards_e2e import bollard_edge, command, next_command_event

KEY = Ed25519PrivateKey.generate()
OTHER = Ed25519PrivateKey.generate()

json_scalars = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20)
json_objects = st.dictionaries(
    st.text(min_size=1, max_size=10).filter(lambda k: k != signing.SIG_FIELD),
    json_scalars | st.lists(json_scalars, max_size=3),
    max_size=8,
)
kinds = st.sampled_from(sorted(signing.SIGNED_KINDS))


@settings(max_examples=300, deadline=None)
@given(obj=json_objects, kind=kinds)
def test_sign_then_verify_gives_the_object_back(obj: dict[str, Any], kind: str) -> None:
    signed = signing.sign(KEY, kind, json.dumps(obj).encode())
    assert json.loads(signed)[signing.SIG_FIELD]
    assert json.loads(signing.verify(KEY.public_key(), kind, signed)) == obj
    # Key order and white space do not matter: the canonical form is signed.
    shuffled = json.dumps(dict(reversed(list(json.loads(signed).items()))), indent=1).encode()
    assert json.loads(signing.verify(KEY.public_key(), kind, shuffled)) == obj
    assert json.loads(signing.split(signed)[0]) == obj


@settings(max_examples=300, deadline=None)
@given(obj=json_objects, kind=kinds, key=st.text(min_size=1, max_size=10), value=json_scalars)
def test_any_change_breaks_the_signature(
    obj: dict[str, Any], kind: str, key: str, value: Any
) -> None:
    signed = json.loads(signing.sign(KEY, kind, json.dumps(obj).encode()))
    if key == signing.SIG_FIELD or (key in obj and obj[key] == value):
        return
    signed[key] = value
    with pytest.raises(signing.SignatureError) as exc:
        signing.verify(KEY.public_key(), kind, json.dumps(signed).encode())
    assert exc.value.reason == "bad signature"


@settings(max_examples=100, deadline=None)
@given(obj=json_objects, kind=kinds, other_kind=kinds)
def test_wrong_key_or_kind_or_no_signature(obj: dict[str, Any], kind: str, other_kind: str) -> None:
    payload = json.dumps(obj).encode()
    forged = signing.sign(OTHER, kind, payload)
    with pytest.raises(signing.SignatureError, match="bad signature"):
        signing.verify(KEY.public_key(), kind, forged)
    if other_kind != kind:
        with pytest.raises(signing.SignatureError, match="bad signature"):
            signing.verify(KEY.public_key(), other_kind, signing.sign(KEY, kind, payload))
    with pytest.raises(signing.SignatureError, match="unsigned"):
        signing.verify(KEY.public_key(), kind, payload)
    with pytest.raises(signing.SignatureError, match="malformed"):
        signing.verify(KEY.public_key(), kind, json.dumps({**obj, "sig": "!!"}).encode())


@settings(max_examples=200, deadline=None)
@given(junk=st.binary(max_size=200))
def test_junk_never_verifies(junk: bytes) -> None:
    with pytest.raises(signing.SignatureError):
        signing.verify(KEY.public_key(), "command", junk)


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    out = tmp_path / "keys"
    res = CliRunner().invoke(app, ["certs", "signing-key", "--out", str(out)])
    assert res.exit_code == 0 and "wrote" in res.output, res.output
    assert (out / "command-signing.key").stat().st_mode & 0o077 == 0
    return out


async def test_edge_refuses_forged_replayed_expired_unsigned(
    mosquitto: Mosquitto, tmp_path: Path, keys: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    key = signing.load_private_key(keys / "command-signing.key")
    signed_cfg = EdgeSigningConfig(public_key_file=keys / "command-signing.pub")
    async with BollardSimulator(bollards=2, travel_time=0.4) as sim:
        cfg = bollard_edge(tmp_path, mosquitto.port, sim.port).model_copy(
            update={"command_signing": signed_cfg}
        )
        async with run_edge(cfg) as edge, client(mosquitto.port) as centre:
            q = event_listener_queue(edge)
            guard = edge.commands
            assert guard is not None and guard.enabled
            await wait_for(edge.uplink.connected.is_set)
            await wait_for(lambda: edge.bollards["gate-plc"].state_of("b-left") == "down")
            topic = topics.command_topic(CAMPUS)

            async def publish(payload: bytes, t: str = topic) -> None:
                await centre.publish(t, payload, qos=1)

            def signed(msg: Any, kind: str = "command") -> bytes:
                return signing.sign(key, kind, msg.model_dump_json().encode())

            # Unsigned (required by default).
            await publish(command("lower").model_dump_json().encode())
            await wait_for(lambda: guard.refused["unsigned"] == 1, 5, "unsigned refused")
            # Forged: signed with another key; and a valid signature on a changed command.
            await publish(
                signing.sign(OTHER, "command", command("lower").model_dump_json().encode())
            )
            good = json.loads(signed(command("lower")))
            good["action"] = "raise"
            await publish(json.dumps(good).encode())
            await wait_for(lambda: guard.refused["bad signature"] == 2, 5, "forged refused")
            # Expired.
            old = command("lower", ttl=30).model_copy(
                update={
                    "issued_at": utcnow() - timedelta(minutes=5),
                    "expires_at": utcnow() - timedelta(minutes=4),
                }
            )
            await publish(signed(old))
            await wait_for(lambda: guard.refused["expired"] == 1, 5, "expired refused")
            # Valid: the edge acts (the bollard policy answers); then the replay is refused.
            ok = command("raise")
            await publish(signed(ok))
            armed = await next_command_event(q, ok.id)
            assert armed["outcome"] == "armed"
            await publish(signed(ok))
            await wait_for(lambda: guard.refused["replay"] == 1, 5, "replay refused")
            # Drills are checked the same way (no expiry of their own: issued_at + max_age).
            now = utcnow()
            drill = DrillCommand(
                id=new_id(), campus=CAMPUS, action="start", user="ops", issued_at=now
            )
            dtopic = topics.drill_topic(CAMPUS)
            await publish(drill.model_dump_json().encode(), dtopic)
            await wait_for(lambda: guard.refused["unsigned"] == 2, 5, "unsigned drill refused")
            stale = drill.model_copy(update={"issued_at": now - timedelta(hours=1)})
            await publish(signed(stale, "drill"), dtopic)
            await wait_for(lambda: guard.refused["expired"] == 2, 5, "stale drill refused")
            # A command's signature does not pass for a drill.
            await publish(signed(drill, "command"), dtopic)
            await wait_for(lambda: guard.refused["bad signature"] == 3, 5, "kind confusion")
            assert edge.drills is not None and not edge.drills.active
            assert edge.rejected >= 8
    text = caplog.text
    for reason in ("unsigned", "bad signature", "expired", "replay"):
        assert f"refused command on cg/v1/{CAMPUS}/down/" in text and reason in text, reason
    # The seen-set survives a restart: the same command replayed later is still refused.
    async with BollardSimulator(bollards=2, travel_time=0.4) as sim:
        cfg2 = cfg.model_copy(
            update={"bollards": [cfg.bollards[0].model_copy(update={"port": sim.port})]}
        )
        async with run_edge(cfg2) as edge, client(mosquitto.port) as centre:
            await wait_for(edge.uplink.connected.is_set)
            await centre.publish(topic, signing.sign(key, "command", ok.model_dump_json().encode()))
            assert edge.commands is not None
            await wait_for(lambda: edge.commands.refused["replay"] == 1, 5, "replay after restart")


async def test_signed_bollard_command_through_the_gateway_api(
    mosquitto: Mosquitto, tmp_path: Path, keys: Path
) -> None:
    token = "guard-token-0123456789abcdef"
    cfg = gateway_config(tmp_path, mosquitto.port, None, http=True).model_copy(
        update={
            "api_tokens": [
                ApiToken(
                    user="guard-zhang", role="guard", campuses=[CAMPUS], token=SecretStr(token)
                )
            ],
            "command_signing": GatewaySigningConfig(private_key_file=keys / "command-signing.key"),
        }
    )
    async with BollardSimulator(bollards=2, travel_time=0.4) as sim:
        ecfg = bollard_edge(tmp_path, mosquitto.port, sim.port).model_copy(
            update={
                "command_signing": EdgeSigningConfig(public_key_file=keys / "command-signing.pub")
            }
        )
        async with (
            run_gateway(cfg) as gw,
            run_edge(ecfg) as edge,
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{gw.http_port}") as http,
        ):
            poller = edge.bollards["gate-plc"]
            await wait_for(lambda: poller.state_of("b-left") == "down")
            await wait_for(edge.uplink.connected.is_set)
            await wait_for(gw.mqtt.connected.is_set)
            url = f"/api/campuses/{CAMPUS}/bollards/gate-plc/0/commands"
            auth = {"Authorization": f"Bearer {token}"}
            sent = await http.post(url, json={"action": "raise", "reason": "drill"}, headers=auth)
            assert sent.status_code == 202, sent.text
            cid = sent.json()["id"]

            async def state(want: str) -> dict[str, Any] | None:
                got = (await http.get(f"/api/commands/{cid}", headers=auth)).json()
                return got if got["state"] == want else None

            armed = await wait_for(lambda: state("armed"), what="armed")
            confirm = {"step": "confirm", "command_id": cid, "token": armed["token"]}
            assert (await http.post(url, json=confirm, headers=auth)).status_code == 202
            await wait_for(lambda: state("done"), timeout=10, what="done")
            assert poller.state_of("b-left") == "up"
            assert edge.commands is not None and sum(edge.commands.refused.values()) == 0
            await asyncio.sleep(0)


def _guard(keys: Path, data_dir: Path) -> CommandGuard:
    return CommandGuard(EdgeSigningConfig(public_key_file=keys / "command-signing.pub"), data_dir)


async def test_a_command_id_used_before_a_crash_is_refused_after_it(
    tmp_path: Path, keys: Path
) -> None:
    """The seen-set reaches the disk from the executor, newest last, and the edge that starts
    again from the data dir (nothing else carried over, as after a SIGKILL) refuses a replay."""
    data_dir = tmp_path / "edge-data"
    topic = topics.command_topic(CAMPUS)
    guard = _guard(keys, data_dir)
    sent = [command("raise", bollard=i % 4) for i in range(40)]
    confirm = sent[0].model_copy(update={"step": "confirm", "token": "t0"})
    for msg in sent:
        assert guard.admit(topic, "command", msg)
    assert guard.admit(topic, "command", confirm)  # another step of the same id
    await guard.persisted()
    assert not list(data_dir.glob("*.part")), "a temporary file was left behind"
    on_disk = json.loads((data_dir / "command-seen.json").read_text())
    assert len(on_disk) == len(sent) + 1, "a later, smaller snapshot overwrote a newer one"

    again = _guard(keys, data_dir)  # the first one is simply abandoned: no close, no flush
    for msg in [*sent, confirm]:
        assert not again.admit(topic, "command", msg), msg.id
    assert again.refused["replay"] == len(sent) + 1
    fresh = command("lower")
    assert again.admit(topic, "command", fresh)
    await again.persisted()
    assert not _guard(keys, data_dir).admit(topic, "command", fresh)


def test_the_seen_set_is_written_before_admit_returns_outside_a_loop(
    tmp_path: Path, keys: Path
) -> None:
    guard = _guard(keys, tmp_path)
    msg = command("lower")
    assert guard.admit(topics.command_topic(CAMPUS), "command", msg)
    assert not _guard(keys, tmp_path).admit(topics.command_topic(CAMPUS), "command", msg)


async def test_cli_bollard_send_signs_with_the_gateway_key(
    mosquitto: Mosquitto, tmp_path: Path, keys: Path
) -> None:
    """`campusguard bollard send --config gateway.yaml` signs the request and the confirm like
    the gateway does, so an edge that requires signatures acts on it; without the key it is
    refused as unsigned; an unreadable key stops the CLI before anything is sent."""
    gw_yaml = tmp_path / "gateway.yaml"
    gw_yaml.write_text(
        yaml.safe_dump(
            {
                "campuses": [{"id": CAMPUS, "account": "1234"}],
                "command_signing": {"private_key_file": str(keys / "command-signing.key")},
            }
        )
    )
    missing_yaml = tmp_path / "gateway-nokey.yaml"
    missing_yaml.write_text(
        yaml.safe_dump(
            {
                "campuses": [{"id": CAMPUS, "account": "1234"}],
                "command_signing": {"private_key_file": str(tmp_path / "nowhere.key")},
            }
        )
    )
    async with BollardSimulator(bollards=2, travel_time=0.4) as sim:
        cfg = bollard_edge(tmp_path, mosquitto.port, sim.port).model_copy(
            update={
                "command_signing": EdgeSigningConfig(public_key_file=keys / "command-signing.pub")
            }
        )
        async with run_edge(cfg) as edge:
            guard = edge.commands
            assert guard is not None
            poller = edge.bollards["gate-plc"]
            await wait_for(edge.uplink.connected.is_set)
            await wait_for(lambda: poller.state_of("b-left") == "down")
            base = ["bollard", "send", "raise", "--campus", CAMPUS, "--device", "gate-plc"]
            base += ["--bollard", "0", "--broker", f"127.0.0.1:{mosquitto.port}", "--yes"]

            def cli(*extra: str) -> Any:
                return asyncio.to_thread(CliRunner().invoke, app, [*base, *extra])

            bad = await cli("--config", str(missing_yaml), "--wait", "5")
            assert bad.exit_code == 2, bad.output
            assert "cannot read the command-signing key" in bad.output
            assert "nowhere.key" in bad.output and "nothing sent" in bad.output

            unsigned = await cli("--wait", "2")
            assert unsigned.exit_code == 1, unsigned.output
            assert guard.refused["unsigned"] == 1
            assert poller.state_of("b-left") == "down"

            done = await cli("--config", str(gw_yaml), "--wait", "15")
            assert done.exit_code == 0, done.output
            assert "armed" in done.output and "done" in done.output
            assert poller.state_of("b-left") == "up"
            assert dict(guard.refused) == {"unsigned": 1}
