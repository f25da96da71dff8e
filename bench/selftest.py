"""Self-test round trip: N self-tests, one after another, each from the request at the gateway
until the police's answer is back at the edge (hop ``status_at_edge``), every hop timed.

Every hop is real (gateway -> Mosquitto -> edge over MQTT QoS 1, the edge outbox with fsync,
MQTT back to the gateway's SQLite store, DC-09 ADM-CID over TCP to the simulated police receiver
and its ACK, the alarm status down to the edge, the edge's ``selftest`` report up again), but
everything except Mosquitto runs in ONE Python process on ONE event loop, so the figures
include that loop's jitter.

    .venv/bin/python bench/selftest.py [--tests 200] [--mode synthetic|pulse] [--json out.json]

Times are the hop times the self-test itself records (gateway and edge clocks: the same
machine): requested (API), published (PUBACK of down/selftest), edge_outbox (the test event's
edge timestamp), gateway_stored, police_ack (DC-09 ACK), status_at_edge (police_received back
at the edge). Round trip = status_at_edge - requested. Target: p99 <= 200 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import faulthandler
import logging
import sys
import tempfile
import time
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
from edge.daemon import run_edge
from gateway.selftest import HOPS, hop_times
from gateway.service import GatewayRuntime, run_gateway
from simulators.modbus_io import DIModuleSimulator
from simulators.police import PoliceReceiver
from tests.helpers import Mosquitto, wait_for

TARGET_MS = 200.0
TEST_CH = 11
SEGMENTS = (
    ("requested", "published"),
    ("requested", "edge_outbox"),
    ("edge_outbox", "gateway_stored"),
    ("gateway_stored", "police_ack"),
    ("police_ack", "status_at_edge"),
)


def edge_config(tmp: Path, broker_port: int, sim_port: int, poll: float) -> Any:
    return parse_config(
        {
            "campus": {"id": CAMPUS, "name": "Bench school", "geo": {"lat": 39.7, "lon": 116.3}},
            "edge": {"id": "edge-1", "data_dir": str(tmp / "edge"), "status_interval": 30},
            "mqtt": {"host": "127.0.0.1", "port": broker_port, "keepalive": 15},
            "zones": [{"id": "gate", "name": "South gate", "location": "south gate"}],
            "test_signal": {"enabled": False},
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
                        {"channel": 0, "id": "btn-0", "kind": "panic", "alarm_zone": 1},
                        {"channel": TEST_CH, "id": "test-in", "kind": "test", "alarm_zone": 12},
                    ],
                    "test_output": {"channel": 0, "pulse_ms": 20},
                }
            ],
        },
        EdgeConfig,
        "bench-edge",
    )


def tcp_nodelay_everywhere() -> None:
    """Experiment (--nodelay): every aiomqtt client of this process (edge uplink, gateway)
    with TCP_NODELAY, to see what Nagle's algorithm costs (the product does not set it)."""
    import socket

    import aiomqtt

    original = aiomqtt.Client.__init__

    def patched(self: Any, *a: Any, **kw: Any) -> None:
        opts = tuple(kw.pop("socket_options", None) or ())
        kw["socket_options"] = (*opts, (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1))
        original(self, *a, **kw)

    aiomqtt.Client.__init__ = patched  # type: ignore[method-assign]


async def one(gw: GatewayRuntime, mode: str, ttl: float) -> tuple[Any, float]:
    """Run one self-test; returns its final row and the wall time until the gateway's
    verdict (monotonic, this process)."""
    svc = gw.selftests
    assert svc is not None
    t0 = time.monotonic()
    row = await svc.start(CAMPUS, "di-1", mode, "bench", ttl)
    deadline = t0 + ttl + 5
    while True:
        svc.changed.clear()
        got = await svc.get(row.id)
        if got is not None and got.state != "running":
            return got, time.monotonic() - t0
        if time.monotonic() > deadline:
            return got, time.monotonic() - t0
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(svc.changed.wait(), 0.5)


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    info = machine_info()
    with tempfile.TemporaryDirectory(prefix="cg-bench-selftest-", dir=args.tmpdir) as tmp_name:
        tmp = Path(tmp_name)
        broker = Mosquitto(tmp / "broker")
        broker.start()
        try:
            async with (
                DIModuleSimulator("adam-6050", wiring={0: TEST_CH}) as sim,
                PoliceReceiver(udp=False) as police,
                run_gateway(gateway_config(tmp, broker.port, police.tcp_port)) as gw,
            ):
                await wait_for(gw.mqtt.connected.is_set, what="gateway MQTT")
                async with run_edge(edge_config(tmp, broker.port, sim.port, args.poll)) as edge:
                    await wait_for(edge.uplink.connected.is_set, what="edge uplink")
                    await wait_for(lambda: edge.pollers["di-1"].online, what="module online")
                    for _ in range(args.warmup):
                        await one(gw, args.mode, args.timeout)
                    rows: list[Any] = []
                    verdicts: list[float] = []
                    cpu0, wall0 = time.process_time(), time.monotonic()
                    for _ in range(args.tests):
                        row, verdict = await one(gw, args.mode, args.timeout)
                        rows.append(row)
                        verdicts.append(verdict)
                        if args.gap > 0:
                            await asyncio.sleep(args.gap / 1000)
                    cpu = time.process_time() - cpu0
                    wall = time.monotonic() - wall0
                    tests_at_police = sum(
                        1 for m in police.messages if m.contact_id and m.contact_id.code == 601
                    )
        finally:
            broker.stop()
    result = analyse(args, rows, verdicts)
    result["process_cpu_pct_of_one_core"] = round(100 * cpu / wall, 1)
    result["tests_at_police"] = tests_at_police
    result["machine"] = info
    return result


