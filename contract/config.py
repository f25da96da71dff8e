"""Configuration files: strict pydantic models, one loader, one clear error.

A bad config stops the program with one message naming the file, the key and what is allowed.
Secrets never live in the file: a value of the form ``${NAME}`` is read from the environment, and
``*_file`` keys read a secret file (as Docker and systemd credentials provide them).
"""

from __future__ import annotations

import difflib
import os
import re
import ssl
import types
import typing
from datetime import datetime
from datetime import time as dtime
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import quote
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_serializer,
    field_validator,
    model_validator,
)

from contract.bollard_config import BollardRulesConfig, CommandPolicyConfig, ScheduleConfig
from contract.models import ID_PATTERN, EventKind, Geo
from contract.topics import CAMPUS_ID_PATTERN, DEFAULT_SHARE_GROUP

M = TypeVar("M", bound=BaseModel)


def check_zone(name: str) -> str:
    """``name`` if it is an IANA time zone this machine knows; else a ValueError saying so."""
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r}") from None
    return name


class ConfigError(Exception):
    """The configuration cannot be used; the message says where and why."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Ident = Annotated[str, Field(pattern=ID_PATTERN)]


class TlsConfig(Strict):
    ca_file: Path | None = Field(None, description="CA bundle that signed the broker")
    cert_file: Path | None = Field(None, description="client certificate (mutual TLS)")
    key_file: Path | None = Field(None, description="client private key")
    insecure: bool = Field(False, description="skip host name check (lab use only)")


class GatewaySigningConfig(Strict):
    """The gateway signs every command to a campus (bollards, drills, self-tests) with Ed25519."""

    private_key_file: Path = Field(
        description="PEM Ed25519 private key from `campusguard certs signing-key` (0600)"
    )


class EdgeSigningConfig(Strict):
    """The edge verifies the gateway's signature on every command before it acts on it."""

    public_key_file: Path = Field(description="the gateway's command-signing.pub (PEM)")
    required: bool = Field(
        True, description="refuse unsigned commands (false: accept them with a warning)"
    )
    max_age: float = Field(
        300.0,
        gt=0,
        le=86400,
        description="seconds a command without its own expiry (drills) stays valid after issue",
    )


class MqttConfig(Strict):
    host: str = Field("127.0.0.1", description="broker host")
    port: int = Field(1883, ge=1, le=65535)
    username: str | None = None
    password: SecretStr | None = Field(None, description="use ${ENV} or password_file")
    password_file: Path | None = None
    client_id: str | None = Field(None, description="default: derived from campus/edge id")
    keepalive: int = Field(15, ge=2, le=3600, description="seconds; the last will fires after 1.5x")
    tls: TlsConfig | None = None
    connect_timeout: float = Field(5.0, gt=0, le=120)

    def secret(self) -> str | None:
        if self.password is not None:
            return self.password.get_secret_value()
        if self.password_file is not None:
            return self.password_file.read_text(encoding="utf-8").strip()
        return None


class ZonePlanPoint(Strict):
    """Where a zone sits on the campus plan of the guard console, as fractions of its size."""

    x: float = Field(ge=0, le=1, description="0 = left edge of the plan, 1 = right edge")
    y: float = Field(ge=0, le=1, description="0 = top edge of the plan, 1 = bottom edge")


class ZoneConfig(Strict):
    id: Ident
    name: str = ""
    location: str = Field("", description="where it is, as a guard or policeman would say it")
    geo: Geo | None = None
    plan: ZonePlanPoint | None = Field(None, description="marker on the guard console's plan")


class CampusConfig(Strict):
    id: Annotated[str, Field(pattern=CAMPUS_ID_PATTERN, description="topic-safe campus id")]
    name: str
    type: Literal["school", "kindergarten", "other"] = "school"
    address: str = ""
    geo: Geo | None = None
    timezone: str = Field("Asia/Shanghai", description="IANA zone for schedules (school hours)")

    @model_validator(mode="after")
    def _zone(self) -> CampusConfig:
        check_zone(self.timezone)
        return self


# --- edge -----------------------------------------------------------------------------------

InputKind = Literal["panic", "duress", "holdup", "fire", "intrusion", "tamper", "test"]
"""``test``: a test input (e.g. wired to the module's test output for ``campusguard selftest``
pulses); it raises ``test`` events, relayed to the police as a manual test."""
InputMode = Literal["state", "latch", "counter", "eol"]


class EolConfig(Strict):
    scheme: Literal["galaxy", "ds2", "dsc"] = Field(
        "galaxy", description="resistor scheme: galaxy 1k+1k, ds2 1k+5.6k, dsc single 5.6k"
    )
    samples: int = Field(3, ge=1, le=50, description="consecutive samples before a change")


class InputConfig(Strict):
    channel: int = Field(ge=0, le=255, description="channel number on the module, from 0")
    id: Ident
    kind: InputKind = "panic"
    mode: InputMode = Field(
        "latch",
        description="state: plain polling; latch/counter: never miss a press shorter than "
        "the poll (module latches or counts); eol: supervised loop resistance",
    )
    active: Literal["high", "low"] = Field("high", description="low for normally-closed")
    debounce: float = Field(0.0, ge=0, le=10, description="seconds a change must hold")
    zone: Ident | None = None
    location: str = ""
    alarm_zone: int | None = Field(
        None, ge=1, le=999, description="zone number the police platform shows (Contact ID)"
    )
    eol: EolConfig | None = None
    real_during_drill: bool = Field(
        False, description="alarms from this input stay real even while a drill runs"
    )
    latch: bool = Field(
        True,
        description="panic/duress/holdup with the guard console on: the alarm stays raised "
        "until a guard resets it at the console (closing it); releasing or resetting the "
        "button does not end it",
    )

    @model_validator(mode="after")
    def _eol_needs_mode(self) -> InputConfig:
        if self.eol is not None and self.mode != "eol":
            raise ValueError("'eol' settings need mode: eol")
        return self


class SerialConfig(Strict):
    port: str = Field(description="e.g. /dev/ttyUSB0")
    baudrate: int = Field(9600, ge=1200, le=921600)
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    bytesize: Literal[7, 8] = 8


class SelftestOutputConfig(Strict):
    """A digital output of the module wired to one of its ``kind: test`` inputs: the self-test
    (``mode: pulse``) pulses it so the real input path raises a ``test`` event."""

    channel: int = Field(ge=0, le=63, description="output (DO / relay) number, from 0")
    pulse_ms: int = Field(300, ge=10, le=10_000, description="how long the output is closed")
    address: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="coil wire address of the output; default: from the profile's DO map "
        "(ADAM-60xx 00017+ch, ET-2260 00001+ch, ZLAN6042 00017+ch)",
    )


class ModbusDeviceConfig(Strict):
    id: Ident
    type: Literal["modbus_di"] = "modbus_di"
    profile: str = Field(description="built-in profile name (e.g. adam-6050) or a YAML path")
    transport: Literal["tcp", "rtu"] = "tcp"
    host: str | None = None
    port: int = Field(502, ge=1, le=65535)
    serial: SerialConfig | None = None
    unit: int | None = Field(None, ge=0, le=247, description="default: the profile's")
    poll_interval: float = Field(0.05, ge=0.005, le=60, description="seconds")
    timeout: float = Field(0.5, ge=0.01, le=30, description="seconds per request")
    offline_after: int = Field(3, ge=1, le=100, description="failed polls before offline")
    zone: Ident | None = None
    location: str = ""
    inputs: list[InputConfig] = Field(min_length=1)
    test_output: SelftestOutputConfig | None = Field(
        None, description="output wired to a kind: test input, pulsed by the self-test"
    )

    @model_validator(mode="after")
    def _transport(self) -> ModbusDeviceConfig:
        if self.transport == "tcp" and not self.host:
            raise ValueError("transport tcp needs 'host'")
        if self.transport == "rtu" and self.serial is None:
            raise ValueError("transport rtu needs 'serial'")
        ids = [i.id for i in self.inputs]
        if len(ids) != len(set(ids)):
            raise ValueError("input ids must be unique")
        if self.test_output is not None and not any(i.kind == "test" for i in self.inputs):
            raise ValueError("test_output needs an input of kind: test (the one it is wired to)")
        return self


class BollardConfig(Strict):
    """One bollard of a controller."""

    index: int = Field(ge=0, le=63, description="the bollard's number on its controller, from 0")
    id: Ident
    zone: Ident | None = None
    location: str = ""
    alarm_zone: int | None = Field(
        None, ge=1, le=999, description="zone number the police platform shows (Contact ID)"
    )


