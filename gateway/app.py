"""The gateway's HTTP side: a FastAPI factory and an in-process uvicorn server.

The full REST API, accounts and consoles come with the central-consoles work; this is what the
foundation needs: health, alarms with their timeline, device and edge status, relay counters.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import html
import json
import logging
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any, Literal
from zoneinfo import ZoneInfo

import uvicorn
from fastapi import FastAPI, Header, HTTPException, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from contract import topics
from contract.config import ApiToken
from contract.models import BollardCommandMessage, DrillKind, new_id, utcnow
from gateway import drills as drill_ops
from gateway import reports
from gateway.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from gateway.metrics import GatewayMetrics
from gateway.selftest import describe as selftest_view
from gateway.store.models import CommandRow, MaintenanceRow
from gateway.store.repo import aware

if TYPE_CHECKING:
    from gateway.service import GatewayRuntime

log = logging.getLogger(__name__)


class CommandIn(BaseModel):
    """A request to operate a bollard; who asks comes from the bearer token, never the body."""

    model_config = ConfigDict(extra="forbid")

    action: Literal["raise", "lower", "stop", "emergency_raise"] | None = None
    step: Literal["request", "confirm"] = "request"
    command_id: str | None = Field(
        None, min_length=26, max_length=26, description="for confirm: the armed command's id"
    )
    token: str | None = Field(None, max_length=128, description="for confirm: from 'armed'")
    reason: str = Field("", max_length=200)
    ttl: float = Field(30.0, gt=0, le=60, description="seconds the command stays valid")


class SelftestIn(BaseModel):
    """Prove one device's alarm path end to end (``campusguard selftest``)."""

    model_config = ConfigDict(extra="forbid")

    campus: str
    device: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
    mode: Literal["synthetic", "pulse"] = "synthetic"
    timeout: float | None = Field(
        None, gt=0, le=600, description="seconds before it fails; default selftest_timeout"
    )


class DrillIn(BaseModel):
    """Start a drill now, or schedule it with ``planned_start``; who runs it is the token's
    user."""

    model_config = ConfigDict(extra="forbid")

    campus: str
    kind: DrillKind = "other"
    minutes: float | None = Field(
        None, gt=0, description="length (fractions allowed); default drills.default_minutes"
    )
    planned_start: datetime | None = Field(None, description="schedule it; default: now")
    note: str = Field("", max_length=500)
    source: Literal["api", "cli"] = "api"


DRILL_ROLES = ("guard", "supervisor", "dispatcher", "admin")
"""Roles that may run drills (on the campuses of their token); the others read."""


class MaintenanceIn(BaseModel):
    """A planned maintenance window: excluded from availability."""

    model_config = ConfigDict(extra="forbid")

    campus: str
    device: str | None = Field(None, description="none: the whole campus")
    start: datetime | None = Field(None, description="default: now")
    end: datetime | None = Field(None, description="default: open until ended")
    reason: str = Field(min_length=1, max_length=500)


class CommandOut(BaseModel):
    id: str
    campus: str
    device: str
    bollard: int
    action: str | None
    user: str
    role: str
    reason: str
    state: str
    code: str | None
    detail: str
    token: str | None
    issued_at: datetime
    updated_at: datetime


class StepOut(BaseModel):
    state: str
    ts: datetime
    path: str | None
    note: str


class AlarmOut(BaseModel):
    id: str
    campus: str
    kind: str
    severity: str
    device: str
    point: str | None
    zone: str | None
    location: str | None
    drill: bool
    text: str
    edge_ts: datetime
    received_at: datetime
    state: str
    police_path: str | None
    police_at: datetime | None


class EvidenceOut(BaseModel):
    id: str
    camera: str
    shot: int
    taken_at: datetime
    size: int
    sha256: str | None
    error: str | None
    url: str | None = Field(description="the picture (bearer token with an evidence role)")


class AlarmDetail(AlarmOut):
    timeline: list[StepOut]
    evidence: list[EvidenceOut]
    verification_url: str | None = Field(
        None, description="the signed link the police got (x-data V), when one is configured"
    )


