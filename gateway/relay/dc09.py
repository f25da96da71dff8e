"""The DC-09 sink: campus events as Contact ID or SIA DC-03 codes to the police ARC."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

from contract.config import CampusAccount, Dc09Code, Dc09Config
from contract.models import Event
from drivers.dc09.codec import contact_id_data, sia_dcs_data
from drivers.dc09.sender import DC09Sender
from gateway.relay.base import Delivery

log = logging.getLogger(__name__)

PARTITION = 1
"""One partition per campus: the account identifies the campus, the zone the button."""


def event_code(cfg: Dc09Config, event: Event) -> Dc09Code | None:
    """The code an event goes out as; drills always as the test code, never as a real alarm."""
    if event.drill:
        return cfg.drill_code
    code = cfg.codes.get(event.kind)
    if code is None or not code.relay:
        return None
    if event.kind == "test":
        if event.restore:
            return None  # a test input released: nothing for the police
        if event.detail.get("periodic") is True:
            # The periodic test report (602 / RP); a self-test or test button is 601 / RX.
            return cfg.periodic_test_code if cfg.periodic_test_code.relay else None
    return code


LinkFor = Callable[[str, datetime], str | None]
"""alarm id, alarm time -> the verification (snapshot) URL for the police, if any"""


def event_data(
    cfg: Dc09Config, campus: CampusAccount, event: Event, link: LinkFor | None = None
) -> tuple[str, list[tuple[str, str]]]:
    """The DC-09 data block and x-data for an event."""
    account = campus.account
    code = event_code(cfg, event)
    if code is None:
        raise ValueError(f"event kind {event.kind} is not relayed")
    zone = event.zone_no or 0
    if cfg.protocol == "ADM-CID":
        qualifier = 3 if event.restore and not event.drill else 1
        data = contact_id_data(account, qualifier, code.cid, PARTITION, zone)
    else:
        sia = code.sia_restore if event.restore and code.sia_restore else code.sia
        data = sia_dcs_data(account, sia, zone, partition=PARTITION)
    xdata: list[tuple[str, str]] = []
    geo = event.geo or campus.geo
    if geo is not None:
        # x-data X/Y: longitude/latitude, so the police screen shows where (DC-09 x-data).
        xdata += [
            ("X", f"{'E' if geo.lon >= 0 else 'W'}{abs(geo.lon):.6f}"),
            ("Y", f"{'N' if geo.lat >= 0 else 'S'}{abs(geo.lat):.6f}"),
        ]
    if link is not None and not event.restore:
        # x-data V: where the operator sees the alarm's snapshots (DC-09 verification). Sent
        # with the alarm itself; the page fills in as the pictures arrive.
        url = link(event.id, event.ts)
        if url:
            xdata.append(("V", url))
    return data, xdata


class Dc09Sink:
    name = "dc09"

    def __init__(
        self,
        cfg: Dc09Config,
        campuses: dict[str, CampusAccount],
        sender: DC09Sender,
        link: LinkFor | None = None,
    ) -> None:
        self.cfg = cfg
        self.campuses = campuses
        self.sender = sender
        self.link = link

    def wants(self, event: Event) -> bool:
        return event.campus in self.campuses and event_code(self.cfg, event) is not None

    async def deliver(self, event: Event, seq: int | None) -> Delivery:
        campus = self.campuses[event.campus]
        data, xdata = event_data(self.cfg, campus, event, self.link)
        result = await self.sender.send(campus.account, data, xdata=xdata, seq=seq)
        if result.accepted:
            return Delivery("delivered", result.path, f"seq {result.seq}", result.rtt_ms)
        if result.reply == "DUH":
            return Delivery("rejected", result.path, "receiver answered DUH (not understood)")
        return Delivery(
            "failed", result.path, f"no ACK ({result.reply}) after {result.attempts} tries"
        )
