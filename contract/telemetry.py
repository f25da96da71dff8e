"""Telemetry on the wire: what every device and the edge itself measure, in batches.

``cg/v1/<campus>/up/telemetry``, QoS 1, JSON, one :class:`TelemetryBatch` per interval from each
edge, behind alarms, events and evidence in the edge's outbox. All samples of a batch were taken
at the same moment (``ts``, the edge's wall clock); ``interval_s`` is the time the window's
counters cover, measured on the edge's steady clock, so a wall-clock jump at the edge never makes
a rate absurd. Values are numbers or booleans only; a string, NaN or infinity is refused.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import Field, StrictBool, StrictFloat, StrictInt

from contract.models import ID_PATTERN, _Model
from contract.topics import CAMPUS_ID_PATTERN

MAX_SAMPLES = 5000
MAX_BYTES = 2 * 1024 * 1024
"""A telemetry message may be bigger than an event (the edge sends at most 1,000 samples each)."""
MAX_FIELDS = 64
FIELD_KEY_PATTERN = r"^[a-z][a-z0-9_]{0,47}$"

SampleKind = Literal[
    "edge",  # the campus edge itself: CPU, memory, disk, outbox, uplink
    "di_module",  # a Modbus DI module: online, latency, errors
    "input",  # a supervised (EOL) input loop: its state code
    "bollard_controller",
    "bollard",  # one bollard: position, pressure, temperature, cycles
    "camera",  # an ONVIF camera: online, clock skew, subscription, events, snapshots
]

FieldValue = StrictBool | StrictInt | Annotated[StrictFloat, Field(allow_inf_nan=False)]
"""JSON integers arrive as int, decimals as float; a string (even "12") is refused."""
FieldKey = Annotated[str, Field(pattern=FIELD_KEY_PATTERN)]

LOOP_STATE_CODES: dict[str, int] = {"normal": 0, "alarm": 1, "cut": 2, "short": 3, "unknown": 4}
"""``input`` samples: the supervised loop's state as a number (dashboards map it back)."""

BOLLARD_STATE_CODES: dict[str, int] = {
    "down": 0,
    "up": 1,
    "moving_up": 2,
    "moving_down": 3,
    "stopped_midway": 4,
    "fault": 5,
    "maintenance": 6,
    "offline": 7,
}


class Sample(_Model):
    device: Annotated[str, Field(pattern=ID_PATTERN)]
    point: Annotated[str, Field(pattern=ID_PATTERN)] | None = None
    kind: SampleKind
    fields: dict[FieldKey, FieldValue] = Field(min_length=1, max_length=MAX_FIELDS)


class TelemetryBatch(_Model):
    v: Literal[1] = 1
    campus: Annotated[str, Field(pattern=CAMPUS_ID_PATTERN)]
    edge: Annotated[str, Field(pattern=ID_PATTERN)]
    ts: datetime
    interval_s: float = Field(ge=0, le=86400, allow_inf_nan=False)
    samples: list[Sample] = Field(min_length=1, max_length=MAX_SAMPLES)
