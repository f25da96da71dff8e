"""Drill mode at the edge: while a drill runs every alarm of the campus is a drill.

A drill starts from the centre (``DrillCommand`` on ``down/drill``) or locally (the guard
console, :meth:`DrillManager.start`). While it runs the event sink marks alarms with
``drill=True`` (so the police get a test code, never a real alarm), except inputs configured
``real_during_drill``. It ends by a command, locally, or by itself at its planned end (a timer
on the steady clock; after a restart the planned end is checked against the wall clock at once).

Start and end are ``drill`` events through the sink like any other event (restore = ended), so
the centre's records follow the campus even across outages. The drill in progress is kept in
the outbox database (written with fsync before the event), so a restarted edge keeps it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta

from contract.config import EdgeConfig
from contract.models import DrillCommand, DrillKind, new_id, utcnow
from edge.events import EventSink
from edge.outbox import Outbox

log = logging.getLogger(__name__)

STATE_KEY = "drill"
RECENT_KEY = "drill_recent"
RECENT_KEEP = 50
"""Ids of finished drills remembered, so a repeated start (QoS 1 may repeat) does not restart
one that already ended."""

DRILL_KINDS: tuple[DrillKind, ...] = ("fire", "earthquake", "stampede", "intruder", "other")


class DrillRefused(Exception):
    """The drill cannot start (another one runs, bad length); the message says why."""


@dataclass
class Drill:
    """The drill in progress, as persisted."""

    id: str
    kind: str
    planned_end: str  # ISO 8601, UTC
    started_by: str
    source: str
    note: str = ""
    started_at: str = ""
    announced: bool = False  # the start event is on disk
    ending: str | None = None  # why it ends, once decided (the end event may still be due)
    ended_by: str | None = None

    @property
    def planned_end_dt(self) -> datetime:
        return datetime.fromisoformat(self.planned_end)


class DrillManager:
    """Starts and ends drills for one campus edge and keeps ``sink.drill`` true while one runs."""

    def __init__(self, cfg: EdgeConfig, sink: EventSink, outbox: Outbox) -> None:
        self._cfg = cfg
        self._sink = sink
        self._outbox = outbox
        self._lock = asyncio.Lock()
        self._changed = asyncio.Event()
        self._current: Drill | None = None
        self._deadline = 0.0  # loop time (steady clock) of the planned end ...
        self._armed: str | None = None  # ... of this drill (None: not armed yet)
        self._recent: list[str] = []

    @property
    def current(self) -> Drill | None:
        """The running drill, or None."""
        return self._current

    @property
    def active(self) -> bool:
        return self._current is not None

    # --- persistence ------------------------------------------------------------------------

    async def _save(self) -> None:
        d = self._current
        await self._outbox.put_value(STATE_KEY, None if d is None else json.dumps(asdict(d)))

    async def restore(self) -> None:
        """At start: take up the drill that was running when the edge stopped. A drill whose
        planned end passed while the edge was down ends at once; one whose start or end event
        was not yet on disk gets it now."""
        recent = await self._outbox.get_value(RECENT_KEY)
        if recent:
            with contextlib.suppress(ValueError, TypeError):
                self._recent = [str(x) for x in json.loads(recent)][-RECENT_KEEP:]
        raw = await self._outbox.get_value(STATE_KEY)
        if raw is None:
            return
        try:
            drill = Drill(**json.loads(raw))
            drill.planned_end_dt  # noqa: B018 - validates the stored time
        except (ValueError, TypeError) as exc:
            log.error("forgetting an unreadable stored drill (%s): %s", exc, raw[:200])
            await self._outbox.put_value(STATE_KEY, None)
            return
        async with self._lock:
            self._current = drill
            self._sink.drill = True
            if not drill.announced:
                await self._announce(drill)
            if drill.ending is not None:
                await self._finish(drill, drill.ended_by or "edge", drill.ending)
                return
            self._arm(drill)
            left = (drill.planned_end_dt - utcnow()).total_seconds()
            log.warning(
                "drill %s (%s) still running after restart; ends in %.0f s",
                drill.id,
                drill.kind,
                max(0.0, left),
            )
            if left <= 0:
                await self._finish(drill, "edge", "planned end reached")

    # --- starting and ending ---------------------------------------------------------------

    async def handle(self, cmd: DrillCommand) -> None:
        """A command from the centre."""
        if cmd.action == "start":
            now = utcnow()
            if cmd.planned_end is not None and cmd.planned_end <= now:
                log.warning(
                    "drill %s not started: its planned end %s has passed (the command waited "
                    "while the campus was offline)",
                    cmd.id,
                    cmd.planned_end.isoformat(),
                )
                return
            minutes = (
                (cmd.planned_end - now).total_seconds() / 60
                if cmd.planned_end is not None
                else self._cfg.drills.default_minutes
            )
            try:
                await self.start(
                    cmd.kind,
                    minutes,
                    cmd.user,
                    source="centre",
                    note=cmd.note,
                    drill_id=cmd.id,
                    clamp=True,
                )
            except DrillRefused as exc:
                log.warning("drill %s from the centre refused: %s", cmd.id, exc)
        else:
            async with self._lock:
                d = self._current
                if d is None or d.id != cmd.id or d.ending is not None:
                    log.info(
                        "drill end for %s ignored: %s",
                        cmd.id,
                        "it is not running" if d is None else f"drill {d.id} is the one running",
                    )
                    return
                await self._finish(d, cmd.user, f"ended by {cmd.user}")

    async def start(
        self,
        kind: str,
        minutes: float | None,
        user: str,
        source: str = "console",
        *,
        note: str = "",
        drill_id: str | None = None,
        clamp: bool = False,
    ) -> Drill:
        """Start a drill now for ``minutes`` (default ``drills.default_minutes``).

        Starting the drill already running (same id) changes nothing and returns it.

        Raises:
            DrillRefused: another drill runs, the id already ran, or the length is out of range
                (with ``clamp`` a too-long drill is cut to ``drills.max_minutes`` instead).
        """
        limits = self._cfg.drills
        if kind not in DRILL_KINDS:
            raise DrillRefused(f"unknown drill kind {kind!r}: one of {', '.join(DRILL_KINDS)}")
        minutes = limits.default_minutes if minutes is None else minutes
        if minutes <= 0:
            raise DrillRefused("a drill needs a length above zero")
        if minutes > limits.max_minutes:
            if not clamp:
                raise DrillRefused(f"longest drill is {limits.max_minutes:g} minutes")
            log.warning("drill cut to the longest allowed, %g minutes", limits.max_minutes)
            minutes = limits.max_minutes
        async with self._lock:
            d = self._current
            if d is not None:
                if d.id == drill_id:
                    log.info("drill %s is already running", d.id)
                    return d
                raise DrillRefused(f"drill {d.id} ({d.kind}, by {d.started_by}) is running")
            if drill_id is not None and drill_id in self._recent:
                raise DrillRefused(f"drill {drill_id} has already run")
            now = utcnow()
            drill = Drill(
                id=drill_id or new_id(),
                kind=kind,
                planned_end=(now + timedelta(minutes=minutes)).isoformat(),
                started_by=user[:64],
                source=source,
                note=note[:500],
                started_at=now.isoformat(),
            )
            self._current = drill
            await self._save()  # on disk before anything is marked or announced
            self._sink.drill = True
            await self._announce(drill)
            self._arm(drill)
            log.warning(
                "DRILL %s started (%s, by %s, %s): alarms go to the police as tests until %s",
                drill.id,
                kind,
                user,
                source,
                drill.planned_end,
            )
            return drill

    async def end(self, user: str, drill_id: str | None = None) -> bool:
        """End the running drill (console, CLI); False if none runs (or another one does)."""
        async with self._lock:
            d = self._current
            if d is None or (drill_id is not None and d.id != drill_id) or d.ending is not None:
                log.info("no drill %s to end", drill_id or "")
                return False
            await self._finish(d, user, f"ended by {user}")
            return True

    async def _announce(self, d: Drill) -> None:
        await self._sink.emit(
            "drill",
            device=self._cfg.edge.id,
            detail={
                "drill_id": d.id,
                "drill_kind": d.kind,
                "planned_end": d.planned_end,
                "by": d.started_by,
                "source": d.source,
                "note": d.note,
            },
        )
        d.announced = True
        await self._save()

    async def _finish(self, d: Drill, user: str, reason: str) -> None:
        """Called with the lock held."""
        d.ending, d.ended_by = reason, user
        await self._save()  # the decision is on disk: a restart finishes it
        self._sink.drill = False
        await self._sink.emit(
            "drill",
            device=self._cfg.edge.id,
            restore=True,
            detail={
                "drill_id": d.id,
                "drill_kind": d.kind,
                "planned_end": d.planned_end,
                "started_at": d.started_at,
                "by": user,
                "reason": reason,
                "source": d.source,
            },
        )
        self._armed = None
        self._recent = [*self._recent, d.id][-RECENT_KEEP:]
        await self._outbox.put_value(RECENT_KEY, json.dumps(self._recent))
        self._current = None
        await self._save()
        self._changed.set()
        log.warning("DRILL %s ended: %s; alarms are real again", d.id, reason)

    def _arm(self, d: Drill) -> None:
        left = (d.planned_end_dt - utcnow()).total_seconds()
        self._deadline = asyncio.get_running_loop().time() + left
        self._armed = d.id
        self._changed.set()

    # --- the timer ------------------------------------------------------------------------

    async def run(self) -> None:
        """End the drill at its planned end (steady clock: a wall-clock jump does not move it)."""
        loop = asyncio.get_running_loop()
        while True:
            self._changed.clear()
            d = self._current
            if d is None or self._armed != d.id:
                await self._changed.wait()  # no drill, or its timer is not set yet
                continue
            left = self._deadline - loop.time()
            if left > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), left)
                continue
            async with self._lock:
                # Checked again under the lock: it may have ended (or another begun) meanwhile.
                due = self._armed == d.id and loop.time() >= self._deadline
                if self._current is d and d.ending is None and due:
                    await self._finish(d, "edge", "planned end reached")