_FILE_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def aware_(ts: datetime) -> datetime:
    out = aware(ts)
    assert out is not None
    return out


def _row(row: Any) -> dict[str, Any]:
    return {
        k: (aware(v) if isinstance(v, datetime) else v)
        for k, v in row.__dict__.items()
        if not k.startswith("_")
    }


def create_app(rt: GatewayRuntime) -> FastAPI:
    app = FastAPI(title="CampusGuard gateway", version="0.1.0")
    from gateway.notify.api import add_routes as add_notify_routes

    add_notify_routes(app, rt)  # people told: ack links and each alarm's notifications

    @app.get("/healthz")
    async def health() -> dict[str, Any]:
        return {
            "gateway": rt.cfg.gateway.id,
            "broker_connected": rt.mqtt.connected.is_set(),
            "telemetry_connected": rt.telemetry_mqtt.connected.is_set(),
            "backlog": {"events": rt.mqtt.backlog, "telemetry": rt.telemetry_mqtt.backlog},
            "police_paths": {
                name: {"ok": p.ok, "since": p.since, "reason": p.reason}
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

    @app.post("/api/police/webhook/status")
    async def police_status(request: Request) -> Response:
        """The police receiver's status updates (received, dispatched, on_scene, closed),
        signed like the alarms it gets (docs/police-webhook.md); each a step for the campus."""
        from gateway.relay.webhook import apply_status

        worker = rt.workers.get("webhook")
        if worker is None:
            raise HTTPException(404, "no webhook sink is configured")
        code, answer = await apply_status(
            rt.store,
            worker.sink.inbox,  # type: ignore[attr-defined]
            request.headers.get("X-CG-Timestamp"),
            request.headers.get("X-CG-Signature"),
            await request.body(),
        )
        if code == 200 and answer.get("changed"):
            rt.mqtt.wake_downlink.set()
        return Response(json.dumps(answer), status_code=code, media_type="application/json")

    @app.get("/api/alarms", response_model=list[AlarmOut])
    async def alarms(
        campus: str | None = None, limit: int = Query(100, ge=1, le=1000)
    ) -> list[dict[str, Any]]:
        return [_row(r) for r in await rt.store.alarms(campus, limit)]

    @app.get("/api/alarms/{alarm_id}", response_model=AlarmDetail)
    async def alarm(alarm_id: str) -> dict[str, Any]:
        found = await rt.store.alarm(alarm_id)
        if found is None:
            raise HTTPException(404, f"no alarm {alarm_id}")
        row, steps = found
        out = _row(row)
        out["timeline"] = [
            {"state": s.state, "ts": aware(s.ts), "path": s.path, "note": s.note} for s in steps
        ]
        out["evidence"] = [
            {
                "id": e.id,
                "camera": e.camera,
                "shot": e.shot,
                "taken_at": aware(e.taken_at),
                "size": e.size,
                "sha256": e.sha256,
                "error": e.error,
                "url": f"/api/evidence/{e.id}" if e.path else None,
            }
            for e in await rt.store.evidence_for(alarm_id)
        ]
        out["verification_url"] = rt.vault.link_for(row.id, aware(row.edge_ts))
        return out

    @app.get(
        "/api/evidence/{evidence_id}",
        response_class=FileResponse,
        responses={200: {"content": {"image/jpeg": {}}}},
    )
    async def evidence(
        evidence_id: str, authorization: Annotated[str | None, Header()] = None
    ) -> FileResponse:
        """An alarm's picture: for the roles in ``evidence.roles``, on their own campuses."""
        tok = authorised(authorization)
        row = await rt.store.evidence(evidence_id)
        if row is None or row.path is None or not tok.may_act_on(row.campus):
            raise HTTPException(404, f"no picture {evidence_id}")
        if tok.role not in rt.cfg.evidence.roles:
            log.warning("refused picture %s to %s (role %s)", evidence_id, tok.user, tok.role)
            raise HTTPException(403, f"role {tok.role} may not see alarm pictures")
        log.info("picture %s of alarm %s shown to %s", evidence_id, row.event_id, tok.user)
        return _picture(row.path)

    def _picture(relative: str) -> FileResponse:
        try:
            path = rt.vault.path(relative)
        except ValueError:
            raise HTTPException(404, "no such picture") from None
        if not path.is_file():
            raise HTTPException(410, "the picture is past its retention")
        return FileResponse(
            path, media_type="image/jpeg", headers={"Cache-Control": "private, no-store"}
        )

    def _check_link(alarm_id: str, exp: int, sig: str) -> None:
        if not rt.vault.check_link(alarm_id, exp, sig):
            raise HTTPException(403, "this link is not valid or has expired")

    @app.get("/verify/{alarm_id}", response_class=HTMLResponse, include_in_schema=False)
    async def verify_page(alarm_id: str, exp: int, sig: str) -> HTMLResponse:
        """The page a DC-09 x-data V link opens: the alarm and its pictures, no login (the
        signed, expiring link is the credential); refreshes while pictures may still come."""
        _check_link(alarm_id, exp, sig)
        found = await rt.store.alarm(alarm_id)
        if found is None:
            raise HTTPException(404, "no such alarm")
        row, _ = found
        campus = next((c for c in rt.cfg.campuses if c.id == row.campus), None)
        shots = await rt.store.evidence_for(alarm_id)
        log.info("verification page of alarm %s opened", alarm_id)
        q = f"exp={exp}&sig={html.escape(sig)}"
        items = []
        for e in shots:
            cam = html.escape(e.camera)
            when = aware(e.taken_at)
            stamp = when.strftime("%Y-%m-%d %H:%M:%S UTC") if when else ""
            if e.path:
                items.append(
                    f'<figure><img src="/verify/{alarm_id}/{e.id}?{q}" alt="{cam}">'
                    f"<figcaption>{cam} #{e.shot} {stamp}</figcaption></figure>"
                )
            else:
                items.append(
                    f"<figure><figcaption>{cam}: no picture ({html.escape(e.error or '')})"
                    "</figcaption></figure>"
                )
        title = f"{row.kind} {'(drill) ' if row.drill else ''}{row.location or ''}"
        page = (
            "<!doctype html><html><head><meta charset=utf-8>"
            '<meta http-equiv="refresh" content="5">'
            f"<title>{html.escape(title)}</title>"
            "<style>body{font-family:sans-serif;margin:1em}img{max-width:100%}"
            "figure{display:inline-block;margin:.5em;max-width:48%}</style></head><body>"
            f"<h1>{html.escape(title)}</h1>"
            f"<p>{html.escape(campus.name if campus and campus.name else row.campus)}"
            f" {html.escape(campus.address if campus else '')}</p>"
            f"<p>{html.escape(row.text)} &middot; {aware(row.edge_ts)} &middot; {row.state}</p>"
            + ("".join(items) or "<p>waiting for pictures&hellip;</p>")
            + "</body></html>"
        )
        return HTMLResponse(page, headers={"Cache-Control": "private, no-store"})

    @app.get("/verify/{alarm_id}/{evidence_id}", include_in_schema=False)
    async def verify_picture(alarm_id: str, evidence_id: str, exp: int, sig: str) -> FileResponse:
        _check_link(alarm_id, exp, sig)
        row = await rt.store.evidence(evidence_id)
        if row is None or row.event_id != alarm_id or row.path is None:
            raise HTTPException(404, "no such picture")
        return _picture(row.path)

    @app.get("/api/devices")
    async def devices(campus: str | None = None) -> list[dict[str, Any]]:
        return [_row(r) for r in await rt.store.devices(campus)]

    @app.get("/api/edges")
    async def edges() -> list[dict[str, Any]]:
        return [_row(r) for r in await rt.store.edges()]

    def authorised(authorization: str | None) -> ApiToken:
        presented = (authorization or "").removeprefix("Bearer ").strip()
        for tok in rt.cfg.api_tokens:
            if presented and hmac.compare_digest(presented.encode(), tok.secret().encode()):
                return tok
        raise HTTPException(401, "a valid bearer token is required")

    @app.post(
        "/api/campuses/{campus}/bollards/{device}/{bollard}/commands",
        status_code=202,
        response_model=CommandOut,
    )
    async def bollard_command(
        campus: str,
        device: str,
        bollard: int,
        body: CommandIn,
        authorization: Annotated[str | None, Header()] = None,
    ) -> dict[str, Any]:
        """Send a bollard command to the campus edge, which decides and reports back."""
        tok = authorised(authorization)
        if campus not in {c.id for c in rt.cfg.campuses}:
            raise HTTPException(404, f"no campus {campus}")
        if tok.role == "inspector":
            raise HTTPException(403, "inspectors read reports; they do not operate devices")
        if body.step == "confirm" and (body.command_id is None or body.token is None):
            raise HTTPException(422, "a confirm needs command_id and token")
        if body.step == "request" and body.action is None:
            raise HTTPException(422, "a request needs an action")
        ts = utcnow()
        row = CommandRow(
            id=body.command_id or new_id(),
            campus=campus,
            device=device,
            bollard=bollard,
            action=body.action,
            user=tok.user,
            role=tok.role,
            reason=body.reason,
            issued_at=ts,
            state="sent",
            code=None,
            detail="",
            token=None,
            updated_at=ts,
        )
        if not tok.may_act_on(campus):
            row.state, row.code = "refused", "campus"
            row.detail = f"{tok.user} may not act on campus {campus}"
            await rt.store.record_command(row)
            log.warning("refused command by %s on campus %s: not theirs", tok.user, campus)
            raise HTTPException(403, row.detail)
        try:
            msg = BollardCommandMessage(
                id=row.id,
                campus=campus,
                device=device,
                bollard=bollard,
                step=body.step,
                action=body.action,
                token=body.token,
                user=tok.user,
                role=tok.role,
                reason=body.reason,
                issued_at=ts,
                expires_at=ts + timedelta(seconds=body.ttl),
            )
        except ValidationError as exc:
            raise HTTPException(422, str(exc.errors()[0]["msg"])) from None
        await rt.store.record_command(row)
        try:
            await rt.mqtt.publish(topics.command_topic(campus), msg.model_dump_json().encode())
        except ConnectionError as exc:
            row.state, row.detail, row.updated_at = "failed", str(exc), utcnow()
            await rt.store.record_command(row)
            raise HTTPException(503, f"cannot reach the campus now: {exc}") from None
        return _row(row)

    @app.get("/api/commands/{command_id}", response_model=CommandOut)
    async def command(
        command_id: str, authorization: Annotated[str | None, Header()] = None
    ) -> dict[str, Any]:
        tok = authorised(authorization)
        row = await rt.store.command(command_id)
        if row is None or not tok.may_act_on(row.campus):
            raise HTTPException(404, f"no command {command_id}")
        return _row(row)

    @app.get("/api/commands", response_model=list[CommandOut])
    async def commands(
        campus: str | None = None,
        limit: int = Query(100, ge=1, le=1000),
        authorization: Annotated[str | None, Header()] = None,
    ) -> list[dict[str, Any]]:
        tok = authorised(authorization)
        rows = await rt.store.commands(campus, limit)
        return [_row(r) for r in rows if tok.may_act_on(r.campus)]

    # --- self-test ---------------------------------------------------------------------

    @app.post("/api/selftest", status_code=202)
    async def selftest_start(
        body: SelftestIn, authorization: Annotated[str | None, Header()] = None
    ) -> dict[str, Any]:
        """Start a self-test; follow it at ``GET /api/selftest/{id}``."""
        tok = authorised(authorization)
        if body.campus not in {c.id for c in rt.cfg.campuses} or not tok.may_act_on(body.campus):
            raise HTTPException(404, f"no campus {body.campus}")
        if tok.role == "inspector":
            raise HTTPException(403, "inspectors read reports; they do not run self-tests")
        assert rt.selftests is not None
        row = await rt.selftests.start(body.campus, body.device, body.mode, tok.user, body.timeout)
        return selftest_view(row)

    @app.get("/api/selftest/{selftest_id}")
    async def selftest_get(
        selftest_id: str, authorization: Annotated[str | None, Header()] = None
    ) -> dict[str, Any]:
        tok = authorised(authorization)
        assert rt.selftests is not None
        row = await rt.selftests.get(selftest_id)
        if row is None or not tok.may_act_on(row.campus):
            raise HTTPException(404, f"no self-test {selftest_id}")
        return selftest_view(row)

    # --- uptime and compliance reports, maintenance windows ---------------------------

    def campuses_of(tok: ApiToken, campus: str | None) -> list[str]:
        known = [c.id for c in rt.cfg.campuses]
        if campus is not None:
            if campus not in known or not tok.may_act_on(campus):
                raise HTTPException(404, f"no campus {campus}")
            return [campus]
        return [c for c in known if tok.may_act_on(c)]

    def report_range(
        period: str | None, date: str | None, start: datetime | None, end: datetime | None
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
        except ValueError:
            raise HTTPException(422, f"date {date!r} does not match the period") from None
        if first >= today:
            raise HTTPException(422, f"{label} has not begun")
        # The current day or month is reported up to now, not into the future.
        return first.astimezone(UTC), min(nxt, today).astimezone(UTC), label

    async def uptime_of(
        campuses: list[str], start: datetime, end: datetime
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
            [
                reports.WindowInput(w.campus, w.device, aware_(w.start), aware(w.end))
                for w in windows
            ],
            target=rt.cfg.telemetry.uptime_target,
        )

    def respond(fmt: str, json_body: Any, csv_text: str, html_text: str, name: str) -> Any:
        if fmt == "csv":
            safe = _FILE_UNSAFE.sub("_", name)
            return Response(
                csv_text,
                media_type="text/csv; charset=utf-8",
                headers={"Content-Disposition": f'attachment; filename="{safe}.csv"'},
            )
        if fmt == "html":
            return HTMLResponse(html_text)
        return json_body

    @app.get("/api/reports/uptime")
    async def uptime_report(
        campus: str | None = None,
        period: Literal["day", "month"] | None = None,
        date: str | None = Query(None, description="YYYY-MM (month) or YYYY-MM-DD (day)"),
        start: datetime | None = None,
        end: datetime | None = None,
        format: Literal["json", "csv", "html"] = "json",
        authorization: Annotated[str | None, Header()] = None,
    ) -> Any:
        """Availability per device, campus and district; maintenance windows excluded."""
        tok = authorised(authorization)
        lo, hi, label = report_range(period, date, start, end)
        rep = await uptime_of(campuses_of(tok, campus), lo, hi)
        return respond(
            format,
            dataclasses.asdict(rep),
            reports.uptime_csv(rep),
            reports.uptime_html(rep, f"Device availability {label}"),
            f"uptime-{label}",
        )

    @app.get("/api/reports/compliance")
    async def compliance_report(
        campus: str | None = None,
        month: str | None = Query(None, description="YYYY-MM; default: this month"),
        format: Literal["json", "csv", "html"] = "json",
        authorization: Annotated[str | None, Header()] = None,
    ) -> Any:
        """The monthly report per campus for the education commission."""
        tok = authorised(authorization)
        lo, hi, label = report_range("month", month, None, None)
        wanted = campuses_of(tok, campus)
        rep = await uptime_of(wanted, lo, hi)
        by_campus = {c.name: c for c in rep.campuses}
        alarms = await rt.store.alarms_between(lo, hi, wanted)
        tz = ZoneInfo(rt.cfg.telemetry.report_timezone)
        _, held, _ = await rt.store.drill_compliance_inputs(wanted, lo)
        accounts = {c.id: c for c in rt.cfg.campuses}
        rows = []
        for c in wanted:
            drills_held = [
                reports.DrillInput(d.kind, f"{end.astimezone(tz):%Y-%m-%d}")
                for d in held
                if d.campus == c and (end := aware(d.actual_end)) is not None and end < hi
            ]
            mine = [
                reports.AlarmInput(
                    a.kind,
                    a.drill,
                    a.restore,
                    aware_(a.edge_ts),
                    aware(a.police_at),
                    aware(a.guard_ack_at),
                    a.state,
                )
                for a in alarms
                if a.campus == c
            ]
            agg = by_campus.get(c) or reports.aggregate(c, [], rep.target)
            required = getattr(rt.cfg.drills.frequency, accounts[c].type)
            rows.append(reports.compliance(c, lo, hi, agg, mine, drills_held, required))
        names = {c.id: c.name for c in rt.cfg.campuses}
        return respond(
            format,
            [dataclasses.asdict(r) for r in rows],
            reports.compliance_csv(rows),
            reports.compliance_html(rows, names, f"Campus safety compliance {label}"),
            f"compliance-{label}",
        )

    def maintainer(tok: ApiToken) -> None:
        if tok.role not in ("technician", "admin"):
            raise HTTPException(403, "only technicians and admins manage maintenance windows")

    def window_out(w: MaintenanceRow) -> dict[str, Any]:
        return _row(w)

    @app.post("/api/maintenance", status_code=201)
    async def add_window(
        body: MaintenanceIn, authorization: Annotated[str | None, Header()] = None
    ) -> dict[str, Any]:
        tok = authorised(authorization)
        maintainer(tok)
        campuses_of(tok, body.campus)
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
                user=tok.user,
                created_at=ts,
            )
        )
        log.info(
            "maintenance window %s on %s/%s by %s: %s",
            row.id,
            body.campus,
            body.device or "*",
            tok.user,
            body.reason,
        )
        return window_out(row)

    @app.post("/api/maintenance/{window_id}/end")
    async def end_window(
        window_id: int, authorization: Annotated[str | None, Header()] = None
    ) -> dict[str, Any]:
        tok = authorised(authorization)
        maintainer(tok)
        row = await rt.store.end_maintenance(window_id, utcnow())
        if row is None or not tok.may_act_on(row.campus):
            raise HTTPException(404, f"no maintenance window {window_id}")
        return window_out(row)

    @app.get("/api/maintenance")
    async def windows(
        campus: str | None = None, authorization: Annotated[str | None, Header()] = None
    ) -> list[dict[str, Any]]:
        tok = authorised(authorization)
        return [window_out(w) for w in await rt.store.maintenance(campuses_of(tok, campus))]

    # --- drills ---------------------------------------------------------------------------

    def drills() -> drill_ops.Drills:
        if rt.drills is None:
            raise HTTPException(503, "drills are not running")
        return rt.drills

    def drill_runner(tok: ApiToken, campus: str) -> None:
        if campus not in {c.id for c in rt.cfg.campuses}:
            raise HTTPException(404, f"no campus {campus}")
        if tok.role not in DRILL_ROLES:
            raise HTTPException(403, f"role {tok.role} reads drill records; it does not run drills")
        if not tok.may_act_on(campus):
            log.warning("refused a drill by %s on campus %s: not theirs", tok.user, campus)
            raise HTTPException(403, f"{tok.user} may not run drills on campus {campus}")

    @app.post("/api/drills", status_code=201)
    async def drill_start(
        body: DrillIn, authorization: Annotated[str | None, Header()] = None
    ) -> dict[str, Any]:
        """Start a drill on a campus now (the campus confirms it), or schedule it."""
        tok = authorised(authorization)
        drill_runner(tok, body.campus)
        try:
            row = await drills().start(
                body.campus,
                body.kind,
                body.minutes,
                tok.user,
                source=body.source,
                note=body.note,
                planned_start=body.planned_start,
            )
        except drill_ops.DrillError as exc:
            raise HTTPException(exc.status, str(exc)) from None
        return drill_ops.drill_out(row)

    @app.get("/api/drills")
    async def drill_list(
        campus: str | None = None,
        state: Literal["scheduled", "requested", "running", "ended", "cancelled"] | None = None,
        limit: int = Query(200, ge=1, le=5000),
        authorization: Annotated[str | None, Header()] = None,
    ) -> list[dict[str, Any]]:
        """Drill records, newest first (``requested``: sent, not yet confirmed by the campus)."""
        tok = authorised(authorization)
        wanted = campuses_of(tok, campus)
        rows = await rt.store.drills(wanted, "running" if state == "requested" else state, limit)
        out = [drill_ops.drill_out(r) for r in rows]
        if state in ("requested", "running"):
            out = [d for d in out if d["status"] == state]
        return out

    @app.get("/api/drills/compliance")
    async def drill_compliance(
        campus: str | None = None,
        format: Literal["json", "csv", "html"] = "json",
        authorization: Annotated[str | None, Header()] = None,
    ) -> Any:
        """Per campus: required frequency, last drill, next due, overdue or not."""
        tok = authorised(authorization)
        tz = ZoneInfo(rt.cfg.telemetry.report_timezone)
        rows = await drill_ops.compliance(rt.cfg, rt.store, campuses_of(tok, campus))
        today = f"{utcnow().astimezone(tz):%Y-%m-%d}"
        return respond(
            format,
            drill_ops.compliance_json(rows),
            drill_ops.compliance_csv(rows),
            drill_ops.compliance_html(rows, tz, f"Drill compliance {today}"),
            f"drill-compliance-{today}",
        )

    @app.get("/api/drills/{drill_id}")
    async def drill_get(
        drill_id: str, authorization: Annotated[str | None, Header()] = None
    ) -> dict[str, Any]:
        tok = authorised(authorization)
        row = await rt.store.drill(drill_id)
        if row is None or not tok.may_act_on(row.campus):
            raise HTTPException(404, f"no drill {drill_id}")
        return drill_ops.drill_out(row)

    @app.post("/api/drills/{drill_id}/end", status_code=202)
    async def drill_end(
        drill_id: str, response: Response, authorization: Annotated[str | None, Header()] = None
    ) -> dict[str, Any]:
        """End a running drill (202: sent; the campus confirms) or cancel a scheduled one (200)."""
        tok = authorised(authorization)
        row = await rt.store.drill(drill_id)
        if row is None or not tok.may_act_on(row.campus):
            raise HTTPException(404, f"no drill {drill_id}")
        drill_runner(tok, row.campus)
        try:
            row, sent = await drills().end(drill_id, tok.user)
        except drill_ops.DrillError as exc:
            raise HTTPException(exc.status, str(exc)) from None
        if not sent:
            response.status_code = 200
        return drill_ops.drill_out(row)

    @app.get("/api/telemetry/{campus}/{device}")
    async def telemetry(
        campus: str,
        device: str,
        hours: float = Query(24.0, gt=0, le=24 * 31),
        authorization: Annotated[str | None, Header()] = None,
    ) -> dict[str, Any]:
        """A device's samples from the embedded store (with InfluxDB: query InfluxDB/Grafana)."""
        tok = authorised(authorization)
        campuses_of(tok, campus)
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

    metrics = GatewayMetrics(rt)

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        """Prometheus text exposition: queue depths, relay latency and outcomes, devices."""
        return Response(await metrics.render(), media_type=METRICS_CONTENT_TYPE)

    @app.get("/api/stats")
    async def stats() -> dict[str, Any]:
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

    return app


@contextlib.asynccontextmanager
async def serve_http(rt: GatewayRuntime) -> AsyncIterator[int]:
    """Serve the API in this event loop; yields the bound port."""
    assert rt.cfg.gateway.http is not None
    config = uvicorn.Config(
        create_app(rt),
        host=rt.cfg.gateway.http.host,
        port=rt.cfg.gateway.http.port,
        log_level="warning",
        lifespan="off",
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(), name="http")
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError("HTTP server stopped at start")
        await asyncio.sleep(0.01)
    port = int(server.servers[0].sockets[0].getsockname()[1])
    try:
        yield port
    finally:
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await task
