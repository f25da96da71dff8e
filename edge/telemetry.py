"""Telemetry at the edge: every device's health and measures, and the edge's own, in batches.

Every ``telemetry.interval`` seconds (steady clock) the collector asks each poller and camera
watcher for its samples, adds the edge's own health (CPU, memory, disk, outbox depth, uplink)
and queues one :class:`~contract.telemetry.TelemetryBatch` per 1,000 samples in the outbox at the
lowest priority: behind alarms, events and evidence, sent when the link has room. A batch is
dropped after the broker's PUBACK (telemetry needs no end-to-end receipt), and while the link is
down the outbox keeps at most ``telemetry.keep_batches`` of them, the oldest going first: a long
outage costs old telemetry, never an alarm.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime

import psutil

from contract import topics
from contract.aio import run_every
from contract.config import EdgeConfig
from contract.telemetry import FieldValue, Sample, TelemetryBatch
from edge.outbox import PRIORITY_TELEMETRY, Outbox

log = logging.getLogger(__name__)

CHUNK = 1000


class PollStats:
    """A device's request counters: over the current telemetry window, and in total."""

    def __init__(self) -> None:
        self.total = 0
        self.errors_total = 0
        self._reset()

    def _reset(self) -> None:
        self.count = 0
        self.errors = 0
        self._lat_sum = 0.0
        self._lat_n = 0
        self._lat_max = 0.0

    def ok(self, latency_s: float | None) -> None:
        self.count += 1
        self.total += 1
        if latency_s is not None:
            self._lat_sum += latency_s
            self._lat_n += 1
            self._lat_max = max(self._lat_max, latency_s)

    def fail(self) -> None:
        self.count += 1
        self.total += 1
        self.errors += 1
        self.errors_total += 1

    def take(self) -> dict[str, FieldValue]:
        """The window's figures (then a new window starts)."""
        out: dict[str, FieldValue] = {
            "requests": self.count,
            "errors": self.errors,
            "errors_total": self.errors_total,
        }
        if self._lat_n:
            out["latency_ms_avg"] = round(self._lat_sum / self._lat_n * 1e3, 3)
            out["latency_ms_max"] = round(self._lat_max * 1e3, 3)
        self._reset()
        return out


SampleSource = Callable[[], Iterable[Sample]]


class EdgeTelemetry:
    """Collects and queues the telemetry of one campus edge."""

    def __init__(
        self,
        cfg: EdgeConfig,
        outbox: Outbox,
        sources: list[SampleSource],
        uplink_up: Callable[[], bool],
        extra: Callable[[], dict[str, FieldValue]] | None = None,
    ) -> None:
        self._cfg = cfg
        self._outbox = outbox
        self._sources = sources
        self._uplink_up = uplink_up
        self._extra = extra
        self._proc = psutil.Process()
        self._proc.cpu_percent(None)  # the first call starts the measurement
        self._last = time.monotonic()
        self.batches = 0
        self.dropped = 0

    def edge_sample(self) -> Sample:
        disk = shutil.disk_usage(self._cfg.edge.data_dir)
        mem = self._proc.memory_info()
        fields: dict[str, FieldValue] = {
            "cpu_pct": float(round(self._proc.cpu_percent(None), 2)),
            "rss_mib": round(mem.rss / 2**20, 2),
            "disk_free_mib": round(disk.free / 2**20, 1),
            "disk_used_pct": round(disk.used / disk.total * 100, 2),
            "outbox_depth": self._outbox.depth,
            "uplink_up": self._uplink_up(),
            "telemetry_dropped": self.dropped,
        }
        if self._extra is not None:
            fields |= self._extra()
        return Sample(device=self._cfg.edge.id, kind="edge", fields=fields)

    def collect(self) -> list[TelemetryBatch]:
        now = time.monotonic()
        interval, self._last = now - self._last, now
        samples = [self.edge_sample()]
        for source in self._sources:
            try:
                samples.extend(source())
            except Exception:
                # One device's broken figures must not cost everyone's telemetry.
                log.exception("collecting telemetry failed for one source")
        ts = datetime.now(UTC)
        campus, edge = self._cfg.campus.id, self._cfg.edge.id
        return [
            TelemetryBatch(
                campus=campus,
                edge=edge,
                ts=ts,
                interval_s=round(interval, 3),
                samples=samples[i : i + CHUNK],
            )
            for i in range(0, len(samples), CHUNK)
        ]

    async def step(self) -> None:
        topic = topics.telemetry_topic(self._cfg.campus.id)
        for batch in self.collect():
            await self._outbox.add(topic, batch.model_dump_json().encode(), PRIORITY_TELEMETRY)
            self.batches += 1
        dropped = await self._outbox.trim(PRIORITY_TELEMETRY, self._cfg.telemetry.keep_batches)
        if dropped:
            if not self.dropped:
                log.warning(
                    "the uplink is not keeping up: dropping the oldest telemetry "
                    "(alarms and events are kept)"
                )
            self.dropped += dropped

    async def run(self) -> None:
        await run_every(self._cfg.telemetry.interval, self.step, "telemetry")
