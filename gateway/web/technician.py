"""The technician console: device health across the technician's campuses, live.

``/technician`` lists the devices offline first, then the flapping ones (several online/offline
changes in the last 24 h, counted from the outage records), with last seen and poll latency;
the campus links (edges); the police link's health (each DC-09 path up or down since when, the
last police ACK and supervision, each sink's queue and failures); the maintenance windows
(create, end now: ``/api/maintenance``) and a self-test button per device (``/api/selftest``).
The health part is re-fetched every few seconds (``/technician/health``).

``/technician/device/{campus}/{device}`` is one device: daily availability over 30 days as
server-rendered SVG bars (the uptime report's own computation, maintenance excluded) and its
recent outages.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse
from sqlalchemy import func, or_, select

from contract.models import utcnow
from gateway import reports
from gateway.api.auth import Principal
from gateway.api.common import IdPath, campuses_of
from gateway.api.queries import devices_in, edges_in
from gateway.store.models import AlarmRow, DeviceStatusRow, EdgeStateRow, OutageRow
from gateway.store.repo import Store, _shielded, aware
from gateway.web.kit import SECURITY_HEADERS

if TYPE_CHECKING:
    from gateway.service import GatewayRuntime
    from gateway.web.kit import Web

ROLES = ("technician", "admin")
FLAP_CHANGES = 4
"""Online/offline changes within ``FLAP_HOURS`` that make a device "flapping"."""
FLAP_HOURS = 24
HISTORY_DAYS = 30
STATES = ("offline", "flapping", "online", "maintenance")
ACK_LOOKBACK = timedelta(days=7)


@dataclass(frozen=True)
class DeviceView:
    row: DeviceStatusRow
    changes: int  # online/offline changes in the last FLAP_HOURS
    maintenance: bool  # inside an active maintenance window now

    @property
    def flapping(self) -> bool:
        return self.changes >= FLAP_CHANGES

    @property
    def state(self) -> str:
        if not self.row.online:
            return "offline"
        return "flapping" if self.flapping else "online"

    @property
    def rank(self) -> tuple[int, str, str]:
        order = {"offline": 0, "flapping": 1, "online": 2}[self.state]
        return order, self.row.campus, self.row.device

    @property
    def last_seen(self) -> datetime | None:
        seen = aware(self.row.last_response)
        return seen if seen is not None or not self.row.online else aware(self.row.ts)


@dataclass(frozen=True)
class Bar:
    day: str
    availability: float | None
    x: float
    height: float
    cls: str


def _iso(ts: datetime | None) -> str:
    return ts.isoformat() if ts is not None else ""


def _active(w: Any, now: datetime) -> bool:
    start, end = aware(w.start), aware(w.end)
    return start is not None and start <= now and (end is None or end > now)


@_shielded
async def _changes(
    store: Store, campuses: list[str], since: datetime
) -> dict[tuple[str, str], int]:
    """Online/offline changes since ``since`` per device, from the outage records (a read run
    to its end even if the page's request is cancelled: see ``_shielded``)."""
    out: dict[tuple[str, str], int] = {}
    async with store.session() as s:
        q = select(OutageRow.campus, OutageRow.device, OutageRow.start, OutageRow.end).where(
            OutageRow.campus.in_(campuses),
            OutageRow.kind == "device",
            or_(OutageRow.start >= since, OutageRow.end >= since),
        )
        for campus, device, start, end in (await s.execute(q)).all():
            n = int((aware(start) or since) >= since)
            n += int(end is not None and (aware(end) or since) >= since)
            out[(campus, device)] = out.get((campus, device), 0) + n
    return out


@_shielded
async def _last_acks(store: Store, campuses: list[str], since: datetime) -> dict[str, datetime]:
    """The last police acknowledgement per path, of the alarms of these campuses."""
    async with store.session() as s:
        q = (
            select(AlarmRow.police_path, func.max(AlarmRow.police_at))
            .where(
                AlarmRow.received_at >= since,
                AlarmRow.police_at.is_not(None),
                AlarmRow.campus.in_(campuses),
            )
            .group_by(AlarmRow.police_path)
        )
        out: dict[str, datetime] = {}
        for path, at in (await s.execute(q)).all():
            ts = aware(at)
            if ts is not None:
                out[str(path or "")] = ts
        return out


class Health:
    def __init__(self, rt: GatewayRuntime) -> None:
        self.rt = rt
        self.names = {c.id: c.name or c.id for c in rt.cfg.campuses}

    def campuses(self, who: Principal, campus: str | None) -> list[str]:
        return campuses_of(self.rt, who, campus or None)

    async def changes(self, campuses: list[str], since: datetime) -> dict[tuple[str, str], int]:
        return await _changes(self.rt.store, campuses, since)

    async def devices(self, campuses: list[str], state: str | None) -> list[DeviceView]:
        now = utcnow()
        rows = await devices_in(self.rt.store, campuses, None)
        changes = await self.changes(campuses, now - timedelta(hours=FLAP_HOURS))
        windows = [w for w in await self.rt.store.maintenance(campuses) if _active(w, now)]
        views = [
            DeviceView(
                r,
                changes.get((r.campus, r.device), 0),
                any(w.campus == r.campus and w.device in (None, r.device) for w in windows),
            )
            for r in rows
        ]
        if state == "maintenance":
            views = [v for v in views if v.maintenance]
        elif state in STATES:
            views = [v for v in views if v.state == state]
        return sorted(views, key=lambda v: v.rank)

    async def edges(self, campuses: list[str]) -> list[EdgeStateRow]:
        rows = await edges_in(self.rt.store, campuses)
        return sorted(rows, key=lambda e: (e.online, e.campus, e.edge))

    async def last_acks(self, campuses: list[str]) -> dict[str, datetime]:
        return await _last_acks(self.rt.store, campuses, utcnow() - ACK_LOOKBACK)

    async def police(self, campuses: list[str]) -> dict[str, Any]:
        rt = self.rt
        acks = await self.last_acks(campuses)
        # The receiver's last answer on each path (an alarm's ACK or a NULL link test's), as the
        # sender saw it; the stored alarms' police_at cover a restart of this gateway.
        dc09 = rt.workers.get("dc09")
        sender = getattr(dc09.sink, "sender", None) if dc09 is not None else None
        replies = sender.last_replies() if sender is not None else {}
        for name, at in replies.items():
            if at is not None and (acks.get(name) is None or at > acks[name]):
                acks[name] = at
        paths = []
        d = rt.cfg.dc09
        if d is not None:
            for name, cfg in (("primary", d.primary), ("backup", d.backup)):
                if cfg is None:
                    continue
                h = rt.paths.get(name)
                paths.append(
                    {
                        "name": name,
                        "target": f"{cfg.host}:{cfg.port}/{cfg.transport}",
                        "ok": True if h is None else h.ok,
                        "since": None if h is None else aware(h.since),
                        "reason": "" if h is None else h.reason,
                        "last_ack": acks.get(name),
                    }
                )
        sinks = []
        for name, w in rt.workers.items():
            health = getattr(w.sink, "health", lambda: None)() or {}
            queued = {c: n for c, n in w.lanes().items() if c in campuses}
            sinks.append(
                {
                    "name": name,
                    "ok": health.get("ok"),
                    "reason": health.get("reason") or "",
                    "queued": sum(queued.values()),
                    "in_flight": w.in_flight,
                    "delivered": w.delivered,
                    "failed": w.failed_attempts,
                }
            )
        return {
            "paths": paths,
            "sinks": sinks,
            "supervision": d.supervision_interval if d is not None else None,
            "last_ack": max(acks.values(), default=None),
            "broker": rt.mqtt.connected.is_set(),
        }

    async def history(
        self, campus: str, device: str
    ) -> tuple[list[Bar], list[reports.Outage], reports.DeviceUptime | None, str]:
        """Daily availability over HISTORY_DAYS (report time zone) and the outages in it."""
        rt = self.rt
        tz = ZoneInfo(rt.cfg.telemetry.report_timezone)
        now = datetime.now(tz)
        today = now.replace(hour=0, minute=0, second=0, microsecond=0)
        first = today - timedelta(days=HISTORY_DAYS - 1)
        lo, hi = first.astimezone(UTC), now.astimezone(UTC)
        seen, outages, windows = await rt.store.uptime_inputs(lo, hi, [campus])
        mine = [s for s in seen if s.device == device]
        if not mine:
            return [], [], None, ""
        kind, first_seen = mine[0].kind, aware(mine[0].first_seen) or lo
        outs = [
            reports.OutageInput(o.campus, o.device, aware(o.start) or lo, aware(o.end), o.cause)
            for o in outages
            if o.device == device
        ]
        wins = [
            reports.WindowInput(w.campus, w.device, aware(w.start) or lo, aware(w.end))
            for w in windows
            if w.device in (None, device)
        ]
        target = rt.cfg.telemetry.uptime_target
        bars: list[Bar] = []
        width = 20.0
        for i in range(HISTORY_DAYS):
            day = first + timedelta(days=i)
            end = min(day + timedelta(days=1), now)
            up = reports.device_uptime(
                campus, device, kind, first_seen, day.astimezone(UTC), end.astimezone(UTC),
                outs, wins,
            )  # fmt: skip
            av = up.availability
            cls = "none" if av is None else ("ok" if av >= target else "bad")
            height = 4.0 if av is None else max(2.0, round(av * 100, 1))
            bars.append(Bar(f"{day:%Y-%m-%d}", av, i * width, height, cls))
        whole = reports.device_uptime(campus, device, kind, first_seen, lo, hi, outs, wins)
        recent = sorted(whole.outages, key=lambda o: o.start, reverse=True)[:30]
        return bars, recent, whole, kind


def add_routes(app: FastAPI, rt: GatewayRuntime, web: Web) -> None:
    """The technician console's pages (its actions are the REST API's)."""
    health = Health(rt)

    async def context(request: Request, who: Principal) -> dict[str, Any]:
        campus = request.query_params.get("campus") or None
        state = request.query_params.get("state") or None
        if state not in (None, *STATES):
            state = None
        wanted = health.campuses(who, campus)
        return {
            "devices": await health.devices(wanted, state),
            "edges": await health.edges(wanted),
            "police": await health.police(wanted),
            "campus": campus or "",
            "state": state or "",
            "names": health.names,
            "flap_changes": FLAP_CHANGES,
            "flap_hours": FLAP_HOURS,
            "iso": _iso,
        }

    @app.get("/technician", include_in_schema=False)
    async def page(request: Request) -> HTMLResponse:
        who = await web.viewer(request, *ROLES)
        ctx = await context(request, who)
        mine = health.campuses(who, None)
        windows = await rt.store.maintenance(mine)
        return web.page(
            request,
            "technician.html",
            who,
            js_prefixes=("tech.js.",),
            mine=mine,
            windows=windows,
            now=utcnow(),
            aware=aware,
            **ctx,
        )

    @app.get("/technician/health", include_in_schema=False)
    async def fragment(request: Request) -> HTMLResponse:
        """The health part again (the page polls it)."""
        who = await web.viewer(request, *ROLES)
        ctx = await context(request, who)
        html = web.env.get_template("technician_health.html").render(
            t=web.translator(request), who=who, **ctx
        )
        return HTMLResponse(html, headers=SECURITY_HEADERS)

    @app.get("/technician/device/{campus}/{device}", include_in_schema=False)
    async def device_page(campus: IdPath, device: IdPath, request: Request) -> HTMLResponse:
        who = await web.viewer(request, *ROLES)
        health.campuses(who, campus)  # 404 outside the user's campuses
        rows = [r for r in await devices_in(rt.store, [campus], None) if r.device == device]
        bars, outages, whole, kind = await health.history(campus, device)
        if not rows and whole is None:
            raise HTTPException(404, f"no device {device}")
        windows = [
            w
            for w in await rt.store.maintenance([campus])
            if w.device in (None, device)
        ]  # fmt: skip
        return web.page(
            request,
            "technician_device.html",
            who,
            js_prefixes=("tech.js.",),
            campus=campus,
            device=device,
            status=rows[0] if rows else None,
            kind=kind,
            bars=bars,
            outages=outages,
            whole=whole,
            windows=windows[:20],
            names=health.names,
            days=HISTORY_DAYS,
            target=rt.cfg.telemetry.uptime_target,
            iso=_iso,
            aware=aware,
            now=utcnow(),
            hms=reports.hms,
        )
