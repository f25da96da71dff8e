"""ONVIF cameras through the edge: the camera simulator (real SOAP over HTTP, WS-Security), the
edge, real Mosquitto, the gateway and the police receiver."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from contract.config import EdgeConfig, parse_config
from contract.models import Event
from edge.daemon import event_listener_queue, run_edge
from gateway.service import run_gateway
from simulators.camera import CameraSimulator
from simulators.police import PoliceReceiver
from tests.gwkit import CAMPUS, gateway_config
from tests.helpers import Mosquitto, wait_for

PASSWORD = "cam-secret-1"
DI = "tns1:Device/Trigger/DigitalInput"
TAMPER = "tns1:RuleEngine/TamperDetector/Tamper"


def camera_edge(
    tmp: Path, broker: int, port: int, password: str = PASSWORD, **extra: Any
) -> EdgeConfig:
    return parse_config(
        {
            "campus": {"id": CAMPUS, "name": "Test school"},
            "edge": {"id": "edge-1", "data_dir": str(tmp / "edge")},
            "mqtt": {"host": "127.0.0.1", "port": broker, "keepalive": 5},
            "zones": [{"id": "gate", "name": "South gate"}],
            "cameras": [
                {
                    "id": "cam-gate",
                    "host": "127.0.0.1",
                    "port": port,
                    "username": "admin",
                    "password": password,
                    "timeout": 3,
                    "zone": "gate",
                    "inputs": [
                        {"source": "DI_0", "id": "btn-at-cam", "kind": "panic", "alarm_zone": 31}
                    ],
                    **extra,
                }
            ],
        },
        EdgeConfig,
        "camera-test",
    )


async def next_of(q: asyncio.Queue[Event], kind: str) -> Event:
    while True:
        ev = await asyncio.wait_for(q.get(), 10)
        if ev.kind == kind:
            return ev


async def test_camera_input_panic_reaches_police(mosquitto: Mosquitto, tmp_path: Path) -> None:
    async with (
        CameraSimulator(password=PASSWORD, clock_offset=3600) as cam,
        PoliceReceiver(udp=False) as police,
        run_gateway(gateway_config(tmp_path, mosquitto.port, police.tcp_port)) as gw,
        run_edge(camera_edge(tmp_path, mosquitto.port, cam.port)) as edge,
    ):
        await wait_for(gw.mqtt.connected.is_set)
        watcher = edge.cameras["cam-gate"]
        await wait_for(lambda: cam.active_subscriptions >= 1, timeout=15, what="subscribed")
        q = event_listener_queue(edge)
        cam.emit(DI, {"LogicalState": "true"}, {"InputToken": "DI_0"})
        ev = await next_of(q, "panic")
        assert (ev.device, ev.point, ev.zone_no) == ("cam-gate", "btn-at-cam", 31)
        await police.wait_for(lambda: any(m.code == "PA" for m in police.messages), timeout=10)
        cid = next(m.contact_id for m in police.messages if m.code == "PA")
        assert cid is not None and cid.zone == 31
        cam.emit(DI, {"LogicalState": "false"}, {"InputToken": "DI_0"})
        assert (await next_of(q, "panic")).restore
        # The camera's clock is an hour off: it still authenticates, and the skew is reported.
        skew = watcher.status().points["clock_skew_s"]
        assert isinstance(skew, float | int) and abs(skew - 3600) < 5
        # Camera analytics become events for the guard, not alarms for the police.
        cam.emit(TAMPER, {"IsTamper": "true"})
        tamper = await next_of(q, "camera_tamper")
        assert not tamper.restore
        cam.emit(TAMPER, {"IsTamper": "false"})
        assert (await next_of(q, "camera_tamper")).restore
        assert all(m.code in ("PA", "PH") for m in police.messages)


async def test_wrong_password_is_a_clear_device_error(mosquitto: Mosquitto, tmp_path: Path) -> None:
    async with (
        CameraSimulator(password=PASSWORD) as cam,
        run_edge(camera_edge(tmp_path, mosquitto.port, cam.port, password="wrong")) as edge,
    ):
        watcher = edge.cameras["cam-gate"]
        await wait_for(lambda: watcher.online is False, timeout=15)
        st = watcher.status()
        assert st.online is False and st.points == {}
        assert st.error is not None and "authentication failed" in st.error
        failures = cam.auth_failures
        # Not retried in a tight loop: no new attempts within a few seconds.
        await asyncio.sleep(1.0)  # a window to count retries in: a rate, not a wait
        assert cam.auth_failures - failures <= 1
