"""The console's engine room: records alarms as they land on disk, follows the centre's status
reports, watches devices, bollards, the uplink and drills, and renders what changed for the
live feed. An async context manager owning its two loops (STYLE 3)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import jinja2

from contract.aio import cancel_and_wait
from contract.models import ALARM_KINDS, AlarmStatus, DetailValue, Event, utcnow
from edge.console.auth import Accounts
from edge.console.hub import Hub
from edge.console.i18n import Translator
from edge.console.store import DISPOSITIONS, AlarmRecord, ConsoleStore
from webkit import sound

if TYPE_CHECKING:
    from edge.daemon import EdgeRuntime

log = logging.getLogger(__name__)

BOARD_KINDS: frozenset[str] = ALARM_KINDS | {"camera_tamper", "camera_intrusion", "video_loss"}
"""What the board shows: alarms, and the camera events a guard must look at."""

TICK = 1.0
"""Device, bollard, uplink and drill state is compared once a second (and at once on a
change the console hears of: an event, an uplink transition): a guard needs no finer grain,
and the comparison is cheap."""

EVIDENCE_WATCH = 120.0
"""Seconds after an alarm during which its card is re-rendered when new snapshots arrive (the
evidence collector takes them after the event, with retries)."""

BOARD_LIMIT = 50

_TEMPLATES = Path(__file__).parent / "templates"


CLIP_TYPES = {".mp4": "video/mp4", ".mkv": "video/x-matroska"}
"""An alarm's video clip (issue 13) among its evidence files, by the file's suffix."""


def _is_clip(path: str) -> bool:
    return Path(path).suffix.lower() in CLIP_TYPES


def beep_wav() -> bytes:
    """This console's beep (see :func:`webkit.sound.beep_wav`)."""
    return sound.beep_wav(880.0, 1.25, 0.25, 0.35)


@dataclass(frozen=True)
class CommandNote:
    """The last word on a bollard's command, shown beside its buttons."""

    outcome: str
    code: str | None
    reason: str
    user: str
    ts: datetime


