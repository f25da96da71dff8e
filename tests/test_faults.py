"""The fault suite (issue 11): alarms are produced continuously (panic presses on a DI module,
vehicle impacts on bollards, line crossings on an ONVIF camera) while, one at a time and then
together, the broker restarts, the gateway and the edge are killed with SIGKILL, the police
receiver goes down, the edge's link is cut (a TCP proxy the test controls) and the edge's disk
fills up, and the wall clocks of the edge and the gateway jump. After each fault every injected
alarm must reach the police receiver, once; the counts are printed per scenario.

Everything is real: Mosquitto, the gateway and the edge as processes (`campusguard gateway`,
`campusguard edge`), the device simulators on real sockets, the DC-09 receiver simulator; the
clock jumps through ``tests/clockshift.c`` loaded into the edge and gateway processes. The
short run is in the default suite; ``-m slow`` runs minutes per scenario and all faults at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from edge.events import EventSink
from edge.outbox import PRIORITY_TELEMETRY, RESERVE_BYTES, Outbox, OutboxFullError
from simulators.bollard import BollardSimulator
from simulators.camera import CameraSimulator
from simulators.modbus_io import DIModuleSimulator
from simulators.police import PoliceReceiver
from tests.edgekit import edge_config
from tests.faults import (
    CAMERA_INTRUSION,
    CAMERA_PASSWORD,
    ROOT,
    Driver,
    PhaseResult,
    Proc,
    TcpProxy,
    Tmpfs,
    WallClock,
    all_delivered,
    can_mount_tmpfs,
    clockshift_library,
    fault_edge_config,
    fault_gateway_config,
    gateway_exactly_once,
    police_alarms,
    tally,
)
from tests.helpers import Mosquitto, env_with_pythonpath, wait_for

GATEWAY_READY = "(events stream)"
EDGE_READY = "running:"


@dataclass
class Rig:
    """One campus (edge, DI module, bollards, camera) and the centre (broker, gateway, police),
    with the edge's MQTT link through a proxy and its data on a small tmpfs."""

    tmp: Path
    broker: Mosquitto
    proxy: TcpProxy
    police: PoliceReceiver
    driver: Driver
    gateway: Proc
    edge: Proc
    disk: Tmpfs | None
    clocks: tuple[WallClock, WallClock] | None
    """The edge's and the gateway's wall clocks (None: no C compiler to build the shifter)."""
    results: list[PhaseResult] = field(default_factory=list)
    suppressed: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    phase_starts: list[tuple[float, str]] = field(default_factory=list)

    def phase_at(self, mono: float) -> str:
        name = "start"
        for start, phase in self.phase_starts:
            if start <= mono:
                name = phase
        return name

    async def run(self, phase: str, load_s: float, fault: Callable[[], Awaitable[None]]) -> None:
        """Drive load for ``load_s`` while ``fault`` runs, then wait until the police have every
        alarm injected so far."""
        before = self.police.counters.duplicates
        self.phase_starts.append((time.monotonic(), phase))
        self.driver.start(phase)
        started = time.monotonic()
        await fault()
        rest = load_s - (time.monotonic() - started)
        if rest > 0:
            await asyncio.sleep(rest)  # the scenario's remaining load
        await self.driver.pause()
        await self.driver.settle()
        await self.ensure_up()
        try:
            await self.police.wait_for(lambda: all_delivered(self.driver, self.police), 90)
        except TimeoutError:
            self.notes.append(f"{phase}: not every alarm reached the police within 90 s")
        self.suppressed[phase] = self.police.counters.duplicates - before

    async def ensure_up(self) -> None:
        if not self.gateway.alive:
            self.gateway.start()
        if not self.edge.alive:
            self.edge.start()
        await self.gateway.wait_ready(GATEWAY_READY)
        await self.edge.wait_ready(EDGE_READY)

    # ------------------------------------------------------------------ faults

    async def broker_restart(self, down_s: float) -> None:
        await asyncio.sleep(down_s / 2)
        self.broker.stop()
        await asyncio.sleep(down_s)  # the broker is away this long
        self.broker.start()

    async def gateway_kill(self, down_s: float) -> None:
        await asyncio.sleep(down_s / 2)
        self.gateway.kill()
        await asyncio.sleep(down_s)  # the gateway is dead this long
        self.gateway.start()

    async def edge_kill_after_press(self, down_s: float) -> None:
        await asyncio.sleep(down_s / 2)
        n = sum(1 for i in self.driver.injected if i.key[0] == 120)
        await wait_for(
            lambda: sum(1 for i in self.driver.injected if i.key[0] == 120) > n,
            timeout=10,
            what="a press",
        )
        self.edge.kill()  # within one step of the driver after the press: right after it
        await asyncio.sleep(down_s)  # the edge is dead this long
        self.edge.start()

    async def police_down(self, down_s: float) -> None:
        await asyncio.sleep(0.5)
        await self.police.stop()
        await asyncio.sleep(down_s)  # the receiver is down this long
        await self.police.start()

    async def link_cut(self, down_s: float) -> None:
        await asyncio.sleep(0.5)
        self.proxy.cut("blackhole")
        await asyncio.sleep(down_s)  # the cable is out this long
        self.proxy.restore()

    async def disk_full(self, full_s: float) -> None:
        assert self.disk is not None
        await asyncio.sleep(0.5)
        self.notes.append(
            f"disk full: before, {self.disk.free_bytes() // 1024} KiB free; {self.disk.usage()}"
        )
        self.disk.fill()
        self.notes.append(f"disk full: {self.disk.free_bytes()} bytes free on the edge's disk")
        await asyncio.sleep(full_s)  # the disk stays full this long
        self.disk.free()
        spent = self.edge.text().count("gave back the outbox's")
        held = self.edge.text().count("held in memory")
        self.notes.append(
            f"disk full: the edge gave back its outbox reserve {spent} time(s) so far; "
            f"events held in memory for want of disk: {held}"
        )

    async def clock_jumps(self, hold_s: float) -> None:
        """The edge's clock jumps 1 h ahead, the gateway's 10 min back, the edge's 2 h back
        (1 h behind), the gateway's 20 min ahead, then both return: NTP steps, or a campus box
        whose clock battery died. Each holds for ``hold_s``."""
        assert self.clocks is not None
        edge, gateway = self.clocks
        await asyncio.sleep(0.5)
        for clock, to in ((edge, 3600.0), (gateway, -600.0), (edge, -3600.0), (gateway, 600.0)):
            clock.jump(to)
            await asyncio.sleep(hold_s)  # the clock stays jumped this long
        edge.jump(0.0)
        gateway.jump(0.0)
        self.notes.append(
            f"clock jumps: the police receiver NAKed {self.police.counters.nak} message(s) for "
            "their time so far (the gateway's DC-09 sender corrects its clock from the NAK)"
        )

    async def disk_full_link_cut(self, full_s: float) -> None:
        """The disk fills while the link is down: the outbox has to grow, as it does when the
        campus is cut off."""
        await asyncio.gather(self.link_cut(full_s + 1.0), self.disk_full(full_s))


