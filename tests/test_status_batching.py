"""Device status is stored in batches (one transaction for what arrives together on the telemetry
connection): the result is exactly that of storing each in turn (newest per device wins, a late
older status changes nothing, outages follow every change), and a status is acknowledged to the
broker only once committed (issue 12, bench/district.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from contract import topics
from contract.config import MqttConfig
from contract.models import DeviceStatus, EdgeState
from gateway.ingest import BatchFailed, Ingest
from gateway.mqtt import GatewayMqtt
from gateway.store.db import make_engine, migrate
from gateway.store.models import DeviceSeen, OutageRow
from gateway.store.repo import Store, aware
from tests.gwkit import client
from tests.helpers import Mosquitto, wait_for

T0 = datetime(2026, 11, 29, 4, 0, tzinfo=UTC)


def st(campus: str, device: str, online: bool, s: float, **kw: Any) -> DeviceStatus:
    return DeviceStatus(
        campus=campus, device=device, online=online, ts=T0 + timedelta(seconds=s), **kw
    )


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[Store]:
    engine = make_engine(db_url)
    await migrate(engine)
    s = Store(engine)
    try:
        yield s
    finally:
        await s.drain()
        await engine.dispose()


async def outages(store: Store, campus: str) -> list[tuple[str, datetime, datetime | None, str]]:
    async with store.session() as s:
        rows = (
            await s.execute(
                select(OutageRow).where(OutageRow.campus == campus).order_by(OutageRow.id)
            )
        ).scalars()
        return [(o.device, aware(o.start), aware(o.end), o.cause) for o in rows]  # type: ignore[misc]


async def seen(store: Store, campus: str) -> list[tuple[str, datetime]]:
    async with store.session() as s:
        rows = (
            await s.execute(
                select(DeviceSeen).where(DeviceSeen.campus == campus).order_by(DeviceSeen.device)
            )
        ).scalars()
        return [(r.device, aware(r.first_seen)) for r in rows]  # type: ignore[misc]


async def state(store: Store, campus: str) -> dict[str, tuple[bool, datetime, float | None]]:
    return {
        r.device: (r.online, aware(r.ts), r.latency_ms)  # type: ignore[misc]
        for r in await store.devices(campus)
    }


async def test_newest_wins_and_a_late_older_status_changes_nothing(store: Store) -> None:
    applied = await store.upsert_device_statuses(
        [
            st("c1", "a", True, 2, latency_ms=2.0),
            st("c1", "a", False, 1, error="older, arrives late"),  # same batch, older
            st("c1", "b", True, 0),
        ]
    )
    assert applied == 2
    assert await state(store, "c1") == {
        "a": (True, T0 + timedelta(seconds=2), 2.0),
        "b": (True, T0, None),
    }
    assert await outages(store, "c1") == []  # the late "offline" never happened
    # A later batch with an older status: ignored, as one by one.
    assert await store.upsert_device_statuses([st("c1", "a", False, 1.5)]) == 0
    assert (await state(store, "c1"))["a"][0] is True
    # The same ts again: the later message wins (as before batching).
    assert await store.upsert_device_statuses([st("c1", "a", True, 2, latency_ms=5.0)]) == 1
    assert (await state(store, "c1"))["a"][2] == 5.0
    # A time in another zone is the same instant (an edge in Beijing): still older.
    late = DeviceStatus(
        campus="c1",
        device="a",
        online=False,
        ts=(T0 + timedelta(seconds=1)).astimezone(timezone(timedelta(hours=8))),
    )
    assert await store.upsert_device_statuses([late]) == 0


async def test_one_batch_equals_one_at_a_time(store: Store) -> None:
    """Every change inside one batch keeps the outage record, exactly as stored one by one
    (and as the store did before batching: the expected outages are spelled out)."""
    seq = [
        st("cx", "x", True, 1),
        st("cx", "y", False, 1, error="no answer"),  # first seen offline: an outage opens
        st("cx", "x", False, 2, error="timeout"),
        st("cx", "x", False, 3, error="still down"),  # no second outage
        st("cx", "y", True, 4),
        st("cx", "x", False, 2.5, error="late"),  # older than what is there: nothing
        st("cx", "x", True, 5),
        st("cx", "x", False, 6, error="down again"),
        st("cx", "z", True, 7),
    ]
    batch = [s.model_copy(update={"campus": "cb"}) for s in seq]
    one_by_one = [s.model_copy(update={"campus": "cs"}) for s in seq]
    assert await store.upsert_device_statuses(batch) == 8
    for s in one_by_one:
        await store.upsert_device_status(s)
    assert await state(store, "cb") == await state(store, "cs")
    assert await outages(store, "cb") == await outages(store, "cs")
    assert await seen(store, "cb") == await seen(store, "cs")
    assert await outages(store, "cb") == [
        ("y", T0 + timedelta(seconds=1), T0 + timedelta(seconds=4), "no answer"),
        ("x", T0 + timedelta(seconds=2), T0 + timedelta(seconds=5), "timeout"),
        ("x", T0 + timedelta(seconds=6), None, "down again"),
    ]
    # Across batches too: the open outage closes when the next batch has x back.
    await store.upsert_device_statuses([st("cb", "x", True, 8), st("cb", "z", True, 8)])
    assert (await outages(store, "cb"))[-1][2] == T0 + timedelta(seconds=8)
    assert [d for d, _ in await seen(store, "cb")] == ["x", "y", "z"]


async def test_edge_state_newest_wins_and_keeps_outages(store: Store) -> None:
    def edge(online: bool, s: float, reason: str = "") -> EdgeState:
        return EdgeState(
            campus="ce", edge="edge-1", online=online, ts=T0 + timedelta(seconds=s), reason=reason
        )

    assert await store.upsert_edge_state(edge(True, 1)) is None  # never seen
    assert await store.upsert_edge_state(edge(False, 3, "lost uplink")) is True
    assert await store.upsert_edge_state(edge(True, 2)) is False  # older: changes nothing
    assert [(e.online, aware(e.ts)) for e in await store.edges()] == [
        (False, T0 + timedelta(seconds=3))
    ]
    assert await store.upsert_edge_state(edge(True, 4)) is False
    assert await outages(store, "ce") == [
        ("edge-1", T0 + timedelta(seconds=3), T0 + timedelta(seconds=4), "lost uplink")
    ]
    assert await seen(store, "ce") == [("edge-1", T0 + timedelta(seconds=1))]


class FailingStore(Store):
    """A real store whose batch write fails ``fail`` times first (the database went away)."""

    def __init__(self, store: Store, fail: int) -> None:
        super().__init__(store.engine)
        self.fail = fail
        self.calls = 0

    async def upsert_device_statuses(self, statuses: Any) -> int:
        self.calls += 1
        if self.calls <= self.fail:
            raise ConnectionError("database unavailable")
        return await super().upsert_device_statuses(statuses)


def ingest_for(store: Store, campuses: set[str]) -> Ingest:
    return Ingest(store, campuses, [], "gw-test", lambda job: None)


def item(s: DeviceStatus) -> tuple[str, bytes]:
    return topics.device_status_topic(s.campus, s.device), s.model_dump_json().encode()


async def test_a_failed_batch_says_how_many_are_committed(store: Store) -> None:
    failing = FailingStore(store, fail=1)
    ingest = ingest_for(failing, {"c1"})
    edge = EdgeState(campus="c1", edge="edge-1", online=True, ts=T0)
    items = [
        (topics.edge_state_topic("c1"), edge.model_dump_json().encode()),  # stored on its own
        item(st("c1", "a", True, 1)),
        item(st("c1", "b", True, 1)),
    ]
    with pytest.raises(BatchFailed) as failed:
        await ingest.handle_batch(items)
    assert failed.value.done == 1  # the edge state is committed; the statuses are not
    assert await state(store, "c1") == {}
    assert ingest.accepted["device"] == 0
    await ingest.handle_batch(items)  # when it comes again
    assert set(await state(store, "c1")) == {"a", "b"}
    assert ingest.accepted["device"] == 2


async def test_status_is_acknowledged_only_once_committed(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """The first batch's write fails: nothing of it was acknowledged, so the broker delivers it
    again after the gateway reconnects, and every device ends with its newest status."""
    engine = make_engine(f"sqlite+aiosqlite:///{tmp_path}/gw.db")
    await migrate(engine)
    real = Store(engine)
    failing = FailingStore(real, fail=1)
    ingest = ingest_for(failing, {"c1"})
    cfg = MqttConfig(port=mosquitto.port)
    try:
        async with GatewayMqtt(cfg, "gw-t", "grp", ingest, failing, stream="telemetry") as gw:
            await asyncio.wait_for(gw.connected.wait(), 10)
            sent = [st("c1", f"dev-{i:02d}", True, 1) for i in range(20)]
            sent += [st("c1", f"dev-{i:02d}", i % 2 == 0, 2) for i in range(0, 20, 3)]
            async with client(mosquitto.port) as edge:
                for s in sent:
                    await edge.publish(*item(s), qos=1)
            await wait_for(
                lambda: failing.calls >= 2 and ingest.accepted["device"] >= len(sent),
                timeout=30,
                what="the failed batch delivered again and stored",
            )
        got = await state(real, "c1")
        newest: dict[str, DeviceStatus] = {}
        for s in sent:
            newest[s.device] = s
        assert {d: (o, ts) for d, (o, ts, _) in got.items()} == {
            d: (s.online, s.ts) for d, s in newest.items()
        }
    finally:
        await real.drain()
        await engine.dispose()


async def test_leaving_hands_new_messages_to_the_other_gateway(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """Shutting down, a gateway unsubscribes its shared subscriptions first: what is published
    afterwards goes to the other gateway of the group, not into the leaver's session."""
    cfg = MqttConfig(port=mosquitto.port)
    engines, stores, ingests = [], [], []
    for name in ("a", "b"):
        engine = make_engine(f"sqlite+aiosqlite:///{tmp_path}/{name}.db")
        await migrate(engine)
        engines.append(engine)
        stores.append(Store(engine))
        ingests.append(ingest_for(stores[-1], {"c1"}))
    try:
        async with (
            GatewayMqtt(cfg, "gw-a", "grp", ingests[0], stores[0], stream="telemetry") as a,
            GatewayMqtt(cfg, "gw-b", "grp", ingests[1], stores[1], stream="telemetry") as b,
        ):
            await asyncio.wait_for(a.connected.wait(), 10)
            await asyncio.wait_for(b.connected.wait(), 10)
            await a.leave(drain_s=2.0)
            sent = [st("c1", f"dev-{i:02d}", True, 1) for i in range(40)]
            async with client(mosquitto.port) as edge:
                for s in sent:
                    await edge.publish(*item(s), qos=1)
            await wait_for(lambda: ingests[1].accepted["device"] >= 40, timeout=20)
            await asyncio.sleep(0.3)
            assert ingests[0].accepted["device"] == 0
            assert len(await state(stores[1], "c1")) == 40
    finally:
        for one, engine in zip(stores, engines, strict=True):
            await one.drain()
            await engine.dispose()
