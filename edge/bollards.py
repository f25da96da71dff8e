"""Business rules for anti-ram bollards: readings become states and signals; commands are policed.

Pure, like ``edge/alarms.py``: no I/O, no clock reads (time is a parameter), no asyncio. The edge
daemon feeds each poll's :class:`BollardReading` (or ``None`` when the read failed) to a
:class:`BollardTracker`, publishes what it returns, and asks :class:`CommandPolicy` before it
writes a command coil. Four parts:

- :class:`BollardTracker`: the state machine of one bollard, travel-time supervision, alarms
  (impact) and trouble (faults, power, pressure, temperature) with their restores.
- :class:`ScheduleWatch`: a gate's must-be-up windows on school days; reports a bollard left
  down inside one for longer than a grace period.
- :class:`CommandPolicy`: accepts or refuses a console's command request, with a reason the
  guard can read; raise needs arm then confirm.
- :class:`CommandOutcome`: an accepted command stays pending until the bollard is seen at the
  commanded position (done) or a timeout, fault or loss of contact ends it (failed).

The tracker reports what the controller's signals show, never a guess: a failed read is offline
with no position; both limit switches made at once is a fault, not "up" or "down".
"""

from __future__ import annotations

import hmac
import secrets
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from contract.bollard_config import (
    WEEKDAYS,
    BollardRulesConfig,
    CommandPolicyConfig,
    ScheduleConfig,
    TimeWindow,
)
from contract.models import ID_PATTERN, DetailValue, Severity
from contract.topics import CAMPUS_ID_PATTERN
from drivers.modbus.bollard_model import BollardCommand, BollardReading

# --- states and signals ---------------------------------------------------------------------


class BollardState(StrEnum):
    """What the guard is told about one bollard."""

    UP = "up"
    DOWN = "down"
    MOVING_UP = "moving_up"
    MOVING_DOWN = "moving_down"
    STOPPED_MIDWAY = "stopped_midway"
    FAULT = "fault"
    MAINTENANCE = "maintenance"
    OFFLINE = "offline"


Position = Literal["up", "down", "between"]
"""Where the limit switches put the bollard; ``None`` where they cannot say (offline, both made)."""

BollardSignalKind = Literal[
    "bollard_state",  # the state changed; detail: state, previous, position, reason
    "position_confirmed",  # a commanded end position was reached; detail: command, elapsed_s
    "command_failed",  # a sent command ended without reaching its position; detail: reason
    "bollard_impact",  # impact or tilt sensor: a critical alarm, restore when it clears
    "trouble",  # fault, power, pressure, temperature; detail: code, reason; with restores
    "schedule_violation",  # not up inside a must-be-up window beyond the grace period
]

SEVERITY: dict[BollardSignalKind, Severity] = {
    "bollard_impact": "critical",  # a vehicle hit the barrier: someone may be forcing the gate
    "schedule_violation": "high",  # pupils at the gate without the barrier
    "trouble": "medium",
    "command_failed": "medium",
    "bollard_state": "info",
    "position_confirmed": "info",
}
"""Severity of the events the caller makes from each signal kind (restores are ``info``)."""

Detail = dict[str, DetailValue]


@dataclass(frozen=True, slots=True)
class BollardSignal:
    """Something that happened at one bollard, before it becomes an event with id and sequence.

    Attributes:
        kind: What happened (see :data:`BollardSignalKind`).
        restore: The condition ended (impact cleared, trouble gone, bollard back up in time).
        detail: Machine-readable facts; ``reason`` is a human sentence where there is one.
    """

    kind: BollardSignalKind
    restore: bool = False
    detail: Detail = field(default_factory=dict)


TroubleCode = Literal[
    "contradictory_limits",
    "controller_fault",
    "travel_timeout",
    "moved_without_command",
    "mains_lost",
    "battery_low",
    "pressure_low",
    "motor_overtemp",
]

FAULT_CODES: frozenset[str] = frozenset(
    {"contradictory_limits", "controller_fault", "travel_timeout", "moved_without_command"}
)
"""Troubles that put the bollard in :attr:`BollardState.FAULT`: its position or its obedience
can no longer be trusted. The others (power, pressure, temperature) are warnings."""

LATCHED_CODES: frozenset[str] = frozenset({"travel_timeout", "moved_without_command"})
"""Faults derived from events rather than a present condition: they stay until the bollard
completes a commanded move in time, a technician resets them, or maintenance mode ends them."""

_RAISING = frozenset({BollardCommand.RAISE, BollardCommand.EMERGENCY_RAISE})


def _target(command: BollardCommand) -> Position | None:
    if command in _RAISING:
        return "up"
    if command is BollardCommand.LOWER:
        return "down"
    return None  # stop: no end position, only the end of motion


