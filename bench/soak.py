"""Soak (issue 11): an hour at district load with a fault every few minutes; memory and file
descriptors must stay flat and no alarm may be lost.

The fault suite's rig (``tests/test_faults.py``: a real campus edge process with the DI module,
bollard and camera simulators, the driver pressing, ramming and crossing without pause; a real
gateway process; Mosquitto; the DC-09 receiver) serves its campus among ``--campuses`` - 1
simulated ones (``bench/district.py``'s publishers: 30 devices' status every 30 s, a telemetry
batch, alarm bursts). Every ``--fault-every`` seconds the next fault of the list below is
injected (then the rig waits until the police have every alarm so far). The faults here are
the ones that leave the processes running - broker restart, police receiver down, the edge's
link cut, the edge's disk full (with and without the link cut), the clocks jumping - so that
each process' memory and descriptors can be followed over the whole hour; SIGKILLs of the
gateway and the edge are the fault suite's (every CI run).

Every 30 s: RSS and open file descriptors of the gateway and the edge. At the end: the fault
suite's check for the rig's campus (every alarm at the police once, in each device's order),
every district alarm at the police once, and per process the RSS at 10 minutes and at the end,
its slope over the time after the first 10 minutes (MiB/h, least squares), and the descriptors.

    .venv/bin/python bench/soak.py [--duration 3600] [--fault-every 180] [--campuses 500]
        [--devices 30] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psutil
from _common import machine_info, machine_line, write_json
from district import PUBLISHER, account, campus_id

from tests.helpers import env_with_pythonpath
from tests.test_faults import Rig, check, rig

FAULTS = [
    ("broker restart", "broker_restart", 10.0),
    ("police down", "police_down", 60.0),
    ("edge link cut", "link_cut", 30.0),
    ("edge disk full", "disk_full", 20.0),
    ("clock jumps", "clock_jumps", 15.0),
    ("edge disk full during a link cut", "disk_full_link_cut", 20.0),
]
WARM_UP = 600.0
"""Memory is judged after this many seconds (caches, pools and the broker's sessions fill)."""


class Sampler:
    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []

    def sample(self, t: float, r: Rig) -> None:
        row: dict[str, float] = {"t": t}
        for name, proc in (("gateway", r.gateway.proc), ("edge", r.edge.proc)):
            if proc is None:
                continue
            try:
                p = psutil.Process(proc.pid)
                row[f"{name}_rss_mib"] = p.memory_info().rss / 2**20
                row[f"{name}_fds"] = float(p.num_fds())
                row[f"{name}_pid"] = float(proc.pid)
            except psutil.Error:
                pass
        self.rows.append(row)

    def verdict(self, name: str) -> dict[str, Any]:
        rows = [x for x in self.rows if f"{name}_rss_mib" in x]
        if not rows:
            return {}
        pids = {x[f"{name}_pid"] for x in rows}
        late = [x for x in rows if x["t"] >= WARM_UP] or rows
        ts = [x["t"] / 3600 for x in late]
        rss = [x[f"{name}_rss_mib"] for x in late]
        slope = statistics.linear_regression(ts, rss).slope if len(late) > 2 else float("nan")
        # Growth that levels off (caches filling) against growth that goes on: the second half.
        half = late[len(late) // 2 :]
        slope2 = (
            statistics.linear_regression(
                [x["t"] / 3600 for x in half], [x[f"{name}_rss_mib"] for x in half]
            ).slope
            if len(half) > 2
            else float("nan")
        )
        return {
            "restarts": len(pids) - 1,
            "rss_first_mib": round(rows[0][f"{name}_rss_mib"], 1),
            "rss_at_warm_up_mib": round(late[0][f"{name}_rss_mib"], 1),
            "rss_end_mib": round(rows[-1][f"{name}_rss_mib"], 1),
            "rss_max_mib": round(max(x[f"{name}_rss_mib"] for x in rows), 1),
            "rss_slope_mib_per_h": round(slope, 2),
            "rss_slope_second_half_mib_per_h": round(slope2, 2),
            "fds_at_warm_up": int(late[0][f"{name}_fds"]),
            "fds_end": int(rows[-1][f"{name}_fds"]),
            "fds_max": int(max(x[f"{name}_fds"] for x in rows)),
        }


def start_publishers(port: int, args: argparse.Namespace, tmp: Path) -> list[tuple[Any, Path]]:
    """District publishers for campuses 1 .. campuses-1 (bench/district.py's script)."""
    script = tmp / "publisher.py"
    script.write_text(PUBLISHER)
    n = args.campuses - 1
    per = -(-n // args.publishers)
    out = []
    for i in range(args.publishers):
        first = 1 + i * per
        count = min(per, args.campuses - first)
        if count <= 0:
            break
        result = tmp / f"publisher-{i}.json"
        proc = subprocess.Popen(
            [
                sys.executable,
                str(script),
                str(port),
                str(first),
                str(count),
                str(args.devices),
                str(args.duration),
                str(-(-args.burst // args.publishers)),
                str(args.burst_every),
                str(args.publishers),
                str(i),
                str(result),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env_with_pythonpath(),
        )
        assert proc.stdout is not None
        assert proc.stdin is not None
        assert proc.stdout.readline().strip() == "ready"
        out.append((proc, result))
    for proc, _ in out:
        proc.stdin.write("go\n")
        proc.stdin.flush()
    return out


def district_check(r: Rig, results: list[dict[str, Any]]) -> dict[str, Any]:
    """Every district alarm at the police once: (account, zone) of each sent alarm."""
    sent: Counter[tuple[str, int]] = Counter()
    resent = unreceipted = 0
    for data in results:
        resent += int(data["sent"].get("resent", 0))
        unreceipted += int(data["sent"].get("unreceipted", 0))
        for cam, zone, _t in data["alarms"]:
            sent[(account(int(cam.split("-")[1])), int(zone))] += 1
    got: Counter[tuple[str, int]] = Counter()
    accounts = {a for a, _ in sent}
    for m in r.police.messages:
        cid = m.contact_id
        if m.account in accounts and cid is not None and cid.qualifier == 1:
            got[(m.account, cid.zone)] += 1
    missing = sum(max(0, n - got[k]) for k, n in sent.items())
    twice = sum(max(0, got[k] - n) for k, n in sent.items())
    return {
        "sent": sum(sent.values()),
        "missing": missing,
        "more_than_sent": twice,
        "resent_for_lack_of_receipt": resent,
        "unreceipted_at_end": unreceipted,
    }


async def soak(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="cg-soak-"))

    def district(gw: dict[str, Any]) -> None:
        gw["campuses"] += [
            {"id": campus_id(c), "name": f"School {c}", "account": account(c)}
            for c in range(1, args.campuses)
        ]

    sampler = Sampler()
    async with rig(tmp, interval=0.25, more_gateway_config=district) as r:
        pubs = start_publishers(r.broker.port, args, tmp)
        t0 = time.monotonic()

        async def sample_every_30s() -> None:
            while True:
                sampler.sample(time.monotonic() - t0, r)
                await asyncio.sleep(30)  # the sampling period

        sampling = asyncio.create_task(sample_every_30s())
        k = 0
        try:
            while time.monotonic() - t0 < args.duration - args.fault_every / 2:
                name, fault, down = FAULTS[k % len(FAULTS)]
                k += 1
                if fault.startswith("disk_full") and r.disk is None:
                    continue
                if fault == "clock_jumps" and r.clocks is None:
                    continue
                method = getattr(r, fault)
                phase = f"#{k} {name}"
                print(f"{time.monotonic() - t0:7.0f} s  {phase}", flush=True)
                await r.run(phase, args.fault_every, lambda m=method, d=down: m(d))
        finally:
            sampler.sample(time.monotonic() - t0, r)
            sampling.cancel()
            for proc, _ in pubs:
                await asyncio.to_thread(proc.wait, args.fault_every + 120)
        results = check_quietly(r)
        # The publishers stop once every alarm has its receipt (stored at the centre); the relay
        # may still be delivering the last of them.
        outs = [json.loads(p.read_text()) for _, p in pubs]
        with contextlib.suppress(TimeoutError):
            await r.police.wait_for(lambda: district_check(r, outs)["missing"] == 0, timeout=60)
        dc = district_check(r, outs)
        return {
            "duration_s": round(time.monotonic() - t0),
            "faults": k,
            "campus": results,
            "district": dc,
            "gateway": sampler.verdict("gateway"),
            "edge": sampler.verdict("edge"),
            "samples": sampler.rows,
        }


def check_quietly(r: Rig) -> dict[str, Any]:
    """The fault suite's check; its report printed, its verdict kept."""
    try:
        results = check(r)
    except AssertionError as exc:
        return {"ok": False, "failure": str(exc)[-3000:]}
    return {
        "ok": True,
        "injected": sum(x.injected for x in results),
        "delivered": sum(x.delivered for x in results),
        "lost": sum(x.lost for x in results),
        "duplicates": sum(x.duplicates for x in results),
        "max_delay_s": round(max(x.max_delay for x in results), 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--duration", type=float, default=3600.0)
    ap.add_argument("--fault-every", type=float, default=180.0)
    ap.add_argument("--campuses", type=int, default=500)
    ap.add_argument("--devices", type=int, default=30)
    ap.add_argument("--publishers", type=int, default=2)
    ap.add_argument("--burst", type=int, default=50)
    ap.add_argument("--burst-every", type=float, default=10.0)
    ap.add_argument("--json")
    args = ap.parse_args()
    out = asyncio.run(soak(args))
    print(json.dumps({k: v for k, v in out.items() if k != "samples"}, indent=2))
    print(machine_line(machine_info()))
    ok = (
        out["campus"].get("ok")
        and out["district"]["missing"] == 0
        and out["district"]["more_than_sent"] == 0
    )
    print("PASS" if ok else "MISS", "(memory and descriptors: judge the slopes above)")
    if args.json:
        write_json(args.json, out)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