@contextlib.asynccontextmanager
async def rig(
    tmp: Path,
    interval: float = 0.1,
    more_gateway_config: Callable[[dict[str, Any]], None] | None = None,
) -> AsyncIterator[Rig]:
    """``more_gateway_config`` may change the gateway's config (``bench/soak.py`` adds the
    district's campuses)."""
    broker = Mosquitto(tmp / "mosquitto")
    disk: Tmpfs | None = None
    edge_dir = tmp / "edge"
    if can_mount_tmpfs():
        disk = Tmpfs(edge_dir, 32)
        disk.mount()
    broker.start()
    gateway = edge = None
    try:
        async with (
            TcpProxy(broker.port) as proxy,
            PoliceReceiver(udp=False) as police,
            DIModuleSimulator("adam-6050") as di,
            BollardSimulator(bollards=2) as bollards,
            CameraSimulator(password=CAMERA_PASSWORD) as camera,
        ):
            gw_file = tmp / "gateway.yaml"
            gw_data = fault_gateway_config(tmp, broker.port, police.tcp_port or 0)
            if more_gateway_config is not None:
                more_gateway_config(gw_data)
            gw_file.write_text(yaml.safe_dump(gw_data))
            edge_file = tmp / "edge.yaml"
            edge_file.write_text(
                yaml.safe_dump(
                    fault_edge_config(
                        edge_dir / "data", proxy.port, di.port, bollards.port, camera.port
                    )
                )
            )
            library = clockshift_library()
            clocks = None
            if library is not None:
                clocks = (
                    WallClock(tmp / "edge-clock", library),
                    WallClock(tmp / "gw-clock", library),
                )
            gateway = Proc("gateway", gw_file, tmp / "gateway.log", clocks[1] if clocks else None)
            edge = Proc("edge", edge_file, tmp / "edge.log", clocks[0] if clocks else None)
            gateway.start()
            await gateway.wait_ready(GATEWAY_READY)
            edge.start()
            await edge.wait_ready(EDGE_READY)
            await wait_for(lambda: camera.active_subscriptions >= 1, 20, "camera subscribed")
            driver = Driver(di, bollards, camera, interval=interval)
            r = Rig(tmp, broker, proxy, police, driver, gateway, edge, disk, clocks)
            async with driver:
                yield r
    finally:
        for p in (edge, gateway):
            if p is not None:
                p.stop()
        broker.stop()
        if disk is not None:
            disk.umount()


