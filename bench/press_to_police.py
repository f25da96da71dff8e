"""Press-to-police latency: a 5 ms press on a simulated ADAM-6050 until the police receiver
holds the DC-09 frame.

Every hop is real (pymodbus server <-> edge over Modbus TCP, edge outbox with fsync, MQTT QoS 1
through a real Mosquitto, gateway SQLite store, DC-09 ADM-CID over TCP to the simulated police
receiver), but everything except Mosquitto runs in ONE Python process on ONE event loop, so the
figures include the jitter that loop adds (the simulator, the edge, the gateway and the police
receiver all wait for each other's callbacks).

    .venv/bin/python bench/press_to_police.py [--presses 200] [--poll 0.05] [--json out.json]

Times, all ``time.monotonic()`` in this one process:

* press: taken right before ``sim.press()`` (which flips the input before its first await);
* read: the edge's Modbus read that saw it completed (``ModuleReading.monotonic``);
* on disk: the edge's event listener ran (it is called right after the outbox commit+fsync);
* police: ``ReceivedMessage.received_mono`` of the Contact ID 1120 (new panic) frame.

(a) = on disk - press (poll wait + Modbus read + outbox commit), (b) = police - on disk
(outbox -> MQTT -> gateway store -> relay -> DC-09), total = police - press.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import faulthandler
import logging
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import _common
from _common import (
    CAMPUS,
    fmt_ms,
    gateway_config,
    machine_info,
    machine_line,
    summary_ms,
    write_json,
)

from contract.config import EdgeConfig, parse_config
from contract.models import Event
from drivers.modbus.inputs import ModuleReading
from edge.daemon import run_edge
from gateway.service import run_gateway
from simulators.modbus_io import DIModuleSimulator
from simulators.police import PoliceReceiver, ReceivedMessage
from tests.helpers import Mosquitto, wait_for

CID_PANIC = 120
SLACK_S = 0.015  # the target: p99(total) <= poll + 15 ms


@dataclass
class Press:
    index: int
    zone: int
    t: float  # monotonic right before sim.press()
    released: float  # monotonic of the release flip (sim.last_flip)
    warmup: bool
    events: list[Stamp] = field(default_factory=list)


@dataclass
class Stamp:
    mono: float  # when the listener ran (event committed to the outbox)
    event: Event
    read_done: float | None = None  # ModuleReading.monotonic of the read that produced it
    read_latency: float | None = None


def edge_config(tmp: Path, broker_port: int, sim_port: int, poll: float, channels: int) -> Any:
    return parse_config(
        {
            "campus": {"id": CAMPUS, "name": "Bench school", "geo": {"lat": 39.7, "lon": 116.3}},
            # status_interval as in production (30 s): no periodic status noise in the window.
            "edge": {"id": "edge-1", "data_dir": str(tmp / "edge"), "status_interval": 30},
            "mqtt": {"host": "127.0.0.1", "port": broker_port, "keepalive": 15},
            "zones": [{"id": "gate", "name": "South gate", "location": "south gate"}],
            "devices": [
                {
                    "id": "di-1",
                    "profile": "adam-6050",
                    "host": "127.0.0.1",
                    "port": sim_port,
                    "poll_interval": poll,
                    "timeout": 0.3,
                    "zone": "gate",
                    "inputs": [
                        {
                            "channel": ch,
                            "id": f"btn-{ch}",
                            "kind": "panic",
                            "mode": "latch",
                            "alarm_zone": ch + 1,
                        }
                        for ch in range(channels)
                    ],
                }
            ],
        },
        EdgeConfig,
        "bench-edge",
    )


def police_panics(police: PoliceReceiver, qualifier: int, start: int) -> list[ReceivedMessage]:
    return [
        m
        for m in police.messages[start:]
        if m.contact_id is not None
        and m.contact_id.code == CID_PANIC
        and m.contact_id.qualifier == qualifier
    ]


async def loop_lag_monitor(samples: list[float], period: float = 0.005) -> None:
    """How late the event loop wakes a 5 ms sleeper: the single loop's own jitter."""
    while True:
        t = time.monotonic()
        await asyncio.sleep(period)
        samples.append(time.monotonic() - t - period)


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    gap_lo, gap_hi = args.gap
    info = machine_info()
    with tempfile.TemporaryDirectory(prefix="cg-bench-p2p-", dir=args.tmpdir) as tmp_name:
        tmp = Path(tmp_name)
        broker = Mosquitto(tmp / "broker")
        broker.start()
        lag: list[float] = []
        lag_task: asyncio.Task[None] | None = None
        try:
            async with (
                DIModuleSimulator("adam-6050") as sim,
                PoliceReceiver(udp=False) as police,
                run_gateway(gateway_config(tmp, broker.port, police.tcp_port)) as gw,
            ):
                await wait_for(gw.mqtt.connected.is_set, what="gateway MQTT")
                cfg = edge_config(tmp, broker.port, sim.port, args.poll, args.channels)
                async with run_edge(cfg) as edge:
                    stamps: list[Stamp] = []
                    unread: list[Stamp] = []
                    read_latencies: list[float] = []

                    def on_event(ev: Event) -> None:
                        # Called by EventSink.emit right after the outbox commit (fsync).
                        st = Stamp(time.monotonic(), ev)
                        stamps.append(st)
                        unread.append(st)

                    def on_poll(reading: ModuleReading) -> None:
                        # poll_once: read -> emit (listeners) -> on_poll. Events stamped since
                        # the last on_poll came from this reading.
                        read_latencies.append(reading.latency_s)
                        for st in unread:
                            st.read_done = reading.monotonic
                            st.read_latency = reading.latency_s
                        unread.clear()

                    edge.sink.listeners.append(on_event)
                    edge.pollers["di-1"].on_poll = on_poll
                    await wait_for(edge.uplink.connected.is_set, what="edge uplink")
                    await wait_for(lambda: edge.pollers["di-1"].online, what="module online")

                    presses: list[Press] = []

                    async def do_presses(n: int, warmup: bool) -> None:
                        next_at = time.monotonic()
                        for _ in range(n):
                            i = len(presses)
                            ch = i % args.channels
                            now = time.monotonic()
                            if next_at > now:
                                await asyncio.sleep(next_at - now)
                            t0 = time.monotonic()
                            await sim.press(ch, args.press_ms / 1000)
                            flip = sim.last_flip
                            released = flip.monotonic if flip is not None else float("nan")
                            presses.append(Press(i, ch + 1, t0, released, warmup))
                            next_at = t0 + rng.uniform(gap_lo, gap_hi) / 1000

                    # Warm-up: connections, SQLite pages, code paths. Not counted.
                    await do_presses(args.warmup, warmup=True)
                    await police.wait_for(
                        lambda: len(police_panics(police, 1, 0)) >= args.warmup, timeout=30
                    )
                    await asyncio.sleep(0.5)
                    msg_base = len(police.messages)
                    stamp_base = len(stamps)
                    read_latencies.clear()
                    first = len(presses)

                    lag_task = asyncio.create_task(loop_lag_monitor(lag))
                    cpu0, wall0 = time.process_time(), time.monotonic()
                    mq0 = _common.proc_cpu_s(broker.proc.pid) if broker.proc else 0.0
                    machine0 = _common.machine_cpu_s()
                    await do_presses(args.presses, warmup=False)
                    with contextlib.suppress(TimeoutError):
                        await police.wait_for(
                            lambda: len(police_panics(police, 1, msg_base)) >= args.presses,
                            timeout=args.drain_timeout,
                        )
                    # Let duplicates and the last restores show up.
                    await asyncio.sleep(1.0)
                    cpu = time.process_time() - cpu0
                    wall = time.monotonic() - wall0
                    mq = (_common.proc_cpu_s(broker.proc.pid) if broker.proc else 0.0) - mq0
                    other, steal = _common.other_load_pct(
                        machine0, _common.machine_cpu_s(), cpu + mq, wall
                    )
                    lag_task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await lag_task
                    lag_task = None
                    measured = presses[first:]
                    result = analyse(
                        args,
                        measured,
                        stamps[stamp_base:],
                        police,
                        msg_base,
                        read_latencies,
                        lag,
                    )
                    result["process_cpu_pct_of_one_core"] = round(100 * cpu / wall, 1)
                    result["mosquitto_cpu_pct_of_one_core"] = round(100 * mq / wall, 1)
                    result["other_processes_cpu_pct_of_one_core"] = other
                    result["steal_pct_of_one_core"] = steal
                    result["mosquitto_rss_mib"] = (
                        round(_common.rss_mib(broker.proc.pid), 1) if broker.proc else None
                    )
        finally:
            if lag_task is not None:
                lag_task.cancel()
            broker.stop()
    result["machine"] = info
    return result


