"""A Modbus TCP DI module that speaks real Modbus (pymodbus server), for tests and demos.

Emulates the modules the panic buttons are wired to: the live DI state, the latch
set on a rising edge (cleared by writing its coil), the 32-bit edge counter, and a
loop resistance for end-of-line supervision. Fault knobs make it refuse
connections, go silent, answer with a Modbus exception or with garbage.

The register maps below are written again from ``specs/modbus.md`` on purpose,
*not* loaded from ``drivers/modbus/profiles``: a wrong address in a profile would
otherwise be wrong in the simulator too, and the reader-vs-simulator tests would
still pass. Keep them independent.

Example:
    async with DIModuleSimulator("adam-6050") as sim:
        bus.get_tcp("127.0.0.1", sim.port)
        await sim.press(0, 0.005)
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any

from pymodbus.constants import ExcCodes
from pymodbus.framer import FramerType
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import SimDevice

from ._control import Query, Route, SimulatedDevice, UnplugMode, query_arg, sim_tables

__all__ = [
    "EMULATED_MODELS",
    "DIModuleSimulator",
    "InputFlip",
    "run_modbus_sim",
]

log = logging.getLogger(__name__)

_COIL, _DI, _HR, _IR = "coil", "discrete_input", "holding_register", "input_register"


def _m(point: str) -> int:
    """Wire address of a manual's Modicon number (``"00036"`` -> 35), table prefix dropped."""
    return int(point[1:]) - 1


@dataclass(frozen=True, slots=True)
class InputFlip:
    """The last change of a simulated input, for latency measurements.

    Attributes:
        unit: Unit id.
        channel: Channel index.
        active: New level (``True`` = contact closed, DI reads 1).
        monotonic: ``time.monotonic()`` of the change.
        wall_time: ``time.time()`` of the change.
    """

    unit: int
    channel: int
    active: bool
    monotonic: float
    wall_time: float


class _Module:
    """One unit's I/O state and the logic of its register map (overridden per family)."""

    def __init__(self, channels: int) -> None:
        self.sizes = {_COIL: 16, _DI: 16, _HR: 1, _IR: 1}
        self.channels = channels
        self.levels = [False] * channels
        self.latch_high = [False] * channels
        self.latch_low = [False] * channels
        self.counters = [0] * channels
        self.counting = [True] * channels
        self.overflow = [False] * channels
        self.ohms = [math.inf] * channels
        self.outputs = [False] * 16

    def set_level(self, channel: int, level: bool) -> bool:
        """Drive an input; returns whether it changed. Edges latch and count here,
        synchronously, so a press of any length is seen, as by the module's hardware."""
        if self.levels[channel] == level:
            return False
        self.levels[channel] = level
        if level:
            self.latch_high[channel] = True
            if self.counting[channel]:
                self.counters[channel] = (self.counters[channel] + 1) & 0xFFFF_FFFF
                self.overflow[channel] |= self.counters[channel] == 0
        else:
            self.latch_low[channel] = True
        return True

    def refuse_read(self, function_code: int) -> ExcCodes | None:
        return None

    def render(self, table: str) -> list[int]:
        """Values of a whole table (bits as 0/1)."""
        return [0] * self.sizes[table]

    def write(self, table: str, address: int, values: Sequence[int]) -> ExcCodes | None:
        return ExcCodes.ILLEGAL_ADDRESS


class _Adam(_Module):
    """Advantech ADAM-6050/6051/6060 (ADAM-6000 manual)."""

    def __init__(self, channels: int) -> None:
        super().__init__(channels)
        self.sizes = {
            _COIL: _m("00033") + 4 * channels,
            _DI: channels,
            _HR: 2 * channels,
            _IR: 1,
        }

    def render(self, table: str) -> list[int]:
        out = [0] * self.sizes[table]
        if table in (_COIL, _DI):
            for ch in range(self.channels):
                out[_m("00001") + ch] = int(self.levels[ch])  # FC01, FC02 also answers
        if table == _COIL:
            for i in range(6):
                out[_m("00017") + i] = int(self.outputs[i])  # DO (unverified)
            for ch in range(self.channels):
                out[_m("00033") + 4 * ch] = int(self.counting[ch])
                out[_m("00035") + 4 * ch] = int(self.overflow[ch])
                out[_m("00036") + 4 * ch] = int(self.latch_high[ch])
        if table == _HR:
            for ch in range(self.channels):
                # 40001+2ch, 32 bit, low word first
                out[_m("40001") + 2 * ch] = self.counters[ch] & 0xFFFF
                out[_m("40001") + 2 * ch + 1] = self.counters[ch] >> 16
        return out

    def write(self, table: str, address: int, values: Sequence[int]) -> ExcCodes | None:
        if table != _COIL:
            return ExcCodes.ILLEGAL_ADDRESS
        for offset, value in enumerate(values):
            point = address + offset
            if _m("00017") <= point < _m("00017") + 6:
                self.outputs[point - _m("00017")] = bool(value)
                continue
            ch, role = divmod(point - _m("00033"), 4)
            if not (point >= _m("00033") and ch < self.channels):
                return ExcCodes.ILLEGAL_ADDRESS
            if role == 0:
                self.counting[ch] = bool(value)
            elif role == 1 and value:
                self.counters[ch] = 0
            elif role == 2 and value:
                self.overflow[ch] = False
            elif role == 3:
                # The manual leaves open which value clears the latch: accept both.
                self.latch_high[ch] = False
        return None


