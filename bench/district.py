"""District load test (issue 12 part 2): simulated campus edges -> real Mosquitto -> one
gateway process, then two (PostgreSQL, shared subscription) -> the DC-09 police receiver.

Everything is real and on this machine: Mosquitto and PostgreSQL (started here on free ports in
a temp dir, as the test set-up does), the gateways (``python -m campusguard.cli gateway``
subprocesses), the police receiver simulator (in this process), and ``--publishers`` publisher
processes (paho) that share the campuses between them. Per campus (default 500 x 30 devices):

- retained edge state once, then retained device status every 30 s per device, spread evenly
  over the 30 s (15,000 devices = 500 status messages/s);
- one telemetry batch every 30 s per campus (the 30 devices + the edge = 31 points), spread;
- alarm bursts: every ``--burst-every`` s, ``--burst`` panic alarms from distinct campuses,
  published back to back.

Measured over the ``--duration`` window of each phase (``1`` gateway, then ``2``):

- alarm relay latency: publish (``time.monotonic`` in the publisher) -> the police receiver
  has the frame (its ``received_mono``; one clock on Linux), p50/p99/max;
- events/s (status + alarms accepted by the gateways) and telemetry points/s (embedded store),
  from each gateway's ``/api/stats``;
- CPU (% of one core) and RSS of each process: gateways, publishers, Mosquitto, PostgreSQL
  (all its backends), this process (police receiver);
- whether the gateways kept up: everything published is accepted within 10 s of the end;
- the broker's ceiling in the same run, as the denominator: ``mosquitto_pub -l`` floods
  status-sized QoS 1 messages while ``mosquitto_sub`` (QoS 1) counts them, with the gateways
  still connected.

Target: one gateway keeps up at <= 50 % of one core with alarm p99 <= 100 ms.

    .venv/bin/python bench/district.py [--campuses 500] [--devices 30] [--duration 120]
        [--burst 50] [--burst-every 10] [--publishers 2] [--phases 1,2] [--json out.json]

Prints a table per phase, a machine line and PASS/MISS (exit 1 on a miss of phase 1).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
import yaml
from _common import machine_info, machine_line, summary_ms, write_json
from sqlalchemy import text

from contract.config import GatewayConfig, parse_config
from gateway.store.db import make_engine
from simulators.police import PoliceReceiver
from tests.helpers import Mosquitto, Postgres, env_with_pythonpath, free_port

ROOT = Path(__file__).resolve().parent.parent
TARGET_CPU_PCT = 50.0
TARGET_P99_MS = 100.0
STATS_TOKEN = secrets.token_urlsafe(24)


def campus_id(c: int) -> str:
    return f"dx-{c:04d}"


def account(c: int) -> str:
    return f"{0x1000 + c:X}"


PUBLISHER = r"""
import json, random, sys, threading, time
import paho.mqtt.client as mqtt
from datetime import UTC, datetime
from ulid import ULID
(port, first, count, devices, duration, burst, burst_every, nproc, index, out) = sys.argv[1:]
port, first, count, devices = int(port), int(first), int(count), int(devices)
duration, burst, burst_every = float(duration), int(burst), float(burst_every)
nproc, index = int(nproc), int(index)
rng = random.Random(index)
campuses = [f"dx-{c:04d}" for c in range(first, first + count)]
kinds = ("di_module", "bollard_controller", "camera")
def now(): return datetime.now(UTC).isoformat()
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-edges-{index}")
c.max_inflight_messages_set(1000)
c.max_queued_messages_set(0)
# As the real edge does: an alarm is kept until the gateway's receipt names it (a broker that
# restarts drops what it had queued for a gateway not yet back), and sent again after 10 s.
pending, lock, subscribed = {}, threading.Lock(), threading.Event()
counts = {"resent": 0}
def on_connect(client, userdata, flags, reason_code, properties):
    client.subscribe("cg/v1/+/down/receipt", qos=1)
