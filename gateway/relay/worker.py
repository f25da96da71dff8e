"""Drains the relay queue: the fast path straight from ingest, and the database for the rest.

A job stays in the database until the sink confirms it. A failed delivery is retried with capped
back-off for as long as it takes; the campus is told of each outcome.

Deliveries run concurrently, one lane per campus: a campus' jobs go out one after the other in
the order they were claimed, while a slow receiver (or a slow answer) for one campus never
holds up another's alarms. At most ``concurrency`` deliveries are in flight per sink. The
store's claim and lease stay the only source of truth: a job is only ever delivered by the
worker that claimed it, and a job already queued or in flight here is not queued twice when a
scan claims it again (which also renews its lease).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import time
from collections.abc import Callable
from datetime import datetime

from contract.aio import Service, cancel_and_wait, cancel_requested
from contract.models import Event
from gateway.relay.base import Delivery, Sink
from gateway.store.repo import ClaimedJob, JobEnd, Store

log = logging.getLogger(__name__)

SCAN_INTERVAL = 0.5
"""How often the database is checked for due retries and jobs whose lease ran out (a gateway
that died mid-relay). New alarms do not wait for this: ingest hands them over directly."""


class RelayWorker(Service):
    task_name = "relay"

    def __init__(
        self,
        store: Store,
        sink: Sink,
        worker_id: str,
        lease: float = 30.0,
        concurrency: int = 8,
    ) -> None:
        super().__init__()
        self.store = store
        self.sink = sink
        self.worker_id = worker_id
        self.lease = lease
        self.concurrency = concurrency
        self._queue: asyncio.Queue[ClaimedJob] = asyncio.Queue()
        self._slots = asyncio.Semaphore(concurrency)
        self._lanes: dict[str, collections.deque[ClaimedJob]] = {}
        self._lane_tasks: dict[str, asyncio.Task[None]] = {}
        self._held: set[str] = set()
        """Alarm ids queued in a lane or being delivered (never queued twice)."""
        self._ends: list[tuple[JobEnd, asyncio.Future[datetime | None]]] = []
        self._finisher: asyncio.Task[None] | None = None
        self.in_flight = 0
        self.delivered = 0
        self.failed_attempts = 0
        self.on_step: Callable[[], None] | None = None
        """Called after a step of an alarm's life was stored (to push it to the campus)."""
        self.on_police_received: Callable[[Event, str | None, datetime | None], None] | None = None
        """Called with (event, path, the alarm's ``received_at``) once the police's
        acknowledgement is stored (latency telemetry and metrics); must return at once."""

    def submit(self, job: ClaimedJob) -> None:
        """Hand over a job that ingest already claimed for this worker."""
        self._queue.put_nowait(job)

    async def _run(self) -> None:
        try:
            await self._dispatch_loop()
        finally:
            await cancel_and_wait(list(self._lane_tasks.values()))
            if self._finisher is not None:
                await cancel_and_wait([self._finisher])

    async def _dispatch_loop(self) -> None:
        last_scan = -SCAN_INTERVAL
        while True:
            if cancel_requested():
                raise asyncio.CancelledError  # a library swallowed our cancellation
            # Scan on a clock, not only when idle: under a steady stream of new alarms the
            # retries and orphaned jobs must still get their turn.
            if time.monotonic() - last_scan >= SCAN_INTERVAL:
                last_scan = time.monotonic()
                await self._scan()
            wait = max(0.0, SCAN_INTERVAL - (time.monotonic() - last_scan))
            try:
                job = await asyncio.wait_for(self._queue.get(), wait)
            except TimeoutError:
                continue
            self._enqueue(job)

    def _enqueue(self, job: ClaimedJob) -> None:
        if job.alarm_id in self._held:
            return  # already queued or in flight here (a scan renewed its lease)
        self._held.add(job.alarm_id)
        campus = job.event.campus
        self._lanes.setdefault(campus, collections.deque()).append(job)
        task = self._lane_tasks.get(campus)
        if task is None or task.done():
            self._lane_tasks[campus] = asyncio.create_task(
                self._lane(campus), name=f"relay-{self.sink.name}-{campus}"
            )

    async def _lane(self, campus: str) -> None:
        """One campus' jobs, in order; each waits for a free slot for its delivery."""
        lane = self._lanes[campus]
        while lane:
            job = lane[0]
            retry_in: float | None = None
            try:
                outcome = await self._handle(job)
                if self.on_step is not None:
                    self.on_step()
                if isinstance(outcome, float):
                    retry_in = outcome
            except Exception:
                # The job keeps its lease; when it runs out the scan picks it up again.
                log.exception("relaying %s failed unexpectedly", job.alarm_id)
            if retry_in is not None:
                # Not delivered: it stays first in its campus' lane (claimed by us) and the
                # campus' later alarms wait behind it, so the police get them in order (an
                # alarm's restore never before the alarm).
                await asyncio.sleep(retry_in)
                lane[0] = dataclasses.replace(job, attempts=job.attempts + 1)
                continue
            lane.popleft()
            self._held.discard(job.alarm_id)
        self._lanes.pop(campus, None)
        self._lane_tasks.pop(campus, None)

    def lanes(self) -> dict[str, int]:
        """Jobs queued or in flight per campus (for /healthz)."""
        return {campus: len(lane) for campus, lane in self._lanes.items()}

    async def _scan(self) -> None:
        try:
            for claimed in await self.store.claim_jobs(
                self.sink.name, self.worker_id, limit=20, lease=self.lease
            ):
                self._queue.put_nowait(claimed)
        except Exception:
            log.exception("relay queue scan failed; will retry")

    async def _handle(self, job: ClaimedJob) -> Delivery | float | None:
        """Deliver one job and store the outcome; returns the delivery when the police has it,
        the seconds until the next try when it failed (the job stays claimed), else None."""
        seq = job.seq if job.seq is not None else await self.store.assign_seq(job)
        attempts = job.attempts + 1
        # A slot for the exchange with the receiver only: storing its outcome (a commit shared
        # with the other ends, ``_finish``) lets the next campus' alarm go out meanwhile. The
        # campus' own next alarm still waits for it (its lane).
        async with self._slots:
            self.in_flight += 1
            try:
                result = await self.sink.deliver(job.event, seq)
            finally:
                self.in_flight -= 1
        ev = job.event
        if result.outcome == "delivered":
            # The job's end and the alarm's "police_received" step: one transaction, shared
            # with the other deliveries that ended meanwhile.
            received = await self._finish(
                JobEnd(job, "done", attempts, None, "police_received", result.path, result.detail)
            )
            self.delivered += 1
            log.info(
                "alarm %s (%s, campus %s) delivered to the police via %s in %.1f ms",
                ev.id,
                ev.kind,
                ev.campus,
                result.path,
                result.rtt_ms or 0.0,
            )
            if self.on_police_received is not None:
                try:
                    self.on_police_received(ev, result.path, received)
                except Exception:
                    log.exception("recording the delivery of %s for telemetry failed", ev.id)
            return result
        if result.outcome == "rejected":
            await self._finish(
                JobEnd(
                    job, "rejected", attempts, result.detail, "police_rejected", None, result.detail
                )
            )
            log.error(
                "police platform %s refused alarm %s: %s", self.sink.name, ev.id, result.detail
            )
            return None
        self.failed_attempts += 1
        delay = min(30.0, 0.5 * 2 ** min(attempts, 6))
        if result.retry_after is not None:
            delay = max(delay, result.retry_after)  # the receiver asked us to wait
        await self.store.retry_job(
            job,
            attempts=attempts,
            delay=delay,
            error=result.detail,
            alarm_state="delivery_failed" if attempts == 1 else None,
            keep_for=self.lease,
        )
        if attempts == 1:
            log.error(
                "alarm %s could not reach the police via %s (%s); retrying until it does",
                ev.id,
                self.sink.name,
                result.detail,
            )
        return float(delay)

    async def _finish(self, end: JobEnd) -> datetime | None:
        """Store a job's end; returns the alarm's ``received_at``.

        Group commit: the ends that come in while one transaction is being written go together
        in the next one, so a burst of acknowledgements costs a few transactions, not one each,
        and a lone one is written at once.
        """
        done: asyncio.Future[datetime | None] = asyncio.get_running_loop().create_future()
        self._ends.append((end, done))
        if self._finisher is None or self._finisher.done():
            self._finisher = asyncio.create_task(
                self._write_ends(), name=f"relay-{self.sink.name}-finish"
            )
        return await done

    async def _write_ends(self) -> None:
        while self._ends:
            batch, self._ends = self._ends, []
            try:
                received = await self.store.finish_jobs([end for end, _ in batch])
            except BaseException as exc:
                # The lanes see it: their jobs keep their leases and go again after them.
                for _, done in batch:
                    if not done.done():
                        if isinstance(exc, asyncio.CancelledError):
                            done.cancel()
                        else:
                            done.set_exception(exc)
                if not isinstance(exc, Exception):
                    for _, done in self._ends:
                        done.cancel()
                    self._ends = []
                    raise
            else:
                for (_, done), at in zip(batch, received, strict=True):
                    if not done.done():
                        done.set_result(at)
