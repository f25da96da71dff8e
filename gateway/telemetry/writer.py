"""The gateway's telemetry writer: points in, InfluxDB out, never waiting for InfluxDB.

``submit(points)`` encodes the points to line protocol and appends them to the current batch;
it returns at once. A batch is sealed when it holds ``batch_size`` points or its first point is
``flush_interval`` seconds old, and one sender task writes sealed batches, one request at a
time, gzip-compressed (level 1: InfluxDB's CPU is the scarce one, not the network).

When InfluxDB is slow or away the batches wait in memory, at most ``max_buffer_points`` points
(the current batch, the sealed batches and the one being sent); beyond that the OLDEST sealed
batches are spilled whole to the :class:`~gateway.telemetry.spool.Spool` (segment files with
fsync), which is bounded in bytes and drops its oldest segments when full (counted as
``dropped``, logged). The sender always sends the spool's oldest segment first, so after an
outage the data drains in order; spooled segments survive a restart.

What InfluxDB answers decides what happens to a batch:

- 2xx: written.
- connection error, timeout, 5xx, 429: retried with capped exponential back-off and jitter
  (``Retry-After`` honoured), as long as it takes; new points keep being buffered / spooled.
- 400 / 422 with ``partial write: ... dropped=N`` (a field-type conflict, points beyond the
  retention policy): InfluxDB wrote the rest itself; the N points are counted as ``rejected``
  and the cause logged (once per cause per ``log_interval``); the batch is not retried.
- 400 / 422 without a count (1.x rejects a whole batch whose points conflict among themselves)
  and 413: the batch is split in halves and each half sent, down to single points, so only the
  bad points are rejected.
- other 4xx (401, 403, 404 database not found): a configuration problem. Logged as an error
  naming the config key, the batch is kept and tried again every ``config_retry_interval``
  seconds, so fixing the credentials or creating the database makes it flow again, no restart.

``close()`` (or leaving ``async with``) sends what it can within ``shutdown_timeout`` seconds
and spools the rest; the next start sends it.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import logging
import random
import re
import time
import zlib
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from gateway.telemetry.backends import Backend, InfluxV1, InfluxV2, TransientError
from gateway.telemetry.points import Point, PointError, encode_point, split_lines
from gateway.telemetry.spool import Segment, Spool

if TYPE_CHECKING:
    from contract.config import InfluxConfig

log = logging.getLogger("campusguard.gateway.telemetry")

_DROPPED = re.compile(r"dropped=(\d+)")
_GZIP_LEVEL = 1


class _UnreadableSegment(Exception):
    """A spool segment that cannot be read back (damaged disk, truncated file)."""


@dataclass(eq=False, slots=True)
class _Batch:
    raw: bytes | None  # line protocol, uncompressed (None until read for a spooled batch)
    count: int
    gz: bytes | None = None  # gzip of raw, when made
    segment: Segment | None = None  # set when the batch lives in the spool


class TelemetryWriter:
    """Batches telemetry points to InfluxDB with a bounded memory buffer and a disk spool."""

    def __init__(
        self,
        backend: Backend,
        spool_dir: Path,
        *,
        batch_size: int = 5000,
        flush_interval: float = 1.0,
        max_buffer_points: int = 100_000,
        spool_max_bytes: int = 1024**3,
        gzip_body: bool = True,
        backoff_base: float = 0.2,
        backoff_cap: float = 30.0,
        config_retry_interval: float = 30.0,
        shutdown_timeout: float = 5.0,
        log_interval: float = 60.0,
    ) -> None:
        if max_buffer_points < batch_size:
            raise ValueError("max_buffer_points must be at least batch_size")
        self.backend = backend
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.max_buffer_points = max_buffer_points
        self.gzip = gzip_body
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.config_retry_interval = config_retry_interval
        self.shutdown_timeout = shutdown_timeout
        self.log_interval = log_interval
        self.spool = Spool(spool_dir, spool_max_bytes)

        # counters (points unless said otherwise)
        self.written = 0  # accepted by InfluxDB
        self.retried = 0  # write attempts repeated (requests, not points)
        self.spooled = 0  # spilled to disk
        self.dropped = 0  # oldest spooled telemetry deleted for the disk bound (or disk errors)
        self.rejected = 0  # refused by InfluxDB (field-type conflict, ...), not retried
        self.invalid = 0  # refused by the encoder at submit (NaN, no fields, ...)
        self.batches_sent = 0  # successful write requests
        self.max_buffer_seen = 0  # high-water mark of the in-memory buffer

        self._pending: list[str] = []
        self._pending_since = 0.0
        self._ready: deque[_Batch] = deque()
        self._ready_points = 0
        self._inflight: _Batch | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._closed = False
        self._failing = False  # the last attempt failed (for a "flowing again" log line)
        self._logged: dict[str, tuple[float, int]] = {}

    # --- construction -------------------------------------------------------------------

    @classmethod
    def from_config(cls, cfg: InfluxConfig, data_dir: Path, **kwargs: Any) -> TelemetryWriter:
        """A writer for the gateway's ``influxdb:`` config; the spool defaults to
        ``<data_dir>/telemetry-spool``."""
        backend: Backend
        if cfg.api == "v1":
            assert cfg.database is not None  # validated by InfluxConfig
            backend = InfluxV1(
                cfg.url,
                cfg.database,
                retention_policy=cfg.retention_policy,
                username=cfg.username,
                password=cfg.password_text(),
                timeout=cfg.timeout,
            )
        else:
            token = cfg.token_text()
            # validated by InfluxConfig
            assert cfg.org
            assert cfg.bucket
            assert token is not None
            backend = InfluxV2(
                cfg.url, cfg.org, cfg.bucket, token, timeout=cfg.timeout, gzip_body=cfg.gzip
            )
        return cls(
            backend,
            cfg.spool_dir or (data_dir / "telemetry-spool"),
            batch_size=cfg.batch_size,
            flush_interval=cfg.flush_interval,
            max_buffer_points=cfg.max_buffer_points,
            spool_max_bytes=cfg.spool_max_bytes,
            gzip_body=cfg.gzip,
            **kwargs,
        )

    async def __aenter__(self) -> TelemetryWriter:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def start(self) -> None:
        """Open the spool (a restart finds what the last run spooled) and start sending."""
        await asyncio.to_thread(self.spool.recover)
        if self.spool.points:
            log.info(
                "telemetry spool %s holds %d points from before; sending them first",
                self.spool.directory,
                self.spool.points,
            )
        self._task = asyncio.create_task(self._run(), name="telemetry-writer")

    # --- the producer side ----------------------------------------------------------------

    @property
    def buffer_depth(self) -> int:
        """Points held in memory: the open batch, sealed batches and the one being sent."""
        inflight = self._inflight.count if self._inflight is not None else 0
        return len(self._pending) + self._ready_points + inflight

    def submit(self, points: Iterable[Point]) -> int:
        """Queue points for InfluxDB; returns how many were accepted. Never waits for
        InfluxDB. A point the encoder refuses is counted in ``invalid`` and logged, the others
        go on. When the memory buffer is full this writes a spool segment (with fsync)."""
        if self._closing:
            raise RuntimeError("the telemetry writer is closed")
        accepted = 0
        inflight = self._inflight.count if self._inflight is not None else 0
        room = self.max_buffer_points - inflight
        for point in points:
            try:
                line = encode_point(point)
            except PointError as exc:
                self.invalid += 1
                self._log_limited("invalid", logging.WARNING, "telemetry point refused: %s", exc)
                continue
            if not self._pending:
                self._pending_since = time.monotonic()
            self._pending.append(line)
            accepted += 1
            if len(self._pending) >= self.batch_size:
                self._seal()
            elif len(self._pending) + self._ready_points > room:
                self._enforce_bound()
        if accepted:
            self._wake.set()
        return accepted

    def _seal(self) -> None:
        if not self._pending:
            return
        batch = _Batch(("\n".join(self._pending)).encode("utf-8"), len(self._pending))
        self._pending = []
        self._ready.append(batch)
        self._ready_points += batch.count
        self._enforce_bound()

    def _enforce_bound(self) -> None:
        """Spill the oldest sealed batches (then the open one) until memory is in bound."""
        while self.buffer_depth > self.max_buffer_points:
            if self._ready:
                batch = self._ready.popleft()
                self._ready_points -= batch.count
            elif self._pending:
                batch = _Batch("\n".join(self._pending).encode("utf-8"), len(self._pending))
                self._pending = []
            else:
                break  # only the batch being sent, which is at most batch_size
            self._spill(batch)
        self.max_buffer_seen = max(self.max_buffer_seen, self.buffer_depth)

    def _spill(self, batch: _Batch) -> None:
        """Write a memory batch to the spool (or count it dropped when the disk refuses)."""
        assert batch.raw is not None
        data = batch.gz if batch.gz is not None else gzip.compress(batch.raw, _GZIP_LEVEL)
        try:
            seg, deleted = self.spool.append(data, batch.count)
        except OSError as exc:
            self.dropped += batch.count
            self._log_limited(
                "spool-error",
                logging.ERROR,
                "telemetry spool %s cannot be written (%s): %d points dropped",
                self.spool.directory,
                exc,
                batch.count,
            )
            return
        for old in deleted:
            self.dropped += old.count
        if deleted:
            self._log_limited(
                "spool-full",
                logging.WARNING,
                "telemetry spool %s reached its bound (%d bytes, influxdb.spool_max_bytes): "
                "dropped its oldest %d points; %d dropped so far",
                self.spool.directory,
                self.spool.max_bytes,
                sum(s.count for s in deleted),
                self.dropped,
            )
        if seg is None:
            self.dropped += batch.count
            self._log_limited(
                "spool-too-small",
                logging.WARNING,
                "a telemetry batch (%d bytes) does not fit the spool bound "
                "(influxdb.spool_max_bytes = %d): %d points dropped",
                len(data),
                self.spool.max_bytes,
                batch.count,
            )
            return
        self.spooled += batch.count

    # --- the sender -----------------------------------------------------------------------

    def _take(self) -> _Batch | None:
        if not self._closing:
            seg = self.spool.oldest()
            if seg is not None:
                self.spool.claimed = seg
                return _Batch(None, seg.count, segment=seg)
        elif not self._ready:
            self._seal()
        if self._ready:
            batch = self._ready.popleft()
            self._ready_points -= batch.count
            return batch
        return None

    async def _run(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                if self._closing:
                    return
                timeout: float | None = None
                if self._pending:
                    timeout = self._pending_since + self.flush_interval - time.monotonic()
                    if timeout <= 0:
                        self._seal()
                        continue
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout)
                continue
            self._inflight = batch
            self._enforce_bound()
            try:
                await self._deliver(batch)
            except asyncio.CancelledError:
                raise
            except _UnreadableSegment as exc:
                assert batch.segment is not None
                self.dropped += batch.count
                self.spool.remove(batch.segment)
                self._log_limited(
                    "spool-unreadable",
                    logging.ERROR,
                    "telemetry spool segment cannot be read (%s): %d points dropped",
                    exc,
                    batch.count,
                )
            except Exception:
                log.exception("telemetry writer: unexpected error; the batch is kept")
                if batch.segment is None:
                    self._spill(batch)
                else:
                    self.spool.claimed = None
                await asyncio.sleep(self.backoff_cap)
            else:
                if batch.segment is not None:
                    self.spool.remove(batch.segment)
            self._inflight = None
            if self._pending and time.monotonic() - self._pending_since >= self.flush_interval:
                self._seal()

    async def _load(self, batch: _Batch) -> None:
        if batch.raw is None:
            assert batch.segment is not None
            try:
                data = await asyncio.to_thread(self.spool.read, batch.segment)
                raw = await asyncio.to_thread(gzip.decompress, data)
            except (OSError, EOFError, zlib.error) as exc:
                raise _UnreadableSegment(f"{batch.segment.path}: {exc}") from exc
            batch.gz = data
            batch.raw = raw

    async def _body(self, batch: _Batch) -> tuple[bytes, bool]:
        await self._load(batch)
        assert batch.raw is not None
        if self.gzip and self.backend.wants_gzip:
            if batch.gz is None:
                batch.gz = await asyncio.to_thread(gzip.compress, batch.raw, _GZIP_LEVEL)
            return batch.gz, True
        return batch.raw, False

    def _backoff(self, attempt: int) -> float:
        delay = min(self.backoff_cap, self.backoff_base * (2 ** min(attempt - 1, 30)))
        return random.uniform(delay / 2, delay)

    async def _deliver(self, batch: _Batch) -> None:
        """Send one batch until InfluxDB has decided about every point in it."""
        attempt = 0
        while True:
            body, gzipped = await self._body(batch)
            try:
                result = await self.backend.write(body, gzipped)
            except TransientError as exc:
                attempt += 1
                self.retried += 1
                self._fail(
                    "unreachable",
                    logging.WARNING,
                    "InfluxDB at %s is unreachable (%s); retrying, points are kept",
                    getattr(self.backend, "url", "?"),
                    exc,
                )
                await asyncio.sleep(self._backoff(attempt))
                continue
            status = result.status
            if 200 <= status < 300:
                self.written += batch.count
                self.batches_sent += 1
                if self._failing:
                    self._failing = False
                    log.info(
                        "InfluxDB writes flow again; %d points in memory, %d spooled",
                        self.buffer_depth,
                        self.spool.points,
                    )
                return
            if status == 429 or status >= 500:
                attempt += 1
                self.retried += 1
                self._fail(
                    f"http-{status}",
                    logging.WARNING,
                    "InfluxDB answered %d (%s); retrying, points are kept",
                    status,
                    result.message,
                )
                delay = self._backoff(attempt)
                if result.retry_after is not None:
                    delay = min(max(result.retry_after, 0.0), 3600.0)
                await asyncio.sleep(delay)
                continue
            if status in (400, 422):
                m = _DROPPED.search(result.message)
                if m is not None:
                    bad = min(int(m.group(1)), batch.count)
                    self._reject(bad, result.message)
                    self.written += batch.count - bad
                    return
                if batch.count > 1:
                    await self._split(batch)
                    return
                self._reject(1, result.message)
                return
            if status == 413 and batch.count > 1:
                await self._split(batch)
                return
            if status == 413:
                self._reject(1, result.message)
                return
            # 401, 403, 404 and the like: configuration. Keep the batch; try again slowly.
            self.retried += 1
            self._fail(
                f"config-{status}",
                logging.ERROR,
                "InfluxDB refuses writes to %s: %d %s; check %s. Points are kept "
                "(memory, then the spool) and the write is tried again every %.0f s",
                self.backend.target,
                status,
                result.message,
                self.backend.config_hint(status),
                self.config_retry_interval,
            )
            await asyncio.sleep(self.config_retry_interval)

    async def _split(self, batch: _Batch) -> None:
        assert batch.raw is not None
        lines = split_lines(batch.raw)
        half = len(lines) // 2
        for part in (lines[:half], lines[half:]):
            if part:
                await self._deliver(_Batch(b"\n".join(part), len(part)))

    def _reject(self, count: int, message: str) -> None:
        self.rejected += count
        cause = _DROPPED.sub("", message).strip()
        self._log_limited(
            f"rejected:{cause}",
            logging.WARNING,
            "InfluxDB rejected %d telemetry points (not retried): %s; %d rejected so far",
            count,
            message,
            self.rejected,
        )

    def _fail(self, key: str, level: int, msg: str, *args: object) -> None:
        self._failing = True
        self._log_limited(key, level, msg, *args)

    def _log_limited(self, key: str, level: int, msg: str, *args: object) -> None:
        """Log ``msg`` at most once per ``log_interval`` per ``key``, with how many were
        suppressed since the last time."""
        now = time.monotonic()
        last, suppressed = self._logged.get(key, (-1e18, 0))
        if now - last < self.log_interval:
            self._logged[key] = (last, suppressed + 1)
            return
        self._logged[key] = (now, 0)
        if suppressed:
            msg += " (%d more like this since the last message)"
            args = (*args, suppressed)
        log.log(level, msg, *args)

    # --- shutdown -------------------------------------------------------------------------

    async def flush(self, within: float = 10.0) -> bool:
        """Seal the open batch and wait until memory and spool are empty (True) or
        ``within`` seconds pass (False)."""
        self._seal()
        self._wake.set()
        deadline = time.monotonic() + within
        while self.buffer_depth or self.spool.points:
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.01)
        return True

    async def close(self, within: float | None = None) -> None:
        """Send what can be sent within ``within`` seconds (default ``shutdown_timeout``),
        spool the rest, close the connection."""
        if self._closed:
            return
        self._closing = True
        self._wake.set()
        task = self._task
        if task is not None:
            await asyncio.wait({task}, timeout=self.shutdown_timeout if within is None else within)
            if not task.done():
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        inflight, self._inflight = self._inflight, None
        if inflight is not None:
            if inflight.segment is None:
                self._spill(inflight)
            else:
                self.spool.claimed = None
        while self._ready:
            batch = self._ready.popleft()
            self._ready_points -= batch.count
            self._spill(batch)
        if self._pending:
            count = len(self._pending)
            raw = "\n".join(self._pending).encode("utf-8")
            self._pending = []
            self._spill(_Batch(raw, count))
        self._closed = True
        await self.backend.close()
        if self.spool.points:
            log.info(
                "telemetry writer closed; %d points spooled in %s for the next start",
                self.spool.points,
                self.spool.directory,
            )

    def stats(self) -> dict[str, int]:
        return {
            "written": self.written,
            "retried": self.retried,
            "spooled": self.spooled,
            "dropped": self.dropped,
            "rejected": self.rejected,
            "invalid": self.invalid,
            "buffer_depth": self.buffer_depth,
            "max_buffer_seen": self.max_buffer_seen,
            "spool_points": self.spool.points,
            "spool_bytes": self.spool.bytes,
            "batches_sent": self.batches_sent,
        }
