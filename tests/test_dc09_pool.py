"""Several DC-09 connections per path: alarms of different campuses in parallel, each campus' in
order, every sequence number once, a dead pooled connection replaced; and the relay's store
operations without the pool's pre-ping (a connection killed under it is replaced)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import pytest
from sqlalchemy import select, text

from contract.config import CampusAccount, Dc09Config, Dc09Path
from contract.models import Event
from drivers.dc09.codec import contact_id_data
from drivers.dc09.sender import DC09Sender, PathConfig, SenderConfig
from gateway.relay.dc09 import Dc09Sink
from gateway.relay.worker import RelayWorker
from gateway.store.db import make_engine, migrate
from gateway.store.models import AlarmStep, RelayJob
from gateway.store.repo import JobEnd, Store
from simulators.police import PoliceReceiver
from tests.gwkit import make_event
from tests.helpers import free_port, wait_for

FAST = {"ack_timeout": 2.0, "connect_timeout": 2.0, "supervision_interval": 0}
DELAY = 0.2
"""What the delaying proxy adds to every reply: an exchange takes at least this long."""


@asynccontextmanager
async def slow_replies(target_port: int, delay: float = DELAY) -> AsyncIterator[int]:
    """A TCP proxy to ``target_port`` that holds every reply back ``delay`` seconds: a distant
    receiving centre. Yields the proxy's port."""
    tasks: set[asyncio.Task[None]] = set()

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, hold: float) -> None:
        try:
            while chunk := await reader.read(4096):
                if hold:
                    await asyncio.sleep(hold)
                writer.write(chunk)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    async def handle(c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        s_reader, s_writer = await asyncio.open_connection("127.0.0.1", target_port)
        for t in (
            asyncio.create_task(pipe(c_reader, s_writer, 0)),
            asyncio.create_task(pipe(s_reader, c_writer, delay)),
        ):
            tasks.add(t)
            t.add_done_callback(tasks.discard)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for t in list(tasks):
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def sender_config(port: int, **kw: Any) -> SenderConfig:
    values: dict[str, Any] = {
        "receiver": "1",
        "prefix": "1",
        "primary": PathConfig(host="127.0.0.1", port=port),
        **FAST,
    }
    values.update(kw)
    return SenderConfig(**values)


def account(i: int) -> str:
    return f"{0x1000 + i:X}"


async def test_pool_sends_to_distinct_accounts_in_parallel() -> None:
    async with AsyncExitStack() as stack:
        rx = await stack.enter_async_context(PoliceReceiver(udp=False))
        assert rx.tcp_port is not None
        port = await stack.enter_async_context(slow_replies(rx.tcp_port))
        tx = await stack.enter_async_context(DC09Sender(sender_config(port, connections=4)))
        started = time.monotonic()
        results = await asyncio.gather(
            *(
                tx.send(account(i), contact_id_data(account(i), 1, 120, 1, 15), seq=100 + i)
                for i in range(8)
            )
        )
        took = time.monotonic() - started
    assert all(r.accepted and r.attempts == 1 for r in results)
    # 8 exchanges of >= 0.2 s over 4 connections: two rounds, not eight one after the other.
    assert took < 6 * DELAY, f"{took:.2f} s: the connections did not work in parallel"
    assert sorted(m.seq for m in rx.alarms) == [100 + i for i in range(8)]
    assert sorted(m.account for m in rx.alarms) == sorted(account(i) for i in range(8))
    assert rx.counters.duplicates == 0
    assert len({m.peer for m in rx.alarms}) == 4  # all four connections, and no more


async def test_one_connection_sends_one_frame_at_a_time() -> None:
    async with AsyncExitStack() as stack:
        rx = await stack.enter_async_context(PoliceReceiver(udp=False))
        assert rx.tcp_port is not None
        tx = await stack.enter_async_context(DC09Sender(sender_config(rx.tcp_port)))
        results = await asyncio.gather(
            *(tx.send(account(i), contact_id_data(account(i), 1, 120, 1, 15)) for i in range(5))
        )
    assert all(r.accepted for r in results)
    assert len({r.seq for r in results}) == 5  # the sender's own counter: each number once
    assert len({m.peer for m in rx.alarms}) == 1


async def test_light_load_keeps_to_one_connection() -> None:
    """The most recently used connection is taken first: one after the other, one socket."""
    async with AsyncExitStack() as stack:
        rx = await stack.enter_async_context(PoliceReceiver(udp=False))
        assert rx.tcp_port is not None
        tx = await stack.enter_async_context(DC09Sender(sender_config(rx.tcp_port, connections=4)))
        for i in range(4):
            assert (await tx.send(account(i), contact_id_data(account(i), 1, 120, 1, 15))).accepted
    assert len({m.peer for m in rx.alarms}) == 1


async def test_dead_pooled_connections_are_replaced() -> None:
    port = free_port()
    async with AsyncExitStack() as stack:
        rx = await stack.enter_async_context(PoliceReceiver(port=port, udp=False))
        health: list[tuple[str, bool, str]] = []
        tx = await stack.enter_async_context(
            DC09Sender(
                sender_config(port, connections=3),
                on_health=lambda *a: health.append(a),
            )
        )

        async def burst(first: int) -> list[Any]:
            return list(
                await asyncio.gather(
                    *(
                        tx.send(account(i), contact_id_data(account(i), 1, 120, 1, 15))
                        for i in range(first, first + 3)
                    )
                )
            )

        assert all(r.accepted for r in await burst(0))
        peers_before = {m.peer for m in rx.alarms}
        assert len(peers_before) == 3
        # The receiver restarts: every pooled connection is closed under the sender.
        await rx.stop()
        await rx.start()
        await asyncio.sleep(0.1)  # the FINs reach the sender's sockets
        again = await burst(3)
        assert all(r.accepted and r.attempts == 1 for r in again), again
    assert health == []  # never a path fault: the dead connections were simply replaced
    assert len(rx.alarms) == 6
    assert len({(m.account, m.seq) for m in rx.alarms}) == 6
    assert rx.counters.duplicates == 0
    assert not {m.peer for m in rx.alarms[3:]} & peers_before


async def test_connection_killed_mid_exchange_is_retried_on_a_fresh_one() -> None:
    """The receiver drops a connection without answering: the frame goes again (same seq) on a
    new connection and is recorded once."""
    async with AsyncExitStack() as stack:
        rx = await stack.enter_async_context(PoliceReceiver(udp=False))
        assert rx.tcp_port is not None
        tx = await stack.enter_async_context(DC09Sender(sender_config(rx.tcp_port, connections=2)))
        assert (await tx.send("1001", contact_id_data("1001", 1, 120, 1, 15))).accepted
        original = rx.process
        dropped: list[bytes] = []

        def drop_first(raw: bytes, transport: Any = "tcp", peer: str = "") -> bytes | None:
            if not dropped:
                dropped.append(raw)
                for writer in list(rx._conns):  # the receiver hangs up on this frame
                    writer.close()
                return None
            return original(raw, transport, peer)

        rx.process = drop_first  # type: ignore[method-assign]
        result = await tx.send("1002", contact_id_data("1002", 1, 120, 1, 15))
    assert result.accepted and result.attempts == 2
    assert [m.account for m in rx.alarms] == ["1001", "1002"]
    assert rx.counters.duplicates == 0


# --- the relay: many campuses through the pool, from the store ------------------------------

CAMPUSES = [f"pool-{i:02d}" for i in range(8)]


async def test_relay_sends_campuses_in_parallel_each_in_order(db_url: str) -> None:
    engine = make_engine(db_url)
    await migrate(engine)
    store = Store(engine)
    campuses = {c: CampusAccount(id=c, account=account(i)) for i, c in enumerate(CAMPUSES)}
    try:
        async with AsyncExitStack() as stack:
            rx = await stack.enter_async_context(PoliceReceiver(udp=False))
            assert rx.tcp_port is not None
            port = await stack.enter_async_context(slow_replies(rx.tcp_port))
            cfg = Dc09Config(primary=Dc09Path(host="127.0.0.1", port=port), connections=4)
            tx = await stack.enter_async_context(
                DC09Sender(sender_config(port, connections=cfg.connections))
            )
            worker = await stack.enter_async_context(
                RelayWorker(store, Dc09Sink(cfg, campuses, tx), "gw-pool", concurrency=8)
            )
            got: list[tuple[str, Any]] = []
            worker.on_police_received = lambda ev, path, received: got.append((ev.id, received))
            # One alarm from each of 8 campuses, and two more from the first campus.
            events: list[Event] = [make_event(campus=c, zone_no=1) for c in CAMPUSES]
            events += [make_event(campus=CAMPUSES[0], zone_no=z) for z in (2, 3)]
            started = time.monotonic()
            for ev in events:
                new, jobs = await store.ingest_event(ev, ["dc09"], "gw-pool")
                assert new
                for job in jobs:
                    worker.submit(job)
            await rx.wait_for(lambda: len(rx.alarms) >= len(events), timeout=20)
            took = time.monotonic() - started
            await wait_for(lambda: worker.delivered == len(events), what="all finished")
        # 10 exchanges of >= 0.2 s: the first campus' three one after the other (0.6 s), the
        # others beside them; one at a time it would be 2 s.
        assert took < 8 * DELAY, f"{took:.2f} s"
        assert len(rx.alarms) == len(events) and rx.counters.duplicates == 0
        seqs = [m.seq for m in rx.alarms]
        assert len(set(seqs)) == len(seqs)
        first = [m for m in rx.alarms if m.account == account(0)]
        assert [m.contact_id.zone for m in first if m.contact_id] == [1, 2, 3]  # in order
        assert [m.seq for m in first] == sorted(m.seq for m in first)
        assert {i for i, _ in got} == {ev.id for ev in events}
        assert all(received is not None for _, received in got)
        async with store.session() as s:
            rows = (await s.execute(select(RelayJob))).scalars().all()
            assert {j.state for j in rows} == {"done"} and len(rows) == len(events)
            assert sorted(j.seq or 0 for j in rows) == sorted(seqs)
        for ev in events:
            found = await store.alarm(ev.id)
            assert found is not None
            alarm, steps = found
            assert alarm.state == "police_received" and alarm.police_path == "primary"
            assert [st.state for st in steps] == ["received", "police_received"]
    finally:
        await store.drain()
        await engine.dispose()


async def test_store_survives_its_connections_being_killed(
    postgres_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """No pre-ping: PostgreSQL drops every connection of the gateway (a restart, a proxy);
    the next alarm is stored, relayed and finished all the same, on fresh connections."""
    url = postgres_server.create_database("cg_pool_killed")
    engine = make_engine(url)
    await migrate(engine)
    store = Store(engine)
    try:
        assert not engine.pool._pre_ping  # type: ignore[attr-defined]
        first = make_event(campus="pool-00")
        assert (await store.ingest_event(first, ["dc09"], "gw"))[0]
        # Every pooled connection is idle now: kill them all from outside the pool.
        killer = make_engine(url)
        try:
            async with killer.connect() as c:
                killed = (
                    await c.execute(
                        text(
                            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                        )
                    )
                ).scalar_one()
        finally:
            await killer.dispose()
        assert killed >= 1
        await asyncio.sleep(0.2)
        ev = make_event(campus="pool-01")
        new, jobs = await store.ingest_event(ev, ["dc09"], "gw")
        assert new and len(jobs) == 1
        assert "database connection lost" in caplog.text  # it did meet a dead connection
        received = await store.finish_job(
            jobs[0], "done", attempts=1, alarm_state="police_received", path="primary"
        )
        assert received is not None
        found = await store.alarm(ev.id)
        assert found is not None and found[0].state == "police_received"
        async with store.session() as s:
            steps = (
                await s.execute(select(AlarmStep.state).where(AlarmStep.alarm_id == ev.id))
            ).all()
            assert [st for (st,) in steps] == ["received", "police_received"]
    finally:
        await store.drain()
        await engine.dispose()


async def test_finish_jobs_in_one_transaction(db_url: str) -> None:
    """Several jobs' ends at once: each job and alarm as if ended one by one; a job whose event
    has no alarm record (a restore) just ends; the sequence numbers stay unique per sink."""
    engine = make_engine(db_url)
    await migrate(engine)
    store = Store(engine)
    changed: list[tuple[str, str]] = []
    store.alarm_listeners.append(lambda a, st: changed.append((a, st)))
    try:
        delivered, rejected = make_event(campus="pool-00"), make_event(campus="pool-01")
        restore = make_event(campus="pool-02", restore=True)
        jobs = []
        for ev in (delivered, rejected, restore):
            new, claimed = await store.ingest_event(ev, ["dc09", "webhook"], "gw")
            assert new and len(claimed) == 2
            jobs += claimed
        assert len({(j.sink, j.seq) for j in jobs}) == 6
        assert sorted(j.seq or 0 for j in jobs if j.sink == "dc09") == [1, 2, 3]
        by = {(j.alarm_id, j.sink): j for j in jobs}
        received = await store.finish_jobs(
            [
                JobEnd(by[delivered.id, "dc09"], "done", 1, None, "police_received", "primary"),
                JobEnd(by[rejected.id, "dc09"], "rejected", 2, "DUH", "police_rejected", None),
                JobEnd(by[restore.id, "dc09"], "done", 1, None, "police_received", "primary"),
            ]
        )
        assert received[0] is not None and received[1] is not None and received[2] is None
        async with store.session() as s:
            rows = {(j.alarm_id, j.sink): j for j in (await s.execute(select(RelayJob))).scalars()}
        assert rows[delivered.id, "dc09"].state == "done"
        assert rows[rejected.id, "dc09"].state == "rejected"
        assert rows[rejected.id, "dc09"].last_error == "DUH"
        assert rows[rejected.id, "dc09"].attempts == 2
        assert rows[restore.id, "dc09"].state == "done"
        assert all(rows[a, "webhook"].state == "pending" for a in (delivered.id, rejected.id))
        found = await store.alarm(delivered.id)
        assert found is not None
        assert (found[0].state, found[0].police_path) == ("police_received", "primary")
        assert found[0].police_at is not None
        assert [st.state for st in found[1]] == ["received", "police_received"]
        found = await store.alarm(rejected.id)
        assert found is not None and found[0].state == "police_rejected"
        assert [st.state for st in found[1]] == ["received", "police_rejected"]
        assert await store.alarm(restore.id) is None
        assert (delivered.id, "police_received") in changed
        assert (rejected.id, "police_rejected") in changed
        assert (restore.id, "police_received") not in changed  # it has no alarm record
        with pytest.raises(ValueError, match="moves an alarm to"):
            JobEnd(jobs[0], "done", 1, alarm_state="closed")
    finally:
        await store.drain()
        await engine.dispose()
