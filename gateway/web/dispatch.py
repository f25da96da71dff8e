"""The police dispatch console: the alarm queue of every campus the user may see, live.

``/dispatch`` lists open alarms (most severe, then newest, first; drills last and marked) and the
recently closed; the panel beside it shows one alarm: the school and its address, where it is on
a map of the district, what happened, the snapshots, the stream URLs of the cameras of its zone,
the campus' contacts, its timeline and, for dispatchers, the buttons received / dispatched / on
scene / closed (``POST /api/alarms/{id}/dispatch``, :mod:`gateway.api.dispatch`). Guards and
supervisors see their own campuses read-only.

Live: the store calls :meth:`Board.on_alarm` after every commit that creates or moves an alarm;
the board loads what changed (in batches, one transaction per batch) and publishes each card as
a server-rendered fragment to the tabs allowed that campus (``web.hub``).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, Response
from sqlalchemy import and_, select
from sqlalchemy.ext.asyncio import AsyncSession

from contract.config import CampusAccount
from gateway.api import dispatch as dispatch_api
from gateway.api.auth import Principal
from gateway.store.db import read_sessions
from gateway.store.models import AlarmRow, AlarmStep, EventRow, EvidenceRow
from gateway.store.repo import aware
from gateway.web.kit import SECURITY_HEADERS, Translator
from webkit import sound

if TYPE_CHECKING:
    from gateway.service import GatewayRuntime
    from gateway.web.kit import Web

log = logging.getLogger(__name__)

ROLES = ("dispatcher", "admin", "guard", "supervisor")
"""Who opens the console; only holders of ``alarms.dispatch`` get the buttons."""

SEVERITY_RANK = {"critical": 0, "high": 1, "medium": 2, "low": 3, "info": 4}
HIDDEN_KINDS = ("test", "test_missed")
"""Alarm records that are not the dispatcher's business (self-tests, missed test signals)."""

OPEN_LIMIT = 300
CLOSED_LIMIT = 30
FAULT = "transmission_fault"
ACTIONS = ("received", "dispatched", "on_scene", "closed")


def _ms(ts: datetime | None) -> int:
    return int(ts.timestamp() * 1000) if ts is not None else 0


def _iso(ts: datetime | None) -> str:
    return ts.isoformat() if ts is not None else ""


@dataclass
class Card:
    """One alarm as the console shows it."""

    row: AlarmRow
    steps: list[AlarmStep]
    restored_at: datetime | None = None
    evidence: list[EvidenceRow] = field(default_factory=list)

    @property
    def id(self) -> str:
        return self.row.id

    @property
    def campus(self) -> str:
        return self.row.campus

    @property
    def level(self) -> int:
        return dispatch_api.progress(self.steps)

    @property
    def is_open(self) -> bool:
        return self.row.closed_at is None

    @property
    def alert(self) -> bool:
        """A new critical alarm nobody at the police has marked received: sound and colour."""
        row = self.row
        return self.is_open and row.severity == "critical" and not row.drill and self.level == 0

    @property
    def fault(self) -> str | None:
        """For a transmission-path fault: ``edge`` (the campus link) or ``police`` (a path)."""
        if self.row.kind != FAULT:
            return None
        return "police" if self.row.device.startswith("police-") else "edge"

    @property
    def version(self) -> int:
        """Grows with every change: a late frame never replaces a newer card."""
        last = max((s.id for s in self.steps), default=0)
        return last * 2 + (1 if self.restored_at else 0)

    @property
    def key(self) -> str:
        """Sorts the list ascending into the order shown."""
        if not self.is_open:
            return f"{10**14 - _ms(aware(self.row.closed_at)):014d}"
        row = self.row
        return (
            f"{int(row.drill)}{int(self.restored_at is not None)}"
            f"{SEVERITY_RANK.get(row.severity, 5)}{10**14 - _ms(aware(row.received_at)):014d}"
        )

    def allowed_actions(self) -> dict[str, bool]:
        """Each button and whether it may be pressed now (never a step back)."""
        out = {}
        for name in ACTIONS:
            ok = dispatch_api.RANK[name] > self.level
            if self.row.drill and name in dispatch_api.NOT_FOR_DRILLS:
                ok = False
            out[name] = ok
        return out

    def when(self, ts: datetime | None) -> str:
        return _iso(aware(ts))