def _position(raised: bool, lowered: bool) -> Position | None:
    if raised and lowered:
        return None  # contradictory: neither, and a fault
    if raised:
        return "up"
    if lowered:
        return "down"
    return "between"


def _motion(reading: BollardReading) -> bool | None:
    """True if the controller reports motion, False if it reports none, None if it cannot say."""
    flags = (reading.moving, reading.moving_up, reading.moving_down)
    if any(f is True for f in flags):
        return True
    if any(f is False for f in flags):
        return False
    return None


def _direction(reading: BollardReading) -> Position | None:
    if reading.moving_up is True and reading.moving_down is not True:
        return "up"
    if reading.moving_down is True and reading.moving_up is not True:
        return "down"
    return None


def _moving(direction: Position) -> BollardState:
    return BollardState.MOVING_UP if direction == "up" else BollardState.MOVING_DOWN


@dataclass(slots=True)
class _Move:
    command: BollardCommand
    command_id: str | None
    sent_at: float
    limit: float
    # A move whose outcome is already reported (timed out, ended by a fault) is kept so that
    # its late arrival at the limit is not mistaken for a movement without command.
    settled: bool = False


@dataclass(frozen=True, slots=True)
class BollardView:
    """What the command policy needs to know about a bollard right now."""

    state: BollardState
    vehicle_loop: bool | None = None


# --- the state machine ----------------------------------------------------------------------


