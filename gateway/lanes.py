"""Campus lanes: each campus' messages handled in the order received, campuses side by side,
and a campus that falls behind kept in the inbox table so that it cannot hold the others up.

Every campus' events reach a gateway on one MQTT stream, in one order, through a bounded window
of unacknowledged messages (the broker's in-flight limit). A message is acknowledged only once
it is on disk. If the gateway took one campus' flood (20,000 events in 2 s from a broken or
hostile edge) at the speed it stores events - one transaction each, about 200 a second here -
the window would fill with that campus' messages, the broker would hold everything else behind
them, and another campus' panic alarm would wait minutes. So:

* a campus with fewer than ``lane_depth`` messages in hand is handled directly, as before: the
  message is stored (event, alarm, relay jobs) and then acknowledged - one commit on the way of
  an alarm to the police;
* beyond that the campus "spills": its messages are written to the inbox table as they come, many
  in one insert, and acknowledged at once, so the broker's stream moves on at the speed of those
  inserts; a drainer then handles the campus' kept messages in order, side by side with the other
  campuses. The campus goes back to the direct way when its inbox is empty.

Order per campus holds: once a campus spills, every later message of it goes to the inbox too,
and the drainer starts after the campus' last direct message. Nothing is lost: a kept message is
on disk before its acknowledgement, and a kept message is deleted only after it is handled (a
gateway killed in between handles it again: a repeat, deduplicated by the event's id). Kept
messages belong to the gateway that took them; it renews a lease on them, and when a gateway
stops renewing (killed, gone) another one takes them over.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from contract import topics
from contract.aio import cancel_and_wait
from contract.mqtt import Backoff
from gateway.ingest import Ingest
from gateway.store.repo import GROUP_MAX, Store

log = logging.getLogger(__name__)

CONCURRENCY = GROUP_MAX
"""Messages of different campuses handled at once: as many as one group commit takes
(``Store.ingest_event``), so a burst of alarms from many campuses takes a few commits, not one
per alarm."""
WINDOW = 50_000
"""Messages in hand (being handled or waiting to be kept) before the reader waits. Large on
purpose: what the broker sent is in the gateway's memory either way (the MQTT client's queue
is unbounded so that nothing is dropped unacknowledged); taking it into the campus lanes at
once lets a quiet campus' alarm be handled ahead of a flooding campus' backlog."""
LANE_DEPTH = 16
"""A campus with this many messages in hand spills to the inbox."""
SPOOL_BATCH = 1000
"""At most this many messages in one insert into the inbox."""
DRAIN_BATCH = 64
"""Kept messages read (and deleted once handled) at a time."""
FLOOD_QUIET = 0.2
"""A flood is over when nothing was written to the inbox for this long."""
DRAIN_REST = 4.0
"""During a flood a drainer rests this many times as long as its last message took."""
LEASE = 30.0
"""Seconds a gateway's claim on its kept messages lasts; renewed every third of it."""


_EVENT_ID = re.compile(rb'"id"\s*:\s*"([0-9A-Za-z]{26})"')


def kept_event_id(campus: str, topic: str, payload: bytes) -> str | None:
    """The id an event message names (the edge's serialisation puts it in the first bytes), for
    its campus' receipt once it is kept; None for other messages. Not validated: a message that
    will be rejected loses nothing by a receipt (it would be rejected again and again)."""
    if topic != topics.event_topic(campus):
        return None
    found = _EVENT_ID.search(payload, 0, 256)
    return found.group(1).decode() if found else None


def campus_of(topic: str) -> str:
    parts = topic.split("/", 3)
    return parts[2] if len(parts) > 2 else ""


class _Broken(Exception):
    """An earlier message of the same campus was not stored."""


@dataclass
class _Campus:
    depth: int = 0
    """Messages handled directly and not yet done."""
    spilled: int = 0
    """Messages in the inbox or on their way to it, not yet handled."""
    tail: asyncio.Task[None] | None = None
    """The last message handled directly."""
    drainer: asyncio.Task[None] | None = None


@dataclass
class _Held:
    campus: str
    topic: str
    payload: bytes
    ack: Callable[[], None]


@dataclass
class LaneStats:
    spilled_messages: int = 0
    """Messages ever written to the inbox."""
    drained_messages: int = 0
    """Kept messages handled."""
    taken_over: int = 0
    """Kept messages of other gateways taken over."""
    campuses_spilling: set[str] = field(default_factory=set)


