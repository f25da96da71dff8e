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
import json
import logging
import math
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from types import TracebackType
from typing import Any, Literal, Self

from pymodbus.constants import ExcCodes
from pymodbus.framer import FramerType
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

__all__ = [
    "EMULATED_MODELS",
    "DIModuleSimulator",
    "InputFlip",
    "run_modbus_sim",
]

log = logging.getLogger(__name__)

GarbageKind = Literal["noise", "truncated"]
UnplugMode = Literal["refuse", "silent"]

_COIL, _DI, _HR, _IR = "c", "d", "h", "i"
_FC_TABLE = {1: _COIL, 2: _DI, 3: _HR, 4: _IR, 5: _COIL, 15: _COIL, 6: _HR, 16: _HR}
_WRITE_FC = frozenset({5, 6, 15, 16})


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


def _garble(packet: bytes, kind: GarbageKind, rtu: bool) -> bytes:
    if kind == "noise":
        # XOR keeps the length but breaks the MBAP protocol id (0x0000 -> 0xA5A5) or the CRC.
        return bytes(b ^ 0xA5 for b in packet)
    if rtu:
        return packet[:-1]  # one byte short: the CRC no longer matches
    # A well-framed reply one byte short of what its header promises.
    pdu = packet[7:-1] if len(packet) > 8 else packet[7:]
    return packet[:4] + (len(pdu) + 1).to_bytes(2, "big") + packet[6:7] + pdu