class BollardTracker:
    """One bollard's state, supervision and trouble, driven by readings and sent commands.

    Args:
        cfg: Travel times and thresholds; defaults when omitted.

    Attributes:
        state: The state last reported (``offline`` until the first successful read).
        position: Where the limit switches put it; ``None`` when unknown.
        vehicle_loop: The loop detector's last value; ``None`` when unknown or offline.
        impact: An impact alarm is active (reported and not yet cleared).
    """

    def __init__(self, cfg: BollardRulesConfig | None = None) -> None:
        self.cfg = cfg or BollardRulesConfig()
        self.state = BollardState.OFFLINE
        self.position: Position | None = None
        self.vehicle_loop: bool | None = None
        self.impact = False
        self._troubles: dict[str, Detail] = {}
        # Limits of the previous successful reading; None after a failed read or maintenance,
        # so the first reading afterwards establishes the position without being judged.
        self._limits: tuple[bool, bool] | None = None
        self._moving_before = False
        self._last_limit: Position | None = None
        self._move: _Move | None = None
        self._last: BollardReading | None = None

    # -- queries

    @property
    def troubles(self) -> dict[str, Detail]:
        """Active troubles by code (see :data:`TroubleCode`), with the detail first reported."""
        return dict(self._troubles)

    @property
    def faults(self) -> list[str]:
        """Active fault codes, sorted."""
        return sorted(c for c in self._troubles if c in FAULT_CODES)

    @property
    def pending(self) -> tuple[BollardCommand, str | None] | None:
        """The command being supervised and its id, if any."""
        m = self._move
        return None if m is None or m.settled else (m.command, m.command_id)

    def view(self) -> BollardView:
        """The snapshot :class:`CommandPolicy` decides on."""
        return BollardView(self.state, self.vehicle_loop)

    def snapshot(self) -> Detail:
        """Current state for the retained status message; never a value from a failed read."""
        out: Detail = {
            "state": self.state.value,
            "position": self.position,
            "faults": ",".join(self.faults),
            "troubles": ",".join(sorted(self._troubles)),
            "impact": self.impact,
            "command": self.pending[0].value if self.pending else None,
        }
        r = self._last
        if self.state is not BollardState.OFFLINE and r is not None:
            out |= {
                "vehicle_loop": r.vehicle_loop,
                "pressure_bar": r.pressure_bar,
                "motor_temp_c": r.motor_temp_c,
                "mains_ok": r.mains_ok,
                "battery_ok": r.battery_ok,
                "cycles": r.cycles,
            }
        return out

    # -- inputs

    def command_sent(
        self, command: BollardCommand, now: float, command_id: str | None = None
    ) -> list[BollardSignal]:
        """Start supervising a command the caller has written to the controller.

        Call it after the write succeeded, not when the command was accepted. A command still in
        progress is superseded (``command_failed``): the controller obeys the latest one.

        Args:
            command: What was sent.
            now: Monotonic time of the write.
            command_id: The request's id, carried in the signals for :class:`CommandOutcome`.

        Returns:
            ``command_failed`` for a superseded command, else nothing.
        """
        out: list[BollardSignal] = []
        old = self._move
        if old is not None and not old.settled:
            out.append(self._failed(old, f"superseded by {command.value}", now - old.sent_at))
        cfg = self.cfg
        if command is BollardCommand.EMERGENCY_RAISE:
            limit = cfg.efo_travel_time + cfg.efo_margin
        elif command is BollardCommand.STOP:
            limit = cfg.stop_time
        else:
            limit = cfg.travel_time + cfg.margin
        self._move = _Move(command, command_id, now, limit)
        return out

    def update(self, reading: BollardReading | None, now: float) -> list[BollardSignal]:
        """Feed one poll's result and return the signals it causes (usually none).

        Args:
            reading: The controller's signals, or ``None`` when the read failed.
            now: Monotonic time of the read.

        Returns:
            Signals in the order the caller should publish them: impact, troubles, the state
            change, then the outcome of a supervised command.
        """
        if reading is None:
            return self._offline(now)
        out = self._impact_signals(reading)
        # A limit the profile lacks counts as not made: "up" is never a guess.
        raised, lowered = reading.raised_limit is True, reading.lowered_limit is True
        position = _position(raised, lowered)
        motion, direction = _motion(reading), _direction(reading)
        # Hand operation at the cabinet moves the bollard legitimately and the controller
        # ignores remote commands meanwhile: nothing can be supervised.
        maintenance = reading.maintenance is True or reading.manual_mode is True

        wanted = dict(self._troubles)
        self._measurements(reading, wanted)
        if position is None:
            wanted["contradictory_limits"] = _trouble(
                "contradictory_limits", "contradictory limit switches: raised and lowered both made"
            )
        else:
            wanted.pop("contradictory_limits", None)
        if reading.fault_code is not None:
            if reading.fault_code != 0:
                wanted["controller_fault"] = _trouble(
                    "controller_fault",
                    f"controller fault code {reading.fault_code}",
                    fault_code=reading.fault_code,
                )
            else:
                wanted.pop("controller_fault", None)

        results: list[BollardSignal] = []
        if maintenance:
            if self._move is not None and not self._move.settled:
                results.append(
                    self._failed(self._move, "maintenance or manual mode", now - self._move.sent_at)
                )
            self._move = None
            # The technician has taken charge; faults derived from past events are theirs.
            for code in LATCHED_CODES:
                wanted.pop(code, None)
        else:
            self._check_uncommanded((raised, lowered), motion, wanted)
            results += self._supervise(position, motion, now, wanted)

        changes = self._diff(wanted)
        out += changes
        m = self._move
        if m is not None and not m.settled:
            # A fault that appears during a move ends it: whatever the bollard does next is
            # nothing the guard can rely on as the command's result.
            fault = next((c for c in changes if not c.restore and c.detail.get("fault")), None)
            if fault is not None:
                m.settled = True
                reason = f"fault: {fault.detail['reason']}"
                results.append(self._failed(m, reason, now - m.sent_at))
        state = self._derive(maintenance, position, motion, direction)
        self._limits = None if maintenance else (raised, lowered)
        self._moving_before = motion is True
        if position in ("up", "down"):
            self._last_limit = position
        self.position = position
        self.vehicle_loop = reading.vehicle_loop
        self._last = reading
        out += self._set_state(state, "maintenance or manual mode" if maintenance else "")
        return out + results

    def reset(self, now: float) -> list[BollardSignal]:
        """Clear the latched faults (travel timeout, moved without command) after inspection.

        Args:
            now: Monotonic time of the reset (for symmetry with the other inputs).

        Returns:
            The trouble restores and, if the state changes, the new state.
        """
        del now  # nothing here depends on time; kept so every input takes it
        wanted = {c: d for c, d in self._troubles.items() if c not in LATCHED_CODES}
        if self._move is not None and self._move.settled:
            self._move = None
        out = self._diff(wanted)
        r = self._last
        if self.state is BollardState.FAULT and r is not None:
            state = self._derive(False, self.position, _motion(r), _direction(r))
            out += self._set_state(state, "faults reset")
        return out

    # -- internals

    def _offline(self, now: float) -> list[BollardSignal]:
        results: list[BollardSignal] = []
        m = self._move
        if m is not None and not m.settled:
            results.append(self._failed(m, "bollard offline: read failed", now - m.sent_at))
        self._move = None
        self._limits = None
        self._moving_before = False
        self.position = None  # never the last known position: it may have moved since
        self.vehicle_loop = None
        # Troubles and impact stay as they were: a failed read is not a restore.
        return self._set_state(BollardState.OFFLINE, "read failed") + results

    def _impact_signals(self, r: BollardReading) -> list[BollardSignal]:
        if r.impact is True and not self.impact:
            self.impact = True
            return [BollardSignal("bollard_impact", detail={"reason": "impact or tilt sensor"})]
        if r.impact is False and self.impact:
            self.impact = False
            return [BollardSignal("bollard_impact", restore=True)]
        return []

    def _measurements(self, r: BollardReading, wanted: dict[str, Detail]) -> None:
        # A signal the profile lacks (None) leaves its trouble as it was.
        if r.mains_ok is False:
            wanted["mains_lost"] = _trouble("mains_lost", "mains power lost")
        elif r.mains_ok is True:
            wanted.pop("mains_lost", None)
        if r.battery_ok is False:
            wanted["battery_low"] = _trouble(
                "battery_low", "back-up battery / accumulator pre-charge not OK"
            )
        elif r.battery_ok is True:
            wanted.pop("battery_low", None)
        cfg = self.cfg
        low = cfg.pressure_min_bar
        if r.pressure_bar is not None and low is not None:
            if r.pressure_bar < low:
                wanted["pressure_low"] = _trouble(
                    "pressure_low",
                    f"hydraulic pressure {r.pressure_bar:.1f} bar below {low:.1f} bar",
                    value=r.pressure_bar,
                    limit=low,
                )
            elif r.pressure_bar >= low + cfg.pressure_hysteresis_bar:
                wanted.pop("pressure_low", None)
        hot = cfg.motor_temp_max_c
        if r.motor_temp_c is not None:
            if r.motor_temp_c > hot:
                wanted["motor_overtemp"] = _trouble(
                    "motor_overtemp",
                    f"motor temperature {r.motor_temp_c:.0f} °C above {hot:.0f} °C",
                    value=r.motor_temp_c,
                    limit=hot,
                )
            elif r.motor_temp_c <= hot - cfg.motor_temp_hysteresis_c:
                wanted.pop("motor_overtemp", None)

    def _check_uncommanded(
        self, limits: tuple[bool, bool], motion: bool | None, wanted: dict[str, Detail]
    ) -> None:
        before = self._limits
        if before is None or before == limits:
            return
        if before == (True, True) or limits == (True, True):
            return  # a contradictory reading resolving or appearing is its own fault
        explained = (
            motion is True
            or self._moving_before
            or self._move is not None
            or self.state in (BollardState.MOVING_UP, BollardState.MOVING_DOWN)
        )
        if not explained and "moved_without_command" not in wanted:
            was, now_at = _position(*before), _position(*limits)
            wanted["moved_without_command"] = _trouble(
                "moved_without_command",
                f"moved without command: {was} -> {now_at}",
                previous=was,
                position=now_at,
            )

    def _supervise(
        self, position: Position | None, motion: bool | None, now: float, wanted: dict[str, Detail]
    ) -> list[BollardSignal]:
        m = self._move
        if m is None:
            return []
        elapsed = now - m.sent_at
        target = _target(m.command)
        # A stop ends where motion ends; without a motion signal the next reading is the best
        # evidence there is.
        arrived = position == target if target is not None else motion is not True
        if m.settled:
            if arrived:
                self._move = None  # arrived late: the fault stays latched
            return []
        if arrived:
            self._move = None
            if target is not None:
                # The bollard did what it was told in time: past derived faults no longer hold.
                for code in LATCHED_CODES:
                    wanted.pop(code, None)
            return [self._confirmed(m, elapsed, position)]
        if elapsed > m.limit:
            m.settled = True
            if target is None:
                reason = f"travel timeout: still moving {m.limit:.1f} s after stop"
            else:
                reason = (
                    f"travel timeout: {m.command.value} did not reach {target} "
                    f"within {m.limit:.1f} s"
                )
            wanted["travel_timeout"] = _trouble("travel_timeout", reason, command=m.command.value)
            return [self._failed(m, reason, elapsed)]
        return []

    def _derive(
        self,
        maintenance: bool,
        position: Position | None,
        motion: bool | None,
        direction: Position | None,
    ) -> BollardState:
        if maintenance:
            return BollardState.MAINTENANCE
        if position is None or any(c in FAULT_CODES for c in self._troubles):
            return BollardState.FAULT
        if position == "up":
            return BollardState.MOVING_DOWN if direction == "down" else BollardState.UP
        if position == "down":
            return BollardState.MOVING_UP if direction == "up" else BollardState.DOWN
        if direction is not None:
            return _moving(direction)
        m = self._move
        commanded = _target(m.command) if m is not None and not m.settled else None
        if motion is True:
            # "Moving" without a direction: the command says which way, else the limit it left.
            guess = commanded or {"up": "down", "down": "up"}.get(self._last_limit or "")
            if guess in ("up", "down"):
                return _moving("up" if guess == "up" else "down")
        elif motion is None and commanded is not None:
            # No motion signal at all: trust the command until its travel time runs out.
            return _moving(commanded)
        return BollardState.STOPPED_MIDWAY

    def _diff(self, wanted: dict[str, Detail]) -> list[BollardSignal]:
        restores: list[BollardSignal] = []
        raises: list[BollardSignal] = []
        kept: dict[str, Detail] = {}
        for code, old in self._troubles.items():
            new = wanted.get(code)
            if new is None or (
                code == "controller_fault" and new.get("fault_code") != old.get("fault_code")
            ):
                restores.append(BollardSignal("trouble", restore=True, detail=old))
            else:
                kept[code] = old  # keep the detail first reported; measurements drift
        for code, detail in wanted.items():
            if code not in kept:
                raises.append(BollardSignal("trouble", detail=detail))
                kept[code] = detail
        self._troubles = kept
        return restores + raises

    def _set_state(self, state: BollardState, reason: str) -> list[BollardSignal]:
        if state is self.state:
            return []
        if state is BollardState.FAULT and not reason:
            reason = (
                "; ".join(str(self._troubles[c]["reason"]) for c in self.faults)
                or "contradictory limit switches"
            )
        previous, self.state = self.state, state
        detail: Detail = {
            "state": state.value,
            "previous": previous.value,
            "position": self.position,
            "reason": reason,
        }
        return [BollardSignal("bollard_state", detail=detail)]

    def _confirmed(self, m: _Move, elapsed: float, position: Position | None) -> BollardSignal:
        return BollardSignal(
            "position_confirmed",
            detail={
                "command": m.command.value,
                "command_id": m.command_id,
                "position": position,
                "elapsed_s": round(elapsed, 3),
            },
        )

    @staticmethod
    def _failed(m: _Move, reason: str, elapsed: float) -> BollardSignal:
        return BollardSignal(
            "command_failed",
            detail={
                "command": m.command.value,
                "command_id": m.command_id,
                "reason": reason,
                "elapsed_s": round(elapsed, 3),
            },
        )


