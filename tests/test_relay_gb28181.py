"""The GB/T 28181 sink against SIPp playing the police video platform (real UDP, real
processes): registration with digest auth, alarms as SIP MESSAGE acknowledged by 200 OK,
refresh before expiry, a refusing platform, and a platform that goes silent and restarts."""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from lxml import etree

from gateway.service import run_gateway
from simulators.police import PoliceReceiver
from simulators.webhook_receiver import WebhookReceiver
from tests.gwkit import client, make_event, publish_event
from tests.helpers import Mosquitto, free_port, wait_for
from tests.sipp import Sipp
from tests.test_relay_webhook import ADMIN_AUTH, SECRET, config_with, job_state, state_of

DEVICE = "34020000001320000001"
SERVER = "34020000002000000001"
PASSWORD = "gb-platform-pw-1"


@pytest.fixture
def sip_port() -> int:
    return free_port(socket.SOCK_DGRAM)


@pytest.fixture
def platforms(tmp_path: Path) -> Iterator[list[Sipp]]:
    started: list[Sipp] = []
    yield started
    for p in started:
        p.stop()


def platform(
    tmp_path: Path, started: list[Sipp], port: int, scenario: str = "platform", **kw: Any
) -> Sipp:
    kw.setdefault("username", DEVICE)
    kw.setdefault("password", PASSWORD)
    sipp = Sipp(tmp_path / "sipp", scenario, port, **kw)
    sipp.start()
    started.append(sipp)
    return sipp


def gb_section(port: int, **kw: Any) -> dict[str, Any]:
    return {
        "server_host": "127.0.0.1",
        "server_port": port,
        "server_id": SERVER,
        "domain": "3402000000",
        "device_id": DEVICE,
        "password": PASSWORD,
        "local_host": "127.0.0.1",
        "local_port": 0,
        "keepalive_interval": 0.5,
        "keepalive_misses": 2,
        "timeout": 1.0,
        "retry_max": 1.0,
        **kw,
    }


def alarms_in(sipp: Sipp) -> list[dict[str, str]]:
    """The MANSCDP alarm notifications SIPp received, decoded in their declared encoding."""
    out = []
    for raw in sipp.received("MESSAGE"):
        _, _, body = raw.partition(b"\r\n\r\n")
        if b"<CmdType>Alarm</CmdType>" in body:
            root = etree.fromstring(body.strip())
            out.append({c.tag: c.text or "" for c in root})
    return out


async def registered(gw: Any) -> bool:
    return bool(gw.workers["gb28181"].sink.client.registered.is_set())


async def test_register_with_digest_and_alarm_delivered(
    mosquitto: Mosquitto, tmp_path: Path, sip_port: int, platforms: list[Sipp]
) -> None:
    sipp = platform(tmp_path, platforms, sip_port)
    cfg = config_with(tmp_path, mosquitto.port, gb28181=gb_section(sip_port))
    async with run_gateway(cfg) as gw, client(mosquitto.port) as campus:
        await wait_for(lambda: registered(gw), what="registered with the platform")
        [first, second] = sipp.received("REGISTER")[:2]
        assert b"Authorization:" not in first
        assert b'Authorization: Digest username="34020000001320000001"' in second
        await wait_for(gw.mqtt.connected.is_set)
        ev = make_event(location="南门 guard booth")
        await publish_event(campus, ev)
        await wait_for(lambda: _is(gw, ev.id, "police_received"), what="ACKed by 200 OK")
        [alarm] = alarms_in(sipp)
        assert alarm["DeviceID"] == DEVICE and alarm["AlarmPriority"] == "1"
        assert alarm["AlarmMethod"] == "2" and "南门" in alarm["AlarmDescription"]
        assert (alarm["Longitude"], alarm["Latitude"]) == ("116.300000", "39.700000")
        raw = next(m for m in sipp.received("MESSAGE") if b"<CmdType>Alarm" in m)
        assert b"Content-Type: Application/MANSCDP+xml" in raw
        assert b'encoding="GB2312"' in raw and "南门".encode("gb2312") in raw
        found = await gw.store.alarm(ev.id)
        assert found is not None and found[0].police_path == "gb28181"
        assert alarm["SN"] == found[1][-1].note.removeprefix("SN ")
        await wait_for(
            lambda: any(b"<CmdType>Keepalive" in m for m in sipp.received("MESSAGE")),
            what="a keep-alive",
        )
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gw.http_port}") as http:
            health = (await http.get("/api/health", headers=ADMIN_AUTH)).json()["police_sinks"][
                "gb28181"
            ]
        assert health["state"] == "registered" and health["ok"] is True


