"""Where the campus telemetry goes at the centre: InfluxDB, or the embedded store.

With ``influxdb:`` configured every sample becomes one InfluxDB point (measurement = the sample
kind, tags campus / edge / device / point, the sample's fields, the batch's time) handed to the
:class:`~gateway.telemetry.writer.TelemetryWriter`, which batches, retries and spools. Without it
(the demo, a single small campus) the samples go to the ``telemetry`` table of the gateway's own
database, kept ``telemetry.retention_days``; the uptime and compliance reports do not read
telemetry at all (they read the outage record), so they work the same either way.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta
from typing import Protocol

from contract.models import Event
from contract.telemetry import TelemetryBatch
from gateway.store.repo import Store, now
from gateway.telemetry.points import Point
from gateway.telemetry.writer import TelemetryWriter

log = logging.getLogger(__name__)

SWEEP_EVERY_S = 3600.0


class TelemetrySink(Protocol):
    name: str

    async def submit(self, batch: TelemetryBatch) -> int:
        """Take a batch (never waiting on a slow database for long); returns samples taken."""
        ...

    def alarm(self, event: Event, path: str | None, received_at: datetime | None) -> None:
        """An alarm the police acknowledged now: its latency, for the alarm-latency dashboard."""
        ...


def alarm_point(
    event: Event, path: str | None, received_at: datetime | None, at: datetime
) -> Point:
    fields: dict[str, float | int | bool | str] = {
        "to_police_ms": round((at - event.ts).total_seconds() * 1e3, 3)
    }
    if received_at is not None:
        fields["edge_to_gateway_ms"] = round((received_at - event.ts).total_seconds() * 1e3, 3)
    return Point(
        measurement="alarm",
        fields=fields,
        time_ns=int(event.ts.timestamp() * 1e9),
        tags={
            "campus": event.campus,
            "kind": event.kind,
            "path": path or "unknown",
            "drill": "true" if event.drill else "false",
            "restore": "true" if event.restore else "false",
        },
    )


def batch_points(batch: TelemetryBatch) -> list[Point]:
    ts_ns = int(batch.ts.timestamp() * 1e9)
    points = []
    for s in batch.samples:
        tags = {"campus": batch.campus, "edge": batch.edge, "device": s.device}
        if s.point:
            tags["point"] = s.point
        points.append(Point(measurement=s.kind, fields=dict(s.fields), time_ns=ts_ns, tags=tags))
    return points


class InfluxSink:
    name = "influxdb"

    def __init__(self, writer: TelemetryWriter) -> None:
        self.writer = writer

    async def submit(self, batch: TelemetryBatch) -> int:
        return self.writer.submit(batch_points(batch))

    def alarm(self, event: Event, path: str | None, received_at: datetime | None) -> None:
        self.writer.submit([alarm_point(event, path, received_at, now())])


class EmbeddedSink:
    name = "embedded"

    def __init__(self, store: Store, retention_days: float) -> None:
        self.store = store
        self.retention_days = retention_days

    async def submit(self, batch: TelemetryBatch) -> int:
        await self.store.add_telemetry(
            [
                {
                    "ts": batch.ts,
                    "campus": batch.campus,
                    "edge": batch.edge,
                    "device": s.device,
                    "point": s.point,
                    "kind": s.kind,
                    "fields": dict(s.fields),
                }
                for s in batch.samples
            ]
        )
        return len(batch.samples)

    def alarm(self, event: Event, path: str | None, received_at: datetime | None) -> None:
        """Nothing to add: the alarm record holds its times, and the reports read them there."""

    async def run_sweeper(self) -> None:
        while True:
            try:
                gone = await self.store.expire_telemetry(
                    now() - timedelta(days=self.retention_days)
                )
                if gone:
                    log.info("embedded telemetry: %d sample(s) past retention deleted", gone)
            except Exception:
                log.exception("embedded telemetry sweep failed; trying again later")
            await asyncio.sleep(SWEEP_EVERY_S)
