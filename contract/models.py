"""Payloads that cross MQTT, validated by pydantic on both sides.

Version 1 of the contract. Every payload carries ``v``; a receiver rejects versions it does not
know instead of guessing. Examples of each are in PROTOCOL.md.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from ulid import ULID

from contract.topics import CAMPUS_ID_PATTERN

MAX_PAYLOAD_BYTES = 64 * 1024
"""Anything bigger on the wire is rejected before parsing (a sane event is ~1 KiB)."""

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"

EventKind = Literal[
    "panic",  # one-touch emergency button
    "duress",
    "holdup",  # silent panic
    "fire",
    "intrusion",
    "tamper",  # enclosure / sensor tamper, EOL short
    "trouble",  # wire cut, sensor trouble
    "device_offline",
    "device_online",
    "transmission_fault",  # a path to the police or the centre failed
    "test",  # manual or periodic test signal
    "bollard_impact",  # a vehicle struck (or tilted) an anti-ram bollard: an attack
    "bollard_state",  # a bollard changed state (up, down, moving, fault, ...)
    "bollard_command",  # what became of a command to a bollard (armed ... done / failed)
    "schedule_violation",  # a bollard not up inside a must-be-up window (warning to the guard)
    "bollard_trouble",  # controller fault, power, pressure, temperature: for the technician
    "camera_motion",  # a camera's motion detection (information; noisy on a campus)
    "camera_tamper",  # a camera reports tamper or a scene change (guard; police by config)
    "video_loss",  # a camera lost its video signal
    "camera_intrusion",  # a camera's field-intrusion or line-crossing rule fired
    "drill",  # a drill began (restore: it ended); detail: drill_id, drill_kind, planned_end, by
    "test_missed",  # raised centrally: a campus' periodic test signal did not arrive in time
    "selftest",  # a self-test's progress at the edge (detail: selftest_id, hop)
    "guard_action",  # the guard console acknowledged or closed an alarm (detail: alarm_id, action)
    "linkage",  # a site reaction to an alarm (detail: rule, action, target, ok, error, alarm_id)
    "storage_low",  # the edge's data disk is (nearly) full: old video deleted (technician)
]
ALARM_KINDS: frozenset[str] = frozenset(
    {
        "panic",
        "duress",
        "holdup",
        "fire",
        "intrusion",
        "tamper",
        "trouble",
        "transmission_fault",
        "bollard_impact",
    }
)
"""Kinds that are alarms: on disk with fsync, ahead of everything else in every queue."""

Severity = Literal["critical", "high", "medium", "low", "info"]

AlarmState = Literal[
    "received",  # stored by a gateway
    "relaying",  # handed to the police relay
    "police_received",  # the alarm receiving platform acknowledged it (DC-09 ACK)
    "police_rejected",  # the platform answered but refused it (DC-09 DUH)
    "delivery_failed",  # no path answered; the relay keeps trying
    "guard_acknowledged",
    "dispatched",
    "on_scene",
    "closed",
]


def utcnow() -> datetime:
    return datetime.now(UTC)


def _in_utc(value: datetime) -> datetime:
    """An aware time moved to UTC; a ValueError (a clean validation error), not an
    OverflowError, when it falls outside what a datetime holds (0001-01-01T00:00+05:00)."""
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError("timestamp out of range once moved to UTC") from None


def new_id() -> str:
    """A unique, time-sortable id (ULID, 26 chars)."""
    return str(ULID())


def without_nul(data: Any) -> Any:
    """``data`` with every NUL character in its strings (keys too) replaced by U+FFFD."""
    if isinstance(data, str):
        return data.replace("\x00", "\ufffd") if "\x00" in data else data
    if isinstance(data, dict):
        return {without_nul(k): without_nul(v) for k, v in data.items()}
    if isinstance(data, list):
        return [without_nul(v) for v in data]
    return data


class _Model(BaseModel):
    """A message of the contract.

    Its strings hold no NUL. JSON may carry one (``\\u0000``); PostgreSQL cannot store it in a
    text column, and an alarm with one would fail to be stored at every delivery, be held
    unacknowledged and sent again without end, and hold the gateway's MQTT stream with it. It is
    replaced by U+FFFD (the alarm goes on, its text marked where the NUL was), not refused (the
    alarm lost). (The gateway's API refuses a NUL in a request instead.)
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _no_nul(cls, data: Any) -> Any:
        return without_nul(data)


class Geo(_Model):
    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)