class BollardControllerConfig(Strict):
    """A bollard PLC (one or several bollards) on Modbus TCP or RTU."""

    id: Ident
    profile: str = Field("generic-plc", description="built-in bollard profile name or a YAML path")
    transport: Literal["tcp", "rtu"] = "tcp"
    host: str | None = None
    port: int = Field(502, ge=1, le=65535)
    serial: SerialConfig | None = None
    unit: int | None = Field(None, ge=0, le=247, description="default: the profile's")
    poll_interval: float = Field(0.1, ge=0.01, le=60, description="seconds")
    timeout: float = Field(0.5, ge=0.01, le=30, description="seconds per request")
    zone: Ident | None = None
    location: str = ""
    bollards: list[BollardConfig] = Field(min_length=1)
    rules: BollardRulesConfig = BollardRulesConfig()
    schedule: ScheduleConfig | None = Field(
        None, description="must-be-up windows and the term calendar; none = no schedule watch"
    )
    policy: CommandPolicyConfig = CommandPolicyConfig()

    @model_validator(mode="after")
    def _transport(self) -> BollardControllerConfig:
        if self.transport == "tcp" and not self.host:
            raise ValueError("transport tcp needs 'host'")
        if self.transport == "rtu" and self.serial is None:
            raise ValueError("transport rtu needs 'serial'")
        for what in ("index", "id"):
            values = [getattr(b, what) for b in self.bollards]
            if len(values) != len(set(values)):
                raise ValueError(f"bollard {what}s must be unique")
        return self


CameraReport = Literal["motion", "tamper", "video_loss", "intrusion"]
_DEFAULT_REPORT: tuple[CameraReport, ...] = ("tamper", "video_loss", "intrusion")


class CameraInputConfig(Strict):
    """A contact wired to a camera's digital input (a panic button at a gate camera)."""

    source: str = Field(description="the camera's input token, e.g. DI_0 or AlarmIn_1")
    id: Ident
    kind: InputKind = "panic"
    zone: Ident | None = None
    location: str = ""
    alarm_zone: int | None = Field(
        None, ge=1, le=999, description="zone number the police platform shows (Contact ID)"
    )
    real_during_drill: bool = False
    latch: bool = Field(
        True, description="as for Modbus inputs: latched until a guard resets it at the console"
    )


class VideoZoneConfig(Strict):
    """A zone drawn on the camera's picture (e.g. the no-parking strip at the gate)."""

    id: Ident
    polygon: list[tuple[int, int]] = Field(
        min_length=3,
        description="[[x, y], ...] pixels of the analysis frame (video.width x height)",
    )
    no_parking: bool = Field(True, description="a vehicle staying inside is an event")
    max_dwell_s: float = Field(120.0, gt=0, le=86400, description="allowed stop, seconds")
    min_area: int = Field(
        2500, ge=16, description="pixels (analysis frame) an object needs to count as a vehicle"
    )
    days: list[Annotated[int, Field(ge=0, le=6)]] = Field(
        default_factory=lambda: [0, 1, 2, 3, 4], description="0 = Monday"
    )
    hours: list[Annotated[str, Field(pattern=r"^\d\d:\d\d-\d\d:\d\d$")]] = Field(
        default_factory=list,
        description='local windows like "07:00-08:30" (arrival, dismissal); none: all day',
    )

    @field_validator("hours")
    @classmethod
    def _windows(cls, hours: list[str]) -> list[str]:
        for w in hours:
            start, end = w.split("-")
            try:
                ok = dtime.fromisoformat(start) < dtime.fromisoformat(end)
            except ValueError:
                ok = False
            if not ok:
                raise ValueError(f"hours window {w!r}: HH:MM-HH:MM (00:00-23:59), the start first")
        return hours


def _segments_cross(
    a: tuple[int, int], b: tuple[int, int], c: tuple[int, int], d: tuple[int, int]
) -> bool:
    """Whether segments ab and cd properly intersect (touching at an end does not count)."""

    def orient(p: tuple[int, int], q: tuple[int, int], r: tuple[int, int]) -> int:
        v = (q[0] - p[0]) * (r[1] - p[1]) - (q[1] - p[1]) * (r[0] - p[0])
        return (v > 0) - (v < 0)

    o1, o2, o3, o4 = orient(a, b, c), orient(a, b, d), orient(c, d, a), orient(c, d, b)
    return o1 * o2 < 0 and o3 * o4 < 0


def polygon_problem(polygon: list[tuple[int, int]], width: int, height: int) -> str | None:
    """Why a zone polygon cannot be used on a width x height frame, or None if it can."""
    for x, y in polygon:
        if not (0 <= x < width and 0 <= y < height):
            return f"point ({x}, {y}) is outside the {width}x{height} frame"
    n = len(polygon)
    for i in range(n):
        for j in range(i + 1, n):
            if j == i + 1 or (i == 0 and j == n - 1):
                continue  # neighbouring edges share a corner
            a, b = polygon[i], polygon[(i + 1) % n]
            c, d = polygon[j], polygon[(j + 1) % n]
            if _segments_cross(a, b, c, d):
                return f"edges {i} and {j} cross (the polygon intersects itself)"
    area2 = sum(
        polygon[i][0] * polygon[(i + 1) % n][1] - polygon[(i + 1) % n][0] * polygon[i][1]
        for i in range(n)
    )
    if area2 == 0:
        return "the polygon has no area"
    return None


class CameraVideoConfig(Strict):
    """The edge reads the camera's RTSP stream itself: health and tamper (OpenCV)."""

    enabled: bool = Field(False, description="analyse the stream on the edge")
    stream_url: str | None = Field(
        None,
        description="rtsp:// URL; default: the camera's GetStreamUri with its credentials",
    )
    profile: str | None = Field(None, description="media profile token; default: the first")
    fps: float = Field(5.0, gt=0, le=30, description="frames per second analysed")
    width: int = Field(640, ge=64, le=3840, description="analysis frame width")
    height: int = Field(360, ge=36, le=2160, description="analysis frame height")
    open_timeout_s: float = Field(10.0, gt=0, le=120)
    read_timeout_s: float = Field(5.0, gt=0, le=120)
    stall_s: float = Field(10.0, gt=0, le=600, description="no frame this long: stalled, restart")
    backoff_cap_s: float = Field(60.0, ge=1, le=3600, description="longest wait between restarts")
    hold_s: float = Field(10.0, ge=0, le=3600, description="a condition held this long is raised")
    cooldown_s: float = Field(300.0, ge=0, le=86400, description="not raised again within this")
    frozen_s: float = Field(20.0, gt=0, le=3600, description="an unchanging picture this long")
    rebaseline_s: float = Field(120.0, gt=0, le=86400, description="day/night: new baseline after")
    black_mean: float = Field(16.0, ge=0, le=255)
    cover_std: float = Field(8.0, ge=0, le=128)
    defocus_ratio: float = Field(0.3, gt=0, lt=1, description="of the baseline's focus measure")
    move_inliers: float = Field(0.25, gt=0, lt=1, description="ORB inlier ratio below: moved")
    move_shift: float = Field(0.05, gt=0, lt=1, description="shift above (of width): moved")
    frozen_diff: float = Field(0.05, ge=0, le=50, description="mean abs frame difference")
    zones: list[VideoZoneConfig] = []
    timezone: Annotated[str, AfterValidator(check_zone)] = Field(
        "Asia/Shanghai", description="IANA zone of the zones' hours"
    )


class CameraClipsConfig(Strict):
    """One camera's part in the alarm clips (the settings are the edge's ``clips:``)."""

    enabled: bool = Field(True, description="keep a rolling buffer of this camera's stream")


class CameraConfig(Strict):
    """An ONVIF camera: its events become ours, and its inputs work like a DI module's."""

    id: Ident
    host: str
    port: int = Field(80, ge=1, le=65535)
    username: str = "admin"
    password: SecretStr | None = Field(None, description="use ${ENV} or password_file")
    password_file: Path | None = None
    timeout: float = Field(10.0, gt=0, le=120, description="seconds per ONVIF call")
    zone: Ident | None = None
    location: str = ""
    covers: list[Ident] = Field(
        default_factory=list,
        description="zones whose alarms this camera documents with snapshots "
        "(its own zone is always one of them)",
    )
    snapshot_profile: str | None = Field(
        None, description="media profile token for evidence snapshots; default: the first"
    )
    inputs: list[CameraInputConfig] = []
    report: list[CameraReport] = Field(
        default_factory=lambda: list(_DEFAULT_REPORT),
        description="which of the camera's own analytics become events (motion is noisy)",
    )
    events: Literal["pullpoint", "webhook"] = Field(
        "pullpoint",
        description="how events come: pullpoint (the edge long-polls the camera; works through "
        "NAT, loss noticed within a minute) or webhook (the camera POSTs Notify to the edge's "
        "notify listener: needs the camera to reach the edge; for cameras without pull points)",
    )
    video: CameraVideoConfig = Field(
        default_factory=CameraVideoConfig, description="the edge's own stream health and tamper"
    )
    clips: CameraClipsConfig | None = Field(
        None,
        description="pre- and post-alarm video of this camera; none = as the edge's "
        "clips.enabled says",
    )
    key_point: bool = Field(
        False,
        description="a key point (gate, guard room): its video is kept clips.retention."
        "key_point_days instead of ordinary_days",
    )

    @model_validator(mode="after")
    def _video_zones(self) -> CameraConfig:
        v = self.video
        for zone in v.zones:
            problem = polygon_problem(zone.polygon, v.width, v.height)
            if problem:
                raise ValueError(f"camera {self.id!r} video zone {zone.id!r}: {problem}")
        return self

    def secret(self) -> str:
        if self.password is not None:
            return self.password.get_secret_value()
        if self.password_file is not None:
            return self.password_file.read_text(encoding="utf-8").strip()
        return ""

    def zones_covered(self) -> set[str]:
        """Zones whose alarms get this camera's snapshots."""
        return set(self.covers) | ({self.zone} if self.zone else set())