async def _is(gw: Any, alarm_id: str, state: str) -> bool:
    return await state_of(gw, alarm_id) == state


async def test_refreshes_before_expiry(
    mosquitto: Mosquitto, tmp_path: Path, sip_port: int, platforms: list[Sipp]
) -> None:
    """The platform grants 2 s (less than asked): the gateway registers again before that
    runs out, without ever being unregistered, and alarms flow throughout."""
    sipp = platform(tmp_path, platforms, sip_port, expires=2)
    cfg = config_with(tmp_path, mosquitto.port, gb28181=gb_section(sip_port, keepalive_interval=5))
    async with run_gateway(cfg) as gw, client(mosquitto.port) as campus:
        gbc = gw.workers["gb28181"].sink.client
        await wait_for(lambda: gbc.registrations >= 3, timeout=10, what="two refreshes")
        assert gbc.state == "registered"
        refreshes = [m for m in sipp.sent("SIP/2.0 200") if b"Expires: 2" in m]
        assert len(refreshes) >= 3
        await wait_for(gw.mqtt.connected.is_set)
        ev = make_event()
        await publish_event(campus, ev)
        await wait_for(lambda: _is(gw, ev.id, "police_received"))


async def test_registration_expired_at_the_platform_registers_again(
    mosquitto: Mosquitto, tmp_path: Path, sip_port: int, platforms: list[Sipp]
) -> None:
    """The platform no longer holds our registration (it expired there): it answers MESSAGE
    with 403. The gateway registers again at once instead of waiting for its own refresh."""
    first = platform(tmp_path, platforms, sip_port)
    cfg = config_with(tmp_path, mosquitto.port, gb28181=gb_section(sip_port))
    async with run_gateway(cfg) as gw:
        gbc = gw.workers["gb28181"].sink.client
        await wait_for(lambda: registered(gw))
        first.stop()
        forgot = platform(tmp_path, platforms, sip_port, "platform_expired")
        await wait_for(lambda: gbc.registrations >= 2, what="registered again")
        assert forgot.sent("SIP/2.0 403"), "the keep-alive was refused"
        assert forgot.sent("SIP/2.0 401") and forgot.sent("SIP/2.0 200")


async def test_registration_refused(
    mosquitto: Mosquitto, tmp_path: Path, sip_port: int, platforms: list[Sipp]
) -> None:
    platform(tmp_path, platforms, sip_port, "platform_refuse")
    cfg = config_with(tmp_path, mosquitto.port, gb28181=gb_section(sip_port))
    async with run_gateway(cfg) as gw, client(mosquitto.port) as campus:
        gbc = gw.workers["gb28181"].sink.client
        await wait_for(lambda: gbc.state == "refused", what="refused")
        assert "403" in gbc.reason
        await wait_for(gw.mqtt.connected.is_set)
        ev = make_event()
        await publish_event(campus, ev)
        await wait_for(lambda: _is(gw, ev.id, "delivery_failed"))
        assert await job_state(gw, ev.id, "gb28181") == "pending"  # kept, retried
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gw.http_port}") as http:
            health = (await http.get("/api/health", headers=ADMIN_AUTH)).json()["police_sinks"][
                "gb28181"
            ]
        assert health["ok"] is False and health["state"] == "refused"