DetailValue = str | int | float | bool | None


class Event(_Model):
    """Something that happened on a campus, as the edge saw it."""

    v: Literal[1] = 1
    id: Annotated[str, Field(min_length=26, max_length=26, description="ULID, sortable")]
    campus: Annotated[str, Field(pattern=CAMPUS_ID_PATTERN)]
    edge: Annotated[str, Field(pattern=ID_PATTERN)]
    seq: Annotated[
        int,
        Field(
            ge=0,
            le=2**63 - 1,
            description="per-edge sequence number, gapless; 0 = raised centrally",
        ),
    ]
    ts: datetime = Field(description="time at the edge, UTC")
    kind: EventKind
    severity: Severity
    device: Annotated[str, Field(pattern=ID_PATTERN)]
    point: Annotated[str | None, Field(pattern=ID_PATTERN)] = None
    zone: Annotated[str | None, Field(pattern=ID_PATTERN)] = None
    zone_no: int | None = Field(None, ge=0, le=999, description="zone number for the police")
    location: Annotated[str | None, Field(max_length=200)] = None
    geo: Geo | None = None
    restore: bool = Field(False, description="the condition ended (e.g. button reset)")
    drill: bool = Field(False, description="raised during a drill: a test, never dispatched")
    text: Annotated[str, Field(max_length=500)] = ""
    detail: dict[str, DetailValue] = Field(default_factory=dict, max_length=32)

    @field_validator("ts")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("timestamp must carry a timezone (UTC)")
        return _in_utc(value)

    @property
    def is_alarm(self) -> bool:
        return self.kind in ALARM_KINDS


class EdgeState(_Model):
    """Retained; the broker publishes the offline form as the edge's last will."""

    v: Literal[1] = 1
    campus: Annotated[str, Field(pattern=CAMPUS_ID_PATTERN)]
    edge: Annotated[str, Field(pattern=ID_PATTERN)]
    online: bool
    ts: datetime
    version: str = ""
    reason: str = ""

    @field_validator("ts")
    @classmethod
    def _storable(cls, value: datetime) -> datetime:
        _in_utc(value)  # the store keeps it in UTC
        return value


class DeviceStatus(_Model):
    """Retained per device: never a stale value, ``online`` false as soon as it stops answering."""

    v: Literal[1] = 1
    campus: Annotated[str, Field(pattern=CAMPUS_ID_PATTERN)]
    device: Annotated[str, Field(pattern=ID_PATTERN)]
    online: bool
    ts: datetime
    last_response: datetime | None = None
    latency_ms: float | None = None
    error: Annotated[str | None, Field(max_length=300)] = None
    points: dict[str, DetailValue] = Field(default_factory=dict, max_length=256)

    @field_validator("ts", "last_response")
    @classmethod
    def _storable(cls, value: datetime | None) -> datetime | None:
        if value is not None:
            _in_utc(value)  # the store keeps it in UTC
        return value


class AlarmStatus(_Model):
    """Gateway -> campus: the life of one alarm after it left the campus."""

    v: Literal[1] = 1
    alarm_id: Annotated[str, Field(min_length=26, max_length=26)]
    campus: Annotated[str, Field(pattern=CAMPUS_ID_PATTERN)]
    state: AlarmState
    ts: datetime
    path: str | None = Field(None, description="which police path took it (primary, backup)")
    note: Annotated[str, Field(max_length=500)] = ""


