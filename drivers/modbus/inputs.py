"""Typed readings from a DI module: what each configured input did since the last read.

No business rules here: the reader says "channel 3 is active, pulsed twice, its loop
is cut"; ``edge/alarms`` decides what that means. Debouncing is left to the caller
(:class:`~drivers.modbus.codec.Debouncer`), so readings stay timely.

Modes, per channel:

``state``
    The live DI bit. A press shorter than the poll interval can be missed.
``latch``
    The module latches an edge; the reader reads the flags and clears the ones that
    were set (read-and-clear). A press of any length is seen; several presses within
    one poll count as one.
``counter``
    The module counts edges; ``pulses`` is the increase since the last read (the
    first read sets the baseline). Every press counts. Best choice on slow RS-485.
``eol``
    The loop resistance from an analog input, classified into an
    :class:`~drivers.modbus.codec.EolState`.

Each read issues one request per kind of point (all DI states, all latches, all
counters, all analog values), plus one write per latch to clear.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .bus import ModbusConnection
from .codec import (
    MAX_READ_BITS,
    MAX_READ_REGISTERS,
    EolScheme,
    EolState,
    ReadSpan,
    Table,
    bits_from_word,
    counter_from_words,
    counter_increase,
    eol_scheme,
    plan_reads,
    resistance_from_voltage,
    span_values,
)
from .errors import DeviceExceptionResponse, ModbusDeviceError
from .profile import CapabilityName, PointRef, Profile

__all__ = [
    "ChannelMode",
    "ChannelReading",
    "ChannelSpec",
    "DIModuleReader",
    "EolParams",
    "ModuleReading",
]

ChannelMode = Literal["state", "latch", "counter", "eol"]
_MODE_NEEDS: dict[str, CapabilityName] = {"latch": "latch", "counter": "counter", "eol": "analog"}


class EolParams(BaseModel):
    """How a supervised loop is wired and classified."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    scheme: Literal["galaxy", "ds2", "dsc", "custom"] = Field(
        default="galaxy", description="resistor convention of the panel the loop copies"
    )
    bands: tuple[tuple[EolState, float], ...] | None = Field(
        default=None,
        description="custom scheme: (state, upper edge in ohms) lowest first, last edge .inf",
    )
    violated: tuple[EolState, ...] = Field(
        default=(EolState.ALARM,), description="custom scheme: states meaning 'operated'"
    )
    hysteresis: float = Field(
        default=0.05, ge=0, lt=1, description="fraction a reading must pass a band edge by"
    )
    supply_v: float | None = Field(default=None, gt=0, description="loop feed, voltage inputs")
    series_ohm: float | None = Field(
        default=None, gt=0, description="feed resistor, voltage inputs"
    )

    @model_validator(mode="after")
    def _custom(self) -> Self:
        if (self.scheme == "custom") != (self.bands is not None):
            raise ValueError("bands are given with scheme 'custom', and only then")
        if (self.supply_v is None) != (self.series_ohm is None):
            raise ValueError("give both supply_v and series_ohm, or neither")
        self.build_scheme()
        return self

    def build_scheme(self) -> EolScheme:
        """The classification table these parameters describe."""
        if self.scheme != "custom":
            return eol_scheme(self.scheme)
        assert self.bands is not None
        return EolScheme.custom("custom", self.bands, self.violated)