def _trouble(code: TroubleCode, reason: str, **facts: DetailValue) -> Detail:
    return {"code": code, "reason": reason, "fault": code in FAULT_CODES, **facts}


# --- schedule -------------------------------------------------------------------------------


class ScheduleWatch:
    """Reports a gate's bollard left not-up inside a must-be-up window on a school day.

    Args:
        cfg: The gate's windows, term calendar and grace period.

    Attributes:
        active: A violation is reported and not yet restored.
    """

    def __init__(self, cfg: ScheduleConfig | None = None) -> None:
        self.cfg = cfg or ScheduleConfig()
        self.active = False
        self._since: float | None = None

    def windows(self, day: date) -> list[TimeWindow]:
        """The must-be-up windows on ``day``: none on holidays, vacations and free weekdays."""
        cal = self.cfg.calendar
        weekday = cal.makeup_days.get(day)
        if weekday is None:
            if any(h.includes(day) for h in cal.holidays):
                return []
            if cal.terms and not any(t.includes(day) for t in cal.terms):
                return []
            weekday = WEEKDAYS[day.weekday()]
        return list(self.cfg.must_be_up.get(weekday, []))

    def window_at(self, local: datetime) -> TimeWindow | None:
        """The must-be-up window ``local`` (local wall time) falls in, if any."""
        t = local.time().replace(tzinfo=None)
        for start, end in self.windows(local.date()):
            if start <= t < end:
                return (start, end)
        return None

    def schedule_violation(self, state: BollardState, local: datetime) -> bool:
        """Whether ``state`` breaks the schedule at ``local``, before any grace period.

        Anything but ``up`` inside a window breaks it, fault and maintenance included: the gate
        is not protected. ``offline`` does not: the position is unknown, and being offline is
        reported on its own.
        """
        if state in (BollardState.UP, BollardState.OFFLINE):
            return False
        return self.window_at(local) is not None

    def update(self, state: BollardState, local: datetime, now: float) -> list[BollardSignal]:
        """Feed the bollard's state; returns a violation after the grace period, or its restore.

        Args:
            state: The tracker's current state.
            local: Local wall-clock time (the windows are local times).
            now: Monotonic time, for the grace period (immune to clock adjustments).
        """
        if state is BollardState.OFFLINE:
            return []  # unknown: neither starts, advances nor ends a violation
        window = self.window_at(local)
        if window is None or state is BollardState.UP:
            self._since = None
            if not self.active:
                return []
            self.active = False
            cleared = "bollard up" if state is BollardState.UP else "window ended"
            return [
                BollardSignal(
                    "schedule_violation",
                    restore=True,
                    detail={"state": state.value, "cleared_by": cleared},
                )
            ]
        if self._since is None:
            self._since = now
        if self.active or now - self._since < self.cfg.grace:
            return []
        self.active = True
        span = f"{window[0]:%H:%M}-{window[1]:%H:%M}"
        return [
            BollardSignal(
                "schedule_violation",
                detail={
                    "state": state.value,
                    "window": span,
                    "for_s": round(now - self._since, 1),
                    "reason": f"bollard {state.value} inside must-be-up window {span} for "
                    f"{now - self._since:.0f} s",
                },
            )
        ]


