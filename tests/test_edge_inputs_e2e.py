"""The edge with other wirings than a latched TCP module: a supervised (EOL) loop, and a
module on Modbus RTU (a socat pty pair standing in for the RS-485 line)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from contract.config import EdgeConfig, parse_config
from edge.daemon import event_listener_queue, run_edge
from simulators.modbus_io import DIModuleSimulator
from tests.edgekit import edge_config
from tests.gwkit import CAMPUS
from tests.helpers import Mosquitto, wait_for
from tests.test_modbus_rtu import pty_pair  # noqa: F401  (fixture)


async def test_eol_loop_alarm_cut_short(mosquitto: Mosquitto, tmp_path: Path) -> None:
    async with DIModuleSimulator("zlan6042-res") as sim:
        for ch in range(4):
            sim.set_resistance(ch, 1000)  # Galaxy 1k+1k: normal
        inputs = [
            {
                "channel": 0,
                "id": "loop-1",
                "kind": "panic",
                "mode": "eol",
                "eol": {"scheme": "galaxy", "samples": 2},
                "alarm_zone": 5,
            }
        ]
        cfg = edge_config(tmp_path, mosquitto.port, sim.port, profile="zlan6042-res", inputs=inputs)
        async with run_edge(cfg) as edge:
            events = event_listener_queue(edge)
            poller = edge.pollers["di-1"]
            await wait_for(lambda: poller.trackers[0].state == "normal")

            async def next_event() -> tuple[str, bool, object]:
                ev = await asyncio.wait_for(events.get(), 5)
                return ev.kind, ev.restore, ev.detail.get("wire")

            sim.set_resistance(0, 2000)  # contact opened: alarm band
            assert await next_event() == ("panic", False, "alarm")
            sim.set_resistance(0, 1000)
            assert await next_event() == ("panic", True, "alarm")
            sim.set_resistance(0, 50_000)  # wire cut
            assert await next_event() == ("trouble", False, "cut")
            sim.set_resistance(0, 100)  # shorted: someone bridged the loop
            assert await next_event() == ("trouble", True, "cut")
            assert await next_event() == ("tamper", False, "short")


async def test_rtu_module_through_the_edge(
    mosquitto: Mosquitto,
    tmp_path: Path,
    pty_pair: tuple[str, str],  # noqa: F811
) -> None:
    dev, host = pty_pair
    async with DIModuleSimulator("adam-6050", serial_port=dev, units=(3,)) as sim:
        cfg = parse_config(
            {
                "campus": {"id": CAMPUS, "name": "RTU school"},
                "edge": {"id": "edge-1", "data_dir": str(tmp_path / "edge")},
                "mqtt": {"host": "127.0.0.1", "port": mosquitto.port},
                "devices": [
                    {
                        "id": "di-rs485",
                        "profile": "adam-6050",
                        "transport": "rtu",
                        "unit": 3,
                        "serial": {"port": host, "baudrate": 115200},
                        "poll_interval": 0.05,
                        "timeout": 0.3,
                        "inputs": [{"channel": 0, "id": "btn", "kind": "panic", "mode": "latch"}],
                    }
                ],
            },
            EdgeConfig,
            "rtu-test",
        )
        async with run_edge(cfg) as edge:
            events = event_listener_queue(edge)
            await wait_for(lambda: edge.pollers["di-rs485"].online is True)
            await sim.press(0, 0.005)
            ev = await asyncio.wait_for(events.get(), 5)
            assert (ev.kind, ev.device, ev.restore) == ("panic", "di-rs485", False)