def on_subscribe(client, userdata, mid, reason_codes, properties):
    subscribed.set()
def on_message(client, userdata, msg):
    try:
        ids = json.loads(msg.payload)["ids"]
    except (ValueError, KeyError, TypeError):
        return
    with lock:
        for i in ids:
            pending.pop(i, None)
def resend(older_than):
    t = time.monotonic()
    with lock:
        due = [(i, r) for i, r in pending.items() if t - r[2] >= older_than]
        for i, r in due:
            r[2] = t
    for i, r in due:
        c.publish(r[0], r[1], qos=1)
        counts["resent"] += 1
c.on_connect, c.on_subscribe, c.on_message = on_connect, on_subscribe, on_message
c.connect("127.0.0.1", port, keepalive=30)
c.loop_start()
if not subscribed.wait(30):
    sys.exit("no SUBACK for the receipt topic in 30 s")
for cam in campuses:
    c.publish(f"cg/v1/{cam}/up/edge", json.dumps({"v": 1, "campus": cam, "edge": "edge-1",
              "online": True, "ts": now(), "version": "bench"}), qos=1, retain=True)
print("ready", flush=True)
sys.stdin.readline()
# Every (campus, device) has its phase in the 30 s period; every campus its telemetry phase.
status = sorted((rng.uniform(0, 30), cam, f"{kinds[d % 3]}-{d:02d}")
                for cam in campuses for d in range(devices))
tele = sorted((rng.uniform(0, 30), cam) for cam in campuses)
alarms, seqs, zones = [], {}, {}
sent = {"status": 0, "telemetry": 0, "points": 0, "alarms": 0}
t0 = time.monotonic()
next_burst = burst_every / 2 + index * burst_every / max(nproc, 1) / 2
next_resend = 1.0
si = ti = 0
period = 0
while True:
    el = time.monotonic() - t0
    if el >= duration:
        break
    # everything due up to now
    while True:
        phase = status[si][0] + 30 * period if si < len(status) else None
        tphase = tele[ti][0] + 30 * period if ti < len(tele) else None
        if si >= len(status) and ti >= len(tele):
            period += 1; si = ti = 0; continue
        if phase is not None and phase <= el:
            _, cam, dev = status[si]; si += 1
            c.publish(f"cg/v1/{cam}/up/device/{dev}", json.dumps({"v": 1, "campus": cam,
                "device": dev, "online": True, "ts": now(), "last_response": now(),
                "latency_ms": round(rng.uniform(2, 30), 2), "points": {"in1": False}}),
                qos=1, retain=True)
            sent["status"] += 1
        elif tphase is not None and tphase <= el:
            _, cam = tele[ti]; ti += 1
            samples = [{"device": "edge-1", "kind": "edge", "fields": {"cpu_pct": 2.5,
                        "rss_mib": 61.5, "outbox_depth": 0, "uplink_up": True}}]
            for d in range(devices):
                k = kinds[d % 3]
                f = {"online": True}
                if k == "camera":
                    f |= {"events": rng.randrange(3), "subscription_alive": True}
                else:
                    f |= {"requests": 600, "errors": rng.randrange(2),
                          "latency_ms_avg": round(rng.uniform(2, 30), 3)}
                samples.append({"device": f"{k}-{d:02d}", "kind": k, "fields": f})
            c.publish(f"cg/v1/{cam}/up/telemetry", json.dumps({"v": 1, "campus": cam,
                "edge": "edge-1", "ts": now(), "interval_s": 30.0, "samples": samples}), qos=1)
            sent["telemetry"] += 1
            sent["points"] += len(samples)
        else:
            break
    if el >= next_burst and el < duration - 2:
        next_burst += burst_every
        for cam in rng.sample(campuses, min(burst, len(campuses))):
            seqs[cam] = seqs.get(cam, 0) + 1
            zones[cam] = zones.get(cam, 0) % 999 + 1
            ev = {"v": 1, "id": str(ULID()), "campus": cam, "edge": "edge-1",
                  "seq": seqs[cam], "ts": now(), "kind": "panic", "severity": "critical",
                  "device": "di_module-00", "point": "btn-1", "zone": "gate",
                  "zone_no": zones[cam], "location": "south gate",
                  "text": "panic button pressed"}
            payload = json.dumps(ev)
            t = time.monotonic()
            with lock:
                pending[ev["id"]] = [f"cg/v1/{cam}/up/event", payload, t]
            c.publish(f"cg/v1/{cam}/up/event", payload, qos=1)
            alarms.append((cam, zones[cam], t))
            sent["alarms"] += 1
    if el >= next_resend:
        next_resend += 1.0
        resend(10.0)
    time.sleep(0.005)
