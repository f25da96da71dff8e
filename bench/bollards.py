"""Bollards (issue 3): impact to police, and command round trip / position confirmed.

Every hop is real (pymodbus server <-> edge over Modbus TCP, edge outbox with fsync, MQTT QoS 1
through a real Mosquitto, gateway SQLite store, DC-09 ADM-CID over TCP to the simulated police
receiver; commands as MQTT messages from a "console" client), but everything except Mosquitto
runs in ONE Python process on ONE event loop, so the figures include the jitter that loop adds.

    .venv/bin/python bench/bollards.py [--impacts 100] [--commands 100] [--poll 0.05]
                                       [--json out.json]

Two phases, all times ``time.monotonic()`` in this one process:

1. Impact to police: ``sim.inject_impact(i)`` (the flag is set before it returns), alternating
   bollards 0 and 1, random gaps so the injection falls at a random phase of the poll; each
   impact is cleared at the cabinet (``sim.local_command(i, "clear_impact")``, the simulator's
   knob for the controller's reset coil) and the edge's restore is seen before the next one.
   Measured to ``ReceivedMessage.received_mono`` of the Contact ID 150 (qualifier 1) frame.
   (a) = impact event on edge disk (sink listener, right after the outbox commit+fsync),
   (a1) = the Modbus read that saw it completed, (b) = edge disk -> police.
2. Commands: one-step ``raise`` / ``lower`` (policy ``two_step: []``), alternating bollards,
   each bollard alternating raise and lower so every command moves; the "console" publishes a
   ``BollardCommandMessage`` on ``command_topic(campus)`` (QoS 1). Round trip = from right before
   the publish to ``CommandRecord.monotonic`` (the simulator processing the coil write).
   Position confirmed = the ``bollard_command`` event with outcome ``done`` on edge disk (sink
   listener) minus ``BollardState.limit_reached_at`` (the simulator's exact end of travel).
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
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import _common
import aiomqtt
from _common import (
    CAMPUS,
    fmt_ms,
    gateway_config,
    machine_info,
    machine_line,
    summary_ms,
    write_json,
)

from contract import topics
from contract.config import EdgeConfig, parse_config
from contract.models import BollardCommandMessage, Event, new_id, utcnow
from drivers.modbus.bollard_model import BollardCommand, BollardReading
from edge.daemon import run_edge
from gateway.service import run_gateway
from simulators.bollard import BollardSimulator, CommandRecord
from simulators.police import PoliceReceiver, ReceivedMessage
from tests.helpers import Mosquitto, wait_for

CONTROLLER = "gate-plc"
BOLLARD_IDS = ("b-left", "b-right")
ALARM_ZONES = (21, 22)
CID_IMPACT = 150
IMPACT_SLACK_S = 0.015  # impact p99 within the panic path's budget: poll + 15 ms
COMMAND_TARGET_S = 0.100  # command round trip p99 <= 100 ms


# --------------------------------------------------------------------------- records


@dataclass
class Stamp:
    mono: float  # when the sink listener ran (event committed to the outbox)
    event: Event
    read_done: float | None  # completion of the last Modbus read_all before it
    read_latency: float | None


@dataclass
class Impact:
    index: int
    bollard: int
    zone: int
    t: float  # monotonic right before sim.inject_impact()
    warmup: bool
    alarms: list[Stamp] = field(default_factory=list)
    police: ReceivedMessage | None = None
    restored_at_edge: bool = False


@dataclass
class Command:
    index: int
    bollard: int
    action: str
    command_id: str
    t: float  # monotonic right before the MQTT publish
    warmup: bool
    handled: float | None = None  # edge entered handle_command
    write_started: float | None = None  # edge called BollardController.command
    write_done: float | None = None
    accepted: Stamp | None = None
    settled: Stamp | None = None  # done / failed event
    records: list[CommandRecord] = field(default_factory=list)  # remote writes at the sim
    limit_reached: float | None = None


class Watch:
    """Wakes waiters whenever the edge commits an event (no polling delay added)."""

    def __init__(self) -> None:
        self.changed = asyncio.Event()

    def poke(self) -> None:
        self.changed.set()

    async def until(self, predicate: Callable[[], bool], timeout: float) -> bool:  # noqa: ASYNC109
        try:
            async with asyncio.timeout(timeout):
                while not predicate():
                    self.changed.clear()
                    await self.changed.wait()
        except TimeoutError:
            return False
        return True


class CpuWindow:
    """CPU of this process, Mosquitto, the rest of the machine and steal over a window."""

    def __init__(self, broker: Mosquitto) -> None:
        self.broker = broker
        self.cpu0 = time.process_time()
        self.wall0 = time.monotonic()
        self.mq0 = self._mq()
        self.machine0 = _common.machine_cpu_s()

    def _mq(self) -> float:
        proc = self.broker.proc
        return _common.proc_cpu_s(proc.pid) if proc is not None else 0.0

    def stop(self) -> dict[str, float]:
        cpu = time.process_time() - self.cpu0
        wall = time.monotonic() - self.wall0
        mq = self._mq() - self.mq0
        other, steal = _common.other_load_pct(
            self.machine0, _common.machine_cpu_s(), cpu + mq, wall
        )
        return {
            "wall_s": round(wall, 1),
            "process_cpu_pct_of_one_core": round(100 * cpu / wall, 1),
            "mosquitto_cpu_pct_of_one_core": round(100 * mq / wall, 1),
            "other_processes_cpu_pct_of_one_core": other,
            "steal_pct_of_one_core": steal,
        }


async def loop_lag_monitor(samples: list[float], period: float = 0.005) -> None:
    """How late the event loop wakes a 5 ms sleeper: the single loop's own jitter."""
    while True:
        t = time.monotonic()
        await asyncio.sleep(period)
        samples.append(time.monotonic() - t - period)


