"""The end-to-end self-test, centre side: ask a campus to prove one device's alarm path and
time every hop it passes.

    requested       the API took the request (gateway clock)
    published       the broker acknowledged down/selftest (PUBACK)
    edge_outbox     the edge committed the self-test's ``test`` event (its timestamp)
    gateway_stored  a gateway stored that event
    police_ack      the police receiver acknowledged it (DC-09 ACK)
    status_at_edge  its ``police_received`` status was back at the edge (the edge's ``selftest``
                    event, hop ``status_at_edge``)

The database row is the truth (several gateways may share the work: the API on one, the
events on another); each hop is one short transaction. A self-test passes when every hop is
there, and fails naming the first hop that did not happen: the edge refused (``edge_outbox``),
the police did not acknowledge (``police_ack``), or the time ran out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select

from contract import topics
from contract.config import GatewayConfig
from contract.models import Event, SelftestRequest, new_id, utcnow
from gateway.relay.base import Sink
from gateway.store.models import AlarmRow, SelftestRow
from gateway.store.repo import Store, _shielded, aware

log = logging.getLogger(__name__)

HOPS = (
    "requested",
    "published",
    "edge_outbox",
    "gateway_stored",
    "police_ack",
    "status_at_edge",
)
WATCH_INTERVAL = 0.1
"""How often running self-tests are checked for the police's answer and their deadline."""

Publish = Callable[[str, bytes], Awaitable[None]]


# --- store operations (one transaction each) ----------------------------------------------


@_shielded
async def _add(store: Store, row: SelftestRow) -> None:
    async with store.session() as s, s.begin():
        s.add(row)


@_shielded
async def _get(store: Store, selftest_id: str) -> SelftestRow | None:
    async with store.session() as s:
        return await s.get(SelftestRow, selftest_id)


@_shielded
async def _running(store: Store) -> list[SelftestRow]:
    async with store.session() as s:
        q = select(SelftestRow).where(SelftestRow.state == "running")
        return list((await s.execute(q)).scalars())


@_shielded
async def _alarm(store: Store, alarm_id: str) -> AlarmRow | None:
    async with store.session() as s:
        return await s.get(AlarmRow, alarm_id)


@_shielded
async def _update(
    store: Store,
    selftest_id: str,
    hops: dict[str, datetime],
    *,
    event_id: str | None = None,
    failed_hop: str | None = None,
    detail: str | None = None,
) -> SelftestRow | None:
    """Record hops (earliest time wins) and maybe a failure; decide passed / failed."""
    async with store.session() as s, s.begin():
        row = await s.get(SelftestRow, selftest_id, with_for_update=True)
        if row is None:
            return None
        merged: dict[str, Any] = dict(row.hops or {})
        for hop, ts in hops.items():
            merged.setdefault(hop, ts.isoformat())
        row.hops = merged
        if event_id is not None and row.event_id is None:
            row.event_id = event_id
        if row.state == "running":
            if failed_hop is not None:
                row.state, row.failed_hop = "failed", failed_hop
                row.detail = (detail or "")[:2000]
            elif all(h in merged for h in HOPS):
                row.state = "passed"
                row.detail = detail or row.detail
        return row


def hop_times(row: SelftestRow) -> dict[str, datetime]:
    out: dict[str, datetime] = {}
    for hop, text in (row.hops or {}).items():
        with contextlib.suppress(TypeError, ValueError):
            out[hop] = datetime.fromisoformat(str(text))
    return out


def first_missing(row: SelftestRow) -> str | None:
    have = row.hops or {}
    return next((h for h in HOPS if h not in have), None)


def describe(row: SelftestRow) -> dict[str, Any]:
    """The API's view of a self-test: hops in path order with their time from the request."""
    times = hop_times(row)
    t0 = times.get("requested") or aware(row.requested_at)
    assert t0 is not None
    return {
        "id": row.id,
        "campus": row.campus,
        "device": row.device,
        "mode": row.mode,
        "user": row.user,
        "state": row.state,
        "requested_at": aware(row.requested_at),
        "event_id": row.event_id,
        "failed_hop": row.failed_hop,
        "detail": row.detail,
        "hops": [
            {
                "hop": hop,
                "at": times.get(hop),
                "ms": (
                    None if hop not in times else round((times[hop] - t0).total_seconds() * 1e3, 3)
                ),
            }
            for hop in HOPS
        ],
    }


