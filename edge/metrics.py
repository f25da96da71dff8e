"""Prometheus metrics for the campus edge: a tiny HTTP endpoint (``GET /metrics``), no web
framework, enabled by the optional ``metrics: {host, port}`` of the edge config.

Outbox depth and unconfirmed events, uplink state, devices by state, poll latency."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from edge.daemon import EdgeRuntime

log = logging.getLogger(__name__)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class EdgeMetrics(Collector):
    def __init__(self, rt: EdgeRuntime) -> None:
        self.rt = rt
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)
        self._unconfirmed = 0

    async def render(self) -> bytes:
        self._unconfirmed = await self.rt.outbox.unconfirmed()
        return generate_latest(self.registry)

    def collect(self) -> Iterator[Metric]:
        rt = self.rt
        yield GaugeMetricFamily(
            "campusguard_edge_outbox_depth",
            "Messages in the on-disk outbox (not yet sent, or sent and awaiting a receipt)",
            value=rt.outbox.depth,
        )
        yield GaugeMetricFamily(
            "campusguard_edge_outbox_unconfirmed",
            "Messages sent and still waiting for the gateway's receipt",
            value=self._unconfirmed,
        )
        yield GaugeMetricFamily(
            "campusguard_edge_uplink_connected",
            "1 if the edge is connected to the broker",
            value=float(rt.uplink.connected.is_set()),
        )
        states = {"online": 0, "offline": 0, "unknown": 0}
        latency = GaugeMetricFamily(
            "campusguard_edge_poll_latency_seconds",
            "Latency of the last successful poll, per Modbus device",
            labels=["device"],
        )
        for dev_id, p in rt.pollers.items():
            states[_state(p.online)] += 1
            last = getattr(p, "last_latency", None)
            if last is not None:
                latency.add_metric([dev_id], float(last))
        for b in rt.bollards.values():
            states[_state(b.online)] += 1
        for c in rt.cameras.values():
            states[_state(c.online)] += 1
        devices = GaugeMetricFamily(
            "campusguard_edge_devices", "Devices by state", labels=["state"]
        )
        for state, n in states.items():
            devices.add_metric([state], n)
        yield devices
        yield latency
        yield GaugeMetricFamily(
            "campusguard_edge_rejected_downlink",
            "Messages from the centre rejected by this edge",
            value=rt.rejected,
        )


def _state(online: bool | None) -> str:
    return "unknown" if online is None else "online" if online else "offline"


@contextlib.asynccontextmanager
async def serve_metrics(rt: EdgeRuntime, host: str, port: int) -> AsyncIterator[int]:
    """Serve ``GET /metrics`` on ``host:port`` (0 = a free port); yields the bound port."""
    metrics = EdgeMetrics(rt)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            parts = request.split(b" ", 2)
            path = parts[1].split(b"?", 1)[0] if len(parts) > 1 else b""
            if parts[0] == b"GET" and path == b"/metrics":
                body, status, ctype = await metrics.render(), b"200 OK", CONTENT_TYPE
            else:
                body, status, ctype = b"not found\n", b"404 Not Found", "text/plain"
            writer.write(
                b"HTTP/1.1 "
                + status
                + b"\r\nContent-Type: "
                + ctype.encode()
                + b"\r\nContent-Length: "
                + str(len(body)).encode()
                + b"\r\nConnection: close\r\n\r\n"
                + body
            )
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            pass
        except Exception:
            log.exception("metrics request failed")
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    server = await asyncio.start_server(handle, host, port)
    bound = int(server.sockets[0].getsockname()[1])
    log.info("edge metrics on http://%s:%d/metrics", host, bound)
    try:
        yield bound
    finally:
        server.close()
        await server.wait_closed()
