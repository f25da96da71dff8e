"""The MQTT topic tree, built in one place.

Every topic starts with ``cg/v1/<campus>/`` so that a broker ACL can confine a campus edge to its
own subtree: the edge publishes under ``.../up/`` and subscribes to ``.../down/``; gateways do the
reverse. See PROTOCOL.md for the whole tree with examples.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

ROOT = "cg"
VERSION = "v1"
CAMPUS_ID_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"
_CAMPUS_RE = re.compile(CAMPUS_ID_PATTERN)
DEFAULT_SHARE_GROUP = "cg-gateway"

UpKind = Literal["event", "edge", "device", "telemetry", "evidence"]


def _check(campus: str) -> str:
    if not _CAMPUS_RE.match(campus):
        raise ValueError(f"campus id {campus!r} does not match {CAMPUS_ID_PATTERN}")
    return campus


def campus_root(campus: str) -> str:
    return f"{ROOT}/{VERSION}/{_check(campus)}"


def event_topic(campus: str) -> str:
    """Events (alarms first among them) from a campus edge; QoS 1, not retained."""
    return f"{campus_root(campus)}/up/event"


def edge_state_topic(campus: str) -> str:
    """Retained online/offline state of the campus edge; its last will says offline."""
    return f"{campus_root(campus)}/up/edge"


def device_status_topic(campus: str, device: str) -> str:
    """Retained status of one device (online, last response, latency)."""
    if "/" in device or "+" in device or "#" in device:
        raise ValueError(f"device id {device!r} must not contain '/', '+' or '#'")
    return f"{campus_root(campus)}/up/device/{device}"


def evidence_topic(campus: str) -> str:
    """Alarm evidence (snapshots) from a campus edge; QoS 1, binary (see contract.evidence)."""
    return f"{campus_root(campus)}/up/evidence"


def telemetry_topic(campus: str) -> str:
    return f"{campus_root(campus)}/up/telemetry"


def alarm_status_topic(campus: str) -> str:
    """Gateway -> campus: what happened to an alarm (relayed, police received, dispatched...)."""
    return f"{campus_root(campus)}/down/alarm-status"


def command_topic(campus: str) -> str:
    """Gateway -> campus: commands to devices (bollards)."""
    return f"{campus_root(campus)}/down/command"


def drill_topic(campus: str) -> str:
    """Gateway -> campus: start / end a drill (``DrillCommand``)."""
    return f"{campus_root(campus)}/down/drill"


def selftest_topic(campus: str) -> str:
    """Gateway -> campus: run a self-test of one device's alarm path (``SelftestRequest``)."""
    return f"{campus_root(campus)}/down/selftest"


def receipt_topic(campus: str) -> str:
    """Gateway -> campus: which events are stored centrally (the end-to-end acknowledgement)."""
    return f"{campus_root(campus)}/down/receipt"


def edge_subscriptions(campus: str) -> list[str]:
    return [f"{campus_root(campus)}/down/#"]


def gateway_subscriptions(
    share_group: str | None, stream: Literal["all", "events", "telemetry"] = "all"
) -> list[str]:
    """What a gateway subscribes to; with a share group several gateways split the load.

    ``events`` (alarms, events, edge states, evidence) and ``telemetry`` (telemetry batches
    and the retained device status, the bulk: a district's 15,000 devices report every 30 s)
    are separate streams so a gateway can take them on separate connections: an alarm never
    waits in line behind a flood of telemetry or device status (bench/district.py).
    """
    root = f"{ROOT}/{VERSION}/+/up"
    if stream == "all":
        bases = [f"{root}/#"]
    elif stream == "telemetry":
        bases = [f"{root}/telemetry", f"{root}/device/+"]
    else:
        bases = [f"{root}/event", f"{root}/edge", f"{root}/evidence"]
    return [f"$share/{share_group}/{b}" if share_group else b for b in bases]


@dataclass(frozen=True, slots=True)
class ParsedTopic:
    campus: str
    direction: Literal["up", "down"]
    kind: str
    device: str | None = None


def parse_topic(topic: str) -> ParsedTopic | None:
    """Split a topic of our tree; ``None`` for anything that is not ours or malformed."""
    parts = topic.split("/")
    if len(parts) < 5 or parts[0] != ROOT or parts[1] != VERSION:
        return None
    campus, direction, kind = parts[2], parts[3], parts[4]
    if not _CAMPUS_RE.match(campus) or direction not in ("up", "down"):
        return None
    if kind == "device":
        if len(parts) != 6 or not parts[5]:
            return None
        return ParsedTopic(campus, direction, kind, parts[5])  # type: ignore[arg-type]
    if len(parts) != 5:
        return None
    return ParsedTopic(campus, direction, kind)  # type: ignore[arg-type]