# --------------------------------------------------------------------------- configs


def edge_config(tmp: Path, broker_port: int, sim_port: int, args: argparse.Namespace) -> EdgeConfig:
    travel = args.travel
    return parse_config(
        {
            "campus": {"id": CAMPUS, "name": "Bench school", "geo": {"lat": 39.7, "lon": 116.3}},
            # status_interval as in production (30 s).
            "edge": {"id": "edge-1", "data_dir": str(tmp / "edge"), "status_interval": 30},
            "mqtt": {"host": "127.0.0.1", "port": broker_port, "keepalive": 15},
            "zones": [{"id": "gate", "name": "South gate", "location": "south gate"}],
            "bollards": [
                {
                    "id": CONTROLLER,
                    "host": "127.0.0.1",
                    "port": sim_port,
                    "poll_interval": args.poll,
                    "timeout": 0.3,
                    "zone": "gate",
                    # The same travel time as the simulator, so supervision matches the physics.
                    "rules": {
                        "travel_time": travel,
                        "margin": args.margin,
                        "efo_travel_time": travel / 2,
                        "efo_margin": args.margin / 2,
                    },
                    # One-step raise and lower: the round trip is one MQTT message.
                    "policy": {"two_step": []},
                    "bollards": [
                        {"index": i, "id": BOLLARD_IDS[i], "alarm_zone": ALARM_ZONES[i]}
                        for i in range(2)
                    ],
                }
            ],
        },
        EdgeConfig,
        "bench-edge",
    )


def impact_frames(
    police: PoliceReceiver, qualifier: int, start: int, zone: int | None = None
) -> list[ReceivedMessage]:
    return [
        m
        for m in police.messages[start:]
        if m.contact_id is not None
        and m.contact_id.code == CID_IMPACT
        and m.contact_id.qualifier == qualifier
        and (zone is None or m.contact_id.zone == zone)
    ]


def command_message(action: str, bollard: int) -> BollardCommandMessage:
    now = utcnow()
    return BollardCommandMessage(
        id=new_id(),
        campus=CAMPUS,
        device=CONTROLLER,
        bollard=bollard,
        step="request",
        action=action,  # type: ignore[arg-type]
        user="guard-bench",
        role="guard",
        reason="bench",
        issued_at=now,
        expires_at=now + timedelta(seconds=30),
    )