while time.monotonic() - t0 < duration + 60:
    with lock:
        waiting = len(pending)
    if waiting == 0 and len(c._out_messages) == 0:
        break
    resend(10.0)
    time.sleep(0.05)
with lock:
    unreceipted = len(pending)
sent |= {"resent": counts["resent"], "unreceipted": unreceipted}
json.dump({"sent": sent, "alarms": alarms}, open(out, "w"))
print("done", flush=True)
c.loop_stop()
c.disconnect()
"""


def gateway_yaml(
    tmp: Path,
    gw: str,
    broker: int,
    police: int,
    db_url: str,
    http: int,
    args: argparse.Namespace,
) -> Path:
    data = {
        "gateway": {
            "id": gw,
            "data_dir": str(tmp / gw),
            "share_group": "cg-gateway",
            "http": {"host": "127.0.0.1", "port": http},
        },
        "mqtt": {"host": "127.0.0.1", "port": broker, "keepalive": 15},
        # /api/stats needs a token with health.read.
        "api_tokens": [
            {"user": "bench", "role": "technician", "campuses": ["*"], "token": STATS_TOKEN}
        ],
        "database": {"url": db_url},
        "campuses": [
            {"id": campus_id(c), "name": f"School {c}", "account": account(c)}
            for c in range(args.campuses)
        ],
        "dc09": {
            "primary": {"host": "127.0.0.1", "port": police, "transport": "tcp"},
            "ack_timeout": 1.0,
            "attempts": 3,
            "supervision_interval": 0,
            "connections": args.dc09_connections,
        },
        "relay_concurrency": args.relay_concurrency,
    }
    parse_config(data, GatewayConfig, gw)
    path = tmp / f"{gw}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


class Proc:
    """CPU and RSS of a process (and, with ``tree``, all its children) over a window."""

    def __init__(self, name: str, pid: int, tree: bool = False) -> None:
        self.name, self.tree = name, tree
        self.p = psutil.Process(pid)
        self.cpu0 = 0.0
        self.cpu_last = 0.0
        self.rss_max = 0.0

    def _procs(self) -> list[psutil.Process]:
        return [self.p, *self.p.children(recursive=True)] if self.tree else [self.p]

    def cpu(self) -> float:
        total = 0.0
        for p in self._procs():
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.Error:
                pass
        return total

    def sample_rss(self) -> None:
        # Also the CPU so far: a publisher that has exited has none to read any more.
        self.cpu_last = max(self.cpu_last, self.cpu())
        rss = 0
        for p in self._procs():
            with contextlib.suppress(psutil.Error):
                rss += p.memory_info().rss
        self.rss_max = max(self.rss_max, rss / 2**20)

    def start(self) -> None:
        self.cpu0 = self.cpu_last = self.cpu()


async def alarm_stages(db_url: str) -> dict[str, dict[str, float | int]]:
    """Where an alarm's time went, from the gateway's own records (wall clocks of this one
    machine): published (the publisher's ``ts``) -> stored by a gateway (``received_at``) ->
    the police's ACK stored (``police_at``)."""
    engine = make_engine(db_url)
    try:
        async with engine.connect() as conn:
            rows = (
                await conn.execute(
                    text(
                        "SELECT edge_ts, received_at, police_at FROM alarms "
                        "WHERE police_at IS NOT NULL"
                    )
                )
            ).all()
    finally:
        await engine.dispose()
    return {
        "publish -> stored at the gateway": summary_ms(
            [(r.received_at - r.edge_ts).total_seconds() for r in rows]
        ),
        "stored -> police ACK stored": summary_ms(
            [(r.police_at - r.received_at).total_seconds() for r in rows]
        ),
    }


async def stats(port: int) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=5) as h:
        r = await h.get(
            f"http://127.0.0.1:{port}/api/stats",
            headers={"Authorization": f"Bearer {STATS_TOKEN}"},
        )
        r.raise_for_status()
        return dict(r.json())


