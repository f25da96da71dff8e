"""The police webhook's wire format, pure: the JSON alarm document, the HMAC signature, the
replay guard for inbound status updates and the HTTP answer rules.

Documented in docs/police-webhook.md; the JSON Schema is docs/schemas/police-alarm-v1.schema.json.

Signature: ``X-CG-Timestamp: <unix seconds>`` and
``X-CG-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>``, the same both ways
(alarms out, status updates in).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Literal

from contract.config import CampusAccount
from contract.models import Event

SCHEMA = "campusguard.police-alarm"
VERSION = 1

TIMESTAMP_HEADER = "X-CG-Timestamp"
SIGNATURE_HEADER = "X-CG-Signature"
IDEMPOTENCY_HEADER = "Idempotency-Key"

StatusState = Literal["received", "dispatched", "on_scene", "closed"]
STATUS_TO_ALARM_STATE: dict[str, str] = {
    "received": "police_received",
    "dispatched": "dispatched",
    "on_scene": "on_scene",
    "closed": "closed",
}
"""An inbound status -> the alarm state the campus sees (``received`` is the receiver's ACK)."""


def iso(ts: datetime) -> str:
    """UTC, milliseconds, ``Z``: one spelling for every time in the document."""
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z"


def alarm_document(
    event: Event,
    campus: CampusAccount,
    *,
    gateway: str,
    verification_url: str | None = None,
) -> dict[str, Any]:
    """The versioned alarm document for ``event`` (deterministic: the same event gives the same
    document, so a retry carries the same body)."""
    geo = event.geo or campus.geo
    return {
        "schema": SCHEMA,
        "version": VERSION,
        "alarm_id": event.id,
        "gateway": gateway,
        "campus": {
            "id": campus.id,
            "name": campus.name,
            "type": campus.type,
            "address": campus.address,
            "account": campus.account,
        },
        "kind": event.kind,
        "severity": event.severity,
        "restore": event.restore,
        "drill": event.drill,
        "ts": iso(event.ts),
        "device": event.device,
        "point": event.point,
        "zone": event.zone,
        "zone_no": event.zone_no,
        "location": event.location,
        "text": event.text,
        "geo": None if geo is None else {"lat": geo.lat, "lon": geo.lon},
        "verification_url": verification_url,
    }


def encode(doc: dict[str, Any]) -> bytes:
    """Compact, key-sorted UTF-8 JSON: the exact bytes that are signed and sent."""
    return json.dumps(doc, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode()


def signature(secret: bytes, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret, str(timestamp).encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def signed_headers(secret: bytes, timestamp: int, body: bytes) -> dict[str, str]:
    return {
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: signature(secret, timestamp, body),
    }


Verdict = Literal["ok", "unsigned", "bad_signature", "stale", "replayed"]


class ReplayGuard:
    """Checks inbound signatures: authentic, fresh (within ``window`` seconds of our clock) and
    never seen before (signatures are remembered for the window, then forgotten: an older one
    is stale anyway). ``now`` is passed in (unix seconds), so it is pure and testable."""

    def __init__(self, secret: bytes, window: float = 300.0, max_remembered: int = 100_000):
        self.secret = secret
        self.window = window
        self.max_remembered = max_remembered
        self._seen: OrderedDict[str, float] = OrderedDict()

    def check(self, timestamp: str | None, sig: str | None, body: bytes, now: float) -> Verdict:
        if not timestamp or not sig:
            return "unsigned"
        try:
            ts = int(timestamp)
        except ValueError:
            return "unsigned"
        if not hmac.compare_digest(sig.strip().encode(), signature(self.secret, ts, body).encode()):
            return "bad_signature"
        if abs(now - ts) > self.window:
            return "stale"
        self._forget(now)
        if sig in self._seen:
            return "replayed"
        self._seen[sig] = ts
        while len(self._seen) > self.max_remembered:
            self._seen.popitem(last=False)
        return "ok"

    def _forget(self, now: float) -> None:
        for key in [k for k, ts in self._seen.items() if now - ts > self.window]:
            del self._seen[key]


@dataclass(frozen=True, slots=True)
class StatusUpdate:
    alarm_id: str
    state: StatusState
    note: str
    at: datetime | None


class StatusError(ValueError):
    pass


def parse_status(body: bytes) -> StatusUpdate:
    """``{"alarm_id", "state", "note"?, "at"?}`` from the receiver; raises StatusError."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise StatusError("body is not JSON") from None
    if not isinstance(data, dict):
        raise StatusError("body must be a JSON object")
    alarm_id, state = data.get("alarm_id"), data.get("state")
    if not isinstance(alarm_id, str) or len(alarm_id) != 26:
        raise StatusError("alarm_id must be the 26-character alarm id")
    if state not in STATUS_TO_ALARM_STATE:
        raise StatusError(f"state must be one of {', '.join(STATUS_TO_ALARM_STATE)}")
    note = data.get("note") or ""
    if not isinstance(note, str):
        raise StatusError("note must be a string")
    at_raw = data.get("at")
    at: datetime | None = None
    if at_raw is not None:
        try:
            at = datetime.fromisoformat(str(at_raw).replace("Z", "+00:00"))
        except ValueError:
            raise StatusError("at must be an ISO 8601 time") from None
    unknown = set(data) - {"alarm_id", "state", "note", "at"}
    if unknown:
        raise StatusError(f"unknown key(s) {sorted(unknown)}")
    return StatusUpdate(alarm_id, state, note[:400], at)


def status_body(alarm_id: str, state: str, note: str = "", at: datetime | None = None) -> bytes:
    doc: dict[str, Any] = {"alarm_id": alarm_id, "state": state, "note": note}
    if at is not None:
        doc["at"] = iso(at)
    return encode(doc)


Answer = Literal["delivered", "retry", "rejected"]


def classify(status: int) -> Answer:
    """2xx delivered; 5xx, 408 and 429 retried; any other answer is a refusal (never retried:
    sending the same thing again would be refused again)."""
    if 200 <= status < 300:
        return "delivered"
    if status >= 500 or status in (408, 429):
        return "retry"
    return "rejected"


def retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds from an HTTP ``Retry-After`` (delta seconds or an HTTP date); None if absent or
    unreadable, never negative."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())