def analyse(args: argparse.Namespace, rows: list[Any], verdicts: list[float]) -> dict[str, Any]:
    passed = [r for r in rows if r is not None and r.state == "passed"]
    failed = [
        {"id": r.id, "failed_hop": r.failed_hop, "detail": r.detail}
        for r in rows
        if r is not None and r.state != "passed"
    ]
    from_request: dict[str, list[float]] = {h: [] for h in HOPS[1:]}
    segments: dict[str, list[float]] = {f"{a}->{b}": [] for a, b in SEGMENTS}
    for r in passed:
        t = hop_times(r)
        for h in HOPS[1:]:
            from_request[h].append((t[h] - t["requested"]).total_seconds())
        for a, b in SEGMENTS:
            segments[f"{a}->{b}"].append((t[b] - t[a]).total_seconds())
    round_trip = summary_ms(from_request["status_at_edge"])
    return {
        "benchmark": "selftest",
        "config": {
            "tests": args.tests,
            "warmup": args.warmup,
            "mode": args.mode,
            "poll_s": args.poll,
            "gap_ms": args.gap,
            "profile": "adam-6050",
            "dc09": "ADM-CID over TCP, no encryption",
            "gateway_db": "SQLite (aiosqlite)",
            "single_process": True,
            "tcp_nodelay_patched": args.nodelay,
        },
        "round_trip_ms": round_trip,
        "verdict_at_gateway_ms": summary_ms(verdicts),
        "hop_from_request_ms": {h: summary_ms(v) for h, v in from_request.items()},
        "segment_ms": {k: summary_ms(v) for k, v in segments.items()},
        "passed": len(passed),
        "failed": failed,
        "target_ms": TARGET_MS,
        "target_met": bool(round_trip["n"]) and round_trip["p99"] <= TARGET_MS,
    }


def report(r: dict[str, Any]) -> None:
    c = r["config"]
    print(
        f"selftest: {c['tests']} self-tests ({c['mode']}, after {c['warmup']} warm-up), one at a "
        f"time; ADAM-6050 sim, poll {c['poll_s'] * 1e3:g} ms; Mosquitto; gateway SQLite; "
        "DC-09 ADM-CID/TCP"
        + (" (TCP_NODELAY patched onto MQTT clients)" if c["tcp_nodelay_patched"] else "")
    )
    print(machine_line(r["machine"]))
    print(
        "NOTE: simulator, edge, gateway and police receiver share ONE process and ONE asyncio "
        f"event loop (process CPU {r['process_cpu_pct_of_one_core']:.0f} % of one core)."
    )
    print(f"{'':38}{'p50':>8}{'p99':>8}{'max':>8}   (ms, n)")

    def line(label: str, s: dict[str, Any]) -> None:
        print(f"{label:38}{fmt_ms(s['p50'])} {fmt_ms(s['p99'])} {fmt_ms(s['max'])}   n={s['n']}")

    line("round trip request -> status_at_edge", r["round_trip_ms"])
    line("verdict at the gateway (wall)", r["verdict_at_gateway_ms"])
    for hop, s in r["hop_from_request_ms"].items():
        line(f"  request -> {hop}", s)
    for seg, s in r["segment_ms"].items():
        line(f"  {seg}", s)
    verdict = "PASS" if r["target_met"] else "FAIL"
    print(
        f"check p99(round trip) {r['round_trip_ms']['p99']:.1f} ms <= {r['target_ms']:.0f} ms: "
        f"{verdict}; passed {r['passed']} of {c['tests']}, at the police as 601: "
        f"{r['tests_at_police']} (incl. warm-up)"
    )
    for f in r["failed"][:10]:
        print(f"  failed {f['id']} at {f['failed_hop']}: {f['detail']}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tests", type=int, default=200, help="measured self-tests (default 200)")
    p.add_argument("--mode", choices=("synthetic", "pulse"), default="synthetic")
    p.add_argument("--poll", type=float, default=0.05, help="edge poll interval, s (0.05)")
    p.add_argument("--warmup", type=int, default=5, help="uncounted self-tests first (5)")
    p.add_argument("--gap", type=float, default=0.0, help="pause between self-tests, ms (0)")
    p.add_argument("--timeout", type=float, default=10.0, help="per self-test, s (10)")
    p.add_argument("--json", metavar="PATH", help="write the figures as JSON here")
    p.add_argument(
        "--nodelay",
        action="store_true",
        help="experiment: set TCP_NODELAY on every MQTT client socket (not the product's)",
    )
    p.add_argument("--tmpdir", help="where the outbox / SQLite / broker files go (default $TMPDIR)")
    p.add_argument("--log-level", default="ERROR", help="Python logging level (ERROR)")
    args = p.parse_args(argv)
    if args.tests < 1:
        p.error("--tests must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s %(message)s")
    logging.getLogger("mqtt").setLevel(args.log_level.upper())
    if args.nodelay:
        tcp_nodelay_everywhere()
    expected = (args.tests + args.warmup) * (args.timeout + 1) + 60
    faulthandler.dump_traceback_later(expected + 120)
    try:
        result = asyncio.run(_common.guarded(lambda: bench(args), expected + 60))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("interrupted; broker and simulator stopped", file=sys.stderr)
        return 130
    finally:
        faulthandler.cancel_dump_traceback_later()
    report(result)
    write_json(args.json, result)
    return 0 if result["target_met"] and not result["failed"] else 1


if __name__ == "__main__":
    sys.exit(main())