# --------------------------------------------------------------------------- the run


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    gap_lo, gap_hi = args.gap
    info = machine_info()
    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="cg-bench-bollards-", dir=args.tmpdir) as tmp_name:
        tmp = Path(tmp_name)
        broker = Mosquitto(tmp / "broker")
        broker.start()
        lag_task: asyncio.Task[None] | None = None
        try:
            async with (
                BollardSimulator(
                    bollards=2, travel_time=args.travel, efo_travel_time=args.travel / 2
                ) as sim,
                PoliceReceiver(udp=False) as police,
                run_gateway(gateway_config(tmp, broker.port, police.tcp_port)) as gw,
            ):
                await wait_for(gw.mqtt.connected.is_set, what="gateway MQTT")
                async with (
                    run_edge(edge_config(tmp, broker.port, sim.port, args)) as edge,
                    aiomqtt.Client("127.0.0.1", broker.port, identifier="bench-console") as centre,
                ):
                    poller = edge.bollards[CONTROLLER]
                    ctl = poller._controller
                    watch = Watch()
                    stamps: list[Stamp] = []
                    reads: list[tuple[float, float]] = []  # (completed, latency) of read_all
                    by_id: dict[str, Command] = {}
                    inflight: list[Command] = []

                    def on_event(ev: Event) -> None:
                        # Called by EventSink.emit right after the outbox commit (fsync).
                        last = reads[-1] if reads else (None, None)
                        stamps.append(Stamp(time.monotonic(), ev, last[0], last[1]))
                        cid = ev.detail.get("command_id")
                        cmd = by_id.get(cid) if isinstance(cid, str) else None
                        if cmd is not None and ev.kind == "bollard_command":
                            outcome = ev.detail.get("outcome")
                            if outcome == "accepted" and cmd.accepted is None:
                                cmd.accepted = stamps[-1]
                            elif outcome in ("done", "failed", "refused") and cmd.settled is None:
                                cmd.settled = stamps[-1]
                        watch.poke()

                    # Hooks on the instances (the edge code is untouched): they only stamp.
                    read_all = ctl.read_all

                    async def timed_read_all() -> list[BollardReading]:
                        readings = await read_all()
                        reads.append((readings[0].monotonic, readings[0].latency_s))
                        return readings

                    write = ctl.command

                    async def timed_command(index: int, command: BollardCommand) -> None:
                        cmd = inflight[-1] if inflight else None
                        if cmd is not None:
                            cmd.write_started = time.monotonic()
                        await write(index, command)
                        if cmd is not None:
                            cmd.write_done = time.monotonic()

                    handle = poller.handle_command

                    async def timed_handle(msg: BollardCommandMessage) -> Any:
                        cmd = by_id.get(msg.id)
                        if cmd is not None:
                            cmd.handled = time.monotonic()
                            inflight.append(cmd)
                        try:
                            return await handle(msg)
                        finally:
                            if cmd is not None:
                                inflight.remove(cmd)

                    ctl.read_all = timed_read_all  # type: ignore[method-assign]
                    ctl.command = timed_command  # type: ignore[method-assign]
                    poller.handle_command = timed_handle  # type: ignore[method-assign]
                    edge.sink.listeners.append(on_event)

                    await wait_for(edge.uplink.connected.is_set, what="edge uplink")
                    for bid in BOLLARD_IDS:
                        await wait_for(lambda b=bid: poller.state_of(b) == "down", what=bid)

                    # ---------------------------------------------------- impacts
                    impacts: list[Impact] = []
                    impact_read_base = len(reads)
                    impact_msg_base = len(police.messages)

                    async def do_impacts(n: int, warmup: bool) -> None:
                        for _ in range(n):
                            k = len(impacts)
                            b = k % 2
                            point = BOLLARD_IDS[b]
                            await asyncio.sleep(rng.uniform(gap_lo, gap_hi) / 1000)
                            msg_base = len(police.messages)
                            stamp_base = len(stamps)
                            t0 = time.monotonic()
                            sim.inject_impact(b)
                            imp = Impact(k, b, ALARM_ZONES[b], t0, warmup)
                            impacts.append(imp)
                            with contextlib.suppress(TimeoutError):
                                await police.wait_for(
                                    lambda z=imp.zone, base=msg_base: bool(
                                        impact_frames(police, 1, base, z)
                                    ),
                                    timeout=args.timeout,
                                )
                            frames = impact_frames(police, 1, msg_base, imp.zone)
                            imp.police = frames[0] if frames else None

                            def restored(p: str = point, base: int = stamp_base) -> bool:
                                return any(
                                    s.event.kind == "bollard_impact"
                                    and s.event.restore
                                    and s.event.point == p
                                    for s in stamps[base:]
                                )

                            sim.local_command(b, "clear_impact")  # the reset at the cabinet
                            imp.restored_at_edge = await watch.until(restored, args.timeout)
                            imp.alarms = [
                                s
                                for s in stamps[stamp_base:]
                                if s.event.kind == "bollard_impact"
                                and not s.event.restore
                                and s.event.point == point
                            ]

                    await do_impacts(args.warmup, warmup=True)
                    await asyncio.sleep(0.5)
                    impact_read_base = len(reads)
                    impact_msg_base = len(police.messages)
                    impact_stamp_base = len(stamps)
                    first_impact = len(impacts)
                    lag: list[float] = []
                    lag_task = asyncio.create_task(loop_lag_monitor(lag))
                    win = CpuWindow(broker)
                    await do_impacts(args.impacts, warmup=False)
                    # Let the last restore reach the police, and duplicates show up.
                    await asyncio.sleep(1.0)
                    impact_cpu = win.stop()
                    lag_task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await lag_task
                    lag_task = None
                    result["impact"] = analyse_impacts(
                        args,
                        impacts[first_impact:],
                        stamps[impact_stamp_base:],
                        police,
                        impact_msg_base,
                        [lat for _, lat in reads[impact_read_base:]],
                        lag,
                    )
                    result["impact"]["cpu"] = impact_cpu

                    # ---------------------------------------------------- commands
                    commands: list[Command] = []
                    topic = topics.command_topic(CAMPUS)

                    async def do_commands(n: int, warmup: bool) -> None:
                        for _ in range(n):
                            k = len(commands)
                            b = k % 2
                            await asyncio.sleep(rng.uniform(gap_lo, gap_hi) / 1000)
                            # Every command moves: lower what is up, raise what is down.
                            action = "lower" if sim.state(b).raised_limit else "raise"
                            msg = command_message(action, b)
                            payload = msg.model_dump_json()  # the console's own work, not timed
                            before = sim.last_command
                            cmd = Command(k, b, action, msg.id, 0.0, warmup)
                            by_id[msg.id] = cmd
                            commands.append(cmd)
                            cmd.t = time.monotonic()
                            await centre.publish(topic, payload, qos=1)
                            await watch.until(
                                lambda c=cmd: c.settled is not None,
                                args.travel + args.margin + args.timeout,
                            )
                            new: list[CommandRecord] = []
                            for rec in reversed(sim.commands):
                                if rec is before:
                                    break
                                new.append(rec)
                            cmd.records = [r for r in reversed(new) if not r.local]
                            settled = cmd.settled
                            if (
                                settled is not None
                                and settled.event.detail.get("outcome") == "done"
                            ):
                                cmd.limit_reached = sim.state(b).limit_reached_at

                    await do_commands(args.warmup, warmup=True)
                    await asyncio.sleep(0.5)
                    command_read_base = len(reads)
                    command_stamp_base = len(stamps)
                    first_command = len(commands)
                    lag = []
                    lag_task = asyncio.create_task(loop_lag_monitor(lag))
                    win = CpuWindow(broker)
                    await do_commands(args.commands, warmup=False)
                    command_cpu = win.stop()
                    lag_task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await lag_task
                    lag_task = None
                    result["commands"] = analyse_commands(
                        args,
                        commands[first_command:],
                        stamps[command_stamp_base:],
                        [lat for _, lat in reads[command_read_base:]],
                        lag,
                    )
                    result["commands"]["cpu"] = command_cpu
                    result["mosquitto_rss_mib"] = (
                        round(_common.rss_mib(broker.proc.pid), 1) if broker.proc else None
                    )
        finally:
            if lag_task is not None:
                lag_task.cancel()
            broker.stop()
    result["benchmark"] = "bollards"
    result["config"] = {
        "impacts": args.impacts,
        "commands": args.commands,
        "warmup_each": args.warmup,
        "poll_s": args.poll,
        "travel_time_s": args.travel,
        "margin_s": args.margin,
        "gap_ms": list(args.gap),
        "seed": args.seed,
        "profile": "generic-plc",
        "policy_two_step": [],
        "dc09": "ADM-CID over TCP, no encryption",
        "gateway_db": "SQLite (aiosqlite)",
        "single_process": True,
    }
    result["machine"] = info
    return result


