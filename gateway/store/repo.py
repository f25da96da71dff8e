"""Operations on the store. Each public coroutine is one transaction."""

from __future__ import annotations

import asyncio
import functools
import logging
import re
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, ParamSpec, TypeVar, cast

from sqlalchemy import (
    Table,
    and_,
    bindparam,
    delete,
    func,
    insert,
    or_,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker

from contract.models import DeviceStatus, EdgeState, Event
from gateway.store.models import (
    AlarmRow,
    AlarmStep,
    CommandRow,
    DeviceSeen,
    DeviceStatusRow,
    DrillRow,
    EdgeStateRow,
    EventRow,
    EvidenceRow,
    InboxRow,
    MaintenanceRow,
    OutageRow,
    RelayCounter,
    RelayJob,
    TelemetryRow,
)

P = ParamSpec("P")
R = TypeVar("R")


log = logging.getLogger(__name__)


def now() -> datetime:
    return datetime.now(UTC)


def aware(ts: datetime | None) -> datetime | None:
    """SQLite hands datetimes back without a zone; everything we store is UTC."""
    if ts is None:
        return None
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


def _gets_alarm_record(event: Event) -> bool:
    """Alarms, and what must show the police's answer like one: a missed periodic test (for
    the technician) and a self-test's test event (its police_received status goes back to the
    edge on down/alarm-status; it is a test, never counted as a real alarm)."""
    if event.is_alarm or event.kind == "test_missed":
        return True
    return event.kind == "test" and "selftest_id" in event.detail


@dataclass(frozen=True, slots=True)
class _Change:
    """A device's online state changing (or first seen: ``before`` None) at ``ts``."""

    campus: str
    device: str
    before: bool | None
    online: bool
    ts: datetime
    cause: str


_UPSERT_COLUMNS: dict[str, tuple[str, ...]] = {
    "device_status": ("online", "ts", "last_response", "latency_ms", "error", "points"),
    "edge_state": ("online", "ts", "version", "reason"),
}
"""What a newer device or edge state replaces (``Store._newest_wins_upsert``)."""


SEQ_MODULO = 9999
"""Protocol sequence numbers of the relay jobs: 1..9999, then 1 again (DC-09)."""
_SINK_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")
_T_EVENTS = cast(Table, EventRow.__table__)
_T_ALARMS = cast(Table, AlarmRow.__table__)
_T_STEPS = cast(Table, AlarmStep.__table__)
_T_JOBS = cast(Table, RelayJob.__table__)
_T_COUNTERS = cast(Table, RelayCounter.__table__)


def _step_values(
    alarm_id: str,
    campus: str,
    state: str,
    ts: datetime,
    path: str | None = None,
    note: str = "",
) -> dict[str, Any]:
    """An alarm step's row for a Core insert (not yet published to the campus)."""
    return {
        "alarm_id": alarm_id,
        "campus": campus,
        "state": state,
        "ts": ts,
        "path": path,
        "note": note,
        "published": False,
    }


@dataclass(frozen=True, slots=True)
class ClaimedJob:
    alarm_id: str
    sink: str
    attempts: int
    seq: int | None
    event: Event


JOB_END_ALARM_STATES = ("police_received", "police_rejected")


@dataclass(frozen=True, slots=True)
class JobEnd:
    """How a relay job ended (``Store.finish_jobs``): ``state`` done or rejected; with
    ``alarm_state`` (police_received or police_rejected) the alarm moves on too."""

    job: ClaimedJob
    state: str
    attempts: int
    error: str | None = None
    alarm_state: str | None = None
    path: str | None = None
    note: str = ""

    def __post_init__(self) -> None:
        if self.alarm_state is not None and self.alarm_state not in JOB_END_ALARM_STATES:
            raise ValueError(f"a job's end moves an alarm to {JOB_END_ALARM_STATES} only")


def _shielded(fn: Callable[P, Coroutine[Any, Any, R]]) -> Callable[P, Coroutine[Any, Any, R]]:
    """Run a store operation to its end even if the caller is cancelled.

    A transaction cancelled half-way leaves its pooled connection in an unknown state (the
    rollback itself is cancelled); with SQLite's single connection the next caller would wait
    for it forever. The caller still sees its CancelledError at once.
    """

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        store = args[0]
        assert isinstance(store, Store)
        task = asyncio.ensure_future(fn(*args, **kwargs))
        store._inflight.add(task)
        task.add_done_callback(store._inflight.discard)
        return await asyncio.shield(task)

    return wrapper


def _reconnecting(
    fn: Callable[P, Coroutine[Any, Any, R]],
) -> Callable[P, Coroutine[Any, Any, R]]:
    """Try a store operation once more when its connection turned out dead.

    The pool does not ping before each transaction (``db.make_engine``): a connection that died
    while pooled fails at its first statement, with ``connection_invalidated`` set; SQLAlchemy
    has then dropped every older pooled connection, so the second try gets a fresh one. For the
    operations of an alarm's way to the police, which must not fail for that.
    """

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await fn(*args, **kwargs)
        except DBAPIError as exc:
            if not exc.connection_invalidated:
                raise
            log.warning("database connection lost (%s); trying %s again", exc.orig, fn.__name__)
            return await fn(*args, **kwargs)

    return wrapper


GROUP_MAX = 64
"""At most this many events in one group commit (``Store.ingest_event``)."""


@dataclass(slots=True)
class _Pending:
    """An event waiting for its group commit."""

    event: Event
    relay_to: list[str]
    worker: str
    lease: float
    done: asyncio.Future[tuple[bool, list[ClaimedJob]]]


def _settle(done: asyncio.Future[R], result: R) -> None:
    if not done.done():  # its caller may have been cancelled meanwhile
        done.set_result(result)


def _event_values(event: Event, ts: datetime) -> dict[str, Any]:
    return {
        "id": event.id,
        "campus": event.campus,
        "edge": event.edge,
        "seq": event.seq,
        "kind": event.kind,
        "severity": event.severity,
        "device": event.device,
        "point": event.point,
        "zone": event.zone,
        "restore": event.restore,
        "drill": event.drill,
        "edge_ts": event.ts,
        "received_at": ts,
        "payload": event.model_dump(mode="json"),
    }


def _alarm_values(event: Event, ts: datetime) -> dict[str, Any]:
    return {
        "id": event.id,
        "campus": event.campus,
        "kind": event.kind,
        "severity": event.severity,
        "device": event.device,
        "point": event.point,
        "zone": event.zone,
        "location": event.location,
        "lat": event.geo.lat if event.geo else None,
        "lon": event.geo.lon if event.geo else None,
        "restore": event.restore,
        "drill": event.drill,
        "text": event.text,
        "edge_ts": event.ts,
        "received_at": ts,
        "state": "received",
        "police_path": None,
        "police_at": None,
        "guard_ack_at": None,
        "closed_at": None,
    }


def _job_values(
    event: Event, sink: str, seq: int, ts: datetime, worker: str, lease: float
) -> dict[str, Any]:
    """A relay job's row, claimed by ``worker`` at once (the fast path of press-to-police)."""
    return {
        "alarm_id": event.id,
        "sink": sink,
        "state": "pending",
        "priority": 0 if event.severity == "critical" else 1,
        "attempts": 0,
        "seq": seq,
        "next_at": ts,
        "claimed_by": worker,
        "claimed_until": ts + timedelta(seconds=lease),
        "last_error": None,
        "created_at": ts,
    }


class Store:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.session = async_sessionmaker(engine, expire_on_commit=False)
        self._inflight: set[asyncio.Future[Any]] = set()
        self._upsert_stmts: dict[str, Any] = {}
        self._sequences: set[str] = set()
        self._ingest_queue: list[_Pending] = []
        self._ingest_writer: asyncio.Future[None] | None = None
        self.alarm_listeners: list[Callable[[str, str], None]] = []
        """Called with (alarm id, new state) after each commit that creates an alarm or moves
        it on (the consoles' live feed). A listener must return at once and never raise."""

    def _alarm_changed(self, alarm_id: str, state: str) -> None:
        for listener in list(self.alarm_listeners):
            try:
                listener(alarm_id, state)
            except Exception:
                log.exception("alarm listener failed for %s", alarm_id)

    async def drain(self) -> None:
        """Wait for operations whose callers were cancelled (call before disposing the engine)."""
        if self._inflight:
            await asyncio.gather(*self._inflight, return_exceptions=True)

    # --- ingest ---------------------------------------------------------------------------

    async def ingest_event(
        self, event: Event, relay_to: list[str], worker: str, lease: float = 30.0
    ) -> tuple[bool, list[ClaimedJob]]:
        """Store an event once; for an alarm also its record and relay jobs.

        Returns ``(new, jobs)``. The jobs come back already claimed by ``worker`` with their
        sequence numbers fixed, in the same transaction, so the relay can send at once without
        another round trip to the database (the fast path of press-to-police).

        Group commit: events handed in while a transaction of them is being written wait for
        it, and are then written together, in the order they came, in ONE transaction (a few
        statements for all of them, one commit, one fsync). Under a burst of alarms from many
        campuses the last one then waits for a few commits, not for one commit per alarm ahead
        of it; a lone alarm is written at once, as before. Like every store operation, it is
        carried through to its end even if the caller is cancelled.
        """
        item = _Pending(event, relay_to, worker, lease, asyncio.get_running_loop().create_future())
        self._ingest_queue.append(item)
        if self._ingest_writer is None:
            self._ingest_writer = asyncio.ensure_future(self._write_ingests())
            self._inflight.add(self._ingest_writer)
            self._ingest_writer.add_done_callback(self._inflight.discard)
        return await item.done

    async def _write_ingests(self) -> None:
        """Write what is queued for ``ingest_event``, a group at a time, until none is left."""
        group: list[_Pending] = []
        try:
            while self._ingest_queue:
                group = self._ingest_queue[:GROUP_MAX]
                del self._ingest_queue[: len(group)]
                if len(group) > 1:
                    try:
                        results = await self._ingest_group(group)
                    except Exception as exc:
                        # Another gateway's transaction collided with ours, or one event of
                        # them cannot be stored: each on its own (and its own retries), so one
                        # failure is that event's alone.
                        log.info("group of %d events failed (%s): one by one", len(group), exc)
                    else:
                        for item, result in zip(group, results, strict=True):
                            _settle(item.done, result)
                        continue
                for item in group:
                    try:
                        result = await self._ingest_alone(
                            item.event, item.relay_to, item.worker, item.lease
                        )
                    except Exception as exc:
                        if not item.done.done():
                            item.done.set_exception(exc)
                    else:
                        _settle(item.done, result)
        finally:
            self._ingest_writer = None
            # Cancelled with work in hand (the event loop closing): nobody may wait for ever.
            # Whether the group in hand was committed is unknown to its callers: an error, so
            # that their messages are not acknowledged (a repeat is deduplicated).
            for item in [*group, *self._ingest_queue]:
                if not item.done.done():
                    item.done.set_exception(RuntimeError("the store is closing"))
            self._ingest_queue.clear()

    @_reconnecting
    async def _ingest_group(self, group: list[_Pending]) -> list[tuple[bool, list[ClaimedJob]]]:
        """``ingest_event`` for several events in one transaction; raises ``IntegrityError``
        when another gateway's transaction collided with it (then nothing of it is stored)."""
        ts = now()
        first: dict[str, int] = {}  # event id -> its first place in the group
        for i, item in enumerate(group):
            first.setdefault(item.event.id, i)
        results: list[tuple[bool, list[ClaimedJob]]] = [(False, []) for _ in group]
        async with self.engine.begin() as conn:
            # executemany (SQLAlchemy's "insertmanyvalues": batched, its SQL compiled once and
            # cached), not one multi-row VALUES, which is compiled anew for every group size
            # and was half of a group's time.
            stored = {
                row[0]
                for row in await conn.execute(
                    self._insert_ignore(EventRow).returning(_T_EVENTS.c.id),
                    [_event_values(group[i].event, ts) for i in first.values()],
                )
            }
            new = [i for i in first.values() if group[i].event.id in stored]
            alarms = [
                group[i].event
                for i in new
                if _gets_alarm_record(group[i].event) and not group[i].event.restore
            ]
            if alarms:
                await conn.execute(insert(_T_ALARMS), [_alarm_values(e, ts) for e in alarms])
                await conn.execute(
                    insert(_T_STEPS), [_step_values(e.id, e.campus, "received", ts) for e in alarms]
                )
            is_alarm = {e.id for e in alarms}
            wanted: dict[str, int] = {}
            for i in new:
                if group[i].event.id in is_alarm:
                    for sink in group[i].relay_to:
                        wanted[sink] = wanted.get(sink, 0) + 1
            seqs = {sink: iter(await self._next_seqs(conn, sink, n)) for sink, n in wanted.items()}
            rows: list[dict[str, Any]] = []
            for i in new:
                item = group[i]
                jobs: list[ClaimedJob] = []
                if item.event.id in is_alarm:
                    for sink in item.relay_to:
                        seq = next(seqs[sink])
                        rows.append(_job_values(item.event, sink, seq, ts, item.worker, item.lease))
                        jobs.append(ClaimedJob(item.event.id, sink, 0, seq, item.event))
                results[i] = (True, jobs)
            if rows:
                await conn.execute(insert(_T_JOBS), rows)
        for i in new:
            if _gets_alarm_record(group[i].event):
                self._alarm_changed(group[i].event.id, "received")
        return results

    @_reconnecting
    async def _ingest_alone(
        self, event: Event, relay_to: list[str], worker: str, lease: float
    ) -> tuple[bool, list[ClaimedJob]]:
        """``ingest_event`` for one event, its own transaction (tried again on a collision)."""
        # An IntegrityError rolls the whole transaction back. Either another gateway stored
        # this event between our check and our insert (a repeat: done), or two gateways both
        # created a row that did not exist yet (a sink's first sequence counter, issue 12):
        # then nothing of this event is stored and it must be tried again, or the alarm would
        # be acknowledged, receipted and lost.
        # Core statements on one connection, no ORM unit of work: this is on every alarm's way to
        # the police. ``INSERT ... ON CONFLICT DO NOTHING`` makes a repeat (the broker's
        # redelivery, or another gateway storing the same event at the same moment: PostgreSQL
        # waits for its transaction) a no-op that inserts nothing. The sink's sequence counter
        # is taken last, so its row lock (shared by every gateway) is held only for the jobs'
        # insert and the commit.
        alarm = _gets_alarm_record(event) and not event.restore
        for _attempt in range(5):
            ts = now()
            jobs: list[ClaimedJob] = []
            try:
                async with self.engine.begin() as conn:
                    stored = (
                        await conn.execute(
                            self._insert_ignore(EventRow)
                            .values(_event_values(event, ts))
                            .returning(_T_EVENTS.c.id)
                        )
                    ).first()
                    if stored is None:
                        return False, []
                    if alarm:
                        await conn.execute(insert(_T_ALARMS).values(_alarm_values(event, ts)))
                        await conn.execute(
                            insert(_T_STEPS).values(
                                _step_values(event.id, event.campus, "received", ts)
                            )
                        )
                    rows: list[dict[str, Any]] = []
                    for sink in relay_to:
                        seq = await self._next_seq(conn, sink)
                        rows.append(_job_values(event, sink, seq, ts, worker, lease))
                        jobs.append(ClaimedJob(event.id, sink, 0, seq, event))
                    if rows:
                        await conn.execute(insert(_T_JOBS), rows)
            except IntegrityError:
                pass
            else:
                if _gets_alarm_record(event):
                    self._alarm_changed(event.id, "received")
                return True, jobs
            async with self.engine.connect() as conn:
                found = await conn.execute(select(_T_EVENTS.c.id).where(_T_EVENTS.c.id == event.id))
                if found.first() is not None:
                    return False, []
            log.warning("storing event %s collided with another gateway; trying again", event.id)
        raise RuntimeError(f"event {event.id}: could not be stored after 5 attempts")

    async def _next_seqs(self, conn: AsyncConnection, sink: str, n: int) -> list[int]:
        """The sink's next ``n`` sequence numbers in order (``_next_seq`` n times, in one
        statement)."""
        if n == 1:
            return [await self._next_seq(conn, sink)]
        if self.engine.dialect.name == "postgresql":
            name = await self._sequence(sink)
            if name is not None:
                # generate_series yields 1..n in order and nextval is taken row by row as they
                # come; ORDER BY g keeps that order whatever the plan (the numbers may wrap).
                found = await conn.execute(
                    text(
                        "SELECT nextval(CAST(CAST(:seq AS text) AS regclass)) "
                        "FROM generate_series(1, :n) AS g ORDER BY g"
                    ),
                    {"seq": name, "n": n},
                )
                return [int(v) for v in found.scalars()]
        t, m = _T_COUNTERS, SEQ_MODULO
        bump = (
            update(t)
            .where(t.c.sink == sink)
            .values(value=(t.c.value + n - 1) % m + 1)
            .returning(t.c.value)
        )
        last = (await conn.execute(bump)).scalar_one_or_none()
        if last is None:  # the sink's first job ever (two gateways: one inserts, both bump)
            await conn.execute(self._insert_ignore(RelayCounter).values(sink=sink, value=0))
            last = (await conn.execute(bump)).scalar_one()
        # The value before was v; the numbers are v % m + 1, then each the one before % m + 1,
        # and ``last`` is the n-th of them.
        return [(int(last) - n + k) % m + 1 for k in range(n)]

    async def _next_seq(self, conn: AsyncConnection, sink: str, modulo: int = 9999) -> int:
        """The sink's next sequence number (1..modulo, wrapping), unique per sink across all
        gateways.

        PostgreSQL: a database sequence (``relay_seq_<sink>``), which never waits for another
        transaction; a counter row would stay locked until the caller's commit, and every
        gateway's alarms would be stored one after the other behind it. A number taken by a
        transaction that then rolls back is skipped (DC-09 receivers do not need them without
        gaps, only never reused within their duplicate window). SQLite (one writer anyway): the
        ``relay_counters`` row.
        """
        if self.engine.dialect.name == "postgresql" and modulo == SEQ_MODULO:
            name = await self._sequence(sink)
            if name is not None:
                return int((await conn.execute(text(f"SELECT nextval('{name}')"))).scalar_one())
        t = _T_COUNTERS
        bump = (
            update(t)
            .where(t.c.sink == sink)
            .values(value=t.c.value % modulo + 1)
            .returning(t.c.value)
        )
        value = (await conn.execute(bump)).scalar_one_or_none()
        if value is None:  # the sink's first job ever (two gateways: one inserts, both bump)
            await conn.execute(self._insert_ignore(RelayCounter).values(sink=sink, value=0))
            value = (await conn.execute(bump)).scalar_one()
        return int(value)

    async def _sequence(self, sink: str) -> str | None:
        """The PostgreSQL sequence of ``sink``'s numbers, created on first use (continuing from
        its ``relay_counters`` row, so that no recent number comes again); None for a sink name
        that cannot be part of an identifier."""
        name = f"relay_seq_{sink}"
        if name in self._sequences:
            return name
        if not _SINK_NAME.fullmatch(sink):
            return None
        async with self.engine.begin() as conn:
            # One creator at a time across all gateways; the others find it made.
            await conn.execute(text("SELECT pg_advisory_xact_lock(738201901)"))
            found = await conn.execute(
                text("SELECT 1 FROM pg_class WHERE relkind = 'S' AND relname = :n"), {"n": name}
            )
            if found.first() is None:
                last = (
                    await conn.execute(
                        select(_T_COUNTERS.c.value).where(_T_COUNTERS.c.sink == sink)
                    )
                ).scalar_one_or_none()
                await conn.execute(
                    text(
                        f"CREATE SEQUENCE {name} MINVALUE 1 MAXVALUE {SEQ_MODULO} CYCLE "
                        f"START WITH {(last or 0) % SEQ_MODULO + 1}"
                    )
                )
        self._sequences.add(name)
        return name

    def _insert_ignore(self, model: type[Any]) -> Any:
        """``INSERT ... ON CONFLICT (primary key) DO NOTHING`` (PostgreSQL and SQLite)."""
        table = cast(Table, model.__table__)
        ins = (pg_insert if self.engine.dialect.name == "postgresql" else sqlite_insert)(table)
        return ins.on_conflict_do_nothing(index_elements=list(table.primary_key.columns))

    @staticmethod
    async def _move_alarm(
        conn: AsyncConnection,
        alarm_id: str,
        state: str,
        ts: datetime,
        path: str | None = None,
        note: str = "",
    ) -> tuple[bool, datetime | None]:
        """Move an alarm on and add the step (Core, in the caller's transaction). Returns
        whether it has an alarm record, and the alarm's ``received_at``."""
        values: dict[str, Any] = {"state": state}
        if state in ("police_received", "police_rejected"):
            values.update(police_path=path, police_at=ts)
        if state == "guard_acknowledged":
            values["guard_ack_at"] = ts
        if state == "closed":
            values["closed_at"] = ts
        t = _T_ALARMS
        row = (
            await conn.execute(
                update(t)
                .where(t.c.id == alarm_id)
                .values(**values)
                .returning(t.c.campus, t.c.received_at)
            )
        ).first()
        if row is None:
            return False, None
        await conn.execute(
            insert(_T_STEPS).values(_step_values(alarm_id, row.campus, state, ts, path, note))
        )
        return True, aware(row.received_at)

    @_shielded
    @_reconnecting
    async def set_alarm_state(
        self, alarm_id: str, state: str, *, path: str | None = None, note: str = ""
    ) -> bool:
        """Move an alarm on and add the step to its timeline (sent back to the campus)."""
        async with self.engine.begin() as conn:
            found, _received = await self._move_alarm(conn, alarm_id, state, now(), path, note)
        if found:
            self._alarm_changed(alarm_id, state)
        return found

    @_shielded
    async def upsert_device_status(self, st: DeviceStatus) -> None:
        await self._device_statuses([st])

    @_shielded
    async def upsert_device_statuses(self, statuses: Sequence[DeviceStatus]) -> int:
        """Store many device statuses in ONE transaction, exactly as if stored one after
        another in the given order: per device the newest (by ``ts``) wins, an older one arriving
        late changes nothing, and every online/offline change on the way keeps the outage record.
        Returns how many were applied (not older than what was there)."""
        return await self._device_statuses(statuses)

    async def _device_statuses(self, statuses: Sequence[DeviceStatus]) -> int:
        if not statuses:
            return 0
        R = DeviceStatusRow
        keys = sorted({(st.campus, st.device) for st in statuses})
        applied = 0
        async with self.session() as s, s.begin():
            # What is there now: one SELECT per 500 devices, no ORM objects.
            known: dict[tuple[str, str], tuple[bool, datetime]] = {}
            for i in range(0, len(keys), 500):
                q = select(R.campus, R.device, R.online, R.ts).where(
                    tuple_(R.campus, R.device).in_(keys[i : i + 500])
                )
                for campus, device, online, ts in await s.execute(q):
                    known[(campus, device)] = (online, aware(ts) or ts)
            final: dict[tuple[str, str], dict[str, Any]] = {}
            changes: list[_Change] = []
            for st in statuses:
                key = (st.campus, st.device)
                ts = st.ts.astimezone(UTC)
                cur = known.get(key)
                if cur is not None and cur[1] > ts:
                    continue  # an older retained message arriving late
                before = None if cur is None else cur[0]
                if before != st.online:  # first seen, or a change: the outage record follows
                    changes.append(
                        _Change(st.campus, st.device, before, st.online, ts, st.error or "")
                    )
                known[key] = (st.online, ts)
                final[key] = {
                    "campus": st.campus,
                    "device": st.device,
                    "online": st.online,
                    "ts": ts,
                    "last_response": st.last_response,
                    "latency_ms": st.latency_ms,
                    "error": st.error,
                    "points": dict(st.points),
                }
                applied += 1
            if changes:
                await self._availability_many(s, "device", changes)
            if final:
                # One statement, compiled once, executed for every row (executemany).
                await s.execute(self._newest_wins_upsert(R), list(final.values()))
        return applied

    def _newest_wins_upsert(self, model: type[DeviceStatusRow] | type[EdgeStateRow]) -> Any:
        """``INSERT ... ON CONFLICT DO UPDATE`` of a device's or an edge's state (PostgreSQL and
        SQLite), built once per table: the row is only replaced by a state at least as new (two
        gateways racing)."""
        stmt = self._upsert_stmts.get(model.__tablename__)
        if stmt is None:
            table = cast(Table, model.__table__)
            ins = (pg_insert if self.engine.dialect.name == "postgresql" else sqlite_insert)(table)
            stmt = ins.on_conflict_do_update(
                index_elements=list(table.primary_key.columns),
                set_={c: ins.excluded[c] for c in _UPSERT_COLUMNS[model.__tablename__]},
                where=table.c.ts <= ins.excluded.ts,
            )
            self._upsert_stmts[model.__tablename__] = stmt
        return stmt

    async def _availability_many(self, s: AsyncSession, kind: str, changes: list[_Change]) -> None:
        """Keep the availability records in step with status changes, in order, in the
        caller's transaction: devices (or edges) seen for the first time are recorded, an
        outage opens when one goes offline (unless one is open) and every open one closes when
        it comes back. Two or three statements whatever the number of changes."""
        first = {(c.campus, c.device): c.ts for c in changes if c.before is None}
        if first:
            ins = (pg_insert if self.engine.dialect.name == "postgresql" else sqlite_insert)(
                DeviceSeen
            )
            await s.execute(
                ins.on_conflict_do_nothing(index_elements=[DeviceSeen.campus, DeviceSeen.device]),
                [
                    {"campus": c, "device": d, "kind": kind, "first_seen": ts}
                    for (c, d), ts in first.items()
                ],
            )
        keys = sorted({(c.campus, c.device) for c in changes})
        open_rows: dict[tuple[str, str], list[OutageRow]] = {k: [] for k in keys}
        for i in range(0, len(keys), 500):
            q = select(OutageRow).where(
                tuple_(OutageRow.campus, OutageRow.device).in_(keys[i : i + 500]),
                OutageRow.end.is_(None),
            )
            for o in (await s.execute(q)).scalars():
                open_rows[(o.campus, o.device)].append(o)
        for c in changes:
            rows = open_rows[(c.campus, c.device)]
            if not c.online and not rows:
                o = OutageRow(
                    campus=c.campus, device=c.device, kind=kind, start=c.ts, cause=c.cause[:500]
                )
                s.add(o)
                rows.append(o)
            elif c.online:
                for o in rows:
                    start = aware(o.start)
                    o.end = c.ts if start is None or c.ts >= start else start
                rows.clear()

    @_shielded
    async def upsert_edge_state(self, st: EdgeState) -> bool | None:
        """Store the edge's state; returns what it was before (None if never seen). A state
        older than the stored one changes nothing. Core statements, no ORM objects: a
        district's 500 retained edge states all come when a gateway starts."""
        E = EdgeStateRow
        ts = st.ts.astimezone(UTC)
        async with self.session() as s, s.begin():
            q = select(E.online, E.ts).where(E.campus == st.campus, E.edge == st.edge)
            found = (await s.execute(q)).first()
            before = None if found is None else bool(found[0])
            if found is not None and (aware(found[1]) or found[1]) > ts:
                return before  # older than what we have
            if before != st.online:  # first seen, or a change: the outage record follows
                change = _Change(st.campus, st.edge, before, st.online, ts, st.reason or "offline")
                await self._availability_many(s, "edge", [change])
            row = {
                "campus": st.campus,
                "edge": st.edge,
                "online": st.online,
                "ts": ts,
                "version": st.version,
                "reason": st.reason,
            }
            await s.execute(self._newest_wins_upsert(E), [row])
        return before

    # --- relay queue ----------------------------------------------------------------------

    @_shielded
    @_reconnecting
    async def claim_jobs(
        self, sink: str, worker: str, limit: int = 10, lease: float = 30.0
    ) -> list[ClaimedJob]:
        """Take due jobs for this worker; a lease that runs out frees them for another."""
        ts = now()
        until = ts + timedelta(seconds=lease)
        out: list[ClaimedJob] = []
        async with self.session() as s, s.begin():
            rows = (
                await s.execute(
                    select(RelayJob.alarm_id)
                    .where(
                        RelayJob.sink == sink,
                        RelayJob.state == "pending",
                        RelayJob.next_at <= ts,
                        or_(RelayJob.claimed_until.is_(None), RelayJob.claimed_until < ts),
                    )
                    .order_by(RelayJob.priority, RelayJob.created_at)
                    .limit(limit)
                )
            ).all()
            for (alarm_id,) in rows:
                res = await s.execute(
                    update(RelayJob)
                    .where(
                        and_(
                            RelayJob.alarm_id == alarm_id,
                            RelayJob.sink == sink,
                            RelayJob.state == "pending",
                            or_(RelayJob.claimed_until.is_(None), RelayJob.claimed_until < ts),
                        )
                    )
                    .values(claimed_by=worker, claimed_until=until)
                )
                if res.rowcount != 1:  # type: ignore[attr-defined]
                    continue
                job = await s.get(RelayJob, (alarm_id, sink))
                ev = await s.get(EventRow, alarm_id)
                assert job is not None
                assert ev is not None
                out.append(
                    ClaimedJob(
                        alarm_id,
                        sink,
                        job.attempts,
                        job.seq,
                        Event.model_validate(ev.payload),
                    )
                )
        return out

    @_shielded
    @_reconnecting
    async def reclaim_jobs(
        self, event: Event, worker: str, lease: float = 30.0
    ) -> list[ClaimedJob]:
        """The pending, due jobs of one alarm that nobody else holds (free, lapsed, or held by
        ``worker`` itself), claimed for ``worker``: a repeat of an alarm whose first hand-over
        to the relay was cut short (a lost broker connection between the commit and the
        hand-over) is sent now, not after its lease runs out."""
        ts = now()
        t = _T_JOBS
        async with self.engine.begin() as conn:
            rows = (
                await conn.execute(
                    update(t)
                    .where(
                        t.c.alarm_id == event.id,
                        t.c.state == "pending",
                        t.c.next_at <= ts,
                        or_(
                            t.c.claimed_by == worker,
                            t.c.claimed_until.is_(None),
                            t.c.claimed_until < ts,
                        ),
                    )
                    .values(claimed_by=worker, claimed_until=ts + timedelta(seconds=lease))
                    .returning(t.c.sink, t.c.attempts, t.c.seq)
                )
            ).all()
        return [ClaimedJob(event.id, r.sink, r.attempts, r.seq, event) for r in rows]

    @_shielded
    @_reconnecting
    async def release_claims(self, worker: str) -> int:
        """At start: jobs this worker held when it died are free again at once (no lease wait)."""
        async with self.session() as s, s.begin():
            res = await s.execute(
                update(RelayJob)
                .where(RelayJob.claimed_by == worker, RelayJob.state == "pending")
                .values(claimed_by=None, claimed_until=None, next_at=now())
            )
            return int(res.rowcount)  # type: ignore[attr-defined]

    @_shielded
    @_reconnecting
    async def assign_seq(self, job: ClaimedJob, modulo: int = 9999) -> int:
        """Fix the job's protocol sequence number before its first send (see RelayJob)."""
        async with self.session() as s, s.begin():
            row = await s.get(RelayJob, (job.alarm_id, job.sink))
            assert row is not None
            if row.seq is None:
                row.seq = await self._next_seq(await s.connection(), job.sink, modulo)
            return row.seq

    async def finish_job(
        self,
        job: ClaimedJob,
        state: str,
        *,
        attempts: int,
        error: str | None = None,
        alarm_state: str | None = None,
        path: str | None = None,
        note: str = "",
    ) -> datetime | None:
        """End a job; with ``alarm_state`` the alarm moves on (and gets its step) in the same
        transaction. Returns the alarm's ``received_at`` (None without an alarm record)."""
        [received] = await self.finish_jobs(
            [JobEnd(job, state, attempts, error, alarm_state, path, note)]
        )
        return received

    @_shielded
    @_reconnecting
    async def finish_jobs(self, ends: Sequence[JobEnd]) -> list[datetime | None]:
        """End several jobs, and move their alarms on, in one transaction (a burst of alarms
        acknowledged by the police: a handful of statements for all of them). Returns each
        alarm's ``received_at``, in order (None without an alarm record)."""
        if not ends:
            return []
        ts = now()
        jobs, alarms = _T_JOBS, _T_ALARMS
        async with self.engine.begin() as conn:
            await conn.execute(
                update(jobs)
                .where(
                    jobs.c.alarm_id == bindparam("b_alarm"),
                    jobs.c.sink == bindparam("b_sink"),
                )
                .values(
                    state=bindparam("b_state"),
                    attempts=bindparam("b_attempts"),
                    last_error=bindparam("b_error"),
                    claimed_by=None,
                    claimed_until=None,
                ),
                [
                    {
                        "b_alarm": e.job.alarm_id,
                        "b_sink": e.job.sink,
                        "b_state": e.state,
                        "b_attempts": e.attempts,
                        "b_error": e.error,
                    }
                    for e in ends
                ],
            )
            moving = [e for e in ends if e.alarm_state is not None]
            found: dict[str, tuple[str, datetime | None]] = {}
            if moving:
                rows = await conn.execute(
                    select(alarms.c.id, alarms.c.campus, alarms.c.received_at).where(
                        alarms.c.id.in_({e.job.alarm_id for e in moving})
                    )
                )
                found = {r.id: (r.campus, aware(r.received_at)) for r in rows}
                moved = [e for e in moving if e.job.alarm_id in found]
                if moved:
                    await conn.execute(
                        update(alarms)
                        .where(alarms.c.id == bindparam("b_alarm"))
                        .values(
                            state=bindparam("b_state"),
                            police_path=bindparam("b_path"),
                            police_at=bindparam("b_at"),
                        ),
                        [
                            {
                                "b_alarm": e.job.alarm_id,
                                "b_state": e.alarm_state,
                                "b_path": e.path,
                                "b_at": ts,
                            }
                            for e in moved
                        ],
                    )
                    await conn.execute(
                        insert(_T_STEPS),
                        [
                            _step_values(
                                e.job.alarm_id,
                                found[e.job.alarm_id][0],
                                cast(str, e.alarm_state),
                                ts,
                                e.path,
                                e.note,
                            )
                            for e in moved
                        ],
                    )
        for e in ends:
            if e.alarm_state is not None and e.job.alarm_id in found:
                self._alarm_changed(e.job.alarm_id, e.alarm_state)
        return [found.get(e.job.alarm_id, ("", None))[1] for e in ends]

    @_shielded
    @_reconnecting
    async def retry_job(
        self,
        job: ClaimedJob,
        *,
        attempts: int,
        delay: float,
        error: str,
        alarm_state: str | None = None,
        keep_for: float | None = None,
    ) -> None:
        """Record a failed try; the next one is due after ``delay``. With ``keep_for`` the
        worker keeps its claim (through the delay and ``keep_for`` seconds more) and tries
        again itself, so the campus' later alarms wait behind this one; without, the job is
        given back. With ``alarm_state`` the alarm moves on (note: ``error``) in the same
        transaction."""
        ts = now()
        t = _T_JOBS
        due = ts + timedelta(seconds=delay)
        claim: dict[str, Any] = (
            {"claimed_until": due + timedelta(seconds=keep_for)}
            if keep_for is not None
            else {"claimed_by": None, "claimed_until": None}
        )
        async with self.engine.begin() as conn:
            await conn.execute(
                update(t)
                .where(t.c.alarm_id == job.alarm_id, t.c.sink == job.sink)
                .values(attempts=attempts, last_error=error, next_at=due, **claim)
            )
            found = False
            if alarm_state is not None:
                found, _ = await self._move_alarm(conn, job.alarm_id, alarm_state, ts, note=error)
        if found and alarm_state is not None:
            self._alarm_changed(job.alarm_id, alarm_state)

    @_shielded
    async def pending_jobs(self) -> int:
        async with self.session() as s:
            rows = (
                await s.execute(select(RelayJob.alarm_id).where(RelayJob.state == "pending"))
            ).all()
            return len(rows)

    # --- inbox: campuses that fell behind (gateway/lanes.py) ------------------------------

    @_shielded
    @_reconnecting
    async def spool(
        self, messages: Sequence[tuple[str, str, bytes]], owner: str, lease: float = 30.0
    ) -> None:
        """Keep ``(campus, topic, payload)`` messages, in this order, in one transaction."""
        if not messages:
            return
        ts = now()
        rows = [
            {
                "campus": campus,
                "topic": topic,
                "payload": payload,
                "owner": owner,
                "lease_until": ts + timedelta(seconds=lease),
                "received_at": ts,
            }
            for campus, topic, payload in messages
        ]
        async with self.engine.begin() as conn:
            await conn.execute(insert(InboxRow), rows)

    @_shielded
    @_reconnecting
    async def spooled(self, campus: str, owner: str, limit: int) -> list[tuple[int, str, bytes]]:
        """The oldest kept messages of ``campus`` that ``owner`` handles (id, topic, payload)."""
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(InboxRow.id, InboxRow.topic, InboxRow.payload)
                .where(InboxRow.campus == campus, InboxRow.owner == owner)
                .order_by(InboxRow.id)
                .limit(limit)
            )
            return [(int(r[0]), str(r[1]), bytes(r[2])) for r in rows]

    @_shielded
    @_reconnecting
    async def unspool(self, ids: Sequence[int]) -> None:
        """Handled: forget them."""
        if not ids:
            return
        async with self.engine.begin() as conn:
            await conn.execute(delete(InboxRow).where(InboxRow.id.in_(list(ids))))

    @_shielded
    @_reconnecting
    async def spool_counts(self, owner: str) -> dict[str, int]:
        """How many kept messages ``owner`` has per campus."""
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(InboxRow.campus, func.count())
                .where(InboxRow.owner == owner)
                .group_by(InboxRow.campus)
            )
            return {str(r[0]): int(r[1]) for r in rows}

    @_shielded
    @_reconnecting
    async def renew_spool(self, owner: str, lease: float = 30.0) -> dict[str, int]:
        """Renew ``owner``'s lease on its kept messages and take over those of gateways whose
        lease ran out (stopped or dead). Returns the count taken over per campus."""
        ts = now()
        until = ts + timedelta(seconds=lease)
        async with self.engine.begin() as conn:
            await conn.execute(
                update(InboxRow).where(InboxRow.owner == owner).values(lease_until=until)
            )
            taken = await conn.execute(
                update(InboxRow)
                .where(InboxRow.lease_until < ts)
                .values(owner=owner, lease_until=until)
                .returning(InboxRow.campus)
            )
            counts: dict[str, int] = {}
            for (campus,) in taken:
                counts[str(campus)] = counts.get(str(campus), 0) + 1
            return counts

    # --- downlink to campuses -------------------------------------------------------------

    @_shielded
    @_reconnecting
    async def unpublished_steps(self, limit: int = 100) -> list[AlarmStep]:
        async with self.session() as s:
            rows = (
                await s.execute(
                    select(AlarmStep)
                    .where(AlarmStep.published.is_(False))
                    .order_by(AlarmStep.id)
                    .limit(limit)
                )
            ).scalars()
            return list(rows)

    @_shielded
    @_reconnecting
    async def mark_published(self, ids: list[int]) -> None:
        if not ids:
            return
        async with self.session() as s, s.begin():
            await s.execute(update(AlarmStep).where(AlarmStep.id.in_(ids)).values(published=True))

    # --- commands (audit) -----------------------------------------------------------------

    @_shielded
    async def record_command(self, row: CommandRow) -> None:
        async with self.session() as s, s.begin():
            existing = await s.get(CommandRow, row.id)
            if existing is None:
                s.add(row)
            else:  # a confirm step of an armed command: same id, the later request
                existing.state, existing.updated_at = row.state, row.updated_at
                existing.code, existing.detail = row.code, row.detail

    @_shielded
    async def command_progress(self, event: Event) -> None:
        """A ``bollard_command`` event from the edge moves its command on."""
        d = event.detail
        cid = d.get("command_id")
        if not isinstance(cid, str) or len(cid) != 26:
            return
        async with self.session() as s, s.begin():
            row = await s.get(CommandRow, cid)
            if row is None:  # sent by another tool (the CLI): audit it all the same
                row = CommandRow(
                    id=cid,
                    campus=event.campus,
                    device=event.device,
                    bollard=b if isinstance(b := d.get("bollard"), int) else 0,
                    action=str(d.get("command") or "") or None,
                    user=str(d.get("user") or "?")[:64],
                    role=str(d.get("role") or "?")[:32],
                    reason=str(d.get("reason") or ""),
                    issued_at=event.ts,
                    state="sent",
                    code=None,
                    detail="",
                    token=None,
                    updated_at=event.ts,
                )
                s.add(row)
            row.state = str(d.get("outcome") or row.state)
            if d.get("code"):
                row.code = str(d["code"])[:32]
            if row.state == "done":
                row.detail = f"position {d.get('position')} after {d.get('elapsed_s')} s"
            else:
                row.detail = str(d.get("reason") or "")[:500]
            if d.get("token"):
                row.token = str(d["token"])[:128]
            row.updated_at = now()

    @_shielded
    async def command(self, command_id: str) -> CommandRow | None:
        async with self.session() as s:
            return await s.get(CommandRow, command_id)

    @_shielded
    async def commands(self, campus: str | None = None, limit: int = 100) -> list[CommandRow]:
        async with self.session() as s:
            q = select(CommandRow).order_by(CommandRow.issued_at.desc()).limit(limit)
            if campus:
                q = q.where(CommandRow.campus == campus)
            return list((await s.execute(q)).scalars())

    # --- evidence -------------------------------------------------------------------------

    @_shielded
    async def add_evidence(self, row: EvidenceRow) -> bool:
        """Store a snapshot's record once; False if it was already there (a resend)."""
        async with self.session() as s:
            try:
                async with s.begin():
                    if await s.get(EvidenceRow, row.id) is not None:
                        return False
                    s.add(row)
            except IntegrityError:  # another gateway stored it at the same moment
                return False
            return True

    @_shielded
    async def evidence_for(self, alarm_id: str) -> list[EvidenceRow]:
        async with self.session() as s:
            q = (
                select(EvidenceRow)
                .where(EvidenceRow.event_id == alarm_id)
                .order_by(EvidenceRow.camera, EvidenceRow.shot)
            )
            return list((await s.execute(q)).scalars())

    @_shielded
    async def evidence(self, evidence_id: str) -> EvidenceRow | None:
        async with self.session() as s:
            return await s.get(EvidenceRow, evidence_id)

    @_shielded
    async def expire_evidence(self, taken_before: datetime, limit: int = 1000) -> list[EvidenceRow]:
        """Remove up to ``limit`` records of pictures taken before the cutoff; the caller
        deletes their files (a file left by a crash in between is swept by age). Clips have
        their own retention (:meth:`expire_clips`)."""
        async with self.session() as s, s.begin():
            rows = list(
                (
                    await s.execute(
                        select(EvidenceRow)
                        .where(
                            EvidenceRow.taken_at < taken_before, EvidenceRow.clip_start.is_(None)
                        )
                        .order_by(EvidenceRow.taken_at)
                        .limit(limit)
                    )
                ).scalars()
            )
            if rows:
                await s.execute(delete(EvidenceRow).where(EvidenceRow.id.in_([r.id for r in rows])))
            return rows

    @_shielded
    async def expire_clips(
        self, ordinary_before: datetime, key_point_before: datetime, limit: int = 1000
    ) -> list[EvidenceRow]:
        """Remove up to ``limit`` records of video clips past their retention (key points have
        their own), never those of an alarm still open; the caller deletes the files."""
        open_alarms = select(AlarmRow.id).where(AlarmRow.state != "closed")
        async with self.session() as s, s.begin():
            rows = list(
                (
                    await s.execute(
                        select(EvidenceRow)
                        .where(
                            EvidenceRow.clip_start.is_not(None),
                            or_(
                                and_(
                                    EvidenceRow.key_point.is_(False),
                                    EvidenceRow.taken_at < ordinary_before,
                                ),
                                EvidenceRow.taken_at < key_point_before,
                            ),
                            EvidenceRow.event_id.not_in(open_alarms),
                        )
                        .order_by(EvidenceRow.taken_at)
                        .limit(limit)
                    )
                ).scalars()
            )
            if rows:
                await s.execute(delete(EvidenceRow).where(EvidenceRow.id.in_([r.id for r in rows])))
            return rows

    @_shielded
    async def expire_records(
        self, before: datetime, limit: int = 1000
    ) -> tuple[int, int, list[EvidenceRow]]:
        """Alarm and fault records past their retention: up to ``limit`` closed alarms received
        before the cutoff (with their steps and evidence records) and up to ``limit`` events
        before it; never an alarm still open nor its event. Returns (alarms, events, evidence
        rows whose files the caller deletes)."""
        async with self.session() as s, s.begin():
            ids = list(
                (
                    await s.execute(
                        select(AlarmRow.id)
                        .where(AlarmRow.received_at < before, AlarmRow.state == "closed")
                        .order_by(AlarmRow.received_at)
                        .limit(limit)
                    )
                ).scalars()
            )
            gone: list[EvidenceRow] = []
            if ids:
                gone = list(
                    (await s.execute(select(EvidenceRow).where(EvidenceRow.event_id.in_(ids))))
                    .scalars()
                    .all()
                )
                await s.execute(delete(EvidenceRow).where(EvidenceRow.event_id.in_(ids)))
                await s.execute(delete(AlarmStep).where(AlarmStep.alarm_id.in_(ids)))
                await s.execute(delete(AlarmRow).where(AlarmRow.id.in_(ids)))
            open_alarms = select(AlarmRow.id).where(AlarmRow.state != "closed")
            events = list(
                (
                    await s.execute(
                        select(EventRow.id)
                        .where(EventRow.received_at < before, EventRow.id.not_in(open_alarms))
                        .order_by(EventRow.received_at)
                        .limit(limit)
                    )
                ).scalars()
            )
            if events:
                await s.execute(delete(EventRow).where(EventRow.id.in_(events)))
            return len(ids), len(events), gone

    # --- uptime -----------------------------------------------------------------------------

    @_shielded
    async def uptime_inputs(
        self, start: datetime, end: datetime, campuses: list[str] | None
    ) -> tuple[list[Any], list[Any], list[Any]]:
        """What an availability report over ``[start, end)`` needs, in one read: plain rows
        (attribute access by column name), not ORM objects: a district month is tens of
        thousands of outages, and identity-mapped objects would cost more than the report."""
        async with self.session() as s:
            seen_q = select(
                DeviceSeen.campus, DeviceSeen.device, DeviceSeen.kind, DeviceSeen.first_seen
            ).where(DeviceSeen.first_seen < end)
            out_q = select(
                OutageRow.campus, OutageRow.device, OutageRow.start, OutageRow.end, OutageRow.cause
            ).where(OutageRow.start < end, or_(OutageRow.end.is_(None), OutageRow.end > start))
            mw_q = select(
                MaintenanceRow.campus,
                MaintenanceRow.device,
                MaintenanceRow.start,
                MaintenanceRow.end,
            ).where(
                MaintenanceRow.start < end,
                or_(MaintenanceRow.end.is_(None), MaintenanceRow.end > start),
            )
            if campuses is not None:
                seen_q = seen_q.where(DeviceSeen.campus.in_(campuses))
                out_q = out_q.where(OutageRow.campus.in_(campuses))
                mw_q = mw_q.where(MaintenanceRow.campus.in_(campuses))
            seen = list((await s.execute(seen_q)).all())
            outages = list((await s.execute(out_q)).all())
            windows = list((await s.execute(mw_q)).all())
            return seen, outages, windows

    @_shielded
    async def add_maintenance(self, row: MaintenanceRow) -> MaintenanceRow:
        async with self.session() as s, s.begin():
            s.add(row)
        return row

    @_shielded
    async def end_maintenance(self, window_id: int, at: datetime) -> MaintenanceRow | None:
        async with self.session() as s, s.begin():
            row = await s.get(MaintenanceRow, window_id)
            if row is not None and (row.end is None or aware(row.end) > at):  # type: ignore[operator]
                row.end = max(at, aware(row.start) or at)
            return row

    @_shielded
    async def maintenance(
        self, campuses: list[str] | None = None, limit: int = 200
    ) -> list[MaintenanceRow]:
        async with self.session() as s:
            q = select(MaintenanceRow).order_by(MaintenanceRow.start.desc()).limit(limit)
            if campuses is not None:
                q = q.where(MaintenanceRow.campus.in_(campuses))
            return list((await s.execute(q)).scalars())

    @_shielded
    async def alarms_between(
        self, start: datetime, end: datetime, campuses: list[str] | None
    ) -> list[AlarmRow]:
        async with self.session() as s:
            q = select(AlarmRow).where(AlarmRow.edge_ts >= start, AlarmRow.edge_ts < end)
            if campuses is not None:
                q = q.where(AlarmRow.campus.in_(campuses))
            return list((await s.execute(q)).scalars())

    # --- embedded telemetry -------------------------------------------------------------------

    @_shielded
    async def add_telemetry(self, rows: Sequence[dict[str, Any]]) -> None:
        """Samples as ``telemetry`` rows (column -> value; no id): one Core bulk insert."""
        if not rows:
            return
        async with self.engine.begin() as conn:
            await conn.execute(insert(cast(Table, TelemetryRow.__table__)), list(rows))

    @_shielded
    async def telemetry(
        self, campus: str, device: str, start: datetime, end: datetime, limit: int = 10000
    ) -> list[TelemetryRow]:
        async with self.session() as s:
            q = (
                select(TelemetryRow)
                .where(
                    TelemetryRow.campus == campus,
                    TelemetryRow.device == device,
                    TelemetryRow.ts >= start,
                    TelemetryRow.ts < end,
                )
                .order_by(TelemetryRow.ts)
                .limit(limit)
            )
            return list((await s.execute(q)).scalars())

    @_shielded
    async def expire_telemetry(self, before: datetime) -> int:
        async with self.session() as s, s.begin():
            res = await s.execute(delete(TelemetryRow).where(TelemetryRow.ts < before))
            return int(res.rowcount or 0)  # type: ignore[attr-defined]

    # --- drills ---------------------------------------------------------------------------

    @_shielded
    async def add_drill(self, row: DrillRow) -> DrillRow:
        async with self.session() as s, s.begin():
            s.add(row)
        return row

    @_shielded
    async def drill(self, drill_id: str) -> DrillRow | None:
        async with self.session() as s:
            return await s.get(DrillRow, drill_id)

    @_shielded
    async def drills(
        self, campuses: list[str] | None, state: str | None = None, limit: int = 200
    ) -> list[DrillRow]:
        async with self.session() as s:
            q = select(DrillRow).order_by(DrillRow.planned_start.desc()).limit(limit)
            if campuses is not None:
                q = q.where(DrillRow.campus.in_(campuses))
            if state is not None:
                q = q.where(DrillRow.state == state)
            return list((await s.execute(q)).scalars())

    @_shielded
    async def drill_conflicts(self, campus: str, start: datetime, end: datetime) -> list[DrillRow]:
        """Running or scheduled drills of the campus whose time overlaps ``[start, end)``."""
        async with self.session() as s:
            q = select(DrillRow).where(
                DrillRow.campus == campus, DrillRow.state.in_(("running", "scheduled"))
            )
            out = []
            for row in (await s.execute(q)).scalars():
                lo = aware(row.actual_start) or aware(row.planned_start)
                hi = aware(row.planned_end)
                assert lo is not None
                assert hi is not None
                if lo < end and start < hi:
                    out.append(row)
            return out

    @_shielded
    async def drill_transition(
        self, drill_id: str, from_states: tuple[str, ...], **values: Any
    ) -> DrillRow | None:
        """Move a drill on only if it is in one of ``from_states`` (several gateways may race
        for a scheduled drill: one wins); returns the row, or None if it was not."""
        async with self.session() as s, s.begin():
            res = await s.execute(
                update(DrillRow)
                .where(DrillRow.id == drill_id, DrillRow.state.in_(from_states))
                .values(**values)
            )
            if res.rowcount != 1:  # type: ignore[attr-defined]
                return None
            return await s.get(DrillRow, drill_id, populate_existing=True)

    @_shielded
    async def due_drills(self, at: datetime) -> list[DrillRow]:
        async with self.session() as s:
            q = select(DrillRow).where(DrillRow.state == "scheduled", DrillRow.planned_start <= at)
            return list((await s.execute(q)).scalars())

    @_shielded
    async def next_drill_start(self) -> datetime | None:
        async with self.session() as s:
            q = select(func.min(DrillRow.planned_start)).where(DrillRow.state == "scheduled")
            return aware((await s.execute(q)).scalar())

    @_shielded
    async def requested_drills(self) -> list[DrillRow]:
        """Drills sent to a campus whose start the campus has not reported yet."""
        async with self.session() as s:
            q = select(DrillRow).where(DrillRow.state == "running", DrillRow.actual_start.is_(None))
            return list((await s.execute(q)).scalars())

    @_shielded
    async def drill_event(self, event: Event) -> DrillRow | None:
        """A campus' ``drill`` event: the drill began (the edge's time is the actual start)
        or ended (restore). A drill the centre does not know (started at the campus console)
        gets its record here. Idempotent: a repeated event changes nothing more."""
        d = event.detail
        drill_id = d.get("drill_id")
        if not isinstance(drill_id, str) or len(drill_id) != 26:
            return None

        def when(key: str) -> datetime | None:
            value = d.get(key)
            if not isinstance(value, str) or not value:
                return None
            try:
                return aware(datetime.fromisoformat(value))
            except ValueError:
                return None

        kind = str(d.get("drill_kind") or "other")
        if kind not in ("fire", "earthquake", "stampede", "intruder", "other"):
            kind = "other"
        by = str(d.get("by") or "?")[:64]
        source = str(d.get("source") or "")
        ts = now()
        async with self.session() as s, s.begin():
            row = await s.get(DrillRow, drill_id)
            if row is not None and row.campus != event.campus:
                return None
            if row is None:
                started = event.ts if not event.restore else (when("started_at") or event.ts)
                row = DrillRow(
                    id=drill_id,
                    campus=event.campus,
                    kind=kind,
                    state="running",
                    source=source if source in ("api", "cli", "console", "schedule") else "console",
                    planned_start=started,
                    planned_end=when("planned_end") or started,
                    actual_start=started,
                    actual_end=None,
                    started_by=by if not event.restore else "?",
                    ended_by=None,
                    end_reason="",
                    notes=str(d.get("note") or "")[:500],
                    alarms=0,
                    created_at=ts,
                )
                s.add(row)
            if not event.restore:
                if row.state != "ended":
                    if row.state != "running" or row.actual_start is None:
                        row.actual_start = event.ts
                    row.state, row.ended_by, row.end_reason = "running", None, ""
                # The campus runs this one: a drill the centre asked for meanwhile never started.
                others = await s.execute(
                    select(DrillRow).where(
                        DrillRow.campus == event.campus,
                        DrillRow.state == "running",
                        DrillRow.actual_start.is_(None),
                        DrillRow.id != drill_id,
                    )
                )
                for other in others.scalars():
                    other.state = "cancelled"
                    other.end_reason = f"not started: the campus was running drill {drill_id}"
            else:
                if row.actual_start is None:
                    row.actual_start = when("started_at") or event.ts
                row.state, row.actual_end = "ended", event.ts
                row.ended_by, row.end_reason = by, str(d.get("reason") or "")[:500]
                row.alarms = int(
                    (
                        await s.execute(
                            select(func.count())
                            .select_from(AlarmRow)
                            .where(
                                AlarmRow.campus == event.campus,
                                AlarmRow.drill.is_(True),
                                AlarmRow.edge_ts >= row.actual_start,
                                AlarmRow.edge_ts <= event.ts,
                            )
                        )
                    ).scalar()
                    or 0
                )
            return row

    @_shielded
    async def drill_compliance_inputs(
        self, campuses: list[str], since: datetime
    ) -> tuple[dict[str, DrillRow], list[DrillRow], dict[str, datetime]]:
        """For the compliance view: each campus' last ended drill, the drills ended since
        ``since``, and when the centre first heard from each campus' edge."""
        async with self.session() as s:
            ended = (DrillRow.state == "ended", DrillRow.campus.in_(campuses))
            last_q = (
                select(DrillRow.campus, func.max(DrillRow.actual_end))
                .where(*ended)
                .group_by(DrillRow.campus)
            )
            last: dict[str, DrillRow] = {}
            for campus, at in (await s.execute(last_q)).all():
                row = (
                    await s.execute(
                        select(DrillRow)
                        .where(*ended, DrillRow.campus == campus, DrillRow.actual_end == at)
                        .limit(1)
                    )
                ).scalar()
                if row is not None:
                    last[campus] = row
            recent_q = select(DrillRow).where(*ended, DrillRow.actual_end >= since)
            recent = list((await s.execute(recent_q)).scalars())
            seen_q = (
                select(DeviceSeen.campus, func.min(DeviceSeen.first_seen))
                .where(DeviceSeen.campus.in_(campuses), DeviceSeen.kind == "edge")
                .group_by(DeviceSeen.campus)
            )
            seen = {c: aware(t) for c, t in (await s.execute(seen_q)).all()}
            return last, recent, {c: t for c, t in seen.items() if t is not None}

    # --- queries --------------------------------------------------------------------------

    @_shielded
    async def event(self, event_id: str) -> Event | None:
        """An event as it was received (its stored payload)."""
        async with self.session() as s:
            row = await s.get(EventRow, event_id)
            return None if row is None else Event.model_validate(row.payload)

    @_shielded
    async def alarms(self, campus: str | None = None, limit: int = 100) -> list[AlarmRow]:
        async with self.session() as s:
            q = select(AlarmRow).order_by(AlarmRow.received_at.desc()).limit(limit)
            if campus:
                q = q.where(AlarmRow.campus == campus)
            return list((await s.execute(q)).scalars())

    @_shielded
    async def alarm(self, alarm_id: str) -> tuple[AlarmRow, list[AlarmStep]] | None:
        async with self.session() as s:
            row = await s.get(AlarmRow, alarm_id)
            if row is None:
                return None
            steps = (
                await s.execute(
                    select(AlarmStep).where(AlarmStep.alarm_id == alarm_id).order_by(AlarmStep.id)
                )
            ).scalars()
            return row, list(steps)

    @_shielded
    async def devices(self, campus: str | None = None) -> list[DeviceStatusRow]:
        async with self.session() as s:
            q = select(DeviceStatusRow).order_by(
                DeviceStatusRow.online, DeviceStatusRow.campus, DeviceStatusRow.device
            )
            if campus:
                q = q.where(DeviceStatusRow.campus == campus)
            return list((await s.execute(q)).scalars())

    @_shielded
    async def edges(self) -> list[EdgeStateRow]:
        async with self.session() as s:
            return list((await s.execute(select(EdgeStateRow))).scalars())
