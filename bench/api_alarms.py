"""The REST API with a district's alarm history (issue 8): alarm lists of 100 items with
100,000 alarms stored, on SQLite and on PostgreSQL. Target: p99 <= 50 ms.

    .venv/bin/python bench/api_alarms.py [--alarms 100000] [--campuses 500] [--requests 300]
                                         [--db sqlite,postgresql] [--json out.json]

The store is filled as a year of a district leaves it (alarms of every kind over 365 days, 3
timeline steps each, 3 % still open), then the gateway runs as its own process
(``python -m campusguard.cli gateway``, real Mosquitto, real PostgreSQL), and one client asks,
one request at a time over a kept-alive connection, with a bearer token from the database:

- **baseline**: ``GET /api/auth/me`` - the same authentication (a token lookup) and HTTP
  stack with no alarm query, so the list's own cost is read against it (a ratio);
- **newest**: the 100 newest alarms of the district (an admin);
- **dispatcher**: the 100 newest of a police station's 20 campuses;
- **campus**: the 100 newest of one campus;
- **filtered**: open critical alarms of one kind;
- **page 5**: the fifth page of 100, following the cursor the API hands out;
- **detail**: one alarm with its timeline and evidence.

Each query is asked ``--requests`` times after 20 warm-up requests; p50/p99/max printed.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import _common
import httpx
import yaml
from _common import machine_info, machine_line, summary_ms, write_json
from sqlalchemy import insert

from contract.config import GatewayConfig, parse_config
from gateway.store.accounts import AccountStore
from gateway.store.db import make_engine, migrate
from gateway.store.models import AlarmRow, AlarmStep
from tests.helpers import Mosquitto, Postgres, env_with_pythonpath, free_port
from webkit.passwords import hash_password

TARGET_MS = 50.0
END = datetime(2026, 11, 1, tzinfo=UTC)
KINDS = [
    ("panic", "critical", 0.10),
    ("intrusion", "high", 0.10),
    ("bollard_impact", "critical", 0.05),
    ("camera_tamper", "high", 0.15),
    ("video_loss", "high", 0.20),
    ("transmission_fault", "high", 0.25),
    ("test_missed", "low", 0.15),
]
ADMIN_TOKEN = "cgt_bench-admin-token-0123456789abcdef"
DISPATCH_TOKEN = "cgt_bench-dispatch-token-0123456789abcdef"


def campus_id(c: int) -> str:
    return f"campus-{c:04d}"


async def fill(url: str, alarms: int, campuses: int, seed: int = 11) -> str:
    """Fill ``alarms`` alarms; returns one alarm id for the detail query."""
    rnd = random.Random(seed)
    engine = make_engine(url)
    await migrate(engine)
    kinds = [k for k, _, _ in KINDS]
    weights = [w for _, _, w in KINDS]
    severity = {k: s for k, s, _ in KINDS}
    from contract.models import new_id

    some_id = ""
    batch: list[dict[str, Any]] = []
    steps: list[dict[str, Any]] = []
    async with engine.begin() as conn:
        for i in range(alarms):
            at = END - timedelta(seconds=rnd.uniform(0, 365 * 86400))
            kind = rnd.choices(kinds, weights)[0]
            aid = new_id()
            open_ = rnd.random() < 0.03
            campus = campus_id(rnd.randrange(campuses))
            batch.append(
                {
                    "id": aid,
                    "campus": campus,
                    "kind": kind,
                    "severity": severity[kind],
                    "device": f"dev-{rnd.randrange(30):02d}",
                    "point": None,
                    "zone": "gate",
                    "location": "South gate",
                    "lat": 39.9,
                    "lon": 116.4,
                    "restore": False,
                    "drill": rnd.random() < 0.05,
                    "text": f"{kind} at the south gate",
                    "edge_ts": at,
                    "received_at": at,
                    "state": "police_received" if open_ else "closed",
                    "police_path": "primary",
                    "police_at": at + timedelta(seconds=0.1),
                    "guard_ack_at": None if open_ else at + timedelta(seconds=40),
                    "closed_at": None if open_ else at + timedelta(minutes=10),
                }
            )
            for n, state in enumerate(("received", "police_received", "closed")):
                steps.append(
                    {
                        "alarm_id": aid,
                        "campus": campus,
                        "state": state,
                        "ts": at + timedelta(seconds=n),
                        "path": None,
                        "note": "",
                        "published": True,
                    }
                )
            if i == alarms // 2:
                some_id = aid
            if len(batch) >= 5000:
                await conn.execute(insert(AlarmRow), batch)
                await conn.execute(insert(AlarmStep), steps)
                batch, steps = [], []
        if batch:
            await conn.execute(insert(AlarmRow), batch)
            await conn.execute(insert(AlarmStep), steps)
    accounts = AccountStore(engine)
    pw = hash_password("bench-password-1")
    await accounts.create_user("admin", "admin", ["*"], pw)
    await accounts.create_user(
        "station-7", "dispatcher", [campus_id(c) for c in range(0, 20 * 7, 7)], pw
    )
    await accounts.add_token("A" * 26, "admin", ADMIN_TOKEN, "bench", None)
    await accounts.add_token("D" * 26, "station-7", DISPATCH_TOKEN, "bench", None)
    if url.startswith("postgresql"):
        async with engine.begin() as conn:
            await conn.exec_driver_sql("ANALYZE")
    await engine.dispose()
    return some_id


def gateway_yaml(tmp: Path, broker: int, db_url: str, http: int, campuses: int) -> Path:
    data = {
        "gateway": {
            "id": "gw-api",
            "data_dir": str(tmp / "gw"),
            "http": {"host": "127.0.0.1", "port": http},
        },
        "mqtt": {"host": "127.0.0.1", "port": broker, "keepalive": 15},
        "database": {"url": db_url},
        "campuses": [
            {"id": campus_id(c), "name": f"School {c}", "account": f"{1000 + c:04d}"}
            for c in range(campuses)
        ],
    }
    parse_config(data, GatewayConfig, "bench")
    path = tmp / "gateway.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def measure(
    client: httpx.Client, token: str, path: str, params: dict[str, Any], n: int
) -> list[float]:
    headers = {"Authorization": f"Bearer {token}"}
    took: list[float] = []
    for i in range(n + 20):
        t0 = time.perf_counter()
        r = client.get(path, params=params, headers=headers)
        dt = time.perf_counter() - t0
        if r.status_code != 200:
            raise RuntimeError(f"{path} {params}: {r.status_code} {r.text[:300]}")
        if i >= 20:
            took.append(dt)
    return took


def next_params(r: httpx.Response, params: dict[str, Any]) -> dict[str, Any]:
    """The cursor of the next page, as the API hands it out (header or body)."""
    cursor = r.headers.get("x-next-cursor")
    if not cursor:
        body = r.json()
        if isinstance(body, dict):
            cursor = body.get("next")
    if not cursor:
        raise RuntimeError("the alarm list gave no cursor for the next page")
    return {**params, "before": cursor}


def ask(
    base: str, proc: subprocess.Popen[bytes], log: Path, some_id: str, args: argparse.Namespace
) -> dict[str, Any]:
    """The client side, one request at a time (a plain thread: the event loop is not used)."""
    deadline = time.monotonic() + 60
    with httpx.Client(base_url=base, timeout=10) as client:
        while True:
            try:
                if client.get("/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"gateway did not start: {log.read_text()[-2000:]}")
            time.sleep(0.2)
        n = args.requests
        first = client.get(
            "/api/alarms",
            params={"limit": 100},
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        )
        page = {"limit": 100}
        for _ in range(4):
            page = next_params(first, page)
            first = client.get(
                "/api/alarms", params=page, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
            )
        queries: dict[str, tuple[str, str, dict[str, Any]]] = {
            "baseline (me)": (ADMIN_TOKEN, "/api/auth/me", {}),
            "newest 100": (ADMIN_TOKEN, "/api/alarms", {"limit": 100}),
            "dispatcher 100": (DISPATCH_TOKEN, "/api/alarms", {"limit": 100}),
            "one campus 100": (
                ADMIN_TOKEN,
                "/api/alarms",
                {"limit": 100, "campus": campus_id(7)},
            ),
            "filtered": (
                ADMIN_TOKEN,
                "/api/alarms",
                {"limit": 100, "kind": "panic", "severity": "critical", "open_only": "true"},
            ),
            "page 5": (ADMIN_TOKEN, "/api/alarms", page),
            "detail": (ADMIN_TOKEN, f"/api/alarms/{some_id}", {}),
        }
        results = {
            name: summary_ms(measure(client, tok, path, params, n))
            for name, (tok, path, params) in queries.items()
        }
    return results


async def run_db(args: argparse.Namespace, db: str, tmp: Path) -> dict[str, Any]:
    work = tmp / db
    work.mkdir()
    pg = None
    broker = Mosquitto(work / "mosquitto")
    broker.start()
    proc: subprocess.Popen[bytes] | None = None
    try:
        if db == "postgresql":
            pg = Postgres(Path(tempfile.mkdtemp(prefix="cg-bench-api-pg-")))
            pg.start()
            url = pg.create_database("api")
        else:
            url = f"sqlite+aiosqlite:///{work}/gw/campusguard.db"
        t0 = time.monotonic()
        some_id = await fill(url, args.alarms, args.campuses)
        filled = time.monotonic() - t0
        port = free_port()
        cfg = gateway_yaml(work, broker.port, url, port, args.campuses)
        log = work / "gateway.log"
        proc = subprocess.Popen(  # noqa: ASYNC220
            [sys.executable, "-m", "campusguard.cli", "gateway", "--config", str(cfg)],
            cwd=_common.ROOT,
            env=env_with_pythonpath(),
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
        )
        results = await asyncio.to_thread(ask, f"http://127.0.0.1:{port}", proc, log, some_id, args)
        return {"db": db, "alarms": args.alarms, "filled_s": round(filled, 1), "results": results}
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
        broker.stop()
        if pg is not None:
            pg.stop()


async def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--alarms", type=int, default=100_000)
    p.add_argument("--campuses", type=int, default=500)
    p.add_argument("--requests", type=int, default=300)
    p.add_argument("--db", default="sqlite,postgresql")
    p.add_argument("--json")
    args = p.parse_args()
    info = machine_info()
    print(machine_line(info))
    out: dict[str, Any] = {"machine": info, "runs": []}
    ok = True
    with tempfile.TemporaryDirectory(prefix="cg-bench-api-") as tmp:
        for db in args.db.split(","):
            run = await run_db(args, db, Path(tmp))
            out["runs"].append(run)
            base = run["results"]["baseline (me)"]["p99"]
            print(f"{db}: {run['alarms']} alarms (filled in {run['filled_s']} s)")
            for name, r in run["results"].items():
                verdict = ""
                if name != "baseline (me)":
                    passed = r["p99"] <= TARGET_MS
                    ok = ok and passed
                    verdict = f"  [p99 <= {TARGET_MS:g} ms: {'PASS' if passed else 'FAIL'}]"
                ratio = r["p99"] / base if base else float("nan")
                print(
                    f"  {name:<16} p50 {r['p50']:7.2f} ms  p99 {r['p99']:7.2f} ms  "
                    f"max {r['max']:7.2f} ms  p99/baseline {ratio:5.2f}{verdict}"
                )
    write_json(args.json, out)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