# --------------------------------------------------------------------------- analysis


def analyse_impacts(
    args: argparse.Namespace,
    impacts: list[Impact],
    stamps: list[Stamp],
    police: PoliceReceiver,
    msg_base: int,
    read_latencies: list[float],
    lag: list[float],
) -> dict[str, Any]:
    total: list[float] = []
    part_a: list[float] = []
    a_read: list[float] = []
    a_commit: list[float] = []
    part_b: list[float] = []
    rows: list[dict[str, Any]] = []
    missed_edge = missed_police = dup_edge = not_restored = 0
    for imp in impacts:
        row: dict[str, Any] = {"impact": imp.index, "bollard": imp.bollard, "zone": imp.zone}
        rows.append(row)
        not_restored += not imp.restored_at_edge
        if not imp.alarms:
            missed_edge += 1
        else:
            dup_edge += len(imp.alarms) - 1
            s = imp.alarms[0]
            part_a.append(s.mono - imp.t)
            row["a_ms"] = round((s.mono - imp.t) * 1e3, 3)
            if s.read_done is not None and s.read_done >= imp.t:
                a_read.append(s.read_done - imp.t)
                a_commit.append(s.mono - s.read_done)
            if imp.police is not None:
                part_b.append(imp.police.received_mono - s.mono)
                row["b_ms"] = round((imp.police.received_mono - s.mono) * 1e3, 3)
        if imp.police is None:
            missed_police += 1
            row["missed"] = True
            continue
        total.append(imp.police.received_mono - imp.t)
        row["total_ms"] = round((imp.police.received_mono - imp.t) * 1e3, 3)

    new_frames = impact_frames(police, 1, msg_base)
    restores = impact_frames(police, 3, msg_base)
    n = len(impacts)
    tot = summary_ms(total)
    target_ms = (args.poll + IMPACT_SLACK_S) * 1e3
    return {
        "total_ms": tot,
        "a_impact_to_edge_disk_ms": summary_ms(part_a),
        "a1_impact_to_read_done_ms": summary_ms(a_read),
        "a2_read_done_to_disk_ms": summary_ms(a_commit),
        "b_edge_disk_to_police_ms": summary_ms(part_b),
        "modbus_read_latency_ms": summary_ms(read_latencies),
        "event_loop_lag_ms": summary_ms(lag),
        "target_ms": round(target_ms, 3),
        "target_met": bool(tot["n"]) and tot["p99"] <= target_ms,
        "impacts": n,
        "impacts_missed": missed_police,
        "impacts_missed_at_edge": missed_edge,
        "duplicate_alarms_at_edge": dup_edge,
        "extra_alarms_at_police": max(0, len(new_frames) - (n - missed_police)),
        "not_restored_at_edge": not_restored,
        "restores": {
            "edge": sum(1 for s in stamps if s.event.kind == "bollard_impact" and s.event.restore),
            "police": len(restores),
        },
        "dc09_retransmissions_acked": sum(m.duplicates for m in police.messages[msg_base:]),
        "other_events": sorted({s.event.kind for s in stamps if s.event.kind != "bollard_impact"}),
        "per_impact": rows,
    }


