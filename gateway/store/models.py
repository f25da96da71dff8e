"""The gateway's tables (SQLAlchemy 2). Schema changes are Alembic migrations, never create_all."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    false,
)
from sqlalchemy import text as sql
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class EventRow(Base):
    """Every event from every campus, once (deduplicated by its id)."""

    __tablename__ = "events"

    id: Mapped[str] = mapped_column(String(26), primary_key=True)
    campus: Mapped[str] = mapped_column(String(64), index=True)
    edge: Mapped[str] = mapped_column(String(64))
    seq: Mapped[int] = mapped_column(BigInteger)
    kind: Mapped[str] = mapped_column(String(32))
    severity: Mapped[str] = mapped_column(String(16))
    device: Mapped[str] = mapped_column(String(64))
    point: Mapped[str | None] = mapped_column(String(64))
    zone: Mapped[str | None] = mapped_column(String(64))
    restore: Mapped[bool] = mapped_column(Boolean)
    drill: Mapped[bool] = mapped_column(Boolean)
    edge_ts: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)


class AlarmRow(Base):
    """An alarm and where it stands in its life: received -> police -> guard -> closed."""

    __tablename__ = "alarms"

    id: Mapped[str] = mapped_column(String(26), primary_key=True)
    campus: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(32))
    severity: Mapped[str] = mapped_column(String(16))
    device: Mapped[str] = mapped_column(String(64))
    point: Mapped[str | None] = mapped_column(String(64))
    zone: Mapped[str | None] = mapped_column(String(64))
    location: Mapped[str | None] = mapped_column(String(200))
    lat: Mapped[float | None] = mapped_column(Float)
    lon: Mapped[float | None] = mapped_column(Float)
    restore: Mapped[bool] = mapped_column(Boolean)
    drill: Mapped[bool] = mapped_column(Boolean)
    text: Mapped[str] = mapped_column(Text, default="")
    edge_ts: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    state: Mapped[str] = mapped_column(String(32))
    police_path: Mapped[str | None] = mapped_column(String(32))
    police_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    guard_ack_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    closed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        # Covering for a campus' newest alarm ids (the API merges one page per campus).
        Index("ix_alarms_campus_received_id", "campus", "received_at", "id"),
        Index("ix_alarms_received_at", "received_at"),
        # The dispatch queue and "open alarms" filters: only the few open ones, newest first.
        Index(
            "ix_alarms_open",
            "received_at",
            sqlite_where=sql("closed_at IS NULL"),
            postgresql_where=sql("closed_at IS NULL"),
        ),
        Index("ix_alarms_kind_received", "kind", "received_at"),
    )


class AlarmStep(Base):
    """The alarm's timeline; each step is also sent back to the campus (``published``)."""

    __tablename__ = "alarm_steps"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    alarm_id: Mapped[str] = mapped_column(String(26), index=True)
    campus: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(32))
    ts: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    path: Mapped[str | None] = mapped_column(String(32))
    note: Mapped[str] = mapped_column(Text, default="")
    published: Mapped[bool] = mapped_column(Boolean, default=False, index=True)


class RelayJob(Base):
    """Durable queue to the police: one row per alarm and sink.

    ``seq`` is fixed before the first send, so a gateway that dies mid-relay resends the same
    DC-09 sequence number and the receiver sees a retransmission, not a second alarm.
    """

    __tablename__ = "relay_jobs"

    alarm_id: Mapped[str] = mapped_column(String(26), primary_key=True)
    sink: Mapped[str] = mapped_column(String(32), primary_key=True)
    state: Mapped[str] = mapped_column(String(16), index=True)  # pending, done, rejected
    priority: Mapped[int] = mapped_column(Integer, default=0)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    seq: Mapped[int | None] = mapped_column(Integer)
    next_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    claimed_by: Mapped[str | None] = mapped_column(String(64))
    claimed_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class RelayCounter(Base):
    """Per-sink counters that must survive restarts (the DC-09 sequence number)."""

    __tablename__ = "relay_counters"

    sink: Mapped[str] = mapped_column(String(32), primary_key=True)
    value: Mapped[int] = mapped_column(Integer)


class DeviceStatusRow(Base):
    __tablename__ = "device_status"

    campus: Mapped[str] = mapped_column(String(64), primary_key=True)
    device: Mapped[str] = mapped_column(String(64), primary_key=True)
    online: Mapped[bool] = mapped_column(Boolean)
    ts: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_response: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    latency_ms: Mapped[float | None] = mapped_column(Float)
    error: Mapped[str | None] = mapped_column(Text)
    points: Mapped[dict[str, Any]] = mapped_column(JSON)


class EdgeStateRow(Base):
    __tablename__ = "edge_state"

    campus: Mapped[str] = mapped_column(String(64), primary_key=True)
    edge: Mapped[str] = mapped_column(String(64), primary_key=True)
    online: Mapped[bool] = mapped_column(Boolean)
    ts: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    version: Mapped[str] = mapped_column(String(32), default="")
    reason: Mapped[str] = mapped_column(Text, default="")


