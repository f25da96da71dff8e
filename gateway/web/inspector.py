"""The inspector console: the monthly compliance report per campus and for the district.

``/inspector?month=YYYY-MM[&campus=id]`` shows, for each campus the user may see and for the
district: device availability (maintenance excluded), outages, drills held against the required
frequency, missed periodic tests, alarms by kind, time to the police and to the guard's
acknowledgement. The numbers are those of :mod:`gateway.reports`, as the REST API computes them
(``/api/reports/compliance``, whose CSV the page links); the page prints cleanly (print CSS).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse

from gateway import reports
from gateway.api.auth import Principal
from gateway.api.common import campuses_of
from gateway.api.reports import TEST_KINDS, compliance_month, report_range

if TYPE_CHECKING:
    from gateway.service import GatewayRuntime
    from gateway.web.kit import Web

ROLES = ("inspector", "technician", "admin")
MISSED = "test_missed"
"""The alarm record of a periodic test signal that did not arrive."""


@dataclass
class Row:
    """One campus (or the district) on the report page."""

    id: str
    name: str
    c: reports.Compliance
    outages: int
    missed_tests: int
    by_kind: list[tuple[str, int]] = field(default_factory=list)
    required: str = ""

    @property
    def drills_met(self) -> bool | None:
        """Monthly drills: at least one this month; other frequencies: not judged per month."""
        if self.required == "monthly":
            return self.c.drills_held >= 1
        return None


async def report(rt: GatewayRuntime, wanted: list[str], lo: datetime, hi: datetime) -> list[Row]:
    """The campuses' rows and, when there are several, the district's (last)."""
    months, rep = await compliance_month(rt, wanted, lo, hi)
    accounts = {c.id: c for c in rt.cfg.campuses}
    every_alarm: list[reports.AlarmInput] = []
    every_drill: list[reports.DrillInput] = []
    rows: list[Row] = []
    kinds_all: Counter[str] = Counter()
    missed_all = 0
    for m in months:
        kinds = Counter(
            a.kind for a in m.alarms if not a.drill and not a.restore and a.kind not in TEST_KINDS
        )
        missed = sum(1 for a in m.alarms if a.kind == MISSED and not a.restore)
        rows.append(
            Row(
                m.campus,
                accounts[m.campus].name or m.campus,
                m.compliance,
                m.outages,
                missed,
                sorted(kinds.items()),
                m.required,
            )
        )
        every_alarm += m.inputs
        every_drill += m.drills
        kinds_all.update(kinds)
        missed_all += missed
    if len(wanted) > 1:
        comp = reports.compliance("district", lo, hi, rep.district, every_alarm, every_drill)
        rows.append(
            Row(
                "district",
                "",
                comp,
                sum(m.outages for m in months),
                missed_all,
                sorted(kinds_all.items()),
            )
        )
    return rows


def add_routes(app: FastAPI, rt: GatewayRuntime, web: Web) -> None:
    """The inspector console's page."""
    names = {c.id: c.name or c.id for c in rt.cfg.campuses}

    @app.get("/inspector", include_in_schema=False)
    async def page(request: Request) -> HTMLResponse:
        who: Principal = await web.viewer(request, *ROLES)
        month = request.query_params.get("month") or None
        campus = request.query_params.get("campus") or None
        mine = campuses_of(rt, who, None)
        wanted = campuses_of(rt, who, campus)  # 404 outside the user's campuses
        error = ""
        rows: list[Row] = []
        label = month or ""
        try:
            lo, hi, label = report_range(rt, "month", month, None, None)
        except HTTPException as exc:
            error = str(exc.detail)
        else:
            rows = await report(rt, wanted, lo, hi)
        query: dict[str, Any] = {"month": label, "format": "csv"}
        if campus:
            query["campus"] = campus
        return web.page(
            request,
            "inspector.html",
            who,
            js_prefixes=("insp.js.",),
            rows=rows,
            month=label,
            campus=campus or "",
            mine=mine,
            names=names,
            error=error,
            target=rt.cfg.telemetry.uptime_target,
            tz=rt.cfg.telemetry.report_timezone,
            csv_url="/api/reports/compliance?" + urlencode(query),
            hms=reports.hms,
        )
