"""Press a button on a simulated DI module; the police receiver has it; the campus knows.

Every hop is real: pymodbus server <-> edge (Modbus TCP), edge <-> Mosquitto <-> gateway (MQTT),
gateway <-> police receiver (DC-09 over TCP).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from contract import topics
from contract.models import DeviceStatus
from edge.daemon import event_listener_queue, run_edge, status_listener_queue
from gateway.service import run_gateway
from simulators.modbus_io import DIModuleSimulator
from simulators.police import PoliceReceiver
from tests.edgekit import edge_config
from tests.gwkit import CAMPUS, client, gateway_config
from tests.helpers import Mosquitto, wait_for


def panics(police: PoliceReceiver) -> list[int]:
    return [m.contact_id.zone for m in police.messages if m.contact_id and m.code == "PA"]


async def test_press_reaches_police_and_campus_sees_it(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    async with (
        DIModuleSimulator("adam-6050") as sim,
        PoliceReceiver(udp=False) as police,
        run_gateway(gateway_config(tmp_path, mosquitto.port, police.tcp_port)) as gw,
    ):
        await wait_for(gw.mqtt.connected.is_set)
        async with run_edge(edge_config(tmp_path, mosquitto.port, sim.port)) as edge:
            events = event_listener_queue(edge)
            statuses = status_listener_queue(edge)
            await wait_for(edge.uplink.connected.is_set)
            await sim.press(1, 0.005)  # 5 ms: far shorter than the 50 ms poll
            ev = await asyncio.wait_for(events.get(), 5)
            assert (ev.kind, ev.point, ev.zone_no, ev.restore) == ("panic", "btn-gate", 2, False)
            # Seen by the module's latch between two polls (short_press), or, when a poll fell
            # inside the 5 ms (1 in 10 here), by the level: an alarm either way. The latch path
            # itself: tests/test_edge_rules.py and the fifty presses below.
            assert ev.detail.get("short_press") in (True, None)
            await police.wait_for(lambda: panics(police) == [2])
            status = await asyncio.wait_for(statuses.get(), 5)
            while status.state != "police_received":
                status = await asyncio.wait_for(statuses.get(), 5)
            assert status.alarm_id == ev.id and status.path == "primary"
            steps = await edge.outbox.alarm_statuses(ev.id)
            assert [s[0] for s in steps] == ["received", "police_received"]
            # The restore follows as Contact ID qualifier 3.
            await police.wait_for(
                lambda: any(m.contact_id and m.contact_id.qualifier == 3 for m in police.messages)
            )


async def test_fifty_short_presses_none_missed(mosquitto: Mosquitto, tmp_path: Path) -> None:
    async with (
        DIModuleSimulator("adam-6050") as sim,
        PoliceReceiver(udp=False) as police,
        run_gateway(gateway_config(tmp_path, mosquitto.port, police.tcp_port)) as gw,
    ):
        await wait_for(gw.mqtt.connected.is_set)
        async with run_edge(edge_config(tmp_path, mosquitto.port, sim.port)) as edge:
            await wait_for(edge.uplink.connected.is_set)
            for _ in range(50):
                await sim.press(0, 0.005)
                # The next press must come after the edge saw this one: otherwise two presses
                # inside one poll are one latched alarm (as on the real module).
                before = sim.latched(0)
                await wait_for(lambda b=before: not sim.latched(0) or not b, timeout=5)
            await police.wait_for(lambda: len(panics(police)) >= 50, timeout=30)
            assert len(panics(police)) == 50


async def test_broker_down_at_start_then_up(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path / "broker")
    # In production the gateway's persistent session is on the broker long before a campus
    # goes quiet; create it, then take the broker down before the edge starts.
    broker.start()
    async with (
        PoliceReceiver(udp=False) as p0,
        run_gateway(gateway_config(tmp_path, broker.port, p0.tcp_port)) as gw0,
    ):
        await wait_for(gw0.mqtt.connected.is_set)
    broker.stop()
    async with (
        DIModuleSimulator("adam-6050") as sim,
        PoliceReceiver(udp=False) as police,
        run_edge(edge_config(tmp_path, broker.port, sim.port)) as edge,
    ):
        events = event_listener_queue(edge)
        for ch in (0, 1, 0):
            await sim.press(ch, 0.01)
            await asyncio.wait_for(events.get(), 5)  # the alarm
            await asyncio.wait_for(events.get(), 5)  # its restore
        assert not edge.uplink.connected.is_set()
        assert edge.outbox.depth >= 6  # on disk, waiting
        broker.start()
        try:
            async with run_gateway(gateway_config(tmp_path, broker.port, police.tcp_port)):
                await police.wait_for(lambda: len(panics(police)) >= 3, timeout=20)
                assert panics(police) == [1, 2, 1]  # in order, none lost, none twice
        finally:
            broker.stop()


async def test_broker_restart_mid_run(mosquitto: Mosquitto, tmp_path: Path) -> None:
    async with (
        DIModuleSimulator("adam-6050") as sim,
        PoliceReceiver(udp=False) as police,
        run_gateway(gateway_config(tmp_path, mosquitto.port, police.tcp_port)) as gw,
        run_edge(edge_config(tmp_path, mosquitto.port, sim.port)) as edge,
    ):
        await wait_for(edge.uplink.connected.is_set)
        await wait_for(gw.mqtt.connected.is_set)
        await sim.press(0, 0.01)
        await police.wait_for(lambda: panics(police) == [1])
        mosquitto.stop()
        await wait_for(lambda: not edge.uplink.connected.is_set(), what="uplink down")
        await sim.press(1, 0.01)  # pressed while the broker is away
        await wait_for(lambda: edge.outbox.depth > 0, what="alarm queued")
        mosquitto.start()
        await police.wait_for(lambda: panics(police) == [1, 2], timeout=20)


async def test_unplugged_module_goes_offline_never_stale(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    async with DIModuleSimulator("adam-6050") as sim:
        cfg = edge_config(tmp_path, mosquitto.port, sim.port, poll=0.05, timeout=0.2)
        async with run_edge(cfg) as edge, client(mosquitto.port) as watcher:
            await watcher.subscribe(topics.device_status_topic(CAMPUS, "di-1"), qos=1)
            events = event_listener_queue(edge)
            poller = edge.pollers["di-1"]
            await wait_for(lambda: poller.online is True)
            await sim.unplug("silent")  # a cut cable: requests vanish, replies never come
            t0 = asyncio.get_running_loop().time()
            ev = await asyncio.wait_for(events.get(), 5)
            elapsed = asyncio.get_running_loop().time() - t0
            assert ev.kind == "device_offline"
            # Offline within 3 poll intervals plus the timeout.
            assert elapsed <= 3 * 0.05 + 0.2 + 0.1, elapsed
            st = poller.status()
            assert st.online is False and st.points == {} and st.error

            async def offline_published() -> bool:
                async for m in watcher.messages:
                    s = DeviceStatus.model_validate_json(bytes(m.payload))  # type: ignore[arg-type]
                    if not s.online:
                        return True
                return False

            assert await asyncio.wait_for(offline_published(), 5)
            await sim.plug()
            ev = await asyncio.wait_for(events.get(), 5)
            assert ev.kind == "device_online"


async def test_exception_and_garbage_are_device_faults(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    async with DIModuleSimulator("adam-6050") as sim:
        cfg = edge_config(tmp_path, mosquitto.port, sim.port, poll=0.05, timeout=0.2)
        async with run_edge(cfg) as edge:
            events = event_listener_queue(edge)
            poller = edge.pollers["di-1"]
            await wait_for(lambda: poller.online is True)
            sim.exception_mode(2)
            ev = await asyncio.wait_for(events.get(), 5)
            assert ev.kind == "device_offline" and "exception" in str(ev.detail["error"]).lower()
            sim.normal_mode()
            assert (await asyncio.wait_for(events.get(), 5)).kind == "device_online"
            sim.garbage_mode("noise")
            assert (await asyncio.wait_for(events.get(), 5)).kind == "device_offline"
            sim.normal_mode()
            assert (await asyncio.wait_for(events.get(), 5)).kind == "device_online"
            # Still polling and still catching presses after all that.
            await sim.press(0, 0.005)
            ev = await asyncio.wait_for(events.get(), 5)
            assert ev.kind == "panic"


async def test_edge_rejects_bad_downlink_messages(mosquitto: Mosquitto, tmp_path: Path) -> None:
    async with (
        DIModuleSimulator("adam-6050") as sim,
        run_edge(edge_config(tmp_path, mosquitto.port, sim.port)) as edge,
        client(mosquitto.port) as centre,
    ):
        events = event_listener_queue(edge)
        await wait_for(edge.uplink.connected.is_set)
        t = topics.alarm_status_topic(CAMPUS)
        await centre.publish(t, b"{broken", qos=1)
        await centre.publish(t, b"x" * (70 * 1024), qos=1)
        other = (
            '{"v":1,"alarm_id":"' + "A" * 26 + '","campus":"other-campus",'
            '"state":"closed","ts":"2026-11-29T00:00:00Z"}'
        )
        await centre.publish(t, other, qos=1)
        await centre.publish(f"cg/v1/{CAMPUS}/down/whatever", b"{}", qos=1)
        await wait_for(lambda: edge.rejected == 4, what="four rejections")
        # Still polling and still sending.
        await sim.press(0, 0.005)
        ev = await asyncio.wait_for(events.get(), 5)
        assert ev.kind == "panic"
