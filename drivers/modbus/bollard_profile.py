"""Bollard controller profiles: a PLC's register map for rising bollards, as data.

No bollard maker publishes a Modbus map: the site's PLC integrator writes one, or the
controller's dry contacts are wired to a DI module. A profile describes *one* bollard's
signals and commands; a controller driving several bollards repeats that block, bollard
``i`` at ``address + i * stride`` (one stride per table, overridable per point).

Points reuse :class:`~drivers.modbus.profile.PointRef` and
:class:`~drivers.modbus.profile.WriteRef`: ``table`` + ``address`` and/or the manual's
``modicon`` number, cross-checked. Built-in profiles ship in ``bollard_profiles/``.

Example:
    >>> p = load_bollard_profile("generic-plc")
    >>> p.signals.raised_limit.address_of(1)
    16
"""

from __future__ import annotations

from collections.abc import Iterator
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Annotated, Literal, Self, get_args

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .codec import BIT_TABLES, REGISTER_TABLES, Table, WordOrder, wire_to_modicon
from .profile import PointRef, WriteRef, list_yaml_names, load_yaml_model, parse_yaml_model

__all__ = [
    "COMMAND_NAMES",
    "SIGNAL_NAMES",
    "AnalogSignal",
    "BitSignal",
    "BollardCommands",
    "BollardProfile",
    "BollardSignals",
    "CommandName",
    "CommandPoint",
    "CounterSignal",
    "ReadPoint",
    "SignalName",
    "Strides",
    "ValueSignal",
    "list_bollard_profiles",
    "load_bollard_profile",
    "parse_bollard_profile",
]

_PACKAGE = "drivers.modbus"
_PROFILE_DIR = "bollard_profiles"
_Strict = ConfigDict(extra="forbid", frozen=True)

# Signal names are BollardReading's field names: one name from YAML to reading.
SignalName = Literal[
    "raised_limit",
    "lowered_limit",
    "moving",
    "moving_up",
    "moving_down",
    "fault_code",
    "manual_mode",
    "maintenance",
    "impact",
    "vehicle_loop",
    "pressure_bar",
    "motor_temp_c",
    "mains_ok",
    "battery_ok",
    "cycles",
]
# Command names are BollardCommand's values, plus the impact reset.
CommandName = Literal["raise", "lower", "stop", "emergency_raise", "clear_impact"]
_MappedName = Literal[SignalName, CommandName]
SIGNAL_NAMES: tuple[SignalName, ...] = get_args(SignalName)
COMMAND_NAMES: tuple[CommandName, ...] = get_args(CommandName)

# Most bollards one controller block may describe; real controllers drive 1 to 8.
MAX_BOLLARDS = 64


class BitSignal(PointRef):
    """A yes/no signal: a coil or discrete input, or one bit of a register (status word)."""

    bit: Annotated[int, Field(ge=0, le=15)] | None = Field(
        default=None,
        description="register tables only: bit number, 0 = least significant; "
        "left out = the whole register, non-zero is true",
    )
    invert: bool = Field(
        default=False,
        description="true when the contact reads 1 for 'no' (e.g. a 'mains failed' relay "
        "mapped onto mains_ok)",
    )

    @model_validator(mode="after")
    def _bit_in_register(self) -> Self:
        if self.bit is not None and self.table in BIT_TABLES:
            raise ValueError(f"'bit' picks a bit of a register; a {self.table} is one bit")
        return self

    def decode(self, raw: int) -> bool:
        """The signal's value from the raw bit (0/1) or register (0..65535)."""
        value = bool(raw >> self.bit & 1) if self.bit is not None else raw != 0
        return value != self.invert


class ValueSignal(PointRef):
    """A whole register read as an unsigned integer (the controller's fault code)."""

    @model_validator(mode="after")
    def _register(self) -> Self:
        if self.table not in REGISTER_TABLES:
            raise ValueError(f"a value lives in a register, not in a {self.table}")
        return self


class AnalogSignal(ValueSignal):
    """A measurement in one register: ``offset + raw * scale`` (bar, degrees Celsius)."""

    scale: float = Field(default=1.0, gt=0, description="units per count, e.g. 0.1")
    offset: float = Field(default=0.0, description="units at count 0")
    signed: bool = Field(
        default=False, description="the register is a two's complement int16 (temperatures)"
    )

    def decode(self, raw: int) -> float:
        """The measurement from the raw register."""
        count = raw - 0x10000 if self.signed and raw & 0x8000 else raw
        return self.offset + count * self.scale


class CounterSignal(ValueSignal):
    """A cycle counter: one register, or 32 bits in two with a stated word order."""

    words: Literal[1, 2] = Field(default=2, description="registers: 1 (16 bit) or 2 (32 bit)")
    word_order: WordOrder | None = Field(
        default=None, description="32 bit only: low_first or high_first"
    )

    @model_validator(mode="after")
    def _order(self) -> Self:
        if (self.words == 2) != (self.word_order is not None):
            raise ValueError("word_order is given for a 32-bit counter (words: 2), and only then")
        return self


