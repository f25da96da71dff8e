"""Uptime and compliance reports (JSON, CSV or printable HTML), per campus and district."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any, Literal
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, HTTPException, Query

from contract.models import ID_PATTERN
from gateway import reports
from gateway.api.auth import Principal, require
from gateway.api.common import aware_, campuses_of, respond
from gateway.store.models import AlarmRow
from gateway.store.repo import aware

if TYPE_CHECKING:
    from gateway.service import GatewayRuntime

Format = Literal["json", "csv", "html"]


def report_range(
    rt: GatewayRuntime,
    period: str | None,
    date: str | None,
    start: datetime | None,
    end: datetime | None,
) -> tuple[datetime, datetime, str]:
    tz = ZoneInfo(rt.cfg.telemetry.report_timezone)
    if start is not None or end is not None:
        if start is None or end is None:
            raise HTTPException(422, "give both start and end, or period and date")
        if start.tzinfo is None or end.tzinfo is None:
            raise HTTPException(422, "start and end need a time zone (e.g. +08:00 or Z)")
        if end <= start:
            raise HTTPException(422, "end must be after start")
        return start.astimezone(UTC), end.astimezone(UTC), f"{start:%Y-%m-%d} – {end:%Y-%m-%d}"
    today = datetime.now(tz)
    try:
        if period in (None, "month"):
            first = (
                datetime.strptime(date, "%Y-%m").replace(tzinfo=tz)
                if date
                else today.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
            )
            nxt = (first + timedelta(days=32)).replace(day=1)
            label = f"{first:%Y-%m}"
        elif period == "day":
            first = (
                datetime.strptime(date, "%Y-%m-%d").replace(tzinfo=tz)
                if date
                else today.replace(hour=0, minute=0, second=0, microsecond=0)
            )
            nxt = first + timedelta(days=1)
            label = f"{first:%Y-%m-%d}"
        else:
            raise HTTPException(422, "period is day or month (or give start and end)")
    except (ValueError, OverflowError):
        raise HTTPException(422, f"date {date!r} does not match the period") from None
    if first >= today:
        raise HTTPException(422, f"{label} has not begun")
    # The current day or month is reported up to now, not into the future.
    return first.astimezone(UTC), min(nxt, today).astimezone(UTC), label


async def uptime_of(
    rt: GatewayRuntime, campuses: list[str], start: datetime, end: datetime
) -> reports.UptimeReport:
    seen, outages, windows = await rt.store.uptime_inputs(start, end, campuses)
    return reports.uptime_report(
        start,
        end,
        [(d.campus, d.device, d.kind, aware_(d.first_seen)) for d in seen],
        [
            reports.OutageInput(o.campus, o.device, aware_(o.start), aware(o.end), o.cause)
            for o in outages
        ],
        [reports.WindowInput(w.campus, w.device, aware_(w.start), aware(w.end)) for w in windows],
        target=rt.cfg.telemetry.uptime_target,
    )


TEST_KINDS = ("test", "test_missed")
"""Alarm records that are tests (periodic, self-test) or a missed periodic test: never alarms."""


@dataclasses.dataclass
class CampusMonth:
    """One campus' month: its compliance and what it was computed from."""

    campus: str
    compliance: reports.Compliance
    alarms: list[AlarmRow]
    """Every alarm record of the month, tests and missed periodic tests included."""
    inputs: list[reports.AlarmInput]
    drills: list[reports.DrillInput]
    required: str
    outages: int


async def compliance_month(
    rt: GatewayRuntime, wanted: list[str], lo: datetime, hi: datetime
) -> tuple[list[CampusMonth], reports.UptimeReport]:
    """The compliance of each campus for ``[lo, hi)`` (the API's report and the inspector
    console's page are both this)."""
    rep = await uptime_of(rt, wanted, lo, hi)
    by_campus = {c.name: c for c in rep.campuses}
    outages: dict[str, int] = {}
    for d in rep.devices:
        outages[d.campus] = outages.get(d.campus, 0) + len(d.outages)
    alarms = await rt.store.alarms_between(lo, hi, wanted)
    tz = ZoneInfo(rt.cfg.telemetry.report_timezone)
    _, held, _ = await rt.store.drill_compliance_inputs(wanted, lo)
    accounts = {c.id: c for c in rt.cfg.campuses}
    months = []
    for c in wanted:
        drills = [
            reports.DrillInput(d.kind, f"{end.astimezone(tz):%Y-%m-%d}")
            for d in held
            if d.campus == c and (end := aware(d.actual_end)) is not None and end < hi
        ]
        mine = [a for a in alarms if a.campus == c]
        inputs = [
            reports.AlarmInput(
                a.kind,
                a.drill,
                a.restore,
                aware_(a.edge_ts),
                aware(a.police_at),
                aware(a.guard_ack_at),
                a.state,
            )
            for a in mine
            if a.kind not in TEST_KINDS
        ]
        agg = by_campus.get(c) or reports.aggregate(c, [], rep.target)
        required = str(getattr(rt.cfg.drills.frequency, accounts[c].type))
        comp = reports.compliance(c, lo, hi, agg, inputs, drills, required)
        months.append(CampusMonth(c, comp, mine, inputs, drills, required, outages.get(c, 0)))
    return months, rep


def router(rt: GatewayRuntime) -> APIRouter:
    api = APIRouter(tags=["reports"])

    @api.get("/api/reports/uptime")
    async def uptime_report(
        who: Annotated[Principal, Depends(require("reports.read"))],
        campus: Annotated[str | None, Query(pattern=ID_PATTERN)] = None,
        period: Literal["day", "month"] | None = None,
        date: Annotated[
            str | None, Query(max_length=10, description="YYYY-MM (month) or YYYY-MM-DD (day)")
        ] = None,
        start: datetime | None = None,
        end: datetime | None = None,
        format: Format = "json",
    ) -> Any:
        """Availability per device, campus and district; maintenance windows excluded."""
        lo, hi, label = report_range(rt, period, date, start, end)
        rep = await uptime_of(rt, campuses_of(rt, who, campus), lo, hi)
        return respond(
            format,
            dataclasses.asdict(rep),
            reports.uptime_csv(rep),
            reports.uptime_html(rep, f"Device availability {label}"),
            f"uptime-{label}",
        )

    @api.get("/api/reports/compliance")
    async def compliance_report(
        who: Annotated[Principal, Depends(require("reports.read"))],
        campus: Annotated[str | None, Query(pattern=ID_PATTERN)] = None,
        month: Annotated[
            str | None, Query(max_length=7, description="YYYY-MM; default: this month")
        ] = None,
        format: Format = "json",
    ) -> Any:
        """The monthly report per campus for the education commission."""
        lo, hi, label = report_range(rt, "month", month, None, None)
        months, _ = await compliance_month(rt, campuses_of(rt, who, campus), lo, hi)
        rows = [m.compliance for m in months]
        names = {c.id: c.name for c in rt.cfg.campuses}
        return respond(
            format,
            [dataclasses.asdict(r) for r in rows],
            reports.compliance_csv(rows),
            reports.compliance_html(rows, names, f"Campus safety compliance {label}"),
            f"compliance-{label}",
        )

    return api
