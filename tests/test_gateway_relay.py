"""Gateway: MQTT in (real Mosquitto), SQL store, DC-09 out (the police receiver simulator)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path

import aiomqtt
import httpx
from pydantic import SecretStr

from contract import topics
from contract.config import ApiToken
from contract.models import AlarmStatus, EdgeState, utcnow
from gateway.service import run_gateway
from simulators.police import PoliceReceiver
from tests.gwkit import ACCOUNT, CAMPUS, client, gateway_config, make_event, publish_event
from tests.helpers import Mosquitto, free_port, wait_for

ADMIN = "admin-token-0123456789abcdef"


async def collect_status(c: aiomqtt.Client, into: list[AlarmStatus]) -> None:
    async for m in c.messages:
        into.append(AlarmStatus.model_validate_json(bytes(m.payload)))  # type: ignore[arg-type]


async def test_panic_relayed_once_and_campus_told(
    mosquitto: Mosquitto, tmp_path: Path, db_url: str
) -> None:
    async with PoliceReceiver(udp=False) as police:
        cfg = gateway_config(tmp_path, mosquitto.port, police.tcp_port, http=True, db_url=db_url)
        tok = ApiToken(user="admin", role="admin", campuses=["*"], token=SecretStr(ADMIN))
        cfg = cfg.model_copy(update={"api_tokens": [tok]})
        async with run_gateway(cfg) as gw, client(mosquitto.port) as campus:
            await campus.subscribe(topics.alarm_status_topic(CAMPUS), qos=1)
            statuses: list[AlarmStatus] = []
            listener = asyncio.create_task(collect_status(campus, statuses))
            await wait_for(gw.mqtt.connected.is_set, what="gateway connected")
            ev = make_event()
            await publish_event(campus, ev)
            await publish_event(campus, ev)  # at-least-once upstream: a repeat
            await police.wait_for(lambda: len(police.alarms) >= 1)
            [msg] = police.alarms
            assert msg.account == ACCOUNT
            assert msg.contact_id is not None
            assert (msg.contact_id.qualifier, msg.contact_id.code, msg.contact_id.zone) == (
                1,
                120,
                15,
            )
            assert ("X", "E116.300000") in msg.xdata
            await wait_for(
                lambda: any(s.state == "police_received" for s in statuses), what="status"
            )
            assert [s.state for s in statuses][:2] == ["received", "police_received"]
            assert all(s.alarm_id == ev.id for s in statuses)
            await wait_for(lambda: gw.ingest.duplicates == 1, what="duplicate counted")
            assert len(police.alarms) == 1

            async with httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{gw.http_port}",
                headers={"Authorization": f"Bearer {ADMIN}"},
            ) as http:
                detail = (await http.get(f"/api/alarms/{ev.id}")).json()
                assert detail["state"] == "police_received"
                assert [s["state"] for s in detail["timeline"]] == ["received", "police_received"]
                assert detail["police_path"] == "primary"
                assert (await http.get("/api/alarms/nope")).status_code == 404
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await listener


async def test_drill_goes_out_as_test_code(mosquitto: Mosquitto, tmp_path: Path) -> None:
    async with PoliceReceiver(udp=False) as police:
        cfg = gateway_config(tmp_path, mosquitto.port, police.tcp_port)
        async with run_gateway(cfg) as gw, client(mosquitto.port) as campus:
            await wait_for(gw.mqtt.connected.is_set)
            await publish_event(campus, make_event(drill=True))
            await police.wait_for(lambda: len(police.alarms) >= 1)
            [msg] = police.alarms
            assert msg.contact_id is not None and msg.contact_id.code == 601
            assert msg.code == "RX"


async def test_sia_dcs_restore(mosquitto: Mosquitto, tmp_path: Path) -> None:
    async with PoliceReceiver(udp=False) as police:
        cfg = gateway_config(tmp_path, mosquitto.port, police.tcp_port, protocol="SIA-DCS")
        async with run_gateway(cfg) as gw, client(mosquitto.port) as campus:
            await wait_for(gw.mqtt.connected.is_set)
            await publish_event(campus, make_event())
            await publish_event(campus, make_event(restore=True, severity="info", seq=2))
            await police.wait_for(lambda: len(police.alarms) >= 2)
            assert [m.code for m in police.alarms] == ["PA", "PH"]


async def test_bad_messages_rejected_counted_service_continues(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    async with PoliceReceiver(udp=False) as police:
        cfg = gateway_config(tmp_path, mosquitto.port, police.tcp_port)
        async with run_gateway(cfg) as gw, client(mosquitto.port) as campus:
            await wait_for(gw.mqtt.connected.is_set)
            t = topics.event_topic(CAMPUS)
            await campus.publish(t, b"{not json", qos=1)
            await campus.publish(t, b"x" * (70 * 1024), qos=1)
            await campus.publish(t, json.dumps({"v": 1, "id": "short"}), qos=1)
            # a payload that claims another campus than its topic
            other = make_event().model_copy(update={"campus": "other-campus"})
            await campus.publish(t, other.model_dump_json(), qos=1)
            # a campus the gateway does not serve
            await campus.publish(
                topics.event_topic("stranger"), make_event().model_dump_json(), qos=1
            )
            # an empty device id: the gateway's subscription matches it, the tree does not
            await campus.publish("cg/v1/test-campus/up/device/", b"{}", qos=1)
            good = make_event()
            await publish_event(campus, good)
            await police.wait_for(lambda: len(police.alarms) == 1)
            counts = gw.ingest.reject.counts
            assert counts["invalid payload"] == 2
            assert counts["oversized"] == 1
            assert counts["campus mismatch"] == 1
            assert counts["unknown campus"] == 1
            assert counts["unknown topic"] == 1


async def test_police_down_then_up_and_backup(mosquitto: Mosquitto, tmp_path: Path) -> None:
    primary_port = free_port()  # nothing listens there yet: the primary receiver is down
    async with PoliceReceiver(udp=False) as backup:
        cfg = gateway_config(tmp_path, mosquitto.port, primary_port, backup_port=backup.tcp_port)
        async with run_gateway(cfg) as gw, client(mosquitto.port) as campus:
            await wait_for(gw.mqtt.connected.is_set)
            ev = make_event()
            await publish_event(campus, ev)
            await wait_for(
                lambda: _state(gw, ev.id, "police_received"), what="delivered via backup"
            )
            found = await gw.store.alarm(ev.id)
            assert found is not None and found[0].police_path == "backup"
            assert [m.code for m in backup.alarms].count("PA") == 1
            # The failed primary is itself a transmission-path fault, sent over the backup.
            assert "YC" in [m.code for m in backup.alarms]


async def _state(gw, alarm_id: str, state: str) -> bool:  # type: ignore[no-untyped-def]
    found = await gw.store.alarm(alarm_id)
    return found is not None and found[0].state == state


async def test_police_down_retries_until_up(
    mosquitto: Mosquitto, tmp_path: Path, db_url: str
) -> None:
    port = free_port()
    cfg = gateway_config(tmp_path, mosquitto.port, port, db_url=db_url)
    async with run_gateway(cfg) as gw, client(mosquitto.port) as campus:
        await wait_for(gw.mqtt.connected.is_set)
        ev = make_event()
        await publish_event(campus, ev)
        await wait_for(lambda: _state(gw, ev.id, "delivery_failed"), what="failure recorded")
        async with PoliceReceiver("127.0.0.1", port, udp=False) as police:
            await wait_for(lambda: _state(gw, ev.id, "police_received"), timeout=15)
            panics = [m for m in police.alarms if m.code == "PA"]
            assert len(panics) == 1
            # The failed path was itself reported, as a transmission-path fault (and restore).
            faults = [m.contact_id for m in police.alarms if m.code in ("YC", "YK")]
            assert {(c.qualifier, c.code) for c in faults if c} <= {(1, 350), (3, 350)}


async def test_edge_lost_is_transmission_fault(
    mosquitto: Mosquitto, tmp_path: Path, db_url: str
) -> None:
    async with PoliceReceiver(udp=False) as police:
        cfg = gateway_config(tmp_path, mosquitto.port, police.tcp_port, db_url=db_url)
        async with run_gateway(cfg) as gw, client(mosquitto.port) as campus:
            await wait_for(gw.mqtt.connected.is_set)
            t = topics.edge_state_topic(CAMPUS)

            def state(online: bool) -> str:
                return EdgeState(
                    campus=CAMPUS,
                    edge="edge-1",
                    online=online,
                    ts=utcnow(),
                    reason="" if online else "connection lost",
                ).model_dump_json()

            await campus.publish(t, state(True), qos=1, retain=True)
            await campus.publish(t, state(False), qos=1, retain=True)
            await police.wait_for(lambda: len(police.alarms) >= 1)
            cid = police.alarms[0].contact_id
            assert cid is not None and (cid.qualifier, cid.code) == (1, 350)
            await campus.publish(t, state(True), qos=1, retain=True)
            await police.wait_for(lambda: len(police.alarms) >= 2)
            cid = police.alarms[1].contact_id
            assert cid is not None and (cid.qualifier, cid.code) == (3, 350)


async def test_supervision_failure_is_transmission_fault(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """NULL link tests at a short interval: a receiver that stops answering is a path fault,
    reported to the campus' alarm list and, once the path is back, restored."""
    async with PoliceReceiver(udp=False) as police:
        cfg = gateway_config(tmp_path, mosquitto.port, police.tcp_port, supervision=0.2)
        async with run_gateway(cfg) as gw:
            await wait_for(gw.mqtt.connected.is_set)
            await police.wait_for(lambda: police.counters.null >= 1)
            # The technician's "last sign of life" of the path: the link test's answer.
            sender = gw.workers["dc09"].sink.sender  # type: ignore[attr-defined]
            await wait_for(lambda: sender.last_replies()["primary"] is not None, what="a reply")
            first = sender.last_replies()["primary"]
            await wait_for(lambda: sender.last_replies()["primary"] > first, what="the next one")
            police.pause()  # stops answering, as a dead receiver would

            async def fault_stored() -> bool:
                return any(a.kind == "transmission_fault" for a in await gw.store.alarms())

            await wait_for(fault_stored, timeout=5, what="path fault alarm")
            assert gw.paths["primary"].ok is False
            police.resume()
            await wait_for(lambda: gw.paths["primary"].ok, timeout=5, what="path restored")
            # Both the fault and its restore reach the receiver once it answers again.
            await police.wait_for(
                lambda: {"YC", "YK"} <= {m.code for m in police.alarms}, timeout=10
            )