ReadPoint = BitSignal | ValueSignal


class CommandPoint(WriteRef):
    """A command: a coil pulse (write 1, the controller clears it) or a value written to
    a command register."""


class Strides(BaseModel):
    """Address step from one bollard to the next, per table (0 = one bollard only)."""

    model_config = _Strict

    coil: int = Field(default=0, ge=0, le=4096)
    discrete_input: int = Field(default=0, ge=0, le=4096)
    holding_register: int = Field(default=0, ge=0, le=4096)
    input_register: int = Field(default=0, ge=0, le=4096)

    def of(self, table: Table) -> int:
        """The stride of ``table``."""
        return int(getattr(self, table))


class BollardSignals(BaseModel):
    """What the controller reports about one bollard; only the limit switches are required."""

    model_config = _Strict

    raised_limit: BitSignal = Field(description="raised (up) limit switch made")
    lowered_limit: BitSignal = Field(description="lowered (down) limit switch made")
    moving: BitSignal | None = Field(default=None, description="in motion, either way")
    moving_up: BitSignal | None = Field(default=None, description="raise output energised")
    moving_down: BitSignal | None = Field(default=None, description="lower output energised")
    fault_code: ValueSignal | None = Field(default=None, description="fault register, 0 = none")
    manual_mode: BitSignal | None = Field(default=None, description="auto/manual switch: manual")
    maintenance: BitSignal | None = Field(
        default=None, description="maintenance mode / manual release engaged"
    )
    impact: BitSignal | None = Field(default=None, description="impact or tilt sensor tripped")
    vehicle_loop: BitSignal | None = Field(default=None, description="vehicle loop occupied")
    pressure_bar: AnalogSignal | None = Field(default=None, description="hydraulic pressure")
    motor_temp_c: AnalogSignal | None = Field(default=None, description="motor temperature")
    mains_ok: BitSignal | None = Field(default=None, description="mains power present")
    battery_ok: BitSignal | None = Field(
        default=None, description="back-up battery / accumulator pre-charge OK"
    )
    cycles: CounterSignal | None = Field(default=None, description="raise/lower cycle counter")


class BollardCommands(BaseModel):
    """How to make the controller act; every command is optional (a controller read
    through a DI module takes none)."""

    model_config = _Strict

    raise_: CommandPoint | None = Field(default=None, alias="raise", description="raise")
    lower: CommandPoint | None = Field(default=None, description="lower")
    stop: CommandPoint | None = Field(default=None, description="stop where it is")
    emergency_raise: CommandPoint | None = Field(
        default=None, description="emergency fast operation (EFO): raise fast, ignore the loop"
    )
    clear_impact: CommandPoint | None = Field(
        default=None, description="reset a latched impact/tilt alarm"
    )

    def get(self, name: str) -> CommandPoint | None:
        """The point of command ``name`` (``raise``, ..., ``clear_impact``), if mapped."""
        if name not in COMMAND_NAMES:
            raise KeyError(f"no command {name!r}; commands are {', '.join(COMMAND_NAMES)}")
        point: CommandPoint | None = getattr(self, "raise_" if name == "raise" else name)
        return point


