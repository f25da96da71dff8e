"""Pure mapping from ONVIF event topics to :class:`CameraEvent` (no I/O, never raises).

Topics arrive with whatever namespace prefixes the camera chose (``tns1:``, ``tt:``, a vendor
``tnshik:``, or none), values as strings (``"true"``/``"false"``, sometimes ``"1"``/``"0"``).
The standard topics are matched on the full path; vendor topics on their last segment.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

__all__ = ["EVENT_KINDS", "CameraEvent", "EventKind", "UnknownTopicLog", "map_event", "parse_bool"]

log = logging.getLogger(__name__)

EventKind = Literal[
    "motion",
    "tamper",
    "scene_change",
    "video_loss",
    "digital_input",
    "field_intrusion",
    "line_crossing",
]
EVENT_KINDS: frozenset[str] = frozenset(EventKind.__args__)  # type: ignore[attr-defined]


@dataclass(frozen=True, slots=True)
class CameraEvent:
    """One camera event, in our terms.

    Attributes:
        kind: What happened.
        active: The state now; ``None`` for a pulse (a line crossing) or an unreadable value.
        source: What raised it: the input token, the video source, the rule.
        topic: The topic exactly as the camera sent it.
        data: The message's data items (name -> string value).
        utc_time: The camera's time stamp, when the message had one.
        initialized: Resent after SetSynchronizationPoint (a current state, not a change).
    """

    kind: EventKind
    active: bool | None
    source: str | None
    topic: str
    data: Mapping[str, str] = field(default_factory=dict, compare=False)
    utc_time: dt.datetime | None = field(default=None, compare=False)
    initialized: bool = field(default=False, compare=False)

    def with_message(self, utc_time: dt.datetime | None, initialized: bool) -> CameraEvent:
        """A copy carrying the message's time stamp and operation."""
        return dataclasses.replace(self, utc_time=utc_time, initialized=initialized)


_TRUE = frozenset({"true", "1", "on", "active", "yes"})
_FALSE = frozenset({"false", "0", "off", "inactive", "no"})


def parse_bool(value: str) -> bool | None:
    """``"true"``/``"1"`` -> True, ``"false"``/``"0"`` -> False, anything else -> None."""
    text = value.strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    return None


@dataclass(frozen=True, slots=True)
class _Rule:
    kind: EventKind
    keys: tuple[str, ...]  # data items holding the state, preferred first
    pulse: bool = False  # no state: each message is one occurrence


# Full topic paths, lower case, namespace prefixes stripped (ONVIF Core spec and Profile S/T).
_TOPICS: dict[tuple[str, ...], _Rule] = {
    ("videosource", "motionalarm"): _Rule("motion", ("State",)),
    ("ruleengine", "cellmotiondetector", "motion"): _Rule("motion", ("IsMotion",)),
    # Dahua, Reolink and others: a region-based motion rule.
    ("ruleengine", "motionregiondetector", "motion"): _Rule("motion", ("State", "IsMotion")),
    ("ruleengine", "tamperdetector", "tamper"): _Rule("tamper", ("IsTamper",)),
    ("videosource", "globalscenechange", "imagingservice"): _Rule("scene_change", ("State",)),
    ("videosource", "globalscenechange", "analyticsservice"): _Rule("scene_change", ("State",)),
    ("videosource", "globalscenechange", "recordingservice"): _Rule("scene_change", ("State",)),
    # Defocus and a covered lens, as image-quality events (Axis, Bosch).
    ("videosource", "imagetooblurry", "imagingservice"): _Rule("tamper", ("State",)),
    ("videosource", "imagetoodark", "imagingservice"): _Rule("tamper", ("State",)),
    ("videosource", "signalloss"): _Rule("video_loss", ("State",)),
    ("device", "trigger", "digitalinput"): _Rule("digital_input", ("LogicalState", "State")),
    ("ruleengine", "fielddetector", "objectsinside"): _Rule("field_intrusion", ("IsInside",)),
    ("ruleengine", "linedetector", "crossed"): _Rule("line_crossing", ("ObjectId",), pulse=True),
}