class DIModuleSimulator:
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
    ) -> None:
        """Prepare the simulator; nothing listens until it is entered."""
        key = profile.strip().lower()
        if key not in EMULATED_MODELS:
            raise ValueError(
                f"cannot emulate {profile!r}; known: {', '.join(sorted(EMULATED_MODELS))}"
            )
        if not units or len(set(units)) != len(units) or not all(1 <= u <= 247 for u in units):
            raise ValueError(f"units must be distinct ids in 1..247, got {units}")
        cls, channels = EMULATED_MODELS[key]
        self.profile = key
        self.host = host
        self.port = port
        self.channels = channels
        self.units = tuple(units)
        self.modules: dict[int, _Module] = {u: cls(channels) for u in self.units}
        self.http_port = http_port
        self.http_host = http_host or host
        self.serial_port = serial_port
        self.baudrate = baudrate
        self.last_flip: InputFlip | None = None
        self.connections_accepted = 0
        self.requests_seen = 0
        self._template = cls(channels)
        self._server: ModbusTcpServer | ModbusSerialServer | None = None
        self._http: asyncio.Server | None = None
        self._plugged = True
        self._silent = False
        self._exception: ExcCodes | None = None
        self._garbage: GarbageKind | None = None

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
        def tables(module: _Module) -> tuple[list[SimData], ...]:
            def bits(n: int) -> list[SimData]:
                return [SimData(0, count=(n + 15) // 16 * 16, values=False, datatype=DataType.BITS)]

            def regs(n: int) -> list[SimData]:
                return [SimData(0, count=n, values=0, datatype=DataType.REGISTERS)]

            s = module.sizes
            return (bits(s[_COIL]), bits(s[_DI]), regs(s[_HR]), regs(s[_IR]))

        devices = [
            SimDevice(unit, simdata=tables(module), action=partial(self._action, unit))
            for unit, module in self.modules.items()
        ]
        # Unit 0 is pymodbus' catch-all: answer unknown units like a gateway would.
        devices.append(
            SimDevice(0, simdata=tables(self._template), action=partial(self._action, None))
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

    async def _stop_listening(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            # Closes the listening socket and every open connection.
            await server.shutdown()

    # ------------------------------------------------------------------ pymodbus hooks

    def _trace_connect(self, connected: bool) -> None:
        if connected:
            self.connections_accepted += 1

    def _trace_packet(self, sending: bool, data: bytes) -> bytes:
        if not sending:
            return data
        if self._silent:
            return b""
        rtu = self.serial_port is not None
        if rtu and data and data[0] not in self.modules:
            return b""  # RS-485: an absent unit is silence, no gateway answers for it
        if self._garbage is not None:
            return _garble(data, self._garbage, rtu)
        return data

    async def _action(
        self,
        unit: int | None,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        # Called by pymodbus for every access, before it reads or writes `registers`
        # (the whole table). The module state is the truth; the table is re-rendered
        # from it for each read.
        self.requests_seen += 1
        if self._exception is not None:
            return self._exception
        if unit is None:
            return ExcCodes.GATEWAY_NO_RESPONSE
        module = self.modules[unit]
        table = _FC_TABLE.get(function_code)
        if table is None:
            return ExcCodes.ILLEGAL_FUNCTION
        if values is not None:
            if self._silent:
                return None  # the request "never arrived": leave the module alone
            return module.write(table, address, [int(v) for v in values])
        if function_code in _WRITE_FC:
            return None  # pymodbus reads back after a write to build the echo: keep it
        refused = module.refuse_read(function_code)
        if refused is not None:
            return refused
        rendered = module.render(table)
        if table in (_COIL, _DI):
            padded = rendered + [0] * (16 * (len(registers) - 1) - len(rendered))
            packed = [
                sum(1 << i for i, bit in enumerate(padded[r * 16 : r * 16 + 16]) if bit)
                for r in range(len(registers) - 1)
            ]
            registers[: len(packed)] = packed
        else:
            registers[: len(rendered)] = rendered
        return None

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

    @property
    def open_connections(self) -> int:
        """Client connections open right now."""
        server = self._server
        return 0 if server is None else len(server.active_connections)

    async def unplug(self, mode: UnplugMode = "refuse") -> None:
        """Take the module off the network.

        Args:
            mode: ``refuse``: close every connection and the listening socket (the
                peer sees a reset, then "connection refused"). ``silent``: keep the
                sockets but drop every request, like a cut cable behind a switch
                (the peer sees timeouts). A serial simulator always goes silent: closing
                a pty would end the ``socat`` pairing it.
        """
        if mode == "silent" or self.serial_port is not None:
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
        """Reply with garbage: ``noise`` (scrambled bytes) or ``truncated`` (a reply
        one byte shorter than its header says). ``None`` = normal."""
        self._garbage = kind

    def normal_mode(self) -> None:
        """Clear the exception and garbage modes and the silent unplug."""
        self._exception = None
        self._garbage = None
        self._silent = False

    def snapshot(self) -> dict[str, Any]:
        """The simulator's state as JSON-ready data (what ``GET /state`` returns)."""
        return {
            "profile": self.profile,
            "host": self.host,
            "port": self.port,
            "serial_port": self.serial_port,
            "plugged": self._plugged,
            "silent": self._silent,
            "exception": None if self._exception is None else int(self._exception),
            "garbage": self._garbage,
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

    async def _http_dispatch(
        self, method: str, path: str, query: dict[str, str]
    ) -> tuple[int, dict[str, Any]]:
        def number(name: str, default: str | None = None) -> float:
            raw = query.get(name, default)
            if raw is None:
                raise ValueError(f"missing query parameter {name!r}")
            return float(raw)

        unit = int(number("unit")) if "unit" in query else None
        routes: dict[str, Callable[[], Awaitable[None] | None]] = {
            "/press": lambda: self.press(
                int(number("channel")), number("ms", "200") / 1000, unit=unit
            ),
            "/set": lambda: self.set_input(
                int(number("channel")), bool(int(number("active"))), unit=unit
            ),
            "/resistance": lambda: self.set_resistance(
                int(number("channel")), number("ohms"), unit=unit
            ),
            "/fault": lambda: self._http_fault(query.get("mode", ""), query.get("code")),
        }
        if path == "/state":
            if method != "GET":
                return 405, {"error": "use GET"}
            return 200, self.snapshot()
        route = routes.get(path)
        if route is None:
            return 404, {"error": f"no such endpoint {path}"}
        if method != "POST":
            return 405, {"error": "use POST"}
        result = route()
        if result is not None:
            await result
        return 200, self.snapshot()

    async def _http_fault(self, mode: str, code: str | None) -> None:
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
        if started is not None:
            started(sim)
        await asyncio.Event().wait()