def analyse_commands(
    args: argparse.Namespace,
    commands: list[Command],
    stamps: list[Stamp],
    read_latencies: list[float],
    lag: list[float],
) -> dict[str, Any]:
    rtt: list[float] = []
    c_mqtt: list[float] = []
    c_decide: list[float] = []
    c_write: list[float] = []
    to_accepted: list[float] = []
    confirm: list[float] = []
    d_read: list[float] = []
    d_commit: list[float] = []
    travel: list[float] = []
    to_done: list[float] = []
    write_to_done: list[float] = []
    edge_elapsed: list[float] = []
    over_bound = 0
    rows: list[dict[str, Any]] = []
    outcomes: dict[str, int] = {}
    not_written = extra_writes = ignored = 0
    for c in commands:
        row: dict[str, Any] = {"command": c.index, "bollard": c.bollard, "action": c.action}
        rows.append(row)
        outcome = str(c.settled.event.detail.get("outcome")) if c.settled else "no answer"
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        row["outcome"] = outcome
        mine = [r for r in c.records if r.bollard == c.bollard and r.command == c.action]
        extra_writes += len(c.records) - len(mine[:1])
        if not mine:
            not_written += 1
            continue
        rec = mine[0]
        ignored += not rec.accepted
        rtt.append(rec.monotonic - c.t)
        row["rtt_ms"] = round((rec.monotonic - c.t) * 1e3, 3)
        if c.handled is not None:
            c_mqtt.append(c.handled - c.t)
            if c.write_started is not None:
                c_decide.append(c.write_started - c.handled)
                c_write.append(rec.monotonic - c.write_started)
        if c.accepted is not None:
            to_accepted.append(c.accepted.mono - c.t)
        s = c.settled
        if s is None or outcome != "done" or c.limit_reached is None:
            continue
        if c.limit_reached < rec.monotonic:
            row["limit_before_write"] = True  # did not move: not a travel of this command
            continue
        travel.append(c.limit_reached - rec.monotonic)
        confirm.append(s.mono - c.limit_reached)
        row["confirm_ms"] = round((s.mono - c.limit_reached) * 1e3, 3)
        to_done.append(s.mono - c.t)
        if c.write_started is not None:
            write_to_done.append(s.mono - c.write_started)
        elapsed = s.event.detail.get("elapsed_s")
        if isinstance(elapsed, int | float):
            edge_elapsed.append(float(elapsed))
        if s.read_done is not None:
            d_read.append(s.read_done - c.limit_reached)
            d_commit.append(s.mono - s.read_done)
            if s.mono - c.limit_reached > args.poll + (s.read_latency or 0.0):
                over_bound += 1

    n = len(commands)
    rt = summary_ms(rtt)
    conf = summary_ms(confirm)
    reads = summary_ms(read_latencies)
    confirm_bound_ms = args.poll * 1e3 + (reads["p99"] if reads["n"] else 0.0)
    return {
        "round_trip_ms": rt,
        "c1_publish_to_edge_handler_ms": summary_ms(c_mqtt),
        "c2_handler_to_modbus_write_ms": summary_ms(c_decide),
        "c3_modbus_write_to_register_ms": summary_ms(c_write),
        "publish_to_accepted_on_disk_ms": summary_ms(to_accepted),
        "position_confirmed_minus_limit_ms": conf,
        "d1_limit_to_read_done_ms": summary_ms(d_read),
        "d2_read_done_to_done_on_disk_ms": summary_ms(d_commit),
        "register_written_to_limit_ms": summary_ms(travel),
        "write_started_to_done_on_disk_ms": summary_ms(write_to_done),
        "publish_to_done_on_disk_ms": summary_ms(to_done),
        "edge_elapsed_s_ms": summary_ms(edge_elapsed),
        "modbus_read_latency_ms": reads,
        "event_loop_lag_ms": summary_ms(lag),
        "round_trip_target_ms": COMMAND_TARGET_S * 1e3,
        "round_trip_target_met": bool(rt["n"]) and rt["p99"] <= COMMAND_TARGET_S * 1e3,
        "confirm_bound_ms": round(confirm_bound_ms, 3),
        "confirm_target_met": bool(conf["n"]) and conf["p99"] <= confirm_bound_ms,
        "confirm_over_own_bound": over_bound,
        "commands": n,
        "outcomes": outcomes,
        "not_written": not_written,
        "ignored_by_controller": ignored,
        "unexpected_writes": extra_writes,
        "travel_time_s": args.travel,
        "other_events": sorted(
            {s.event.kind for s in stamps if s.event.kind not in ("bollard_command",)}
        ),
        "per_command": rows,
    }


