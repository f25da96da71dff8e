"""Operations on the store. Each public coroutine is one transaction."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, ParamSpec, TypeVar

from sqlalchemy import and_, delete, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

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
class ClaimedJob:
    alarm_id: str
    sink: str
    attempts: int
    seq: int | None
    event: Event


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


class Store:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.session = async_sessionmaker(engine, expire_on_commit=False)
        self._inflight: set[asyncio.Future[Any]] = set()

    async def drain(self) -> None:
        """Wait for operations whose callers were cancelled (call before disposing the engine)."""
        if self._inflight:
            await asyncio.gather(*self._inflight, return_exceptions=True)

    # --- ingest ---------------------------------------------------------------------------

    @_shielded
    async def ingest_event(
        self, event: Event, relay_to: list[str], worker: str, lease: float = 30.0
    ) -> tuple[bool, list[ClaimedJob]]:
        """Store an event once; for an alarm also its record and relay jobs.

        Returns ``(new, jobs)``. The jobs come back already claimed by ``worker`` with their
        sequence numbers fixed, in the same transaction, so the relay can send at once without
        another round trip to the database (the fast path of press-to-police).
        """
        # An IntegrityError rolls the whole transaction back. Either another gateway stored
        # this event between our check and our insert (a repeat: done), or two gateways both
        # created a row that did not exist yet (a sink's first sequence counter, issue 12):
        # then nothing of this event is stored and it must be tried again, or the alarm would
        # be acknowledged, receipted and lost.
        for _attempt in range(5):
            ts = now()
            jobs: list[ClaimedJob] = []
            async with self.session() as s:
                try:
                    async with s.begin():
                        if await s.get(EventRow, event.id) is not None:
                            return False, []
                        s.add(
                            EventRow(
                                id=event.id,
                                campus=event.campus,
                                edge=event.edge,
                                seq=event.seq,
                                kind=event.kind,
                                severity=event.severity,
                                device=event.device,
                                point=event.point,
                                zone=event.zone,
                                restore=event.restore,
                                drill=event.drill,
                                edge_ts=event.ts,
                                received_at=ts,
                                payload=event.model_dump(mode="json"),
                            )
                        )
                        if _gets_alarm_record(event) and not event.restore:
                            s.add(
                                AlarmRow(
                                    id=event.id,
                                    campus=event.campus,
                                    kind=event.kind,
                                    severity=event.severity,
                                    device=event.device,
                                    point=event.point,
                                    zone=event.zone,
                                    location=event.location,
                                    lat=event.geo.lat if event.geo else None,
                                    lon=event.geo.lon if event.geo else None,
                                    restore=event.restore,
                                    drill=event.drill,
                                    text=event.text,
                                    edge_ts=event.ts,
                                    received_at=ts,
                                    state="received",
                                )
                            )
                            s.add(self._step(event.id, event.campus, "received", ts))
                        for sink in relay_to:
                            seq = await self._next_seq(s, sink)
                            s.add(
                                RelayJob(
                                    alarm_id=event.id,
                                    sink=sink,
                                    state="pending",
                                    priority=0 if event.severity == "critical" else 1,
                                    attempts=0,
                                    seq=seq,
                                    next_at=ts,
                                    claimed_by=worker,
                                    claimed_until=ts + timedelta(seconds=lease),
                                    created_at=ts,
                                )
                            )
                            jobs.append(ClaimedJob(event.id, sink, 0, seq, event))
                except IntegrityError:
                    pass
                else:
                    return True, jobs
            async with self.session() as s:
                if await s.get(EventRow, event.id) is not None:
                    return False, []
            log.warning("storing event %s collided with another gateway; trying again", event.id)
        raise RuntimeError(f"event {event.id}: could not be stored after 5 attempts")

    @staticmethod
    async def _next_seq(s: AsyncSession, sink: str, modulo: int = 9999) -> int:
        counter = await s.get(RelayCounter, sink, with_for_update=True)
        if counter is None:
            counter = RelayCounter(sink=sink, value=0)
            s.add(counter)
        counter.value = counter.value % modulo + 1
        return counter.value

    @staticmethod
    def _step(
        alarm_id: str,
        campus: str,
        state: str,
        ts: datetime,
        path: str | None = None,
        note: str = "",
    ) -> AlarmStep:
        return AlarmStep(
            alarm_id=alarm_id,
            campus=campus,
            state=state,
            ts=ts,
            path=path,
            note=note,
            published=False,
        )

    @_shielded
    async def set_alarm_state(
        self, alarm_id: str, state: str, *, path: str | None = None, note: str = ""
    ) -> bool:
        """Move an alarm on and add the step to its timeline (sent back to the campus)."""
        ts = now()
        async with self.session() as s, s.begin():
            alarm = await s.get(AlarmRow, alarm_id)
            if alarm is None:
                return False
            if state in ("police_received", "police_rejected"):
                alarm.police_path = path
                alarm.police_at = ts
            if state == "guard_acknowledged":
                alarm.guard_ack_at = ts
            if state == "closed":
                alarm.closed_at = ts
            alarm.state = state
            s.add(self._step(alarm_id, alarm.campus, state, ts, path, note))
        return True

    @_shielded
    async def upsert_device_status(self, st: DeviceStatus) -> None:
        async with self.session() as s, s.begin():
            row = await s.get(DeviceStatusRow, (st.campus, st.device))
            if row is not None and aware(row.ts) is not None and aware(row.ts) > st.ts:  # type: ignore[operator]
                return  # an older retained message arriving late
            values: dict[str, Any] = {
                "online": st.online,
                "ts": st.ts,
                "last_response": st.last_response,
                "latency_ms": st.latency_ms,
                "error": st.error,
                "points": dict(st.points),
            }
            before = None if row is None else row.online
            if row is None:
                s.add(DeviceStatusRow(campus=st.campus, device=st.device, **values))
            else:
                for k, v in values.items():
                    setattr(row, k, v)
            await self._availability(
                s, st.campus, st.device, "device", before, st.online, st.ts, st.error or ""
            )

    @_shielded
    async def upsert_edge_state(self, st: EdgeState) -> bool | None:
        """Store the edge's state; returns what it was before (None if never seen)."""
        async with self.session() as s, s.begin():
            row = await s.get(EdgeStateRow, (st.campus, st.edge))
            before = None if row is None else row.online
            if row is not None and (ts := aware(row.ts)) is not None and ts > st.ts:
                return before  # older than what we have
            if row is None:
                s.add(
                    EdgeStateRow(
                        campus=st.campus,
                        edge=st.edge,
                        online=st.online,
                        ts=st.ts,
                        version=st.version,
                        reason=st.reason,
                    )
                )
            else:
                row.online, row.ts, row.version, row.reason = (
                    st.online,
                    st.ts,
                    st.version,
                    st.reason,
                )
            await self._availability(
                s, st.campus, st.edge, "edge", before, st.online, st.ts, st.reason or "offline"
            )
        return before

    @staticmethod
    async def _availability(
        s: AsyncSession,
        campus: str,
        device: str,
        kind: str,
        before: bool | None,
        online: bool,
        ts: datetime,
        cause: str,
    ) -> None:
        """Keep the outage record in step with a status change (same transaction)."""
        if before is None and await s.get(DeviceSeen, (campus, device)) is None:
            s.add(DeviceSeen(campus=campus, device=device, kind=kind, first_seen=ts))
        if online == before:
            return
        open_q = select(OutageRow).where(
            OutageRow.campus == campus, OutageRow.device == device, OutageRow.end.is_(None)
        )
        open_rows = list((await s.execute(open_q)).scalars())
        if not online and not open_rows:
            s.add(OutageRow(campus=campus, device=device, kind=kind, start=ts, cause=cause[:500]))
        elif online:
            for o in open_rows:
                start = aware(o.start)
                o.end = ts if start is None or ts >= start else start

    # --- relay queue ----------------------------------------------------------------------

    @_shielded
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
    async def assign_seq(self, job: ClaimedJob, modulo: int = 9999) -> int:
        """Fix the job's protocol sequence number before its first send (see RelayJob)."""
        async with self.session() as s, s.begin():
            row = await s.get(RelayJob, (job.alarm_id, job.sink))
            assert row is not None
            if row.seq is None:
                row.seq = await self._next_seq(s, job.sink, modulo)
            return row.seq

    @_shielded
    async def finish_job(
        self, job: ClaimedJob, state: str, *, attempts: int, error: str | None = None
    ) -> None:
        async with self.session() as s, s.begin():
            await s.execute(
                update(RelayJob)
                .where(RelayJob.alarm_id == job.alarm_id, RelayJob.sink == job.sink)
                .values(
                    state=state,
                    attempts=attempts,
                    last_error=error,
                    claimed_by=None,
                    claimed_until=None,
                )
            )

    @_shielded
    async def retry_job(self, job: ClaimedJob, *, attempts: int, delay: float, error: str) -> None:
        async with self.session() as s, s.begin():
            await s.execute(
                update(RelayJob)
                .where(RelayJob.alarm_id == job.alarm_id, RelayJob.sink == job.sink)
                .values(
                    attempts=attempts,
                    last_error=error,
                    next_at=now() + timedelta(seconds=delay),
                    claimed_by=None,
                    claimed_until=None,
                )
            )

    @_shielded
    async def pending_jobs(self) -> int:
        async with self.session() as s:
            rows = (
                await s.execute(select(RelayJob.alarm_id).where(RelayJob.state == "pending"))
            ).all()
            return len(rows)

    # --- downlink to campuses -------------------------------------------------------------

    @_shielded
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
        deletes their files (a file left by a crash in between is swept by age)."""
        async with self.session() as s, s.begin():
            rows = list(
                (
                    await s.execute(
                        select(EvidenceRow)
                        .where(EvidenceRow.taken_at < taken_before)
                        .order_by(EvidenceRow.taken_at)
                        .limit(limit)
                    )
                ).scalars()
            )
            if rows:
                await s.execute(delete(EvidenceRow).where(EvidenceRow.id.in_([r.id for r in rows])))
            return rows

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
    async def add_telemetry(self, rows: list[TelemetryRow]) -> None:
        async with self.session() as s, s.begin():
            s.add_all(rows)

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
