"""What the Modbus simulators share: the HTTP control server and the link faults.

:class:`ControlServer` is a deliberately small HTTP/1.1 server on stdlib asyncio: one
request per connection, query parameters only, JSON out. Enough for curl and the demo;
no dependency. It dispatches ``METHOD /path?query`` to :class:`Route` callables and
replies with the simulator's state, or with ``{"error": ...}`` and a 4xx/5xx status.

The link faults (unplug, silence, exception replies, garbage) are the same for every
simulated device: :class:`SimulatedDevice` holds the knobs and applies them to every
request and reply (:func:`garble` spoils a reply).
"""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.parse
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping, Sized
from dataclasses import dataclass
from types import TracebackType
from typing import Any, ClassVar, Literal, Protocol, Self

from pymodbus.constants import ExcCodes
from pymodbus.simulator import DataType, SimData

__all__ = [
    "BIT_TABLES",
    "FC_TABLE",
    "TABLES",
    "ControlServer",
    "GarbageKind",
    "Query",
    "Route",
    "SimulatedDevice",
    "UnplugMode",
    "garble",
    "query_arg",
    "sim_tables",
]

log = logging.getLogger(__name__)

GarbageKind = Literal["noise", "truncated"]
UnplugMode = Literal["refuse", "silent"]

Query = dict[str, str]
Reply = tuple[int, dict[str, Any]]

_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    500: "Internal Server Error",
}