class ConsoleService:
    def __init__(self, rt: EdgeRuntime) -> None:
        self.rt = rt
        self.cfg = rt.cfg.console
        self.store = ConsoleStore(rt.cfg.edge.data_dir / "console.db")
        self.accounts = Accounts(self.cfg.users, self.cfg.session_minutes)
        self.hub = Hub()
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(_TEMPLATES),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )
        self.env.globals["dispositions"] = DISPOSITIONS
        self.sound = beep_wav()
        self.zones = {z.id: z for z in rt.cfg.zones}
        self.command_notes: dict[str, CommandNote] = {}
        self.last_seen: dict[str, datetime] = {}
        self._events: asyncio.Queue[Event | AlarmStatus] = asyncio.Queue()
        self._poke = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._state_keys: dict[str, Any] = {}
        self._evidence_seen: dict[str, int] = {}
        self._open_new = 0
        self._prev_on_state = rt.uplink.on_state

    # --- lifecycle --------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self.store.__aenter__()
        self._open_new = await self.store.count_new()
        self.rt.sink.listeners.append(self._events.put_nowait)
        self.rt.status_listeners.append(self._events.put_nowait)

        def on_state(up: bool) -> None:
            if self._prev_on_state is not None:
                self._prev_on_state(up)
            self._poke.set()

        self.rt.uplink.on_state = on_state
        self._tasks = [
            asyncio.create_task(self._consume(), name="console-events"),
            asyncio.create_task(self._watch(), name="console-watch"),
        ]
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.hub.close()
        with contextlib.suppress(ValueError):
            self.rt.sink.listeners.remove(self._events.put_nowait)
        with contextlib.suppress(ValueError):
            self.rt.status_listeners.remove(self._events.put_nowait)
        self.rt.uplink.on_state = self._prev_on_state
        await cancel_and_wait(self._tasks)
        await self.store.__aexit__(et, e, tb)

    # --- rendering --------------------------------------------------------------------------

    def render(self, template: str, t: Translator, **ctx: Any) -> str:
        return self.env.get_template(template).render(t=t, cfg=self.rt.cfg, **ctx)

    async def alarm_view(self, rec: AlarmRecord) -> dict[str, Any]:
        ev = rec.event
        evidence = await self.rt.outbox.evidence_for(ev.id)
        statuses = await self.rt.outbox.alarm_statuses(ev.id)
        zone = self.zones.get(ev.zone) if ev.zone else None
        return {
            "rec": rec,
            "ev": ev,
            "zone": zone,
            "evidence": [e for e in evidence if e.path and not _is_clip(e.path)],
            "clips": [e for e in evidence if e.path and _is_clip(e.path)],
            "missing": [e for e in evidence if not e.path],
            "statuses": statuses,
            "procedure": self.cfg.procedures.get(ev.kind, []),
        }

    async def alarm_frame(self, rec: AlarmRecord) -> None:
        view = await self.alarm_view(rec)
        self._evidence_seen[rec.id] = (
            len(view["evidence"]) + len(view["clips"]) + len(view["missing"])
        )

        def render(t: Translator) -> dict[str, Any]:
            html = self.render("_alarm.html", t, a=view, plan=self.cfg.plan, zones=self.zones)
            return {"type": "alarm", "id": rec.id, "state": rec.state, "html": html}

        self.hub.publish(render)

    def banner_state(self) -> dict[str, Any]:
        up = self.rt.uplink.connected.is_set()
        drills = self.rt.drills
        drill = drills.current if drills is not None else None
        return {
            "uplink": up,
            "waiting": 0 if up else self.rt.outbox.depth,
            "drill": drill,
            "drill_flag": self.rt.sink.drill,
            "unacked": self._open_new,
        }

    def device_rows(self) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        now = utcnow()
        for kind, pollers in (
            ("modbus", self.rt.pollers),
            ("bollard", self.rt.bollards),
            ("camera", self.rt.cameras),
        ):
            for dev_id, p in pollers.items():
                st = p.status()
                if st.online:
                    self.last_seen[dev_id] = st.last_response or now
                rows.append(
                    {
                        "id": dev_id,
                        "kind": kind,
                        "location": p.cfg.location,
                        "online": st.online,
                        "last_seen": self.last_seen.get(dev_id),
                        "error": st.error,
                        "latency_ms": st.latency_ms,
                    }
                )
        rows.sort(key=lambda r: (r["online"], r["kind"], r["id"]))
        return rows

    def bollard_view(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for ctl_id, poller in self.rt.bollards.items():
            bollards = []
            for b in poller.cfg.bollards:
                snap: dict[str, DetailValue] = dict(poller.trackers[b.id].snapshot())
                zone = b.zone or poller.cfg.zone
                cams = [
                    c.id
                    for c in self.rt.cfg.cameras
                    if zone is not None and (c.zone == zone or zone in c.covers)
                ]
                bollards.append(
                    {
                        "cfg": b,
                        "state": str(snap.get("state") or "offline"),
                        "position": snap.get("position"),
                        "vehicle_loop": snap.get("vehicle_loop"),
                        "command": snap.get("command"),
                        "note": self.command_notes.get(f"{ctl_id}/{b.id}"),
                        "cameras": cams,
                        "location": b.location or poller.cfg.location,
                    }
                )
            out.append(
                {"id": ctl_id, "cfg": poller.cfg, "online": poller.online, "bollards": bollards}
            )
        return out

    # --- the loops --------------------------------------------------------------------------

    async def _consume(self) -> None:
        while True:
            item = await self._events.get()
            try:
                if isinstance(item, AlarmStatus):
                    rec = await self.store.alarm(item.alarm_id)
                    if rec is not None:
                        await self.alarm_frame(rec)
                else:
                    await self._on_event(item)
            except Exception:
                # The console must never stop following events because one failed to render.
                log.exception("console: handling %s failed", type(item).__name__)

    async def _on_event(self, ev: Event) -> None:
        if ev.kind in BOARD_KINDS and not ev.restore:
            if await self.store.add_alarm(ev):
                self._open_new += 1
                rec = await self.store.alarm(ev.id)
                if rec is not None:
                    await self.alarm_frame(rec)
                self.publish_banners()
        elif ev.kind == "bollard_command" and ev.point:
            outcome = str(ev.detail.get("outcome") or "")
            if outcome:
                code = ev.detail.get("code")
                self.command_notes[f"{ev.device}/{ev.point}"] = CommandNote(
                    outcome=outcome,
                    code=str(code) if code else None,
                    reason=str(ev.detail.get("reason") or ""),
                    user=str(ev.detail.get("user") or ""),
                    ts=ev.ts,
                )
            self._poke.set()
        else:
            self._poke.set()

    async def _watch(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._poke.wait(), TICK)
            self._poke.clear()
            try:
                await self._compare()
            except Exception:
                log.exception("console: refreshing the live state failed")

    async def _compare(self) -> None:
        b = self.banner_state()
        d = b["drill"]
        key = (b["uplink"], b["waiting"], d and (d.id, d.ending), b["drill_flag"], b["unacked"])
        if self._state_keys.get("banners") != key:
            self._state_keys["banners"] = key
            self.publish_banners()
        rows = self.device_rows()
        dkey = [(r["id"], r["online"], r["error"]) for r in rows]
        if self._state_keys.get("devices") != dkey:
            self._state_keys["devices"] = dkey
            self.hub.publish(
                lambda t: {"type": "devices", "html": self.render("_devices.html", t, rows=rows)}
            )
        bview = self.bollard_view()
        bkey = [
            (
                x["id"],
                x["online"],
                [
                    (y["state"], y["position"], y["vehicle_loop"], y["command"], y["note"])
                    for y in x["bollards"]
                ],
            )
            for x in bview
        ]
        if self._state_keys.get("bollards") != bkey:
            self._state_keys["bollards"] = bkey
            self.hub.publish(
                lambda t: {
                    "type": "bollards",
                    "html": self.render("_bollards.html", t, controllers=bview),
                }
            )
        await self._check_evidence()

    async def _check_evidence(self) -> None:
        now = utcnow()
        young = [
            rec
            for rec in await self.store.alarms(True, BOARD_LIMIT)
            if (now - rec.event.ts).total_seconds() <= EVIDENCE_WATCH
        ]
        self._evidence_seen = {r.id: self._evidence_seen.get(r.id, 0) for r in young}
        for rec in young:
            count = len(await self.rt.outbox.evidence_for(rec.id))
            if count != self._evidence_seen[rec.id]:
                await self.alarm_frame(rec)

    def publish_banners(self) -> None:
        b = self.banner_state()
        self.hub.publish(
            lambda t: {
                "type": "banners",
                "html": self.render("_banners.html", t, b=b),
                "uplink": b["uplink"],
                "drill": b["drill"] is not None or b["drill_flag"],
                "unacked": b["unacked"],
            }
        )

    # --- actions ----------------------------------------------------------------------------

    async def audit(self, user: str, address: str, action: str, detail: str = "") -> None:
        await self.store.audit(utcnow().isoformat(), user, address, action, detail)
        log.info("console: %s (%s) %s %s", user, address, action, detail)

    async def guard_action(
        self, rec: AlarmRecord, action: str, user: str, note: str, disposition: str | None
    ) -> None:
        """Tell the centre (through the outbox, like any event): the alarm's record there and
        its time-to-acknowledgement follow the booth."""
        detail: dict[str, DetailValue] = {
            "alarm_id": rec.id,
            "action": action,
            "user": user,
            "note": note[:400],
        }
        if disposition is not None:
            detail["disposition"] = disposition
        await self.rt.sink.emit(
            "guard_action",
            device=self.rt.cfg.edge.id,
            zone=rec.event.zone,
            location=rec.event.location or "",
            detail=detail,
        )

    async def recount(self) -> None:
        """After an acknowledgement: the number still sounding, from the records."""
        self._open_new = await self.store.count_new()
        self.publish_banners()