def accepted_totals(all_stats: list[dict[str, Any]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for s in all_stats:
        for k, n in s["accepted"].items():
            out[k] = out.get(k, 0) + int(n)
    return out


def broker_ceiling(port: int, n: int) -> float:
    """Messages/s through the broker: mosquitto_pub -l floods, mosquitto_sub counts (QoS 1)."""
    payload = json.dumps(
        {
            "v": 1,
            "campus": "dx-0000",
            "device": "di_module-00",
            "online": True,
            "ts": "2026-11-29T04:00:00+00:00",
            "last_response": "2026-11-29T04:00:00+00:00",
            "latency_ms": 12.5,
            "points": {"in1": False},
        }
    )
    sub = subprocess.Popen(
        ["mosquitto_sub", "-p", str(port), "-q", "1", "-t", "cgbench/ceiling", "-C", str(n)],
        stdout=subprocess.DEVNULL,
    )
    time.sleep(0.5)
    t0 = time.monotonic()
    pub = subprocess.Popen(
        ["mosquitto_pub", "-p", str(port), "-q", "1", "-t", "cgbench/ceiling", "-l"],
        stdin=subprocess.PIPE,
    )
    assert pub.stdin is not None
    pub.stdin.write(((payload + "\n") * n).encode())
    pub.stdin.close()
    try:
        sub.wait(120)
    except subprocess.TimeoutExpired:
        sub.kill()
        pub.kill()
        return float("nan")
    took = time.monotonic() - t0
    pub.wait(30)
    return n / took


async def phase(args: argparse.Namespace, gateways: int, tmp: Path) -> dict[str, Any]:
    work = tmp / f"phase{gateways}"
    work.mkdir()
    broker = Mosquitto(work / "mosquitto")
    # Not under the private temp dir: as root the server runs as 'postgres' (see conftest).
    pg_dir = Path(tempfile.mkdtemp(prefix="cg-district-pg-"))
    pg = Postgres(pg_dir)
    broker.start()
    pg.start()
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        db_url = pg.create_database("district")
        async with PoliceReceiver(udp=False) as police:
            http_ports = {}
            for g in range(gateways):
                gw = f"gw-{g + 1}"
                http_ports[gw] = free_port()
                cfg = gateway_yaml(
                    work,
                    gw,
                    broker.port,
                    police.tcp_port,
                    db_url,
                    http_ports[gw],
                    args,
                )
                log = work / f"{gw}.log"
                cmd_gw = [sys.executable, "-m", "campusguard.cli", "gateway", "--config", str(cfg)]
                cmd = cmd_gw
                if args.py_spy:
                    # Profile the gateway: py-spy starts it (it cannot attach here) and samples
                    # it until told to stop (SIGINT at the end of the window).
                    spy = Path(sys.executable).parent / "py-spy"
                    out_file = Path(args.py_spy) / f"phase{gateways}-{gw}.txt"
                    out_file.parent.mkdir(parents=True, exist_ok=True)
                    cmd = [str(spy), "record", "-r", "100", "-f", "raw", "-o", str(out_file)]
                    cmd += ["--", *cmd_gw]
                procs[gw] = subprocess.Popen(  # noqa: ASYNC220
                    cmd,
                    cwd=ROOT,
                    env=env_with_pythonpath(),
                    stdout=log.open("wb"),
                    stderr=subprocess.STDOUT,
                )
                deadline = time.monotonic() + 90
                while "(telemetry stream)" not in log.read_text(errors="replace"):
                    if procs[gw].poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"{gw} did not start: {log.read_text()[-3000:]}")
                    await asyncio.sleep(0.2)
            script = work / "publisher.py"
            script.write_text(PUBLISHER)
            per = -(-args.campuses // args.publishers)
            pubs: list[subprocess.Popen[str]] = []
            outs = []
            for i in range(args.publishers):
                first = i * per
                count = max(0, min(per, args.campuses - first))
                out = work / f"pub{i}.json"
                outs.append(out)
                pubs.append(
                    subprocess.Popen(  # noqa: ASYNC220
                        [
                            sys.executable,
                            str(script),
                            *map(
                                str,
                                (
                                    broker.port,
                                    first,
                                    count,
                                    args.devices,
                                    args.duration,
                                    -(-args.burst // args.publishers),
                                    args.burst_every,
                                    args.publishers,
                                    i,
                                    out,
                                ),
                            ),
                        ],
                        cwd=ROOT,
                        env=env_with_pythonpath(),
                        stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE,
                        text=True,
                    )
                )
            for p in pubs:
                assert p.stdout is not None
                assert p.stdout.readline().strip() == "ready"
            await asyncio.sleep(2)  # the retained edge states are in
            assert broker.proc is not None
            # Under py-spy the gateway is its child (and the figure includes py-spy's sampling).
            watched = [Proc(gw, p.pid, tree=bool(args.py_spy)) for gw, p in procs.items()]
            watched += [Proc(f"publisher-{i}", p.pid) for i, p in enumerate(pubs)]
            watched += [Proc("mosquitto", broker.proc.pid)]
            assert pg.proc is not None
            watched += [Proc("postgresql", pg.proc.pid, tree=True)]
            watched += [Proc("bench+police", os.getpid())]
            before = [await stats(port) for port in http_ports.values()]
            for w in watched:
                w.start()
            t0 = time.monotonic()
            for p in pubs:
                assert p.stdin is not None
                p.stdin.write("go\n")
                p.stdin.flush()
            while any(p.poll() is None for p in pubs):
                # In a thread: walking PostgreSQL's process tree on this event loop would hold
                # up the police receiver in it, and with it the alarms' arrival times.
                await asyncio.to_thread(lambda: [w.sample_rss() for w in watched])
                await asyncio.sleep(1.0)
            window = time.monotonic() - t0
            cpu = {w.name: max(w.cpu(), w.cpu_last) - w.cpu0 for w in watched}
            at_end = [await stats(port) for port in http_ports.values()]
            results = [json.loads(o.read_text()) for o in outs]
            sent = {
                k: sum(r["sent"][k] for r in results)
                for k in ("status", "telemetry", "points", "alarms")
            }
            alarms = [tuple(a) for r in results for a in r["alarms"]]

            def delta() -> dict[str, int]:
                a, b = accepted_totals(after), accepted_totals(before)
                return {k: a.get(k, 0) - b.get(k, 0) for k in a}

            # Kept up: everything published accepted within 10 s of the end.
            after = at_end
            lag = 0.0
            while True:
                d = delta()
                if (
                    d.get("device", 0) >= sent["status"]
                    and d.get("telemetry", 0) >= sent["telemetry"]
                    and d.get("event", 0) >= sent["alarms"]
                ):
                    break
                lag = time.monotonic() - t0 - window
                if lag > 60:
                    break
                await asyncio.sleep(0.5)
                after = [await stats(port) for port in http_ports.values()]
            kept_up = lag <= 10.0
            with contextlib.suppress(TimeoutError):
                await police.wait_for(lambda: len(police.messages) >= len(alarms), timeout=30)
            by_key = {
                (m.account, m.contact_id.zone): m.received_mono
                for m in police.messages
                if m.contact_id
            }
            latencies = []
            missing = 0
            bursts: dict[int, list[float]] = {}
            for cam, zone, t in alarms:
                got = by_key.get((account(int(cam.split("-")[1])), zone))
                if got is None:
                    missing += 1
                else:
                    latencies.append(got - t)
                    # Which burst: the publishers stamp each alarm; bursts are burst_every apart.
                    bursts.setdefault(int((t - t0) // args.burst_every), []).append(got - t)
            stages = await alarm_stages(db_url)
            per_gw = {
                gw: {
                    "accepted": {
                        k: int(a["accepted"].get(k, 0)) - int(b["accepted"].get(k, 0))
                        for k in a["accepted"]
                    },
                    "delivered": sum(r["delivered"] for r in a["relay"].values())
                    - sum(r["delivered"] for r in b["relay"].values()),
                }
                for gw, a, b in zip(procs, after, before, strict=True)
            }
            if args.keep_logs:
                keep = Path(args.keep_logs)
                keep.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240
                for gw in procs:
                    shutil.copy(work / f"{gw}.log", keep / f"phase{gateways}-{gw}.log")
            ceiling = broker_ceiling(broker.port, args.ceiling_messages)
            d = delta()
            # Throughput inside the window (what was accepted by its end), not after the drain.
            in_window = {
                k: n - accepted_totals(before).get(k, 0) for k, n in accepted_totals(at_end).items()
            }
            events = in_window.get("device", 0) + in_window.get("event", 0)
            offered_msgs = sent["status"] + sent["telemetry"] + sent["alarms"]
            lat = summary_ms(latencies) if latencies else {}
            out: dict[str, Any] = {
                "gateways": gateways,
                "window_s": round(window, 1),
                "sent": sent,
                "accepted": d,
                "events_per_s": round(events / window, 1),
                "telemetry_points_per_s": round(
                    in_window.get("telemetry", 0) * (args.devices + 1) / window, 1
                ),
                "offered_msgs_per_s": round(offered_msgs / window, 1),
                "broker_ceiling_msgs_per_s": round(ceiling, 1),
                "load_share_of_ceiling": round(offered_msgs / window / ceiling, 3),
                "alarm_latency_ms": lat,
                "alarm_stages_ms": stages,
                "alarm_max_ms_by_burst": [
                    round(1000 * max(v), 1) for _, v in sorted(bursts.items())
                ],
                "alarms_missing": missing,
                "police_duplicates": police.counters.duplicates,
                "kept_up": kept_up,
                "drain_lag_s": round(lag, 1),
                "cpu_pct_one_core": {k: round(100 * v / window, 1) for k, v in cpu.items()},
                "rss_mib_max": {w.name: round(w.rss_max, 1) for w in watched},
                "per_gateway": per_gw,
            }
            return out
    finally:
        if args.py_spy:
            for p in procs.values():
                p.send_signal(signal.SIGINT)  # py-spy writes its profile (and stops the gateway)
            for p in procs.values():
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(30)
        for p in procs.values():
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        broker.stop()
        pg.stop()
        shutil.rmtree(pg_dir, ignore_errors=True)


def verdict(r: dict[str, Any]) -> tuple[bool, str]:
    gw_cpu = max(v for k, v in r["cpu_pct_one_core"].items() if k.startswith("gw-"))
    p99 = float(r["alarm_latency_ms"].get("p99", float("inf")))
    ok = (
        r["kept_up"]
        and gw_cpu <= TARGET_CPU_PCT
        and p99 <= TARGET_P99_MS
        and r["alarms_missing"] == 0
    )
    return ok, (
        f"kept up {r['kept_up']}, busiest gateway {gw_cpu:.1f} % of a core "
        f"(target <= {TARGET_CPU_PCT:.0f}), alarm p99 {p99:.1f} ms "
        f"(target <= {TARGET_P99_MS:.0f}), missing {r['alarms_missing']}"
    )


def print_phase(r: dict[str, Any]) -> None:
    lat = r["alarm_latency_ms"]
    print(f"--- {r['gateways']} gateway(s), window {r['window_s']} s ---")
    print(
        f"offered {r['offered_msgs_per_s']} msg/s (status {r['sent']['status']}, telemetry "
        f"batches {r['sent']['telemetry']} = {r['sent']['points']} points, alarms "
        f"{r['sent']['alarms']}); broker ceiling {r['broker_ceiling_msgs_per_s']} msg/s "
        f"(load = {100 * r['load_share_of_ceiling']:.1f} % of it)"
    )
    print(
        f"events/s {r['events_per_s']}, telemetry points/s {r['telemetry_points_per_s']}, "
        f"kept up {r['kept_up']} (drain lag {r['drain_lag_s']} s)"
    )
    if lat:
        print(
            f"alarm publish -> police: n={lat['n']} p50 {lat['p50']:.1f} ms, "
            f"p99 {lat['p99']:.1f} ms, max {lat['max']:.1f} ms; missing "
            f"{r['alarms_missing']}, receiver duplicates {r['police_duplicates']}"
        )
    if r.get("alarm_max_ms_by_burst"):
        print(f"  slowest alarm of each burst (ms): {r['alarm_max_ms_by_burst']}")
    for stage, st in r.get("alarm_stages_ms", {}).items():
        if st.get("n"):
            print(f"  {stage:<34} p50 {st['p50']:7.1f} ms  p99 {st['p99']:7.1f} ms")
    for name, pct in r["cpu_pct_one_core"].items():
        print(
            f"  {name:<14} CPU {pct:6.1f} % of one core   RSS max {r['rss_mib_max'][name]:7.1f} MiB"
        )
    for gw, g in r["per_gateway"].items():
        print(f"  {gw}: accepted {g['accepted']}, alarms delivered {g['delivered']}")


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--campuses", type=int, default=500)
    ap.add_argument("--devices", type=int, default=30)
    ap.add_argument("--duration", type=float, default=120.0)
    ap.add_argument("--burst", type=int, default=50)
    ap.add_argument("--burst-every", type=float, default=10.0)
    ap.add_argument("--publishers", type=int, default=2)
    ap.add_argument("--phases", default="1,2", help="gateway counts to run, in order")
    ap.add_argument("--ceiling-messages", type=int, default=50_000)
    ap.add_argument(
        "--dc09-connections", type=int, default=4, help="the gateways' dc09.connections"
    )
    ap.add_argument(
        "--relay-concurrency", type=int, default=8, help="the gateways' relay_concurrency"
    )
    ap.add_argument("--json")
    ap.add_argument("--keep-logs", help="copy the gateways' logs here")
    ap.add_argument(
        "--py-spy",
        metavar="DIR",
        help="run each gateway under py-spy (`pip install py-spy`): raw profiles of the "
        "window into DIR; the gateways' CPU figures then include py-spy's sampling",
    )
    args = ap.parse_args()
    info = machine_info()
    results = []
    with tempfile.TemporaryDirectory(prefix="cg-district-") as tmp:
        for n in [int(x) for x in args.phases.split(",")]:
            r = await phase(args, n, Path(tmp))
            print_phase(r)
            ok, why = verdict(r)
            r["pass"] = ok
            print(f"{'PASS' if ok else 'MISS'} ({n} gateway(s)): {why}")
            results.append(r)
    print(machine_line(info))
    write_json(
        args.json,
        {"bench": "district", "args": vars(args), "machine": info, "phases": results},
    )
    return 0 if results and results[0]["pass"] else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