_EVIDENCE_KINDS: list[EventKind] = [
    "panic",
    "duress",
    "holdup",
    "fire",
    "intrusion",
    "tamper",
    "trouble",
    "bollard_impact",
    "camera_tamper",
    "camera_intrusion",
    "video_loss",
]


_CLIP_KINDS: list[EventKind] = [
    "panic",
    "duress",
    "holdup",
    "fire",
    "intrusion",
    "tamper",
    "bollard_impact",
    "camera_tamper",
    "camera_intrusion",
]


class EdgeEvidenceConfig(Strict):
    """Snapshots taken with every alarm by the cameras that cover its zone."""

    enabled: bool = True
    kinds: list[EventKind] = Field(
        default_factory=lambda: list(_EVIDENCE_KINDS),
        description="event kinds that get snapshots (never their restores)",
    )
    shots: int = Field(1, ge=1, le=10, description="pictures per camera: one at once, then more")
    interval: float = Field(1.0, gt=0, le=60, description="seconds between a camera's shots")
    timeout: float = Field(
        10.0, gt=0, le=120, description="seconds a snapshot may take; the alarm never waits for it"
    )
    max_bytes: int = Field(
        2 * 1024 * 1024, ge=1024, le=16 * 1024 * 1024, description="a bigger picture is refused"
    )
    retention_days: float = Field(
        7.0,
        gt=0,
        le=3650,
        description="how long the edge keeps its copy (pictures of minors: only as needed)",
    )


RECOMMENDED_PRE_S = 30.0
"""Issue 13 and GB practice: a clip starts at least 30 s before the alarm. ``clips.pre_s`` may be
set lower (tests, small disks); the edge then logs a warning at start."""


class ClipsRetentionConfig(Strict):
    """How long the edge keeps alarm video, and what it does when its disk fills up."""

    ordinary_days: float = Field(
        30.0, gt=0, le=3650, description="clips of ordinary areas (regulatory minimum: 30 days)"
    )
    key_point_days: float = Field(
        90.0,
        gt=0,
        le=3650,
        description="clips of key points (gate, guard room: cameras with key_point: true or "
        "in key_zones; regulatory minimum: 90 days)",
    )
    key_zones: list[Ident] = Field(
        default_factory=list, description="zones whose cameras are key points"
    )
    min_free_mb: int = Field(
        1024,
        ge=0,
        le=10_000_000,
        description="free space on the edge's data disk below which the oldest ordinary video "
        "is deleted (then key-point video) and a storage_low technician alarm is raised",
    )
    check_every_s: float = Field(30.0, ge=0.2, le=3600, description="free-space check period")
    sweep_every_s: float = Field(3600.0, ge=1, le=86400, description="retention sweep period")


class ClipsConfig(Strict):
    """Pre- and post-alarm video: a rolling buffer of segments per camera (ffmpeg, no
    re-encoding) and, for every alarm, a clip from ``pre_s`` before to ``post_s`` after from
    each camera covering the alarm's zone."""

    enabled: bool = Field(
        False, description="buffer every camera's stream (a camera's clips.enabled overrides)"
    )
    pre_s: float = Field(
        30.0,
        ge=1,
        le=600,
        description="seconds of video before the alarm (recommended and regulatory: >= 30; "
        "lower values are allowed for tests and warned about)",
    )
    post_s: float = Field(30.0, ge=1, le=600, description="seconds of video after the alarm")
    segment_s: int = Field(
        2, ge=1, le=10, description="segment length (cut at the next key frame after it)"
    )
    margin_s: float = Field(
        10.0, ge=0, le=600, description="buffer kept beyond pre_s (the segment being written)"
    )
    directory: Path | None = Field(None, description="default: <edge.data_dir>/clips")
    max_buffer_mb: int = Field(
        512, ge=1, le=100_000, description="per camera: a buffer bigger than this is trimmed"
    )
    max_clip_mb: int = Field(200, ge=1, le=2000, description="a bigger clip is refused")
    kinds: list[EventKind] = Field(
        default_factory=lambda: list(_CLIP_KINDS),
        description="event kinds that get clips (never their restores)",
    )
    ffmpeg: str = Field("ffmpeg", description="the ffmpeg program (PATH is searched)")
    rtsp_transport: Literal["tcp", "udp"] = "tcp"
    ready_grace_s: float = Field(
        4.0,
        ge=0,
        le=120,
        description="after alarm + post_s, how long to wait for the last segment before the "
        "clip is cut with what there is (the gap recorded)",
    )
    restart_max_s: float = Field(
        30.0, ge=1, le=600, description="longest backoff between restarts of a camera's segmenter"
    )
    retention: ClipsRetentionConfig = ClipsRetentionConfig()

    def buffer_s(self) -> float:
        """Seconds of segments each camera keeps."""
        return self.pre_s + self.margin_s + self.segment_s


class NotifyListenerConfig(Strict):
    """The edge's HTTP listener for cameras with ``events: webhook`` (one for all of them)."""

    host: str = Field("0.0.0.0", description="address to bind")
    port: int = Field(8089, ge=1, le=65535, description="TCP port to bind")
    advertised_url: str = Field(
        pattern=r"^https?://[^/\s]+/?$",
        description="base URL the cameras POST to, as they reach this edge, "
        "e.g. http://10.20.0.5:8089 (not the bind address)",
    )
    max_body: int = Field(
        65536, ge=1024, le=4 * 1024 * 1024, description="largest Notify body, bytes (413 above)"
    )


class EdgeTelemetryConfig(Strict):
    """Device and edge health figures for the centre (InfluxDB, reports)."""

    enabled: bool = True
    interval: float = Field(30.0, ge=1, le=3600, description="seconds between batches")
    keep_batches: int = Field(
        2880,
        ge=1,
        le=1_000_000,
        description="batches kept while the uplink is down; the oldest go first",
    )


class EdgeDrillsConfig(Strict):
    """Drills at the edge: how long one may run (it ends by itself at its planned end)."""

    max_minutes: float = Field(
        240.0, gt=0, le=24 * 60, description="longest drill; a longer request is cut to this"
    )
    default_minutes: float = Field(
        30.0, gt=0, le=24 * 60, description="length of a drill started without one"
    )

    @model_validator(mode="after")
    def _default_fits(self) -> EdgeDrillsConfig:
        if self.default_minutes > self.max_minutes:
            raise ValueError("default_minutes must not exceed max_minutes")
        return self


class EdgeTestSignalConfig(Strict):
    """The periodic test signal (Contact ID 602 / SIA RP): proof that the campus' whole alarm
    path works, so the police platform can tell a silent campus from a quiet one."""

    enabled: bool = True
    interval: float = Field(
        86400.0, ge=60, le=7 * 86400, description="seconds between test signals (steady timer)"
    )
    first_after: float = Field(
        60.0, ge=0, le=86400, description="seconds after start for the first one"
    )


# --- guard console (edge/console) -------------------------------------------------------------

ConsoleRole = Literal["guard", "supervisor"]


class ConsoleUser(Strict):
    """A local account of the guard console; the password only as an argon2id hash."""

    user: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
    name: Annotated[str, Field(max_length=64)] = ""
    role: ConsoleRole = "guard"
    password_hash: Annotated[
        str,
        Field(
            pattern=r"^\$argon2id\$",
            description="from `campusguard console hash-password`; never the password itself",
        ),
    ]


class ConsolePlan(Strict):
    """The campus plan drawn behind the zone markers (an SVG canvas of this size)."""

    image: Path | None = Field(None, description="PNG/JPEG/SVG drawn under the markers")
    width: int = Field(1000, ge=100, le=10000)
    height: int = Field(600, ge=100, le=10000)


class EdgeConsoleConfig(Strict):
    """The guard booth console: a web page served by the edge itself, so it keeps working when
    the campus is cut off from the centre."""

    enabled: bool = False
    host: str = Field("127.0.0.1", description="address to bind (the booth PC: loopback)")
    port: int = Field(8090, ge=0, le=65535, description="0 picks a free port")
    users: list[ConsoleUser] = []
    session_minutes: float = Field(
        480.0, gt=0, le=24 * 60, description="a session ends after this long without use"
    )
    language: Literal["zh-CN", "en"] = "zh-CN"
    procedures: dict[EventKind, list[Annotated[str, Field(max_length=300)]]] = Field(
        default_factory=dict, description="event kind -> the steps the guard follows"
    )
    plan: ConsolePlan = ConsolePlan()

    @model_validator(mode="after")
    def _users(self) -> EdgeConsoleConfig:
        names = [u.user for u in self.users]
        if len(names) != len(set(names)):
            raise ValueError(f"console user names must be unique: {sorted(names)}")
        if self.enabled and not self.users:
            raise ValueError("an enabled console needs at least one user")
        return self


