"""Modbus transport: one connection per TCP host:port or serial port, shared by its units.

A DI module, a Modbus gateway with several RTU units behind it, or an RS-485 line
with many modules all get *one* pymodbus client, guarded by one ``asyncio.Lock``:
the pymodbus client is not safe for concurrent calls, an RS-485 bus carries one
transaction at a time, and many small modules accept only one or two TCP
connections.

Failures are translated into :mod:`drivers.modbus.errors` at this boundary.
Reconnects are lazy and gated by a capped, jittered exponential back-off: a
request while the link is down and the back-off has not expired fails at once
with :class:`~drivers.modbus.errors.DeviceUnreachable`, so pollers keep their
cadence. The link's down/up transitions are logged once each.

Example:
    async with ModbusBus(timeout=0.5) as bus:
        conn = bus.get_tcp("10.0.0.5")
        bits = await conn.read_bits("coil", 0, 12, unit=1)
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, Self

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException

from .codec import (
    BIT_TABLES,
    MAX_READ_BITS,
    MAX_READ_REGISTERS,
    REGISTER_TABLES,
    BitTable,
    RegisterTable,
    tcp_response_problem,
)
from .errors import (
    DeviceExceptionResponse,
    DeviceProtocolError,
    DeviceTimeout,
    DeviceUnreachable,
    ModbusDeviceError,
)

__all__ = ["DEFAULT_TIMEOUT_S", "Backoff", "ModbusBus", "ModbusConnection", "Parity"]

log = logging.getLogger(__name__)

Parity = Literal["N", "E", "O"]
PacketHook = Callable[[bool, bytes], bytes]
ConnectHook = Callable[[bool], None]
LinkState = Literal["new", "up", "down"]

DEFAULT_TIMEOUT_S = 0.5
# A silent TCP peer after this many consecutive timeouts is treated as a half-open
# connection (module rebooted, NAT entry gone) and reconnected. Not applied to RS-485:
# there a silent unit is just one absent module on a live bus.
TIMEOUTS_BEFORE_RECONNECT = 3
# Above 19200 baud the RTU inter-frame gap is fixed at 1.75 ms (Modbus over serial line v1.02).
_RTU_FIXED_T35_S = 0.00175


@dataclass(frozen=True, slots=True)
class Backoff:
    """Capped exponential back-off with jitter for reconnect attempts.

    Attributes:
        initial: Delay after the first failed attempt, seconds.
        maximum: Cap on the delay.
        factor: Growth per failed attempt.
        jitter: Fraction of the delay drawn at random (0.5 = between 50 % and 100 %),
            so the gateways of a campus do not reconnect in lock-step after a switch reboot.
    """

    initial: float = 0.1
    maximum: float = 5.0
    factor: float = 2.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        """Check the values make sense."""
        if not (0 < self.initial <= self.maximum and self.factor >= 1 and 0 <= self.jitter <= 1):
            raise ValueError(f"invalid back-off {self}")

    def delay(self, failures: int, rng: random.Random) -> float:
        """Delay before the next attempt after ``failures`` consecutive failures (>= 1)."""
        exponent = min(max(failures - 1, 0), 64)
        base = min(self.maximum, self.initial * self.factor**exponent)
        return base * (1.0 - self.jitter * rng.random())


class _GarbageReceived(Exception):
    """Internal: the reply bytes cannot be a valid answer."""


class _ConnectionLost(Exception):
    """Internal: the transport closed while a transaction was in flight."""


def _raise_if_cancelling() -> None:
    # asyncio.timeout() turns our own deadline into TimeoutError, but if the task
    # is being cancelled from outside at the same time, the cancel must win.
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class ModbusConnection:
    """One shared link (TCP host:port or serial port) and its lock.

    Obtain instances from :meth:`ModbusBus.get_tcp` / :meth:`ModbusBus.get_rtu`.
    All methods raise a :class:`~drivers.modbus.errors.ModbusDeviceError` subclass
    on failure and never return a stale value.

    Attributes:
        endpoint: ``tcp:host:port`` or ``rtu:/dev/ttyX``.
        kind: ``tcp`` or ``rtu``.
        timeout: Seconds to wait for a connect or a reply.
        transactions: Requests attempted so far (readers use it to count their requests).
    """

    def __init__(
        self,
        endpoint: str,
        client_factory: Callable[[PacketHook, ConnectHook], Any],
        *,
        kind: Literal["tcp", "rtu"],
        timeout: float,
        backoff: Backoff,
        rng: random.Random,
        inter_frame_s: float = 0.0,
    ) -> None:
        """Create the connection; nothing is opened until the first request.

        Args:
            endpoint: ``tcp:host:port`` or ``rtu:/dev/ttyX``, used in logs and errors.
            client_factory: Builds the pymodbus client from our two trace hooks.
            kind: Framing, for reply checks and inter-frame gaps.
            timeout: Seconds to wait for a connect or a reply.
            backoff: Reconnect back-off.
            rng: Random source for the jitter.
            inter_frame_s: Silence to keep between frames (RTU t3.5).
        """
        self.endpoint = endpoint
        self.kind = kind
        self.timeout = timeout
        self._factory = client_factory
        self._backoff = backoff
        self._rng = rng
        self._inter_frame_s = inter_frame_s
        self._lock = asyncio.Lock()
        self._client: Any = None
        self._state: LinkState = "new"
        self._down_since = 0.0
        self._failures = 0
        self._retry_at = 0.0
        self._timeouts = 0
        self._closing = False
        self._closed = False
        self._last_io = 0.0
        # Per-transaction bookkeeping filled by the pymodbus trace hooks.
        self._in_flight = False
        self._request_adu = b""
        self._rx_seen = False
        self.transactions = 0

    # ------------------------------------------------------------------ properties

    @property
    def client(self) -> Any:
        """The underlying pymodbus client (``None`` before the first request)."""
        return self._client

    @property
    def is_up(self) -> bool:
        """Whether the link is connected right now."""
        return self._client is not None and bool(self._client.connected)

    @property
    def state(self) -> LinkState:
        """``new`` (never connected), ``up`` or ``down``."""
        return self._state

    # ------------------------------------------------------------------ public I/O

    async def read_bits(self, table: BitTable, address: int, count: int, unit: int) -> list[bool]:
        """Read ``count`` coils or discrete inputs from ``address`` (FC01 / FC02).

        Args:
            table: ``coil`` or ``discrete_input``.
            address: Zero-based wire address.
            count: Number of bits, 1..2000.
            unit: Modbus unit id.

        Returns:
            Exactly ``count`` booleans.
        """
        if table not in BIT_TABLES:
            raise ValueError(f"read_bits reads coils or discrete inputs, not {table}")
        self._check_args(address, count, MAX_READ_BITS, unit)
        if table == "coil":
            response = await self._transact(
                unit, 1, lambda c: c.read_coils(address, count=count, device_id=unit)
            )
        else:
            response = await self._transact(
                unit, 2, lambda c: c.read_discrete_inputs(address, count=count, device_id=unit)
            )
        bits = list(response.bits)
        if len(bits) < count:
            raise DeviceProtocolError(
                f"asked {count} bits from {table} {address}, got {len(bits)}",
                endpoint=self.endpoint,
                unit=unit,
            )
        return [bool(b) for b in bits[:count]]

    async def read_registers(
        self, table: RegisterTable, address: int, count: int, unit: int
    ) -> list[int]:
        """Read ``count`` holding or input registers from ``address`` (FC03 / FC04).

        Args:
            table: ``holding_register`` or ``input_register``.
            address: Zero-based wire address.
            count: Number of registers, 1..125.
            unit: Modbus unit id.

        Returns:
            Exactly ``count`` unsigned 16-bit values.
        """
        if table not in REGISTER_TABLES:
            raise ValueError(f"read_registers reads registers, not {table}")
        self._check_args(address, count, MAX_READ_REGISTERS, unit)
        if table == "holding_register":
            response = await self._transact(
                unit, 3, lambda c: c.read_holding_registers(address, count=count, device_id=unit)
            )
        else:
            response = await self._transact(
                unit, 4, lambda c: c.read_input_registers(address, count=count, device_id=unit)
            )
        registers = [int(r) for r in response.registers]
        if len(registers) != count:
            raise DeviceProtocolError(
                f"asked {count} registers from {table} {address}, got {len(registers)}",
                endpoint=self.endpoint,
                unit=unit,
            )
        return registers

    async def write_coil(self, address: int, value: bool, unit: int) -> None:
        """Write one coil (FC05) and check the echo.

        Args:
            address: Zero-based wire address.
            value: ``True`` writes 0xFF00, ``False`` 0x0000.
            unit: Modbus unit id.
        """
        self._check_args(address, 1, 1, unit)
        response = await self._transact(
            unit, 5, lambda c: c.write_coil(address, bool(value), device_id=unit)
        )
        echo = list(response.bits)[:1]
        if response.address != address or echo != [bool(value)]:
            raise DeviceProtocolError(
                f"write coil {address}={int(value)} echoed {response.address}={echo}",
                endpoint=self.endpoint,
                unit=unit,
            )

    async def write_register(self, address: int, value: int, unit: int) -> None:
        """Write one holding register (FC06) and check the echo.

        Args:
            address: Zero-based wire address.
            value: 0..65535.
            unit: Modbus unit id.
        """
        if not 0 <= value <= 0xFFFF:
            raise ValueError(f"register value {value} outside 0..65535")
        self._check_args(address, 1, 1, unit)
        response = await self._transact(
            unit, 6, lambda c: c.write_register(address, value, device_id=unit)
        )
        echo = list(response.registers)[:1]
        if response.address != address or echo != [value]:
            raise DeviceProtocolError(
                f"write register {address}={value} echoed {response.address}={echo}",
                endpoint=self.endpoint,
                unit=unit,
            )

    async def close(self) -> None:
        """Close the link; the connection can not be used afterwards."""
        async with self._lock:
            self._closed = True
            self._close_client()

    # ------------------------------------------------------------------ internals

    def _check_args(self, address: int, count: int, max_count: int, unit: int) -> None:
        if self._closed:
            raise RuntimeError(f"{self.endpoint}: connection is closed")
        if not 1 <= count <= max_count:
            raise ValueError(f"count {count} outside 1..{max_count}")
        if address < 0 or address + count - 1 > 0xFFFF:
            raise ValueError(f"address range {address}+{count} outside 0..65535")
        low = 1 if self.kind == "rtu" else 0  # RTU unit 0 is broadcast: nobody answers.
        high = 247 if self.kind == "rtu" else 255
        if not low <= unit <= high:
            raise ValueError(f"unit {unit} outside {low}..{high}")

    def _close_client(self) -> None:
        if self._client is not None:
            self._closing = True
            try:
                self._client.close()
            finally:
                self._closing = False

    def _mark_down(self, reason: str) -> None:
        if self._state != "down":
            self._down_since = time.monotonic()
            log.warning("Modbus link %s down: %s", self.endpoint, reason)
        self._state = "down"

    def _mark_up(self) -> None:
        if self._state == "down":
            log.info(
                "Modbus link %s up again after %.1f s",
                self.endpoint,
                time.monotonic() - self._down_since,
            )
        elif self._state == "new":
            log.debug("Modbus link %s connected", self.endpoint)
        self._state = "up"

    async def _ensure_connected(self) -> Any:
        if self._client is not None and self._client.connected:
            return self._client
        now = time.monotonic()
        if now < self._retry_at:
            raise DeviceUnreachable(
                f"link down, next connect attempt in {self._retry_at - now:.2f} s",
                endpoint=self.endpoint,
                request_sent=False,
            )
        if self._client is None:
            self._client = self._factory(self._on_packet, self._on_connect)
            # We decide when to give up on a silent link (see TIMEOUTS_BEFORE_RECONNECT);
            # pymodbus' own "close after retries+3 misses" would race with that.
            self._client.set_max_no_responses(1_000_000)
        connected = bool(await self._client.connect())
        if not connected:
            self._failures += 1
            delay = self._backoff.delay(self._failures, self._rng)
            self._retry_at = time.monotonic() + delay
            self._mark_down("connect failed")
            raise DeviceUnreachable(
                f"connect failed (attempt {self._failures}, next in {delay:.2f} s)",
                endpoint=self.endpoint,
                request_sent=False,
            )
        self._failures = 0
        self._retry_at = 0.0
        self._timeouts = 0
        self._set_nodelay()
        self._mark_up()
        return self._client

    def _set_nodelay(self) -> None:
        # Requests are tiny and latency is the point; asyncio already sets TCP_NODELAY
        # on TCP transports, this makes it explicit and survives a transport change.
        transport = getattr(getattr(self._client, "ctx", None), "transport", None)
        if transport is None or self.kind != "tcp":
            return
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                log.debug("Modbus link %s: cannot set TCP_NODELAY", self.endpoint)

    async def _inter_frame_gap(self) -> None:
        # RTU frames are delimited by silence; a reply followed too fast by the next
        # request can run into it on a slow device.
        wait = self._last_io + self._inter_frame_s - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)

    def _fail_in_flight(self, exc: Exception) -> None:
        # pymodbus waits on ctx.response_future for the reply; failing it makes the
        # pending call return at once instead of sitting out the timeout.
        future = getattr(getattr(self._client, "ctx", None), "response_future", None)
        if isinstance(future, asyncio.Future) and not future.done():
            future.set_exception(exc)

    def _on_packet(self, sending: bool, data: bytes) -> bytes:
        # pymodbus trace_packet hook: sees every frame sent and every receive buffer.
        if sending:
            self._request_adu = data
            return data
        if not self._in_flight:
            return data
        if self.kind != "tcp":
            self._rx_seen = True
            return data
        if data[:2] == self._request_adu[:2]:
            self._rx_seen = True
        problem = tcp_response_problem(self._request_adu, data)
        if problem is None:
            return data
        self._rx_seen = True
        self._fail_in_flight(_GarbageReceived(problem))
        # Hide the bytes from pymodbus' decoder: some garbage makes it raise inside
        # the protocol callback, which kills the transport with a logged traceback.
        return b""

    def _on_connect(self, connected: bool) -> None:
        # pymodbus trace_connect hook: called on connect and on connection loss.
        if connected or self._closing:
            return
        if self._in_flight:
            self._fail_in_flight(_ConnectionLost("connection closed by peer"))
        self._mark_down("connection lost")
        self._retry_at = 0.0  # the first reconnect may try at once

    async def _transact(
        self, unit: int, function_code: int, call: Callable[[Any], Awaitable[Any]]
    ) -> Any:
        async with self._lock:
            client = await self._ensure_connected()
            if self._inter_frame_s:
                await self._inter_frame_gap()
            self._in_flight = True
            self._rx_seen = False
            self._request_adu = b""
            self.transactions += 1
            try:
                # pymodbus enforces `timeout` itself; this outer deadline only guards
                # against a hang in a path it does not cover.
                async with asyncio.timeout(2 * self.timeout + 0.5):
                    response = await call(client)
            except (_GarbageReceived, _ConnectionLost, ModbusException, OSError) as exc:
                # TimeoutError is an OSError; asyncio.CancelledError is none of these.
                raise self._translate(exc, unit) from None
            finally:
                self._in_flight = False
                self._last_io = time.monotonic()
            self._timeouts = 0
            fc = int(getattr(response, "function_code", 0))
            if response is not None and fc == function_code | 0x80:
                raise DeviceExceptionResponse(
                    int(getattr(response, "exception_code", 0)),
                    function_code=function_code,
                    endpoint=self.endpoint,
                    unit=unit,
                )
            if fc != function_code:
                # On RS-485 a late reply to an earlier request can land here.
                raise DeviceProtocolError(
                    f"function {fc} answered function {function_code}",
                    endpoint=self.endpoint,
                    unit=unit,
                )
            return response

    def _translate(self, exc: Exception, unit: int) -> ModbusDeviceError:
        ep = self.endpoint
        # No frame went out (e.g. pymodbus found the transport gone): nothing to undo.
        sent = bool(self._request_adu)
        if isinstance(exc, _GarbageReceived):
            if self.kind == "tcp":
                # The byte stream is out of step now: start over on a fresh socket.
                self._close_client()
            return DeviceProtocolError(f"invalid reply: {exc}", endpoint=ep, unit=unit)
        if isinstance(exc, (ModbusIOException, TimeoutError)):
            _raise_if_cancelling()
            if self._rx_seen:
                if self.kind == "tcp":
                    self._close_client()
                return DeviceProtocolError(
                    f"reply could not be decoded: {exc}", endpoint=ep, unit=unit
                )
            self._note_timeout()
            return DeviceTimeout(
                f"no reply within {self.timeout:.2f} s", request_sent=sent, endpoint=ep, unit=unit
            )
        if isinstance(exc, (_ConnectionLost, ConnectionException, OSError)):
            self._mark_down(str(exc) or type(exc).__name__)
            return DeviceUnreachable(
                f"connection lost: {exc}", request_sent=sent, endpoint=ep, unit=unit
            )
        return DeviceProtocolError(
            f"pymodbus error: {exc}", request_sent=sent, endpoint=ep, unit=unit
        )

    def _note_timeout(self) -> None:
        self._timeouts += 1
        if self.kind == "tcp" and self._timeouts >= TIMEOUTS_BEFORE_RECONNECT:
            log.debug(
                "Modbus link %s: %d timeouts in a row, reconnecting", self.endpoint, self._timeouts
            )
            self._timeouts = 0
            self._close_client()


class ModbusBus:
    """Registry of shared Modbus connections; an async context manager that closes them.

    Args:
        timeout: Seconds to wait for a connect or a reply (default 0.5).
        backoff: Reconnect back-off (default 0.1 s doubling to 5 s, 50 % jitter).
        rng: Random source for the jitter (tests pass a seeded one).
    """

    def __init__(
        self,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        backoff: Backoff | None = None,
        rng: random.Random | None = None,
    ) -> None:
        """Create an empty registry."""
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self.timeout = timeout
        self.backoff = backoff or Backoff()
        self._rng = rng or random.Random()
        self._connections: dict[str, ModbusConnection] = {}
        self._rtu_settings: dict[str, tuple[int, str, int, int]] = {}
        self._closed = False

    @property
    def connections(self) -> Mapping[str, ModbusConnection]:
        """Open connections by endpoint."""
        return dict(self._connections)

    def get_tcp(
        self, host: str, port: int = 502, *, timeout: float | None = None
    ) -> ModbusConnection:
        """Return the shared connection to ``host:port``, creating it on first use.

        Args:
            host: IP address or host name.
            port: TCP port.
            timeout: Reply timeout for this connection (default: the bus's).

        Raises:
            ValueError: ``timeout`` differs from the one the connection already has.
        """
        self._check_open()
        endpoint = f"tcp:{host.lower()}:{port}"
        conn = self._existing(endpoint, timeout)
        if conn is None:
            wait = timeout or self.timeout

            def factory(on_packet: PacketHook, on_connect: ConnectHook) -> Any:
                return AsyncModbusTcpClient(
                    host,
                    port=port,
                    name=endpoint,
                    timeout=wait,
                    retries=0,  # the poll loop is the retry
                    reconnect_delay=0,  # no pymodbus auto-reconnect: we own the back-off
                    reconnect_delay_max=0,
                    trace_packet=on_packet,
                    trace_connect=on_connect,
                )

            conn = ModbusConnection(
                endpoint,
                factory,
                kind="tcp",
                timeout=wait,
                backoff=self.backoff,
                rng=self._rng,
            )
            self._connections[endpoint] = conn
        return conn

    def get_rtu(
        self,
        port: str,
        baudrate: int = 9600,
        parity: Parity = "N",
        stopbits: int = 1,
        bytesize: int = 8,
        *,
        timeout: float | None = None,
    ) -> ModbusConnection:
        """Return the shared connection on serial ``port``, creating it on first use.

        Args:
            port: Device path (``/dev/ttyUSB0``) or a pyserial URL.
            baudrate: Line speed.
            parity: ``N``, ``E`` or ``O``.
            stopbits: 1 or 2.
            bytesize: 7 or 8.
            timeout: Reply timeout for this line (default: the bus's).

        Raises:
            ValueError: If the port is already open with different settings: a line
                has one speed, framing and timeout for every unit on it.
        """
        self._check_open()
        endpoint = f"rtu:{port}"
        settings = (baudrate, parity, stopbits, bytesize)
        conn = self._existing(endpoint, timeout)
        wait = timeout or self.timeout
        if conn is not None:
            if self._rtu_settings[endpoint] != settings:
                raise ValueError(
                    f"{endpoint} is open at {self._rtu_settings[endpoint]}, asked {settings}"
                )
            return conn
        # 3.5 character times of 11 bits, fixed 1.75 ms above 19200 baud.
        t35 = _RTU_FIXED_T35_S if baudrate > 19200 else 3.5 * 11 / baudrate

        def factory(on_packet: PacketHook, on_connect: ConnectHook) -> Any:
            return AsyncModbusSerialClient(
                port,
                baudrate=baudrate,
                parity=parity,
                stopbits=stopbits,
                bytesize=bytesize,
                name=endpoint,
                timeout=wait,
                retries=0,
                reconnect_delay=0,
                reconnect_delay_max=0,
                trace_packet=on_packet,
                trace_connect=on_connect,
            )

        conn = ModbusConnection(
            endpoint,
            factory,
            kind="rtu",
            timeout=wait,
            backoff=self.backoff,
            rng=self._rng,
            inter_frame_s=t35,
        )
        self._connections[endpoint] = conn
        self._rtu_settings[endpoint] = settings
        return conn

    async def aclose(self) -> None:
        """Close every connection."""
        self._closed = True
        connections, self._connections = list(self._connections.values()), {}
        for conn in connections:
            await conn.close()

    async def __aenter__(self) -> Self:
        """Return the bus."""
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close every connection."""
        await self.aclose()

    def _existing(self, endpoint: str, timeout: float | None) -> ModbusConnection | None:
        if timeout is not None and timeout <= 0:
            raise ValueError("timeout must be positive")
        conn = self._connections.get(endpoint)
        if conn is not None and timeout is not None and conn.timeout != timeout:
            raise ValueError(f"{endpoint} already has timeout {conn.timeout} s, asked {timeout} s")
        return conn

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("ModbusBus is closed")
