"""Prometheus metrics for the gateway (``GET /metrics``, text exposition format 0.0.4).

Gauges that live in the database (relay jobs pending, devices by state) are read at scrape
time; counters come from the running components; the ingest -> police latency is a histogram
fed by the relay workers as they deliver."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from contract.models import Event, utcnow
from gateway.store.repo import aware

if TYPE_CHECKING:
    from gateway.service import GatewayRuntime

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class GatewayMetrics(Collector):
    def __init__(self, rt: GatewayRuntime) -> None:
        self.rt = rt
        self.registry = CollectorRegistry(auto_describe=False)
        self.latency = Histogram(
            "campusguard_gateway_relay_latency_seconds",
            "Alarm stored by this gateway -> receiver acknowledged, per sink",
            ["sink"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(self)
        self._pending = 0
        self._devices: dict[str, int] = {}
        self._edges: dict[str, int] = {}
        for name, worker in rt.workers.items():
            worker.on_police_received = self._timed(name, worker.on_police_received)

    def _timed(
        self, sink: str, inner: Callable[[Event, str | None, datetime | None], None] | None
    ) -> Callable[[Event, str | None, datetime | None], None]:
        """The latency histogram beside whatever else is told of each police acknowledgement
        (telemetry), from the ``received_at`` the relay stored with it: no read-back."""

        def received(event: Event, path: str | None, received_at: datetime | None) -> None:
            if inner is not None:
                inner(event, path, received_at)
            received_at = aware(received_at)
            if received_at is not None:
                latency = (utcnow() - received_at).total_seconds()
                self.latency.labels(sink).observe(max(0.0, latency))

        return received

    async def refresh(self) -> None:
        """The database-backed gauges (called by the scrape before rendering)."""
        self._pending = await self.rt.store.pending_jobs()
        devices: dict[str, int] = {"online": 0, "offline": 0}
        for d in await self.rt.store.devices():
            devices["online" if d.online else "offline"] += 1
        self._devices = devices
        edges: dict[str, int] = {"online": 0, "offline": 0}
        for e in await self.rt.store.edges():
            edges["online" if e.online else "offline"] += 1
        self._edges = edges

    async def render(self) -> bytes:
        await self.refresh()
        return generate_latest(self.registry)

    def collect(self) -> Iterator[Metric]:
        rt = self.rt
        backlog = GaugeMetricFamily(
            "campusguard_gateway_mqtt_backlog",
            "MQTT messages received and not yet handled, per stream",
            labels=["stream"],
        )
        backlog.add_metric(["events"], rt.mqtt.backlog)
        backlog.add_metric(["telemetry"], rt.telemetry_mqtt.backlog)
        yield backlog
        if rt.mqtt.lanes is not None:
            lanes_now = rt.mqtt.lanes
            yield GaugeMetricFamily(
                "campusguard_gateway_inbox_kept",
                "Messages of campuses that fell behind, kept in the inbox and not yet handled",
                value=lanes_now.spooled,
            )
            yield GaugeMetricFamily(
                "campusguard_gateway_campuses_behind",
                "Campuses sending faster than they are stored (their messages go to the inbox)",
                value=len(lanes_now.stats.campuses_spilling),
            )
            yield CounterMetricFamily(
                "campusguard_gateway_inbox_spilled",
                "Messages ever written to the inbox",
                value=lanes_now.stats.spilled_messages,
            )
        connected = GaugeMetricFamily(
            "campusguard_gateway_mqtt_connected", "1 if connected to the broker", labels=["stream"]
        )
        connected.add_metric(["events"], float(rt.mqtt.connected.is_set()))
        connected.add_metric(["telemetry"], float(rt.telemetry_mqtt.connected.is_set()))
        yield connected
        yield GaugeMetricFamily(
            "campusguard_gateway_relay_pending",
            "Relay jobs not yet delivered (all gateways sharing the database)",
            value=self._pending,
        )
        lanes = GaugeMetricFamily(
            "campusguard_gateway_relay_queued",
            "Relay jobs queued or in flight in this gateway, per sink",
            labels=["sink"],
        )
        outcomes = CounterMetricFamily(
            "campusguard_gateway_relay_outcomes",
            "Relay attempts by outcome, per sink (this process)",
            labels=["sink", "outcome"],
        )
        for name, w in rt.workers.items():
            lanes.add_metric([name], sum(w.lanes().values()))
            outcomes.add_metric([name, "delivered"], w.delivered)
            outcomes.add_metric([name, "failed_attempt"], w.failed_attempts)
        yield lanes
        yield outcomes
        accepted = CounterMetricFamily(
            "campusguard_gateway_messages_accepted",
            "Messages accepted from the campuses, by kind",
            labels=["kind"],
        )
        for kind, n in rt.ingest.accepted.items():
            accepted.add_metric([str(kind)], n)
        yield accepted
        rejected = CounterMetricFamily(
            "campusguard_gateway_messages_rejected",
            "Messages rejected, by reason",
            labels=["reason"],
        )
        for reason, n in rt.ingest.reject.counts.items():
            rejected.add_metric([str(reason)], n)
        yield rejected
        yield CounterMetricFamily(
            "campusguard_gateway_events_duplicate",
            "Repeated events ignored",
            value=rt.ingest.duplicates,
        )
        devices = GaugeMetricFamily(
            "campusguard_gateway_devices", "Campus devices by state", labels=["state"]
        )
        for state, n in self._devices.items():
            devices.add_metric([state], n)
        yield devices
        edges = GaugeMetricFamily(
            "campusguard_gateway_edges", "Campus edges by state", labels=["state"]
        )
        for state, n in self._edges.items():
            edges.add_metric([state], n)
        yield edges
        paths = GaugeMetricFamily(
            "campusguard_gateway_police_path_up", "1 if the police path is up", labels=["path"]
        )
        for name, p in rt.paths.items():
            paths.add_metric([name], float(p.ok))
        yield paths