# Vendor topics, matched on the last segment.
_LAST_SEGMENT: dict[str, _Rule] = {
    "alarmin": _Rule("digital_input", ("State", "LogicalState")),  # Hikvision tnshik:AlarmIn
    "digitalinput": _Rule("digital_input", ("LogicalState", "State")),
    "people": _Rule("motion", ("IsPeople",)),  # Tapo .../PeopleDetector/People
    "linecross": _Rule("line_crossing", ("IsLineCross",)),  # Tapo .../LineCross
    "intrusion": _Rule("field_intrusion", ("IsIntrusion",)),  # Tapo .../Intrusion
    "motiondetection": _Rule("motion", ("motion", "State")),  # Axis tnsaxis:MotionDetection
    "motionalarm": _Rule("motion", ("State",)),
    "tamper": _Rule("tamper", ("IsTamper", "State")),
    "signalloss": _Rule("video_loss", ("State",)),
}

_ONVIF_TOPICS_URI = "http://www.onvif.org/ver10/topics/"

# Source items that name what raised an event, most specific first.
_SOURCE_KEYS = (
    "InputToken",
    "VideoSourceConfigurationToken",
    "VideoSourceToken",
    "VideoSource",
    "Source",
    "Rule",
)


def _path(topic: str) -> tuple[str, ...]:
    text = topic.strip()
    if text.lower().startswith(_ONVIF_TOPICS_URI):
        text = text[len(_ONVIF_TOPICS_URI) :]
    segments = (seg.rpartition(":")[2].strip().lower() for seg in text.split("/"))
    return tuple(seg for seg in segments if seg and seg != ".")


def _state(rule: _Rule, data: Mapping[str, str]) -> bool | None:
    if rule.pulse:
        return None
    for key in rule.keys:
        if key in data:
            return parse_bool(data[key])
    # Firmwares rename items (State vs IsMotion): take the first value that reads as a bool.
    for value in data.values():
        state = parse_bool(value)
        if state is not None:
            return state
    return None


def _source(source: Mapping[str, str]) -> str | None:
    for key in _SOURCE_KEYS:
        if source.get(key):
            return source[key]
    return next((value for value in source.values() if value), None)


def map_event(topic: str, data: Mapping[str, str], source: Mapping[str, str]) -> CameraEvent | None:
    """The event a topic means, or ``None`` for a topic we do not know.

    Args:
        topic: As sent, e.g. ``tns1:RuleEngine/CellMotionDetector/Motion``.
        data: ``tt:Data`` simple items.
        source: ``tt:Source`` simple items.
    """
    path = _path(topic)
    if not path:
        return None
    rule = _TOPICS.get(path) or _LAST_SEGMENT.get(path[-1])
    if rule is None:
        return None
    return CameraEvent(rule.kind, _state(rule, data), _source(source), topic, dict(data))


class UnknownTopicLog:
    """Logs each unknown topic once per camera (bounded, so a chatty camera cannot grow it).

    Args:
        camera: Name used in the log line.
        limit: Most distinct topics remembered; later ones are counted, not logged.
    """

    def __init__(self, camera: str, limit: int = 256) -> None:
        """Nothing logged yet."""
        self.camera = camera
        self.limit = limit
        self.seen: set[str] = set()
        self.unlogged = 0

    def note(self, topic: str, description: str | None = None) -> bool:
        """Log the topic if it is new; return whether it was logged.

        Args:
            topic: As sent.
            description: What onvif-parsers calls it, when it knows (see
                :func:`~.events.describe_topic`), added to the log line.
        """
        if topic in self.seen:
            return False
        if len(self.seen) >= self.limit:
            self.unlogged += 1
            return False
        self.seen.add(topic)
        if description:
            log.info(
                "Camera %s: unknown event topic %r ignored (onvif-parsers: %s)",
                self.camera,
                topic,
                description,
            )
        else:
            log.info("Camera %s: unknown event topic %r ignored", self.camera, topic)
        return True
