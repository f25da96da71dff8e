"""How one edge keeps up with many DI modules at a 50 ms poll.

For each size (``--devices 1,50,400``) the script starts the simulated modules in a SEPARATE
process (this script re-run with ``--serve-sims``: up to 8 unit ids per simulated host, so 400
devices = 50 TCP connections, as a site with Modbus gateways would be wired), a real Mosquitto,
and the edge (``edge.daemon.run_edge``) in this process. After a warm-up it measures for
``--seconds`` seconds:

* polls done vs expected (sum of ``ModbusPoller.polls`` deltas; expected = devices * window /
  interval), target >= 95 %;
* per-poll read latency (``ModuleReading.latency_s``, via ``ModbusPoller.on_poll``): from the
  reader starting the read to its last reply, INCLUDING the wait for the shared connection of
  its host (up to 8 units queue on one TCP connection);
* poll-period jitter: time between the starts of two successive reads of one device minus the
  interval;
* CPU of this process (the edge; Mosquitto and the simulators are other processes) as % of one
  core, of the simulator process and of Mosquitto, from the same window;
* RSS (VmRSS) of this process before the edge starts, at the window start and at its end.

    .venv/bin/python bench/edge_scale.py [--devices 1,50,400] [--seconds 20] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import faulthandler
import json
import logging
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from array import array
from pathlib import Path
from typing import Any

import _common
from _common import (
    fmt_ms,
    machine_info,
    machine_line,
    percentile,
    proc_cpu_s,
    rss_mib,
    write_json,
)

from contract.config import EdgeConfig, parse_config
from contract.models import Event
from drivers.modbus.inputs import ModuleReading
from edge.daemon import run_edge
from simulators.modbus_io import DIModuleSimulator
from tests.helpers import Mosquitto, wait_for

CAMPUS = "bench-campus"
UNITS_PER_HOST = 8
TARGET_POLL_PCT = 95.0
RSS_LIMIT_MIB = 100.0


# --------------------------------------------------------------------------- simulator process


async def serve_sims(devices: int, per_host: int, profile: str) -> None:
    """Child process: start the simulators, print their ports as one JSON line, then answer
    ``stats`` lines until stdin closes (or SIGTERM/SIGINT)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    hosts = math.ceil(devices / per_host)
    async with contextlib.AsyncExitStack() as stack:
        sims: list[DIModuleSimulator] = []
        for h in range(hosts):
            n = min(per_host, devices - h * per_host)
            sims.append(
                await stack.enter_async_context(
                    DIModuleSimulator(profile, units=tuple(range(1, n + 1)))
                )
            )
        hello = {"pid": os.getpid(), "hosts": [[s.port, len(s.units)] for s in sims]}
        print(json.dumps(hello), flush=True)

        async def commands() -> None:
            while line := await reader.readline():
                if line.strip() == b"stats":
                    stats = {
                        "requests_seen": sum(s.requests_seen for s in sims),
                        "connections_accepted": sum(s.connections_accepted for s in sims),
                        "open_connections": sum(s.open_connections for s in sims),
                    }
                    print(json.dumps(stats), flush=True)
            stop.set()

        task = asyncio.create_task(commands())
        await stop.wait()
        task.cancel()


