"""Operations: liveness (public), the detailed health of the police paths and sinks, the
Prometheus scrape, and the ingest and relay counters."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request, Response

from gateway.api.auth import Principal, current, require
from gateway.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from gateway.metrics import GatewayMetrics

if TYPE_CHECKING:
    from gateway.service import GatewayRuntime


def router(rt: GatewayRuntime) -> APIRouter:
    api = APIRouter(tags=["operations"])
    metrics = GatewayMetrics(rt)

    @api.get("/healthz")
    async def liveness() -> dict[str, Any]:
        """Liveness for load balancers and container health checks (no login): the gateway's
        id and whether it is connected to the broker. The details are ``GET /api/health``."""
        return {"gateway": rt.cfg.gateway.id, "broker_connected": rt.mqtt.connected.is_set()}

    @api.get("/api/health")
    async def health(who: Annotated[Principal, Depends(require("health.read"))]) -> dict[str, Any]:
        """The police paths (DC-09 supervision; ``last_reply``: the receiver's last answer),
        each sink's health and queues, MQTT backlogs."""
        dc09 = rt.workers.get("dc09")
        sender = getattr(dc09.sink, "sender", None) if dc09 is not None else None
        replies = sender.last_replies() if sender is not None else {}
        return {
            "gateway": rt.cfg.gateway.id,
            "broker_connected": rt.mqtt.connected.is_set(),
            "telemetry_connected": rt.telemetry_mqtt.connected.is_set(),
            "backlog": {"events": rt.mqtt.backlog, "telemetry": rt.telemetry_mqtt.backlog},
            "inbox": {
                "kept": rt.mqtt.lanes.spooled if rt.mqtt.lanes else 0,
                "campuses_behind": sorted(rt.mqtt.lanes.stats.campuses_spilling)
                if rt.mqtt.lanes
                else [],
            },
            "police_paths": {
                name: {
                    "ok": p.ok,
                    "since": p.since,
                    "reason": p.reason,
                    "last_reply": replies.get(name),
                }
                for name, p in rt.paths.items()
            },
            "police_sinks": {
                name: {
                    **(getattr(w.sink, "health", lambda: None)() or {}),
                    "in_flight": w.in_flight,
                    "queued_by_campus": w.lanes(),
                    "delivered": w.delivered,
                    "failed_attempts": w.failed_attempts,
                }
                for name, w in rt.workers.items()
            },
        }

    async def scraper(request: Request) -> None:
        """A bearer token (or session) with health.read, unless metrics_public is set."""
        http = rt.cfg.gateway.http
        if http is not None and http.metrics_public:
            return
        who = await current(request)
        if not who.holds("health.read"):
            raise HTTPException(403, f"role {who.role} may not do this (health.read)")

    scraper.permission = "health.read"  # type: ignore[attr-defined]  # unless metrics_public

    @api.get("/metrics", dependencies=[Depends(scraper)], response_class=Response)
    async def prometheus_metrics() -> Response:
        """Prometheus text exposition: queue depths, relay latency and outcomes, devices.
        Needs a bearer token with health.read unless ``gateway.http.metrics_public``."""
        return Response(await metrics.render(), media_type=METRICS_CONTENT_TYPE)

    @api.get("/api/stats")
    async def stats(who: Annotated[Principal, Depends(require("health.read"))]) -> dict[str, Any]:
        """Events accepted, rejected and duplicated; relay outcomes; relay jobs pending."""
        return {
            "accepted": dict(rt.ingest.accepted),
            "rejected": dict(rt.ingest.reject.counts),
            "duplicates": rt.ingest.duplicates,
            "relay": {
                name: {"delivered": w.delivered, "failed_attempts": w.failed_attempts}
                for name, w in rt.workers.items()
            },
            "relay_pending": await rt.store.pending_jobs(),
        }

    return api