class CampusLanes:
    def __init__(
        self,
        ingest: Ingest,
        store: Store,
        owner: str,
        on_stored: Callable[[tuple[str, str]], None],
        *,
        on_kept: Callable[[tuple[str, str]], None] | None = None,
        concurrency: int = CONCURRENCY,
        window: int = WINDOW,
        lane_depth: int = LANE_DEPTH,
        lease: float = LEASE,
    ) -> None:
        self._ingest = ingest
        self._store = store
        self._owner = owner
        self._on_stored = on_stored
        self._on_kept = on_kept
        """Called with (campus, event id) for each event written to the inbox: it is on disk
        at the centre, so the campus' receipt can name it at once. Without it a flooding
        campus' edge sent its whole unconfirmed backlog again every 10 s while the inbox was
        drained, and the repeats were kept and handled as well."""
        self._slots = asyncio.Semaphore(concurrency)
        self._window = window
        self._lane_depth = lane_depth
        self._lease = lease
        self._campuses: dict[str, _Campus] = {}
        self._buffer: list[_Held] = []
        self._wake_spooler = asyncio.Event()
        self._written = asyncio.Condition()
        self._room = asyncio.Event()
        self._last_spool = -FLOOD_QUIET
        self._direct: set[asyncio.Task[None]] = set()
        self._drainers: set[asyncio.Task[None]] = set()
        self._failure: BaseException | None = None
        self._generation = 0
        """Inbox writes so far (a drainer that found nothing tells "not yet" from "none")."""
        self.ready = asyncio.Event()
        """Set once the kept messages of an earlier run are counted (receive only after)."""
        self.in_hand = 0
        """Messages received and not yet acknowledged."""
        self.stats = LaneStats()

    @property
    def spooled(self) -> int:
        """Messages kept in the inbox (or on their way to it) and not yet handled."""
        return sum(c.spilled for c in self._campuses.values())

    # ------------------------------------------------------------------ receiving

    async def submit(self, topic: str, payload: bytes, ack: Callable[[], None]) -> None:
        """Take one message off the stream; ``ack`` is called once it is on disk. Waits while
        ``window`` messages are in hand."""
        while self.in_hand >= self._window:
            self._room.clear()
            await self._room.wait()
        campus = campus_of(topic)
        c = self._campuses.setdefault(campus, _Campus())
        self.in_hand += 1
        if c.spilled or c.depth >= self._lane_depth:
            if not c.spilled:
                log.warning(
                    "campus %s is sending faster than it is stored (%d messages in hand): its "
                    "messages go to the inbox until it has caught up",
                    campus,
                    c.depth,
                )
                self.stats.campuses_spilling.add(campus)
            c.spilled += 1
            self._buffer.append(_Held(campus, topic, payload, ack))
            self._wake_spooler.set()
            self._start_drainer(campus, c)
            return
        c.depth += 1
        task = asyncio.create_task(self._handle_direct(c, topic, payload, ack, c.tail))
        c.tail = task
        self._direct.add(task)
        task.add_done_callback(self._direct_done)

    def _direct_done(self, task: asyncio.Task[None]) -> None:
        self._direct.discard(task)
        if not task.cancelled():
            task.exception()  # reported through ``connection``; retrieved here

    async def _handle_direct(
        self,
        c: _Campus,
        topic: str,
        payload: bytes,
        ack: Callable[[], None],
        after: asyncio.Task[None] | None,
    ) -> None:
        try:
            await self._handle_one(topic, payload, ack, after)
        finally:
            c.depth -= 1
            self._done(1)

    async def _handle_one(
        self, topic: str, payload: bytes, ack: Callable[[], None], after: asyncio.Task[None] | None
    ) -> None:
        if after is not None:
            await asyncio.wait([after])
            if after.cancelled() or after.exception() is not None:
                # An earlier message of the campus was not stored: neither is this one, so
                # that the campus' order holds when both come again. Already reported.
                raise _Broken
        try:
            async with self._slots:
                stored = await self._ingest.handle(topic, payload)
            if stored is not None:
                self._on_stored(stored)
            ack()
        except Exception as exc:
            # Not acknowledged: the connection is dropped and the broker sends it again.
            if self._failure is None:
                self._failure = exc
            self._wake_spooler.set()
            raise

    def _done(self, n: int) -> None:
        self.in_hand -= n
        self._room.set()

    async def connection(self) -> None:
        """Run while one broker connection lives: write what spills to the inbox and
        acknowledge it. Raises when a message could not be stored (the caller drops the
        connection, and the broker sends again what was not acknowledged)."""
        try:
            while True:
                if self._failure is not None:
                    failure, self._failure = self._failure, None
                    raise failure
                if not self._buffer:
                    self._wake_spooler.clear()
                    await self._wake_spooler.wait()
                    continue
                batch = self._buffer[:SPOOL_BATCH]
                await self._store.spool(
                    [(h.campus, h.topic, h.payload) for h in batch], self._owner, self._lease
                )
                del self._buffer[: len(batch)]
                self._last_spool = asyncio.get_running_loop().time()
                for h in batch:
                    h.ack()
                    if self._on_kept is None:
                        continue
                    if kept := kept_event_id(h.campus, h.topic, h.payload):
                        self._on_kept((h.campus, kept))
                self.stats.spilled_messages += len(batch)
                self._generation += 1
                self._done(len(batch))
                async with self._written:
                    self._written.notify_all()
        finally:
            await cancel_and_wait(list(self._direct))
            for c in self._campuses.values():
                c.tail = None  # what was not stored comes again, in order, on the next one
            # Not written, not acknowledged: they come again with the next connection.
            for h in self._buffer:
                self._campuses[h.campus].spilled -= 1
            self._done(len(self._buffer))
            self._buffer.clear()
            self._failure = None
            async with self._written:
                self._written.notify_all()

    # ------------------------------------------------------------------ draining

    def _start_drainer(self, campus: str, c: _Campus) -> None:
        if c.drainer is None or c.drainer.done():
            c.drainer = asyncio.create_task(self._drain(campus, c), name=f"inbox-{campus}")
            self._drainers.add(c.drainer)
            c.drainer.add_done_callback(self._drainers.discard)

    async def _drain(self, campus: str, c: _Campus) -> None:
        """Handle the campus' kept messages in order, after its last direct one."""
        if c.tail is not None:
            await asyncio.wait([c.tail])
        backoff = Backoff()
        while c.spilled > 0:
            try:
                generation = self._generation
                rows = await self._store.spooled(campus, self._owner, DRAIN_BATCH)
                if not rows:
                    if generation != self._generation:
                        continue  # written while we looked: look again
                    waiting = sum(1 for h in self._buffer if h.campus == campus)
                    if waiting == 0:
                        # Nothing kept and nothing on its way: the count was off (kept
                        # messages taken over by another gateway while this one was stalled).
                        c.spilled = 0
                        break
                    async with self._written:
                        await self._written.wait()
                    continue
                loop = asyncio.get_running_loop()
                for _id, topic, payload in rows:
                    started = loop.time()
                    async with self._slots:
                        stored = await self._ingest.handle(topic, payload)
                    if stored is not None:
                        self._on_stored(stored)
                    await self._pace(loop.time() - started)
                await self._store.unspool([r[0] for r in rows])
                c.spilled = max(0, c.spilled - len(rows))
                self.stats.drained_messages += len(rows)
                backoff.reset()
            except Exception:
                # The database: the kept messages stay where they are; try again.
                log.exception("handling the kept messages of campus %s failed", campus)
                await asyncio.sleep(backoff.next())
        if c.drainer is asyncio.current_task():
            c.drainer = None
        self.stats.campuses_spilling.discard(campus)
        log.info("campus %s has caught up: its messages are handled directly again", campus)

    async def _pace(self, spent: float) -> None:
        """While a flood is coming in (the inbox written to within ``FLOOD_QUIET`` s), taking
        it off the stream comes first: it keeps the broker's one stream moving for every other
        campus. A drainer then rests ``DRAIN_REST`` times as long as its last message took (at
        most a fifth of the gateway's time goes to draining), so a campus that floods without
        end is still handled, slowly; after the flood it drains at full speed."""
        loop = asyncio.get_running_loop()
        if loop.time() - self._last_spool < FLOOD_QUIET:
            await asyncio.sleep(min(DRAIN_REST * spent, 0.1))

    def _add_kept(self, counts: dict[str, int]) -> None:
        for campus, n in counts.items():
            c = self._campuses.setdefault(campus, _Campus())
            c.spilled += n
            self._start_drainer(campus, c)

    async def run(self) -> None:
        """For the service's life: count the kept messages of an earlier run, then keep the
        lease on them and take over those of gateways that stopped renewing theirs."""
        backoff = Backoff()
        try:
            while not self.ready.is_set():
                try:
                    kept = await self._store.spool_counts(self._owner)
                except Exception:
                    log.exception("counting the inbox failed; trying again")
                    await asyncio.sleep(backoff.next())
                    continue
                if kept:
                    log.warning(
                        "%d message(s) kept in the inbox by an earlier run: handling them",
                        sum(kept.values()),
                    )
                self._add_kept(kept)
                self.ready.set()
            while True:
                await asyncio.sleep(self._lease / 3)
                try:
                    taken = await self._store.renew_spool(self._owner, self._lease)
                except Exception:
                    log.exception("renewing the inbox lease failed")
                    continue
                if taken:
                    n = sum(taken.values())
                    log.warning("took over %d kept message(s) of a gateway that stopped", n)
                    self.stats.taken_over += n
                    self._add_kept(taken)
        finally:
            await cancel_and_wait(list(self._drainers))