def report(r: Rig) -> str:
    lines = [x.line() for x in tally(r.driver, r.police, r.suppressed)]
    n, twice, disorder = gateway_exactly_once(r.tmp / "gw" / "campusguard.db", r.police)
    lines.append(
        f"gateway store: {n} police alarms map to {n - len(twice)} distinct alarm ids; "
        f"camera crossings no edge subscription took: {r.driver.camera_unseen}, taken or not "
        f"(the subscription ended): {r.driver.camera_unknown}"
    )
    by_phase = Counter(r.phase_at(d.police_mono) for d in disorder)
    for phase, count in by_phase.items():
        example = next(d for d in disorder if r.phase_at(d.police_mono) == phase)
        lines.append(
            f"{phase}: {count} alarm(s) reached the police after a later one of the same "
            f"device (e.g. {example.device} edge seq {example.edge_seq} after {example.after})"
        )
    lines += r.notes
    return "\n".join(lines)


KNOWN_DISORDER: dict[str, str] = {}
"""Phases where alarms may reach the police out of their device's order: none since the relay
keeps a failed alarm first in its campus' lane and a redelivered alarm is taken up at once
(tests/test_relay_order.py)."""


def lost_to_full_disk(log_text: str) -> int:
    """Log records of the way alarms were lost on a full disk before the outbox's reserve: a
    poller's step or a camera's event callback failing on "database or disk is full"."""
    records = re.split(r"\n(?=\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)", log_text)
    return sum(
        1
        for rec in records
        if ("failed unexpectedly" in rec or "event callback failed" in rec)
        and "database or disk is full" in rec
    )


def check(r: Rig) -> list[PhaseResult]:
    results = tally(r.driver, r.police, r.suppressed)
    text = report(r)
    print("\n" + text)
    _, twice, disorder = gateway_exactly_once(r.tmp / "gw" / "campusguard.db", r.police)
    assert not [n for n in r.notes if "not every alarm" in n], text
    assert lost_to_full_disk(r.edge.text()) == 0, text
    assert all(x.lost == 0 for x in results), text
    # Presses and impacts are counted exactly: not one alarm more than injected. The camera's
    # line crossings are reported, not asserted: the edge raises a camera_intrusion when it
    # (re)subscribes with no crossing made (README "Fault suite"), so there may be more.
    got = police_alarms(r.police)
    want = Counter(i.key for i in r.driver.injected if not i.optional)
    extra = {k: len(v) - want[k] for k, v in got.items() if k != CAMERA_INTRUSION}
    assert not {k: n for k, n in extra.items() if n > 0}, text
    assert not twice, text
    # Order is asserted for the buttons and bollards; the camera's crossings are counted and
    # reported (an ONVIF camera keeps no history: one made across an edge restart may be gone).
    unexpected = [
        d
        for d in disorder
        if not d.device.startswith("cam-")
        and not any(k in r.phase_at(d.police_mono) for k in KNOWN_DISORDER)
    ]
    assert not unexpected, text
    return results