async def test_wrong_password_refused(
    mosquitto: Mosquitto, tmp_path: Path, sip_port: int, platforms: list[Sipp]
) -> None:
    platform(tmp_path, platforms, sip_port, password="the-platform-has-another")
    cfg = config_with(tmp_path, mosquitto.port, gb28181=gb_section(sip_port))
    async with run_gateway(cfg) as gw:
        gbc = gw.workers["gb28181"].sink.client
        await wait_for(lambda: gbc.state == "refused", what="credentials refused")
        assert "credentials refused" in gbc.reason


async def test_platform_silent_then_restarted_registers_again(
    mosquitto: Mosquitto, tmp_path: Path, sip_port: int, platforms: list[Sipp]
) -> None:
    first = platform(tmp_path, platforms, sip_port)
    cfg = config_with(tmp_path, mosquitto.port, gb28181=gb_section(sip_port))
    async with run_gateway(cfg) as gw, client(mosquitto.port) as campus:
        gbc = gw.workers["gb28181"].sink.client
        await wait_for(lambda: registered(gw))
        first.stop()
        platform(tmp_path, platforms, sip_port, "platform_silent")  # restarting: no answers
        await wait_for(lambda: not gbc.registered.is_set(), what="keep-alives unanswered")
        assert "keep-alives unanswered" in gbc.reason
        await wait_for(gw.mqtt.connected.is_set)
        ev = make_event()
        await publish_event(campus, ev)
        await wait_for(lambda: _is(gw, ev.id, "delivery_failed"), what="held while away")
        await wait_for(lambda: gbc.state == "unreachable", what="REGISTER unanswered")
        platforms[-1].stop()
        back = platform(tmp_path, platforms, sip_port)  # back up: challenges again
        await wait_for(lambda: _is(gw, ev.id, "police_received"), timeout=20)
        assert gbc.registrations == 2
        registers = back.received("REGISTER")
        assert any(b"Authorization:" in r for r in registers)
        assert back.sent("SIP/2.0 401"), "the restarted platform challenged again"
        sns = [a["SN"] for a in alarms_in(back)]
        assert len(sns) == 1  # delivered once to the platform that answers


async def test_routing_across_three_sinks(
    mosquitto: Mosquitto, tmp_path: Path, sip_port: int, platforms: list[Sipp]
) -> None:
    """The issue's example: panic and bollard impact to DC-09 and GB/T 28181, camera tamper
    only to the webhook."""
    sipp = platform(tmp_path, platforms, sip_port)
    async with PoliceReceiver(udp=False) as police, WebhookReceiver(SECRET.encode()) as rx:
        cfg = config_with(
            tmp_path,
            mosquitto.port,
            police_port=police.tcp_port,
            webhook={"url": rx.url, "secret": SECRET, "timeout": 5.0},
            gb28181=gb_section(sip_port),
            routing=[
                {"sinks": ["dc09", "gb28181"], "kinds": ["panic", "bollard_impact"]},
                {"sinks": ["webhook"], "kinds": ["camera_tamper"]},
            ],
        )
        async with run_gateway(cfg) as gw, client(mosquitto.port) as campus:
            await wait_for(lambda: registered(gw))
            await wait_for(gw.mqtt.connected.is_set)
            panic = make_event(seq=1)
            impact = make_event(kind="bollard_impact", zone_no=22, seq=2)
            tamper = make_event(kind="camera_tamper", severity="medium", seq=3)
            for ev in (panic, impact, tamper):
                await publish_event(campus, ev)
            await police.wait_for(lambda: len(police.alarms) >= 2)
            await wait_for(lambda: len(alarms_in(sipp)) >= 2)
            await wait_for(lambda: len(rx.received) >= 1)
            assert [m.contact_id.code for m in police.alarms if m.contact_id] == [120, 150]
            assert [a["AlarmPriority"] for a in alarms_in(sipp)] == ["1", "1"]
            assert [r.key for r in rx.received] == [tamper.id]
            assert await job_state(gw, tamper.id, "gb28181") is None
            assert await job_state(gw, tamper.id, "dc09") is None
            assert await job_state(gw, panic.id, "webhook") is None
            assert re.fullmatch(r"\d+", alarms_in(sipp)[0]["SN"])
