"""What a bollard controller reading and command are, independent of any register map.

The driver (``bollard.py``) fills a :class:`BollardReading` from a controller's registers as its
YAML profile describes them; the edge's state machine (``edge/bollards.py``) decides what the
signals mean. No business rules here: a reading is what the PLC said, nothing more.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class BollardCommand(StrEnum):
    RAISE = "raise"
    LOWER = "lower"
    STOP = "stop"
    EMERGENCY_RAISE = "emergency_raise"  # EFO: emergency fast operation


@dataclass(frozen=True, slots=True)
class BollardReading:
    """One read of one bollard's signals. ``None`` = the profile has no such signal.

    Attributes:
        raised_limit: The raised (up) limit switch is made.
        lowered_limit: The lowered (down) limit switch is made.
        moving: The controller reports motion (where it says so).
        moving_up / moving_down: Direction of motion (where the controller says so).
        fault_code: The controller's fault register (0 = no fault).
        manual_mode: Auto/manual switch in manual (hand operation at the cabinet).
        maintenance: Maintenance mode / manual release engaged.
        impact: Impact or tilt sensor tripped (latched where the controller latches).
        vehicle_loop: The vehicle-loop detector sees something above or next to the bollard.
        pressure_bar: Hydraulic pressure.
        motor_temp_c: Motor temperature.
        mains_ok: Mains power present.
        battery_ok: Back-up battery / accumulator pre-charge OK.
        cycles: Raise/lower cycle counter.
        monotonic: ``time.monotonic()`` when the read completed.
        latency_s: Read duration, including any wait for a shared connection.
        raw: Raw register/bit values by signal name (for diagnostics).
    """

    raised_limit: bool | None
    lowered_limit: bool | None
    moving: bool | None = None
    moving_up: bool | None = None
    moving_down: bool | None = None
    fault_code: int | None = None
    manual_mode: bool | None = None
    maintenance: bool | None = None
    impact: bool | None = None
    vehicle_loop: bool | None = None
    pressure_bar: float | None = None
    motor_temp_c: float | None = None
    mains_ok: bool | None = None
    battery_ok: bool | None = None
    cycles: int | None = None
    monotonic: float = 0.0
    latency_s: float = 0.0
    raw: dict[str, int] = field(default_factory=dict)
