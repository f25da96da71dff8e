"""Telemetry ingest, MQTT -> gateway -> InfluxDB, vs line protocol POSTed straight (issue 5).

One real InfluxDB 1.x (Debian's influxd) and one real Mosquitto, both started here on free ports
in a temp dir, and in the same run:

1. direct: the line protocol the gateway would write for the same samples (``batch_points`` +
   ``encode_point``, done before the clock starts), POSTed to ``/write?db=direct`` in
   ``--batch``-line bodies one after the other: what InfluxDB itself takes.
2. ingest: the gateway (``run_gateway``, in this process, ``influxdb: {api: v1}``, gzip,
   ``--batch``-point batches) subscribed to the broker; a publisher in a separate process
   publishes ``TelemetryBatch`` messages as campus edges send them: one per campus per round,
   30 devices (DI modules, bollard controllers, cameras, with the fields the edge sends) plus
   the edge itself, QoS 1. The clock runs from the "go" to the publisher until the writer
   reports every point written to InfluxDB. Every message goes through the real path: MQTT
   receive, manual acknowledgement, JSON validation of the batch, the timestamp checks,
   conversion to points, line protocol, batching, gzip, POST.

    .venv/bin/python bench/telemetry_ingest.py [--campuses 500] [--rounds 32] [--batch 5000]
                                               [--json out.json]

Prints points/s of each, the ratio ingest/direct (target >= 0.5), the CPU seconds of the
gateway process, the publisher, Mosquitto and influxd, and a machine line. Exit 1 on a miss.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import _common
import httpx
from _common import machine_info, machine_line, proc_cpu_s, write_json

from contract.config import GatewayConfig, parse_config
from contract.telemetry import TelemetryBatch
from gateway.service import run_gateway
from gateway.telemetry import encode_point
from gateway.telemetry.sink import InfluxSink, batch_points
from tests.helpers import Mosquitto
from tests.influx import Influx

TARGET_RATIO = 0.5
DEVICES = 30


def campus_id(c: int) -> str:
    return f"dx-campus-{c:03d}"


def make_batches(campuses: int, rounds: int, seed: int = 3) -> list[TelemetryBatch]:
    """``rounds`` rounds of one batch per campus, 30 s apart, ending a minute ago."""
    import random

    rng = random.Random(seed)
    end = datetime.now(UTC) - timedelta(minutes=1)
    out = []
    for r in range(rounds):
        ts = end - timedelta(seconds=30 * (rounds - r))
        for c in range(campuses):
            samples: list[dict[str, Any]] = [
                {
                    "device": "edge-1",
                    "kind": "edge",
                    "fields": {
                        "cpu_pct": round(rng.uniform(0.5, 5), 2),
                        "rss_mib": 61.5,
                        "disk_free_mib": 20480.5,
                        "disk_used_pct": 41.2,
                        "outbox_depth": 0,
                        "uplink_up": True,
                        "telemetry_dropped": 0,
                    },
                }
            ]
            for d in range(DEVICES):
                kind = ("di_module", "bollard_controller", "camera")[d % 3]
                fields: dict[str, Any] = {"online": True}
                if kind == "camera":
                    fields |= {
                        "events": rng.randrange(3),
                        "clock_skew_s": round(rng.uniform(-1, 1), 3),
                        "subscription_alive": True,
                    }
                else:
                    fields |= {
                        "requests": 600,
                        "errors": rng.randrange(2),
                        "errors_total": 3,
                        "latency_ms_avg": round(rng.uniform(2, 30), 3),
                        "latency_ms_max": round(rng.uniform(30, 90), 3),
                    }
                samples.append({"device": f"{kind}-{d:02d}", "kind": kind, "fields": fields})
            out.append(
                TelemetryBatch.model_validate(
                    {
                        "campus": campus_id(c),
                        "edge": "edge-1",
                        "ts": ts,
                        "interval_s": 30.0,
                        "samples": samples,
                    }
                )
            )
    return out


PUBLISHER = r"""
import json, sys, time
import paho.mqtt.client as mqtt
port, path = int(sys.argv[1]), sys.argv[2]
msgs = [tuple(m) for m in json.load(open(path))]
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-edges")
c.max_inflight_messages_set(200)
c.max_queued_messages_set(0)
c.connect("127.0.0.1", port)
c.loop_start()
print("ready", flush=True)
sys.stdin.readline()
infos = [c.publish(t, p.encode(), qos=1) for t, p in msgs]
for i in infos:
    i.wait_for_publish(120)