class BollardProfile(BaseModel):
    """A bollard controller's register map and defaults."""

    model_config = _Strict

    name: str = Field(default="", description="filled in by the loader from the file name")
    vendor: str = Field(min_length=1)
    model: str = Field(min_length=1)
    description: str = ""
    default_unit: int = Field(default=1, ge=0, le=255)
    default_port: int = Field(default=502, ge=1, le=65535)
    transports: tuple[Literal["tcp", "rtu"], ...] = ("tcp",)
    max_bollards: int = Field(
        default=1, ge=1, le=MAX_BOLLARDS, description="bollards one controller can drive"
    )
    stride: Strides = Field(
        default_factory=Strides,
        description="per table: bollard i's points are at bollard 0's address + i * stride",
    )
    max_gap: int | None = Field(
        default=None,
        ge=0,
        description="largest run of unmapped addresses a read may span; set it (0 = none) "
        "when the controller refuses reads of addresses it does not map",
    )
    signals: BollardSignals
    commands: BollardCommands = Field(default_factory=BollardCommands)
    unavailable: dict[_MappedName, str] = Field(
        default_factory=dict,
        description="signal or command -> why this controller does not have it",
    )

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        self._apply_strides()
        for name in self.unavailable:
            if self.signal(name) if name in SIGNAL_NAMES else self.commands.get(name):
                where = "signals" if name in SIGNAL_NAMES else "commands"
                raise ValueError(f"{where}.{name} is both mapped and listed as unavailable")
        last = self.max_bollards - 1
        for where, point, width in self._all_points():
            end = point.address_of(last) + width - 1
            if end > 65535:
                raise ValueError(f"{where}: bollard {last} falls beyond address 65535 ({end})")
        self._check_overlaps()
        return self

    def _apply_strides(self) -> None:
        # A point without its own stride steps by its table's stride. Substituted here, once,
        # so that address_of(i) is right for every user of the profile.
        for holder, names in ((self.signals, SIGNAL_NAMES), (self.commands, _COMMAND_FIELDS)):
            for field_name in names:
                point = getattr(holder, field_name)
                if point is not None and "stride" not in point.model_fields_set:
                    stride = self.stride.of(point.wire_table)
                    object.__setattr__(
                        holder, field_name, point.model_copy(update={"stride": stride})
                    )

    def _all_points(self) -> Iterator[tuple[str, PointRef, int]]:
        for name, point, width in self.read_points():
            yield f"signals.{name}", point, width
        for name in COMMAND_NAMES:
            command = self.commands.get(name)
            if command is not None:
                yield f"commands.{name}", command, 1

    def _check_overlaps(self) -> None:
        # A typo that puts two signals on one address reads as a plausible but wrong
        # bollard; so does a stride smaller than a bollard's block. Catch both here.
        # Two signals may share a register only as different bits of a status word.
        reads: dict[tuple[str, int], list[tuple[int | None, str, int]]] = {}
        writes: dict[tuple[str, int, int], tuple[str, int]] = {}
        for bollard in range(self.max_bollards):
            for name, point, width in self.read_points():
                bit = point.bit if isinstance(point, BitSignal) else None
                for word in range(width):
                    users = reads.setdefault(
                        (point.wire_table, point.address_of(bollard) + word), []
                    )
                    for other_bit, other, other_bollard in users:
                        if bit is None or other_bit is None or bit == other_bit:
                            raise ValueError(
                                self._clash(f"signals.{name}", point, bollard, other, other_bollard)
                            )
                    users.append((bit, f"signals.{name}", bollard))
            for name in COMMAND_NAMES:
                command = self.commands.get(name)
                if command is None:
                    continue
                key = (command.wire_table, command.address_of(bollard), command.value)
                clash = writes.get(key)
                if clash is not None:
                    raise ValueError(self._clash(f"commands.{name}", command, bollard, *clash))
                writes[key] = (f"commands.{name}", bollard)

    @staticmethod
    def _clash(where: str, point: PointRef, bollard: int, other: str, other_bollard: int) -> str:
        table = point.wire_table
        hint = (
            f"; stride.{table} must be at least one bollard's span of {table} points"
            if bollard != other_bollard
            else ""
        )
        return (
            f"{where}: bollard {bollard}'s {point.describe(bollard)} is also {other} "
            f"of bollard {other_bollard}{hint}"
        )

    # ------------------------------------------------------------------ lookups

    def signal(self, name: str) -> ReadPoint | None:
        """The point of signal ``name`` (a :class:`BollardReading` field), if mapped."""
        if name not in SIGNAL_NAMES:
            raise KeyError(f"no signal {name!r}; signals are {', '.join(SIGNAL_NAMES)}")
        point: ReadPoint | None = getattr(self.signals, name)
        return point

    def read_points(self) -> list[tuple[str, ReadPoint, int]]:
        """Every mapped signal as ``(name, point, registers or bits it spans)``."""
        out: list[tuple[str, ReadPoint, int]] = []
        for name in SIGNAL_NAMES:
            point = self.signal(name)
            if point is not None:
                width = point.words if isinstance(point, CounterSignal) else 1
                out.append((name, point, width))
        return out

    def describe(self, name: str, bollard: int = 0) -> str:
        """Human-readable address of a signal or command for ``bollard``, e.g. for logs."""
        point = self.signal(name) if name in SIGNAL_NAMES else self.commands.get(name)
        if point is None:
            return f"{name}: not mapped"
        address = point.address_of(bollard)
        return (
            f"{name}: {point.wire_table} {address} ({wire_to_modicon(point.wire_table, address)})"
        )


_COMMAND_FIELDS = ("raise_", "lower", "stop", "emergency_raise", "clear_impact")


# --------------------------------------------------------------------------- loading


def _builtin_dir() -> Traversable:
    return resources.files(_PACKAGE).joinpath(_PROFILE_DIR)


def list_bollard_profiles() -> list[str]:
    """Names of the built-in bollard profiles, e.g. ``["generic-plc"]``, sorted."""
    return list_yaml_names(_builtin_dir())


def parse_bollard_profile(text: str, source: str, name: str) -> BollardProfile:
    """Validate a bollard profile from YAML ``text`` read from ``source``, named ``name``
    unless it says otherwise (see :func:`~drivers.modbus.profile.parse_yaml_model`).

    Raises:
        ProfileError: One message naming ``source`` and the offending key(s).
    """
    # Profile-wide checks name their key at the start of the message.
    return parse_yaml_model(BollardProfile, text, source, name, locate_model_errors=False)


def load_bollard_profile(name_or_path: str | Path) -> BollardProfile:
    """Load a built-in bollard profile by name (``"generic-plc"``, case-insensitive; see
    :func:`list_bollard_profiles`), or a profile YAML file by path.

    Raises:
        ProfileError: As :func:`~drivers.modbus.profile.load_profile` does.
    """
    return load_yaml_model(
        name_or_path, _builtin_dir(), parse_bollard_profile, kind="bollard profile"
    )
