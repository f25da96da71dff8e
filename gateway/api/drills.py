"""Drills: start or schedule one on a campus, end it, list them, and the drill compliance."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, HTTPException, Query, Response
from pydantic import BaseModel, ConfigDict, Field

from contract.models import ID_PATTERN, DrillKind, utcnow
from gateway import drills as drill_ops
from gateway.api.auth import Principal, require
from gateway.api.common import IdPath, campuses_of, respond

if TYPE_CHECKING:
    from gateway.service import GatewayRuntime

log = logging.getLogger(__name__)


class DrillIn(BaseModel):
    """Start a drill now, or schedule it with ``planned_start``; who runs it is the logged-in
    user (or the token's)."""

    model_config = ConfigDict(extra="forbid")

    campus: str = Field(max_length=64)
    kind: DrillKind = "other"
    minutes: float | None = Field(
        None, gt=0, description="length (fractions allowed); default drills.default_minutes"
    )
    planned_start: datetime | None = Field(None, description="schedule it; default: now")
    note: str = Field("", max_length=500)
    source: Literal["api", "cli"] = "api"


def router(rt: GatewayRuntime) -> APIRouter:
    api = APIRouter(tags=["drills"])

    def running() -> drill_ops.Drills:
        if rt.drills is None:
            raise HTTPException(503, "drills are not running")
        return rt.drills

    @api.post("/api/drills", status_code=201)
    async def drill_start(
        body: DrillIn, who: Annotated[Principal, Depends(require("drills.run"))]
    ) -> dict[str, Any]:
        """Start a drill on a campus now (the campus confirms it), or schedule it."""
        campuses_of(rt, who, body.campus)
        try:
            row = await running().start(
                body.campus,
                body.kind,
                body.minutes,
                who.user,
                source=body.source,
                note=body.note,
                planned_start=body.planned_start,
            )
        except drill_ops.DrillError as exc:
            raise HTTPException(exc.status, str(exc)) from None
        except OverflowError:
            raise HTTPException(422, "planned_start is too far in the future") from None
        return drill_ops.drill_out(row)

    @api.get("/api/drills")
    async def drill_list(
        who: Annotated[Principal, Depends(require("drills.read"))],
        campus: Annotated[str | None, Query(pattern=ID_PATTERN)] = None,
        state: Literal["scheduled", "requested", "running", "ended", "cancelled"] | None = None,
        limit: Annotated[int, Query(ge=1, le=5000)] = 200,
    ) -> list[dict[str, Any]]:
        """Drill records, newest first (``requested``: sent, not yet confirmed by the campus)."""
        wanted = campuses_of(rt, who, campus)
        rows = await rt.store.drills(wanted, "running" if state == "requested" else state, limit)
        out = [drill_ops.drill_out(r) for r in rows]
        if state in ("requested", "running"):
            out = [d for d in out if d["status"] == state]
        return out

    @api.get("/api/drills/compliance")
    async def drill_compliance(
        who: Annotated[Principal, Depends(require("drills.read"))],
        campus: Annotated[str | None, Query(pattern=ID_PATTERN)] = None,
        format: Literal["json", "csv", "html"] = "json",
    ) -> Any:
        """Per campus: required frequency, last drill, next due, overdue or not."""
        tz = ZoneInfo(rt.cfg.telemetry.report_timezone)
        rows = await drill_ops.compliance(rt.cfg, rt.store, campuses_of(rt, who, campus))
        today = f"{utcnow().astimezone(tz):%Y-%m-%d}"
        return respond(
            format,
            drill_ops.compliance_json(rows),
            drill_ops.compliance_csv(rows),
            drill_ops.compliance_html(rows, tz, f"Drill compliance {today}"),
            f"drill-compliance-{today}",
        )

    @api.get("/api/drills/{drill_id}")
    async def drill_get(
        drill_id: IdPath, who: Annotated[Principal, Depends(require("drills.read"))]
    ) -> dict[str, Any]:
        row = await rt.store.drill(drill_id)
        if row is None or not who.may_act_on(row.campus):
            raise HTTPException(404, f"no drill {drill_id}")
        return drill_ops.drill_out(row)

    @api.post("/api/drills/{drill_id}/end", status_code=202)
    async def drill_end(
        drill_id: IdPath,
        response: Response,
        who: Annotated[Principal, Depends(require("drills.run"))],
    ) -> dict[str, Any]:
        """End a running drill (202: sent; the campus confirms) or cancel a scheduled one (200)."""
        row = await rt.store.drill(drill_id)
        if row is None or not who.may_act_on(row.campus):
            raise HTTPException(404, f"no drill {drill_id}")
        try:
            row, sent = await running().end(drill_id, who.user)
        except drill_ops.DrillError as exc:
            raise HTTPException(exc.status, str(exc)) from None
        if not sent:
            response.status_code = 200
        return drill_ops.drill_out(row)

    return api
