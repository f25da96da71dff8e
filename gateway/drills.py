"""Drills at the centre: start, end, schedule, the records, and the compliance view.

A drill is a :class:`~gateway.store.models.DrillRow`. Started now (API, CLI) it is ``running``
at once and a ``DrillCommand`` goes down to the campus (MQTT QoS 1, persistent session: an
offline edge gets it when it is back); until the edge reports it (a ``drill`` event) the record
is *requested* (``actual_start`` empty), and its actual start is the edge's time. Scheduled, it
waits in the database (``scheduled``) and the scheduler here starts it at ``planned_start``, so
a gateway restart in between changes nothing. The edge ends it (a command, its console, or its
planned end) and reports the end; the record then gets its actual end, who ended it, why, and
the number of drill alarms the campus raised meanwhile.

**Compliance** (``monthly`` / ``quarterly`` calendar periods in ``telemetry.report_timezone``, or
``<N>d`` rolling days, per campus type): a campus is due by the end of the period *after* the
one of its last drill (its actual end), and overdue once that moment has passed. A campus never
drilled is due by the end of the period in which the centre first heard from its edge (or the
current period if never), so a campus that never drills does become overdue. For ``<N>d`` the
due time is the last drill (or first contact) plus N days.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import html
import io
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from contract import topics
from contract.config import GatewayConfig
from contract.models import DrillCommand, DrillKind, Event, new_id, utcnow
from gateway.reports import _PAGE, _table
from gateway.store.models import DrillRow
from gateway.store.repo import Store, aware

log = logging.getLogger(__name__)

Publish = Callable[[str, bytes], Awaitable[None]]

MAX_WAIT = 30.0
"""The scheduler looks at the database at least this often (another gateway may have
scheduled a drill)."""


async def _not_connected(topic: str, payload: bytes) -> None:
    raise ConnectionError("the gateway is still starting")


class DrillError(Exception):
    """A drill request that cannot be done; ``status`` is the HTTP status that fits."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def describe(row: DrillRow) -> str:
    start = aware(row.actual_start) or aware(row.planned_start)
    until = aware(row.planned_end)
    state = status_of(row)
    return (
        f"drill {row.id} ({row.kind}, {state}, by {row.started_by}, "
        f"{start:%Y-%m-%d %H:%M:%S} – {until:%H:%M:%S} UTC)"
    )


def status_of(row: DrillRow) -> str:
    """``requested`` is a running drill the campus has not confirmed yet."""
    if row.state == "running" and row.actual_start is None:
        return "requested"
    return row.state


def drill_out(row: DrillRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "campus": row.campus,
        "kind": row.kind,
        "state": row.state,
        "status": status_of(row),
        "source": row.source,
        "planned_start": aware(row.planned_start),
        "planned_end": aware(row.planned_end),
        "actual_start": aware(row.actual_start),
        "actual_end": aware(row.actual_end),
        "started_by": row.started_by,
        "ended_by": row.ended_by,
        "end_reason": row.end_reason,
        "notes": row.notes,
        "alarms": row.alarms,
        "created_at": aware(row.created_at),
    }


