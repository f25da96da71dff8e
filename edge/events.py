"""Turning signals into durable events: id, sequence, place, and the outbox before anything else."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable

from contract import topics
from contract.config import EdgeConfig, ModbusDeviceConfig
from contract.models import ALARM_KINDS, DetailValue, Event, EventKind, Geo, new_id, utcnow
from edge.alarms import SEVERITY, describe
from edge.outbox import PRIORITY_ALARM, PRIORITY_EVENT, Outbox, OutboxFullError

log = logging.getLogger(__name__)

Listener = Callable[[Event], None]

FULL_RETRY_S = 0.5
"""A full disk: how often an event that could not be stored is tried again."""
FULL_LOG_EVERY_S = 10.0

LATCH_KINDS: frozenset[str] = frozenset({"panic", "duress", "holdup"})
"""Alarms a person raises by hand: they latch until a guard resets them at the console."""
LATCH_KEY = "latched_alarms"


class EventSink:
    """Builds events for one campus edge and commits them to the outbox.

    ``emit`` returns once the event is on disk; listeners (the local console, tests) hear of it
    only after that.
    """

    def __init__(self, cfg: EdgeConfig, outbox: Outbox) -> None:
        self._cfg = cfg
        self._outbox = outbox
        self._zones = {z.id: z for z in cfg.zones}
        self.drill = False
        self.listeners: list[Listener] = []
        # (kind, device, point) of raised alarms -> whether raised as a drill (for the restore)
        self._drill_raised: dict[tuple[str, str, str | None], bool] = {}
        # Panic-type inputs that latch (issue 13, part 5): "device/point" -> the raised alarm,
        # until a guard resets it at the console. Kept in the outbox's database, so a restart
        # (or a crash) does not unlatch anything.
        self._latching: set[str] = set()
        if cfg.console.enabled:
            for dev in cfg.devices:
                self._latching |= {f"{dev.id}/{i.id}" for i in dev.inputs if i.latch}
            for cam in cfg.cameras:
                self._latching |= {f"{cam.id}/{i.id}" for i in cam.inputs if i.latch}
        self._latched: dict[str, Event] = {}
        self.suppressed = 0
        """Presses and releases of a latched button that raised nothing new (counted, logged)."""

    async def load_latches(self) -> None:
        """Before any poller runs: what was latched when the edge stopped still is."""
        raw = await self._outbox.get_value(LATCH_KEY)
        for key, data in (json.loads(raw) if raw else {}).items():
            if key in self._latching:
                self._latched[key] = Event.model_validate(data)
        if self._latched:
            log.warning(
                "%d panic alarm(s) still latched until reset at the guard console: %s",
                len(self._latched),
                ", ".join(sorted(self._latched)),
            )

    async def _save_latches(self) -> None:
        data = {k: e.model_dump(mode="json") for k, e in self._latched.items()}
        await self._outbox.put_value(LATCH_KEY, json.dumps(data) if data else None)

    def latched(self) -> list[Event]:
        return list(self._latched.values())

    async def reset(self, alarm: Event, user: str) -> Event | None:
        """A guard reset a latched alarm at the console: now it ends (the restore goes to the
        centre and the police like any restore, naming who reset it). None if not latched."""
        key = f"{alarm.device}/{alarm.point}"
        held = self._latched.get(key)
        if held is None or held.id != alarm.id:
            return None
        del self._latched[key]
        await self._save_latches()
        return await self.emit(
            alarm.kind,
            device=alarm.device,
            point=alarm.point,
            zone=alarm.zone,
            location=alarm.location or "",
            zone_no=alarm.zone_no,
            restore=True,
            detail={"reset_by": user[:64], "alarm_id": alarm.id},
            _reset=True,
        )

    async def _store(
        self,
        build: Callable[[int], tuple[str, bytes, Event]],
        priority: int,
        ident: str,
        point_state: tuple[str, str] | None,
        kind: str,
    ) -> Event:
        """Commit to the outbox; on a full disk hold the event here and try again until it is
        stored (the device's reading that raised it is gone from the device: a latch cleared,
        a camera event pulled), saying so loudly meanwhile."""
        since: float | None = None
        last_log = 0.0
        while True:
            try:
                event = await self._outbox.add_sequenced(
                    build, priority, receipt_key=ident, point_state=point_state
                )
            except OutboxFullError as exc:
                now = time.monotonic()
                if since is None:
                    since = now
                if now - last_log >= FULL_LOG_EVERY_S:
                    last_log = now
                    log.error(
                        "%s %s held in memory for %.0f s, not yet on disk: %s; retrying",
                        kind,
                        ident,
                        now - since,
                        exc,
                    )
                await asyncio.sleep(FULL_RETRY_S)
                continue
            if since is not None:
                log.warning(
                    "%s %s stored after %.1f s held for a full disk",
                    kind,
                    ident,
                    time.monotonic() - since,
                )
            return event

    def _place(
        self, device: ModbusDeviceConfig | None, zone: str | None, location: str
    ) -> tuple[str | None, str, Geo | None]:
        zone = zone or (device.zone if device else None)
        z = self._zones.get(zone) if zone else None
        where = location or (device.location if device else "") or (z.location if z else "")
        if z and z.name and z.name not in where:
            where = f"{z.name} {where}".strip()
        geo = z.geo if z and z.geo else self._cfg.campus.geo
        return zone, where, geo

    async def emit(
        self,
        kind: EventKind,
        *,
        device: str,
        device_cfg: ModbusDeviceConfig | None = None,
        point: str | None = None,
        zone: str | None = None,
        location: str = "",
        zone_no: int | None = None,
        restore: bool = False,
        real_during_drill: bool = False,
        detail: dict[str, DetailValue] | None = None,
        point_state: tuple[str, str] | None = None,
        _reset: bool = False,
    ) -> Event:
        latch_key = f"{device}/{point}"
        if kind in LATCH_KINDS and latch_key in self._latching and not _reset:
            held = self._latched.get(latch_key)
            if held is not None:
                # Latched: the button's release (or a key reset at the button) does not end
                # the alarm, and another press does not raise a second one; only the guard's
                # reset at the console does.
                self.suppressed += 1
                log.info(
                    "%s %s/%s %s while latched (alarm %s): reset it at the guard console",
                    kind,
                    device,
                    point,
                    "released" if restore else "pressed again",
                    held.id,
                )
                return held
        zone, where, geo = self._place(device_cfg, zone, location)
        campus = self._cfg.campus.id
        key = (kind, device, point)
        if restore and key in self._drill_raised:
            # The restore of an alarm raised during a drill is part of that drill, even when
            # the drill ended meanwhile: the police never had the alarm as real.
            drill = self._drill_raised.pop(key)
        else:
            drill = self.drill and not real_during_drill and kind in ALARM_KINDS
            if kind in ALARM_KINDS and not restore:
                self._drill_raised[key] = drill
        topic = topics.event_topic(campus)
        ident = new_id()
        ts = utcnow()

        def build(seq: int) -> tuple[str, bytes, Event]:
            event = Event(
                id=ident,
                campus=campus,
                edge=self._cfg.edge.id,
                seq=seq,
                ts=ts,
                kind=kind,
                severity=SEVERITY.get(kind, "info") if not restore else "info",
                device=device,
                point=point,
                zone=zone,
                zone_no=zone_no,
                location=where or None,
                geo=geo,
                restore=restore,
                drill=drill,
                text=describe(kind, restore, where),
                detail=detail or {},
            )
            return topic, event.model_dump_json().encode(), event

        priority = PRIORITY_ALARM if kind in ALARM_KINDS else PRIORITY_EVENT
        event = await self._store(build, priority, ident, point_state, kind)
        if kind in LATCH_KINDS and latch_key in self._latching and not restore:
            self._latched[latch_key] = event
            await self._save_latches()
        log.log(
            logging.WARNING if kind in ALARM_KINDS and not restore else logging.INFO,
            "event %s #%d %s%s %s/%s: %s",
            event.id,
            event.seq,
            kind,
            " (restore)" if restore else "",
            device,
            point or "-",
            event.text,
        )
        for listener in self.listeners:
            listener(event)
        return event
