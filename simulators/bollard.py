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

import logging
import math
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import SimDevice

from drivers.modbus.bollard_profile import (
    COMMAND_NAMES,
    AnalogSignal,
    BitSignal,
    BollardProfile,
    CounterSignal,
    load_bollard_profile,
)
from drivers.modbus.profile import PointRef

from ._control import TABLES, Query, Route, SimulatedDevice, query_arg, sim_tables

__all__ = ["BollardSimulator", "BollardState", "CommandRecord", "run_bollard_sim"]

log = logging.getLogger(__name__)

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


class BollardSimulator(SimulatedDevice):
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
    starts lowered, mains on, accumulator charged, in auto mode; unplugged from the
    network, the bollards carry on moving.
    """

    _http_fixed: ClassVar[Mapping[str, Route]] = {"/state": Route("GET")}

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
        super().__init__(host=host, port=port, http_port=http_port, http_host=http_host)
        self.bollards = bollards
        self.travel_time = travel_time
        self.efo_travel_time = efo_travel_time
        self.last_command: CommandRecord | None = None
        self.commands: deque[CommandRecord] = deque(maxlen=1000)
        now = time.monotonic()
        self._bollards = [_Bollard(now) for _ in range(bollards)]
        self._sizes = self._table_sizes()
        self._command_points = self._index_commands()

    # ------------------------------------------------------------------ the map

    def _points(self) -> list[tuple[str, PointRef, int]]:
        points: list[tuple[str, PointRef, int]] = list(self.profile.read_points())
        for name in COMMAND_NAMES:
            command = self.profile.commands.get(name)
            if command is not None:
                points.append((name, command, 1))
        return points

    def _table_sizes(self) -> dict[str, int]:
        sizes = dict.fromkeys(TABLES, 1)
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

    def _render_table(self, unit: int, table: str) -> list[int]:
        self._advance()
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

    def _devices(self) -> list[SimDevice]:
        tables = sim_tables(self._sizes)
        devices = [SimDevice(self.unit, simdata=tables, action=partial(self._action, self.unit))]
        if self.unit != 0:
            # Unit 0 is pymodbus' catch-all: answer unknown units like a gateway would.
            devices.append(SimDevice(0, simdata=tables, action=partial(self._action, None)))
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

    # ------------------------------------------------------------------ pymodbus hooks

    def _write(self, unit: int, table: str, address: int, values: list[int]) -> ExcCodes | None:
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

    def snapshot(self) -> dict[str, Any]:
        """The simulator's state as JSON-ready data (what ``GET /state`` returns)."""
        return {
            "profile": self.profile.name,
            "unit": self.unit,
            "host": self.host,
            "port": self.port,
            **self.link_state(),
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

    def _http_routes(self, query: Query) -> dict[str, Route]:
        # GET /state (_http_fixed) is answered before this runs, whatever the query holds.
        def arg(name: str, default: str | None = None) -> str:
            return query_arg(query, name, default)

        def flag(name: str, default: str | None = None) -> bool:
            raw = arg(name, default).strip().lower()
            if raw not in ("0", "1", "true", "false"):
                raise ValueError(f"{name} must be 0/1 or true/false, got {raw!r}")
            return raw in ("1", "true")

        i = int(arg("bollard", "0"))
        actions: dict[str, Callable[[], object]] = {
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
            "/link": lambda: self._link_fault(arg("mode"), query.get("code")),
        }
        return {path: Route("POST", action) for path, action in actions.items()}


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
        await sim.run_forever(started)
