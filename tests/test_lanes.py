"""Campus lanes (gateway/lanes.py): a campus that falls behind goes to the inbox and does not
hold the other campuses up; its messages are still handled, in order, once each; what was
acknowledged is on disk (a gateway killed right after comes back to it); a stopped gateway's
kept messages are taken over; a message that could not be stored is not acknowledged.

A real Ingest on a real store (SQLite and PostgreSQL); the MQTT side (real Mosquitto, the
gateway as a process) is ``tests/test_faults.py::test_flood_from_one_campus_...``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import pytest
from sqlalchemy import func, select

from contract import topics
from contract.aio import cancel_and_wait
from gateway.ingest import Ingest
from gateway.lanes import CampusLanes
from gateway.store.models import EventRow, InboxRow
from gateway.store.repo import Store
from tests.faults import flood_payload
from tests.gwkit import store_at
from tests.helpers import wait_for

A, B = "flood-campus", "quiet-campus"


class Recorder:
    """What the lanes report: events stored (in order) and messages acknowledged."""

    def __init__(self) -> None:
        self.stored: list[str] = []
        self.kept: list[str] = []
        self.acked: list[str] = []
        self.seq: dict[str, tuple[str, int]] = {}

    def message(self, campus: str, seq: int, kind: str = "camera_motion") -> tuple[str, bytes]:
        payload = flood_payload(campus, seq, kind)
        self.seq[json.loads(payload)["id"]] = (campus, seq)
        return topics.event_topic(campus), payload

    def on_stored(self, stored: tuple[str, str]) -> None:
        self.stored.append(stored[1])

    def on_kept(self, kept: tuple[str, str]) -> None:
        self.kept.append(kept[1])

    def ack(self, payload: bytes) -> Callable[[], None]:
        event_id = json.loads(payload)["id"]
        return lambda: self.acked.append(event_id)

    def order(self, campus: str) -> list[int]:
        return [self.seq[i][1] for i in self.stored if self.seq[i][0] == campus]


def lanes_for(store: Store, rec: Recorder, owner: str = "gw-1", **kw: float) -> CampusLanes:
    ingest = Ingest(store, {A, B}, [], owner, lambda _job: None)
    return CampusLanes(
        ingest,
        store,
        owner,
        rec.on_stored,
        on_kept=rec.on_kept,
        lane_depth=4,
        **kw,  # type: ignore[arg-type]
    )


async def count(store: Store, model: type[EventRow] | type[InboxRow]) -> int:
    async with store.session() as s:
        return int((await s.execute(select(func.count()).select_from(model))).scalar_one())


async def test_a_flooding_campus_spills_and_the_others_go_first(db_url: str) -> None:
    rec = Recorder()
    async with store_at(db_url) as store:
        lanes = lanes_for(store, rec)
        keeper = asyncio.create_task(lanes.run())
        conn = asyncio.create_task(lanes.connection())
        try:
            await lanes.ready.wait()
            for seq in range(1, 301):
                topic, payload = rec.message(A, seq)
                await lanes.submit(topic, payload, rec.ack(payload))
            topic, payload = rec.message(B, 1, "panic")
            await lanes.submit(topic, payload, rec.ack(payload))
            b_id = json.loads(payload)["id"]
            await wait_for(lambda: b_id in rec.stored, 10, "campus B's panic stored")
            # B's panic waited for at most a few of A's events, not for A's 300.
            assert rec.stored.index(b_id) < 12, rec.stored.index(b_id)
            # A's flood beyond its lane went to the inbox (written after B's panic, or before).
            await wait_for(lambda: lanes.stats.spilled_messages > 250, 10, "A's flood kept")
            # Each kept event is named in A's receipts once it is in the inbox (so that A's edge
            # does not send its backlog again while it is drained), B's panic is not kept.
            assert len(rec.kept) == lanes.stats.spilled_messages
            assert len(set(rec.kept)) == len(rec.kept) and b_id not in rec.kept
            assert {rec.seq[i][0] for i in rec.kept} == {A}
            await wait_for(lambda: len(rec.stored) == 301, 60, "every event stored")
            assert rec.order(A) == list(range(1, 301))  # A in its order, once each
            assert sorted(rec.acked) == sorted(rec.seq)  # every message acknowledged once
            await wait_for(lambda: lanes.spooled == 0, 10, "the inbox emptied")
            assert await count(store, InboxRow) == 0
            assert await count(store, EventRow) == 301
            # A is back on the direct way once it has caught up.
            topic, payload = rec.message(A, 301)
            await lanes.submit(topic, payload, rec.ack(payload))
            await wait_for(lambda: len(rec.stored) == 302, 10, "A's next event")
            assert lanes.stats.spilled_messages == 296  # the next event was not kept
        finally:
            await cancel_and_wait([conn, keeper])


async def test_what_was_acknowledged_survives_a_kill(db_url: str) -> None:
    """Every message acknowledged is on disk: killed right after the acknowledgements (the
    inbox still holding most of the flood), a gateway that comes back handles all of it."""
    rec = Recorder()
    async with store_at(db_url) as store:
        lanes = lanes_for(store, rec)
        keeper = asyncio.create_task(lanes.run())
        conn = asyncio.create_task(lanes.connection())
        await lanes.ready.wait()
        for seq in range(1, 201):
            topic, payload = rec.message(A, seq)
            await lanes.submit(topic, payload, rec.ack(payload))
        await wait_for(lambda: len(rec.acked) == 200, 20, "every message acknowledged")
        await cancel_and_wait([conn, keeper])  # the gateway dies here
        kept = await count(store, InboxRow)
        assert kept > 0 and len(rec.stored) + kept >= 200

        again = lanes_for(store, rec)  # the same gateway, restarted
        keeper = asyncio.create_task(again.run())
        try:
            await wait_for(lambda: set(rec.stored) >= set(rec.seq), 60, "all handled")
            assert await count(store, EventRow) == 200
            await wait_for(lambda: again.spooled == 0, 10, "the inbox emptied")
            assert await count(store, InboxRow) == 0
            # Order per campus holds across the restart (a repeat is stored once).
            firsts = list(dict.fromkeys(rec.order(A)))
            assert firsts == list(range(1, 201))
        finally:
            await cancel_and_wait([keeper])


async def test_a_stopped_gateways_kept_messages_are_taken_over(db_url: str) -> None:
    rec = Recorder()
    async with store_at(db_url) as store:
        kept = [(A, *rec.message(A, seq)) for seq in range(1, 51)]
        await store.spool(kept, "gw-dead", lease=0.2)  # its lease runs out and is not renewed
        lanes = lanes_for(store, rec, owner="gw-2", lease=0.3)
        keeper = asyncio.create_task(lanes.run())
        try:
            await wait_for(lambda: len(rec.stored) == 50, 30, "taken over and handled")
            assert rec.order(A) == list(range(1, 51))
            assert lanes.stats.taken_over == 50
            await wait_for(lambda: lanes.spooled == 0, 10, "the inbox emptied")
            assert await count(store, InboxRow) == 0
        finally:
            await cancel_and_wait([keeper])


class FailingIngest(Ingest):
    """The database failing for one message (simulated: a real database cannot be made to
    fail one chosen statement)."""

    fail_id = ""

    async def handle(self, topic: str, payload: bytes) -> tuple[str, str] | None:
        if json.loads(payload)["id"] == self.fail_id:
            raise RuntimeError("database went away")
        return await super().handle(topic, payload)


async def test_a_message_that_could_not_be_stored_is_not_acknowledged(tmp_path: object) -> None:
    rec = Recorder()
    async with store_at(f"sqlite+aiosqlite:///{tmp_path}/gw.db") as store:
        ingest = FailingIngest(store, {A, B}, [], "gw-1", lambda _job: None)
        lanes = CampusLanes(ingest, store, "gw-1", rec.on_stored, lane_depth=100)
        keeper = asyncio.create_task(lanes.run())
        await lanes.ready.wait()
        conn = asyncio.create_task(lanes.connection())
        try:
            a1, a2 = rec.message(A, 1), rec.message(A, 2)
            ingest.fail_id = json.loads(a1[1])["id"]
            b1 = rec.message(B, 1, "panic")
            await lanes.submit(b1[0], b1[1], rec.ack(b1[1]))
            await wait_for(lambda: len(rec.acked) == 1, 10, "B's panic acknowledged")
            for topic, payload in (a1, a2):
                await lanes.submit(topic, payload, rec.ack(payload))
            with pytest.raises(RuntimeError, match="database went away"):
                await asyncio.wait_for(conn, 10)
            # A's first failed; its second waits for it (order), so neither is acknowledged
            # and both come again with the next connection.
            assert rec.acked == [json.loads(b1[1])["id"]]
            assert json.loads(a2[1])["id"] not in rec.stored
            assert lanes.in_hand == 0
        finally:
            await cancel_and_wait([conn, keeper])


class GatedIngest(Ingest):
    """Holds one chosen message in ``handle`` until released (to end a connection while it is
    being stored)."""

    hold_id = ""
    gate: asyncio.Event

    async def handle(self, topic: str, payload: bytes) -> tuple[str, str] | None:
        if json.loads(payload)["id"] == self.hold_id:
            await self.gate.wait()
        return await super().handle(topic, payload)


async def test_a_connection_lost_mid_message_leaves_the_campus_working(tmp_path: object) -> None:
    """The broker connection ends while a campus' message is being stored: it and the ones
    behind it are not acknowledged; on the next connection they come again and are stored, in
    order (a lane broken by the old connection must not refuse them)."""
    rec = Recorder()
    async with store_at(f"sqlite+aiosqlite:///{tmp_path}/gw.db") as store:
        ingest = GatedIngest(store, {A, B}, [], "gw-1", lambda _job: None)
        ingest.gate = asyncio.Event()
        lanes = CampusLanes(ingest, store, "gw-1", rec.on_stored, lane_depth=100)
        keeper = asyncio.create_task(lanes.run())
        await lanes.ready.wait()
        msgs = [rec.message(A, seq) for seq in (1, 2, 3)]
        ingest.hold_id = json.loads(msgs[1][1])["id"]
        conn = asyncio.create_task(lanes.connection())
        try:
            for topic, payload in msgs:
                await lanes.submit(topic, payload, rec.ack(payload))
            await wait_for(lambda: len(rec.acked) == 1, 10, "the first acknowledged")
            await cancel_and_wait([conn])  # the connection is lost
            assert len(rec.acked) == 1 and lanes.in_hand == 0
            ingest.gate.set()
            conn = asyncio.create_task(lanes.connection())  # the broker sends them again
            for topic, payload in msgs[1:]:
                await lanes.submit(topic, payload, rec.ack(payload))
            await wait_for(lambda: len(rec.acked) == 3, 10, "the rest acknowledged")
            assert rec.order(A) == [1, 2, 3]
        finally:
            await cancel_and_wait([conn, keeper])