class SelftestService:
    """Starts self-tests, follows their events, and gives each a verdict."""

    def __init__(self, cfg: GatewayConfig, store: Store, sinks: list[Sink]) -> None:
        self.cfg = cfg
        self.store = store
        self.sinks = sinks
        self.publish: Publish | None = None
        """Set once the gateway's MQTT session exists (waits for the broker's PUBACK)."""
        self._deadlines: dict[str, datetime] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.changed = asyncio.Event()

    # --- starting ---------------------------------------------------------------------

    async def start(
        self, campus: str, device: str, mode: str, user: str, ttl: float | None = None
    ) -> SelftestRow:
        """Record the request and send it to the campus (in the background: the caller gets
        the id at once and follows the hops)."""
        ts = utcnow()
        ttl = ttl or self.cfg.selftest_timeout
        row = SelftestRow(
            id=new_id(),
            campus=campus,
            device=device,
            mode=mode,
            user=user,
            requested_at=ts,
            state="running",
            event_id=None,
            hops={"requested": ts.isoformat()},
            failed_hop=None,
            detail="",
        )
        msg = SelftestRequest(
            id=row.id,
            campus=campus,
            device=device,
            mode=mode,  # type: ignore[arg-type]  # checked by the API model
            user=user,
            issued_at=ts,
            expires_at=ts + timedelta(seconds=ttl),
        )
        await _add(self.store, row)
        self._deadlines[row.id] = ts + timedelta(seconds=ttl)
        log.info("self-test %s of %s/%s (%s) requested by %s", row.id, campus, device, mode, user)
        task = asyncio.create_task(self._send(msg), name=f"selftest-{row.id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return row

    async def _send(self, msg: SelftestRequest) -> None:
        if self.publish is None:
            await self._fail(msg.id, "published", "the gateway has no MQTT session yet")
            return
        try:
            await self.publish(topics.selftest_topic(msg.campus), msg.model_dump_json().encode())
        except ConnectionError as exc:
            await self._fail(msg.id, "published", f"cannot reach the campus: {exc}")
            return
        await self._hops(msg.id, {"published": utcnow()})

    # --- following ----------------------------------------------------------------------

    async def on_event(self, event: Event) -> None:
        """Ingest observer: the self-test's ``test`` event and the edge's ``selftest`` reports."""
        sid = event.detail.get("selftest_id")
        if not isinstance(sid, str) or event.restore:
            return
        if event.kind == "test":
            stored = {"edge_outbox": event.ts, "gateway_stored": utcnow()}
            row = await self._hops(sid, stored, event_id=event.id)
            if row is not None and not any(s.wants(event) for s in self.sinks):
                await self._fail(sid, "police_ack", "no police relay takes test events here")
        elif event.kind == "selftest":
            hop = event.detail.get("hop")
            if hop == "status_at_edge":
                await self._police_ack(sid)
                await self._hops(sid, {"status_at_edge": event.ts})
            elif hop in HOPS:
                why = str(event.detail.get("reason") or event.text or "failed at the edge")
                await self._fail(sid, str(hop), why)

    async def _police_ack(self, sid: str) -> SelftestRow | None:
        """Take the police's answer from the test event's alarm record."""
        row = await _get(self.store, sid)
        if row is None or row.event_id is None or "police_ack" in (row.hops or {}):
            return row
        alarm = await _alarm(self.store, row.event_id)
        if alarm is None:
            return row
        at = aware(alarm.police_at)
        if at is not None and alarm.state != "police_rejected":
            return await self._hops(sid, {"police_ack": at})
        if alarm.state in ("delivery_failed", "police_rejected"):
            what = "refused it (DUH)" if alarm.state == "police_rejected" else "did not answer"
            return await self._fail(sid, "police_ack", f"the police receiver {what}")
        return row

    async def _hops(
        self, sid: str, hops: dict[str, datetime], *, event_id: str | None = None
    ) -> SelftestRow | None:
        row = await _update(self.store, sid, hops, event_id=event_id)
        self._settled(row)
        return row

    async def _fail(self, sid: str, hop: str, detail: str) -> SelftestRow | None:
        row = await _update(self.store, sid, {}, failed_hop=hop, detail=detail)
        self._settled(row)
        return row

    def _settled(self, row: SelftestRow | None) -> None:
        if row is None:
            return
        if row.state != "running":
            if self._deadlines.pop(row.id, None) is not None:
                log.log(
                    logging.INFO if row.state == "passed" else logging.WARNING,
                    "self-test %s of %s/%s %s%s",
                    row.id,
                    row.campus,
                    row.device,
                    row.state.upper(),
                    f" at {row.failed_hop}: {row.detail}" if row.failed_hop else "",
                )
        else:
            self._deadlines.setdefault(
                row.id,
                (aware(row.requested_at) or utcnow())
                + timedelta(seconds=self.cfg.selftest_timeout),
            )
        self.changed.set()

    async def get(self, selftest_id: str) -> SelftestRow | None:
        row = await _get(self.store, selftest_id)
        if row is not None and row.state == "running":
            row = await self._police_ack(selftest_id)
        return row

    # --- the watch ----------------------------------------------------------------------

    async def run(self) -> None:
        """Check running self-tests for the police's answer and their deadline."""
        try:
            for left in await _running(self.store):  # left running by the last run
                self._settled(left)
        except Exception:
            log.exception("loading running self-tests failed")
        while True:
            await asyncio.sleep(WATCH_INTERVAL)
            for sid, deadline in list(self._deadlines.items()):
                try:
                    row = await self._police_ack(sid)
                    if row is None:
                        self._deadlines.pop(sid, None)
                    elif row.state == "running" and utcnow() >= deadline:
                        missing = first_missing(row) or "status_at_edge"
                        await self._fail(sid, missing, f"no {missing} before the timeout")
                except Exception:
                    log.exception("checking self-test %s failed", sid)

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
