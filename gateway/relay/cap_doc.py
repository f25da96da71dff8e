"""OASIS CAP 1.2 alerts for campus alarms, pure (no I/O): one ``<alert>`` per alarm.

- ``identifier`` ``CG-<alarm id>``, ``sent`` the time of the alarm on the campus (so a retry is
  the same message), ``status`` ``Exercise`` for drills and ``Actual`` otherwise, ``msgType``
  ``Alert``; a restore is an ``Update`` and a cancellation a ``Cancel``, each with
  ``references`` = ``sender,identifier,sent`` of the original alert.
- one ``<info>``: category Security (fire and faults: Safety), event, urgency, severity,
  certainty, the alarm's kind as an ``eventCode``, its time as ``onset``, headline and
  description, the verification link as ``web``, alarm details as ``parameter``s, and an
  ``<area>`` with the campus name and address and a ``<circle>`` around its coordinates.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from contract.config import CampusAccount
from contract.models import Event

NS = "urn:oasis:names:tc:emergency:cap:1.2"
CONTENT_TYPE = "application/cap+xml"

MsgType = Literal["Alert", "Update", "Cancel"]

_INVALID_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_SEVERITY = {
    "critical": "Extreme",
    "high": "Severe",
    "medium": "Moderate",
    "low": "Minor",
    "info": "Minor",
}
_URGENCY = {
    "critical": "Immediate",
    "high": "Immediate",
    "medium": "Expected",
    "low": "Future",
    "info": "Future",
}
_SAFETY = {"fire", "trouble", "transmission_fault", "test", "test_missed", "video_loss"}
_TITLES = {
    "panic": "Panic alarm",
    "duress": "Duress alarm",
    "holdup": "Hold-up alarm",
    "fire": "Fire alarm",
    "intrusion": "Intrusion alarm",
    "tamper": "Tamper alarm",
    "trouble": "Device trouble",
    "transmission_fault": "Alarm transmission fault",
    "bollard_impact": "Vehicle impact on anti-ram bollard",
    "camera_tamper": "Camera tamper",
    "camera_intrusion": "Camera intrusion detection",
    "video_loss": "Video loss",
    "test": "Test signal",
    "test_missed": "Periodic test signal missed",
}


def clean(text: str) -> str:
    """Text as XML 1.0 can carry it (control characters and lone surrogates dropped)."""
    return _INVALID_XML.sub("", text)


def cap_time(ts: datetime) -> str:
    """CAP's dateTime: seconds, an explicit offset, no fraction (the XSD's pattern)."""
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S+00:00")


def identifier_for(alarm_id: str) -> str:
    return f"CG-{alarm_id}"


@dataclass(frozen=True, slots=True)
class CapRef:
    """An earlier alert, as ``references`` names it."""

    sender: str
    identifier: str
    sent: str

    def __str__(self) -> str:
        return f"{self.sender},{self.identifier},{self.sent}"


def ref_for(sender: str, original: Event) -> CapRef:
    return CapRef(sender, identifier_for(original.id), cap_time(original.ts))


@dataclass(frozen=True, slots=True)
class CapOptions:
    sender: str
    scope: Literal["Public", "Restricted", "Private"] = "Restricted"
    restriction: str = "police dispatch only"
    language: str = "zh-CN"
    radius_km: float = 0.3


def _sub(parent: ET.Element, tag: str, text: str | None = None) -> ET.Element:
    el = ET.SubElement(parent, f"{{{NS}}}{tag}")
    if text is not None:
        el.text = clean(text)
    return el


def title(event: Event) -> str:
    base = _TITLES.get(event.kind, event.kind.replace("_", " ").capitalize())
    return f"{base} (drill)" if event.drill else base


def alert(
    event: Event,
    campus: CampusAccount,
    opts: CapOptions,
    *,
    msg_type: MsgType = "Alert",
    references: CapRef | None = None,
    verification_url: str | None = None,
    sent: datetime | None = None,
    note: str | None = None,
    identifier: str | None = None,
) -> ET.Element:
    """The ``<alert>`` for ``event`` (an Update / Cancel must reference the original).

    ``identifier``: this message's own id when it is not the event's (a Cancel describes the
    original event but is a message of its own)."""
    if msg_type != "Alert" and references is None:
        raise ValueError(f"a {msg_type} must reference the original alert")
    root = ET.Element(f"{{{NS}}}alert")
    _sub(root, "identifier", identifier or identifier_for(event.id))
    _sub(root, "sender", opts.sender)
    _sub(root, "sent", cap_time(sent or event.ts))
    _sub(root, "status", "Exercise" if event.drill else "Actual")
    _sub(root, "msgType", msg_type)
    _sub(root, "source", f"campusguard {event.edge}")
    _sub(root, "scope", opts.scope)
    if opts.scope == "Restricted":
        _sub(root, "restriction", opts.restriction or "restricted")
    if note or event.drill:
        _sub(root, "note", note or "Drill: an exercise, do not dispatch")
    if references is not None:
        _sub(root, "references", str(references))
    _sub(
        root, "incidents", identifier_for(event.id) if references is None else references.identifier
    )

    info = _sub(root, "info")
    _sub(info, "language", opts.language)
    for category in (
        ("Safety", "Fire")
        if event.kind == "fire"
        else (("Safety",) if event.kind in _SAFETY else ("Security",))
    ):
        _sub(info, "category", category)
    ended = event.restore or msg_type == "Cancel"
    _sub(info, "event", title(event) + (" ended" if ended else ""))
    _sub(info, "responseType", "AllClear" if ended else ("Monitor" if event.drill else "Prepare"))
    _sub(info, "urgency", "Past" if ended else _URGENCY[event.severity])
    _sub(info, "severity", "Minor" if ended else _SEVERITY[event.severity])
    _sub(info, "certainty", "Observed")
    code = _sub(info, "eventCode")
    _sub(code, "valueName", "campusguard:kind")
    _sub(code, "value", event.kind)
    _sub(info, "onset", cap_time(event.ts))
    _sub(info, "senderName", campus.name or campus.id)
    where = event.location or event.zone or event.device
    _sub(info, "headline", f"{title(event)}: {campus.name or campus.id}, {where}"[:160])
    desc = event.text or title(event)
    _sub(info, "description", f"{desc} ({where})")
    if verification_url and not ended:
        _sub(info, "web", verification_url)
    for name, value in (
        ("alarm_id", event.id),
        ("campus", campus.id),
        ("account", campus.account),
        ("device", event.device),
        ("point", event.point),
        ("zone", event.zone),
        ("zone_no", None if event.zone_no is None else str(event.zone_no)),
    ):
        if value is not None:
            param = _sub(info, "parameter")
            _sub(param, "valueName", name)
            _sub(param, "value", value)
    area = _sub(info, "area")
    _sub(area, "areaDesc", ", ".join(x for x in (campus.name or campus.id, campus.address) if x))
    geo = event.geo or campus.geo
    if geo is not None:
        _sub(area, "circle", f"{geo.lat:.6f},{geo.lon:.6f} {opts.radius_km:g}")
    return root


def encode(root: ET.Element) -> bytes:
    """UTF-8 XML with the CAP namespace as the default one."""
    out: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=True, default_namespace=NS)
    return out
