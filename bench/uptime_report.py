"""Monthly uptime report for a district (issue 5): 500 campuses x 30 devices in <= 2 s.

    .venv/bin/python bench/uptime_report.py [--campuses 500] [--devices 30] [--db sqlite,postgresql]
                                            [--json out.json]

The store is filled as a month of real operation leaves it: every device (and each campus edge)
first seen at the start of the month, 0-6 outages per device of 1 min to 6 h (2 % still open at
the end), one maintenance window per campus and one per 50 devices. Then, per database:

- **report**: ``Store.uptime_inputs`` (the database read) plus ``reports.uptime_report`` (the
  interval arithmetic for every device, campus and the district) for the month: what
  ``GET /api/reports/uptime?period=month`` does before serialising. Target <= 2 s.
- **baseline**: the same three SELECTs with no arithmetic (``Store.uptime_inputs`` alone), in
  the same run, so the report's own cost is read against the database's.
- **csv**: rendering the CSV of the same report (what the commission downloads).

Each step is run 3 times; the best and the median are printed. PostgreSQL is Debian's, started on
a free port in a temporary directory (as the tests do), with fsync off (the bench measures reads).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import _common
from _common import machine_info, machine_line, write_json

from gateway import reports
from gateway.store.db import make_engine, migrate
from gateway.store.models import DeviceSeen, MaintenanceRow, OutageRow
from gateway.store.repo import Store, aware

START = datetime(2026, 10, 1, tzinfo=UTC)
END = datetime(2026, 11, 1, tzinfo=UTC)
TARGET_S = 2.0


async def fill(store: Store, campuses: int, devices: int, seed: int = 7) -> dict[str, int]:
    rnd = random.Random(seed)
    seen: list[DeviceSeen] = []
    outages: list[OutageRow] = []
    windows: list[MaintenanceRow] = []
    span = (END - START).total_seconds()
    for c in range(campuses):
        campus = f"campus-{c:04d}"
        names = [f"dev-{d:02d}" for d in range(devices)] + ["edge"]
        for d, name in enumerate(names):
            kind = "edge" if name == "edge" else "device"
            seen.append(DeviceSeen(campus=campus, device=name, kind=kind, first_seen=START))
            for _ in range(rnd.randint(0, 6)):
                s = START + timedelta(seconds=rnd.uniform(0, span - 3600))
                open_ = rnd.random() < 0.02
                e = None if open_ else s + timedelta(seconds=rnd.uniform(60, 6 * 3600))
                outages.append(
                    OutageRow(campus=campus, device=name, kind=kind, start=s, end=e, cause="x")
                )
            if d % 50 == 0:
                ws = START + timedelta(seconds=rnd.uniform(0, span - 7200))
                windows.append(
                    MaintenanceRow(
                        campus=campus,
                        device=name,
                        start=ws,
                        end=ws + timedelta(hours=2),
                        reason="bench",
                        user="bench",
                        created_at=ws,
                    )
                )
        ws = START + timedelta(seconds=rnd.uniform(0, span - 7200))
        windows.append(
            MaintenanceRow(
                campus=campus,
                device=None,
                start=ws,
                end=ws + timedelta(hours=4),
                reason="bench",
                user="bench",
                created_at=ws,
            )
        )
    async with store.session() as session, session.begin():
        session.add_all(seen)
        session.add_all(outages)
        session.add_all(windows)
    return {"devices": len(seen), "outages": len(outages), "windows": len(windows)}


def build(seen: list[Any], outages: list[Any], windows: list[Any]) -> reports.UptimeReport:
    def a(ts: datetime) -> datetime:
        out = aware(ts)
        assert out is not None
        return out

    return reports.uptime_report(
        START,
        END,
        [(d.campus, d.device, d.kind, a(d.first_seen)) for d in seen],
        [
            reports.OutageInput(o.campus, o.device, a(o.start), aware(o.end), o.cause)
            for o in outages
        ],
        [reports.WindowInput(w.campus, w.device, a(w.start), aware(w.end)) for w in windows],
    )


async def measure(url: str, campuses: int, devices: int) -> dict[str, Any]:
    engine = make_engine(url)
    await migrate(engine)
    store = Store(engine)
    try:
        t = time.perf_counter()
        counts = await fill(store, campuses, devices)
        fill_s = time.perf_counter() - t
        base, full, csv_t = [], [], []
        rep: reports.UptimeReport | None = None
        for _ in range(3):
            t = time.perf_counter()
            await store.uptime_inputs(START, END, None)
            base.append(time.perf_counter() - t)
            t = time.perf_counter()
            rows = await store.uptime_inputs(START, END, None)
            rep = build(*rows)
            full.append(time.perf_counter() - t)
            t = time.perf_counter()
            reports.uptime_csv(rep)
            csv_t.append(time.perf_counter() - t)
        assert rep is not None
        return {
            **counts,
            "fill_s": round(fill_s, 2),
            "baseline_s": {"best": min(base), "median": statistics.median(base)},
            "report_s": {"best": min(full), "median": statistics.median(full)},
            "csv_s": {"best": min(csv_t), "median": statistics.median(csv_t)},
            "district_availability": rep.district.availability,
        }
    finally:
        await store.drain()
        await engine.dispose()


async def main(args: argparse.Namespace) -> int:
    info = machine_info()
    print(machine_line(info))
    print(f"{args.campuses} campuses x {args.devices} devices (+1 edge each), month {START:%Y-%m}")
    results: dict[str, Any] = {"machine": info}
    ok = True
    with tempfile.TemporaryDirectory(prefix="cg-bench-uptime-") as tmp:
        for db in args.db.split(","):
            pg = None
            if db == "sqlite":
                url = f"sqlite+aiosqlite:///{tmp}/uptime.db"
            elif db == "postgresql":
                from tests.helpers import Postgres

                # Its own folder: as root the server runs as 'postgres', which cannot enter
                # the private temporary directory.
                pg = Postgres(Path(tempfile.mkdtemp(prefix="cg-bench-pg-")))
                pg.start()
                url = pg.create_database("uptime")
            else:
                print(f"unknown database {db!r}", file=sys.stderr)
                return 2
            try:
                r = await measure(url, args.campuses, args.devices)
            finally:
                if pg is not None:
                    pg.stop()
            results[db] = r
            rep, base = r["report_s"]["median"], r["baseline_s"]["median"]
            verdict = "PASS" if rep <= TARGET_S else "MISS"
            ok &= rep <= TARGET_S
            print(
                f"{db:10s} {r['devices']} devices, {r['outages']} outages, {r['windows']} windows"
                f" (filled in {r['fill_s']} s)\n"
                f"           report {rep:.3f} s median (best {r['report_s']['best']:.3f})"
                f"  [target <= {TARGET_S} s: {verdict}]\n"
                f"           baseline (database read only) {base:.3f} s; report / baseline "
                f"= {rep / base:.2f}; CSV {r['csv_s']['median']:.3f} s; district availability "
                f"{r['district_availability'] * 100:.3f} %"
            )
    write_json(args.json, results)
    return 0 if ok else 1


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--campuses", type=int, default=500)
    p.add_argument("--devices", type=int, default=30)
    p.add_argument("--db", default="sqlite,postgresql")
    p.add_argument("--json")
    _ = _common
    sys.exit(asyncio.run(main(p.parse_args())))
