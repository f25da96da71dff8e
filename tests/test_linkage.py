"""Alarm linkage at the edge (issue 13, part 3): relay outputs seen on the simulator's coils, PTZ
GotoPreset reaching the camera simulator, a bollard raise refused by the interlock, and the
alarm's own way to the police never held up by a hanging reaction."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from contract.config import ConfigError, EdgeConfig, parse_config
from contract.models import Event
from edge.daemon import EdgeRuntime, event_listener_queue, run_edge
from gateway.service import run_gateway
from simulators.bollard import BollardSimulator
from simulators.camera import CameraSimulator
from simulators.modbus_io import DIModuleSimulator
from simulators.police import PoliceReceiver
from tests.gwkit import CAMPUS, gateway_config
from tests.helpers import Mosquitto, wait_for

PASSWORD = "cam-secret-1"
SIREN = 2  # DO channel of the ADAM-6050 the siren relay hangs on


def linkage_cfg(
    tmp: Path,
    broker: int,
    modbus: int,
    rules: list[dict[str, Any]],
    *,
    camera: int | None = None,
    bollard: int | None = None,
) -> EdgeConfig:
    data: dict[str, Any] = {
        "campus": {"id": CAMPUS, "name": "Test school"},
        "edge": {"id": "edge-1", "data_dir": str(tmp / "edge")},
        "mqtt": {"host": "127.0.0.1", "port": broker, "keepalive": 5},
        "zones": [{"id": "gate", "name": "South gate"}, {"id": "hall"}],
        "devices": [
            {
                "id": "di-1",
                "profile": "adam-6050",
                "host": "127.0.0.1",
                "port": modbus,
                "poll_interval": 0.05,
                "timeout": 0.3,
                "zone": "gate",
                "inputs": [
                    {"channel": 0, "id": "btn-gate", "kind": "panic", "alarm_zone": 1},
                    {"channel": 1, "id": "btn-hall", "kind": "panic", "zone": "hall"},
                ],
            }
        ],
        "linkage": rules,
    }
    if camera is not None:
        data["cameras"] = [
            {
                "id": "cam-gate",
                "host": "127.0.0.1",
                "port": camera,
                "password": PASSWORD,
                "timeout": 3,
                "zone": "gate",
            }
        ]
    if bollard is not None:
        data["bollards"] = [
            {
                "id": "gate-plc",
                "host": "127.0.0.1",
                "port": bollard,
                "poll_interval": 0.05,
                "timeout": 0.3,
                "zone": "gate",
                "bollards": [{"index": 0, "id": "b-left"}],
            }
        ]
    return parse_config(data, EdgeConfig, "linkage-test")


async def linkage_event(
    q: asyncio.Queue[Event], action: str, timeout: float = 10, seen: list[Event] | None = None
) -> Event:
    deadline = time.monotonic() + timeout
    while True:
        ev = await asyncio.wait_for(q.get(), max(0.01, deadline - time.monotonic()))
        if seen is not None:
            seen.append(ev)
        if ev.kind == "linkage" and ev.detail.get("action") == action:
            return ev


async def panic(q: asyncio.Queue[Event]) -> Event:
    while True:
        ev = await asyncio.wait_for(q.get(), 5)
        if ev.kind == "panic" and not ev.restore:
            return ev


async def started(edge: EdgeRuntime) -> None:
    await wait_for(lambda: all(p.online for p in edge.pollers.values()), what="DI module online")


async def test_press_switches_the_siren_on_then_off(mosquitto: Mosquitto, tmp_path: Path) -> None:
    rule = {
        "id": "gate-siren",
        "zones": ["gate"],
        "outputs": [{"device": "di-1", "channel": SIREN, "seconds": 0.6, "label": "siren"}],
    }
    async with (
        DIModuleSimulator("adam-6050") as sim,
        run_edge(linkage_cfg(tmp_path, mosquitto.port, sim.port, [rule])) as edge,
    ):
        await started(edge)
        q = event_listener_queue(edge)
        await sim.press(0, 0.01)
        alarm = await panic(q)
        raised = time.monotonic()
        await wait_for(lambda: sim.output(SIREN), timeout=1.0, what="siren on")
        assert time.monotonic() - raised < 0.5
        on = await linkage_event(q, "output_on")
        assert on.detail["ok"] is True and on.detail["rule"] == "gate-siren"
        assert on.detail["alarm_id"] == alarm.id and "DO2" in str(on.detail["target"])
        off = await linkage_event(q, "output_off", timeout=5)
        assert off.detail["ok"] is True and not sim.output(SIREN)
        assert time.monotonic() - raised >= 0.55
        # An alarm in another zone does not sound the gate's siren.
        await sim.press(1, 0.01)
        await panic(q)
        await asyncio.sleep(0.3)
        assert not sim.output(SIREN)


async def test_reports_of_one_alarm_are_recorded_in_the_order_they_were_made(
    tmp_path: Path,
) -> None:
    """Every report of an alarm wakes at the same hold deadline; the timeline must still read
    "siren on" before "siren off" (a CI run once saw them swapped)."""
    from datetime import UTC, datetime

    from contract.config import LinkageRuleConfig
    from contract.models import new_id
    from edge.linkage import Linkage

    class Recorder:
        def __init__(self) -> None:
            self.actions: list[str] = []

        async def emit(self, kind: str, **kw: Any) -> None:
            self.actions.append(str(kw["detail"]["action"]))

    cfg = linkage_cfg(tmp_path, 1883, 502, [])
    sink = Recorder()
    linkage = Linkage(cfg, sink, {}, {}, {})  # type: ignore[arg-type]
    event = Event(
        id=new_id(),
        campus=CAMPUS,
        edge="edge-1",
        seq=1,
        ts=datetime.now(UTC),
        kind="panic",
        severity="critical",
        device="di-1",
        zone="gate",
    )
    linkage._holds[event.id] = (asyncio.Event(), time.monotonic() + 0.05)
    rule = LinkageRuleConfig(id="r")
    names = [f"step-{i:02d}" for i in range(40)]
    tasks = []
    for name in names:
        tasks.append(asyncio.create_task(linkage._report(rule, name, "t", "di-1", event, None)))
        await asyncio.sleep(0)
    await asyncio.gather(*tasks)
    assert sink.actions == names
    assert not linkage._last_report


async def test_hanging_ptz_does_not_delay_the_alarm_and_is_reported(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    rule = {"id": "gate-look", "timeout": 1.5, "ptz": [{"camera": "cam-gate", "preset": "gate"}]}
    async with (
        DIModuleSimulator("adam-6050") as sim,
        CameraSimulator(password=PASSWORD) as cam,
        PoliceReceiver(udp=False) as police,
        run_gateway(gateway_config(tmp_path, mosquitto.port, police.tcp_port)) as gw,
    ):
        await wait_for(gw.mqtt.connected.is_set)
        cfg = linkage_cfg(tmp_path, mosquitto.port, sim.port, [rule], camera=cam.port)
        async with run_edge(cfg) as edge:
            await started(edge)
            await wait_for(edge.uplink.connected.is_set)
            await wait_for(lambda: edge.cameras["cam-gate"].online is True, timeout=15)
            q = event_listener_queue(edge)
            # First a camera that answers: the preset is reached.
            await sim.press(0, 0.01)
            await panic(q)
            ok = await linkage_event(q, "ptz_preset")
            assert ok.detail["ok"] is True, ok.detail
            assert cam.ptz_gotos[-1] == ("profile_main", "gate")
            # Then a PTZ head that hangs: the alarm is at the police long before the report.
            cam.ptz_delay = 10
            t0 = time.monotonic()
            await sim.press(0, 0.01)
            await panic(q)
            await police.wait_for(
                lambda: sum(1 for m in police.messages if m.code == "PA") >= 2, timeout=5
            )
            to_police = time.monotonic() - t0
            assert to_police < 1.0, to_police
            failed = await linkage_event(q, "ptz_preset")
            assert failed.detail["ok"] is False and "1.5 s" in str(failed.detail["error"])
            assert time.monotonic() - t0 >= 1.4


async def test_bollard_raise_refused_by_the_vehicle_loop_is_reported(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    rule = {"id": "gate-block", "bollards": [{"device": "gate-plc", "bollard": 0}]}
    async with (
        DIModuleSimulator("adam-6050") as sim,
        BollardSimulator(bollards=1, travel_time=0.3) as plc,
    ):
        cfg = linkage_cfg(tmp_path, mosquitto.port, sim.port, [rule], bollard=plc.port)
        async with run_edge(cfg) as edge:
            await started(edge)
            await wait_for(
                lambda: edge.bollards["gate-plc"].state_of("b-left").value == "down", timeout=5
            )
            plc.set_vehicle_loop(0, True)
            await asyncio.sleep(0.3)
            q = event_listener_queue(edge)
            await sim.press(0, 0.01)
            seen: list[Event] = []
            ev = await linkage_event(q, "bollard_raise", seen=seen)
            assert ev.detail["ok"] is False and ev.detail["outcome"] == "refused"
            assert "vehicle_on_loop" in str(ev.detail["error"])
            # Audited as any command: the policy's decision is a bollard_command event by linkage.
            audit = [e for e in seen if e.kind == "bollard_command"]
            assert [(e.detail["user"], e.detail["outcome"]) for e in audit] == [
                ("linkage", "refused")
            ]
            assert audit[0].detail["command_id"] == ev.detail["command_id"]
            assert edge.bollards["gate-plc"].state_of("b-left").value == "down"


@pytest.mark.parametrize(
    ("action", "needle"),
    [
        ({"outputs": [{"device": "di-9", "channel": 0}]}, "unknown device 'di-9'"),
        ({"ptz": [{"camera": "cam-x", "preset": "1"}]}, "unknown camera 'cam-x'"),
        ({"bollards": [{"device": "plc-x", "bollard": 0}]}, "unknown bollard controller"),
        ({"zones": ["nowhere"], "outputs": [{"device": "di-1", "channel": 0}]}, "unknown zone"),
    ],
)
def test_rule_naming_an_unknown_target_is_a_config_error(
    tmp_path: Path, action: dict[str, Any], needle: str
) -> None:
    with pytest.raises(ConfigError) as err:
        linkage_cfg(tmp_path, 1883, 502, [{"id": "bad-rule", **action}])
    assert "linkage rule 'bad-rule'" in str(err.value) and needle in str(err.value)