class ChannelSpec(BaseModel):
    """One input to read and how."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    channel: int = Field(ge=0, le=63, description="channel index from 0, as in the profile")
    mode: ChannelMode = "state"
    active_level: Literal["high", "low"] = Field(
        default="high", description="'low' for a normally-closed contact: open = active"
    )
    eol: EolParams | None = Field(default=None, description="loop wiring, mode 'eol' only")

    @model_validator(mode="after")
    def _eol_only(self) -> Self:
        if self.eol is not None and self.mode != "eol":
            raise ValueError(f"channel {self.channel}: eol parameters need mode 'eol'")
        if self.mode == "eol" and self.eol is None:
            object.__setattr__(self, "eol", EolParams())
        return self


@dataclass(frozen=True, slots=True)
class ChannelReading:
    """What one channel did.

    Attributes:
        channel: Channel index.
        mode: How it was read.
        active: Logical state after polarity (EOL: the loop is violated); ``None`` if
            the reading cannot tell (EOL ``unknown``).
        pulses: Activations since the previous read, from the latch or counter (state
            and EOL modes: 1 if an inactive -> active change was seen between reads).
        eol: Loop state, EOL mode only.
        raw: The raw value behind the reading: DI bit (state), latch flag (latch),
            counter (counter) or analog counts (EOL).
        ohms: Loop resistance, EOL mode only (``inf`` = open).
        counter_reset: The counter went backwards (module restarted); ``pulses`` then
            counts from zero.
    """

    channel: int
    mode: ChannelMode
    active: bool | None
    pulses: int
    eol: EolState | None = None
    raw: int | None = None
    ohms: float | None = None
    counter_reset: bool = False


@dataclass(frozen=True, slots=True)
class ModuleReading:
    """One read of a module.

    Attributes:
        unit: Modbus unit id.
        channels: Readings by channel index.
        monotonic: ``time.monotonic()`` when the read completed.
        wall_time: ``time.time()`` when the read completed.
        latency_s: From the start of the read to the last reply, including any wait for the
            connection shared with other units on the same host or RS-485 line (so a busy
            line shows here, not only a slow module).
        requests: Modbus transactions used.
    """

    unit: int
    channels: Mapping[int, ChannelReading]
    monotonic: float
    wall_time: float
    latency_s: float
    requests: int = 0


@dataclass(slots=True)
class _Plan:
    """Reads for one kind of point: which address each channel's value is at."""

    table: Table
    spans: list[ReadSpan]
    addresses: dict[int, int]
    width: int = 1


@dataclass(slots=True)
class _Memory:
    """What the reader remembers between reads; only committed after a full success."""

    states: dict[int, bool] = field(default_factory=dict)
    counters: dict[int, int] = field(default_factory=dict)
    eol: dict[int, EolState] = field(default_factory=dict)
    violated: dict[int, bool] = field(default_factory=dict)
    # Latches cleared during a read that then failed: their pulses are owed to the next read.
    owed: dict[int, int] = field(default_factory=dict)


def _plan(ref: PointRef, channels: Sequence[int], width: int, max_count: int) -> _Plan:
    addresses = {ch: ref.address_of(ch) for ch in channels}
    spans = plan_reads(addresses.values(), width=width, max_count=max_count)
    return _Plan(ref.wire_table, spans, addresses, width)


def check_channel(profile: Profile, spec: ChannelSpec) -> None:
    """Raise ValueError when ``profile``'s module cannot read ``spec`` (no I/O: for config
    checks before anything starts, and for the reader itself)."""
    if spec.channel >= profile.channels:
        raise ValueError(
            f"channel {spec.channel}: {profile.model} has channels 0..{profile.channels - 1}"
        )
    needs = _MODE_NEEDS.get(spec.mode)
    if needs is not None and not profile.supports(needs):
        why = profile.unavailable.get(needs, "not in the profile")
        raise ValueError(
            f"channel {spec.channel}: {profile.model} cannot do mode {spec.mode!r}: {why}"
        )
    analog = profile.capabilities.analog
    if spec.mode == "eol" and analog is not None and analog.quantity == "voltage":
        assert spec.eol is not None
        if spec.eol.supply_v is None:
            raise ValueError(
                f"channel {spec.channel}: {profile.model} measures volts; "
                "give eol.supply_v and eol.series_ohm to get ohms"
            )