class _Moxa(_Module):
    """Moxa ioLogik E1210/E1212/E1214, default map (E1200 manual)."""

    def __init__(self, channels: int) -> None:
        super().__init__(channels)
        self.sizes = {
            _COIL: _m("00289") + channels,
            _DI: _m("11001") + channels,
            _HR: 1,
            _IR: _m("30049") + 1,
        }

    def render(self, table: str) -> list[int]:
        out = [0] * self.sizes[table]
        if table == _DI:
            for ch in range(self.channels):
                out[_m("10001") + ch] = int(self.levels[ch])
                out[_m("11001") + ch] = int(self.overflow[ch])
        elif table == _IR:
            for ch in range(self.channels):
                out[_m("30017") + 2 * ch] = self.counters[ch] >> 16  # high word first
                out[_m("30018") + 2 * ch] = self.counters[ch] & 0xFFFF
            out[_m("30049")] = sum(1 << ch for ch in range(self.channels) if self.levels[ch])
        elif table == _COIL:
            for ch in range(self.channels):
                out[_m("00257") + ch] = int(self.counting[ch])
        return out

    def write(self, table: str, address: int, values: Sequence[int]) -> ExcCodes | None:
        if table != _COIL:
            return ExcCodes.ILLEGAL_ADDRESS
        for offset, value in enumerate(values):
            point = address + offset
            if 0 <= (ch := point - _m("00257")) < self.channels:
                self.counting[ch] = bool(value)
            elif 0 <= (ch := point - _m("00273")) < self.channels:
                if not value:
                    return ExcCodes.ILLEGAL_VALUE  # the manual: writing 0 gives exception 03
                self.counters[ch] = 0
            elif 0 <= (ch := point - _m("00289")) < self.channels:
                if value:
                    self.overflow[ch] = False
            else:
                return ExcCodes.ILLEGAL_ADDRESS
        return None


class _Et2260(_Module):
    """ICP DAS ET-2260 (ET-2200 manual, zero-based hex addresses)."""

    def __init__(self, channels: int) -> None:
        super().__init__(channels)
        self.sizes = {_COIL: 0x22, _DI: 0x40 + channels, _HR: 1, _IR: 1}

    def render(self, table: str) -> list[int]:
        out = [0] * self.sizes[table]
        if table == _DI:
            for ch in range(self.channels):
                out[0x00 + ch] = int(self.levels[ch])
                out[0x20 + ch] = int(self.latch_high[ch])
                out[0x40 + ch] = int(self.latch_low[ch])
        elif table == _COIL:
            for ch in range(self.channels):
                out[ch] = int(self.outputs[ch])
        return out

    def write(self, table: str, address: int, values: Sequence[int]) -> ExcCodes | None:
        if table != _COIL:
            return ExcCodes.ILLEGAL_ADDRESS
        for offset, value in enumerate(values):
            point = address + offset
            if point < self.channels:
                self.outputs[point] = bool(value)
            elif point == 0x20 and value:
                self.latch_high = [False] * self.channels
            elif point == 0x21 and value:
                self.latch_low = [False] * self.channels
            elif point not in (0x20, 0x21):
                return ExcCodes.ILLEGAL_ADDRESS
        return None


