"""Business rules: input readings become events.

Pure: no I/O and no clock reads (``now`` is passed in), so every rule is unit-tested directly.
A press that is shorter than the poll interval still raises an alarm when the module latched or
counted it. A supervised (EOL) loop reports wire cut as trouble and a short as tamper.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

from contract.config import InputConfig
from contract.models import DetailValue, EventKind, Severity

SEVERITY: dict[str, Severity] = {
    "panic": "critical",
    "duress": "critical",
    "holdup": "critical",
    "fire": "critical",
    "intrusion": "high",
    "tamper": "high",
    "trouble": "medium",
    "transmission_fault": "high",
    "device_offline": "medium",
    "device_online": "info",
    "test": "low",
    "bollard_impact": "critical",
    "bollard_state": "info",
    "bollard_command": "info",
    "schedule_violation": "medium",
    "bollard_trouble": "medium",
    "camera_motion": "info",
    "camera_tamper": "high",
    "video_loss": "medium",
    "camera_intrusion": "medium",
}

TEXT: dict[str, str] = {
    "panic": "panic button pressed",
    "duress": "duress alarm",
    "holdup": "silent hold-up alarm",
    "fire": "fire alarm",
    "intrusion": "intrusion",
    "tamper": "tamper",
    "trouble": "trouble",
    "device_offline": "device stopped answering",
    "device_online": "device answering again",
    "bollard_impact": "vehicle impact on a bollard",
    "bollard_state": "bollard",
    "bollard_command": "bollard command",
    "schedule_violation": "bollard not up during a must-be-up period",
    "bollard_trouble": "bollard trouble",
    "camera_motion": "motion seen by a camera",
    "camera_tamper": "camera tamper",
    "video_loss": "camera video lost",
    "camera_intrusion": "camera intrusion rule",
}

EolValue = Literal["normal", "alarm", "cut", "short", "unknown"]


@dataclass(frozen=True, slots=True)
class Signal:
    """What happened at one input, before it becomes an event with id and sequence."""

    kind: EventKind
    restore: bool = False
    detail: dict[str, DetailValue] = field(default_factory=dict)
    state: str | None = None
    """The input's reported state once this signal is out (stored with its event, in the same
    transaction: a crash between an alarm and its restore still sends the restore later)."""


def _eol_signal(kind: EventKind, value: str, restore: bool) -> Signal:
    if value == "cut":
        return Signal("trouble", restore, {"wire": "cut"})
    if value == "short":
        return Signal("tamper", restore, {"wire": "short"})
    return Signal(kind, restore, {"wire": "alarm"})


def _state_after(sig: Signal, eol: bool) -> str:
    if sig.restore:
        return "normal"
    if not eol:
        return "active"
    return {"cut": "cut", "short": "short"}.get(str(sig.detail.get("wire")), "alarm")


class InputTracker:
    """One input's reported state and the rules that turn readings into signals."""

    def __init__(self, cfg: InputConfig, last: str | None = None) -> None:
        self.cfg = cfg
        # The state last reported (persisted by the caller, so a button that is held down
        # across an edge restart does not raise a second alarm).
        self.reported: str | None = last
        self._candidate: str | None = None
        self._since = 0.0
        self._count = 0
        # A "short press" was reported (latch set, state not active) by the last reading. If
        # the next reading finds the input active with no new pulse, it is the same press,
        # caught by the latch between the state read and the latch read of one poll: it was
        # reported already (alarm and release), so it must not become a second alarm.
        self._short_last = False
        self._quiet_hold = False

    @property
    def state(self) -> str | None:
        return self.reported

    def _debounced(self, value: str, now: float) -> str | None:
        """The value once it has held long enough (time for contacts, samples for EOL)."""
        if value != self._candidate:
            self._candidate = value
            self._since = now
            self._count = 0
        self._count += 1
        if self.cfg.mode == "eol":
            samples = self.cfg.eol.samples if self.cfg.eol else 3
            return value if self._count >= samples else None
        return value if now - self._since >= self.cfg.debounce else None

    def update(self, active: bool | None, pulses: int, eol: str | None, now: float) -> list[Signal]:
        """Feed one successful reading; return the signals it causes (usually none), each with
        the state it leaves the input in."""
        return [
            replace(sig, state=_state_after(sig, self.cfg.mode == "eol"))
            for sig in self._update(active, pulses, eol, now)
        ]

    def _update(
        self, active: bool | None, pulses: int, eol: str | None, now: float
    ) -> list[Signal]:
        kind: EventKind = self.cfg.kind
        if self.cfg.mode == "eol":
            if eol is None or eol == "unknown":
                return []  # a failed analog read is not "normal"; keep what we had
            value = self._debounced(eol, now)
            if value is None or value == self.reported:
                return []
            out: list[Signal] = []
            if self.reported not in (None, "normal"):
                out.append(_eol_signal(kind, self.reported, restore=True))
            if value != "normal":
                out.append(_eol_signal(kind, value, restore=False))
            self.reported = value
            return out

        if active is None:
            return []
        value = self._debounced("active" if active else "normal", now)
        out = []
        latching = self.cfg.mode in ("latch", "counter")
        short_before, self._short_last = self._short_last, False
        if self._quiet_hold:
            if value == "normal" or pulses > 0:
                self._quiet_hold = False
                self.reported = "normal"
                if pulses == 0:
                    return []  # the end of the press already reported: nothing new
            else:
                return []
        if short_before and value == "active" and pulses == 0 and self.reported == "normal":
            self._quiet_hold = True
            return []
        if latching and pulses > 0 and self.reported == "active":
            # The latch was cleared by the read that reported this press, so a new pulse is a
            # new press: the button was released and pressed again between two polls. Report
            # the release and the new alarm (and its release too if it is already over).
            out.append(Signal(kind, restore=True))
            out.append(Signal(kind, detail={"pulses": pulses, "pressed_again": True}))
            if value == "normal":
                out.append(Signal(kind, restore=True, detail={"short_press": True}))
                self.reported = "normal"
            return out
        if value == "active" and self.reported != "active":
            out.append(Signal(kind))
            self.reported = "active"
        elif latching and pulses > 0 and value != "active":
            # The module latched or counted a press that came and went between two polls.
            out.append(Signal(kind, detail={"pulses": pulses, "short_press": True}))
            out.append(Signal(kind, restore=True, detail={"short_press": True}))
            self.reported = "normal"
            self._short_last = True
        elif value == "normal" and self.reported != "normal":
            if self.reported == "active":
                out.append(Signal(kind, restore=True))
            self.reported = "normal"
        return out


def describe(kind: str, restore: bool, where: str) -> str:
    base = TEXT.get(kind, kind.replace("_", " "))
    text = f"{base} restored" if restore else base
    return f"{text} — {where}" if where else text