class Drills:
    """Drill operations for the API and the CLI, the scheduler, and the edge's reports."""

    def __init__(self, cfg: GatewayConfig, store: Store) -> None:
        self.cfg = cfg
        self.store = store
        self.publish: Publish | None = None  # set once the MQTT side runs
        self.campuses = {c.id: c for c in cfg.campuses}
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._unsent: set[str] = set()

    # --- commands to the campus ------------------------------------------------------------

    async def _send(self, row: DrillRow, action: str, user: str) -> bool:
        msg = DrillCommand(
            id=row.id,
            campus=row.campus,
            action=action,  # type: ignore[arg-type]
            kind=row.kind,  # type: ignore[arg-type]
            planned_end=aware(row.planned_end),
            user=user[:64],
            note=row.notes[:500],
            issued_at=utcnow(),
        )
        publish = self.publish or _not_connected
        try:
            await publish(topics.drill_topic(row.campus), msg.model_dump_json().encode())
        except ConnectionError as exc:
            log.warning("drill %s: %s not sent now (%s); will retry", row.id, action, exc)
            return False
        log.info("drill %s: %s sent to campus %s by %s", row.id, action, row.campus, user)
        return True

    # --- start, schedule, end -------------------------------------------------------------

    async def start(
        self,
        campus: str,
        kind: DrillKind,
        minutes: float | None,
        user: str,
        *,
        source: str = "api",
        note: str = "",
        planned_start: datetime | None = None,
    ) -> DrillRow:
        """Start a drill now, or schedule it for ``planned_start``.

        Raises:
            DrillError: 404 unknown campus, 409 another drill runs or is scheduled in that
                time, 422 a bad length or time.
        """
        if campus not in self.campuses:
            raise DrillError(404, f"no campus {campus}")
        limits = self.cfg.drills
        minutes = limits.default_minutes if minutes is None else minutes
        if not 0 < minutes <= limits.max_minutes:
            raise DrillError(422, f"minutes must be above 0 and at most {limits.max_minutes:g}")
        now = utcnow()
        if planned_start is not None:
            if planned_start.tzinfo is None:
                raise DrillError(422, "planned_start needs a time zone (e.g. +08:00 or Z)")
            planned_start = planned_start.astimezone(UTC)
            if planned_start < now - timedelta(minutes=1):
                raise DrillError(422, "planned_start is in the past")
        scheduled = planned_start is not None and planned_start > now
        begin = planned_start if scheduled and planned_start is not None else now
        end = begin + timedelta(minutes=minutes)
        async with self._lock:
            clash = await self.store.drill_conflicts(campus, begin, end)
            if clash:
                raise DrillError(409, f"campus {campus} already has {describe(clash[0])}")
            row = await self.store.add_drill(
                DrillRow(
                    id=new_id(),
                    campus=campus,
                    kind=kind,
                    state="scheduled" if scheduled else "running",
                    source=source,
                    planned_start=begin,
                    planned_end=end,
                    actual_start=None,
                    actual_end=None,
                    started_by=user[:64],
                    ended_by=None,
                    end_reason="",
                    notes=note[:500],
                    alarms=0,
                    created_at=now,
                )
            )
        if scheduled:
            log.info("drill %s scheduled on %s for %s by %s", row.id, campus, begin, user)
            self._wake.set()
        elif not await self._send(row, "start", user):
            self._unsent.add(row.id)
            self._wake.set()
        return row

    async def end(self, drill_id: str, user: str) -> tuple[DrillRow, bool]:
        """End a running drill (the campus confirms with its end event) or cancel a scheduled
        one. Returns the row and whether the end went to the campus (False: cancelled here).

        Raises:
            DrillError: 404 no such drill, 409 it is over already.
        """
        row = await self.store.drill(drill_id)
        if row is None:
            raise DrillError(404, f"no drill {drill_id}")
        if row.state == "scheduled":
            done = await self.store.drill_transition(
                drill_id,
                ("scheduled",),
                state="cancelled",
                ended_by=user[:64],
                end_reason=f"cancelled by {user} before it began",
            )
            if done is not None:
                log.info("scheduled drill %s cancelled by %s", drill_id, user)
                return done, False
            row = await self.store.drill(drill_id)
            assert row is not None
        if row.state != "running":
            raise DrillError(409, f"drill {drill_id} is {row.state} already")
        self._unsent.discard(drill_id)
        if not await self._send(row, "end", user):
            raise DrillError(503, "cannot reach the campus now (no broker connection)")
        return row, True

    async def on_event(self, event: Event) -> None:
        """A ``drill`` event from a campus (start, or restore = ended)."""
        if event.kind != "drill":
            return
        row = await self.store.drill_event(event)
        if row is None:
            log.warning("drill event %s from %s without a usable drill_id", event.id, event.campus)
            return
        self._unsent.discard(row.id)
        log.info(
            "campus %s reports drill %s %s%s",
            event.campus,
            row.id,
            "ended" if event.restore else "running",
            f" ({row.end_reason}; {row.alarms} drill alarm(s))" if event.restore else "",
        )

    # --- the scheduler --------------------------------------------------------------------

    async def run(self) -> None:
        """Start scheduled drills at their time, resend what could not be sent, and give up
        on requested drills the campus never started before their planned end."""
        # After a restart we cannot know whether a requested drill's command left: send again
        # (the edge ignores a repeat of a drill it runs or has run).
        self._unsent.update(r.id for r in await self.store.requested_drills())
        while True:
            self._wake.clear()
            try:
                await self._tick()
                nxt = await self.store.next_drill_start()
            except Exception:
                log.exception("drill scheduler step failed; trying again")
                nxt = None
            wait = MAX_WAIT
            if nxt is not None:
                wait = min(wait, max(0.0, (nxt - utcnow()).total_seconds()))
            if self._unsent:
                wait = min(wait, 1.0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)

    async def _tick(self) -> None:
        now = utcnow()
        for row in await self.store.due_drills(now):
            if (aware(row.planned_end) or now) <= now:
                await self.store.drill_transition(
                    row.id,
                    ("scheduled",),
                    state="cancelled",
                    end_reason="not started: the gateway was down for its whole planned time",
                )
                log.warning("scheduled drill %s missed its whole time", row.id)
                continue
            started = await self.store.drill_transition(row.id, ("scheduled",), state="running")
            if started is None:
                continue  # another gateway took it
            log.info("scheduled drill %s on %s begins", row.id, row.campus)
            if not await self._send(started, "start", started.started_by):
                self._unsent.add(row.id)
        for row in await self.store.requested_drills():
            end = aware(row.planned_end)
            if end is not None and end <= now:
                self._unsent.discard(row.id)
                await self.store.drill_transition(
                    row.id,
                    ("running",),
                    state="cancelled",
                    end_reason="not started: the campus did not confirm it before its planned end",
                )
                log.warning("drill %s: campus %s never confirmed it", row.id, row.campus)
            elif row.id in self._unsent and await self._send(row, "start", row.started_by):
                self._unsent.discard(row.id)