# --------------------------------------------------------------------------- report


def _line(label: str, s: dict[str, Any]) -> None:
    print(f"{label:44}{fmt_ms(s['p50'])} {fmt_ms(s['p99'])} {fmt_ms(s['max'])}   n={s['n']}")


def _cpu_line(cpu: dict[str, float]) -> None:
    print(
        f"CPU in the window ({cpu['wall_s']:.0f} s), % of one core: this process "
        f"{cpu['process_cpu_pct_of_one_core']:.1f}, mosquitto "
        f"{cpu['mosquitto_cpu_pct_of_one_core']:.1f}, other processes on the machine "
        f"{cpu['other_processes_cpu_pct_of_one_core']:.1f}, steal "
        f"{cpu['steal_pct_of_one_core']:.1f}"
    )


def report(r: dict[str, Any]) -> None:
    c = r["config"]
    poll_ms = c["poll_s"] * 1e3
    print(
        f"bollards: generic-plc controller sim (2 bollards, travel {c['travel_time_s']:g} s), "
        f"poll {poll_ms:g} ms; Mosquitto; gateway SQLite; DC-09 ADM-CID/TCP; gaps "
        f"{c['gap_ms'][0]:g}-{c['gap_ms'][1]:g} ms random; {c['warmup_each']} warm-up each"
    )
    print(machine_line(r["machine"]))
    im, cm = r["impact"], r["commands"]
    print(
        "NOTE: bollard simulator, edge, gateway, police receiver and the console client share "
        "ONE process and\n      ONE asyncio event loop (only Mosquitto is separate); the "
        "figures include that loop's own jitter\n      (lag of a 5 ms sleeper: impacts p99 "
        f"{im['event_loop_lag_ms']['p99']:.1f} / max {im['event_loop_lag_ms']['max']:.1f} ms, "
        f"commands p99 {cm['event_loop_lag_ms']['p99']:.1f} / max "
        f"{cm['event_loop_lag_ms']['max']:.1f} ms)."
    )

    print(f"\n1. impact -> police, {im['impacts']} impacts, bollards alternating, each cleared")
    _cpu_line(im["cpu"])
    print(f"{'':44}{'p50':>8}{'p99':>8}{'max':>8}   (ms, n)")
    for label, key in [
        ("total  impact -> police has CID 150 frame", "total_ms"),
        ("(a)    impact -> event on edge disk", "a_impact_to_edge_disk_ms"),
        ("  (a1)   impact -> Modbus read done", "a1_impact_to_read_done_ms"),
        ("  (a2)   read done -> outbox commit", "a2_read_done_to_disk_ms"),
        ("(b)    edge disk -> police has frame", "b_edge_disk_to_police_ms"),
        ("Modbus read_all (every poll)", "modbus_read_latency_ms"),
    ]:
        _line(label, im[key])
    verdict = "PASS" if im["target_met"] else "FAIL"
    print(
        f"check: impact p99 within the panic path's budget: p99(total) "
        f"{im['total_ms']['p99']:.1f} ms <= poll + 15 ms = {im['target_ms']:.1f} ms: {verdict}"
    )
    print(
        f"impacts missed: {im['impacts_missed']} of {im['impacts']} (missed at the edge "
        f"{im['impacts_missed_at_edge']}; duplicate alarms at the edge "
        f"{im['duplicate_alarms_at_edge']}, extra alarms at police "
        f"{im['extra_alarms_at_police']}, DC-09 retransmissions ACKed "
        f"{im['dc09_retransmissions_acked']}, restore not seen at the edge "
        f"{im['not_restored_at_edge']})"
    )
    print(
        f"restores (counted apart, not in the figures): edge {im['restores']['edge']}, "
        f"police {im['restores']['police']}"
        + (f"; other events: {', '.join(im['other_events'])}" if im["other_events"] else "")
    )

    print(
        f"\n2. commands: {cm['commands']} one-step raise/lower over MQTT, bollards alternating, "
        "each waits for done"
    )
    _cpu_line(cm["cpu"])
    print(f"{'':44}{'p50':>8}{'p99':>8}{'max':>8}   (ms, n)")
    for label, key in [
        ("round trip  publish -> register written", "round_trip_ms"),
        ("  (c1) publish -> edge handle_command", "c1_publish_to_edge_handler_ms"),
        ("  (c2) -> Modbus write starts (accept+fsync)", "c2_handler_to_modbus_write_ms"),
        ("  (c3) -> sim processes the coil write", "c3_modbus_write_to_register_ms"),
        ("publish -> 'accepted' on edge disk", "publish_to_accepted_on_disk_ms"),
        ("confirmed  'done' on disk - limit reached", "position_confirmed_minus_limit_ms"),
        ("  (d1) limit reached -> read done", "d1_limit_to_read_done_ms"),
        ("  (d2) read done -> 'done' on disk", "d2_read_done_to_done_on_disk_ms"),
        ("register written -> limit (sim travel)", "register_written_to_limit_ms"),
        ("write starts -> 'done' on disk", "write_started_to_done_on_disk_ms"),
        ("publish -> 'done' on disk", "publish_to_done_on_disk_ms"),
        ("edge's own elapsed_s (write -> confirmed)", "edge_elapsed_s_ms"),
        ("Modbus read_all (every poll)", "modbus_read_latency_ms"),
    ]:
        _line(label, cm[key])
    verdict = "PASS" if cm["round_trip_target_met"] else "FAIL"
    print(
        f"check: command round trip p99 {cm['round_trip_ms']['p99']:.1f} ms <= "
        f"{cm['round_trip_target_ms']:.0f} ms: {verdict}"
    )
    verdict = "PASS" if cm["confirm_target_met"] else "FAIL"
    print(
        f"check: position confirmed within travel time + one poll: p99('done' on disk - limit "
        f"reached) {cm['position_confirmed_minus_limit_ms']['p99']:.1f} ms <= poll + read p99 = "
        f"{cm['confirm_bound_ms']:.1f} ms: {verdict} ({cm['confirm_over_own_bound']} of "
        f"{cm['position_confirmed_minus_limit_ms']['n']} over poll + their own read time)"
    )
    outcomes = ", ".join(f"{k} {v}" for k, v in sorted(cm["outcomes"].items()))
    print(
        f"outcomes: {outcomes}; not written to the controller {cm['not_written']}, ignored by "
        f"it {cm['ignored_by_controller']}, unexpected writes {cm['unexpected_writes']}"
        + (f"; other events: {', '.join(cm['other_events'])}" if cm["other_events"] else "")
    )