@dataclass(frozen=True)
class MapView:
    """A district map without tiles: the campuses as dots in their bounding box."""

    width: int
    height: int
    dots: list[tuple[float, float, str, bool]]  # x, y, name, is this alarm's place
    lat: float | None
    lon: float | None


class Board:
    def __init__(self, rt: GatewayRuntime, web: Web) -> None:
        self.rt = rt
        self.web = web
        self.campuses: dict[str, CampusAccount] = {c.id: c for c in rt.cfg.campuses}
        self._pending: set[str] = set()
        self._task: asyncio.Task[None] | None = None
        self.published = 0
        self.session = read_sessions(rt.store.engine)
        """Where the console reads: beside the writer, not behind it (``read_sessions``)."""

    # --- loading -------------------------------------------------------------------------

    async def _cards(
        self,
        s: AsyncSession,
        rows: Sequence[AlarmRow],
        known: dict[str, list[AlarmStep]] | None = None,
    ) -> list[Card]:
        """Cards of these alarms; ``known``: timelines already loaded (the rest are read)."""
        if not rows:
            return []
        steps: dict[str, list[AlarmStep]] = dict(known or {})
        ids = [r.id for r in rows if r.id not in steps]
        steps.update({i: [] for i in ids})
        for i in range(0, len(ids), 500):
            q = select(AlarmStep).where(AlarmStep.alarm_id.in_(ids[i : i + 500]))
            for step in (await s.execute(q.order_by(AlarmStep.id))).scalars():
                steps[step.alarm_id].append(step)
        cards = [Card(r, steps[r.id]) for r in rows]
        faults = [c for c in cards if c.row.kind == FAULT]
        if faults:
            since = min(aware(c.row.edge_ts) or c.row.edge_ts for c in faults)
            rq = select(EventRow).where(
                EventRow.kind == FAULT,
                EventRow.restore.is_(True),
                EventRow.campus.in_({c.campus for c in faults}),
                EventRow.device.in_({c.row.device for c in faults}),
                EventRow.edge_ts >= since,
            )
            restores: list[EventRow] = list(
                (await s.execute(rq.order_by(EventRow.edge_ts))).scalars()
            )
            for c in faults:
                start = aware(c.row.edge_ts)
                assert start is not None
                c.restored_at = next(
                    (
                        aware(e.edge_ts)
                        for e in restores
                        if e.campus == c.campus
                        and e.device == c.row.device
                        and (aware(e.edge_ts) or start) >= start
                    ),
                    None,
                )
        return cards

    @staticmethod
    def _scoped(q: Any, who: Principal) -> Any:
        wanted = who.campus_filter()
        q = q.where(AlarmRow.kind.not_in(HIDDEN_KINDS))
        return q if wanted is None else q.where(AlarmRow.campus.in_(wanted))

    async def queue(self, who: Principal) -> tuple[list[Card], list[Card]]:
        """The open alarms in the order shown, and the recently closed."""
        async with self.session() as s:
            q = self._scoped(select(AlarmRow).where(AlarmRow.closed_at.is_(None)), who)
            opened = await s.execute(q.order_by(AlarmRow.received_at.desc()).limit(OPEN_LIMIT))
            q = self._scoped(select(AlarmRow).where(AlarmRow.closed_at.is_not(None)), who)
            closed = await s.execute(q.order_by(AlarmRow.closed_at.desc()).limit(CLOSED_LIMIT))
            open_cards = await self._cards(s, list(opened.scalars()))
            closed_cards = await self._cards(s, list(closed.scalars()))
        open_cards.sort(key=lambda c: c.key)
        return open_cards, closed_cards

    async def one(self, alarm_id: str, who: Principal) -> Card:
        """One alarm with its snapshots; 404 outside the user's campuses."""
        async with self.session() as s:
            row = await s.get(AlarmRow, alarm_id)
            if row is None or not who.may_act_on(row.campus) or row.kind in HIDDEN_KINDS:
                raise HTTPException(404, f"no alarm {alarm_id}")
            card = (await self._cards(s, [row]))[0]
            q = select(EvidenceRow).where(EvidenceRow.event_id == alarm_id)
            card.evidence = list(
                (await s.execute(q.order_by(EvidenceRow.taken_at, EvidenceRow.shot))).scalars()
            )
        return card

    async def streams(self, card: Card) -> tuple[list[dict[str, Any]], bool]:
        """The cameras of the alarm's zone that report a stream URL (the edge sends it without
        credentials); when none covers the zone, every camera of the campus (flag False)."""
        cams = []
        for d in await self.rt.store.devices(card.campus):
            url = (d.points or {}).get("stream_url")
            if isinstance(url, str) and url:
                zone = (d.points or {}).get("zone")
                link = url.split(":", 1)[0].lower() in ("rtsp", "rtsps", "http", "https")
                cams.append(
                    {"device": d.device, "zone": zone, "url": url, "online": d.online, "link": link}
                )
        mine = [c for c in cams if card.row.zone and c["zone"] == card.row.zone]
        return (mine, True) if mine else (cams, False)

    def map_for(self, card: Card, who: Principal) -> MapView:
        places = [
            (c.geo.lat, c.geo.lon, c.name or c.id, c.id == card.campus)
            for c in self.campuses.values()
            if c.geo is not None and who.may_act_on(c.id)
        ]
        lat = card.row.lat
        lon = card.row.lon
        if lat is None or lon is None:
            home = self.campuses.get(card.campus)
            if home is not None and home.geo is not None:
                lat, lon = home.geo.lat, home.geo.lon
        width, height = 240, 160
        if lat is None or lon is None:
            return MapView(width, height, [], None, None)
        pts = [(p[0], p[1]) for p in places] + [(lat, lon)]
        lo_lat, hi_lat = min(p[0] for p in pts), max(p[0] for p in pts)
        lo_lon, hi_lon = min(p[1] for p in pts), max(p[1] for p in pts)
        pad_lat = max((hi_lat - lo_lat) * 0.15, 0.005)
        pad_lon = max((hi_lon - lo_lon) * 0.15, 0.005)
        lo_lat, hi_lat, lo_lon, hi_lon = (
            lo_lat - pad_lat,
            hi_lat + pad_lat,
            lo_lon - pad_lon,
            hi_lon + pad_lon,
        )

        def xy(la: float, lo: float) -> tuple[float, float]:
            x = (lo - lo_lon) / (hi_lon - lo_lon) * width
            y = (hi_lat - la) / (hi_lat - lo_lat) * height
            return round(x, 1), round(y, 1)

        dots = [(*xy(la, lo), name, False) for la, lo, name, _ in places]
        dots.append((*xy(lat, lon), "", True))
        return MapView(width, height, dots, lat, lon)

    # --- rendering -----------------------------------------------------------------------

    def ctx(self, t: Translator, **more: Any) -> dict[str, Any]:
        return {"t": t, "campuses": self.campuses, **more}

    def render(self, template: str, t: Translator, **ctx: Any) -> str:
        return self.web.env.get_template(template).render(self.ctx(t, **ctx))

    def frame(self, card: Card, t: Translator) -> dict[str, Any]:
        """One live frame: the card, rendered in the tab's language."""
        return {
            "type": "dispatch.alarm",
            "id": card.id,
            "list": "open" if card.is_open else "closed",
            "key": card.key,
            "version": card.version,
            "alert": card.alert,
            "html": self.render("dispatch_card.html", t, a=card),
        }

    # --- live ----------------------------------------------------------------------------

    def on_alarm(self, alarm_id: str, state: str) -> None:
        """The store's alarm listener: returns at once; the work is done in one task."""
        if self.web.hub.count == 0:
            return  # no console open: nothing to tell
        self._pending.add(alarm_id)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._drain(), name="dispatch")

    async def _drain(self) -> None:
        while self._pending:
            ids = sorted(self._pending)
            self._pending.clear()
            try:
                await self.publish(ids)
            except Exception:
                log.exception("the dispatch console could not show alarms %s", ids[:5])

    async def publish(self, ids: Iterable[str]) -> None:
        wanted = list(ids)
        async with self.session() as s:
            # One round trip for the alarms and their timelines (the live path's cost).
            q = (
                select(AlarmRow, AlarmStep)
                .outerjoin(AlarmStep, AlarmStep.alarm_id == AlarmRow.id)
                .where(AlarmRow.id.in_(wanted), AlarmRow.kind.not_in(HIDDEN_KINDS))
                .order_by(AlarmStep.id)
            )
            rows: dict[str, AlarmRow] = {}
            known: dict[str, list[AlarmStep]] = {}
            for row, step in (await s.execute(q)).all():
                rows[row.id] = row
                timeline = known.setdefault(row.id, [])
                if step is not None:
                    timeline.append(step)
            missing = [i for i in wanted if i not in rows]
            if missing:  # a restore (no alarm record of its own): the faults it ends change
                found = select(EventRow).where(
                    EventRow.id.in_(missing), EventRow.kind == FAULT, EventRow.restore.is_(True)
                )
                for ev in (await s.execute(found)).scalars():
                    faults = select(AlarmRow).where(
                        and_(
                            AlarmRow.kind == FAULT,
                            AlarmRow.campus == ev.campus,
                            AlarmRow.device == ev.device,
                            AlarmRow.edge_ts <= ev.edge_ts,
                            AlarmRow.closed_at.is_(None),
                        )
                    )
                    for r in (await s.execute(faults)).scalars():
                        rows[r.id] = r
            cards = await self._cards(s, list(rows.values()), known)
        for card in cards:
            self.web.hub.publish(functools.partial(self.frame, card), scope=card.campus)
            self.published += 1