# --- compliance ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DrillCompliance:
    campus: str
    name: str
    type: str
    required: str  # monthly, quarterly, <N>d
    period: str  # the current period's label
    drills_this_period: int
    last_drill_end: datetime | None
    last_drill_kind: str | None
    next_due: datetime  # the drill must have ended before this moment
    overdue: bool


def period_bounds(freq: str, at: datetime, tz: ZoneInfo) -> tuple[datetime, datetime, str]:
    """The calendar period of ``freq`` containing ``at``: [start, end) in UTC and its label.
    For ``<N>d`` the rolling window of the last N days up to ``at``."""
    local = at.astimezone(tz)
    if freq == "monthly":
        first = local.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        nxt = (first + timedelta(days=32)).replace(day=1)
        label = f"{first:%Y-%m}"
    elif freq == "quarterly":
        q = (local.month - 1) // 3
        first = local.replace(month=3 * q + 1, day=1, hour=0, minute=0, second=0, microsecond=0)
        nxt = (first + timedelta(days=100)).replace(day=1)
        label = f"{first:%Y}-Q{q + 1}"
    else:
        days = int(freq.removesuffix("d"))
        return at - timedelta(days=days), at, f"last {days} days"
    # Re-attach the zone after the arithmetic (DST-safe: midnight local time).
    first = first.replace(tzinfo=tz)
    nxt = nxt.replace(tzinfo=tz)
    return first.astimezone(UTC), nxt.astimezone(UTC), label


def due_after(freq: str, last: datetime, tz: ZoneInfo) -> datetime:
    """When the next drill is due after one that ended at ``last`` (or first contact)."""
    if freq.endswith("d"):
        return last + timedelta(days=int(freq.removesuffix("d")))
    _, end, _ = period_bounds(freq, last, tz)
    _, end2, _ = period_bounds(freq, end, tz)
    return end2


def campus_compliance(
    campus: str,
    name: str,
    ctype: str,
    freq: str,
    now: datetime,
    tz: ZoneInfo,
    last: tuple[datetime, str] | None,
    ended: Sequence[datetime],
    first_seen: datetime | None,
) -> DrillCompliance:
    start, end, label = period_bounds(freq, now, tz)
    if last is not None:
        due = due_after(freq, last[0], tz)
    elif first_seen is not None and first_seen < now:
        # Never drilled: due by the end of the period the centre first heard of it in.
        due = (
            first_seen + timedelta(days=int(freq.removesuffix("d")))
            if freq.endswith("d")
            else period_bounds(freq, first_seen, tz)[1]
        )
    else:
        due = end if not freq.endswith("d") else now + timedelta(days=int(freq[:-1]))
    return DrillCompliance(
        campus=campus,
        name=name,
        type=ctype,
        required=freq,
        period=label,
        drills_this_period=sum(1 for t in ended if start <= t < end or (t == end == now)),
        last_drill_end=last[0] if last else None,
        last_drill_kind=last[1] if last else None,
        next_due=due,
        overdue=due <= now,
    )


