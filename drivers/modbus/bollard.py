"""Bollard controller driver: read a bollard's signals, write its commands.

A rising-bollard controller (usually a PLC) is mapped by a
:class:`~drivers.modbus.bollard_profile.BollardProfile`. The driver speaks the map, not
our business: it returns what the controller said as a
:class:`~drivers.modbus.bollard_model.BollardReading`, and a command it writes is
"written", not "done" -- the bollard's position is confirmed (or not) by later reads,
and deciding what a missing limit switch means is ``edge/bollards``' job.

Layers: :func:`plan_reads_for` and :func:`decode_reading` are pure (addresses in,
requests out; values in, reading out, property-tested); :class:`BollardController`
does the I/O on a shared :class:`~drivers.modbus.bus.ModbusConnection`.

Example:
    async with ModbusBus() as bus:
        ctl = BollardController(bus.get_tcp("10.0.0.9"), load_bollard_profile("generic-plc"),
                                unit=1, bollards=2)
        await ctl.command(0, BollardCommand.RAISE)
        reading = await ctl.read(0)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping, Sequence

from .bollard_model import BollardCommand, BollardReading
from .bollard_profile import (
    AnalogSignal,
    BitSignal,
    BollardProfile,
    CommandName,
    CommandPoint,
    CounterSignal,
    ReadPoint,
    SignalName,
)
from .bus import ModbusConnection
from .codec import (
    BIT_TABLES,
    MAX_READ_BITS,
    MAX_READ_REGISTERS,
    ReadSpan,
    Table,
    counter_from_words,
    plan_reads,
)

__all__ = ["BollardController", "RawValues", "decode_reading", "plan_reads_for"]

log = logging.getLogger(__name__)

RawValues = Mapping[tuple[Table, int], int]
"""Values read from the controller by ``(table, wire address)``: bits as 0/1, registers
as 0..65535."""

# Read order: the limit switches (bits) first, so that the measurements read after them
# are at most one round trip younger than the position they go with.
_TABLE_ORDER: tuple[Table, ...] = ("discrete_input", "coil", "input_register", "holding_register")


def plan_reads_for(profile: BollardProfile, indices: Iterable[int]) -> list[tuple[Table, ReadSpan]]:
    """The fewest read requests that cover every mapped signal of bollards ``indices``.

    One request per table where the profile's addresses allow (up to 2000 bits or 125
    registers, reading through unmapped gaps up to ``profile.max_gap``).

    Args:
        profile: The controller's map.
        indices: Bollard indices from 0.

    Returns:
        ``(table, span)`` pairs in the order to read them.
    """
    wanted: dict[Table, set[int]] = {}
    for index in indices:
        for _name, point, width in profile.read_points():
            first = point.address_of(index)
            wanted.setdefault(point.wire_table, set()).update(range(first, first + width))
    plan: list[tuple[Table, ReadSpan]] = []
    for table in _TABLE_ORDER:
        if table in wanted:
            max_count = MAX_READ_BITS if table in BIT_TABLES else MAX_READ_REGISTERS
            # Each word on its own (width 1): a 32-bit counter split across two requests
            # is still decoded right, since decoding looks words up by address.
            spans = plan_reads(wanted[table], max_count=max_count, max_gap=profile.max_gap)
            plan.extend((table, span) for span in spans)
    return plan


def decode_reading(
    profile: BollardProfile,
    index: int,
    values: RawValues,
    *,
    monotonic: float = 0.0,
    latency_s: float = 0.0,
) -> BollardReading:
    """Turn the values read from a controller into bollard ``index``'s reading (pure).

    Args:
        profile: The controller's map.
        index: Bollard index from 0.
        values: Everything read, by ``(table, wire address)``; must cover every mapped
            signal of the bollard (see :func:`plan_reads_for`).
        monotonic: ``time.monotonic()`` when the read completed.
        latency_s: How long the read took.

    Returns:
        The reading; signals the profile does not map are ``None``. ``raw`` holds each
        mapped signal's raw bit or register (a 32-bit counter as one number).

    Raises:
        KeyError: ``values`` lacks a mapped point.
        ValueError: A bit that is not 0/1, or a register outside 0..65535.
    """
    raw: dict[str, int] = {}

    def word(point: ReadPoint, offset: int = 0) -> int:
        table = point.wire_table
        value = values[(table, point.address_of(index) + offset)]
        limit = 1 if table in BIT_TABLES else 0xFFFF
        if not 0 <= value <= limit:
            raise ValueError(f"{table} {point.address_of(index) + offset} read as {value}")
        return value

    def flag(name: SignalName) -> bool | None:
        point = profile.signal(name)
        if point is None:
            return None
        assert isinstance(point, BitSignal)
        raw[name] = word(point)
        return point.decode(raw[name])

    def measure(name: SignalName) -> float | None:
        point = profile.signal(name)
        if point is None:
            return None
        assert isinstance(point, AnalogSignal)
        raw[name] = word(point)
        return point.decode(raw[name])

    def count(name: SignalName) -> int | None:
        point = profile.signal(name)
        if point is None:
            return None
        if isinstance(point, CounterSignal) and point.words == 2:
            assert point.word_order is not None
            raw[name] = counter_from_words([word(point), word(point, 1)], point.word_order)
        else:
            raw[name] = word(point)
        return raw[name]

    return BollardReading(
        raised_limit=flag("raised_limit"),
        lowered_limit=flag("lowered_limit"),
        moving=flag("moving"),
        moving_up=flag("moving_up"),
        moving_down=flag("moving_down"),
        fault_code=count("fault_code"),
        manual_mode=flag("manual_mode"),
        maintenance=flag("maintenance"),
        impact=flag("impact"),
        vehicle_loop=flag("vehicle_loop"),
        pressure_bar=measure("pressure_bar"),
        motor_temp_c=measure("motor_temp_c"),
        mains_ok=flag("mains_ok"),
        battery_ok=flag("battery_ok"),
        cycles=count("cycles"),
        monotonic=monotonic,
        latency_s=latency_s,
        raw=raw,
    )


class BollardController:
    """One bollard controller (one Modbus unit) driving ``bollards`` bollards.

    Args:
        connection: From :meth:`ModbusBus.get_tcp` or :meth:`ModbusBus.get_rtu`; shared
            with other units on the same host or line.
        profile: The controller's register map.
        unit: Modbus unit id; ``None`` = the profile's default.
        bollards: How many bollards this controller drives (1..``profile.max_bollards``).

    Raises:
        ValueError: More bollards than the profile maps.

    Every I/O method raises a :class:`~drivers.modbus.errors.ModbusDeviceError` subclass
    when the controller cannot be reached or answers wrongly, and never returns a stale
    value. Cancellation stays cancellation.
    """

    def __init__(
        self,
        connection: ModbusConnection,
        profile: BollardProfile,
        unit: int | None = None,
        bollards: int = 1,
    ) -> None:
        """Check the bollard count against the profile and plan the reads."""
        if not 1 <= bollards <= profile.max_bollards:
            raise ValueError(
                f"{bollards} bollards: profile {profile.name or profile.model!r} maps "
                f"1..{profile.max_bollards}"
            )
        self.connection = connection
        self.profile = profile
        self.unit = profile.default_unit if unit is None else unit
        self.bollards = bollards
        self._plans = {i: plan_reads_for(profile, [i]) for i in range(bollards)}
        self._plan_all = plan_reads_for(profile, range(bollards))

    @property
    def supported_commands(self) -> frozenset[BollardCommand]:
        """The commands the profile maps (``clear_impact`` aside)."""
        return frozenset(c for c in BollardCommand if self.profile.commands.get(c.value))

    @property
    def can_clear_impact(self) -> bool:
        """Whether the profile maps a reset for a latched impact/tilt alarm."""
        return self.profile.commands.clear_impact is not None

    # ------------------------------------------------------------------ reading

    async def read(self, index: int) -> BollardReading:
        """Read every mapped signal of bollard ``index`` (one request per table, as a rule).

        Args:
            index: Bollard index from 0.

        Returns:
            What the controller reports now; the interpretation (contradictory limits,
            travel time exceeded) is the caller's.

        Raises:
            ModbusDeviceError: The subclass says why; nothing stale is returned.
            ValueError: ``index`` outside ``0..bollards-1``.
        """
        self._check_index(index)
        (reading,) = await self._read([index], self._plans[index])
        return reading

    async def read_all(self) -> list[BollardReading]:
        """Read every bollard of the controller in one set of requests.

        Returns:
            One reading per bollard, by index.

        Raises:
            ModbusDeviceError: The subclass says why; nothing stale is returned.
        """
        return await self._read(range(self.bollards), self._plan_all)

    async def _read(
        self, indices: Iterable[int], plan: Sequence[tuple[Table, ReadSpan]]
    ) -> list[BollardReading]:
        conn, unit = self.connection, self.unit
        started = time.monotonic()
        values: dict[tuple[Table, int], int] = {}
        for table, span in plan:
            if table == "coil" or table == "discrete_input":
                block = [
                    int(b) for b in await conn.read_bits(table, span.address, span.count, unit)
                ]
            else:
                block = await conn.read_registers(table, span.address, span.count, unit)
            values.update(((table, span.address + i), v) for i, v in enumerate(block))
        finished = time.monotonic()
        return [
            decode_reading(
                self.profile, i, values, monotonic=finished, latency_s=finished - started
            )
            for i in indices
        ]

    # ------------------------------------------------------------------ commands

    async def command(self, index: int, command: BollardCommand) -> None:
        """Write ``command`` for bollard ``index`` as the profile says.

        Returns once the controller has acknowledged the write: the command is
        *written*, not *done*. Whether the bollard moves (a controller refuses a raise
        over an occupied vehicle loop, in manual mode, ...) shows in later reads.

        Args:
            index: Bollard index from 0.
            command: What to do.

        Raises:
            ModbusDeviceError: The write failed; with ``request_sent`` true and no
                exception response, the controller may or may not have acted.
            ValueError: ``index`` out of range, or the profile maps no such command.
        """
        await self._write(index, BollardCommand(command).value)

    async def clear_impact(self, index: int) -> None:
        """Reset bollard ``index``'s latched impact/tilt alarm, where the profile allows.

        Args:
            index: Bollard index from 0.

        Raises:
            ModbusDeviceError: The write failed.
            ValueError: ``index`` out of range, or the profile maps no impact reset.
        """
        await self._write(index, "clear_impact")

    async def _write(self, index: int, name: CommandName) -> None:
        self._check_index(index)
        point: CommandPoint | None = self.profile.commands.get(name)
        if point is None:
            why = self.profile.unavailable.get(name, "not in the profile")
            raise ValueError(
                f"profile {self.profile.name or self.profile.model!r}: no {name} ({why})"
            )
        address = point.address_of(index)
        if point.wire_table == "coil":
            await self.connection.write_coil(address, bool(point.value), self.unit)
        else:
            await self.connection.write_register(address, point.value, self.unit)
        # An audit trail of who moved which bollard starts here; the edge logs the why.
        log.info(
            "Bollard %d on %s unit %d: %s written (%s)",
            index,
            self.connection.endpoint,
            self.unit,
            name,
            self.profile.describe(name, index),
        )

    def _check_index(self, index: int) -> None:
        if not 0 <= index < self.bollards:
            raise ValueError(f"bollard {index} outside 0..{self.bollards - 1}")