# --- alarm linkage: site reactions (issue 13, part 3) ---------------------------------------

_LINKAGE_KINDS: list[EventKind] = ["panic", "duress", "intrusion", "bollard_impact"]


class LinkageOutputConfig(Strict):
    """A relay output (DO / relay channel) of a configured Modbus module: siren, strobe, voice."""

    device: Ident = Field(description="a Modbus device of devices: (its module has outputs)")
    channel: int = Field(ge=0, le=63, description="output (DO / relay) number, from 0")
    address: int | None = Field(
        None, ge=0, le=65535, description="coil wire address; default from the profile's DO map"
    )
    seconds: float = Field(60.0, gt=0, le=3600, description="switched off again after this")
    label: Annotated[str, Field(max_length=64)] = Field("", description="siren, strobe, ...")


class LinkagePtzConfig(Strict):
    """Move a PTZ camera to a preset (ONVIF PTZ GotoPreset)."""

    camera: Ident = Field(description="a camera of cameras:")
    preset: Annotated[str, Field(min_length=1, max_length=64)] = Field(
        description="the camera's preset token"
    )
    profile: str | None = Field(None, description="media profile token; default: the first")


class LinkageBollardConfig(Strict):
    """Raise a gate bollard: only what its command policy and interlocks allow, audited."""

    device: Ident = Field(description="a bollard controller of bollards:")
    bollard: int = Field(ge=0, le=63, description="the bollard's index on the controller")
    action: Literal["raise", "emergency_raise"] = "raise"
    role: Annotated[str, Field(min_length=1, max_length=64)] = Field(
        "guard", description="the role the command is issued with (the policy decides)"
    )


class LinkageRuleConfig(Strict):
    """When an alarm of these kinds in these zones is raised, react on site."""

    id: Ident
    kinds: list[EventKind] = Field(
        default_factory=lambda: list(_LINKAGE_KINDS), min_length=1, description="alarm kinds"
    )
    zones: list[Ident] | Literal["*"] = Field("*", description="zones; '*' = anywhere")
    drills: bool = Field(False, description="also react to alarms raised during a drill")
    timeout: float = Field(5.0, gt=0, le=60, description="seconds one action may take")
    outputs: list[LinkageOutputConfig] = []
    ptz: list[LinkagePtzConfig] = []
    bollards: list[LinkageBollardConfig] = []


def _check_linkage(rules: list[LinkageRuleConfig], data: dict[str, Any]) -> None:
    """A rule naming an unknown zone, device, output, camera or bollard is a config error."""
    zones = {z.id for z in data.get("zones") or []}
    devices = {d.id for d in data.get("devices") or []}
    cameras = {c.id for c in data.get("cameras") or []}
    bollards = {c.id: {b.index for b in c.bollards} for c in data.get("bollards") or []}
    rule_ids = [r.id for r in rules]
    if len(rule_ids) != len(set(rule_ids)):
        raise ValueError(f"linkage rule ids must be unique: {sorted(rule_ids)}")
    for rule in rules:
        where = f"linkage rule {rule.id!r}"
        if not (rule.outputs or rule.ptz or rule.bollards):
            raise ValueError(f"{where} has no outputs, ptz or bollards: nothing to do")
        for zone in rule.zones if rule.zones != "*" else []:
            if zone not in zones:
                raise ValueError(f"{where} names unknown zone {zone!r}; zones: {sorted(zones)}")
        for out in rule.outputs:
            if out.device not in devices:
                raise ValueError(
                    f"{where} names unknown device {out.device!r} (outputs); "
                    f"Modbus devices: {sorted(devices)}"
                )
        for ptz in rule.ptz:
            if ptz.camera not in cameras:
                raise ValueError(
                    f"{where} names unknown camera {ptz.camera!r}; cameras: {sorted(cameras)}"
                )
        for bol in rule.bollards:
            if bol.device not in bollards:
                raise ValueError(
                    f"{where} names unknown bollard controller {bol.device!r}; "
                    f"controllers: {sorted(bollards)}"
                )
            if bol.bollard not in bollards[bol.device]:
                raise ValueError(
                    f"{where} names bollard {bol.bollard} of {bol.device!r}, which has "
                    f"{sorted(bollards[bol.device])}"
                )


class EdgeNode(Strict):
    id: Ident = "edge"
    data_dir: Path = Field(Path("var/edge"), description="outbox and state live here")
    status_interval: float = Field(
        30.0, ge=1, le=3600, description="seconds between device status refreshes"
    )


class EdgeMetricsConfig(Strict):
    """Prometheus ``GET /metrics`` on the edge (outbox depth, uplink, devices, poll latency)."""

    host: str = Field("127.0.0.1", description="address to bind")
    port: int = Field(9464, ge=0, le=65535, description="0 picks a free port")


class EdgeConfig(Strict):
    """One campus edge: its campus, broker and devices."""

    campus: CampusConfig
    edge: EdgeNode = EdgeNode()
    mqtt: MqttConfig = MqttConfig()
    zones: list[ZoneConfig] = []
    devices: list[ModbusDeviceConfig] = []
    bollards: list[BollardControllerConfig] = []
    cameras: list[CameraConfig] = []
    evidence: EdgeEvidenceConfig = EdgeEvidenceConfig()
    clips: ClipsConfig = Field(
        default_factory=ClipsConfig, description="pre- and post-alarm video, retention, disk full"
    )
    telemetry: EdgeTelemetryConfig = EdgeTelemetryConfig()
    test_signal: EdgeTestSignalConfig = EdgeTestSignalConfig()
    drills: EdgeDrillsConfig = EdgeDrillsConfig()
    console: EdgeConsoleConfig = EdgeConsoleConfig()
    metrics: EdgeMetricsConfig | None = Field(
        None, description="serve Prometheus metrics over HTTP; none = off"
    )
    command_signing: EdgeSigningConfig | None = Field(
        None, description="verify the gateway's signature on commands; none = not verified"
    )
    linkage: list[LinkageRuleConfig] = Field(
        default_factory=list,
        description="site reactions to alarms: relay outputs, PTZ presets, gate bollards",
    )
    notify: NotifyListenerConfig | None = Field(
        None,
        validate_default=True,
        description="listener for cameras with events: webhook; required by them",
    )

    @field_validator("linkage", mode="after")
    @classmethod
    def _linkage_refs(
        cls, rules: list[LinkageRuleConfig], info: ValidationInfo
    ) -> list[LinkageRuleConfig]:
        _check_linkage(rules, info.data)
        return rules

    @field_validator("notify", mode="after")
    @classmethod
    def _notify_needed(
        cls, notify: NotifyListenerConfig | None, info: ValidationInfo
    ) -> NotifyListenerConfig | None:
        cameras: list[CameraConfig] = info.data.get("cameras") or []
        webhook = [c.id for c in cameras if c.events == "webhook"]
        if webhook and notify is None:
            raise ValueError(
                f"required because camera(s) {', '.join(webhook)} use events: webhook; "
                "set notify.advertised_url (the URL the cameras reach this edge at) and "
                "notify.port, or use events: pullpoint"
            )
        return notify

    @model_validator(mode="after")
    def _refs(self) -> EdgeConfig:
        zones = {z.id for z in self.zones}
        ids = [d.id for d in self.devices] + [b.id for b in self.bollards]
        ids += [c.id for c in self.cameras]
        if len(ids) != len(set(ids)):
            raise ValueError(f"device ids must be unique: {sorted(ids)}")
        refs = [(d.id, [d.zone, *(i.zone for i in d.inputs)]) for d in self.devices]
        refs += [(c.id, [c.zone, *(b.zone for b in c.bollards)]) for c in self.bollards]
        refs += [(c.id, [c.zone, *(i.zone for i in c.inputs), *c.covers]) for c in self.cameras]
        refs += [("clips.retention", list(self.clips.retention.key_zones))]
        for dev_id, zone_refs in refs:
            for ref in zone_refs:
                if ref is not None and ref not in zones:
                    raise ValueError(
                        f"device {dev_id!r} names zone {ref!r}; defined zones: {sorted(zones)}"
                    )
        return self


# --- gateway --------------------------------------------------------------------------------


_URL_PASSWORD = re.compile(r"^([a-z0-9+]+://[^:/@]*):([^@]*)@")


def url_without_password(url: str) -> str:
    """The URL as it may be shown: its password (if any) replaced by ``***``."""
    return _URL_PASSWORD.sub(r"\1:***@", url, count=1)