async def compliance(
    cfg: GatewayConfig, store: Store, campuses: list[str], now: datetime | None = None
) -> list[DrillCompliance]:
    """The compliance view for these campuses (see the module docstring for the rules)."""
    now = now or utcnow()
    tz = ZoneInfo(cfg.telemetry.report_timezone)
    accounts = {c.id: c for c in cfg.campuses}
    freqs = {c: getattr(cfg.drills.frequency, accounts[c].type) for c in campuses}
    since = min((period_bounds(f, now, tz)[0] for f in freqs.values()), default=now)
    last, recent, seen = await store.drill_compliance_inputs(campuses, since)
    out = []
    for c in campuses:
        row = last.get(c)
        end = aware(row.actual_end) if row is not None else None
        out.append(
            campus_compliance(
                c,
                accounts[c].name,
                accounts[c].type,
                freqs[c],
                now,
                tz,
                (end, row.kind) if row is not None and end is not None else None,
                [t for r in recent if r.campus == c and (t := aware(r.actual_end)) is not None],
                seen.get(c),
            )
        )
    return out


def compliance_json(rows: Sequence[DrillCompliance]) -> list[dict[str, Any]]:
    return [
        {
            "campus": r.campus,
            "name": r.name,
            "type": r.type,
            "required": r.required,
            "period": r.period,
            "drills_this_period": r.drills_this_period,
            "last_drill_end": r.last_drill_end,
            "last_drill_kind": r.last_drill_kind,
            "next_due": r.next_due,
            "overdue": r.overdue,
        }
        for r in rows
    ]


def compliance_csv(rows: Sequence[DrillCompliance]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(
        [
            "campus",
            "name",
            "type",
            "required",
            "period",
            "drills_this_period",
            "last_drill_end",
            "last_drill_kind",
            "next_due",
            "overdue",
        ]
    )
    for r in rows:
        w.writerow(
            [
                r.campus,
                r.name,
                r.type,
                r.required,
                r.period,
                r.drills_this_period,
                r.last_drill_end.isoformat() if r.last_drill_end else "",
                r.last_drill_kind or "",
                r.next_due.isoformat(),
                "yes" if r.overdue else "no",
            ]
        )
    return buf.getvalue()


def compliance_html(rows: Sequence[DrillCompliance], tz: ZoneInfo, title: str) -> str:
    def day(ts: datetime | None) -> str:
        return "never" if ts is None else f"{ts.astimezone(tz):%Y-%m-%d %H:%M}"

    def due(r: DrillCompliance) -> str:
        # The due moment is exclusive: show the last day it may still happen on.
        last_day = (r.next_due.astimezone(tz) - timedelta(microseconds=1)).strftime("%Y-%m-%d")
        return f'<span class="bad">overdue since {last_day}</span>' if r.overdue else last_day

    overdue = sum(1 for r in rows if r.overdue)
    body = [
        f"<h1>{html.escape(title)}</h1>",
        f"<p>{len(rows)} campus(es), <b>{overdue} overdue</b>. A drill is due by the end of the "
        "period after the last one; times in "
        f"{html.escape(str(tz))}.</p>",
        _table(
            ["campus", "type", "required", "drills this period", "last drill", "due by"],
            (
                [
                    html.escape(r.name or r.campus),
                    html.escape(r.type),
                    html.escape(r.required),
                    f"{r.drills_this_period} ({html.escape(r.period)})",
                    html.escape(
                        day(r.last_drill_end)
                        + (f" ({r.last_drill_kind})" if r.last_drill_kind else "")
                    ),
                    due(r),
                ]
                for r in sorted(rows, key=lambda r: (not r.overdue, r.next_due, r.campus))
            ),
            numeric_from=3,
        ),
    ]
    return _PAGE.format(lang="en", title=html.escape(title), body="".join(body))