class CommandRow(Base):
    """A command to a device and what became of it: the audit trail of who did what and why.

    Refusals at the gateway (no right to that campus, unknown token) are rows too.
    """

    __tablename__ = "commands"

    id: Mapped[str] = mapped_column(String(26), primary_key=True)
    campus: Mapped[str] = mapped_column(String(64), index=True)
    device: Mapped[str] = mapped_column(String(64))
    bollard: Mapped[int] = mapped_column(Integer)
    action: Mapped[str | None] = mapped_column(String(32))
    user: Mapped[str] = mapped_column(String(64))
    role: Mapped[str] = mapped_column(String(32))
    reason: Mapped[str] = mapped_column(Text, default="")
    issued_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    state: Mapped[str] = mapped_column(String(32))  # sent, armed, accepted, refused, done, failed
    code: Mapped[str | None] = mapped_column(String(32))
    detail: Mapped[str] = mapped_column(Text, default="")
    token: Mapped[str | None] = mapped_column(String(128))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class EvidenceRow(Base):
    """A snapshot attached to an alarm (or the record of why a camera gave none).

    The picture is a file under the gateway's data directory (``path``, relative); the row is
    written after the file is on disk, and the edge's copy is released only after the row.
    """

    __tablename__ = "evidence"

    id: Mapped[str] = mapped_column(String(26), primary_key=True)
    event_id: Mapped[str] = mapped_column(String(26), index=True)
    campus: Mapped[str] = mapped_column(String(64))
    edge: Mapped[str] = mapped_column(String(64))
    camera: Mapped[str] = mapped_column(String(64))
    shot: Mapped[int] = mapped_column(Integer)
    taken_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    content_type: Mapped[str | None] = mapped_column(String(32))
    size: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str | None] = mapped_column(String(64))
    path: Mapped[str | None] = mapped_column(String(300))
    error: Mapped[str | None] = mapped_column(Text)
    # Alarm video clips (issue 13): the interval the video covers, its gaps, key point.
    clip_start: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    clip_end: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    gaps: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)
    key_point: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())


class DeviceSeen(Base):
    """Every device (and campus edge) the centre has heard of: availability counts from
    ``first_seen``."""

    __tablename__ = "devices_seen"

    campus: Mapped[str] = mapped_column(String(64), primary_key=True)
    device: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))  # device, edge
    first_seen: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class OutageRow(Base):
    """A time a device (or a campus edge's link) was down; ``end`` is null while it lasts."""

    __tablename__ = "outages"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    campus: Mapped[str] = mapped_column(String(64))
    device: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))  # device, edge
    start: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    end: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    cause: Mapped[str] = mapped_column(Text, default="")

    __table_args__ = (
        Index("outages_device", "campus", "device", "start"),
        Index("outages_start", "start"),
    )


class MaintenanceRow(Base):
    """A planned window on a campus (``device`` null) or one device: excluded from availability."""

    __tablename__ = "maintenance"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    campus: Mapped[str] = mapped_column(String(64), index=True)
    device: Mapped[str | None] = mapped_column(String(64))
    start: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    end: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    reason: Mapped[str] = mapped_column(Text, default="")
    user: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class TelemetryRow(Base):
    """The embedded telemetry store (no InfluxDB configured): one row per sample."""

    __tablename__ = "telemetry"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    ts: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    campus: Mapped[str] = mapped_column(String(64))
    edge: Mapped[str] = mapped_column(String(64))
    device: Mapped[str] = mapped_column(String(64))
    point: Mapped[str | None] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(24))
    fields: Mapped[dict[str, Any]] = mapped_column(JSON)

    __table_args__ = (Index("telemetry_device", "campus", "device", "ts"),)