def all_ok(r: dict[str, Any]) -> bool:
    im, cm = r["impact"], r["commands"]
    impacts_ok = (
        im["target_met"]
        and im["impacts_missed"] == 0
        and im["extra_alarms_at_police"] == 0
        and im["duplicate_alarms_at_edge"] == 0
    )
    commands_ok = (
        cm["round_trip_target_met"]
        and cm["confirm_target_met"]
        and cm["outcomes"].get("done", 0) == cm["commands"]
        and cm["not_written"] == 0
    )
    return bool(impacts_ok and commands_ok)


# --------------------------------------------------------------------------- CLI


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--impacts", type=int, default=100, help="measured impacts (default 100)")
    p.add_argument("--commands", type=int, default=100, help="measured commands (default 100)")
    p.add_argument("--poll", type=float, default=0.05, help="edge poll interval, s (0.05)")
    p.add_argument("--json", metavar="PATH", help="write the figures as JSON here")
    p.add_argument(
        "--travel", type=float, default=0.3, help="travel time, simulator and edge rules, s (0.3)"
    )
    p.add_argument("--margin", type=float, default=0.5, help="edge rules' travel margin, s (0.5)")
    p.add_argument(
        "--gap",
        type=lambda s: tuple(float(x) for x in s.split(",")),
        default=(150.0, 250.0),
        metavar="MIN,MAX",
        help="random pause before each impact / command, ms (150,250)",
    )
    p.add_argument("--warmup", type=int, default=2, help="uncounted impacts and commands first (2)")
    p.add_argument("--seed", type=int, default=1, help="random seed for the gaps")
    p.add_argument("--timeout", type=float, default=5.0, help="wait for one answer at most, s")
    p.add_argument("--tmpdir", help="where the outbox / SQLite / broker files go (default $TMPDIR)")
    p.add_argument("--log-level", default="ERROR", help="Python logging level (ERROR)")
    args = p.parse_args(argv)
    if len(args.gap) != 2 or not 0 < args.gap[0] <= args.gap[1]:
        p.error("--gap takes MIN,MAX in ms")
    if args.impacts < 1 or args.commands < 1:
        p.error("--impacts and --commands must be >= 1")
    if args.warmup < 0:
        p.error("--warmup must be >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s %(message)s")
    # aiomqtt pins its "mqtt" logger at WARNING ("There are N pending publish calls").
    logging.getLogger("mqtt").setLevel(args.log_level.upper())
    if (args.gap[1] - args.gap[0]) / 1000 < args.poll:
        print(
            f"warning: the random part of --gap ({args.gap[1] - args.gap[0]:g} ms) is shorter "
            f"than a poll ({args.poll * 1e3:g} ms): the phase is not uniform over the poll",
            file=sys.stderr,
        )
    # Watchdog: a run stuck far beyond its expected length prints the stacks and stops.
    per_impact = args.gap[1] / 1000 + 3 * args.poll + 0.2
    per_command = args.gap[1] / 1000 + args.travel + 3 * args.poll + 0.3
    n = args.warmup
    expected = (args.impacts + n) * per_impact + (args.commands + n) * per_command + 60
    faulthandler.dump_traceback_later(expected * 2 + 120)  # even a frozen loop shows its stack
    try:
        result = asyncio.run(_common.guarded(lambda: bench(args), expected * 2 + 60))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("interrupted; broker and simulator stopped", file=sys.stderr)
        return 130
    finally:
        faulthandler.cancel_dump_traceback_later()
    report(result)
    write_json(args.json, result)
    return 0 if all_ok(result) else 1


if __name__ == "__main__":
    sys.exit(main())