SCENARIOS: list[tuple[str, str, float]] = [
    ("steady", "none", 0.0),
    # Early, while the outbox's write-ahead log is still growing: later it has grown to its
    # 4 MiB and is reused in place, so a full disk only bites when the outbox must grow.
    ("edge disk full during a link cut", "disk_full_link_cut", 4.0),
    ("broker restart", "broker_restart", 1.5),
    ("gateway SIGKILL", "gateway_kill", 1.0),
    ("edge SIGKILL after a press", "edge_kill_after_press", 0.5),
    ("police down", "police_down", 3.0),
    ("edge link cut", "link_cut", 4.0),
    ("edge disk full", "disk_full", 3.0),
    ("clock jumps", "clock_jumps", 1.5),
]


async def _one(r: Rig, name: str, fault: str, down: float, load_s: float) -> None:
    async def nothing() -> None:
        return None

    if fault == "none":
        await r.run(name, load_s, nothing)
        return
    if fault.startswith("disk_full") and r.disk is None:
        r.notes.append(f"{name}: skipped (mounting a tmpfs needs root)")
        return
    if fault == "clock_jumps" and r.clocks is None:
        r.notes.append(f"{name}: skipped (no C compiler to build tests/clockshift.c)")
        return
    method: Callable[[float], Awaitable[None]] = getattr(r, fault)
    await r.run(name, load_s, lambda: method(down))


@pytest.mark.timeout(300)
async def test_faults_short(tmp_path: Path) -> None:
    """Each fault once, a few seconds of load each (the default suite's short version)."""
    async with rig(tmp_path) as r:
        for name, fault, down in SCENARIOS:
            await _one(r, name, fault, down, load_s=max(3.0, down + 2.0))

        async def combined() -> None:
            await asyncio.gather(r.police_down(3.0), r.link_cut(3.0), r.gateway_kill(1.0))

        await r.run("combined: police down + link cut + gateway SIGKILL", 5.0, combined)
        check(r)


@pytest.mark.slow
@pytest.mark.timeout(3600)
async def test_faults_long(tmp_path: Path) -> None:
    """Minutes of load per fault, then everything at once, twice."""
    async with rig(tmp_path, interval=0.25) as r:
        for name, fault, down in SCENARIOS:
            long_down = {0.0: 0.0}.get(down, max(down, 20.0))
            if fault in ("police_down", "link_cut", "disk_full_link_cut"):
                long_down = 90.0
            await _one(r, name, fault, long_down, load_s=max(60.0, long_down + 30.0))

        async def everything() -> None:
            async def edge_then_broker() -> None:
                await r.edge_kill_after_press(10.0)
                await r.broker_restart(10.0)

            faults = [
                r.police_down(60.0),
                r.link_cut(30.0),
                r.gateway_kill(15.0),
                edge_then_broker(),
            ]
            if r.disk is not None:
                faults.append(r.disk_full(20.0))
            if r.clocks is not None:
                faults.append(r.clock_jumps(15.0))
            await asyncio.gather(*faults)

        for round_no in (1, 2):
            await r.run(f"all faults at once #{round_no}", 120.0, everything)
        check(r)


# ------------------------------------------------------------------ one campus floods

FLOOD_CAMPUS, QUIET_CAMPUS = "flood-campus", "quiet-campus"
QUIET_ACCOUNT = "2222"


def two_campus_gateway(tmp: Path, broker_port: int, police_port: int) -> dict[str, object]:
    data = fault_gateway_config(tmp, broker_port, police_port)
    data["campuses"] = [
        {"id": FLOOD_CAMPUS, "name": "Flooding school", "account": "1111"},
        {"id": QUIET_CAMPUS, "name": "Quiet school", "account": QUIET_ACCOUNT},
    ]
    data["routing"] = []
    return data


