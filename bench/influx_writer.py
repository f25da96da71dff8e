"""Telemetry writer throughput (issue 5): TelemetryWriter vs line protocol POSTed straight.

One real InfluxDB 1.x (Debian's influxd, started here on free ports in a temp dir, WAL fsync
on, as the tests run it) and, in the same run:

1. direct: the line protocol of all N points, encoded before the clock starts, POSTed to
   ``/write?db=direct&precision=ns`` in ``--batch``-line bodies (uncompressed), one request
   after the other with one ``httpx.AsyncClient`` — what InfluxDB itself takes;
2. writer: the same points (same devices, fields and timestamps) generated as ``Point``
   objects 1,000 at a time and handed to ``TelemetryWriter.submit`` (InfluxV1
   backend, database ``writer``, batch ``--batch``, gzip on, default memory bound), until
   ``flush()`` says InfluxDB has all of them. The time includes making the Point objects,
   encoding, batching, gzip and the requests. The producer yields to the loop after each
   chunk and waits while the memory buffer is over half full, as an ingest that reads MQTT
   would; the run prints how much was spooled (0 expected: the spool is for outages).

    .venv/bin/python bench/influx_writer.py [--points 500000] [--devices 15000]
                                            [--batch 5000] [--json out.json]

Prints points/s of each, the ratio writer/direct (target >= 0.5), the CPU seconds of this
process and of influxd in each phase, and a machine line. Exit code 1 when the ratio misses.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import _common
import httpx
from _common import machine_info, machine_line, proc_cpu_s, write_json

from gateway.telemetry import InfluxV1, Point, TelemetryWriter, encode_point
from tests.influx import Influx, influxd_binary

TARGET_RATIO = 0.5
T0 = 1_760_000_000_000_000_000
KINDS = ("modbus_di", "bollard", "camera")


def telemetry(n: int, devices: int, seed: int = 5, chunk_size: int = 1000) -> Iterator[list[Point]]:
    """Rounds of device telemetry: every device reports once per 10 s round (500 campuses of
    30 devices for the default 15,000: DI modules, bollard PLCs and cameras, a few fields
    each), the last round cut to make ``n`` points; yielded ``chunk_size`` points at a time
    (an ingest handles a few MQTT messages, then lets the loop run)."""
    rng = random.Random(seed)
    per_campus = 30
    made = 0
    rnd = 0
    while made < n:
        chunk: list[Point] = []
        t = T0 + rnd * 10_000_000_000
        for d in range(min(devices, n - made)):
            kind = KINDS[d % 3]
            tags = {
                "campus": f"dx-campus-{d // per_campus:03d}",
                "device": f"{kind}-{d % per_campus:02d}",
                "kind": kind,
            }
            fields: dict[str, float | int | bool | str]
            if kind == "modbus_di":
                fields = {
                    "online": True,
                    "latency_ms": round(rng.uniform(2, 40), 3),
                    "errors": rng.randrange(3),
                }
            elif kind == "bollard":
                fields = {
                    "online": True,
                    "pressure_bar": round(rng.uniform(150, 210), 2),
                    "cycles": 10_000 + rnd,
                    "motor_temp_c": round(rng.uniform(20, 60), 1),
                }
            else:
                fields = {
                    "online": rng.random() > 0.01,
                    "fps": round(rng.uniform(24, 25), 2),
                    "blur": round(rng.random(), 4),
                    "latency_ms": round(rng.uniform(5, 80), 2),
                }
            chunk.append(Point("device", fields, t + d * 1000, tags))
            if len(chunk) == chunk_size:
                made += len(chunk)
                yield chunk
                chunk = []
        if chunk:
            made += len(chunk)
            yield chunk
        rnd += 1


def influxd_version() -> str:
    try:
        out = subprocess.run(
            [influxd_binary(), "version"], capture_output=True, text=True, timeout=5, check=False
        ).stdout
    except (OSError, RuntimeError, subprocess.TimeoutExpired):
        return "?"
    return out.strip().replace("InfluxDB ", "") or "?"


async def direct(influx: Influx, args: argparse.Namespace) -> dict[str, Any]:
    bodies: list[bytes] = []
    lines: list[str] = []
    for chunk in telemetry(args.points, args.devices):
        for p in chunk:
            lines.append(encode_point(p))
            if len(lines) == args.batch:
                bodies.append("\n".join(lines).encode())
                lines = []
    if lines:
        bodies.append("\n".join(lines).encode())
    influx.create_database("direct")
    assert influx.proc is not None
    cpu0, icpu0 = proc_cpu_s(_self_pid()), proc_cpu_s(influx.proc.pid)
    async with httpx.AsyncClient(base_url=influx.url, timeout=60) as client:
        start = time.perf_counter()
        for body in bodies:
            r = await client.post(
                "/write", params={"db": "direct", "precision": "ns"}, content=body
            )
            r.raise_for_status()
        elapsed = time.perf_counter() - start
    cpu1, icpu1 = proc_cpu_s(_self_pid()), proc_cpu_s(influx.proc.pid)
    stored = influx.count("device", "latency_ms", db="direct") + influx.count(
        "device", "pressure_bar", db="direct"
    )
    return {
        "points": args.points,
        "seconds": round(elapsed, 3),
        "points_per_s": round(args.points / elapsed),
        "bench_cpu_s": round(cpu1 - cpu0, 2),
        "influxd_cpu_s": round(icpu1 - icpu0, 2),
        "requests": len(bodies),
        "body_mb": round(sum(map(len, bodies)) / 1e6, 1),
        "stored_check": stored,
    }


async def through_writer(influx: Influx, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    influx.create_database("writer")
    writer = TelemetryWriter(
        InfluxV1(influx.url, "writer", timeout=60),
        tmp / "spool",
        batch_size=args.batch,
        flush_interval=1.0,
        gzip_body=True,
    )
    assert influx.proc is not None
    cpu0, icpu0 = proc_cpu_s(_self_pid()), proc_cpu_s(influx.proc.pid)
    start = time.perf_counter()
    async with writer:
        half = writer.max_buffer_points // 2
        for chunk in telemetry(args.points, args.devices):
            while writer.buffer_depth > half:  # noqa: ASYNC110 (polls the writer)
                await asyncio.sleep(0.002)
            writer.submit(chunk)
            await asyncio.sleep(0)
        if not await writer.flush(within=600):
            raise RuntimeError(f"writer did not flush: {writer.stats()}")
        elapsed = time.perf_counter() - start
        stats = writer.stats()
    cpu1, icpu1 = proc_cpu_s(_self_pid()), proc_cpu_s(influx.proc.pid)
    stored = influx.count("device", "latency_ms", db="writer") + influx.count(
        "device", "pressure_bar", db="writer"
    )
    return {
        "points": args.points,
        "seconds": round(elapsed, 3),
        "points_per_s": round(args.points / elapsed),
        "bench_cpu_s": round(cpu1 - cpu0, 2),
        "influxd_cpu_s": round(icpu1 - icpu0, 2),
        "stats": stats,
        "stored_check": stored,
    }


def _self_pid() -> int:
    import os

    return os.getpid()


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    info = machine_info()
    info["influxd"] = influxd_version()
    print(machine_line(info) + f", influxd {info['influxd']}")
    with tempfile.TemporaryDirectory(prefix="cg-bench-influx-", dir=args.tmpdir) as d:
        tmp = Path(d)
        influx = Influx(tmp / "influxdb")
        influx.start()
        try:
            print(f"{args.points} points, {args.devices} devices, {args.batch}-point batches")
            d_res = await direct(influx, args)
            print(
                f"direct  : {d_res['points_per_s']:>8} points/s  ({d_res['seconds']} s, "
                f"{d_res['requests']} POSTs, {d_res['body_mb']} MB; CPU bench "
                f"{d_res['bench_cpu_s']} s, influxd {d_res['influxd_cpu_s']} s)"
            )
            w_res = await through_writer(influx, args, tmp)
            s = w_res["stats"]
            print(
                f"writer  : {w_res['points_per_s']:>8} points/s  ({w_res['seconds']} s, "
                f"{s['batches_sent']} POSTs gzip; CPU bench {w_res['bench_cpu_s']} s, influxd "
                f"{w_res['influxd_cpu_s']} s; spooled {s['spooled']}, retried {s['retried']}, "
                f"max buffer {s['max_buffer_seen']})"
            )
        finally:
            influx.stop()
    ratio = w_res["points_per_s"] / d_res["points_per_s"]
    ok = ratio >= TARGET_RATIO
    print(f"ratio writer/direct: {ratio:.2f} (target >= {TARGET_RATIO}) {'OK' if ok else 'MISSED'}")
    for name, res in (("direct", d_res), ("writer", w_res)):
        # points of the device measurement with latency_ms + those with pressure_bar = all
        if res["stored_check"] != args.points:
            print(f"WARNING: {name}: InfluxDB holds {res['stored_check']} of {args.points}")
            ok = False
    return {
        "machine": info,
        "points": args.points,
        "devices": args.devices,
        "batch": args.batch,
        "direct": d_res,
        "writer": w_res,
        "ratio": round(ratio, 3),
        "target_ratio": TARGET_RATIO,
        "target_met": ok,
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--points", type=int, default=500_000, help="points per phase (500000)")
    p.add_argument("--devices", type=int, default=15_000, help="devices per round (15000)")
    p.add_argument("--batch", type=int, default=5_000, help="points per request (5000)")
    p.add_argument("--json", metavar="PATH", help="write the figures as JSON here")
    p.add_argument("--tmpdir", help="where InfluxDB's files go (default $TMPDIR)")
    p.add_argument("--log-level", default="WARNING", help="Python logging level (WARNING)")
    args = p.parse_args(argv)
    if args.points < 1 or args.devices < 1 or args.batch < 1:
        p.error("--points, --devices and --batch must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s %(message)s")
    try:
        result = asyncio.run(_common.guarded(lambda: bench(args), 1800))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("interrupted; influxd stopped", file=sys.stderr)
        return 130
    write_json(args.json, result)
    return 0 if result["target_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
