"""The real Mosquitto with TLS, client certificates and the shipped ACL scheme: a campus edge
stays in its own subtree (issue 11, security 1).

Certificates and the ACL come from ``campusguard certs`` itself, as an installer makes them.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterator
from pathlib import Path

import aiomqtt
import pytest
from typer.testing import CliRunner

from campusguard.cli import app
from contract import topics
from contract.config import EdgeConfig, GatewayConfig, TlsConfig
from contract.mqtt import tls_params
from edge.daemon import run_edge, status_listener_queue
from gateway.service import run_gateway
from simulators.modbus_io import DIModuleSimulator
from simulators.police import PoliceReceiver
from tests.edgekit import edge_config
from tests.gwkit import CAMPUS, gateway_config
from tests.helpers import Mosquitto, wait_for

CAMPUS_B = "campus-b"
GATEWAY = "gw-test"
NOT_DELIVERED_WITHIN = 1.0  # seconds a dropped message is given to show up anyway


@pytest.fixture
def certs(tmp_path: Path) -> Path:
    out = tmp_path / "certs"
    runner = CliRunner()
    args = ["certs", "generate", "--out", str(out), "--ip", "127.0.0.1", "--dns", "localhost"]
    args += ["--campus", CAMPUS, "--campus", CAMPUS_B, "--gateway", GATEWAY]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert f"wrote {out / 'edge-test-campus.crt'}" in res.output
    for path in out.iterdir():
        assert path.stat().st_mode & 0o077 == 0, path
    again = runner.invoke(app, args)
    assert again.exit_code == 0 and "wrote" not in again.output  # idempotent
    acl = ["certs", "acl", "--campus", CAMPUS, "--campus", CAMPUS_B, "--gateway", GATEWAY]
    res = runner.invoke(app, [*acl, "--out", str(out / "mosquitto.acl")])
    assert res.exit_code == 0, res.output
    return out


@pytest.fixture
def broker(tmp_path: Path, certs: Path) -> Iterator[Mosquitto]:
    b = Mosquitto(tmp_path / "mosquitto", tls_dir=certs, acl_file=certs / "mosquitto.acl")
    b.start()
    try:
        yield b
    finally:
        b.stop()


def tls(certs: Path, user: str | None) -> TlsConfig:
    if user is None:
        return TlsConfig(ca_file=certs / "ca.crt")
    return TlsConfig(
        ca_file=certs / "ca.crt", cert_file=certs / f"{user}.crt", key_file=certs / f"{user}.key"
    )


def mqtt_client(broker: Mosquitto, certs: Path, user: str | None, ident: str) -> aiomqtt.Client:
    from contract.config import MqttConfig

    cfg = MqttConfig(host="127.0.0.1", port=broker.port, tls=tls(certs, user))
    return aiomqtt.Client(
        "127.0.0.1", broker.port, identifier=ident, tls_params=tls_params(cfg), timeout=5
    )


async def collect(c: aiomqtt.Client, into: list[tuple[str, bytes]]) -> None:
    async for msg in c.messages:
        into.append((str(msg.topic), bytes(msg.payload)))  # type: ignore[arg-type]


async def test_edge_confined_to_its_own_subtree(broker: Mosquitto, certs: Path) -> None:
    got_gw: list[tuple[str, bytes]] = []
    got_a: list[tuple[str, bytes]] = []
    async with (
        mqtt_client(broker, certs, f"gateway-{GATEWAY}", "gw") as gw,
        mqtt_client(broker, certs, f"edge-{CAMPUS}", "edge-a") as edge_a,
    ):
        await gw.subscribe("$share/cg-gateway/cg/v1/+/up/#", qos=1)
        await gw.subscribe("cg/v1/+/up/#", qos=1)
        # Edge A subscribes to its own downlink and (trying) to B's.
        await edge_a.subscribe(topics.edge_subscriptions(CAMPUS)[0], qos=1)
        await edge_a.subscribe(f"cg/v1/{CAMPUS_B}/down/#", qos=1)
        tasks = [
            asyncio.create_task(collect(gw, got_gw)),
            asyncio.create_task(collect(edge_a, got_a)),
        ]
        try:
            # A publishes as B first, then its own control message: the broker drops the first.
            await edge_a.publish(topics.event_topic(CAMPUS_B), b"forged", qos=1)
            await edge_a.publish(topics.event_topic(CAMPUS), b"control-a", qos=1)
            await wait_for(
                lambda: any(p == b"control-a" for _, p in got_gw), 5, "A's own event at the gateway"
            )
            # The gateway writes B's command, then A's: A gets its own, never B's.
            await gw.publish(topics.command_topic(CAMPUS_B), b"cmd-b", qos=1)
            await gw.publish(topics.command_topic(CAMPUS), b"cmd-a", qos=1)
            await wait_for(lambda: any(p == b"cmd-a" for _, p in got_a), 5, "A's own command")
            await asyncio.sleep(NOT_DELIVERED_WITHIN)
            assert not any(p == b"forged" for _, p in got_gw), got_gw
            assert not any(t.startswith(f"cg/v1/{CAMPUS_B}/") for t, _ in got_gw)
            assert not any(p == b"cmd-b" for _, p in got_a), got_a
            # An edge cannot write downlinks either (not even its own: only gateways do).
            await edge_a.publish(topics.command_topic(CAMPUS), b"self-cmd", qos=1)
            await gw.publish(topics.command_topic(CAMPUS), b"cmd-a2", qos=1)
            await wait_for(lambda: any(p == b"cmd-a2" for _, p in got_a), 5, "second command")
            await asyncio.sleep(NOT_DELIVERED_WITHIN / 2)
            assert not any(p == b"self-cmd" for _, p in got_a)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


async def test_edge_b_cannot_read_a(broker: Mosquitto, certs: Path) -> None:
    got_b: list[tuple[str, bytes]] = []
    async with (
        mqtt_client(broker, certs, f"gateway-{GATEWAY}", "gw") as gw,
        mqtt_client(broker, certs, f"edge-{CAMPUS_B}", "edge-b") as edge_b,
    ):
        await edge_b.subscribe("cg/v1/#", qos=1)  # everything it may see
        task = asyncio.create_task(collect(edge_b, got_b))
        try:
            await gw.publish(topics.drill_topic(CAMPUS), b"drill-a", qos=1)
            await gw.publish(topics.drill_topic(CAMPUS_B), b"drill-b", qos=1)
            await wait_for(lambda: any(p == b"drill-b" for _, p in got_b), 5, "B's own drill")
            await asyncio.sleep(NOT_DELIVERED_WITHIN)
            assert [p for _, p in got_b] == [b"drill-b"]
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def test_client_without_certificate_is_refused(broker: Mosquitto, certs: Path) -> None:
    with pytest.raises((aiomqtt.MqttError, ssl.SSLError, OSError)):
        async with mqtt_client(broker, certs, None, "anon") as c:
            # TLS 1.3: the refusal of a missing certificate may only show on the first exchange.
            await c.publish(topics.event_topic(CAMPUS), b"x", qos=1)
    # Nor without TLS at all.
    with pytest.raises(aiomqtt.MqttError):
        async with aiomqtt.Client("127.0.0.1", broker.port, identifier="plain", timeout=3) as c:
            await c.publish(topics.event_topic(CAMPUS), b"x", qos=1)


def _with_tls(cfg: EdgeConfig | GatewayConfig, t: TlsConfig) -> EdgeConfig | GatewayConfig:
    return cfg.model_copy(update={"mqtt": cfg.mqtt.model_copy(update={"tls": t})})


async def test_press_reaches_police_over_tls_with_acl(
    broker: Mosquitto, certs: Path, tmp_path: Path
) -> None:
    async with PoliceReceiver(udp=False) as police:
        gw_cfg = gateway_config(tmp_path, broker.port, police.tcp_port)
        gw_cfg = _with_tls(gw_cfg, tls(certs, f"gateway-{GATEWAY}"))  # type: ignore[assignment]
        async with (
            DIModuleSimulator("adam-6050") as sim,
            run_gateway(gw_cfg) as gw,
        ):
            await wait_for(gw.mqtt.connected.is_set)
            e_cfg = _with_tls(
                edge_config(tmp_path, broker.port, sim.port), tls(certs, f"edge-{CAMPUS}")
            )
            async with run_edge(e_cfg) as edge:  # type: ignore[arg-type]
                statuses = status_listener_queue(edge)
                await wait_for(edge.uplink.connected.is_set)
                await sim.press(1, 0.005)
                await police.wait_for(
                    lambda: any(m.contact_id and m.code == "PA" for m in police.messages),
                    timeout=10,
                )
                # The police status comes back down to the campus (the gateway may write it).
                status = await asyncio.wait_for(statuses.get(), 5)
                while status.state != "police_received":
                    status = await asyncio.wait_for(statuses.get(), 5)
    assert "denied" not in broker.log.read_text(errors="replace").lower()


def test_password_file_matches_mosquitto_passwd(tmp_path: Path) -> None:
    """With ``--passwords`` the broker's password file is written by ``mosquitto_passwd`` when
    installed, else directly; both are the same ``$7$`` PBKDF2-SHA512 format."""
    import base64
    import shutil

    from campusguard.certs import mosquitto_hash

    out = tmp_path / "pw"
    args = ["certs", "generate", "--out", str(out), "--campus", CAMPUS, "--passwords"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert (out / "mosquitto.passwd").stat().st_mode & 0o077 == 0
    lines = (out / "mosquitto.passwd").read_text().split()
    assert [line.split(":")[0] for line in lines] == [f"edge-{CAMPUS}"]
    user, hashed = lines[0].split(":", 1)
    _, seven, iterations, salt, _digest = hashed.split("$")
    assert seven == "7"
    password = (out / f"password-{user}.txt").read_text().strip()
    assert len(password) >= 24
    ours = mosquitto_hash(password, base64.b64decode(salt), int(iterations))
    assert ours == hashed, (
        "our $7$ format differs from mosquitto_passwd's"
        if shutil.which("mosquitto_passwd")
        else "round trip"
    )