DrillKind = Literal["fire", "earthquake", "stampede", "intruder", "other"]


class DrillCommand(_Model):
    """Centre -> campus: start or end a drill.

    While a drill runs the edge marks every alarm of the campus as a drill (except inputs that
    are "real even during drills"); it ends the drill by itself at ``planned_end`` if nobody
    does. The edge answers with ``drill`` events (start; restore = ended) carrying ``drill_id``.
    """

    v: Literal[1] = 1
    id: Annotated[str, Field(min_length=26, max_length=26, description="drill id, ULID")]
    campus: Annotated[str, Field(pattern=CAMPUS_ID_PATTERN)]
    action: Literal["start", "end"]
    kind: DrillKind = "other"
    planned_end: datetime | None = Field(None, description="start: when it ends by itself")
    user: Annotated[str, Field(min_length=1, max_length=64)]
    note: Annotated[str, Field(max_length=500)] = ""
    issued_at: datetime

    @field_validator("issued_at", "planned_end")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("timestamp must carry a timezone (UTC)")
        return None if value is None else _in_utc(value)


class SelftestRequest(_Model):
    """Centre -> campus: prove the alarm path of one device, hop by hop.

    ``synthetic``: the edge raises a ``test`` event from the device as if it had signalled;
    ``pulse``: the edge pulses the device's configured test output, and the test input it is
    wired to must come back as a ``test`` event. Either way the event carries ``selftest_id``,
    goes to the police as a test code, and when its ``police_received`` status is back at the
    edge the edge reports a ``selftest`` event (hop ``status_at_edge``).
    """

    v: Literal[1] = 1
    id: Annotated[str, Field(min_length=26, max_length=26, description="self-test id, ULID")]
    campus: Annotated[str, Field(pattern=CAMPUS_ID_PATTERN)]
    device: Annotated[str, Field(pattern=ID_PATTERN)]
    mode: Literal["synthetic", "pulse"] = "synthetic"
    user: Annotated[str, Field(min_length=1, max_length=64)]
    issued_at: datetime
    expires_at: datetime

    @field_validator("issued_at", "expires_at")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("timestamp must carry a timezone (UTC)")
        return _in_utc(value)


class Receipt(_Model):
    """Gateway -> campus: these events are committed to the central store.

    The edge keeps an event until its receipt arrives, not just until the broker's PUBACK: a
    broker that restarts can lose queued messages (Mosquitto does not persist shared
    subscriptions), and the edge must then send again.
    """

    v: Literal[1] = 1
    campus: Annotated[str, Field(pattern=CAMPUS_ID_PATTERN)]
    ids: list[Annotated[str, Field(min_length=26, max_length=26)]] = Field(
        min_length=1, max_length=1000
    )


class BollardCommandMessage(_Model):
    """Centre -> campus: operate a bollard, or confirm a raise that was armed.

    The edge decides (its rules know the bollard's state and the vehicle loop) and answers with
    ``bollard_command`` events: armed / accepted / refused, then done (the controller confirmed
    the end position) or failed. Never "done" on "sent".
    """

    v: Literal[1] = 1
    id: Annotated[str, Field(min_length=26, max_length=26, description="command id, ULID")]
    campus: Annotated[str, Field(pattern=CAMPUS_ID_PATTERN)]
    device: Annotated[str, Field(pattern=ID_PATTERN)]
    bollard: int = Field(ge=0, le=63)
    step: Literal["request", "confirm"] = "request"
    action: Literal["raise", "lower", "stop", "emergency_raise"] | None = None
    token: Annotated[str | None, Field(max_length=128)] = None
    user: Annotated[str, Field(min_length=1, max_length=64)]
    role: Annotated[str, Field(min_length=1, max_length=32)]
    reason: Annotated[str, Field(max_length=200)] = ""
    issued_at: datetime
    expires_at: datetime

    @field_validator("issued_at", "expires_at")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("timestamp must carry a timezone (UTC)")
        return _in_utc(value)
