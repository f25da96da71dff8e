"""A device's telemetry samples from the embedded store."""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query

from contract.models import utcnow
from gateway.api.auth import Principal, require
from gateway.api.common import IdPath, campuses_of
from gateway.store.repo import aware

if TYPE_CHECKING:
    from gateway.service import GatewayRuntime


def router(rt: GatewayRuntime) -> APIRouter:
    api = APIRouter(tags=["telemetry"])

    @api.get("/api/telemetry/{campus}/{device}")
    async def telemetry(
        campus: IdPath,
        device: IdPath,
        who: Annotated[Principal, Depends(require("telemetry.read"))],
        hours: Annotated[float, Query(gt=0, le=24 * 31)] = 24.0,
    ) -> dict[str, Any]:
        """A device's samples from the embedded store (with InfluxDB: query InfluxDB/Grafana)."""
        campuses_of(rt, who, campus)
        if rt.cfg.influxdb is not None:
            raise HTTPException(409, "telemetry is in InfluxDB: use Grafana or InfluxDB's API")
        hi = utcnow()
        rows = await rt.store.telemetry(campus, device, hi - timedelta(hours=hours), hi)
        return {
            "campus": campus,
            "device": device,
            "samples": [
                {"ts": aware(r.ts), "point": r.point, "kind": r.kind, "fields": r.fields}
                for r in rows
            ],
        }

    return api