class DrillRow(Base):
    """A drill: planned, running or done, with who ran it and what it set off."""

    __tablename__ = "drills"

    id: Mapped[str] = mapped_column(String(26), primary_key=True)
    campus: Mapped[str] = mapped_column(String(64), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # fire, earthquake, stampede, intruder, other
    state: Mapped[str] = mapped_column(
        String(16), index=True
    )  # scheduled, running, ended, cancelled
    source: Mapped[str] = mapped_column(String(16))  # api, cli, console, schedule
    planned_start: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    planned_end: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    actual_start: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    actual_end: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    started_by: Mapped[str] = mapped_column(String(64))
    ended_by: Mapped[str | None] = mapped_column(String(64))
    end_reason: Mapped[str] = mapped_column(Text, default="")
    notes: Mapped[str] = mapped_column(Text, default="")
    alarms: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class SelftestRow(Base):
    """A self-test of one device's alarm path and the time of each hop it passed."""

    __tablename__ = "selftests"

    id: Mapped[str] = mapped_column(String(26), primary_key=True)
    campus: Mapped[str] = mapped_column(String(64), index=True)
    device: Mapped[str] = mapped_column(String(64))
    mode: Mapped[str] = mapped_column(String(16))
    user: Mapped[str] = mapped_column(String(64))
    requested_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    state: Mapped[str] = mapped_column(String(16))  # running, passed, failed
    event_id: Mapped[str | None] = mapped_column(String(26))
    hops: Mapped[dict[str, Any]] = mapped_column(JSON)  # hop name -> ISO time
    failed_hop: Mapped[str | None] = mapped_column(String(32))
    detail: Mapped[str] = mapped_column(Text, default="")


class PeriodicTestRow(Base):
    """Each campus' periodic test signal as the centre last saw it."""

    __tablename__ = "test_signals"

    campus: Mapped[str] = mapped_column(String(64), primary_key=True)
    last_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_event: Mapped[str | None] = mapped_column(String(26))
    interval_s: Mapped[float] = mapped_column(Float)
    missed: Mapped[bool] = mapped_column(Boolean, default=False)
    missed_since: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class NotificationRow(Base):
    """Telling one person of one alarm (issue 13): a durable job with retries and fallback.

    ``step`` is the recipient's place in the campus' escalation order; ``channel`` the index of
    the channel tried now (the next on failure). ``errors`` keeps every failure, visible in
    ``GET /api/notify/{alarm_id}``.
    """

    __tablename__ = "notifications"
    __table_args__ = (Index("ix_notifications_due", "state", "next_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    alarm_id: Mapped[str] = mapped_column(String(26), index=True)
    campus: Mapped[str] = mapped_column(String(64))
    step: Mapped[int] = mapped_column(Integer)
    recipient: Mapped[str] = mapped_column(String(64))
    channel: Mapped[int] = mapped_column(Integer, default=0)
    via: Mapped[str | None] = mapped_column(String(16))  # the channel type that delivered
    state: Mapped[str] = mapped_column(String(16))  # pending, sent, failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    escalate_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    escalated: Mapped[bool] = mapped_column(Boolean, default=False)
    acked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    errors: Mapped[str] = mapped_column(Text, default="")


class UserRow(Base):
    """A person who uses the central consoles or the API (issue 8); the password only as an
    argon2id hash. ``campuses`` is a list of campus ids, ``["*"]`` for all."""

    __tablename__ = "users"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    display: Mapped[str] = mapped_column(String(128), default="")
    role: Mapped[str] = mapped_column(String(32))
    campuses: Mapped[list[str]] = mapped_column(JSON)
    password_hash: Mapped[str] = mapped_column(String(255))
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    failed_logins: Mapped[int] = mapped_column(Integer, default=0)
    locked_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_login_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class SessionRow(Base):
    """A console login. Only the SHA-256 of the cookie is stored: a copy of the database does
    not let anyone in. Revoked (logout, password change, user disabled) at once for every
    gateway, since every request looks its session up."""

    __tablename__ = "sessions"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user: Mapped[str] = mapped_column(String(64), index=True)
    csrf: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_seen: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    address: Mapped[str] = mapped_column(String(64), default="")


class ApiTokenRow(Base):
    """A bearer token for a machine client, acting as its user (with that user's role and
    campuses). Only the SHA-256 is stored; the secret is shown once when it is made."""

    __tablename__ = "api_tokens"

    id: Mapped[str] = mapped_column(String(26), primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    user: Mapped[str] = mapped_column(String(64), index=True)
    label: Mapped[str] = mapped_column(String(128), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class AuditRow(Base):
    """Every login (good or bad), every action and every refusal, by whom and when."""

    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_at", "at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    user: Mapped[str] = mapped_column(String(64), index=True)
    role: Mapped[str] = mapped_column(String(32), default="")
    action: Mapped[str] = mapped_column(String(64))
    outcome: Mapped[str] = mapped_column(String(16))  # ok, denied, failed
    campus: Mapped[str | None] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(200), default="")
    address: Mapped[str] = mapped_column(String(64), default="")
    detail: Mapped[str] = mapped_column(Text, default="")


class InboxRow(Base):
    """Messages of a campus that fell behind, taken from the broker in bulk and kept here until
    they are handled (``gateway/lanes.py``): a flood from one campus is acknowledged to the
    broker at the speed of one insert per batch, so the shared, ordered MQTT stream keeps moving
    and the other campuses' alarms are not queued behind it. Handled in ``id`` order per campus
    by the gateway that owns the row; a gateway that stops renewing its lease hands its rows to
    the others."""

    __tablename__ = "inbox"
    __table_args__ = (Index("ix_inbox_campus_id", "campus", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    campus: Mapped[str] = mapped_column(String(64))
    topic: Mapped[str] = mapped_column(String(255))
    payload: Mapped[bytes] = mapped_column(LargeBinary)
    owner: Mapped[str] = mapped_column(String(64), index=True)
    lease_until: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