def analyse(
    args: argparse.Namespace,
    presses: list[Press],
    stamps: list[Stamp],
    police: PoliceReceiver,
    msg_base: int,
    read_latencies: list[float],
    lag: list[float],
) -> dict[str, Any]:
    poll = args.poll
    by_zone: dict[int, list[Press]] = {}
    for p in presses:
        by_zone.setdefault(p.zone, []).append(p)

    edge_alarms = [
        s for s in stamps if s.event.kind == "panic" and not s.event.restore and s.event.zone_no
    ]
    edge_restores = [s for s in stamps if s.event.kind == "panic" and s.event.restore]
    other_events = [s for s in stamps if s.event.kind != "panic"]
    # An edge alarm belongs to the latest press on its zone that came before it. Presses on one
    # zone are >= 2 gaps apart (channels alternate), far more than a poll, so this is unambiguous
    # unless the edge is stalled for that long (then it shows as a missed + a duplicate).
    for s in edge_alarms:
        zone_presses = by_zone.get(int(s.event.zone_no or 0), [])
        owner = None
        for p in zone_presses:
            if p.t <= s.mono:
                owner = p
            else:
                break
        if owner is not None:
            owner.events.append(s)

    police_new = police_panics(police, 1, msg_base)
    police_restore = police_panics(police, 3, msg_base)
    retransmissions = sum(m.duplicates for m in police.messages[msg_base:])
    police_by_zone: dict[int, list[ReceivedMessage]] = {}
    for m in police_new:
        assert m.contact_id is not None
        police_by_zone.setdefault(m.contact_id.zone, []).append(m)

    total: list[float] = []
    part_a: list[float] = []
    part_b: list[float] = []
    a_read: list[float] = []  # press -> the read that saw it completed
    a_commit: list[float] = []  # read completed -> on disk
    press_len: list[float] = []
    short_press = 0
    rows: list[dict[str, Any]] = []
    missed_edge = 0
    dup_edge = 0
    missed_police = 0
    for zone, zpresses in sorted(by_zone.items()):
        pol = police_by_zone.get(zone, [])
        # Police frames of one zone arrive in the order the edge committed them.
        zone_alarms = [s for s in edge_alarms if s.event.zone_no == zone]
        pol_of = {id(s): pol[k] for k, s in enumerate(zone_alarms) if k < len(pol)}
        for p in zpresses:
            press_len.append(p.released - p.t)
            row: dict[str, Any] = {"press": p.index, "zone": zone, "t": round(p.t, 6)}
            rows.append(row)
            if not p.events:
                missed_edge += 1
                missed_police += 1
                row["missed"] = True
                continue
            dup_edge += len(p.events) - 1
            s = p.events[0]
            short_press += bool(s.event.detail.get("short_press"))
            part_a.append(s.mono - p.t)
            row["a_ms"] = round((s.mono - p.t) * 1e3, 3)
            if s.read_done is not None:
                a_read.append(s.read_done - p.t)
                a_commit.append(s.mono - s.read_done)
            m = pol_of.get(id(s))
            if m is None:
                missed_police += 1
                row["missed_at_police"] = True
                continue
            part_b.append(m.received_mono - s.mono)
            total.append(m.received_mono - p.t)
            row["b_ms"] = round((m.received_mono - s.mono) * 1e3, 3)
            row["total_ms"] = round((m.received_mono - p.t) * 1e3, 3)

    n = len(presses)
    extra_at_police = max(0, len(police_new) - (n - missed_police))
    tot = summary_ms(total)
    target_ms = (poll + SLACK_S) * 1e3
    return {
        "benchmark": "press_to_police",
        "config": {
            "presses": n,
            "warmup_presses": args.warmup,
            "press_ms": args.press_ms,
            "poll_s": poll,
            "mode": "latch",
            "channels": args.channels,
            "gap_ms": list(args.gap),
            "seed": args.seed,
            "profile": "adam-6050",
            "dc09": "ADM-CID over TCP, no encryption",
            "gateway_db": "SQLite (aiosqlite)",
            "single_process": True,
        },
        "total_ms": tot,
        "a_press_to_edge_disk_ms": summary_ms(part_a),
        "a1_press_to_read_done_ms": summary_ms(a_read),
        "a2_read_done_to_disk_ms": summary_ms(a_commit),
        "b_edge_disk_to_police_ms": summary_ms(part_b),
        "modbus_read_latency_ms": summary_ms(read_latencies),
        "press_length_ms": summary_ms(press_len),
        "event_loop_lag_ms": summary_ms(lag),
        "target_ms": round(target_ms, 3),
        "target_met": bool(tot["n"]) and tot["p99"] <= target_ms,
        "presses_missed": missed_police,
        "presses_missed_at_edge": missed_edge,
        "duplicate_alarms_at_edge": dup_edge,
        "extra_alarms_at_police": extra_at_police,
        "dc09_retransmissions_acked": retransmissions,
        "short_press_events": short_press,
        "restores": {"edge": len(edge_restores), "police": len(police_restore)},
        "other_events": sorted({s.event.kind for s in other_events}),
        "per_press": rows,
    }