class DatabaseConfig(Strict):
    url: str = Field(
        "sqlite+aiosqlite:///var/gateway/campusguard.db",
        description="SQLAlchemy async URL: sqlite+aiosqlite:///path or "
        "postgresql+asyncpg://user@host/db (the password in password or password_file)",
    )
    password: SecretStr | None = Field(
        None, description="PostgreSQL password: use ${ENV} or password_file; not in url"
    )
    password_file: Path | None = None

    @model_validator(mode="after")
    def _driver(self) -> DatabaseConfig:
        if not self.url.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
            raise ValueError("url must start with sqlite+aiosqlite:// or postgresql+asyncpg://")
        if self.password is not None or self.password_file is not None:
            if self.url.startswith("sqlite"):
                raise ValueError("password / password_file: SQLite has no password")
            if _URL_PASSWORD.match(self.url):
                raise ValueError("the password is in url too: give it in one place only")
            if not re.match(r"^[a-z0-9+]+://[^:/@]+@", self.url):
                raise ValueError(
                    "password needs a user name in url (postgresql+asyncpg://user@...)"
                )
        return self

    @field_serializer("url")
    def _url_shown(self, url: str) -> str:
        # A dump of the config (JSON, YAML, an API) never carries the password, as SecretStr.
        return url_without_password(url)

    def secret(self) -> str | None:
        if self.password is None and self.password_file is None:
            return None
        return _read_secret(self.password, self.password_file)

    def connect_url(self) -> str:
        """The URL to connect with: ``url`` with the password from password / password_file."""
        secret = self.secret()
        if secret is None:
            return self.url
        scheme, rest = self.url.split("://", 1)
        user, host = rest.split("@", 1)
        return f"{scheme}://{user}:{quote(secret, safe='')}@{host}"


class Dc09Path(Strict):
    host: str
    port: int = Field(ge=1, le=65535)
    transport: Literal["tcp", "udp"] = "tcp"


class Dc09Code(Strict):
    cid: int = Field(ge=100, le=999, description="Contact ID event code")
    sia: Annotated[str, Field(pattern=r"^[A-Z]{2}$", description="SIA DC-03 code (new event)")]
    sia_restore: Annotated[str | None, Field(pattern=r"^[A-Z]{2}$")] = None
    relay: bool = Field(True, description="send this kind to the police at all")


def _default_codes() -> dict[EventKind, Dc09Code]:
    return {
        "panic": Dc09Code(cid=120, sia="PA", sia_restore="PH"),
        "duress": Dc09Code(cid=121, sia="HA", sia_restore="HH"),
        "holdup": Dc09Code(cid=122, sia="HA", sia_restore="HH"),
        "fire": Dc09Code(cid=110, sia="FA", sia_restore="FH"),
        "intrusion": Dc09Code(cid=130, sia="BA", sia_restore="BH"),
        "tamper": Dc09Code(cid=137, sia="TA", sia_restore="TR"),
        "trouble": Dc09Code(cid=380, sia="YX", sia_restore="YZ"),
        "transmission_fault": Dc09Code(cid=350, sia="YC", sia_restore="YK"),
        # No Contact ID code means "vehicle rammed the gate": 150 (24-hour non-burglary) is
        # what ARCs take for a 24 h zone that is neither fire nor burglary. Map to your ARC's.
        "bollard_impact": Dc09Code(cid=150, sia="UA", sia_restore="UH"),
        "test": Dc09Code(cid=601, sia="RX"),
        # A campus whose periodic test did not come: communication trouble (restore: YK).
        "test_missed": Dc09Code(cid=350, sia="YC", sia_restore="YK"),
    }


class Dc09Config(Strict):
    protocol: Literal["ADM-CID", "SIA-DCS"] = "ADM-CID"
    receiver: Annotated[str, Field(pattern=r"^[0-9A-Fa-f]{1,6}$")] = "1"
    prefix: Annotated[str, Field(pattern=r"^[0-9A-Fa-f]{1,6}$")] = "1"
    primary: Dc09Path
    backup: Dc09Path | None = None
    key: SecretStr | None = Field(None, description="AES key: use ${ENV} or key_file")
    key_file: Path | None = None
    key_encoding: Literal["ascii", "hex"] = Field(
        "hex", description="receivers differ: hex 32/48/64 chars, or ASCII 16/24/32 chars"
    )
    ack_timeout: float = Field(2.0, gt=0, le=60)
    attempts: int = Field(3, ge=1, le=20, description="tries per path before failing over")
    connections: int = Field(
        4,
        ge=1,
        le=64,
        description="connections per path: alarms of different campuses go out in parallel "
        "over them (one campus' alarms stay in order); 1 = one frame at a time per path",
    )
    supervision_interval: float = Field(
        60.0, ge=0, le=86400, description="NULL link test when idle; 0 = off"
    )
    supervision_account: Annotated[str | None, Field(pattern=r"^[0-9A-Fa-f]{3,16}$")] = Field(
        None, description="account in NULL link tests; default: the first campus'"
    )
    drill_code: Dc09Code = Field(
        Dc09Code(cid=601, sia="RX"), description="drill alarms go out as this test code"
    )
    periodic_test_code: Dc09Code = Field(
        Dc09Code(cid=602, sia="RP"),
        description="periodic test signals (test events with periodic: true) go out as this",
    )
    codes: dict[EventKind, Dc09Code] = Field(default_factory=_default_codes)

    @model_validator(mode="after")
    def _merge_defaults(self) -> Dc09Config:
        merged: dict[EventKind, Dc09Code] = {**_default_codes(), **self.codes}
        object.__setattr__(self, "codes", merged)
        return self

    def key_text(self) -> str | None:
        if self.key is not None:
            return self.key.get_secret_value()
        if self.key_file is not None:
            return self.key_file.read_text(encoding="utf-8").strip()
        return None


class CampusContact(Strict):
    """Someone the police dispatcher can call about a campus (shown on the dispatch console)."""

    name: Annotated[str, Field(min_length=1, max_length=64)]
    role: Annotated[str, Field(max_length=64, description="e.g. principal, security chief")] = ""
    phone: Annotated[str, Field(pattern=r"^\+?[0-9][0-9 ()-]{2,31}$")]


class CampusAccount(Strict):
    """A campus as the centre knows it: its alarm account and where it is."""

    id: Annotated[str, Field(pattern=CAMPUS_ID_PATTERN)]
    name: str = ""
    account: Annotated[
        str, Field(pattern=r"^[0-9A-Fa-f]{3,16}$", description="account at the police ARC")
    ]
    address: str = ""
    geo: Geo | None = None
    type: Literal["school", "kindergarten", "other"] = Field(
        "school", description="sets the required drill frequency (drills.frequency)"
    )
    contacts: list[CampusContact] = Field(
        default_factory=list,
        max_length=20,
        description="who the police dispatcher calls about this campus (dispatch console)",
    )


class HttpConfig(Strict):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535, description="0 picks a free port")
    metrics_public: bool = Field(
        False,
        description="serve GET /metrics without a token (only on a network that only "
        "Prometheus reaches); default: a bearer token with health.read is needed",
    )


class GatewayNode(Strict):
    id: Ident = "gateway"
    data_dir: Path = Path("var/gateway")
    http: HttpConfig | None = HttpConfig()
    share_group: str | None = Field(
        DEFAULT_SHARE_GROUP, description="MQTT shared-subscription group; null to disable"
    )


Role = Literal["guard", "supervisor", "technician", "dispatcher", "inspector", "admin"]
ROLES: tuple[Role, ...] = ("guard", "supervisor", "technician", "dispatcher", "inspector", "admin")


class ApiToken(Strict):
    """A bearer token for the gateway API, bound to a user, a role and the campuses it may act
    on. (Accounts with passwords and sessions come with the consoles; these are for machine
    clients and for operating bollards until then.)"""

    user: Annotated[str, Field(min_length=1, max_length=64)]
    role: Role
    campuses: list[str] = Field(
        min_length=1, description="campus ids this token may act on; ['*'] = all"
    )
    token: SecretStr | None = Field(None, description="use ${ENV} or token_file; >= 24 chars")
    token_file: Path | None = None

    def secret(self) -> str:
        if self.token is not None:
            return self.token.get_secret_value()
        if self.token_file is not None:
            return self.token_file.read_text(encoding="utf-8").strip()
        return ""

    @model_validator(mode="after")
    def _has_secret(self) -> ApiToken:
        if (self.token is None) == (self.token_file is None):
            raise ValueError("give exactly one of 'token' or 'token_file'")
        if self.token is not None and len(self.token.get_secret_value()) < 24:
            raise ValueError("a token must be at least 24 characters")
        return self

    def may_act_on(self, campus: str) -> bool:
        return "*" in self.campuses or campus in self.campuses