class _Zlan(_Module):
    """ZLAN6042: DI at coils 00001-00004 (FC01 only), relays from 00017."""

    resistance = False

    def __init__(self, channels: int) -> None:
        super().__init__(channels)
        self.sizes = {_COIL: _m("00017") + 4, _DI: 16, _HR: 1, _IR: channels}

    def refuse_read(self, function_code: int) -> ExcCodes | None:
        if function_code == 2 or (function_code == 4 and not self.resistance):
            return ExcCodes.ILLEGAL_FUNCTION
        return None

    def render(self, table: str) -> list[int]:
        out = [0] * self.sizes[table]
        if table == _COIL:
            for ch in range(self.channels):
                out[_m("00001") + ch] = int(self.levels[ch])
            for i in range(4):
                out[_m("00017") + i] = int(self.outputs[i])
        elif table == _IR and self.resistance:
            for ch in range(self.channels):
                # 30001+ch in ohms, clamped at the 10 k range (unverified over-range value)
                ohms = self.ohms[ch]
                out[_m("30001") + ch] = 10000 if math.isinf(ohms) else min(10000, round(ohms))
        return out

    def write(self, table: str, address: int, values: Sequence[int]) -> ExcCodes | None:
        if table != _COIL:
            return ExcCodes.ILLEGAL_ADDRESS
        for offset, value in enumerate(values):
            relay = address + offset - _m("00017")
            if not 0 <= relay < 4:
                return ExcCodes.ILLEGAL_ADDRESS
            self.outputs[relay] = bool(value)
        return None


class _ZlanRes(_Zlan):
    resistance = True


# name -> (module class, DI channels), from the spec's device list.
EMULATED_MODELS: dict[str, tuple[type[_Module], int]] = {
    "adam-6050": (_Adam, 12),
    "adam-6051": (_Adam, 14),
    "adam-6060": (_Adam, 6),
    "moxa-e1210": (_Moxa, 16),
    "moxa-e1212": (_Moxa, 8),
    "moxa-e1214": (_Moxa, 6),
    "icpdas-et2260": (_Et2260, 6),
    "zlan6042": (_Zlan, 4),
    "zlan6042-res": (_ZlanRes, 4),
}


