"""Settings for the bollard rules in ``edge/bollards.py``: supervision, schedule, command policy.

Part of the contract because the edge config file (``contract/config.py``) embeds them. Every
default is written down here, once, with the reason for it.
"""

from __future__ import annotations

from datetime import date, time
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

BollardAction = Literal["raise", "lower", "stop", "emergency_raise"]
"""The commands a bollard takes (the driver's ``BollardAction`` has the same values)."""
BOLLARD_ACTIONS: tuple[BollardAction, ...] = ("raise", "lower", "stop", "emergency_raise")

Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WEEKDAYS: tuple[Weekday, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
"""Index = ``date.weekday()``."""

TimeWindow = tuple[time, time]
"""``(start, end)`` local wall time; ``start <= t < end``. A window never crosses midnight."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BollardRulesConfig(_Strict):
    """Supervision limits for one bollard (or every bollard of a gate: they are usually alike)."""

    travel_time: float = Field(
        10.0,
        gt=0,
        le=120,
        description="seconds for a normal raise or lower; powered bollards take 3-15 s",
    )
    efo_travel_time: float = Field(
        2.5,
        gt=0,
        le=30,
        description="seconds for an emergency fast operation (EFO); US UFGS 02840 asks <= 2.5 s",
    )
    margin: float = Field(
        2.0,
        ge=0,
        le=60,
        description="added to travel_time before a move is a fault: cold oil and a slow poll",
    )
    efo_margin: float = Field(
        0.5,
        ge=0,
        le=10,
        description="added to efo_travel_time; small, because a slow EFO defeats its purpose",
    )
    stop_time: float = Field(
        2.0,
        gt=0,
        le=30,
        description="seconds after a stop command within which motion must have ended",
    )
    pressure_min_bar: float | None = Field(
        None,
        gt=0,
        le=1000,
        description="hydraulic pressure below this is trouble; no universal value exists, so "
        "it is off until set from the vendor's manual",
    )
    pressure_hysteresis_bar: float = Field(
        5.0,
        ge=0,
        le=200,
        description="pressure must rise this far above the minimum before the trouble restores, "
        "so a pump cycling at the threshold does not flood the guard with events",
    )
    motor_temp_max_c: float = Field(
        100.0,
        gt=0,
        le=250,
        description="motor temperature above this is trouble (well below a class F winding's "
        "155 °C, so the warning comes before the thermal cut-out stops the bollard)",
    )
    motor_temp_hysteresis_c: float = Field(
        10.0, ge=0, le=100, description="must cool this far below the maximum to restore"
    )

    @model_validator(mode="after")
    def _efo_faster(self) -> BollardRulesConfig:
        if self.efo_travel_time + self.efo_margin > self.travel_time + self.margin:
            raise ValueError("efo_travel_time + efo_margin must not exceed travel_time + margin")
        return self


class DateRange(_Strict):
    """Inclusive range of dates; ``end`` defaults to ``start`` (one day)."""

    start: date
    end: date | None = None

    @model_validator(mode="after")
    def _ordered(self) -> DateRange:
        if self.end is not None and self.end < self.start:
            raise ValueError(f"end {self.end} is before start {self.start}")
        return self

    def includes(self, day: date) -> bool:
        """Whether ``day`` falls inside the range, both ends included."""
        return self.start <= day <= (self.end or self.start)


class TermCalendar(_Strict):
    """Which dates are school days; the weekly schedule applies only on those."""

    terms: list[DateRange] = Field(
        default_factory=list,
        description="term periods; when given, every date outside them is vacation. Empty = "
        "every week of the year is a school week",
    )
    holidays: list[DateRange] = Field(
        default_factory=list, description="days off inside a term (public holidays, sports day)"
    )
    makeup_days: dict[date, Weekday] = Field(
        default_factory=dict,
        description="weekend days that are school days and the weekday timetable they follow "
        "(China moves working days around public holidays: 调休)",
    )


def _peaks() -> dict[Weekday, list[TimeWindow]]:
    # Arrival and dismissal: the times pupils crowd the gate, which is what the bollards are for
    # (and when the seed's plan posts guards at the gate). Noon covers pupils who go home for
    # lunch; after-school care ends around 18:00.
    day = [(time(7, 0), time(8, 30)), (time(11, 30), time(12, 30)), (time(15, 30), time(18, 0))]
    return {d: list(day) for d in WEEKDAYS[:5]}


class ScheduleConfig(_Strict):
    """When a gate's bollards must be up, and how long they may be down inside those windows."""

    must_be_up: dict[Weekday, list[TimeWindow]] = Field(
        default_factory=_peaks,
        description="weekday -> list of (start, end) local times when the bollard must be up",
    )
    calendar: TermCalendar = Field(default_factory=TermCalendar)
    grace: float = Field(
        60.0,
        ge=0,
        le=3600,
        description="seconds a bollard may be not-up inside a window before it is reported: "
        "long enough to let an authorised vehicle through, short enough to matter",
    )

    @field_validator("must_be_up")
    @classmethod
    def _windows(cls, value: dict[Weekday, list[TimeWindow]]) -> dict[Weekday, list[TimeWindow]]:
        for day, windows in value.items():
            for start, end in windows:
                if not start < end:
                    raise ValueError(
                        f"{day}: window {start}-{end} must end after it starts "
                        "(split a window that crosses midnight in two)"
                    )
        return value


RoleName = Annotated[str, Field(min_length=1, max_length=64)]

_ALL: frozenset[BollardAction] = frozenset(BOLLARD_ACTIONS)


def _roles() -> dict[str, frozenset[BollardAction]]:
    return {
        # The guard at the booth sees the gate, so the guard decides, including an EFO.
        "guard": _ALL,
        "supervisor": _ALL,
        # Technicians operate bollards at the cabinet in maintenance mode, not remotely.
        "technician": frozenset({"stop"}),
    }


class CommandPolicyConfig(_Strict):
    """Who may do what to a bollard from a console, and how a raise is confirmed."""

    roles: dict[RoleName, frozenset[BollardAction]] = Field(
        default_factory=_roles,
        description="role -> commands it may issue; stop needs no entry: anyone may stop",
    )
    two_step: frozenset[BollardAction] = Field(
        frozenset({"raise", "emergency_raise"}),
        description="commands that need arm then confirm: the ones that can strike a person or "
        "a car, so a stray click never moves steel upwards",
    )
    arm_confirm_window: float = Field(
        10.0,
        gt=0,
        le=120,
        description="seconds between arm and confirm: time to look at the gate once more",
    )
    loop_override_roles: frozenset[RoleName] = Field(
        frozenset({"guard", "supervisor"}),
        description="roles that may emergency-raise while the vehicle loop is occupied (the "
        "vehicle on the loop may be the attacker); a plain raise never overrides the loop",
    )
    refuse_lower_in_fault: bool = Field(
        True,
        description="a bollard in fault must not be lowered from the console: lowering takes "
        "away the protection and the fault may hide a forced entry",
    )
    max_validity: float = Field(
        60.0,
        gt=0,
        le=3600,
        description="longest allowed expires_at - issued_at: bounds replay memory and keeps a "
        "delayed command from acting long after the guard meant it",
    )
    clock_skew: float = Field(
        5.0, ge=0, le=300, description="seconds a console clock may be ahead of the edge"
    )

    @model_validator(mode="after")
    def _override_roles_known(self) -> CommandPolicyConfig:
        unknown = self.loop_override_roles - set(self.roles)
        if unknown:
            raise ValueError(f"loop_override_roles names unknown roles: {sorted(unknown)}")
        return self
