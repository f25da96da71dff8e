"""Periodic test signals at the centre: note each campus' last test, and raise ``test_missed``
when one is late.

A campus edge sends a ``test`` event (``detail.periodic`` true, ``detail.interval_s`` its
interval) every ``test_signal.interval``; the relay sends it to the police as Contact ID 602 /
SIA RP, so the police platform can tell a silent campus from a quiet one. Here the gateway keeps
``test_signals`` (one row per campus) and, when none arrived within interval + grace, raises a
``test_missed`` event for the campus (an alarm record for the technician; to the police as
Contact ID 350 / SIA YC by default), and its restore when a test arrives again. A campus never
heard from is not watched until its first test (or ``test_signals.start``).

Each transition is decided inside one transaction on the campus' row, so with several gateways
watching only one raises it.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta

from sqlalchemy.exc import IntegrityError

from contract.config import GatewayConfig
from contract.models import Event, new_id, utcnow
from gateway.ingest import Ingest
from gateway.store.models import PeriodicTestRow
from gateway.store.repo import Store, _shielded, aware

log = logging.getLogger(__name__)


@_shielded
async def _seen(store: Store, campus: str, at: datetime, event_id: str, interval_s: float) -> bool:
    """Record a test; True if the campus was in ``missed`` (now restored)."""
    async with store.session() as s:
        try:
            async with s.begin():
                row = await s.get(PeriodicTestRow, campus, with_for_update=True)
                if row is None:
                    s.add(
                        PeriodicTestRow(
                            campus=campus,
                            last_at=at,
                            last_event=event_id,
                            interval_s=interval_s,
                            missed=False,
                            missed_since=None,
                        )
                    )
                    return False
                last = aware(row.last_at)
                if last is None or at >= last:
                    row.last_at, row.last_event = at, event_id
                row.interval_s = interval_s
                was = row.missed
                row.missed, row.missed_since = False, None
                return was
        except IntegrityError:  # another gateway created the row at the same moment
            return False


@_shielded
async def _check(
    store: Store,
    campus: str,
    now: datetime,
    default_interval: float,
    grace: float,
    start: datetime | None,
) -> tuple[datetime | None, float] | None:
    """Mark the campus missed if its test is late; returns (last test, interval) if it just
    became missed."""
    async with store.session() as s:
        try:
            async with s.begin():
                row = await s.get(PeriodicTestRow, campus, with_for_update=True)
                if row is None:
                    if start is None or now < start + timedelta(seconds=default_interval + grace):
                        return None
                    s.add(
                        PeriodicTestRow(
                            campus=campus,
                            last_at=None,
                            last_event=None,
                            interval_s=default_interval,
                            missed=True,
                            missed_since=now,
                        )
                    )
                    return None, default_interval
                if row.missed:
                    return None
                last = aware(row.last_at)
                if last is None:
                    return None
                if now < last + timedelta(seconds=row.interval_s + grace):
                    return None
                row.missed, row.missed_since = True, now
                return last, row.interval_s
        except IntegrityError:
            return None


@_shielded
async def rows(store: Store) -> list[PeriodicTestRow]:
    from sqlalchemy import select

    async with store.session() as s:
        return list((await s.execute(select(PeriodicTestRow))).scalars())


class TestSignalWatch:
    """Ingest observer plus a watcher task (see the module doc)."""

    __test__ = False  # not a pytest class

    def __init__(self, cfg: GatewayConfig, store: Store, ingest: Ingest) -> None:
        self.cfg = cfg
        self.tcfg = cfg.test_signals
        self.store = store
        self.ingest = ingest
        self.raised = 0
        self.restored = 0

    @property
    def check_interval(self) -> float:
        """Often enough that a miss is raised within about a tenth of the grace."""
        return min(30.0, max(0.05, (self.tcfg.grace or self.tcfg.interval) / 10))

    async def on_event(self, event: Event) -> None:
        if event.kind != "test" or event.restore or event.detail.get("periodic") is not True:
            return
        raw = event.detail.get("interval_s")
        interval = (
            float(raw)
            if isinstance(raw, int | float) and not isinstance(raw, bool) and raw > 0
            else self.tcfg.interval
        )
        # When the centre heard it, on the centre's clock (the one the watch compares with),
        # not the edge's: an edge whose clock is an hour behind (a dead clock battery, no NTP)
        # would otherwise look silent at every check, its test missed the moment it came.
        if await _seen(self.store, event.campus, utcnow(), event.id, interval):
            self.restored += 1
            log.info("campus %s: periodic test signal back (%s)", event.campus, event.id)
            await self._raise(event.campus, restore=True, last=event.ts, interval=interval)

    async def run(self) -> None:
        if not self.tcfg.expect:
            return
        while True:
            await asyncio.sleep(self.check_interval)
            now = utcnow()
            # One read of every campus' record; only the campuses that look late are then
            # checked (and marked) in a transaction of their own, with the row locked (two
            # gateways), not all 500 of a district on every check.
            try:
                known = {r.campus: r for r in await rows(self.store)}
            except Exception:
                log.exception("reading the periodic test records failed")
                continue
            for campus in self.cfg.campuses:
                if not self._looks_late(known.get(campus.id), now):
                    continue
                try:
                    missed = await _check(
                        self.store,
                        campus.id,
                        now,
                        self.tcfg.interval,
                        self.tcfg.grace,
                        self.tcfg.start,
                    )
                except Exception:
                    log.exception("checking the test signal of %s failed", campus.id)
                    continue
                if missed is not None:
                    last, interval = missed
                    self.raised += 1
                    log.error(
                        "campus %s: periodic test signal MISSED (last %s, every %.0f s)",
                        campus.id,
                        last.isoformat() if last else "never",
                        interval,
                    )
                    await self._raise(campus.id, restore=False, last=last, interval=interval)

    def _looks_late(self, row: PeriodicTestRow | None, now: datetime) -> bool:
        """What ``_check`` would mark missed, judged on a read without a lock."""
        t = self.tcfg
        if row is None:
            return t.start is not None and now >= t.start + timedelta(seconds=t.interval + t.grace)
        last = aware(row.last_at)
        if row.missed or last is None:
            return False
        return now >= last + timedelta(seconds=row.interval_s + t.grace)

    async def _raise(
        self, campus: str, *, restore: bool, last: datetime | None, interval: float
    ) -> None:
        when = last.isoformat() if last else "never"
        await self.ingest.submit_local(
            Event(
                id=new_id(),
                campus=campus,
                edge=f"gateway:{self.cfg.gateway.id}"[:64],
                seq=0,
                ts=utcnow(),
                kind="test_missed",
                severity="info" if restore else "high",
                device="test-signal",
                restore=restore,
                text=(
                    "periodic test signal received again"
                    if restore
                    else f"periodic test signal missed: last one {when}, expected every "
                    f"{interval:.0f} s"
                ),
                detail={
                    "source": "gateway",
                    "last_at": when,
                    "interval_s": interval,
                    "grace_s": self.tcfg.grace,
                },
            )
        )