# --- command policy -------------------------------------------------------------------------


def _aware(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("timestamp must carry a timezone")
    return value


class CommandRequest(BaseModel):
    """A console's request to move a bollard (guard booth, supervisor, police)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    command_id: Annotated[str, Field(pattern=ID_PATTERN, description="unique per request")]
    campus: Annotated[str, Field(pattern=CAMPUS_ID_PATTERN)]
    bollard: Annotated[str, Field(pattern=ID_PATTERN)]
    command: BollardCommand
    who: Annotated[str, Field(min_length=1, max_length=64, description="user id")]
    role: Annotated[str, Field(min_length=1, max_length=64)]
    reason: Annotated[str, Field(max_length=200)] = ""
    issued_at: datetime
    expires_at: datetime

    _check_aware = field_validator("issued_at", "expires_at")(_aware)


class ConfirmRequest(BaseModel):
    """The second step of a two-step command: names the armed request and echoes its token."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    command_id: Annotated[str, Field(pattern=ID_PATTERN)]
    campus: Annotated[str, Field(pattern=CAMPUS_ID_PATTERN)]
    who: Annotated[str, Field(min_length=1, max_length=64)]
    token: Annotated[str, Field(min_length=1, max_length=128)]


RefusalCode = Literal[
    "wrong_campus",
    "replay",
    "bad_validity",
    "not_yet_valid",
    "expired",
    "unknown_bollard",
    "offline",
    "maintenance",
    "role",
    "fault",
    "vehicle_on_loop",
    "reason_required",
    "not_armed",
    "wrong_user",
    "bad_token",
    "confirm_late",
]


@dataclass(frozen=True, slots=True)
class Decision:
    """The policy's answer.

    Attributes:
        outcome: ``accepted`` (send it now), ``armed`` (wait for confirm) or ``refused``.
        command_id: The request's id.
        reason: A sentence for the guard (English; the console translates by ``code``).
        code: Why it was refused; ``None`` unless refused.
        request: The request decided on; ``None`` for a confirm that matches no armed request.
        token: For ``armed``: what the confirm must echo.
        confirm_by: For ``armed``: the confirm must arrive by then.
    """

    outcome: Literal["accepted", "armed", "refused"]
    command_id: str
    reason: str
    code: RefusalCode | None = None
    request: CommandRequest | None = None
    token: str | None = None
    confirm_by: datetime | None = None

    @property
    def accepted(self) -> bool:
        """The command may be written to the controller now."""
        return self.outcome == "accepted"


@dataclass(frozen=True, slots=True)
class _Arm:
    request: CommandRequest
    token: str
    confirm_by: datetime


def _refuse(
    command_id: str, code: RefusalCode, reason: str, req: CommandRequest | None = None
) -> Decision:
    return Decision("refused", command_id, reason, code, req)


def _new_token() -> str:
    return secrets.token_urlsafe(16)


class CommandPolicy:
    """Decides on command requests for one campus's bollards.

    Every refusal carries a reason the guard can act on. Stop is allowed for any online
    bollard and any role (it can only make things safer); the request must still be for this
    campus, fresh and not a replay.

    Args:
        campus: This edge's campus id.
        cfg: Roles, two-step commands and time limits; defaults when omitted.
        token_factory: Makes arm tokens (tests pass a predictable one).
    """

    def __init__(
        self,
        campus: str,
        cfg: CommandPolicyConfig | None = None,
        *,
        token_factory: Callable[[], str] = _new_token,
    ) -> None:
        self.campus = campus
        self.cfg = cfg or CommandPolicyConfig()
        self._token = token_factory
        # Command id -> when it may be forgotten: never later than the request's expiry, so a
        # replay after that is refused as expired and the memory stays bounded.
        self._seen: dict[str, datetime] = {}
        self._armed: dict[str, _Arm] = {}

    def decide(self, req: CommandRequest, view: BollardView | None, now: datetime) -> Decision:
        """Accept, arm or refuse a request.

        Args:
            req: The request.
            view: The bollard's current state (``BollardTracker.view()``); ``None`` = unknown.
            now: Current time, timezone-aware.

        Returns:
            ``accepted``: write the command now; ``armed``: keep the token for the confirm;
            ``refused``: show the reason.
        """
        self._prune(now)
        if req.campus != self.campus:
            return _refuse(
                req.command_id,
                "wrong_campus",
                f"command is for campus {req.campus!r}, this is {self.campus!r}",
                req,
            )
        if req.command_id in self._seen:
            return _refuse(
                req.command_id, "replay", "command id already used: refused as a replay", req
            )
        limit = now + timedelta(seconds=self.cfg.max_validity + self.cfg.clock_skew)
        self._seen[req.command_id] = min(req.expires_at, limit)
        refusal = self._check_time(req, now) or self._check_target(req, view)
        if refusal is not None:
            return refusal
        if req.command.value in self.cfg.two_step:
            confirm_by = min(now + timedelta(seconds=self.cfg.arm_confirm_window), req.expires_at)
            token = self._token()
            self._armed[req.command_id] = _Arm(req, token, confirm_by)
            window = (confirm_by - now).total_seconds()
            return Decision(
                "armed",
                req.command_id,
                f"{req.command.value} armed: confirm within {window:.0f} s",
                request=req,
                token=token,
                confirm_by=confirm_by,
            )
        return Decision("accepted", req.command_id, f"{req.command.value} accepted", request=req)

    def confirm(self, conf: ConfirmRequest, view: BollardView | None, now: datetime) -> Decision:
        """Second step of a two-step command: accept it if the token matches in time.

        Every check of the first step runs again against the bollard as it is now (a vehicle
        may have rolled onto the loop meanwhile). A wrong token or a late confirm uses up the
        arm: the guard arms again.

        Args:
            conf: The confirm.
            view: The bollard's current state; ``None`` = unknown.
            now: Current time, timezone-aware.
        """
        self._prune(now)
        if conf.campus != self.campus:
            return _refuse(
                conf.command_id,
                "wrong_campus",
                f"confirm is for campus {conf.campus!r}, this is {self.campus!r}",
            )
        arm = self._armed.get(conf.command_id)
        if arm is None:
            return _refuse(
                conf.command_id,
                "not_armed",
                "nothing armed under this command id (never armed, already used or expired)",
            )
        req = arm.request
        if conf.who != req.who:
            # Kept armed: the guard who armed it may still confirm.
            return _refuse(
                conf.command_id, "wrong_user", f"armed by {req.who!r}: only they can confirm", req
            )
        del self._armed[conf.command_id]
        if not hmac.compare_digest(conf.token.encode(), arm.token.encode()):
            return _refuse(
                conf.command_id, "bad_token", "confirm token does not match: arm again", req
            )
        if now > arm.confirm_by:
            return _refuse(
                conf.command_id,
                "confirm_late",
                f"confirm came too late (by {arm.confirm_by:%H:%M:%S}): arm again",
                req,
            )
        refusal = self._check_time(req, now) or self._check_target(req, view)
        if refusal is not None:
            return refusal
        return Decision("accepted", req.command_id, f"{req.command.value} confirmed", request=req)

    def _prune(self, now: datetime) -> None:
        self._seen = {k: t for k, t in self._seen.items() if t > now}
        self._armed = {k: a for k, a in self._armed.items() if k in self._seen}

    def _check_time(self, req: CommandRequest, now: datetime) -> Decision | None:
        cid = req.command_id
        validity = (req.expires_at - req.issued_at).total_seconds()
        if validity <= 0:
            return _refuse(cid, "bad_validity", "command expires before it was issued", req)
        if validity > self.cfg.max_validity:
            return _refuse(
                cid,
                "bad_validity",
                f"command valid for {validity:.0f} s; at most {self.cfg.max_validity:.0f} s "
                "allowed",
                req,
            )
        if req.issued_at > now + timedelta(seconds=self.cfg.clock_skew):
            return _refuse(
                cid, "not_yet_valid", "command issued in the future: check the console clock", req
            )
        if now >= req.expires_at:
            return _refuse(
                cid, "expired", f"command expired at {req.expires_at:%H:%M:%S}: send it again", req
            )
        return None

    def _check_target(self, req: CommandRequest, view: BollardView | None) -> Decision | None:
        cid, cmd = req.command_id, req.command
        if view is None:
            return _refuse(cid, "unknown_bollard", f"no bollard {req.bollard!r} here", req)
        if view.state is BollardState.OFFLINE:
            return _refuse(
                cid,
                "offline",
                f"bollard {req.bollard} is offline: its position is unknown and it cannot be "
                "commanded; check it at the gate",
                req,
            )
        if cmd is BollardCommand.STOP:
            return None  # safety: stopping steel in motion is never refused while we reach it
        if view.state is BollardState.MAINTENANCE:
            return _refuse(
                cid,
                "maintenance",
                f"bollard {req.bollard} is in maintenance or manual mode: it is operated at the "
                "cabinet, not from the console",
                req,
            )
        if cmd.value not in self.cfg.roles.get(req.role, frozenset()):
            return _refuse(cid, "role", f"role {req.role!r} may not {cmd.value}", req)
        if (
            view.state is BollardState.FAULT
            and cmd is BollardCommand.LOWER
            and self.cfg.refuse_lower_in_fault
        ):
            return _refuse(
                cid,
                "fault",
                f"bollard {req.bollard} is in fault: it is not lowered until a technician "
                "has checked it",
                req,
            )
        if cmd in _RAISING and view.vehicle_loop is True:
            if cmd is BollardCommand.RAISE:
                return _refuse(
                    cid,
                    "vehicle_on_loop",
                    "a vehicle is on the loop: raising would strike it; wait until it is clear",
                    req,
                )
            if req.role not in self.cfg.loop_override_roles:
                return _refuse(
                    cid,
                    "vehicle_on_loop",
                    f"a vehicle is on the loop and role {req.role!r} may not emergency-raise "
                    "over it",
                    req,
                )
            if not req.reason.strip():
                return _refuse(
                    cid,
                    "reason_required",
                    "an emergency raise over an occupied loop needs a reason (it is recorded)",
                    req,
                )
        return None


# --- command outcomes -----------------------------------------------------------------------

CommandStatus = Literal["pending", "done", "failed"]


@dataclass(frozen=True, slots=True)
class CommandResult:
    """Where an accepted command stands.

    Attributes:
        command_id: The request's id.
        bollard: Which bollard.
        command: What was asked.
        status: ``pending`` until the bollard confirms the position, then ``done`` or
            ``failed``.
        reason: Why it failed (empty otherwise).
        elapsed_s: For ``done``: seconds from the write to the confirmed position.
    """

    command_id: str
    bollard: str
    command: BollardCommand
    status: CommandStatus
    reason: str = ""
    elapsed_s: float | None = None


@dataclass(slots=True)
class _Pending:
    result: CommandResult
    accepted_at: float


class CommandOutcome:
    """The ledger of accepted commands: pending until the bollard proves the result.

    A command is ``done`` only on the tracker's ``position_confirmed`` for its id, never because
    it was sent; ``failed`` on the tracker's ``command_failed`` (timeout, offline, maintenance,
    superseded), on a failed write, or when nothing at all is heard within ``deadline``.

    Args:
        deadline: Seconds after acceptance after which a command with no news fails; a safety
            net for a command that was accepted but never reached the tracker.
        keep: How many finished results to remember for :meth:`get`.
    """

    def __init__(self, deadline: float = 60.0, keep: int = 512) -> None:
        self.deadline = deadline
        self.keep = keep
        self._pending: dict[str, _Pending] = {}
        self._done: OrderedDict[str, CommandResult] = OrderedDict()

    @property
    def pending(self) -> list[CommandResult]:
        """Commands still waiting for their outcome."""
        return [p.result for p in self._pending.values()]

    def get(self, command_id: str) -> CommandResult | None:
        """The current result of a command, if it is known."""
        p = self._pending.get(command_id)
        return p.result if p is not None else self._done.get(command_id)

    def accepted(
        self, command_id: str, bollard: str, command: BollardCommand, now: float
    ) -> CommandResult:
        """Record a command the policy accepted; it is pending from now on."""
        result = CommandResult(command_id, bollard, command, "pending")
        self._pending[command_id] = _Pending(result, now)
        return result

    def send_failed(self, command_id: str, reason: str) -> CommandResult | None:
        """The write to the controller failed: the command failed without moving anything."""
        return self._settle(command_id, "failed", f"not sent: {reason}", None)

    def observe(
        self, bollard: str, signals: Iterable[BollardSignal], now: float
    ) -> list[CommandResult]:
        """Take the tracker's signals for ``bollard``; return the commands they settle."""
        del now  # the tracker's signals carry their own elapsed time
        out: list[CommandResult] = []
        for s in signals:
            if s.kind not in ("position_confirmed", "command_failed"):
                continue
            cid = s.detail.get("command_id")
            p = self._pending.get(cid) if isinstance(cid, str) else None
            if p is None or p.result.bollard != bollard:
                continue
            elapsed = s.detail.get("elapsed_s")
            seconds = float(elapsed) if isinstance(elapsed, int | float) else None
            if s.kind == "position_confirmed":
                settled = self._settle(p.result.command_id, "done", "", seconds)
            else:
                settled = self._settle(
                    p.result.command_id, "failed", str(s.detail.get("reason", "")), seconds
                )
            if settled is not None:
                out.append(settled)
        return out

    def expire(self, now: float) -> list[CommandResult]:
        """Fail the commands that heard nothing within the deadline."""
        late = [cid for cid, p in self._pending.items() if now - p.accepted_at > self.deadline]
        out: list[CommandResult] = []
        for cid in late:
            r = self._settle(
                cid, "failed", f"no confirmation from the bollard within {self.deadline:.0f} s"
            )
            if r is not None:
                out.append(r)
        return out

    def _settle(
        self, command_id: str, status: CommandStatus, reason: str, elapsed: float | None = None
    ) -> CommandResult | None:
        p = self._pending.pop(command_id, None)
        if p is None:
            return None
        r = p.result
        result = CommandResult(r.command_id, r.bollard, r.command, status, reason, elapsed)
        self._done[command_id] = result
        while len(self._done) > self.keep:
            self._done.popitem(last=False)
        return result
