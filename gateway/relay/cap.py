"""The CAP 1.2 sink: each alarm as an OASIS CAP ``<alert>`` POSTed as application/cap+xml,
with the webhook sink's transport, signature, idempotency key and retry rules
(:class:`gateway.relay.webhook.HttpPoster`). A restore goes out as an ``Update`` that
references the original alert; the document itself is built by :mod:`gateway.relay.cap_doc`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from contract.config import CampusAccount, CapConfig
from contract.models import Event
from gateway.relay import cap_doc
from gateway.relay.base import Delivery
from gateway.relay.webhook import HttpPoster, LinkFor

log = logging.getLogger(__name__)

FindOriginal = Callable[[Event], Awaitable[Event | None]]
"""A restore -> the alarm it ends (same campus, device, point and kind), if it is known."""

FindEvent = Callable[[str], Awaitable[Event | None]]
"""An event id -> the event as the gateway received it."""


class CapSink:
    name = "cap"

    def __init__(
        self,
        cfg: CapConfig,
        campuses: dict[str, CampusAccount],
        poster: HttpPoster,
        find_original: FindOriginal | None = None,
        link: LinkFor | None = None,
        find_event: FindEvent | None = None,
    ) -> None:
        self.cfg = cfg
        self.campuses = campuses
        self.poster = poster
        self.find_original = find_original
        self.find_event = find_event
        self.link = link
        self.opts = cap_doc.CapOptions(
            sender=cfg.sender,
            scope=cfg.scope,
            restriction=cfg.restriction,
            language=cfg.language,
            radius_km=cfg.radius_km,
        )

    def accepts(self, event: Event) -> bool:
        return event.campus in self.campuses and (self.cfg.restores or not event.restore)

    def wants(self, event: Event) -> bool:
        if event.kind == "guard_action":
            return (
                self.cfg.cancel_on_close
                and self.find_event is not None
                and event.campus in self.campuses
                and event.detail.get("action") == "closed"
            )
        return self.accepts(event) and event.kind in self.cfg.kinds

    async def _cancel(self, close: Event) -> bytes | None:
        """The guard closed the alarm: a Cancel referencing its alert (None when the alarm
        never went out as CAP, or is unknown here)."""
        alarm_id = close.detail.get("alarm_id")
        if not isinstance(alarm_id, str) or self.find_event is None:
            return None
        original = await self.find_event(alarm_id)
        if original is None or not self.accepts(original) or original.kind not in self.cfg.kinds:
            return None
        root = cap_doc.alert(
            original,
            self.campuses[original.campus],
            self.opts,
            msg_type="Cancel",
            references=cap_doc.ref_for(self.cfg.sender, original),
            identifier=cap_doc.identifier_for(close.id),
            sent=close.ts,
            note=f"closed at the campus by {close.detail.get('user', '?')}: "
            f"{close.detail.get('disposition') or 'closed'}",
        )
        return cap_doc.encode(root)

    async def document(self, event: Event) -> bytes:
        campus = self.campuses[event.campus]
        if event.restore:
            original = await self.find_original(event) if self.find_original else None
            if original is not None:
                root = cap_doc.alert(
                    event,
                    campus,
                    self.opts,
                    msg_type="Update",
                    references=cap_doc.ref_for(self.cfg.sender, original),
                )
                return cap_doc.encode(root)
            log.info("restore %s: no original alarm known; sent as its own alert", event.id)
        url = None if self.link is None or event.restore else self.link(event.id, event.ts)
        return cap_doc.encode(cap_doc.alert(event, campus, self.opts, verification_url=url))

    async def deliver(self, event: Event, seq: int | None) -> Delivery:
        if event.kind == "guard_action":
            cancel = await self._cancel(event)
            if cancel is None:
                return Delivery("delivered", None, "nothing to cancel: not sent as CAP")
            return await self.poster.post(
                cancel, cap_doc.CONTENT_TYPE, cap_doc.identifier_for(event.id)
            )
        body = await self.document(event)
        return await self.poster.post(body, cap_doc.CONTENT_TYPE, cap_doc.identifier_for(event.id))

    def health(self) -> dict[str, Any]:
        return self.poster.health()