print("done", flush=True)
c.loop_stop()
c.disconnect()
"""


async def direct(influx: Influx, batches: list[TelemetryBatch], size: int) -> dict[str, Any]:
    lines = [encode_point(p) for b in batches for p in batch_points(b)]
    bodies = ["\n".join(lines[i : i + size]).encode() for i in range(0, len(lines), size)]
    influx.create_database("direct")
    assert influx.proc is not None
    icpu0 = proc_cpu_s(influx.proc.pid)
    async with httpx.AsyncClient(base_url=influx.url, timeout=60) as client:
        start = time.perf_counter()
        for body in bodies:
            r = await client.post(
                "/write", params={"db": "direct", "precision": "ns"}, content=body
            )
            r.raise_for_status()
        elapsed = time.perf_counter() - start
    return {
        "points": len(lines),
        "seconds": round(elapsed, 3),
        "points_per_s": round(len(lines) / elapsed),
        "influxd_cpu_s": round(proc_cpu_s(influx.proc.pid) - icpu0, 2),
        "requests": len(bodies),
    }


def gateway_cfg(tmp: Path, broker: int, influx: Influx, campuses: int, batch: int) -> GatewayConfig:
    return parse_config(
        {
            "gateway": {"id": "gw-bench", "data_dir": str(tmp / "gw"), "http": None},
            "mqtt": {"host": "127.0.0.1", "port": broker, "keepalive": 30},
            "database": {"url": f"sqlite+aiosqlite:///{tmp}/gw/campusguard.db"},
            "campuses": [{"id": campus_id(c), "account": "1234"} for c in range(campuses)],
            "influxdb": {
                "api": "v1",
                "url": influx.url,
                "database": "ingest",
                "batch_size": batch,
                "flush_interval": 0.5,
                "timeout": 60,
            },
        },
        GatewayConfig,
        "bench",
    )


async def ingest(
    influx: Influx,
    mosq: Mosquitto,
    batches: list[TelemetryBatch],
    args: argparse.Namespace,
    tmp: Path,
) -> dict[str, Any]:
    from contract import topics

    influx.create_database("ingest")
    points = sum(len(b.samples) for b in batches)
    msgs = [(topics.telemetry_topic(b.campus), b.model_dump_json()) for b in batches]
    path = tmp / "msgs.json"
    path.write_text(json.dumps(msgs))
    cfg = gateway_cfg(tmp, mosq.port, influx, args.campuses, args.batch)
    async with run_gateway(cfg) as gw:
        assert isinstance(gw.telemetry, InfluxSink)
        writer = gw.telemetry.writer
        pub = subprocess.Popen(  # noqa: ASYNC220 (started once, before the clock)
            [sys.executable, "-c", PUBLISHER, str(mosq.port), str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert pub.stdout is not None
            assert pub.stdin is not None
            ready = await asyncio.to_thread(pub.stdout.readline)
            if ready.strip() != "ready":
                raise RuntimeError(f"publisher did not start: {ready!r}")
            while not gw.telemetry_mqtt.connected.is_set():  # noqa: ASYNC110
                await asyncio.sleep(0.01)
            assert influx.proc is not None
            assert mosq.proc is not None
            me, ip, mp = os.getpid(), influx.proc.pid, mosq.proc.pid
            cpu0 = (proc_cpu_s(me), proc_cpu_s(pub.pid), proc_cpu_s(mp), proc_cpu_s(ip))
            start = time.perf_counter()
            pub.stdin.write("go\n")
            pub.stdin.flush()
            deadline = time.monotonic() + 600
            while writer.stats()["written"] < points:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"not all written: {writer.stats()}")
                await asyncio.sleep(0.02)
            elapsed = time.perf_counter() - start
            cpu1 = (proc_cpu_s(me), proc_cpu_s(pub.pid), proc_cpu_s(mp), proc_cpu_s(ip))
            await asyncio.to_thread(pub.wait, 30)
            stats = writer.stats()
            rejected = gw.ingest.reject.total
        finally:
            if pub.poll() is None:
                pub.kill()
    return {
        "points": points,
        "messages": len(msgs),
        "seconds": round(elapsed, 3),
        "points_per_s": round(points / elapsed),
        "gateway_cpu_s": round(cpu1[0] - cpu0[0], 2),
        "publisher_cpu_s": round(cpu1[1] - cpu0[1], 2),
        "mosquitto_cpu_s": round(cpu1[2] - cpu0[2], 2),
        "influxd_cpu_s": round(cpu1[3] - cpu0[3], 2),
        "rejected": rejected,
        "writer": stats,
        "stored_check": influx.count("edge", "cpu_pct", db="ingest")
        + influx.count("di_module", "online", db="ingest")
        + influx.count("bollard_controller", "online", db="ingest")
        + influx.count("camera", "online", db="ingest"),
    }


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    info = machine_info()
    print(machine_line(info))
    batches = make_batches(args.campuses, args.rounds)
    n = sum(len(b.samples) for b in batches)
    print(f"{n} points: {args.campuses} campuses x {DEVICES + 1} samples x {args.rounds} rounds")
    with tempfile.TemporaryDirectory(prefix="cg-bench-ingest-") as d:
        tmp = Path(d)
        influx = Influx(tmp / "influxdb")
        mosq = Mosquitto(tmp / "mosquitto")
        influx.start()
        mosq.start()
        try:
            d_res = await direct(influx, batches, args.batch)
            print(
                f"direct : {d_res['points_per_s']:>8} points/s ({d_res['seconds']} s, "
                f"{d_res['requests']} POSTs; influxd CPU {d_res['influxd_cpu_s']} s)"
            )
            i_res = await ingest(influx, mosq, batches, args, tmp)
            print(
                f"ingest : {i_res['points_per_s']:>8} points/s ({i_res['seconds']} s, "
                f"{i_res['messages']} MQTT messages; CPU gateway {i_res['gateway_cpu_s']} s, "
                f"publisher {i_res['publisher_cpu_s']} s, mosquitto {i_res['mosquitto_cpu_s']} s,"
                f" influxd {i_res['influxd_cpu_s']} s; rejected {i_res['rejected']}, spooled "
                f"{i_res['writer']['spooled']})"
            )
        finally:
            mosq.stop()
            influx.stop()
    ratio = i_res["points_per_s"] / d_res["points_per_s"]
    ok = ratio >= TARGET_RATIO and i_res["stored_check"] == n
    gw_core = i_res["gateway_cpu_s"] / i_res["seconds"] * 100
    print(
        f"ratio ingest/direct: {ratio:.2f} (target >= {TARGET_RATIO}) "
        f"{'OK' if ratio >= TARGET_RATIO else 'MISSED'}; gateway at {gw_core:.0f} % of a core; "
        f"InfluxDB holds {i_res['stored_check']} of {n}"
    )
    return {
        "machine": info,
        "direct": d_res,
        "ingest": i_res,
        "ratio": round(ratio, 3),
        "target_met": ok,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--campuses", type=int, default=500)
    p.add_argument("--rounds", type=int, default=32)
    p.add_argument("--batch", type=int, default=5000)
    p.add_argument("--json")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    _ = _common
    result = asyncio.run(bench(args))
    write_json(args.json, result)
    return 0 if result["target_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
