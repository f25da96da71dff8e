"""Turning signals into durable events: id, sequence, place, and the outbox before anything else."""

from __future__ import annotations

import logging
from collections.abc import Callable

from contract import topics
from contract.config import EdgeConfig, ModbusDeviceConfig
from contract.models import ALARM_KINDS, DetailValue, Event, EventKind, Geo, new_id, utcnow
from edge.alarms import SEVERITY, describe
from edge.outbox import PRIORITY_ALARM, PRIORITY_EVENT, Outbox

log = logging.getLogger(__name__)

Listener = Callable[[Event], None]


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
    ) -> Event:
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
        event = await self._outbox.add_sequenced(build, priority, receipt_key=ident)
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