class GatewayAccountsConfig(Strict):
    """Accounts of the central consoles and the API (the users themselves live in the
    gateway's database: `campusguard users add`, or an admin in the console)."""

    session_idle_minutes: float = Field(
        480, gt=0, le=7 * 24 * 60, description="a console session unused this long ends"
    )
    session_hours: float = Field(
        24, gt=0, le=24 * 30, description="a console session ends this long after login"
    )
    secure_cookie: bool = Field(
        False, description="send the session cookie over HTTPS only (set when behind TLS)"
    )
    min_password_length: int = Field(10, ge=8, le=128)


EvidenceRole = Literal["guard", "supervisor", "technician", "dispatcher", "admin"]
_EVIDENCE_ROLES: list[EvidenceRole] = ["guard", "supervisor", "dispatcher", "admin"]


class GatewayEvidenceConfig(Strict):
    """Alarm snapshots at the centre: how long they are kept and who may see them."""

    retention_days: float = Field(
        30.0, gt=0, le=3650, description="pictures are deleted this long after they were taken"
    )
    max_bytes: int = Field(4 * 1024 * 1024, ge=1024, le=16 * 1024 * 1024)
    clip_retention_days: float = Field(
        30.0, gt=0, le=3650, description="alarm video clips of ordinary areas (>= 30 days)"
    )
    key_point_retention_days: float = Field(
        90.0, gt=0, le=3650, description="alarm video clips of key points (gate, guard room)"
    )
    max_clip_mb: int = Field(500, ge=1, le=4000, description="a bigger clip is refused")
    records_days: float = Field(
        365.0,
        ge=30,
        le=36500,
        description="alarm and fault records (alarms, their steps, events) are deleted this "
        "long after the alarm, never while an alarm is open (regulatory minimum: 30 days)",
    )
    roles: list[EvidenceRole] = Field(
        default_factory=lambda: list(_EVIDENCE_ROLES),
        description="API roles that may see pictures (pictures of minors: only those who need to)",
    )
    public_url: Annotated[str, Field(pattern=r"^https?://[^\s\[\]]+$")] | None = Field(
        None,
        description="base URL the police reach this gateway on; set it to send a verification "
        "link (DC-09 x-data V) with every alarm",
    )
    link_ttl_hours: float = Field(72.0, gt=0, le=24 * 90, description="a verification link expires")
    link_key: SecretStr | None = Field(None, description="HMAC key for links: ${ENV} or file")
    link_key_file: Path | None = None

    def key(self) -> bytes | None:
        if self.link_key is not None:
            return self.link_key.get_secret_value().encode()
        if self.link_key_file is not None:
            return self.link_key_file.read_text(encoding="utf-8").strip().encode()
        return None

    @model_validator(mode="after")
    def _link_key(self) -> GatewayEvidenceConfig:
        if self.public_url is not None and self.link_key is None and self.link_key_file is None:
            raise ValueError("public_url needs link_key or link_key_file to sign the links")
        if self.link_key is not None and len(self.link_key.get_secret_value()) < 24:
            raise ValueError("link_key must be at least 24 characters")
        return self


class InfluxConfig(Strict):
    """Where the gateway writes device telemetry: InfluxDB 1.x (``api: v1``, /write with a
    database) or 2.x / 3.x (``api: v2``, org, bucket and token). While it is unreachable the
    points wait in memory (``max_buffer_points``), then in segment files under ``spool_dir``
    (at most ``spool_max_bytes``: beyond that the oldest telemetry is dropped and counted)."""

    api: Literal["v1", "v2"] = Field("v1", description="v1: InfluxDB 1.x /write; v2: 2.x/3.x")
    url: Annotated[str, Field(pattern=r"^https?://[^\s]+$")] = Field(
        "http://127.0.0.1:8086", description="base URL of InfluxDB"
    )
    database: str | None = Field(None, min_length=1, description="v1: database to write to")
    retention_policy: str | None = Field(
        None, min_length=1, description="v1: retention policy; default: the database's"
    )
    username: str | None = Field(None, description="v1: user (when auth is on)")
    password: SecretStr | None = Field(None, description="v1: use ${ENV} or password_file")
    password_file: Path | None = None
    org: str | None = Field(None, min_length=1, description="v2: organization")
    bucket: str | None = Field(None, min_length=1, description="v2: bucket")
    token: SecretStr | None = Field(None, description="v2: API token; use ${ENV} or token_file")
    token_file: Path | None = None
    batch_size: int = Field(5000, ge=1, le=100_000, description="points per write request")
    flush_interval: float = Field(
        1.0, gt=0, le=300, description="seconds: a batch is sent when it is this old, even if small"
    )
    timeout: float = Field(10.0, gt=0, le=300, description="seconds per write request")
    max_buffer_points: int = Field(
        100_000, ge=1, le=50_000_000, description="points held in memory; more spill to disk"
    )
    spool_dir: Path | None = Field(
        None, description="spill-to-disk folder; default <gateway.data_dir>/telemetry-spool"
    )
    spool_max_bytes: int = Field(
        1024**3, ge=4096, description="disk bound of the spool; the oldest is dropped beyond it"
    )
    gzip: bool = Field(True, description="gzip the write requests")

    def password_text(self) -> str | None:
        if self.password is not None:
            return self.password.get_secret_value()
        if self.password_file is not None:
            return self.password_file.read_text(encoding="utf-8").strip()
        return None

    def token_text(self) -> str | None:
        if self.token is not None:
            return self.token.get_secret_value()
        if self.token_file is not None:
            return self.token_file.read_text(encoding="utf-8").strip()
        return None

    @model_validator(mode="after")
    def _api_keys(self) -> InfluxConfig:
        if self.password is not None and self.password_file is not None:
            raise ValueError("give 'password' or 'password_file', not both")
        if self.token is not None and self.token_file is not None:
            raise ValueError("give 'token' or 'token_file', not both")
        if self.api == "v1" and not self.database:
            raise ValueError("api v1 needs 'database' (the InfluxDB 1.x database to write to)")
        if self.api == "v2":
            missing = [k for k in ("org", "bucket") if not getattr(self, k)]
            if self.token is None and self.token_file is None:
                missing.append("token (or token_file)")
            if missing:
                raise ValueError(f"api v2 needs {', '.join(missing)}")
        if self.max_buffer_points < self.batch_size:
            raise ValueError(
                f"max_buffer_points ({self.max_buffer_points}) must be at least "
                f"batch_size ({self.batch_size})"
            )
        return self