TABLES = ("coil", "discrete_input", "holding_register", "input_register")
BIT_TABLES = frozenset({"coil", "discrete_input"})
# function code -> table it reads or writes
FC_TABLE = {
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


# --------------------------------------------------------------------------- link faults


def garble(packet: bytes, kind: GarbageKind, *, rtu: bool = False) -> bytes:
    """Spoil a Modbus reply the way a faulty device or line would.

    Args:
        packet: The reply as it would go on the wire (TCP with MBAP header, or RTU).
        kind: ``noise``: every byte scrambled, same length. ``truncated``: a reply one
            byte shorter than it should be.
        rtu: The packet is an RTU frame (CRC at the end) rather than Modbus TCP.
    """
    if kind == "noise":
        # XOR keeps the length but breaks the MBAP protocol id (0x0000 -> 0xA5A5) or the CRC.
        return bytes(b ^ 0xA5 for b in packet)
    if rtu:
        return packet[:-1]  # one byte short: the CRC no longer matches
    # A well-framed reply one byte short of what its header promises.
    pdu = packet[7:-1] if len(packet) > 8 else packet[7:]
    return packet[:4] + (len(pdu) + 1).to_bytes(2, "big") + packet[6:7] + pdu


# --------------------------------------------------------------------------- HTTP control


def query_arg(query: Query, name: str, default: str | None = None) -> str:
    """A query parameter, or ``default``; raises ``ValueError`` (a 400) when neither is there."""
    raw = query.get(name, default)
    if raw is None:
        raise ValueError(f"missing query parameter {name!r}")
    return raw


@dataclass(frozen=True, slots=True)
class Route:
    """One endpoint: the method it takes and what it does.

    Attributes:
        method: ``GET`` or ``POST``; any other method gets 405.
        action: Called with no argument; its result is awaited when awaitable, otherwise
            ignored. ``ValueError`` or ``KeyError`` from it is a 400. ``None``: nothing to
            do (a read-only endpoint).
    """

    method: Literal["GET", "POST"]
    action: Callable[[], object] | None = None


class ControlServer:
    """An HTTP control endpoint for a simulator.

    A request is answered in this order: a path among ``fixed`` is looked up without
    reading the query; otherwise ``routes(query)`` builds the endpoints for this request
    (it may parse parameters they share, and reject them with ``ValueError``: 400); an
    unknown path is a 404, the wrong method a 405; then the route's action runs and the
    reply is ``state()`` with status 200. An unexpected exception is a 500.

    Args:
        state: The simulator's state as JSON-ready data: the body of every 200 reply.
        routes: Path -> route for one request, from its query parameters.
        fixed: Path -> route answered whatever the query holds (e.g. ``/state``).

    Attributes:
        port: The bound port once :meth:`start` returned.
    """

    def __init__(
        self,
        state: Callable[[], dict[str, Any]],
        routes: Callable[[Query], Mapping[str, Route]],
        *,
        fixed: Mapping[str, Route] | None = None,
    ) -> None:
        """Prepare the server; nothing listens until :meth:`start`."""
        self._state = state
        self._routes = routes
        self._fixed: Mapping[str, Route] = fixed or {}
        self._server: asyncio.Server | None = None
        self.port: int | None = None

    async def start(self, host: str, port: int) -> int:
        """Listen on ``host``:``port`` (0 = any free port); returns the bound port."""
        self._server = await asyncio.start_server(self._handle, host, port)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    async def close(self) -> None:
        """Stop listening."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
            await server.wait_closed()

    async def dispatch(self, method: str, path: str, query: Query) -> Reply:
        """Answer one request: ``(status, JSON body)``.

        Raises:
            ValueError: Or ``KeyError``: a bad query (the caller answers 400).
        """
        route = self._fixed.get(path)
        if route is None:
            route = self._routes(query).get(path)
        if route is None:
            return 404, {"error": f"no such endpoint {path}"}
        if method != route.method:
            return 405, {"error": f"use {route.method}"}
        if route.action is not None:
            result = route.action()
            if isinstance(result, Awaitable):
                await result
        return 200, self._state()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
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
            status, body = await self.dispatch(method.upper(), url.path, query)
        except (ValueError, KeyError) as exc:
            status, body = 400, {"error": str(exc)}
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            writer.close()
            return
        except Exception as exc:
            log.exception("HTTP control request failed")
            status, body = 500, {"error": f"{type(exc).__name__}: {exc}"}
        payload = json.dumps(body).encode()
        head = (
            f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
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


# --------------------------------------------------------------------------- the device


def sim_tables(sizes: Mapping[str, int]) -> tuple[list[SimData], ...]:
    """pymodbus tables (coils, discrete inputs, holding, input registers) of these sizes."""

    def bits(n: int) -> list[SimData]:
        return [SimData(0, count=(n + 15) // 16 * 16, values=False, datatype=DataType.BITS)]

    def regs(n: int) -> list[SimData]:
        return [SimData(0, count=n, values=0, datatype=DataType.REGISTERS)]

    return (
        bits(sizes["coil"]),
        bits(sizes["discrete_input"]),
        regs(sizes["holding_register"]),
        regs(sizes["input_register"]),
    )


class _ModbusServer(Protocol):
    @property
    def active_connections(self) -> Sized: ...

    async def shutdown(self) -> None: ...


class SimulatedDevice(ABC):
    """The network side of a simulated Modbus device: what every simulator shares.

    A subclass answers its register map (:meth:`_write`, :meth:`_render_table`, maybe
    :meth:`_refuse_read`), starts pymodbus in :meth:`_listen` with ``_trace_packet`` as
    the packet hook and ``partial(self._action, unit)`` as each device's action (unit
    ``None`` for pymodbus' catch-all), and describes itself in :meth:`snapshot` and
    :meth:`_http_routes`. This class does the rest: entering starts Modbus and the HTTP
    control endpoint, leaving stops both, and the link-fault knobs act on every request.

    Args:
        host: Address to bind.
        port: Modbus TCP port; 0 picks a free one.
        http_port: Also serve the HTTP control endpoint on this port (0 = any free one).
        http_host: Address for the HTTP control endpoint (default: ``host``).

    Attributes:
        requests_seen: Modbus requests that reached the register map.
    """

    #: Endpoints answered before the query is read (see :class:`ControlServer`).
    _http_fixed: ClassVar[Mapping[str, Route]] = {}

    def __init__(
        self, *, host: str, port: int, http_port: int | None, http_host: str | None
    ) -> None:
        """Set the addresses and a healthy link; nothing listens until entered."""
        self.host = host
        self.port = port
        self.http_port = http_port
        self.http_host = http_host or host
        self.requests_seen = 0
        self._server: _ModbusServer | None = None
        self._http: ControlServer | None = None
        self._plugged = True
        self._silent = False
        self._exception: ExcCodes | None = None
        self._garbage: GarbageKind | None = None

    # ------------------------------------------------------------------ for subclasses

    @abstractmethod
    async def _listen(self) -> None:
        """Start the Modbus server, set ``_server`` and the bound ``port``."""

    @abstractmethod
    def _write(self, unit: int, table: str, address: int, values: list[int]) -> ExcCodes | None:
        """Apply a write from the wire; an exception code refuses it."""

    @abstractmethod
    def _render_table(self, unit: int, table: str) -> list[int]:
        """The values of a whole table for a read (bits as 0/1)."""

    def _refuse_read(self, unit: int, function_code: int) -> ExcCodes | None:
        """An exception code to answer a read with instead, or ``None``."""
        return None

    @property
    def _rtu(self) -> bool:
        """Whether replies are RTU frames (CRC at the end) rather than Modbus TCP."""
        return False

    def _unanswered(self, reply: bytes) -> bool:
        """Whether this reply must not go out at all."""
        return False

    @abstractmethod
    def snapshot(self) -> dict[str, Any]:
        """The simulator's state as JSON-ready data (what ``GET /state`` returns)."""

    @abstractmethod
    def _http_routes(self, query: Query) -> Mapping[str, Route]:
        """The HTTP control endpoints for one request (see :class:`ControlServer`)."""

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Self:
        """Start listening (Modbus, and HTTP if asked)."""
        await self._listen()
        if self.http_port is not None:
            self._http = ControlServer(self.snapshot, self._http_routes, fixed=self._http_fixed)
            self.http_port = await self._http.start(self.http_host, self.http_port)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop serving and close every connection."""
        if self._http is not None:
            await self._http.close()
            self._http = None
        await self._stop_listening()

    async def _stop_listening(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            await server.shutdown()  # closes the listening socket and every connection

    async def run_forever(self, started: Callable[[Self], None] | None = None) -> None:
        """Call ``started`` with this simulator, then serve until cancelled (use it inside
        ``async with``, once listening)."""
        if started is not None:
            started(self)
        await asyncio.Event().wait()

    # ------------------------------------------------------------------ pymodbus hooks

    def _trace_packet(self, sending: bool, data: bytes) -> bytes:
        if not sending:
            return data
        if self._silent or self._unanswered(data):
            return b""
        if self._garbage is not None:
            return garble(data, self._garbage, rtu=self._rtu)
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
        # (the whole table). The simulated device is the truth; the table is re-rendered
        # from it for each read.
        self.requests_seen += 1
        if self._exception is not None:
            return self._exception
        if unit is None:
            return ExcCodes.GATEWAY_NO_RESPONSE
        table = FC_TABLE.get(function_code)
        if table is None:
            return ExcCodes.ILLEGAL_FUNCTION
        if values is not None:
            if self._silent:
                return None  # the request "never arrived": leave the device alone
            return self._write(unit, table, address, [int(v) for v in values])
        if function_code in _WRITE_FC:
            return None  # pymodbus reads back after a write to build the echo: keep it
        refused = self._refuse_read(unit, function_code)
        if refused is not None:
            return refused
        rendered = self._render_table(unit, table)
        if table in BIT_TABLES:
            padded = rendered + [0] * (16 * (len(registers) - 1) - len(rendered))
            packed = [
                sum(1 << i for i, bit in enumerate(padded[r * 16 : r * 16 + 16]) if bit)
                for r in range(len(registers) - 1)
            ]
            registers[: len(packed)] = packed
        else:
            registers[: len(rendered)] = rendered
        return None

    # ------------------------------------------------------------------ link faults

    @property
    def open_connections(self) -> int:
        """Client connections open right now."""
        server = self._server
        return 0 if server is None else len(server.active_connections)

    async def unplug(self, mode: UnplugMode = "refuse") -> None:
        """Take the device off the network.

        Args:
            mode: ``refuse``: close every connection and the listening socket (the
                peer sees a reset, then "connection refused"). ``silent``: keep the
                sockets but drop every request, like a cut cable behind a switch
                (the peer sees timeouts).
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
        """Reply with garbage: ``noise`` (scrambled bytes) or ``truncated`` (a reply
        one byte shorter than its header says). ``None`` = normal."""
        self._garbage = kind

    def normal_mode(self) -> None:
        """Clear the exception and garbage modes and the silent unplug."""
        self._exception = None
        self._garbage = None
        self._silent = False

    def link_state(self) -> dict[str, Any]:
        """The link faults as JSON-ready data (part of :meth:`snapshot`)."""
        return {
            "plugged": self._plugged,
            "silent": self._silent,
            "exception": None if self._exception is None else int(self._exception),
            "garbage": self._garbage,
        }

    async def _link_fault(self, mode: str, code: str | None) -> None:
        """Set a link fault by its HTTP name.

        Args:
            mode: ``unplug``, ``silent``, ``plug``, ``exception``, ``garbage`` (or
                ``noise``), ``truncated`` or ``normal``.
            code: The Modbus exception code for ``exception`` (default 4).

        Raises:
            ValueError: Unknown mode, or an exception code that is not one.
        """
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
