"""A rising-bollard controller that speaks real Modbus (pymodbus server), for tests and demos.

It answers a bollard profile's map (``generic-plc`` by default, or a site's own YAML) and
moves simulated bollards the way a controller does: a raise or lower starts travel, the
moving flags come on, a limit switch is made only at the end of travel; stop halts midway;
emergency fast operation (EFO) raises faster; a normal raise is refused (ignored) while the
vehicle loop is occupied, an EFO is not; the cycle counter counts completed raises; the
hydraulic pressure drifts; the motor warms with each travel. Knobs inject the faults an edge
must recognise: impact, jam, fault code, contradictory limit switches, mains loss, manual
release, and the network faults of the DI module simulator (unplug, silence, exception
replies, garbage).

Time is ``time.monotonic()``: the physics is evaluated lazily at every request and every
knob, so nothing runs in the background and a test waits for a condition, never a sleep.

The map comes from the profile, but the encoding (bit and word layout, scaling, word
order) is written here again, *not* taken from ``drivers/modbus/bollard.py``: a mistake in
the driver's decoder must not be repeated here, where the tests would not see it.

Example:
    async with BollardSimulator("generic-plc", bollards=2, travel_time=0.5) as sim:
        ctl = BollardController(bus.get_tcp("127.0.0.1", sim.port), sim.profile, 1, 2)
        sim.set_vehicle_loop(0, True)
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
import urllib.parse
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from drivers.modbus.bollard_profile import (
    COMMAND_NAMES,
    AnalogSignal,
    BitSignal,
    BollardProfile,
    CounterSignal,
    load_bollard_profile,
)
from drivers.modbus.profile import PointRef

__all__ = ["BollardSimulator", "BollardState", "CommandRecord", "run_bollard_sim"]

log = logging.getLogger(__name__)

GarbageKind = Literal["noise", "truncated"]
UnplugMode = Literal["refuse", "silent"]

_FC_TABLE = {
    1: "coil",
    2: "discrete_input",
    3: "holding_register",
    4: "input_register",
    5: "coil",
    15: "coil",
    6: "holding_register",
    16: "holding_register",
}
_WRITE_FC = frozenset({5, 6, 15, 16})
_TABLES = ("coil", "discrete_input", "holding_register", "input_register")

AMBIENT_C = 20.0
NOMINAL_BAR = 150.0  # a typical hydraulic bollard power pack works at 100-180 bar
MAX_BAR = 400.0
HEAT_PER_TRAVEL_C = 0.8  # a few cycles a minute warm a motor by tens of degrees
COOLING_TAU_S = 600.0  # motors cool back to ambient over tens of minutes
JAM_SHORTFALL = 0.1  # a jammed bollard stalls this fraction of travel short of its limit


@dataclass(frozen=True, slots=True)
class CommandRecord:
    """A command write the controller received, for command round-trip measurements.

    Attributes:
        bollard: Bollard index.
        command: ``raise``, ``lower``, ``stop``, ``emergency_raise`` or ``clear_impact``.
        accepted: Whether the controller acted on it.
        reason: Why not, when ignored (``vehicle loop occupied``, ``manual mode``, ...).
        local: Given at the cabinet (:meth:`BollardSimulator.local_command`), not over Modbus.
        monotonic: ``time.monotonic()`` when the write was processed.
        wall_time: ``time.time()`` at the same moment.
    """

    bollard: int
    command: str
    accepted: bool
    reason: str
    local: bool
    monotonic: float
    wall_time: float


@dataclass(frozen=True, slots=True)
class BollardState:
    """What one simulated bollard is doing (the truth the controller's signals report).

    Attributes:
        position: 0.0 = fully lowered, 1.0 = fully raised.
        direction: +1 raising, -1 lowering, 0 still.
        efo: The current motion is an emergency fast operation.
        raised_limit: Raised limit switch as reported (forced on by ``set_both_limits``).
        lowered_limit: Lowered limit switch as reported.
        jammed: Travel stalls short of the limit, motor still running.
        vehicle_loop: Loop occupied.
        impact: Impact/tilt alarm latched.
        fault_code: The fault register.
        mains_ok: Mains present.
        battery_ok: Accumulator / battery charged.
        maintenance: Manual release / maintenance engaged.
        manual_mode: Cabinet selector in manual.
        pressure_bar: Hydraulic pressure.
        motor_temp_c: Motor temperature.
        cycles: Completed raises.
        limit_reached_at: ``time.monotonic()`` at which the last travel reached its limit
            (computed exactly, not when it was noticed), ``None`` before the first.
    """

    position: float
    direction: int
    efo: bool
    raised_limit: bool
    lowered_limit: bool
    jammed: bool
    vehicle_loop: bool
    impact: bool
    fault_code: int
    mains_ok: bool
    battery_ok: bool
    maintenance: bool
    manual_mode: bool
    pressure_bar: float
    motor_temp_c: float
    cycles: int
    limit_reached_at: float | None

    @property
    def moving(self) -> bool:
        """Whether the motor runs."""
        return self.direction != 0


class _Bollard:
    """One bollard's physics, advanced lazily to the time it is looked at."""

    def __init__(self, now: float) -> None:
        self.position = 0.0
        self.direction = 0
        self.speed = 0.0  # fraction of full travel per second
        self.efo = False
        self.jammed = False
        self.both_limits = False
        self.loop = False
        self.impact = False
        self.fault = 0
        self.mains = True
        self.battery = True
        self.maintenance = False
        self.manual = False
        self.pressure = NOMINAL_BAR
        self.drift = 0.0  # bar per second
        self.temp = AMBIENT_C
        self.cycles = 0
        self.reached_at: float | None = None
        self.updated = now

    def advance(self, now: float) -> None:
        dt = now - self.updated
        if dt <= 0:
            return
        self.updated = now
        self.temp = AMBIENT_C + (self.temp - AMBIENT_C) * math.exp(-dt / COOLING_TAU_S)
        self.pressure = min(MAX_BAR, max(0.0, self.pressure + self.drift * dt))
        if not self.direction:
            return
        up = self.direction > 0
        target = 1.0 if up else 0.0
        step = self.speed * dt
        if self.jammed:
            # The motor keeps running against the jam; the bollard never gets there.
            stall = target - self.direction * JAM_SHORTFALL
            if up:
                self.position = max(self.position, min(self.position + step, stall))
            else:
                self.position = min(self.position, max(self.position - step, stall))
            return
        remaining = abs(target - self.position)
        if step < remaining:
            self.position += self.direction * step
            return
        self.position = target
        self.reached_at = now - (step - remaining) / self.speed
        self.direction = 0
        self.efo = False
        self.temp += HEAT_PER_TRAVEL_C
        if up:
            self.cycles = (self.cycles + 1) & 0xFFFF_FFFF

    def start(self, direction: int, speed: float, *, efo: bool = False) -> None:
        target = 1.0 if direction > 0 else 0.0
        if self.position == target and not self.jammed:
            self.direction = 0  # already there: nothing to do, and no cycle to count
            return
        self.direction, self.speed, self.efo = direction, speed, efo

    def halt(self) -> None:
        self.direction = 0
        self.efo = False

    def state(self) -> BollardState:
        return BollardState(
            position=self.position,
            direction=self.direction,
            efo=self.efo,
            raised_limit=self.position >= 1.0 or self.both_limits,
            lowered_limit=self.position <= 0.0 or self.both_limits,
            jammed=self.jammed,
            vehicle_loop=self.loop,
            impact=self.impact,
            fault_code=self.fault,
            mains_ok=self.mains,
            battery_ok=self.battery,
            maintenance=self.maintenance,
            manual_mode=self.manual,
            pressure_bar=self.pressure,
            motor_temp_c=self.temp,
            cycles=self.cycles,
            limit_reached_at=self.reached_at,
        )


def _garble(packet: bytes, kind: GarbageKind) -> bytes:
    if kind == "noise":
        # XOR keeps the length but breaks the MBAP protocol id (0x0000 -> 0xA5A5).
        return bytes(b ^ 0xA5 for b in packet)
    # A well-framed reply one byte short of what its header promises.
    pdu = packet[7:-1] if len(packet) > 8 else packet[7:]
    return packet[:4] + (len(pdu) + 1).to_bytes(2, "big") + packet[6:7] + pdu


class BollardSimulator:
    """A simulated bollard controller on a real Modbus TCP socket.

    Args:
        profile: Built-in profile name, path to a profile YAML, or a loaded profile.
        bollards: Bollards the controller drives (1..the profile's ``max_bollards``).
        host: Address to bind.
        port: TCP port; 0 picks a free one (read it back from :attr:`port`).
        travel_time: Seconds for a full normal raise or lower.
        efo_travel_time: Seconds for a full emergency raise.
        http_port: Also serve the HTTP control endpoint on this port (0 = any free one).
        unit: Unit id to answer (default: the profile's); over TCP other ids get
            exception 0x0B, like a gateway.
        http_host: Address for the HTTP control endpoint (default: ``host``).

    Attributes:
        profile: The map answered.
        port: The bound Modbus TCP port.
        http_port: The bound HTTP control port, or ``None``.
        last_command: The last command write received (accepted or not).
        commands: The last 1000 command writes, oldest first.
        requests_seen: Modbus requests that reached the register map.

    Call the control methods from the event loop the simulator runs in. Every bollard
    starts lowered, mains on, accumulator charged, in auto mode.
    """

    def __init__(
        self,
        profile: str | Path | BollardProfile = "generic-plc",
        *,
        bollards: int = 2,
        host: str = "127.0.0.1",
        port: int = 0,
        travel_time: float = 3.0,
        efo_travel_time: float = 1.5,
        http_port: int | None = None,
        unit: int | None = None,
        http_host: str | None = None,
    ) -> None:
        """Prepare the simulator; nothing listens until it is entered."""
        self.profile = (
            profile if isinstance(profile, BollardProfile) else load_bollard_profile(profile)
        )
        if not 1 <= bollards <= self.profile.max_bollards:
            raise ValueError(
                f"bollards must be 1..{self.profile.max_bollards} for "
                f"{self.profile.name or self.profile.model}, got {bollards}"
            )
        if not (travel_time > 0 and efo_travel_time > 0):
            raise ValueError("travel times must be positive")
        self.unit = self.profile.default_unit if unit is None else unit
        if not 0 <= self.unit <= 247:
            raise ValueError(f"unit {self.unit} outside 0..247")
        self.bollards = bollards
        self.host = host
        self.port = port
        self.travel_time = travel_time
        self.efo_travel_time = efo_travel_time
        self.http_port = http_port
        self.http_host = http_host or host
        self.last_command: CommandRecord | None = None
        self.commands: deque[CommandRecord] = deque(maxlen=1000)
        self.requests_seen = 0
        now = time.monotonic()
        self._bollards = [_Bollard(now) for _ in range(bollards)]
        self._sizes = self._table_sizes()
        self._command_points = self._index_commands()
        self._server: ModbusTcpServer | None = None
        self._http: asyncio.Server | None = None
        self._plugged = True
        self._silent = False
        self._exception: ExcCodes | None = None
        self._garbage: GarbageKind | None = None

    # ------------------------------------------------------------------ the map

    def _points(self) -> list[tuple[str, PointRef, int]]:
        points: list[tuple[str, PointRef, int]] = list(self.profile.read_points())
        for name in COMMAND_NAMES:
            command = self.profile.commands.get(name)
            if command is not None:
                points.append((name, command, 1))
        return points

    def _table_sizes(self) -> dict[str, int]:
        sizes = dict.fromkeys(_TABLES, 1)
        for _name, point, width in self._points():
            end = point.address_of(self.bollards - 1) + width
            sizes[point.wire_table] = max(sizes[point.wire_table], end)
        return sizes

    def _index_commands(self) -> dict[tuple[str, int], list[tuple[int, str, int]]]:
        # (table, address) -> [(bollard, command, value that triggers it)]
        index: dict[tuple[str, int], list[tuple[int, str, int]]] = {}
        for i in range(self.bollards):
            for name in COMMAND_NAMES:
                point = self.profile.commands.get(name)
                if point is not None:
                    key = (point.wire_table, point.address_of(i))
                    index.setdefault(key, []).append((i, name, point.value))
        return index

    def _render(self, table: str) -> list[int]:
        out = [0] * self._sizes[table]
        for i, bollard in enumerate(self._bollards):
            state = bollard.state()
            truth: dict[str, float | int | bool] = {
                "raised_limit": state.raised_limit,
                "lowered_limit": state.lowered_limit,
                "moving": state.moving,
                "moving_up": state.direction > 0,
                "moving_down": state.direction < 0,
                "fault_code": state.fault_code,
                "manual_mode": state.manual_mode,
                "maintenance": state.maintenance,
                "impact": state.impact,
                "vehicle_loop": state.vehicle_loop,
                "pressure_bar": state.pressure_bar,
                "motor_temp_c": state.motor_temp_c,
                "mains_ok": state.mains_ok,
                "battery_ok": state.battery_ok,
                "cycles": state.cycles,
            }
            for name, point, _width in self.profile.read_points():
                if point.wire_table != table:
                    continue
                address = point.address_of(i)
                value = truth[name]
                if isinstance(point, BitSignal):
                    level = int(bool(value) != point.invert)
                    if point.bit is None:
                        out[address] = level
                    else:
                        out[address] |= level << point.bit
                elif isinstance(point, AnalogSignal):
                    count = round((float(value) - point.offset) / point.scale)
                    if point.signed:
                        out[address] = max(-0x8000, min(0x7FFF, count)) & 0xFFFF
                    else:
                        out[address] = max(0, min(0xFFFF, count))
                elif isinstance(point, CounterSignal) and point.words == 2:
                    high, low = int(value) >> 16 & 0xFFFF, int(value) & 0xFFFF
                    first, second = (high, low) if point.word_order == "high_first" else (low, high)
                    out[address], out[address + 1] = first, second
                else:
                    out[address] = int(value) & 0xFFFF
        # Command coils and registers read back 0: the controller clears them once acted on.
        return out

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Self:
        """Start listening (Modbus, and HTTP if asked)."""
        await self._listen()
        if self.http_port is not None:
            self._http = await asyncio.start_server(
                self._handle_http, self.http_host, self.http_port
            )
            self.http_port = int(self._http.sockets[0].getsockname()[1])
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop serving and close every connection."""
        if self._http is not None:
            self._http.close()
            await self._http.wait_closed()
            self._http = None
        await self._stop_listening()

    def _devices(self) -> list[SimDevice]:
        def bits(n: int) -> list[SimData]:
            return [SimData(0, count=(n + 15) // 16 * 16, values=False, datatype=DataType.BITS)]

        def regs(n: int) -> list[SimData]:
            return [SimData(0, count=n, values=0, datatype=DataType.REGISTERS)]

        s = self._sizes
        tables = (
            bits(s["coil"]),
            bits(s["discrete_input"]),
            regs(s["holding_register"]),
            regs(s["input_register"]),
        )
        devices = [SimDevice(self.unit, simdata=tables, action=partial(self._action, True))]
        if self.unit != 0:
            # Unit 0 is pymodbus' catch-all: answer unknown units like a gateway would.
            devices.append(SimDevice(0, simdata=tables, action=partial(self._action, False)))
        return devices

    async def _listen(self) -> None:
        server = ModbusTcpServer(
            self._devices(), address=(self.host, self.port), trace_packet=self._trace_packet
        )
        await server.serve_forever(background=True)
        self._server = server
        self.port = int(server.transport.sockets[0].getsockname()[1])
        log.debug(
            "Bollard simulator %s listening on %s:%d", self.profile.name, self.host, self.port
        )

    async def _stop_listening(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            await server.shutdown()  # closes the listening socket and every connection

    # ------------------------------------------------------------------ pymodbus hooks

    def _trace_packet(self, sending: bool, data: bytes) -> bytes:
        if not sending:
            return data
        if self._silent:
            return b""
        if self._garbage is not None:
            return _garble(data, self._garbage)
        return data

    async def _action(
        self,
        known_unit: bool,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        # Called by pymodbus for every access, before it reads or writes `registers`
        # (the whole table). The physics is the truth; the table is re-rendered from it.
        self.requests_seen += 1
        if self._exception is not None:
            return self._exception
        if not known_unit:
            return ExcCodes.GATEWAY_NO_RESPONSE
        table = _FC_TABLE.get(function_code)
        if table is None:
            return ExcCodes.ILLEGAL_FUNCTION
        if values is not None:
            if self._silent:
                return None  # the request "never arrived": leave the bollards alone
            return self._write(table, address, [int(v) for v in values])
        if function_code in _WRITE_FC:
            return None  # pymodbus reads back after a write to build the echo: keep it
        self._advance()
        rendered = self._render(table)
        if table in ("coil", "discrete_input"):
            padded = rendered + [0] * (16 * (len(registers) - 1) - len(rendered))
            packed = [
                sum(1 << i for i, bit in enumerate(padded[r * 16 : r * 16 + 16]) if bit)
                for r in range(len(registers) - 1)
            ]
            registers[: len(packed)] = packed
        else:
            registers[: len(rendered)] = rendered
        return None

    def _write(self, table: str, address: int, values: Sequence[int]) -> ExcCodes | None:
        targets = [self._command_points.get((table, address + k)) for k in range(len(values))]
        if any(t is None for t in targets):
            return ExcCodes.ILLEGAL_ADDRESS  # only command points are writable
        for target, value in zip(targets, values, strict=True):
            assert target is not None
            for bollard, name, trigger in target:
                # Writing 0 to a command coil (someone resetting it) does nothing.
                if value == trigger:
                    self._execute(bollard, name, local=False)
        return None

    # ------------------------------------------------------------------ physics

    def _advance(self) -> None:
        now = time.monotonic()
        for bollard in self._bollards:
            bollard.advance(now)

    def _bollard(self, index: int) -> _Bollard:
        if not 0 <= index < self.bollards:
            raise ValueError(f"bollard {index} outside 0..{self.bollards - 1}")
        self._advance()
        return self._bollards[index]

    def _execute(self, index: int, command: str, *, local: bool) -> CommandRecord:
        if command not in COMMAND_NAMES:
            raise ValueError(
                f"unknown command {command!r}; commands are {', '.join(COMMAND_NAMES)}"
            )
        b = self._bollard(index)
        reason = ""
        if command == "stop":
            b.halt()  # stop always works: it is the safe command
        elif command == "clear_impact":
            b.impact = False
        elif b.maintenance:
            reason = "maintenance / manual release engaged"
        elif b.manual and not local:
            reason = "manual mode: remote commands ignored"
        elif command == "emergency_raise":
            if b.mains or b.battery:
                b.start(+1, 1.0 / self.efo_travel_time, efo=True)
            else:
                reason = "no mains and accumulator not charged"
        elif not b.mains:
            reason = "no mains"
        elif command == "raise":
            if b.loop:
                reason = "vehicle loop occupied"
            elif not (b.efo and b.direction > 0):  # a raise does not slow down an EFO
                b.start(+1, 1.0 / self.travel_time)
        else:  # lower
            b.start(-1, 1.0 / self.travel_time)
        record = CommandRecord(
            index, command, not reason, reason, local, time.monotonic(), time.time()
        )
        self.last_command = record
        self.commands.append(record)
        if reason:
            log.debug("Bollard simulator: bollard %d ignored %s: %s", index, command, reason)
        return record

    # ------------------------------------------------------------------ control API

    def state(self, index: int) -> BollardState:
        """What bollard ``index`` is doing now."""
        return self._bollard(index).state()

    def local_command(self, index: int, command: str) -> CommandRecord:
        """Operate bollard ``index`` from the cabinet (key switch, push button), not over
        Modbus: the position changes with no Modbus command, as the edge must notice.

        Args:
            index: Bollard index.
            command: ``raise``, ``lower``, ``stop``, ``emergency_raise`` or ``clear_impact``.

        Returns:
            What the controller did with it.
        """
        return self._execute(index, command, local=True)

    def inject_impact(self, index: int) -> None:
        """Trip the impact/tilt sensor; it stays latched until ``clear_impact``."""
        self._bollard(index).impact = True

    def set_vehicle_loop(self, index: int, occupied: bool) -> None:
        """Occupy or free the vehicle loop. A normal raise in progress stops when the loop
        becomes occupied (the controller's safety); an EFO carries on."""
        b = self._bollard(index)
        b.loop = bool(occupied)
        if b.loop and b.direction > 0 and not b.efo:
            b.halt()

    def jam(self, index: int, jammed: bool = True) -> None:
        """Jam the bollard: travel starts but stalls short of the limit, motor running."""
        self._bollard(index).jammed = bool(jammed)

    def set_fault(self, index: int, code: int) -> None:
        """Set the controller's fault register (0 = no fault)."""
        if not 0 <= code <= 0xFFFF:
            raise ValueError(f"fault code {code} outside 0..65535")
        self._bollard(index).fault = code

    def set_both_limits(self, index: int, on: bool = True) -> None:
        """Force both limit switches made (a contradictory reading, e.g. a shorted cable)."""
        self._bollard(index).both_limits = bool(on)

    def set_mains(self, index: int, ok: bool) -> None:
        """Cut or restore mains. Without mains a normal travel stops; an EFO goes on from
        the accumulator if it is charged."""
        b = self._bollard(index)
        b.mains = bool(ok)
        if not b.mains and b.direction and not (b.efo and b.battery):
            b.halt()

    def set_battery(self, index: int, ok: bool) -> None:
        """Set whether the back-up battery / accumulator is charged."""
        self._bollard(index).battery = bool(ok)

    def set_pressure(self, index: int, bar: float, drift_bar_per_s: float | None = None) -> None:
        """Set the hydraulic pressure and, optionally, how fast it drifts (a leak < 0)."""
        if not 0 <= bar <= MAX_BAR or math.isnan(bar):
            raise ValueError(f"pressure {bar} outside 0..{MAX_BAR} bar")
        b = self._bollard(index)
        b.pressure = float(bar)
        if drift_bar_per_s is not None:
            b.drift = float(drift_bar_per_s)

    def set_pressure_drift(self, index: int, bar_per_s: float) -> None:
        """Set how fast the pressure drifts, bar per second (a leak is negative)."""
        self._bollard(index).drift = float(bar_per_s)

    def set_temperature(self, index: int, celsius: float) -> None:
        """Set the motor temperature (it then cools toward ambient and warms with travel)."""
        self._bollard(index).temp = float(celsius)

    def set_cycles(self, index: int, cycles: int) -> None:
        """Preset the cycle counter (e.g. just below a word boundary, or 0 for a reset)."""
        if not 0 <= cycles <= 0xFFFF_FFFF:
            raise ValueError(f"cycle count {cycles} outside 32 bits")
        self._bollard(index).cycles = cycles

    def set_maintenance(self, index: int, on: bool) -> None:
        """Engage the manual release / maintenance mode: the bollard stops and ignores
        every command but stop."""
        b = self._bollard(index)
        b.maintenance = bool(on)
        if b.maintenance:
            b.halt()

    def set_manual(self, index: int, on: bool) -> None:
        """Turn the cabinet's auto/manual selector: in manual, Modbus commands are ignored
        (stop aside) and only :meth:`local_command` operates the bollard."""
        self._bollard(index).manual = bool(on)

    @property
    def open_connections(self) -> int:
        """Client connections open right now."""
        server = self._server
        return 0 if server is None else len(server.active_connections)

    async def unplug(self, mode: UnplugMode = "refuse") -> None:
        """Take the controller off the network; the bollards carry on moving.

        Args:
            mode: ``refuse``: close every connection and the listening socket (the peer
                sees a reset, then "connection refused"). ``silent``: keep the sockets
                but drop every request (the peer sees timeouts).
        """
        if mode == "silent":
            self._silent = True
            return
        self._plugged = False
        await self._stop_listening()

    async def plug(self) -> None:
        """Undo :meth:`unplug`; listens again on the same port."""
        self._silent = False
        if not self._plugged:
            self._plugged = True
            await self._listen()

    def exception_mode(self, code: int | None) -> None:
        """Answer every request with Modbus exception ``code`` (``None`` = normal)."""
        self._exception = None if code is None else ExcCodes(code)

    def garbage_mode(self, kind: GarbageKind | None = "noise") -> None:
        """Reply with garbage: ``noise`` (scrambled bytes) or ``truncated``; ``None`` = normal."""
        self._garbage = kind

    def normal_mode(self) -> None:
        """Clear the exception and garbage modes and the silent unplug."""
        self._exception = None
        self._garbage = None
        self._silent = False

    def snapshot(self) -> dict[str, Any]:
        """The simulator's state as JSON-ready data (what ``GET /state`` returns)."""
        return {
            "profile": self.profile.name,
            "unit": self.unit,
            "host": self.host,
            "port": self.port,
            "plugged": self._plugged,
            "silent": self._silent,
            "exception": None if self._exception is None else int(self._exception),
            "garbage": self._garbage,
            "travel_time": self.travel_time,
            "efo_travel_time": self.efo_travel_time,
            "open_connections": self.open_connections,
            "requests_seen": self.requests_seen,
            "last_command": None if self.last_command is None else asdict(self.last_command),
            "bollards": [
                {**asdict(state), "moving": state.moving}
                for state in (self.state(i) for i in range(self.bollards))
            ],
        }

    # ------------------------------------------------------------------ HTTP control

    async def _http_dispatch(
        self, method: str, path: str, query: dict[str, str]
    ) -> tuple[int, dict[str, Any]]:
        def arg(name: str, default: str | None = None) -> str:
            raw = query.get(name, default)
            if raw is None:
                raise ValueError(f"missing query parameter {name!r}")
            return raw

        def flag(name: str, default: str | None = None) -> bool:
            raw = arg(name, default).strip().lower()
            if raw not in ("0", "1", "true", "false"):
                raise ValueError(f"{name} must be 0/1 or true/false, got {raw!r}")
            return raw in ("1", "true")

        if path == "/state":
            if method != "GET":
                return 405, {"error": "use GET"}
            return 200, self.snapshot()
        i = int(arg("bollard", "0"))
        routes: dict[str, Callable[[], object]] = {
            "/impact": lambda: self.inject_impact(i),
            "/loop": lambda: self.set_vehicle_loop(i, flag("occupied", "1")),
            "/jam": lambda: self.jam(i, flag("on", "1")),
            "/fault": lambda: self.set_fault(i, int(arg("code"))),
            "/limits": lambda: self.set_both_limits(i, flag("both", "1")),
            "/mains": lambda: self.set_mains(i, flag("ok")),
            "/battery": lambda: self.set_battery(i, flag("ok")),
            "/pressure": lambda: self.set_pressure(
                i, float(arg("bar")), float(query["drift"]) if "drift" in query else None
            ),
            "/maintenance": lambda: self.set_maintenance(i, flag("on", "1")),
            "/manual": lambda: self.set_manual(i, flag("on", "1")),
            "/command": lambda: self.local_command(i, arg("cmd")),
            "/link": lambda: self._http_link(arg("mode"), query.get("code")),
        }
        route = routes.get(path)
        if route is None:
            return 404, {"error": f"no such endpoint {path}"}
        if method != "POST":
            return 405, {"error": "use POST"}
        result = route()
        if isinstance(result, Awaitable):
            await result
        return 200, self.snapshot()

    async def _http_link(self, mode: str, code: str | None) -> None:
        if mode in ("unplug", "silent"):
            await self.unplug("silent" if mode == "silent" else "refuse")
        elif mode == "plug":
            await self.plug()
        elif mode == "exception":
            self.exception_mode(int(code or "4"))
        elif mode in ("noise", "garbage", "truncated"):
            self.garbage_mode("truncated" if mode == "truncated" else "noise")
        elif mode == "normal":
            self.normal_mode()
        else:
            raise ValueError(
                "mode must be unplug, silent, plug, exception, garbage, truncated or normal"
            )

    async def _handle_http(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        # A deliberately tiny HTTP/1.1 server: one request per connection, query
        # parameters only, JSON out. Enough for curl and the demo; no dependency.
        status, body = 400, {"error": "bad request"}
        try:
            async with asyncio.timeout(10):
                request_line = (await reader.readline()).decode("latin-1").strip()
                length = 0
                while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
                    name, _, value = line.decode("latin-1").partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value.strip() or 0)
                if length:
                    await reader.readexactly(min(length, 65536))
            method, target, _version = request_line.split(" ", 2)
            url = urllib.parse.urlsplit(target)
            query = {k: v[-1] for k, v in urllib.parse.parse_qs(url.query).items()}
            status, body = await self._http_dispatch(method.upper(), url.path, query)
        except (ValueError, KeyError) as exc:
            status, body = 400, {"error": str(exc)}
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            writer.close()
            return
        payload = json.dumps(body).encode()
        reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}
        head = (
            f"HTTP/1.1 {status} {reason.get(status, 'Error')}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
            "Connection: close\r\n\r\n"
        )
        try:
            writer.write(head.encode() + payload)
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()


async def run_bollard_sim(
    profile: str | Path = "generic-plc",
    host: str = "127.0.0.1",
    port: int = 502,
    http_port: int | None = None,
    *,
    bollards: int = 2,
    unit: int | None = None,
    travel_time: float = 3.0,
    efo_travel_time: float = 1.5,
    http_host: str | None = None,
    started: Callable[[BollardSimulator], None] | None = None,
) -> None:
    """Run a simulated bollard controller until cancelled (for ``campusguard sim bollard``).

    Args:
        profile: Built-in profile name or path to a profile YAML.
        host: Address to bind.
        port: Modbus TCP port (0 = any free port).
        http_port: HTTP control port, ``None`` = no HTTP control (0 = any free port).
        bollards: Bollards the controller drives.
        unit: Unit id to answer (default: the profile's).
        travel_time: Seconds for a full normal travel.
        efo_travel_time: Seconds for a full emergency raise.
        http_host: Address for HTTP control (default: ``host``).
        started: Called once listening, with the simulator (ports filled in).
    """
    async with BollardSimulator(
        profile,
        bollards=bollards,
        host=host,
        port=port,
        travel_time=travel_time,
        efo_travel_time=efo_travel_time,
        http_port=http_port,
        unit=unit,
        http_host=http_host,
    ) as sim:
        log.info(
            "Bollard simulator %s (%d bollards, unit %d) on %s:%d, HTTP control %s",
            sim.profile.name,
            sim.bollards,
            sim.unit,
            sim.host,
            sim.port,
            "off" if sim.http_port is None else f"on port {sim.http_port}",
        )
        if started is not None:
            started(sim)
        await asyncio.Event().wait()