class GatewayTelemetryConfig(Strict):
    """Telemetry and uptime at the centre."""

    embedded_retention_days: float = Field(
        7.0, gt=0, le=3650, description="the embedded store (no InfluxDB) keeps samples this long"
    )
    max_age_hours: float = Field(
        72.0, gt=0, le=24 * 365, description="older batches (a long-cut campus) are refused"
    )
    max_future_s: float = Field(
        300.0, ge=0, le=86400, description="a batch this far ahead of the gateway clock is refused"
    )
    uptime_target: float = Field(
        0.99, gt=0, le=1, description="availability below this is flagged in reports"
    )
    report_timezone: str = Field(
        "Asia/Shanghai", description="IANA zone whose days and months the reports use"
    )

    @field_validator("report_timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        return check_zone(value)


DrillFrequency = Annotated[str, Field(pattern=r"^(monthly|quarterly|[1-9][0-9]{0,3}d)$")]


class DrillFrequencyConfig(Strict):
    """How often each campus type must hold a drill: ``monthly`` and ``quarterly`` are calendar
    periods (in ``telemetry.report_timezone``), ``<N>d`` a rolling number of days."""

    school: DrillFrequency = "monthly"
    kindergarten: DrillFrequency = "quarterly"
    other: DrillFrequency = "quarterly"


class GatewayDrillsConfig(Strict):
    """Drills at the centre: required frequency per campus type and drill lengths."""

    frequency: DrillFrequencyConfig = DrillFrequencyConfig()
    max_minutes: float = Field(240.0, gt=0, le=24 * 60, description="longest drill")
    default_minutes: float = Field(30.0, gt=0, le=24 * 60, description="when none is given")

    @model_validator(mode="after")
    def _default_fits(self) -> GatewayDrillsConfig:
        if self.default_minutes > self.max_minutes:
            raise ValueError("default_minutes must not exceed max_minutes")
        return self


class GatewayTestSignalsConfig(Strict):
    """Watching the campuses' periodic test signals: a campus whose test is late by more than
    ``grace`` raises ``test_missed`` (technician; police by ``relay_missed``)."""

    expect: bool = Field(True, description="raise test_missed when a campus' test is late")
    interval: float = Field(
        86400.0,
        ge=60,
        le=7 * 86400,
        description="expected seconds between tests (a campus' own interval_s wins)",
    )
    grace: float = Field(600.0, ge=0, le=86400, description="seconds of lateness allowed")
    relay_missed: bool = Field(True, description="send test_missed to the police too")
    start: datetime | None = Field(
        None,
        description="from then on campuses never heard from count as missed too (by default a "
        "campus is watched from its first test)",
    )

    @field_validator("start")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("start needs a time zone (e.g. +08:00 or Z)")
        return value


# --- police-side sinks beyond DC-09 (signed webhook, CAP 1.2, GB/T 28181) and routing ------

SinkName = Literal["dc09", "webhook", "cap", "gb28181"]

_SINK_KINDS: list[EventKind] = [
    "panic",
    "duress",
    "holdup",
    "fire",
    "intrusion",
    "tamper",
    "trouble",
    "transmission_fault",
    "bollard_impact",
]
"""What a police sink other than DC-09 takes when no ``routing:`` says otherwise: the alarms."""


def _secret_of(value: SecretStr | None, file: Path | None) -> bytes:
    if value is not None:
        return value.get_secret_value().encode()
    if file is not None:
        return file.read_text(encoding="utf-8").strip().encode()
    return b""


class HttpSinkConfig(Strict):
    """An HTTPS police receiver: signed POSTs, retries with capped back-off, optional mTLS."""

    url: Annotated[str, Field(pattern=r"^https?://[^\s]+$")] = Field(
        description="where alarms are POSTed (https:// in production)"
    )
    secret: SecretStr | None = Field(
        None, description="HMAC-SHA256 key (>= 16 chars): use ${ENV} or secret_file"
    )
    secret_file: Path | None = None
    timeout: float = Field(
        10.0, gt=0, le=25, description="seconds per request (stays below the 30 s job lease)"
    )
    max_retry_after: float = Field(
        300.0, ge=1, le=3600, description="a receiver's Retry-After is honoured up to this (s)"
    )
    tls: TlsConfig | None = Field(
        None, description="ca_file to trust, cert_file + key_file for mutual TLS"
    )
    kinds: list[EventKind] = Field(
        default_factory=lambda: list(_SINK_KINDS),
        description="event kinds sent when no routing rule names this sink",
    )
    restores: bool = Field(True, description="send restores (the condition ended) too")

    def secret_bytes(self) -> bytes:
        return _secret_of(self.secret, self.secret_file)

    @model_validator(mode="after")
    def _one_secret(self) -> HttpSinkConfig:
        if (self.secret is None) == (self.secret_file is None):
            raise ValueError("give exactly one of 'secret' or 'secret_file'")
        if self.secret is not None and len(self.secret.get_secret_value()) < 16:
            raise ValueError("secret must be at least 16 characters")
        return self


class WebhookConfig(HttpSinkConfig):
    """The signed JSON webhook (docs/police-webhook.md), and the status updates it posts back
    to ``POST /api/police/webhook/status``."""

    status_secret: SecretStr | None = Field(
        None, description="HMAC key of inbound status updates; default: 'secret'"
    )
    status_secret_file: Path | None = None
    status_window: float = Field(
        300.0, ge=5, le=3600, description="seconds an inbound status' timestamp may be off"
    )

    def status_secret_bytes(self) -> bytes:
        return _secret_of(self.status_secret, self.status_secret_file) or self.secret_bytes()


class CapConfig(HttpSinkConfig):
    """OASIS CAP 1.2 alerts (application/cap+xml), with the webhook's transport and signing."""

    sender: Annotated[str, Field(pattern=r"^[^\s,&<]+$")] = Field(
        "campusguard.gateway", description="CAP sender (no spaces, commas or &)"
    )
    scope: Literal["Public", "Restricted", "Private"] = "Restricted"
    restriction: str = Field("police dispatch only", description="for scope Restricted")
    language: str = Field("zh-CN", description="RFC 3066 language of the info block")
    radius_km: float = Field(0.3, gt=0, le=100, description="the <circle> around the campus")
    cancel_on_close: bool = Field(
        True, description="a Cancel referencing the alert when the guard closes the alarm"
    )


def _default_priority() -> dict[EventKind, int]:
    return {"panic": 1, "duress": 1, "holdup": 1, "bollard_impact": 1}


class Gb28181Config(Strict):
    """Register with a GB/T 28181 police video platform as a device; alarms as SIP MESSAGE."""

    server_host: str = Field(description="the platform's SIP address")
    server_port: int = Field(5060, ge=1, le=65535)
    server_id: Annotated[str, Field(pattern=r"^[0-9]{20}$")] = Field(
        description="the platform's 20-digit SIP id"
    )
    domain: Annotated[str, Field(pattern=r"^[0-9A-Za-z.-]{1,64}$")] = Field(
        description="SIP domain (usually the first 10 digits of server_id)"
    )
    device_id: Annotated[str, Field(pattern=r"^[0-9]{20}$")] = Field(
        description="this gateway's 20-digit device id at the platform"
    )
    username: str | None = Field(None, description="digest user; default: device_id")
    password: SecretStr | None = Field(None, description="digest password: ${ENV} or file")
    password_file: Path | None = None
    local_host: str = Field("0.0.0.0", description="address to bind the UDP socket")
    local_port: int = Field(5060, ge=0, le=65535, description="0 picks a free port")
    contact_host: str | None = Field(
        None, description="address the platform reaches us at; default: the socket's address"
    )
    expires: int = Field(3600, ge=30, le=86400, description="registration lifetime (s)")
    keepalive_interval: float = Field(60.0, ge=0.5, le=3600, description="seconds")
    keepalive_misses: int = Field(3, ge=1, le=20, description="unanswered before re-registering")
    timeout: float = Field(4.0, gt=0, le=32, description="seconds a transaction may take")
    retry_max: float = Field(60.0, ge=0.5, le=3600, description="longest re-register back-off")
    encoding: Literal["GB2312", "UTF-8"] = "GB2312"
    timezone: str = Field("Asia/Shanghai", description="IANA zone of AlarmTime (local time)")
    channels: dict[str, Annotated[str, Field(pattern=r"^[0-9]{20}$")]] = Field(
        default_factory=dict,
        description="campus id -> the 20-digit alarm channel id the platform knows it by; "
        "default: device_id",
    )
    restores: bool = Field(False, description="send restores too (most platforms do not want)")
    kinds: list[EventKind] = Field(
        default_factory=lambda: list(_SINK_KINDS),
        description="event kinds sent when no routing rule names this sink",
    )
    priority: dict[EventKind, int] = Field(
        default_factory=_default_priority,
        description="AlarmPriority per kind (1 highest .. 4); others 2",
    )

    def secret(self) -> str:
        return _secret_of(self.password, self.password_file).decode()

    @model_validator(mode="after")
    def _checks(self) -> Gb28181Config:
        if (self.password is None) == (self.password_file is None):
            raise ValueError("give exactly one of 'password' or 'password_file'")
        check_zone(self.timezone)
        if any(not 1 <= p <= 4 for p in self.priority.values()):
            raise ValueError("priority values are 1 (highest) .. 4")
        return self


# --- alarm linkage: people told (issue 13, part 4) -----------------------------------------


def _read_secret(value: SecretStr | None, file: Path | None) -> str:
    if value is not None:
        return value.get_secret_value()
    if file is not None:
        return file.read_text(encoding="utf-8").strip()
    return ""


class SmtpConfig(Strict):
    """The mail server that sends alarm e-mails."""

    host: str
    port: int = Field(587, ge=1, le=65535)
    security: Literal["starttls", "tls", "none"] = Field(
        "starttls", description="starttls (port 587), tls (implicit, port 465) or none (lab)"
    )
    username: str | None = Field(None, description="login; none = no AUTH")
    password: SecretStr | None = Field(None, description="use ${ENV} or password_file")
    password_file: Path | None = None
    sender: str = Field(description="From: address")
    timeout: float = Field(10.0, gt=0, le=120, description="seconds per message")
    ca_file: Path | None = Field(
        None, description="CA certificate(s) of the mail server; none = the system's"
    )

    def secret(self) -> str:
        return _read_secret(self.password, self.password_file)

    def tls_context(self) -> ssl.SSLContext:
        """Verifying the server's certificate and host name, against ``ca_file`` if given."""
        return ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)


class SmsGatewayConfig(Strict):
    """A district SMS gateway's HTTP API (generic: templates fill in {to} and {text})."""

    url: Annotated[str, Field(pattern=r"^https?://[^\s]+$")] = Field(
        description="URL template, e.g. https://sms.example/api/send?to={to}"
    )
    method: Literal["POST", "GET"] = "POST"
    auth_header: str | None = Field(None, description="header name, e.g. Authorization")
    auth_value: SecretStr | None = Field(None, description="its value: ${ENV} or auth_value_file")
    auth_value_file: Path | None = None
    body: str = Field(
        '{"to": {to_json}, "text": {text_json}}',
        description="body template: {to} {text} raw, {to_json} {text_json} JSON-quoted",
    )
    content_type: str = "application/json"
    timeout: float = Field(10.0, gt=0, le=120)

    def secret(self) -> str:
        return _read_secret(self.auth_value, self.auth_value_file)


class NotifyChannelConfig(Strict):
    """One way to reach a person: an e-mail address, a mobile number or a webhook URL."""

    type: Literal["email", "sms", "webhook"]
    to: Annotated[str, Field(min_length=3, max_length=300)] = Field(
        description="e-mail address, mobile number, or the webhook URL (messaging app bot)"
    )