def quiet_edge(tmp: Path, broker_port: int, di_port: int) -> dict[str, object]:
    return {
        "campus": {"id": QUIET_CAMPUS, "name": "Quiet school"},
        "edge": {"id": "edge-q", "data_dir": str(tmp / "edge")},
        "mqtt": {"host": "127.0.0.1", "port": broker_port, "keepalive": 5},
        "devices": [
            {
                "id": "di-q",
                "profile": "adam-6050",
                "host": "127.0.0.1",
                "port": di_port,
                "poll_interval": 0.05,
                "timeout": 0.3,
                "inputs": [
                    {
                        "channel": 0,
                        "id": "btn",
                        "kind": "panic",
                        "mode": "latch",
                        "latch": False,
                        "alarm_zone": 1,
                    }
                ],
            }
        ],
    }


def start_flood(port: int, kind: str, rate: float, seconds: float) -> subprocess.Popen[bytes]:
    # The flooding campus is another machine in real life; here it shares the gateway's two
    # cores, so it runs at the lowest CPU priority (it still sends 10,000 events a second).
    return subprocess.Popen(
        [
            "nice",
            "-n",
            "19",
            sys.executable,
            "-m",
            "tests.faults",
            "flood",
            "--port",
            str(port),
            "--campus",
            FLOOD_CAMPUS,
            "--kind",
            kind,
            "--rate",
            str(rate),
            "--seconds",
            str(seconds),
        ],
        cwd=ROOT,
        env=env_with_pythonpath(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def quiet_alarms(police: PoliceReceiver) -> int:
    return sum(1 for m in police.messages if m.account == QUIET_ACCOUNT and m.code == "PA")


async def press_to_police(di: DIModuleSimulator, police: PoliceReceiver, timeout: float) -> float:
    """One press at the quiet campus; seconds until its alarm is at the police."""
    before = quiet_alarms(police)
    t0 = time.monotonic()
    await di.press(0, 0.01)
    await police.wait_for(lambda: quiet_alarms(police) > before, timeout)
    got = [m for m in police.messages if m.account == QUIET_ACCOUNT and m.code == "PA"][-1]
    return got.received_mono - t0


async def presses(
    di: DIModuleSimulator, police: PoliceReceiver, n: int, timeout: float = 60.0
) -> list[float]:
    out = []
    for _ in range(n):
        out.append(await press_to_police(di, police, timeout))
        await asyncio.sleep(0.2)  # the quiet campus' pace
    return out


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


CHATTY_RATE = 50.0
"""Events per second of a chatty campus, well within what the gateway stores directly (~200 a
second for one campus on this machine: each event is its own commit, one campus' events one at
a time)."""


async def flood_test(tmp_path: Path, flood_s: float, wait_s: float) -> None:
    """Campus A floods the gateway (a process of its own) while campus B presses a button; B's
    press-to-police latency without a flood, with a chatty A and with A flooding as fast as the
    broker takes it: B's alarm is not held up behind A's backlog (gateway/lanes.py: A spills
    to the inbox)."""
    broker = Mosquitto(tmp_path / "mosquitto")
    broker.start()
    gateway = edge = None
    try:
        async with PoliceReceiver(udp=False) as police, DIModuleSimulator("adam-6050") as di:
            gw_file = tmp_path / "gateway.yaml"
            gw_file.write_text(
                yaml.safe_dump(two_campus_gateway(tmp_path, broker.port, police.tcp_port or 0))
            )
            edge_file = tmp_path / "edge.yaml"
            edge_file.write_text(yaml.safe_dump(quiet_edge(tmp_path, broker.port, di.port)))
            gateway = Proc("gateway", gw_file, tmp_path / "gateway.log")
            edge = Proc("edge", edge_file, tmp_path / "edge.log")
            gateway.start()
            await gateway.wait_ready(GATEWAY_READY)
            edge.start()
            await edge.wait_ready(EDGE_READY)
            await presses(di, police, 2)  # warm up
            baseline = await presses(di, police, 8)
            bound = max(0.5, 3 * max(baseline))
            lines = [
                f"baseline: p50 {pct(baseline, 0.5) * 1e3:.0f} ms, "
                f"max {max(baseline) * 1e3:.0f} ms (bound {bound * 1e3:.0f} ms)"
            ]

            proc = start_flood(broker.port, "camera_motion", CHATTY_RATE, 4.0)
            try:
                chatty = await presses(di, police, 5)
            finally:
                out, _ = await asyncio.to_thread(proc.communicate, None, 30)
            sent = json.loads(out.decode().strip().splitlines()[-1])["acked"]
            lines.append(
                f"campus A sends {sent} events in 4 s: campus B's press to police p50 "
                f"{pct(chatty, 0.5) * 1e3:.0f} ms, max {max(chatty) * 1e3:.0f} ms"
            )
            assert max(chatty) <= bound, "\n".join(lines)

            proc = start_flood(broker.port, "camera_motion", 0.0, flood_s)
            try:
                await asyncio.sleep(min(1.0, flood_s / 2))  # the flood is on
                try:
                    flooded: float | None = await press_to_police(di, police, wait_s)
                except TimeoutError:
                    flooded = None
            finally:
                out, _ = await asyncio.to_thread(proc.communicate, None, 30)
            sent = json.loads(out.decode().strip().splitlines()[-1])["acked"]
            lines.append(
                f"campus A floods {sent} events in {flood_s:.0f} s: campus B's press to police "
                + (f"{flooded:.1f} s" if flooded is not None else f"more than {wait_s:.0f} s")
            )
            text = "\n".join(lines)
            print("\n" + text)
            assert flooded is not None and flooded <= bound, text
            assert sent > 5_000, text  # it was a flood: thousands of events a second
    finally:
        for p in (edge, gateway):
            if p is not None:
                p.stop()
        broker.stop()


@pytest.mark.timeout(120)
async def test_flood_from_one_campus_does_not_delay_another(tmp_path: Path) -> None:
    await flood_test(tmp_path, flood_s=2.0, wait_s=4.0)


@pytest.mark.slow
@pytest.mark.timeout(900)
async def test_flood_from_one_campus_long(tmp_path: Path) -> None:
    """The same, the flood for 10 s and the quiet campus' alarm waited for as long as it takes."""
    await flood_test(tmp_path, flood_s=10.0, wait_s=600.0)


# ------------------------------------------------------------------ the full disk, close up


@pytest.mark.skipif(not can_mount_tmpfs(), reason="mounting a tmpfs needs root")
async def test_full_disk_stores_events_from_the_reserve_then_holds_them(tmp_path: Path) -> None:
    """Before the reserve, a full disk made ``add_sequenced`` fail with "database or disk is
    full" and the poller that raised the alarm lost it (its latch was already cleared): 136 of
    194 alarms lost in a link cut with the disk full. Now the outbox gives its reserve back and
    stores the event; with the reserve spent too, the event waits in memory until there is
    room, and telemetry is refused meanwhile."""
    disk = Tmpfs(tmp_path / "disk", 16)
    disk.mount()
    try:
        cfg = edge_config(tmp_path, 1883, 502)
        async with Outbox(disk.path / "outbox.db") as outbox:
            sink = EventSink(cfg, outbox)
            reserve = disk.path / "outbox.db.reserve"
            assert reserve.stat().st_size == RESERVE_BYTES
            disk.fill()
            for _ in range(20):
                await sink.emit("panic", device="di-1", point="btn-gate", zone_no=2)
            assert outbox.reserve_spent and not reserve.exists()
            with pytest.raises(OutboxFullError):
                await outbox.add("t", b"telemetry", PRIORITY_TELEMETRY)
            disk.fill()  # what the reserve gave back is taken too
            held = asyncio.create_task(
                sink.emit("panic", device="di-1", point="btn-gate", zone_no=2)
            )
            await asyncio.sleep(1.5)  # the disk stays full this long
            assert not held.done()
            disk.free()
            event = await asyncio.wait_for(held, 15)
            assert event.seq == 21

            async def telemetry_taken() -> bool:
                try:
                    await outbox.add("t", b"telemetry", PRIORITY_TELEMETRY)
                except OutboxFullError:
                    return False
                return True

            # Telemetry is taken again once the reserve is set aside again.
            await wait_for(telemetry_taken, 15, "telemetry taken again")
            assert reserve.stat().st_size == RESERVE_BYTES
            assert await outbox.last_seq() == 21
        async with Outbox(disk.path / "outbox.db") as outbox:
            assert outbox.depth == 22  # every event on disk, and the telemetry
    finally:
        disk.umount()
