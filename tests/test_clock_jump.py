"""A wall clock that jumps (an NTP step, a campus box whose clock battery died) must not hold an
alarm back. The edge runs as a real process whose wall clock ``tests/clockshift.c`` shifts;
the monotonic clock goes on, as on a real machine. The fault suite (``tests/test_faults.py``,
"clock jumps") jumps both the edge's and the gateway's clocks under load."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from pathlib import Path

import aiomqtt
import pytest
import yaml

from contract import topics
from edge.uplink import RECEIPT_TIMEOUT
from simulators.modbus_io import DIModuleSimulator
from tests.faults import Proc, WallClock, clockshift_library
from tests.helpers import Mosquitto
from tests.test_faults import QUIET_CAMPUS, quiet_edge

CAMPUS = QUIET_CAMPUS


def edge_yaml(tmp: Path, broker_port: int, di_port: int) -> Path:
    """The flood test's one-button campus edge (``tests/test_faults.py``)."""
    path = tmp / "edge.yaml"
    path.write_text(yaml.safe_dump(quiet_edge(tmp, broker_port, di_port)))
    return path


@pytest.mark.timeout(90)
async def test_unconfirmed_alarm_is_sent_again_after_the_clock_steps_back(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """No gateway confirms the alarm (the broker took it, then lost it, or the gateway that had
    it died): the edge sends it again after ``RECEIPT_TIMEOUT``. With its wall clock stepped an
    hour back just after sending, it used to wait an hour and ten seconds."""
    library = clockshift_library()
    if library is None:
        pytest.skip("no C compiler to build tests/clockshift.c (scripts/setup.sh test)")
    clock = WallClock(tmp_path / "clock", library)
    async with (
        DIModuleSimulator("adam-6050") as sim,
        aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="watch") as watch,
    ):
        await watch.subscribe(topics.event_topic(CAMPUS), qos=1)
        edge = Proc("edge", edge_yaml(tmp_path, mosquitto.port, sim.port), tmp_path / "edge.log")
        edge.clock = clock
        edge.start()
        try:
            await edge.wait_ready("running:")
            await sim.press(0, 0.01)
            seen: dict[str, int] = {}
            alarm: str | None = None
            stepped_at = 0.0
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(3 * RECEIPT_TIMEOUT + 10):
                    async for m in watch.messages:
                        ev = json.loads(bytes(m.payload))  # type: ignore[arg-type]
                        if ev["kind"] != "panic" or ev.get("restore"):
                            continue
                        seen[ev["id"]] = seen.get(ev["id"], 0) + 1
                        if alarm is None:
                            alarm = ev["id"]
                            clock.jump(-3600.0)  # the clock steps an hour back, just after
                            stepped_at = time.monotonic()
                        elif ev["id"] == alarm:
                            break
            waited = time.monotonic() - stepped_at
            assert alarm is not None and seen[alarm] == 2, (seen, edge.text()[-2000:])
            assert waited < RECEIPT_TIMEOUT + 5, waited
        finally:
            edge.stop()