class DIModuleSimulator(SimulatedDevice):
    """A simulated DI module on a real Modbus TCP socket.

    Args:
        profile: Model to emulate, one of :data:`EMULATED_MODELS` (``adam-6050``,
            ``moxa-e1210``, ``zlan6042-res``, ...).
        host: Address to bind.
        port: TCP port; 0 picks a free one (read it back from :attr:`port`).
        units: Unit ids to answer, each an independent module (a gateway with several
            units behind it, or an RS-485 line). Over TCP other unit ids get exception
            0x0B (gateway target failed to respond); over RTU they get silence.
        http_port: Also serve the HTTP control endpoint on this port (0 = any free one).
        http_host: Address for the HTTP control endpoint.
        serial_port: Serve Modbus RTU on this serial device instead of TCP (e.g. one end
            of a ``socat`` pty pair); ``host``/``port`` are then unused.
        baudrate: RTU line speed (a pty ignores it).
        wiring: Outputs wired back to inputs, ``{output: channel}``: closing the module's
            DO/relay ``output`` (a coil write) drives DI ``channel`` of the same unit, as a
            test button's self-test relay would (models with outputs: ADAM-60xx, ET-2260,
            ZLAN6042). See :meth:`wire`.

    Attributes:
        port: The bound Modbus TCP port.
        http_port: The bound HTTP control port, or ``None``.
        last_flip: The last input change, for latency measurements.
        connections_accepted: Client connections accepted so far.
        requests_seen: Modbus requests that reached the register map.

    Call the control methods from the event loop the simulator runs in.
    """

    def __init__(
        self,
        profile: str = "adam-6050",
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        units: Sequence[int] = (1,),
        http_port: int | None = None,
        http_host: str | None = None,
        serial_port: str | None = None,
        baudrate: int = 9600,
        wiring: dict[int, int] | None = None,
    ) -> None:
        """Prepare the simulator; nothing listens until it is entered."""
        key = profile.strip().lower()
        if key not in EMULATED_MODELS:
            raise ValueError(
                f"cannot emulate {profile!r}; known: {', '.join(sorted(EMULATED_MODELS))}"
            )
        if not units or len(set(units)) != len(units) or not all(1 <= u <= 247 for u in units):
            raise ValueError(f"units must be distinct ids in 1..247, got {units}")
        super().__init__(host=host, port=port, http_port=http_port, http_host=http_host)
        cls, channels = EMULATED_MODELS[key]
        self.profile = key
        self.channels = channels
        self.units = tuple(units)
        self.modules: dict[int, _Module] = {u: cls(channels) for u in self.units}
        self.serial_port = serial_port
        self.baudrate = baudrate
        self.last_flip: InputFlip | None = None
        self.connections_accepted = 0
        self._template = cls(channels)
        self.wiring: dict[int, int] = {}
        for output, channel in (wiring or {}).items():
            self.wire(output, channel)

    # ------------------------------------------------------------------ lifecycle

    def _devices(self) -> list[SimDevice]:
        devices = [
            SimDevice(unit, simdata=sim_tables(module.sizes), action=partial(self._action, unit))
            for unit, module in self.modules.items()
        ]
        # Unit 0 is pymodbus' catch-all: answer unknown units like a gateway would.
        devices.append(
            SimDevice(
                0, simdata=sim_tables(self._template.sizes), action=partial(self._action, None)
            )
        )
        return devices

    async def _listen(self) -> None:
        if self.serial_port is not None:
            serial = ModbusSerialServer(
                self._devices(),
                framer=FramerType.RTU,
                port=self.serial_port,
                baudrate=self.baudrate,
                trace_packet=self._trace_packet,
                trace_connect=self._trace_connect,
            )
            await serial.serve_forever(background=True)
            self._server = serial
            log.debug("Modbus RTU simulator %s on %s", self.profile, self.serial_port)
            return
        server = ModbusTcpServer(
            self._devices(),
            address=(self.host, self.port),
            trace_packet=self._trace_packet,
            trace_connect=self._trace_connect,
        )
        await server.serve_forever(background=True)
        self._server = server
        self.port = int(server.transport.sockets[0].getsockname()[1])
        log.debug("Modbus simulator %s listening on %s:%d", self.profile, self.host, self.port)

    # ------------------------------------------------------------------ pymodbus hooks

    def _trace_connect(self, connected: bool) -> None:
        if connected:
            self.connections_accepted += 1

    @property
    def _rtu(self) -> bool:
        return self.serial_port is not None

    def _unanswered(self, reply: bytes) -> bool:
        # RS-485: an absent unit is silence, no gateway answers for it
        return self._rtu and bool(reply) and reply[0] not in self.modules

    def _write(self, unit: int, table: str, address: int, values: list[int]) -> ExcCodes | None:
        module = self.modules[unit]
        before = list(module.outputs)
        result = module.write(table, address, values)
        for output, channel in self.wiring.items():
            if module.outputs[output] != before[output]:
                self.set_input(channel, module.outputs[output], unit=unit)
        return result

    def _refuse_read(self, unit: int, function_code: int) -> ExcCodes | None:
        return self.modules[unit].refuse_read(function_code)

    def _render_table(self, unit: int, table: str) -> list[int]:
        return self.modules[unit].render(table)

    # ------------------------------------------------------------------ control API

    def _module(self, unit: int | None, channel: int) -> tuple[int, _Module]:
        unit = self.units[0] if unit is None else unit
        if unit not in self.modules:
            raise ValueError(f"unit {unit} not simulated (units {self.units})")
        if not 0 <= channel < self.channels:
            raise ValueError(f"channel {channel} outside 0..{self.channels - 1}")
        return unit, self.modules[unit]

    def set_input(self, channel: int, active: bool, *, unit: int | None = None) -> None:
        """Drive a DI: ``True`` = contact closed (DI reads 1). Edges latch and count.

        Args:
            channel: Channel index from 0.
            active: New level.
            unit: Unit id; default the first one.
        """
        unit, module = self._module(unit, channel)
        if module.set_level(channel, bool(active)):
            self.last_flip = InputFlip(unit, channel, bool(active), time.monotonic(), time.time())

    async def press(self, channel: int, duration_s: float, *, unit: int | None = None) -> None:
        """Close the contact for ``duration_s`` seconds, then open it (5 ms works).

        Args:
            channel: Channel index from 0.
            duration_s: Press length.
            unit: Unit id; default the first one.
        """
        self.set_input(channel, True, unit=unit)
        try:
            await asyncio.sleep(duration_s)
        finally:
            self.set_input(channel, False, unit=unit)

    def wire(self, output: int, channel: int) -> None:
        """Wire DO/relay ``output`` to DI ``channel`` (every unit): the input follows the
        output from then on (a self-test pulse comes back through the real input path)."""
        if not 0 <= output < len(self._template.outputs):
            raise ValueError(f"output {output} outside 0..{len(self._template.outputs) - 1}")
        self._module(None, channel)
        self.wiring[output] = channel

    def output(self, output: int, *, unit: int | None = None) -> bool:
        """Current state of a DO/relay (``True`` = closed)."""
        unit = self.units[0] if unit is None else unit
        return self.modules[unit].outputs[output]

    def set_resistance(self, channel: int, ohms: float, *, unit: int | None = None) -> None:
        """Set the loop resistance seen by an analog input (``math.inf`` = open loop)."""
        if ohms < 0 or math.isnan(ohms):
            raise ValueError(f"resistance {ohms} must be >= 0")
        _, module = self._module(unit, channel)
        module.ohms[channel] = float(ohms)

    def level(self, channel: int, *, unit: int | None = None) -> bool:
        """Current level of a DI (``True`` = contact closed)."""
        _, module = self._module(unit, channel)
        return module.levels[channel]

    def latched(self, channel: int, *, unit: int | None = None) -> bool:
        """Whether the channel's (rising-edge) latch is set."""
        _, module = self._module(unit, channel)
        return module.latch_high[channel]

    def counter(self, channel: int, *, unit: int | None = None) -> int:
        """The channel's edge counter."""
        _, module = self._module(unit, channel)
        return module.counters[channel]

    def set_counter(self, channel: int, value: int, *, unit: int | None = None) -> None:
        """Preset the channel's 32-bit counter (e.g. just below the wrap, or 0 for a reboot)."""
        if not 0 <= value <= 0xFFFF_FFFF:
            raise ValueError(f"counter value {value} outside 32 bits")
        _, module = self._module(unit, channel)
        module.counters[channel] = value

    async def unplug(self, mode: UnplugMode = "refuse") -> None:
        """Take the module off the network (see :meth:`SimulatedDevice.unplug`).

        A serial simulator always goes silent: closing a pty would end the ``socat``
        pairing it.
        """
        await super().unplug("silent" if self.serial_port is not None else mode)

    def snapshot(self) -> dict[str, Any]:
        """The simulator's state as JSON-ready data (what ``GET /state`` returns)."""
        return {
            "profile": self.profile,
            "host": self.host,
            "port": self.port,
            "serial_port": self.serial_port,
            **self.link_state(),
            "open_connections": self.open_connections,
            "connections_accepted": self.connections_accepted,
            "requests_seen": self.requests_seen,
            "last_flip": None if self.last_flip is None else asdict(self.last_flip),
            "units": {
                str(unit): {
                    "inputs": [int(v) for v in m.levels],
                    "latched": [int(v) for v in m.latch_high],
                    "counters": list(m.counters),
                    "ohms": [None if math.isinf(o) else o for o in m.ohms],
                }
                for unit, m in self.modules.items()
            },
        }

    # ------------------------------------------------------------------ HTTP control

    def _http_routes(self, query: Query) -> dict[str, Route]:
        def number(name: str, default: str | None = None) -> float:
            return float(query_arg(query, name, default))

        unit = int(number("unit")) if "unit" in query else None
        return {
            "/state": Route("GET"),
            "/press": Route(
                "POST",
                lambda: self.press(int(number("channel")), number("ms", "200") / 1000, unit=unit),
            ),
            "/set": Route(
                "POST",
                lambda: self.set_input(
                    int(number("channel")), bool(int(number("active"))), unit=unit
                ),
            ),
            "/wire": Route(
                "POST", lambda: self.wire(int(number("output")), int(number("channel")))
            ),
            "/resistance": Route(
                "POST",
                lambda: self.set_resistance(int(number("channel")), number("ohms"), unit=unit),
            ),
            "/fault": Route(
                "POST", lambda: self._link_fault(query.get("mode", ""), query.get("code"))
            ),
        }


async def run_modbus_sim(
    profile: str,
    host: str = "127.0.0.1",
    port: int = 502,
    http_port: int | None = None,
    *,
    units: Sequence[int] = (1,),
    http_host: str | None = None,
    started: Callable[[DIModuleSimulator], None] | None = None,
) -> None:
    """Run a simulated DI module until cancelled (for ``campusguard sim modbus``).

    Args:
        profile: Model to emulate (see :data:`EMULATED_MODELS`).
        host: Address to bind.
        port: Modbus TCP port (0 = any free port).
        http_port: HTTP control port, ``None`` = no HTTP control (0 = any free port).
        units: Unit ids to answer.
        http_host: Address for HTTP control (default: ``host``).
        started: Called once listening, with the simulator (ports filled in).
    """
    async with DIModuleSimulator(
        profile, host=host, port=port, units=units, http_port=http_port, http_host=http_host
    ) as sim:
        log.info(
            "Modbus simulator %s (units %s) on %s:%d, HTTP control %s",
            sim.profile,
            ",".join(map(str, sim.units)),
            sim.host,
            sim.port,
            "off" if sim.http_port is None else f"on port {sim.http_port}",
        )
        await sim.run_forever(started)
