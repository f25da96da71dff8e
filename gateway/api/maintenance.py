"""Maintenance windows: planned work on a campus or device, excluded from availability."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query
from pydantic import BaseModel, ConfigDict, Field

from contract.models import ID_PATTERN, utcnow
from gateway.api.auth import Principal, require
from gateway.api.common import campuses_of, row_dict
from gateway.api.queries import maintenance_window
from gateway.store.models import MaintenanceRow

if TYPE_CHECKING:
    from gateway.service import GatewayRuntime

log = logging.getLogger(__name__)


class MaintenanceIn(BaseModel):
    """A planned maintenance window: excluded from availability."""

    model_config = ConfigDict(extra="forbid")

    campus: str = Field(max_length=64)
    device: str | None = Field(None, max_length=64, description="none: the whole campus")
    start: datetime | None = Field(None, description="default: now")
    end: datetime | None = Field(None, description="default: open until ended")
    reason: str = Field(min_length=1, max_length=500)


def router(rt: GatewayRuntime) -> APIRouter:
    api = APIRouter(tags=["maintenance"])

    @api.post("/api/maintenance", status_code=201)
    async def add_window(
        body: MaintenanceIn, who: Annotated[Principal, Depends(require("maintenance.write"))]
    ) -> dict[str, Any]:
        campuses_of(rt, who, body.campus)
        ts = utcnow()
        start = body.start or ts
        if start.tzinfo is None or (body.end is not None and body.end.tzinfo is None):
            raise HTTPException(422, "times need a time zone (e.g. +08:00 or Z)")
        if body.end is not None and body.end <= start:
            raise HTTPException(422, "end must be after start")
        row = await rt.store.add_maintenance(
            MaintenanceRow(
                campus=body.campus,
                device=body.device,
                start=start,
                end=body.end,
                reason=body.reason,
                user=who.user,
                created_at=ts,
            )
        )
        log.info(
            "maintenance window %s on %s/%s by %s: %s",
            row.id,
            body.campus,
            body.device or "*",
            who.user,
            body.reason,
        )
        return row_dict(row)

    @api.post("/api/maintenance/{window_id}/end")
    async def end_window(
        window_id: Annotated[int, Path(ge=1, le=2**31 - 1)],
        who: Annotated[Principal, Depends(require("maintenance.write"))],
    ) -> dict[str, Any]:
        """End a window now (a window of a campus not the user's: 404, untouched)."""
        found = await maintenance_window(rt.store, window_id)
        if found is None or not who.may_act_on(found.campus):
            raise HTTPException(404, f"no maintenance window {window_id}")
        row = await rt.store.end_maintenance(window_id, utcnow())
        if row is None or not who.may_act_on(row.campus):
            raise HTTPException(404, f"no maintenance window {window_id}")
        return row_dict(row)

    @api.get("/api/maintenance")
    async def windows(
        who: Annotated[Principal, Depends(require("maintenance.read"))],
        campus: Annotated[str | None, Query(pattern=ID_PATTERN)] = None,
    ) -> list[dict[str, Any]]:
        return [row_dict(w) for w in await rt.store.maintenance(campuses_of(rt, who, campus))]

    return api