def beep_wav() -> bytes:
    """This console's beep (see :func:`webkit.sound.beep_wav`)."""
    return sound.beep_wav(988.0, 0.75, 0.3, 0.3)


def add_routes(app: FastAPI, rt: GatewayRuntime, web: Web) -> None:
    """The dispatch console's pages and its action API."""
    app.include_router(dispatch_api.router(rt))
    board = Board(rt, web)
    app.state.dispatch = board
    rt.store.alarm_listeners.append(board.on_alarm)
    wav = beep_wav()

    def fragment(request: Request, template: str, who: Principal, **ctx: Any) -> HTMLResponse:
        t = web.translator(request)
        html = board.render(template, t, who=who, **ctx)
        return HTMLResponse(html, headers=SECURITY_HEADERS)

    @app.get("/dispatch", include_in_schema=False)
    async def page(request: Request) -> HTMLResponse:
        who = await web.viewer(request, *ROLES)
        opened, closed = await board.queue(who)
        return web.page(
            request,
            "dispatch.html",
            who,
            js_prefixes=("dispatch.js.",),
            opened=opened,
            closed=closed,
            can_dispatch=who.holds("alarms.dispatch"),
            campuses=board.campuses,
        )

    @app.get("/dispatch/queue", include_in_schema=False)
    async def queue(request: Request) -> HTMLResponse:
        """Both lists again (the page asks after its live stream (re)connects)."""
        who = await web.viewer(request, *ROLES)
        opened, closed = await board.queue(who)
        return fragment(request, "dispatch_queue.html", who, opened=opened, closed=closed)

    @app.get("/dispatch/alarms/{alarm_id}", include_in_schema=False)
    async def detail(alarm_id: str, request: Request) -> HTMLResponse:
        who = await web.viewer(request, *ROLES)
        card = await board.one(alarm_id, who)
        cams, in_zone = await board.streams(card)
        return fragment(
            request,
            "dispatch_detail.html",
            who,
            a=card,
            cams=cams,
            cams_in_zone=in_zone,
            map=board.map_for(card, who),
            campus=board.campuses.get(card.campus),
            can_dispatch=who.holds("alarms.dispatch"),
            show_pictures=who.holds("evidence.read") and who.role in rt.cfg.evidence.roles,
        )

    @app.get("/dispatch/evidence/{evidence_id}", include_in_schema=False)
    async def evidence(evidence_id: str, request: Request) -> FileResponse:
        """An alarm's snapshot or clip for the console (the session, not a bearer token)."""
        who = await web.viewer(request, *ROLES)
        if not who.holds("evidence.read") or who.role not in rt.cfg.evidence.roles:
            raise HTTPException(403, f"role {who.role} may not see alarm pictures")
        row = await rt.store.evidence(evidence_id)
        if row is None or row.path is None or not who.may_act_on(row.campus):
            raise HTTPException(404, f"no picture {evidence_id}")
        try:
            path = rt.vault.path(row.path)
        except ValueError:
            raise HTTPException(404, "no such picture") from None
        if not path.is_file():
            raise HTTPException(410, "the picture is past its retention")
        log.info("picture %s of alarm %s shown to %s", evidence_id, row.event_id, who.user)
        return FileResponse(
            path,
            media_type=row.content_type or "image/jpeg",  # a clip: video/mp4 (issue 13)
            headers={**SECURITY_HEADERS, "Cache-Control": "private, no-store"},
        )

    @app.get("/dispatch/sound.wav", include_in_schema=False)
    async def siren() -> Response:
        return Response(wav, media_type="audio/wav", headers={"Cache-Control": "max-age=86400"})