def report(r: dict[str, Any]) -> None:
    c = r["config"]
    print(
        f"press_to_police: {c['presses']} presses of {c['press_ms']:g} ms (after "
        f"{c['warmup_presses']} warm-up), {c['channels']} channels alternating, gaps "
        f"{c['gap_ms'][0]:g}-{c['gap_ms'][1]:g} ms random; ADAM-6050 sim, latch mode, "
        f"poll {c['poll_s'] * 1e3:g} ms; Mosquitto; gateway SQLite; DC-09 ADM-CID/TCP"
    )
    print(machine_line(r["machine"]))
    print(
        "NOTE: simulator, edge, gateway and police receiver share ONE process and ONE asyncio "
        "event loop;\n      the figures include that loop's own jitter (lag of a 5 ms sleeper: "
        f"p99 {r['event_loop_lag_ms']['p99']:.1f} ms, max {r['event_loop_lag_ms']['max']:.1f} ms;"
        f" process CPU {r['process_cpu_pct_of_one_core']:.0f} % of one core)."
    )
    print(
        f"CPU in the window, % of one core: this process {r['process_cpu_pct_of_one_core']:.1f},"
        f" mosquitto {r['mosquitto_cpu_pct_of_one_core']:.1f}, other processes on the machine "
        f"{r['other_processes_cpu_pct_of_one_core']:.1f}, steal {r['steal_pct_of_one_core']:.1f}"
    )
    print(f"{'':38}{'p50':>8}{'p99':>8}{'max':>8}   (ms, n)")
    lines = [
        ("total  press -> police has frame", "total_ms"),
        ("(a)    press -> event on edge disk", "a_press_to_edge_disk_ms"),
        ("  (a1)   press -> Modbus read done", "a1_press_to_read_done_ms"),
        ("  (a2)   read done -> outbox commit", "a2_read_done_to_disk_ms"),
        ("(b)    edge disk -> police has frame", "b_edge_disk_to_police_ms"),
        ("Modbus read (every poll)", "modbus_read_latency_ms"),
        ("actual press length", "press_length_ms"),
    ]
    for label, key in lines:
        s = r[key]
        print(f"{label:38}{fmt_ms(s['p50'])} {fmt_ms(s['p99'])} {fmt_ms(s['max'])}   n={s['n']}")
    poll_ms = c["poll_s"] * 1e3
    verdict = "PASS" if r["target_met"] else "FAIL"
    print(
        f"poll interval {poll_ms:g} ms; check p99(total) {r['total_ms']['p99']:.1f} ms "
        f"<= poll + 15 ms = {r['target_ms']:.1f} ms: {verdict}"
    )
    n = c["presses"]
    print(
        f"presses missed: {r['presses_missed']} of {n} (missed at the edge "
        f"{r['presses_missed_at_edge']}; duplicate alarms at the edge "
        f"{r['duplicate_alarms_at_edge']}, extra alarms at police {r['extra_alarms_at_police']}, "
        f"DC-09 retransmissions ACKed {r['dc09_retransmissions_acked']})"
    )
    print(
        f"restores (counted apart, not in the figures): edge {r['restores']['edge']}, "
        f"police {r['restores']['police']}; alarms caught by the latch after release "
        f"(short_press): {r['short_press_events']} of {n - r['presses_missed_at_edge']}"
    )
    if r["other_events"]:
        print(f"other events seen: {', '.join(r['other_events'])}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--presses", type=int, default=200, help="measured presses (default 200)")
    p.add_argument("--poll", type=float, default=0.05, help="edge poll interval, s (0.05)")
    p.add_argument("--json", metavar="PATH", help="write the figures as JSON here")
    p.add_argument("--press-ms", type=float, default=5.0, help="press length, ms (5)")
    p.add_argument("--channels", type=int, default=2, help="channels to alternate (2)")
    p.add_argument(
        "--gap",
        type=lambda s: tuple(float(x) for x in s.split(",")),
        default=(150.0, 250.0),
        metavar="MIN,MAX",
        help="random gap between press starts, ms (150,250)",
    )
    p.add_argument("--warmup", type=int, default=4, help="uncounted presses first (4)")
    p.add_argument("--seed", type=int, default=1, help="random seed for the gaps")
    p.add_argument("--drain-timeout", type=float, default=30.0, help="wait for stragglers, s")
    p.add_argument("--tmpdir", help="where the outbox / SQLite / broker files go (default $TMPDIR)")
    p.add_argument("--log-level", default="ERROR", help="Python logging level (ERROR)")
    args = p.parse_args(argv)
    if len(args.gap) != 2 or not 0 < args.gap[0] <= args.gap[1]:
        p.error("--gap takes MIN,MAX in ms")
    if not 1 <= args.channels <= 12:
        p.error("--channels: 1..12 (ADAM-6050)")
    if args.presses < 1:
        p.error("--presses must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s %(message)s")
    # aiomqtt pins its "mqtt" logger at WARNING ("There are N pending publish calls").
    logging.getLogger("mqtt").setLevel(args.log_level.upper())
    same_zone_gap = args.gap[0] * args.channels / 1000
    if same_zone_gap < 2 * args.poll:
        print(
            f"warning: presses on one input only {same_zone_gap * 1e3:g} ms apart with a "
            f"{args.poll * 1e3:g} ms poll: two may fall in one poll and latch as one",
            file=sys.stderr,
        )
    # Watchdog: a run stuck far beyond its expected length prints the stacks and stops.
    expected = (args.presses + args.warmup) * args.gap[1] / 1000 + args.drain_timeout + 60
    faulthandler.dump_traceback_later(expected + 120)  # even a frozen loop shows its stack
    try:
        result = asyncio.run(_common.guarded(lambda: bench(args), expected + 60))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("interrupted; broker and simulator stopped", file=sys.stderr)
        return 130
    finally:
        faulthandler.cancel_dump_traceback_later()
    report(result)
    write_json(args.json, result)
    ok = result["presses_missed"] == 0 and result["extra_alarms_at_police"] == 0
    return 0 if ok and result["target_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