class NotifyRecipientConfig(Strict):
    """A person told of alarms, in escalation order (the first is told first)."""

    name: Annotated[str, Field(min_length=1, max_length=64)]
    role: str = Field("", description="principal, security lead, ...")
    campuses: list[str] | Literal["*"] = "*"
    channels: list[NotifyChannelConfig] = Field(
        min_length=1, description="tried in order: the next when one fails"
    )


_NOTIFY_KINDS: list[EventKind] = [
    "panic",
    "duress",
    "holdup",
    "fire",
    "intrusion",
    "bollard_impact",
]


class GatewayNotifyConfig(Strict):
    """Tell school leaders of alarms: e-mail, SMS gateway, messaging webhooks; escalation.

    Quiet hours never apply to alarms: there is deliberately no such setting.
    """

    recipients: list[NotifyRecipientConfig] = Field(min_length=1)
    kinds: list[EventKind] = Field(
        default_factory=lambda: list(_NOTIFY_KINDS), description="alarm kinds people are told of"
    )
    drills: bool = Field(False, description="tell people of alarms raised during drills too")
    escalate_after: float = Field(
        300.0, gt=0, le=86400, description="seconds without acknowledgement before the next person"
    )
    attempts: int = Field(3, ge=1, le=20, description="tries per channel before the next channel")
    retry_delay: float = Field(5.0, gt=0, le=3600, description="seconds between tries")
    poll_interval: float = Field(1.0, gt=0, le=60, description="seconds between scans")
    smtp: SmtpConfig | None = None
    sms: SmsGatewayConfig | None = None
    webhook_timeout: float = Field(10.0, gt=0, le=120)
    public_url: Annotated[str, Field(pattern=r"^https?://[^\s]+$")] | None = Field(
        None, description="this gateway as people reach it: alarm and acknowledgement links"
    )
    ack_key: SecretStr | None = Field(None, description="HMAC key of ack links: ${ENV} or file")
    ack_key_file: Path | None = None

    def ack_secret(self) -> bytes:
        return _read_secret(self.ack_key, self.ack_key_file).encode()

    @model_validator(mode="after")
    def _channels(self) -> GatewayNotifyConfig:
        for r in self.recipients:
            for c in r.channels:
                if c.type == "email" and self.smtp is None:
                    raise ValueError(f"recipient {r.name!r} has an email channel: set notify.smtp")
                if c.type == "sms" and self.sms is None:
                    raise ValueError(f"recipient {r.name!r} has an sms channel: set notify.sms")
        return self


class RoutingRule(Strict):
    """Events of these kinds from these campuses go to these sinks."""

    sinks: list[SinkName] = Field(min_length=1)
    kinds: list[EventKind] | Literal["*"] = "*"
    campuses: list[str] | Literal["*"] = "*"


class GatewayConfig(Strict):
    """The central gateway: broker, database, campuses and the police relay."""

    gateway: GatewayNode = GatewayNode()
    api_tokens: list[ApiToken] = Field(
        default_factory=list, description="bearer tokens; none = commands through the API are off"
    )
    accounts: GatewayAccountsConfig = GatewayAccountsConfig()
    mqtt: MqttConfig = MqttConfig()
    database: DatabaseConfig = DatabaseConfig()
    campuses: list[CampusAccount] = Field(min_length=1)
    dc09: Dc09Config | None = None
    evidence: GatewayEvidenceConfig = GatewayEvidenceConfig()
    telemetry: GatewayTelemetryConfig = GatewayTelemetryConfig()
    influxdb: InfluxConfig | None = Field(
        None, description="telemetry to InfluxDB; none = not written to InfluxDB"
    )
    drills: GatewayDrillsConfig = GatewayDrillsConfig()
    test_signals: GatewayTestSignalsConfig = GatewayTestSignalsConfig()
    selftest_timeout: float = Field(
        30.0, gt=0, le=600, description="seconds a self-test may take before it fails"
    )
    webhook: WebhookConfig | None = Field(None, description="signed JSON webhook to the police")
    cap: CapConfig | None = Field(None, description="CAP 1.2 alerts to a dispatch system")
    gb28181: Gb28181Config | None = Field(None, description="GB/T 28181 alarm notification")
    routing: list[RoutingRule] = Field(
        default_factory=list,
        description="which kinds from which campuses go to which sinks; none = each sink's own "
        "choice (DC-09: its code map; the others: their 'kinds')",
    )
    relay_concurrency: int = Field(
        8, ge=1, le=256, description="deliveries in flight per sink (one at a time per campus)"
    )
    command_signing: GatewaySigningConfig | None = Field(
        None, description="sign commands to campuses; none = sent unsigned"
    )
    notify: GatewayNotifyConfig | None = Field(
        None, description="tell school leaders of alarms (e-mail, SMS, webhooks); none = off"
    )

    @model_validator(mode="after")
    def _unique(self) -> GatewayConfig:
        ids = [c.id for c in self.campuses]
        if len(ids) != len(set(ids)):
            raise ValueError("campus ids must be unique")
        for i, rule in enumerate(self.routing):
            for sink in rule.sinks:
                if getattr(self, sink) is None:
                    raise ValueError(f"routing[{i}] names sink {sink!r}, which is not configured")
            if rule.campuses != "*":
                unknown = sorted(set(rule.campuses) - set(ids))
                if unknown:
                    raise ValueError(f"routing[{i}] names unknown campus(es) {unknown}")
        for r in self.notify.recipients if self.notify is not None else []:
            if r.campuses != "*" and (unknown := sorted(set(r.campuses) - set(ids))):
                raise ValueError(f"notify recipient {r.name!r} names unknown campus(es) {unknown}")
        if self.dc09 is not None and not self.test_signals.relay_missed:
            codes = dict(self.dc09.codes)
            codes["test_missed"] = codes["test_missed"].model_copy(update={"relay": False})
            object.__setattr__(self.dc09, "codes", codes)
        return self


# --- loading --------------------------------------------------------------------------------

_ENV_RE = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_]*)\}$")


def _expand_env(node: Any, path: tuple[str | int, ...], file: Path) -> Any:
    if isinstance(node, dict):
        return {k: _expand_env(v, (*path, k), file) for k, v in node.items()}
    if isinstance(node, list):
        return [_expand_env(v, (*path, i), file) for i, v in enumerate(node)]
    if isinstance(node, str) and (m := _ENV_RE.match(node)):
        name = m.group(1)
        if name not in os.environ:
            raise ConfigError(
                f"{file}: {_loc(path)}: environment variable {name} is not set "
                "(the value refers to it)"
            )
        return os.environ[name]
    return node


def _loc(loc: tuple[str | int, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _model_at(model: type[BaseModel], loc: tuple[str | int, ...]) -> type[BaseModel] | None:
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        field = current.model_fields.get(str(part))
        if field is None:
            return None
        current = _unwrap(field.annotation)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _unwrap(tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (list, typing.Union, types.UnionType, dict):
        for arg in typing.get_args(tp):
            inner = _unwrap(arg)
            if isinstance(inner, type) and issubclass(inner, BaseModel):
                return inner
    return tp


def _describe(model: type[BaseModel], err: Any) -> str:
    loc: tuple[str | int, ...] = tuple(err["loc"])
    where = _loc(loc)
    if err["type"] == "extra_forbidden":
        parent = _model_at(model, loc[:-1])
        allowed = sorted(parent.model_fields) if parent else []
        key = str(loc[-1])
        hint = difflib.get_close_matches(key, allowed, n=1)
        dym = f"; did you mean '{hint[0]}'?" if hint else ""
        return f"{where}: unknown key '{key}'{dym} allowed keys here: {', '.join(allowed)}"
    if err["type"] == "missing":
        return f"{where}: required key is missing"
    msg = str(err["msg"]).removeprefix("Value error, ")
    return f"{where}: {msg} (got {err.get('input')!r})"


def parse_config(data: Any, model: type[M], source: str | Path) -> M:
    """Validate already-loaded data; raise ConfigError with one clear message."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the file must be a YAML mapping of keys")
    try:
        data = _expand_env(data, (), Path(source))
    except RecursionError:
        raise ConfigError(
            f"{source}: nested too deeply, or a YAML alias (*name) inside its own anchor"
        ) from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        # A typo shows up twice: an unknown key and a missing one. Name the typo first.
        errors = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")
        first = _describe(model, errors[0])
        more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
        raise ConfigError(f"{source}: {first}{more}") from None


def load_config(path: str | Path, model: type[M]) -> M:
    """Read and validate a YAML config file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the file: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (a bad byte at offset {exc.start})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1} column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}:{where}: not valid YAML: {exc}") from None
    except RecursionError:
        raise ConfigError(f"{path}: not valid YAML: nested too deeply") from None
    except ValueError as exc:  # PyYAML builds dates itself: 2026-02-30 is a ValueError
        raise ConfigError(f"{path}: not valid YAML: a date that does not exist ({exc})") from None
    return parse_config(data, model, path)