class DIModuleReader:
    """Reads the configured channels of one DI module (one unit id) on a shared connection.

    Args:
        connection: From :meth:`ModbusBus.get_tcp` or :meth:`ModbusBus.get_rtu`.
        profile: The module's register map.
        unit: Modbus unit id; ``None`` = the profile's default.
        channels: What to read on which channel.
        use_packed_word: Read the DI states from the profile's packed word register
            instead of the bit table (same cost, one register).

    Raises:
        ValueError: A channel the module does not have, twice, or a mode its profile
            does not support (the message says what serves instead).
    """

    def __init__(
        self,
        connection: ModbusConnection,
        profile: Profile,
        unit: int | None,
        channels: Sequence[ChannelSpec],
        *,
        use_packed_word: bool = False,
    ) -> None:
        """Validate the channel list against the profile and plan the requests."""
        self.connection = connection
        self.profile = profile
        self.unit = profile.default_unit if unit is None else unit
        self.specs: dict[int, ChannelSpec] = {}
        for spec in channels:
            self._check_spec(spec)
            self.specs[spec.channel] = spec
        if not self.specs:
            raise ValueError("no channels to read")
        caps = profile.capabilities
        if use_packed_word and caps.state.packed_word is None:
            raise ValueError(f"profile {profile.name!r} has no packed DI word")
        self._use_packed_word = use_packed_word
        by_mode = {
            mode: sorted(ch for ch, s in self.specs.items() if s.mode == mode)
            for mode in ("state", "latch", "counter", "eol")
        }
        di_channels = sorted(by_mode["state"] + by_mode["latch"] + by_mode["counter"])
        self._state_plan = _plan(caps.state, di_channels, 1, MAX_READ_BITS) if di_channels else None
        self._latch_plan = (
            _plan(caps.latch.read, by_mode["latch"], 1, MAX_READ_BITS)
            if caps.latch and by_mode["latch"]
            else None
        )
        self._counter_plan = (
            _plan(caps.counter.read, by_mode["counter"], 2, MAX_READ_REGISTERS)
            if caps.counter and by_mode["counter"]
            else None
        )
        self._analog_plan = (
            _plan(caps.analog.read, by_mode["eol"], 1, MAX_READ_REGISTERS)
            if caps.analog and by_mode["eol"]
            else None
        )
        self._schemes = {
            ch: s.eol.build_scheme() for ch, s in self.specs.items() if s.eol is not None
        }
        self._memory = _Memory()
        self._lock = asyncio.Lock()

    def _check_spec(self, spec: ChannelSpec) -> None:
        if spec.channel in self.specs:
            raise ValueError(f"channel {spec.channel} configured twice")
        check_channel(self.profile, spec)

    def reset(self) -> None:
        """Forget baselines and previous states (the next read starts afresh)."""
        owed = self._memory.owed
        self._memory = _Memory(owed=owed)

    # ------------------------------------------------------------------ reading

    async def _read_plan(self, plan: _Plan) -> list[list[int]]:
        blocks: list[list[int]] = []
        conn, unit = self.connection, self.unit
        for span in plan.spans:
            table = plan.table
            if table == "coil" or table == "discrete_input":
                bits = await conn.read_bits(table, span.address, span.count, unit)
                blocks.append([int(b) for b in bits])
            else:
                blocks.append(await conn.read_registers(table, span.address, span.count, unit))
        return blocks

    @staticmethod
    def _values(plan: _Plan, blocks: list[list[int]]) -> dict[int, list[int]]:
        return {
            ch: span_values(plan.spans, blocks, address, plan.width)
            for ch, address in plan.addresses.items()
        }

    async def _read_levels(self) -> dict[int, bool]:
        plan = self._state_plan
        if plan is None:
            return {}
        word = self.profile.capabilities.state.packed_word
        if self._use_packed_word and word is not None:
            assert word.table is not None
            assert word.address is not None
            (value,) = await self.connection.read_registers(word.table, word.address, 1, self.unit)
            bits = bits_from_word(value, self.profile.channels)
            return {ch: bits[ch] for ch in plan.addresses}
        return {ch: bool(v[0]) for ch, v in self._values(plan, await self._read_plan(plan)).items()}

    async def _clear_latches(self, latched: list[int], done: list[int], trying: list[int]) -> None:
        latch = self.profile.capabilities.latch
        assert latch is not None
        clear = latch.clear
        conn, unit = self.connection, self.unit
        # stride 0 = one write clears every channel (ICP DAS). It also clears a latch
        # set between our read and this write; reading latches last, right before the
        # clear, keeps that window to one round trip.
        batches = [latched] if clear.stride == 0 else [[ch] for ch in latched]
        for batch in batches:
            trying[:] = batch
            address = clear.address_of(batch[0])
            if clear.wire_table == "coil":
                await conn.write_coil(address, bool(clear.value), unit)
            else:
                await conn.write_register(address, clear.value, unit)
            done.extend(batch)
            trying.clear()

    async def read(self) -> ModuleReading:
        """Read every configured channel.

        Returns:
            The readings; pulses are counted since the previous successful read.

        Raises:
            ModbusDeviceError: The subclass says why; nothing stale is returned, and
                no pulse is lost: latches cleared before the failure are reported by
                the next successful read.
        """
        async with self._lock:
            return await self._read_locked()

    async def _read_locked(self) -> ModuleReading:
        memory = self._memory
        before = self.connection.transactions
        started = time.monotonic()
        levels = await self._read_levels()

        counters: dict[int, int] = {}
        counter = self.profile.capabilities.counter
        if self._counter_plan is not None and counter is not None:
            order = counter.word_order
            values = self._values(self._counter_plan, await self._read_plan(self._counter_plan))
            counters = {ch: counter_from_words(words, order) for ch, words in values.items()}

        analog_raw: dict[int, int] = {}
        if self._analog_plan is not None:
            values = self._values(self._analog_plan, await self._read_plan(self._analog_plan))
            analog_raw = {ch: v[0] for ch, v in values.items()}

        latched: dict[int, bool] = {}
        if self._latch_plan is not None:
            values = self._values(self._latch_plan, await self._read_plan(self._latch_plan))
            latched = {ch: bool(v[0]) for ch, v in values.items()}
            to_clear = [ch for ch, flag in latched.items() if flag]
            if to_clear:
                done: list[int] = []
                trying: list[int] = []
                try:
                    await self._clear_latches(to_clear, done, trying)
                except (ModbusDeviceError, asyncio.CancelledError) as exc:
                    # At-least-once: a clear whose outcome is unknown (sent, no answer)
                    # may have wiped the latch, so its press is owed to the next read;
                    # if the clear did not happen, the latch is still set and the press
                    # is counted twice. A duplicate alarm beats a lost one.
                    refused = isinstance(exc, DeviceExceptionResponse) or (
                        isinstance(exc, ModbusDeviceError) and not exc.request_sent
                    )
                    for ch in done + ([] if refused else trying):
                        memory.owed[ch] = memory.owed.get(ch, 0) + 1
                    raise
        finished = time.monotonic()

        readings: dict[int, ChannelReading] = {}
        for ch, spec in sorted(self.specs.items()):
            readings[ch] = self._reading(spec, levels, latched, counters, analog_raw)
        memory.owed.clear()
        return ModuleReading(
            unit=self.unit,
            channels=readings,
            monotonic=finished,
            wall_time=time.time(),
            latency_s=finished - started,
            requests=self.connection.transactions - before,
        )

    def _reading(
        self,
        spec: ChannelSpec,
        levels: dict[int, bool],
        latched: dict[int, bool],
        counters: dict[int, int],
        analog_raw: dict[int, int],
    ) -> ChannelReading:
        memory, ch = self._memory, spec.channel
        owed = memory.owed.get(ch, 0)
        if spec.mode == "eol":
            return self._eol_reading(spec, analog_raw[ch], owed)
        level = levels[ch]
        active = level != (spec.active_level == "low")
        was_active = memory.states.get(ch)
        memory.states[ch] = active
        if spec.mode == "latch":
            flag = latched[ch]
            return ChannelReading(ch, "latch", active, int(flag) + owed, raw=int(flag))
        if spec.mode == "counter":
            value = counters[ch]
            previous = memory.counters.get(ch)
            memory.counters[ch] = value
            if previous is None:
                return ChannelReading(ch, "counter", active, owed, raw=value)
            edges, was_reset = counter_increase(previous, value)
            return ChannelReading(
                ch, "counter", active, edges + owed, raw=value, counter_reset=was_reset
            )
        rose = was_active is False and active
        return ChannelReading(ch, "state", active, int(rose) + owed, raw=int(level))

    def _eol_reading(self, spec: ChannelSpec, raw: int, owed: int) -> ChannelReading:
        memory, ch = self._memory, spec.channel
        analog = self.profile.capabilities.analog
        assert analog is not None
        assert spec.eol is not None
        if analog.quantity == "state":
            # The module classified the loop itself (a 4-state EOL input): map its code.
            assert analog.state_codes is not None
            code = analog.state_codes.get(raw)
            state = EolState(code) if code is not None else EolState.UNKNOWN
            violated = None if state is EolState.UNKNOWN else state is not EolState.NORMAL
            rose = memory.violated.get(ch) is False and violated is True
            if violated is not None:
                memory.violated[ch] = violated
            memory.eol[ch] = state
            return ChannelReading(ch, "eol", violated, int(rose) + owed, eol=state, raw=raw)
        value = analog.to_units(raw)
        if analog.quantity == "voltage":
            assert spec.eol.supply_v is not None
            assert spec.eol.series_ohm is not None
            ohms = (
                math.inf
                if math.isinf(value)
                else resistance_from_voltage(value, spec.eol.supply_v, spec.eol.series_ohm)
            )
        else:
            ohms = value
        scheme = self._schemes[ch]
        state = scheme.classify(ohms, memory.eol.get(ch), spec.eol.hysteresis)
        memory.eol[ch] = state
        violated = scheme.is_violated(state)
        rose = memory.violated.get(ch) is False and violated is True
        if violated is not None:
            memory.violated[ch] = violated
        return ChannelReading(ch, "eol", violated, int(rose) + owed, eol=state, raw=raw, ohms=ohms)