async def test_encrypted_dc09(mosquitto: Mosquitto, tmp_path: Path) -> None:
    key_hex = "000102030405060708090A0B0C0D0E0F101112131415161718191A1B1C1D1E1F"  # AES-256
    async with PoliceReceiver(udp=False, key=bytes.fromhex(key_hex)) as police:
        cfg = gateway_config(tmp_path, mosquitto.port, police.tcp_port, key_hex=key_hex)
        async with run_gateway(cfg) as gw, client(mosquitto.port) as campus:
            await wait_for(gw.mqtt.connected.is_set)
            ev = make_event()
            await publish_event(campus, ev)
            await police.wait_for(lambda: len(police.alarms) == 1)
            assert police.alarms[0].encrypted
            assert police.alarms[0].code == "PA"
            await wait_for(lambda: _state(gw, ev.id, "police_received"))


async def test_every_default_code_is_understood(mosquitto: Mosquitto, tmp_path: Path) -> None:
    """Each event kind the gateway relays by default is a code the receiver knows (no DUH)."""
    kinds = ["panic", "duress", "holdup", "fire", "intrusion", "tamper", "trouble"]
    async with PoliceReceiver(udp=False) as police:
        cfg = gateway_config(tmp_path, mosquitto.port, police.tcp_port)
        async with run_gateway(cfg) as gw, client(mosquitto.port) as campus:
            await wait_for(gw.mqtt.connected.is_set)
            for i, kind in enumerate(kinds):
                await publish_event(campus, make_event(kind=kind, seq=i + 1))
            await police.wait_for(lambda: len(police.alarms) == len(kinds), timeout=10)
            assert police.counters.duh == 0
            codes = [m.contact_id.code for m in police.alarms if m.contact_id]
            assert codes == [120, 121, 122, 110, 130, 137, 380]


async def test_bollard_events_only_impact_goes_to_police(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    async with PoliceReceiver(udp=False) as police:
        cfg = gateway_config(tmp_path, mosquitto.port, police.tcp_port)
        async with run_gateway(cfg) as gw, client(mosquitto.port) as campus:
            await wait_for(gw.mqtt.connected.is_set)
            for i, kind in enumerate(
                ["bollard_state", "bollard_trouble", "schedule_violation", "bollard_command"]
            ):
                await publish_event(campus, make_event(kind=kind, severity="medium", seq=i + 1))
            impact = make_event(kind="bollard_impact", zone_no=22, seq=9)
            await publish_event(campus, impact)
            await wait_for(lambda: _state(gw, impact.id, "police_received"))
            assert [m.contact_id.code for m in police.alarms if m.contact_id] == [150]
            assert gw.ingest.accepted["event"] == 5