class SimProcess:
    """The simulators in their own process; stopped on exit whatever happens."""

    def __init__(self, devices: int, per_host: int, profile: str) -> None:
        self.cmd = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--serve-sims",
            str(devices),
            "--units-per-host",
            str(per_host),
            "--profile",
            profile,
        ]
        self.proc: subprocess.Popen[str] | None = None
        self.hosts: list[tuple[int, int]] = []

    def __enter__(self) -> SimProcess:
        self.proc = subprocess.Popen(
            self.cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            # Its own session: a Ctrl-C reaches only us, and we stop it in order.
            start_new_session=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            code = self.proc.wait(5)
            raise RuntimeError(f"simulator process exited ({code}) before listening")
        self.hosts = [(int(p), int(u)) for p, u in json.loads(line)["hosts"]]
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stats(self) -> dict[str, int]:
        assert self.proc is not None
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.write("stats\n")
        self.proc.stdin.flush()
        return dict(json.loads(self.proc.stdout.readline()))

    async def astats(self) -> dict[str, int]:
        """:meth:`stats` off the event loop, with a deadline."""
        loop = asyncio.get_running_loop()
        return await asyncio.wait_for(loop.run_in_executor(None, self.stats), 10)

    def __exit__(self, *exc: object) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        with contextlib.suppress(OSError):
            if proc.stdin:
                proc.stdin.close()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdout:
            proc.stdout.close()


# --------------------------------------------------------------------------- edge side


def edge_config(
    tmp: Path, broker_port: int, hosts: list[tuple[int, int]], args: argparse.Namespace
) -> Any:
    devices = []
    for h, (port, units) in enumerate(hosts):
        for unit in range(1, units + 1):
            devices.append(
                {
                    "id": f"di-{h:03d}-{unit}",
                    "profile": args.profile,
                    "host": "127.0.0.1",
                    "port": port,
                    "unit": unit,
                    "poll_interval": args.poll,
                    "timeout": args.timeout,
                    "zone": "block-a",
                    "inputs": [
                        {"channel": ch, "id": f"in-{ch}", "kind": "intrusion", "mode": "state"}
                        for ch in range(args.inputs)
                    ],
                }
            )
    return parse_config(
        {
            "campus": {"id": CAMPUS, "name": "Bench school", "geo": {"lat": 39.7, "lon": 116.3}},
            "edge": {
                "id": "edge-1",
                "data_dir": str(tmp / "edge"),
                "status_interval": args.status_interval,
            },
            "mqtt": {"host": "127.0.0.1", "port": broker_port, "keepalive": 15},
            "zones": [{"id": "block-a", "name": "Block A"}],
            "devices": devices,
        },
        EdgeConfig,
        "bench-edge",
    )


class Recorder:
    """Per-poll figures in preallocated arrays, so recording does not grow the heap (the RSS
    figures are the edge's, not the benchmark's)."""

    def __init__(self, capacity: int, interval: float) -> None:
        self.interval = interval
        self.capacity = capacity
        self.latency = array("d", [0.0]) * capacity
        self.jitter = array("d", [0.0]) * capacity
        self.n_lat = 0
        self.n_jit = 0
        self.dropped = 0
        self.collecting = False
        self.last_start: dict[str, float] = {}
        self.failures: dict[str, int] = {}
        self.put_latency: list[float] = []

    def failure_hook(self, original: Any) -> Any:
        """Wrap a poller's ``_failed`` (instance attribute, the edge code is untouched) to
        count failed polls by error type: the pollers keep only a consecutive count."""

        async def failed(exc: Exception) -> None:
            if self.collecting:
                key = type(exc).__name__
                self.failures[key] = self.failures.get(key, 0) + 1
            await original(exc)

        return failed

    def put_hook(self, original: Any) -> Any:
        """Time the status hand-over (``Uplink.set_retained``, called inside the poll)."""

        def put(*args: Any, **kwargs: Any) -> None:
            t = time.monotonic()
            try:
                original(*args, **kwargs)
            finally:
                if self.collecting:
                    self.put_latency.append(time.monotonic() - t)

        return put

    def hook(self, dev: str) -> Any:
        def on_poll(reading: ModuleReading) -> None:
            start = reading.monotonic - reading.latency_s
            prev = self.last_start.get(dev)
            self.last_start[dev] = start
            if not self.collecting:
                return
            if self.n_lat < self.capacity:
                self.latency[self.n_lat] = reading.latency_s
                self.n_lat += 1
            else:
                self.dropped += 1
            if prev is not None and self.n_jit < self.capacity:
                self.jitter[self.n_jit] = start - prev - self.interval
                self.n_jit += 1

        return on_poll


async def loop_lag(samples: list[float], stop: asyncio.Event, period: float = 0.01) -> None:
    while not stop.is_set():
        t = time.monotonic()
        await asyncio.sleep(period)
        samples.append(time.monotonic() - t - period)


def stats_ms(values: Any, n: int) -> dict[str, float | int]:
    vals = list(values[:n])
    if not vals:
        return {"n": 0, "p50": math.nan, "p99": math.nan, "max": math.nan}
    return {
        "n": n,
        "p50": round(percentile(vals, 50) * 1e3, 3),
        "p99": round(percentile(vals, 99) * 1e3, 3),
        "max": round(max(vals) * 1e3, 3),
    }


async def measure_size(
    devices: int, broker: Mosquitto, tmp: Path, args: argparse.Namespace
) -> dict[str, Any]:
    rss_before = rss_mib()
    interval = args.poll
    with SimProcess(devices, args.units_per_host, args.profile) as sims:
        cfg = edge_config(tmp / f"n{devices}", broker.port, sims.hosts, args)
        t_start = time.monotonic()
        expected_window = devices * args.seconds / interval
        rec = Recorder(int(expected_window * 1.25) + 1000, interval)
        events: list[str] = []
        async with run_edge(cfg) as edge:

            def on_event(ev: Event) -> None:
                if rec.collecting:
                    events.append(ev.kind)

            edge.sink.listeners.append(on_event)
            for poller in edge.pollers.values():
                poller._publish_retained = rec.put_hook(poller._publish_retained)
            for dev_id, poller in edge.pollers.items():
                poller.on_poll = rec.hook(dev_id)
                poller._failed = rec.failure_hook(poller._failed)  # type: ignore[method-assign]
            await wait_for(edge.uplink.connected.is_set, what="edge uplink")
            await wait_for(
                lambda: all(p.online for p in edge.pollers.values()),
                timeout=60,
                what="every device online",
            )
            online_after = time.monotonic() - t_start
            await asyncio.sleep(args.warmup)

            pollers = list(edge.pollers.values())
            lag: list[float] = []
            stop = asyncio.Event()
            rss_start = rss_mib()
            sim0 = await sims.astats()
            polls0 = sum(p.polls for p in pollers)
            rec.collecting = True
            wall0 = time.monotonic()
            cpu0 = time.process_time()
            simcpu0 = proc_cpu_s(sims.pid)
            mqcpu0 = proc_cpu_s(broker.proc.pid) if broker.proc else math.nan
            machine0 = _common.machine_cpu_s()
            lag_task = asyncio.create_task(loop_lag(lag, stop))
            rss_samples = [rss_start]
            try:
                end = wall0 + args.seconds
                while (left := end - time.monotonic()) > 0:
                    await asyncio.sleep(min(1.0, left))
                    rss_samples.append(rss_mib())
            finally:
                stop.set()
                await lag_task
            wall = time.monotonic() - wall0
            cpu = time.process_time() - cpu0
            simcpu = proc_cpu_s(sims.pid) - simcpu0
            mqcpu = (proc_cpu_s(broker.proc.pid) if broker.proc else math.nan) - mqcpu0
            machine1 = _common.machine_cpu_s()
            polls = sum(p.polls for p in pollers) - polls0
            rec.collecting = False
            sim1 = await sims.astats()
            rss_end = rss_mib()
            outbox_depth = edge.outbox.depth
            offline_now = sum(1 for p in pollers if not p.online)
    expected = devices * wall / interval
    other, steal = _common.other_load_pct(machine0, machine1, cpu + simcpu + mqcpu, wall)
    failed = sum(rec.failures.values())
    requests = sim1["requests_seen"] - sim0["requests_seen"]
    result = {
        "devices": devices,
        "connections": len(sims.hosts),
        "units_per_host": args.units_per_host,
        "inputs_per_device": args.inputs,
        "poll_s": interval,
        "window_s": round(wall, 3),
        "every_device_online_after_s": round(online_after, 3),
        "polls_done": polls,
        "polls_expected": round(expected),
        "polls_pct": round(100 * polls / expected, 2),
        "polls_failed": failed,
        "poll_failures_by_error": rec.failures,
        "edge_cpu_us_per_poll": round(1e6 * cpu / polls, 1) if polls else math.nan,
        "target_polls_pct": TARGET_POLL_PCT,
        "target_met": 100 * polls / expected >= TARGET_POLL_PCT,
        "read_latency_ms": stats_ms(rec.latency, rec.n_lat),
        "period_jitter_ms": stats_ms(rec.jitter, rec.n_jit),
        "edge_cpu_pct_of_one_core": round(100 * cpu / wall, 1),
        "edge_loop_lag_ms": _common.summary_ms(lag),
        "status_write_ms": _common.summary_ms(rec.put_latency),
        "simulator_cpu_pct_of_one_core": round(100 * simcpu / wall, 1),
        "simulator_requests_per_s": round(requests / wall, 1),
        "simulator_cpu_us_per_request": round(1e6 * simcpu / requests, 1) if requests else math.nan,
        "mosquitto_cpu_pct_of_one_core": round(100 * mqcpu / wall, 1),
        "other_processes_cpu_pct_of_one_core": other,
        "steal_pct_of_one_core": steal,
        "rss_mib": {
            "before_edge": round(rss_before, 1),
            "window_start": round(rss_start, 1),
            "window_end": round(rss_end, 1),
            "window_min": round(min(rss_samples), 1),
            "window_max": round(max(rss_samples), 1),
        },
        "rss_under_limit": max([*rss_samples, rss_end]) < RSS_LIMIT_MIB,
        "events_in_window": {k: events.count(k) for k in sorted(set(events))},
        "outbox_depth_at_end": outbox_depth,
        "devices_offline_at_end": offline_now,
        "machine_loadavg_after": os.getloadavg(),
    }
    if rec.dropped:
        result["latency_samples_dropped"] = rec.dropped
    return result


def print_size(r: dict[str, Any]) -> None:
    ok = "PASS" if r["target_met"] else "FAIL"
    rss = r["rss_mib"]
    mem_ok = "PASS" if r["rss_under_limit"] else "FAIL"
    lat, jit, lag = r["read_latency_ms"], r["period_jitter_ms"], r["edge_loop_lag_ms"]
    put = r["status_write_ms"]
    print(
        f"\n== {r['devices']} device(s): {r['connections']} TCP connection(s), up to "
        f"{r['units_per_host']} units each, {r['inputs_per_device']} input(s)/device (state), "
        f"poll {r['poll_s'] * 1e3:g} ms, window {r['window_s']:.1f} s"
    )
    print(
        f"  polls done / expected     {r['polls_done']} / {r['polls_expected']} = "
        f"{r['polls_pct']:.1f} %   (target >= {TARGET_POLL_PCT:g} %: {ok}); "
        f"failed polls {r['polls_failed']}"
        + (f" {r['poll_failures_by_error']}" if r["poll_failures_by_error"] else "")
    )
    print(f"  {'':24}{'p50':>8}{'p99':>8}{'max':>8}  (ms)")
    print(
        f"  {'read latency':24}{fmt_ms(lat['p50'])} {fmt_ms(lat['p99'])} {fmt_ms(lat['max'])}"
        f"   n={lat['n']}"
    )
    print(
        f"  {'period jitter':24}{fmt_ms(jit['p50'])} {fmt_ms(jit['p99'])} {fmt_ms(jit['max'])}"
        f"   n={jit['n']}"
    )
    print(
        f"  {'edge loop lag (10 ms)':24}{fmt_ms(lag['p50'])} {fmt_ms(lag['p99'])} "
        f"{fmt_ms(lag['max'])}"
    )
    print(
        f"  {'status hand-over':24}{fmt_ms(put['p50'])} {fmt_ms(put['p99'])} "
        f"{fmt_ms(put['max'])}   n={put['n']} (in memory, inside the poll)"
    )
    print(
        f"  CPU, % of one core:       edge {r['edge_cpu_pct_of_one_core']:.1f} "
        f"({r['edge_cpu_us_per_poll']:.0f} us/poll)   simulators "
        f"{r['simulator_cpu_pct_of_one_core']:.1f} ({r['simulator_requests_per_s']:.0f} req/s, "
        f"{r['simulator_cpu_us_per_request']:.0f} us/req)"
        f"   mosquitto {r['mosquitto_cpu_pct_of_one_core']:.1f}   other processes "
        f"{r['other_processes_cpu_pct_of_one_core']:.1f}   steal {r['steal_pct_of_one_core']:.1f}"
    )
    print(
        f"  edge RSS MiB:             before edge {rss['before_edge']:.1f}, window start "
        f"{rss['window_start']:.1f}, end {rss['window_end']:.1f} (min {rss['window_min']:.1f}, "
        f"max {rss['window_max']:.1f}; < {RSS_LIMIT_MIB:g} MiB: {mem_ok})"
    )
    extra = (
        f"  every device online {r['every_device_online_after_s']:.2f} s after edge start; "
        f"events in window: {r['events_in_window'] or 'none'}; "
        f"outbox depth at end {r['outbox_depth_at_end']}; "
        f"offline at end {r['devices_offline_at_end']}"
    )
    print(extra)


def print_summary(results: list[dict[str, Any]]) -> None:
    print(
        "\nsummary  devices  polls%  read p50/p99 ms  jitter p99 ms  edge CPU%  sims CPU%  "
        "RSS start->end MiB  verdict"
    )
    for r in results:
        lat, jit, rss = r["read_latency_ms"], r["period_jitter_ms"], r["rss_mib"]
        verdict = "ok" if r["target_met"] and r["rss_under_limit"] else "TARGET NOT MET"
        print(
            f"         {r['devices']:7d}  {r['polls_pct']:6.1f}  "
            f"{lat['p50']:6.2f}/{lat['p99']:<8.2f}"
            f"  {jit['p99']:13.2f}  {r['edge_cpu_pct_of_one_core']:9.1f}  "
            f"{r['simulator_cpu_pct_of_one_core']:9.1f}  "
            f"{rss['window_start']:6.1f} -> {rss['window_end']:<8.1f}  {verdict}"
        )


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    info = machine_info()
    print(machine_line(info))
    print(
        "edge = this process (single asyncio loop + outbox thread); simulators = a separate "
        "process; Mosquitto = its own process. All share this machine's cores."
    )
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="cg-bench-scale-", dir=args.tmpdir) as tmp_name:
        tmp = Path(tmp_name)
        broker = Mosquitto(tmp / "broker")
        broker.start()
        try:
            for n in args.devices:
                # Watchdog: a stuck size prints the stacks of every task (and, if the loop
                # itself is frozen, of every thread) instead of hanging silently.
                limit = args.seconds + args.warmup + 180
                faulthandler.dump_traceback_later(limit + 30)
                try:
                    async with asyncio.timeout(limit):
                        r = await measure_size(n, broker, tmp, args)
                except TimeoutError:
                    _common.dump_tasks(f"watchdog: {n} devices still running after {limit:.0f} s")
                    raise
                finally:
                    faulthandler.cancel_dump_traceback_later()
                print_size(r)
                results.append(r)
        finally:
            broker.stop()
    print_summary(results)
    return {
        "benchmark": "edge_scale",
        "config": {
            "devices": args.devices,
            "seconds": args.seconds,
            "warmup_s": args.warmup,
            "poll_s": args.poll,
            "timeout_s": args.timeout,
            "inputs_per_device": args.inputs,
            "units_per_host": args.units_per_host,
            "profile": args.profile,
            "status_interval_s": args.status_interval,
        },
        "machine": info,
        "sizes": results,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--devices",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[1, 50, 400],
        help="comma-separated device counts (1,50,400)",
    )
    p.add_argument("--seconds", type=float, default=20.0, help="measured window per size (20)")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds after all are online (3)")
    p.add_argument("--poll", type=float, default=0.05, help="poll interval, s (0.05)")
    p.add_argument("--timeout", type=float, default=0.5, help="Modbus timeout, s (0.5)")
    p.add_argument("--inputs", type=int, default=1, help="state inputs per device (1)")
    p.add_argument("--units-per-host", type=int, default=UNITS_PER_HOST, help="(8)")
    p.add_argument("--profile", default="adam-6050", help="module profile (adam-6050)")
    p.add_argument(
        "--status-interval", type=float, default=30.0, help="edge status_interval, s (30)"
    )
    p.add_argument("--json", metavar="PATH", help="write the figures as JSON here")
    p.add_argument("--tmpdir", help="where the outbox / broker files go (default $TMPDIR)")
    p.add_argument("--log-level", default="ERROR", help="Python logging level (ERROR)")
    p.add_argument("--serve-sims", type=int, metavar="N", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve_sims is None and (not args.devices or min(args.devices) < 1):
        p.error("--devices: positive counts")
    if not 1 <= args.units_per_host <= 247:
        p.error("--units-per-host: 1..247")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s %(message)s")
    # aiomqtt pins its "mqtt" logger at WARNING ("There are N pending publish calls").
    logging.getLogger("mqtt").setLevel(args.log_level.upper())
    if args.serve_sims is not None:
        asyncio.run(serve_sims(args.serve_sims, args.units_per_host, args.profile))
        return 0
    try:
        total = len(args.devices) * (args.seconds + args.warmup + 240)
        result = asyncio.run(_common.guarded(lambda: bench(args), total))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("interrupted; broker and simulator process stopped", file=sys.stderr)
        return 130
    write_json(args.json, result)
    ok = all(r["target_met"] and r["rss_under_limit"] for r in result["sizes"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
