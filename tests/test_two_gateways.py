"""Two gateway processes share the campuses' alarm stream (MQTT shared subscription, one
PostgreSQL): every alarm reaches the police exactly once, both gateways do part of the work,
and when one is SIGKILLed mid-stream the other carries on with nothing lost and nothing twice.

Real processes, real Mosquitto, real PostgreSQL, the DC-09 receiver simulator."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import aiomqtt
import pytest
import yaml

from contract import topics
from contract.aio import cancel_and_wait
from contract.config import GatewayConfig
from contract.models import Event, Receipt
from gateway.store.db import make_engine, migrate
from gateway.store.repo import Store
from simulators.police import PoliceReceiver
from tests.gwkit import client, gateway_config, make_event, publish_event
from tests.helpers import Mosquitto, env_with_pythonpath, wait_for

ROOT = Path(__file__).resolve().parent.parent
CAMPUSES = ["campus-a", "campus-b", "campus-c", "campus-d"]
RESEND = 3.0
DELIVERED = re.compile(r"alarm (\S+) \(.*\) delivered to the police")


def start_gateway(cfg_file: Path, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "campusguard.cli", "gateway", "--config", str(cfg_file)],
        cwd=ROOT,
        env=env_with_pythonpath(),
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )


def two_campus_config(tmp: Path, gw_id: str, broker: int, police: int, db_url: str) -> Path:
    cfg = gateway_config(tmp / gw_id, broker, police, db_url=db_url)
    data = cfg.model_dump(mode="json")
    data["gateway"]["id"] = gw_id
    data["campuses"] = [
        {"id": c, "name": c, "account": f"{1000 + i}", "geo": {"lat": 39.7, "lon": 116.3}}
        for i, c in enumerate(CAMPUSES)
    ]
    GatewayConfig.model_validate(data)
    path = tmp / f"{gw_id}.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    return path


def delivered(log: Path) -> list[str]:
    return DELIVERED.findall(log.read_text(errors="replace")) if log.exists() else []


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
async def test_two_gateways_share_and_survive_sigkill(
    mosquitto: Mosquitto, tmp_path: Path, db_url: str
) -> None:
    async with contextlib.AsyncExitStack() as stack:
        police = await stack.enter_async_context(PoliceReceiver(udp=False))
        cfgs = {
            gw: two_campus_config(tmp_path, gw, mosquitto.port, police.tcp_port, db_url)
            for gw in ("gw-a", "gw-b")
        }
        logs = {gw: tmp_path / f"{gw}.log" for gw in cfgs}
        procs = {}
        try:
            # One after the other: both create the same schema in the same database.
            for gw in ("gw-a", "gw-b"):
                procs[gw] = start_gateway(cfgs[gw], logs[gw])
                await wait_for(
                    lambda gw=gw: "(events stream)" in logs[gw].read_text(errors="replace"),
                    timeout=60,
                    what=f"{gw} subscribed",
                )
            total = 0
            zone = 0
            # Like an edge: each alarm stays "unconfirmed" until a gateway's receipt names it
            # and is sent again after RESEND seconds (PROTOCOL.md, end-to-end receipt). This is
            # what recovers alarms the broker had queued for the gateway that died.
            unconfirmed: dict[str, tuple[float, Event]] = {}
            loop = asyncio.get_running_loop()

            async def receipts(c: aiomqtt.Client) -> None:
                async for msg in c.messages:
                    for event_id in Receipt.model_validate_json(bytes(msg.payload)).ids:
                        unconfirmed.pop(event_id, None)

            async def resender(c: aiomqtt.Client) -> None:
                while True:
                    await asyncio.sleep(0.5)
                    for event_id, (sent, ev) in list(unconfirmed.items()):
                        if loop.time() - sent > RESEND:
                            unconfirmed[event_id] = (loop.time(), ev)
                            await publish_event(c, ev)

            async def burst(c: aiomqtt.Client, n: int) -> None:
                nonlocal total, zone
                for i in range(n):
                    zone += 1
                    ev = make_event(
                        campus=CAMPUSES[i % len(CAMPUSES)],
                        edge=f"edge-{i % len(CAMPUSES)}",
                        seq=zone,
                        zone_no=zone,
                    )
                    unconfirmed[ev.id] = (loop.time(), ev)
                    await publish_event(c, ev)
                    total += 1
                    await asyncio.sleep(0.01)

            campus = await stack.enter_async_context(client(mosquitto.port))
            for c in CAMPUSES:
                await campus.subscribe(topics.receipt_topic(c), qos=1)
            helpers = [
                asyncio.create_task(receipts(campus)),
                asyncio.create_task(resender(campus)),
            ]
            stack.push_async_callback(cancel_and_wait, helpers)

            await burst(campus, 40)
            await police.wait_for(lambda: len(police.messages) >= 40, timeout=30)
            # Both took part: the shared subscription spreads the campuses' alarms.
            await wait_for(
                lambda: delivered(logs["gw-a"]) and delivered(logs["gw-b"]),
                timeout=10,
                what="both gateways delivering",
            )
            assert delivered(logs["gw-a"]) and delivered(logs["gw-b"])

            # Mid-stream: gw-a dies while alarms keep coming.
            send = asyncio.create_task(burst(campus, 60))
            await asyncio.sleep(0.2)
            os.kill(procs["gw-a"].pid, signal.SIGKILL)
            procs["gw-a"].wait(10)
            await send
            await police.wait_for(lambda: len(police.messages) >= total, timeout=90)
            await wait_for(lambda: not unconfirmed, timeout=30, what="every receipt")
            await asyncio.sleep(1.0)  # anything twice would show up now

            zones = sorted(m.contact_id.zone for m in police.messages if m.contact_id)
            assert zones == list(range(1, total + 1)), logs["gw-b"].read_text(errors="replace")[
                -4000:
            ]
            # Exactly once: one recorded message per alarm, distinct sequence numbers; a
            # retransmission would count as a duplicate (none expected: ACKs are not dropped).
            assert len(police.messages) == total
            assert len({m.seq for m in police.messages}) == total
            assert police.counters.duplicates == sum(m.duplicates for m in police.messages)
            ids_a, ids_b = set(delivered(logs["gw-a"])), set(delivered(logs["gw-b"]))
            assert not ids_a & ids_b, "an alarm delivered by both gateways"
            assert len(ids_a | ids_b) <= total
            # The survivor did the work after the kill.
            assert len(ids_b) > 20
        finally:
            for p in procs.values():
                stop(p)


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
async def test_first_alarms_of_two_gateways_both_stored(db_url: str) -> None:
    """Two gateways storing their first alarm for a sink at the same moment both create the
    sink's sequence counter: the loser's transaction is rolled back and must be tried again,
    not taken for "another gateway stored this event" (which lost the alarm: bench/district.py
    found it)."""
    engines = [make_engine(db_url), make_engine(db_url)]
    try:
        await migrate(engines[0])
        stores = [Store(e) for e in engines]
        for round_no in range(10):
            sink = f"race-{round_no}"
            events = [make_event(seq=round_no * 2 + i + 1, zone_no=i + 1) for i in range(2)]
            results = await asyncio.gather(
                *(
                    store.ingest_event(ev, [sink], f"gw-{i}")
                    for i, (store, ev) in enumerate(zip(stores, events, strict=True))
                )
            )
            assert [new for new, _ in results] == [True, True], round_no
            seqs = sorted(job.seq or 0 for _, jobs in results for job in jobs)
            assert seqs == [1, 2], round_no
            for ev in events:
                assert await stores[0].event(ev.id) is not None
    finally:
        for e in engines:
            await e.dispose()
