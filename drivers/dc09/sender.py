"""Async DC-09 sender: TCP/UDP transport, retries, dual-path failover and NULL supervision.

The sender speaks for the campus the way an alarm panel (a DC-09 "transmitter") does:

* one frame per TCP write, and the reply is awaited before the next frame on that connection
  (some receivers treat each read as one frame) -- each connection is checked out of its path's
  small pool (``connections``) for one exchange at a time, so up to ``connections`` messages
  of different callers are in flight on a path at once; a connection found dead is replaced;
* a retransmission keeps its sequence number; new messages take 0001..9999, wrapping to 0001;
* a NAK carrying the receiver's time re-syncs the clock offset of that path and the frame is
  resent with a corrected timestamp, a bounded number of times;
* a DUH is final: the receiver understood the frame but not its content, so resending (or
  trying the backup, which runs the same software) would only loop;
* no reply or no connection: retry on the same path, then fail over to the backup path;
* NULL link tests keep an idle path supervised; a missing ACK is a path fault.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from types import TracebackType
from typing import Literal, Protocol, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from drivers.dc09.codec import ACK, DUH, NAK, NULL, REPLY_TOKENS, Frame, FrameBuffer, decode, encode
from drivers.dc09.crypto import KEY_SIZES
from drivers.dc09.errors import DC09Error

__all__ = [
    "DC09Sender",
    "DeliveryResult",
    "HealthCallback",
    "PathConfig",
    "ReplyKind",
    "SenderConfig",
]

_LOG = logging.getLogger(__name__)

_HEX_1_6 = r"^[0-9A-Fa-f]{1,6}$"
_ACCOUNT = r"^[0-9A-Fa-f]{3,16}$"
_UDP_MAX = 65_535


class PathConfig(BaseModel):
    """One transmission path to a receiving centre."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field(min_length=1, description="Receiver host name or IP address.")
    port: int = Field(ge=1, le=65535, description="Receiver port.")
    transport: Literal["tcp", "udp"] = Field("tcp", description="IP transport of DC-09.")


class SenderConfig(BaseModel):
    """Configuration of a :class:`DC09Sender`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    protocol: Literal["ADM-CID", "SIA-DCS"] = Field(
        "ADM-CID", description="Message id used by send(): Contact ID or SIA DC-03 data."
    )
    receiver: str = Field("0", pattern=_HEX_1_6, description="Receiver number (R field).")
    prefix: str = Field("0", pattern=_HEX_1_6, description="Account prefix / line (L field).")
    primary: PathConfig
    backup: PathConfig | None = None
    key: bytes | None = Field(
        None,
        repr=False,
        description="AES key, 16/24/32 bytes; None sends unencrypted. A string is taken as "
        "its ASCII bytes; use drivers.dc09.key_from_config for hex-written keys.",
    )
    ack_timeout: float = Field(2.0, gt=0, le=60, description="Seconds to wait for a reply.")
    connect_timeout: float = Field(3.0, gt=0, le=60, description="TCP connect timeout, s.")
    attempts: int = Field(3, ge=1, le=20, description="Transmissions per path (same seq).")
    supervision_interval: float = Field(
        60.0,
        ge=0,
        description="Send a NULL link test when a path was idle this long (s); 0 = off. "
        "EN 50136-1 DP4 must see a primary failure within 90 s.",
    )
    supervision_account: str | None = Field(
        None, pattern=_ACCOUNT, description="Account used in NULL link tests."
    )
    max_clock_offset: float = Field(
        86_400.0,
        ge=0,
        description="Largest clock correction (s) accepted from a NAK; a larger one is "
        "treated as a misconfigured receiver and the NAK is final.",
    )
    max_nak_resyncs: int = Field(
        2, ge=0, le=10, description="Re-sends with a corrected timestamp per path."
    )
    connections: int = Field(
        1,
        ge=1,
        le=64,
        description="Connections (TCP) or sockets (UDP) per path: up to this many messages "
        "in flight on a path at once, one exchange at a time on each. Opened when needed.",
    )
    primary_retry_after: float = Field(
        30.0,
        ge=0,
        description="After the primary failed, new messages try the backup first for this "
        "long (s); supervision or this back-off brings the primary back.",
    )

    @field_validator("receiver", "prefix", "supervision_account")
    @classmethod
    def _upper(cls, value: str | None) -> str | None:
        return value.upper() if value else value

    @field_validator("key")
    @classmethod
    def _key_length(cls, value: bytes | None) -> bytes | None:
        if value is not None and len(value) not in KEY_SIZES:
            raise ValueError(f"AES key must be 16, 24 or 32 bytes, got {len(value)}")
        return value

    @model_validator(mode="after")
    def _supervision_needs_account(self) -> Self:
        if self.supervision_interval > 0 and not self.supervision_account:
            raise ValueError("supervision_account is required when supervision_interval > 0")
        return self


class ReplyKind(StrEnum):
    """How a delivery ended."""

    ACK = "ACK"
    NAK = "NAK"
    DUH = "DUH"
    TIMEOUT = "timeout"
    UNREACHABLE = "unreachable"


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    """Outcome of :meth:`DC09Sender.send`.

    Attributes:
        accepted: True when a receiver ACKed the message.
        reply: The final reply (or lack of one).
        path: ``"primary"`` or ``"backup"``: the path that answered, else the last one tried.
        seq: Sequence number used by every transmission of this message.
        attempts: Transmission attempts over all paths, NAK re-sends included (an attempt
            that could not connect counts too).
        rtt_ms: Round trip of the final exchange, None without a reply.
        receiver_time: Timestamp carried by the reply (encrypted ACK, NAK, DUH), if any.
        clock_offset: Clock offset (s) in use on ``path`` after this delivery.
    """

    accepted: bool
    reply: ReplyKind
    path: str | None
    seq: int
    attempts: int
    rtt_ms: float | None = None
    receiver_time: datetime | None = None
    clock_offset: float = 0.0


HealthCallback = Callable[[str, bool, str], None]
"""``(path_name, ok, reason)``, called on transitions only."""


def _utcnow() -> datetime:
    return datetime.now(UTC)


class _Link(Protocol):
    async def exchange(self, raw: bytes, seq: int, reply_timeout: float) -> Frame: ...

    async def close(self) -> None: ...


def _is_reply_to(frame: Frame, seq: int) -> bool:
    # A NAK answers "the message just received" and carries seq 0000 in the standard form.
    return frame.token in REPLY_TOKENS and (
        frame.seq == seq or (frame.token == NAK and frame.seq == 0)
    )


def _decode_reply(raw: bytes, key: bytes | None, seq: int) -> Frame | None:
    try:
        frame = decode(raw, key)
    except DC09Error as exc:
        # pysiaalarm answers a CRC error with a bare "\n\r": not a reply, keep waiting.
        _LOG.debug("ignoring undecodable reply %r: %s", raw[:64], exc)
        return None
    if not _is_reply_to(frame, seq):
        _LOG.debug("ignoring %s seq %04d while waiting for seq %04d", frame.token, frame.seq, seq)
        return None
    return frame


class _TcpLink:
    """A kept-open TCP connection; reconnects on the next exchange after any failure."""

    def __init__(self, cfg: PathConfig, key: bytes | None, connect_timeout: float) -> None:
        self._cfg = cfg
        self._key = key
        self._connect_timeout = connect_timeout
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._buf = FrameBuffer()

    async def _connected(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = self._reader, self._writer
        if reader is not None and writer is not None:
            if not writer.is_closing() and not reader.at_eof():
                return reader, writer
            await self.close()
        try:
            async with asyncio.timeout(self._connect_timeout):
                reader, writer = await asyncio.open_connection(self._cfg.host, self._cfg.port)
        except TimeoutError:
            # Not a reply timeout: report it as a connection failure.
            raise ConnectionError(f"connect timed out after {self._connect_timeout}s") from None
        self._reader, self._writer = reader, writer
        self._buf.clear()
        return reader, writer

    async def exchange(self, raw: bytes, seq: int, reply_timeout: float) -> Frame:
        reader, writer = await self._connected()
        writer.write(raw)  # one frame per write: some receivers treat each read as a frame
        await writer.drain()
        async with asyncio.timeout(reply_timeout):
            while True:
                chunk = await reader.read(4096)
                if not chunk:
                    raise ConnectionResetError("receiver closed the connection")
                for item in self._buf.feed(chunk):
                    frame = _decode_reply(item, self._key, seq)
                    if frame is not None:
                        return frame

    async def close(self) -> None:
        writer, self._reader, self._writer = self._writer, None, None
        if writer is None:
            return
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.inbox: asyncio.Queue[bytes | Exception] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        self.inbox.put_nowait(data)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable arrives here as ConnectionRefusedError: fail fast.
        self.inbox.put_nowait(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.inbox.put_nowait(exc or ConnectionResetError("UDP endpoint closed"))


class _UdpLink:
    """One connected UDP socket; a frame per datagram, the reply matched by seq."""

    def __init__(self, cfg: PathConfig, key: bytes | None) -> None:
        self._cfg = cfg
        self._key = key
        self._transport: asyncio.DatagramTransport | None = None
        self._proto: _UdpProtocol | None = None

    async def _connected(self) -> tuple[asyncio.DatagramTransport, _UdpProtocol]:
        if self._transport is not None and self._proto is not None:
            if not self._transport.is_closing():
                return self._transport, self._proto
            await self.close()
        loop = asyncio.get_running_loop()
        transport, proto = await loop.create_datagram_endpoint(
            _UdpProtocol, remote_addr=(self._cfg.host, self._cfg.port)
        )
        self._transport, self._proto = transport, proto
        return transport, proto

    async def exchange(self, raw: bytes, seq: int, reply_timeout: float) -> Frame:
        transport, proto = await self._connected()
        while not proto.inbox.empty():  # late replies and ICMP errors of earlier frames
            proto.inbox.get_nowait()
        transport.sendto(raw)
        async with asyncio.timeout(reply_timeout):
            while True:
                item = await proto.inbox.get()
                if isinstance(item, Exception):
                    raise item
                for part in FrameBuffer(_UDP_MAX).feed(item):
                    frame = _decode_reply(part, self._key, seq)
                    if frame is not None:
                        return frame

    async def close(self) -> None:
        transport, self._transport, self._proto = self._transport, None, None
        if transport is not None:
            transport.close()


@dataclass(slots=True)
class _Path:
    name: str
    cfg: PathConfig
    links: list[_Link]
    idle: asyncio.LifoQueue[_Link]
    """Connections free for an exchange; LIFO keeps the recently used (open) ones busy and
    leaves the rest unopened under a light load."""
    ok: bool = True  # assumed healthy until a failure is seen: only transitions are reported
    failed_at: float = 0.0
    last_tx: float = 0.0
    offset: float = 0.0
    last_reply: datetime | None = None
    """When the receiver last answered on this path (an alarm's ACK or a NULL link test's),
    UTC: what a technician reads as the path's last sign of life."""

    @contextlib.asynccontextmanager
    async def checkout(self) -> AsyncIterator[_Link]:
        """One connection of the path, for this caller's exchanges only."""
        link = await self.idle.get()
        try:
            yield link
        finally:
            self.idle.put_nowait(link)


@dataclass(slots=True)
class _Outcome:
    kind: ReplyKind
    sent: int
    rtt_ms: float | None = None
    receiver_time: datetime | None = None


class DC09Sender:
    """DC-09 transmitter over a primary and an optional backup path.

    Use it as an async context manager; it owns the supervision tasks::

        async with DC09Sender(cfg, on_health=cb) as sender:
            result = await sender.send("1234", contact_id_data("1234", 1, 120, 1, 15))
    """

    def __init__(
        self,
        config: SenderConfig,
        *,
        on_health: HealthCallback | None = None,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        """Create a sender; nothing runs until ``async with``.

        Args:
            config: Paths, key, timeouts and supervision.
            on_health: Called with ``(path_name, ok, reason)`` when a path changes state.
            clock: Wall clock in UTC for message timestamps (injectable for tests).
        """
        self._cfg = config
        self._on_health = on_health
        self._clock = clock
        self._seq = 0
        self._paths: dict[str, _Path] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._running = False
        for name, pcfg in (("primary", config.primary), ("backup", config.backup)):
            if pcfg is None:
                continue
            links: list[_Link] = []
            for _ in range(config.connections):
                if pcfg.transport == "tcp":
                    links.append(_TcpLink(pcfg, config.key, config.connect_timeout))
                else:
                    links.append(_UdpLink(pcfg, config.key))
            idle: asyncio.LifoQueue[_Link] = asyncio.LifoQueue()
            for link in reversed(links):
                idle.put_nowait(link)
            self._paths[name] = _Path(name, pcfg, links, idle)

    async def __aenter__(self) -> Self:
        """Start supervision (when configured)."""
        self._running = True
        now = time.monotonic()
        for path in self._paths.values():
            path.last_tx = now
            if self._cfg.supervision_interval > 0:
                task = asyncio.create_task(
                    self._supervise(path), name=f"dc09-supervise-{path.name}"
                )
                self._tasks.append(task)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop supervision and close every connection."""
        self._running = False
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for path in self._paths.values():
            for link in path.links:
                await link.close()

    def last_replies(self) -> dict[str, datetime | None]:
        """Per path: when the receiver last answered (an ACK, NAK or DUH), UTC."""
        return {name: p.last_reply for name, p in self._paths.items()}

    @property
    def path_health(self) -> dict[str, bool]:
        """Current state of each configured path (True = working)."""
        return {name: p.ok for name, p in self._paths.items()}

    def clock_offset(self, path: str = "primary") -> float:
        """Clock offset (s) learned from NAKs on ``path``, added to message timestamps."""
        return self._paths[path].offset

    def _next_seq(self) -> int:
        self._seq = self._seq % 9999 + 1
        return self._seq

    def _timestamp(self, path: _Path) -> datetime:
        return self._clock() + timedelta(seconds=path.offset)

    def build_frame(
        self, account: str, data: str, xdata: Iterable[tuple[str, str]] = (), *, token: str
    ) -> Frame:
        """Validate and build a frame template (seq 0, no timestamp) without sending it.

        Raises:
            ValueError: The account, data or x-data cannot be sent.
        """
        return Frame(
            token=token,
            seq=0,
            account=account.upper(),
            data=data,
            receiver=self._cfg.receiver,
            prefix=self._cfg.prefix,
            xdata=tuple(xdata),
            encrypted=self._cfg.key is not None,
        )

    def _order(self) -> list[_Path]:
        primary = self._paths["primary"]
        backup = self._paths.get("backup")
        if backup is None:
            return [primary]
        if primary.ok or time.monotonic() - primary.failed_at >= self._cfg.primary_retry_after:
            return [primary, backup]
        # The primary failed recently: don't make an alarm wait for its timeouts first,
        # but still try it last rather than give up.
        return [backup, primary]

    async def send(
        self,
        account: str,
        data: str,
        xdata: Iterable[tuple[str, str]] = (),
        *,
        token: str | None = None,
        seq: int | None = None,
    ) -> DeliveryResult:
        """Deliver one message to the first path that ACKs it.

        Args:
            account: Account at the receiving centre (3..16 hex digits).
            data: Content of the data block, e.g. ``contact_id_data(...)``.
            xdata: Extended data blocks, e.g. ``[("V", "https://...")]``.
            token: Message id; defaults to the configured protocol.
            seq: Sequence number to use (1..9999). A caller that persists it before the first
                send and passes it again after a crash makes the receiver see a
                retransmission, not a second alarm. Default: the sender's own counter.

        Returns:
            The outcome; ``accepted`` is False after DUH, or when every path failed.

        Raises:
            ValueError: The message is malformed (nothing was sent).
            RuntimeError: The sender is not running (use ``async with``).
        """
        if not self._running:
            raise RuntimeError("DC09Sender is not running; use 'async with DC09Sender(...)'")
        template = self.build_frame(account, data, xdata, token=token or self._cfg.protocol)
        if seq is not None and not 1 <= seq <= 9999:
            raise ValueError(f"seq must be 1..9999, got {seq}")
        template = replace(template, seq=seq if seq is not None else self._next_seq())
        sent = 0
        result: DeliveryResult | None = None
        for path in self._order():
            async with path.checkout() as link:
                outcome = await self._exchange(path, link, template, self._cfg.attempts)
            sent += outcome.sent
            result = DeliveryResult(
                accepted=outcome.kind is ReplyKind.ACK,
                reply=outcome.kind,
                path=path.name,
                seq=template.seq,
                attempts=sent,
                rtt_ms=outcome.rtt_ms,
                receiver_time=outcome.receiver_time,
                clock_offset=path.offset,
            )
            if outcome.kind in (ReplyKind.ACK, ReplyKind.DUH):
                break
            _LOG.debug("seq %04d not delivered on %s (%s)", template.seq, path.name, outcome.kind)
        assert result is not None
        if result.reply is ReplyKind.DUH:
            _LOG.warning(
                "receiver on %s answered DUH to seq %04d (%s): not understood, not resent",
                result.path,
                template.seq,
                template.data,
            )
        elif not result.accepted:
            _LOG.error("seq %04d not delivered on any path (%s)", template.seq, result.reply)
        return result

    async def send_null(self, path: str = "primary") -> DeliveryResult:
        """Send one NULL link test on ``path`` now (a self-test of the path)."""
        if not self._running:
            raise RuntimeError("DC09Sender is not running; use 'async with DC09Sender(...)'")
        account = self._cfg.supervision_account
        if account is None:
            raise ValueError("supervision_account is not configured")
        p = self._paths[path]
        async with p.checkout() as link:
            seq, outcome = await self._null(p, link, account)
        return DeliveryResult(
            accepted=outcome.kind is ReplyKind.ACK,
            reply=outcome.kind,
            path=p.name,
            seq=seq,
            attempts=outcome.sent,
            rtt_ms=outcome.rtt_ms,
            receiver_time=outcome.receiver_time,
            clock_offset=p.offset,
        )

    async def _null(self, path: _Path, link: _Link, account: str) -> tuple[int, _Outcome]:
        template = replace(self.build_frame(account, "", token=NULL), seq=self._next_seq())
        # A link test gets one transmission: a missing ACK is, by definition, a path fault.
        return template.seq, await self._exchange(path, link, template, 1)

    async def _exchange(self, path: _Path, link: _Link, template: Frame, attempts: int) -> _Outcome:
        """Transmit ``template`` over ``link`` (checked out of ``path``) until a reply or
        ``attempts``."""
        key = self._cfg.key
        sent = 0
        naks = 0
        tries = 0
        kind = ReplyKind.TIMEOUT
        reason = ""
        while tries < attempts:
            tries += 1
            frame = replace(template, timestamp=self._timestamp(path))
            raw = encode(frame, key)
            started = time.monotonic()
            sent += 1
            try:
                reply = await link.exchange(raw, frame.seq, self._cfg.ack_timeout)
            except TimeoutError:
                kind, reason = ReplyKind.TIMEOUT, f"no reply within {self._cfg.ack_timeout:g}s"
                _LOG.debug("%s: seq %04d try %d: %s", path.name, frame.seq, tries, reason)
                # A half-open TCP connection also looks like this: start afresh next time.
                await link.close()
                continue
            except OSError as exc:
                kind, reason = ReplyKind.UNREACHABLE, f"{type(exc).__name__}: {exc}"
                _LOG.debug("%s: seq %04d try %d: %s", path.name, frame.seq, tries, reason)
                await link.close()
                continue
            finally:
                path.last_tx = time.monotonic()
            rtt_ms = (time.monotonic() - started) * 1000.0
            # Any reply proves the path works, even a NAK or DUH.
            path.last_reply = _utcnow()
            self._set_health(path, True, f"{reply.token} received")
            if reply.token == ACK:
                return _Outcome(ReplyKind.ACK, sent, rtt_ms, reply.timestamp)
            if reply.token == DUH:
                return _Outcome(ReplyKind.DUH, sent, rtt_ms, reply.timestamp)
            if reply.timestamp is not None and naks < self._cfg.max_nak_resyncs:
                offset = (reply.timestamp - self._clock()).total_seconds()
                if abs(offset) <= self._cfg.max_clock_offset:
                    naks += 1
                    tries -= 1  # a re-sync is not a failed try: it has its own bound
                    _LOG.warning(
                        "%s: NAK for seq %04d, clock offset now %+.0f s (was %+.0f s)",
                        path.name,
                        frame.seq,
                        offset,
                        path.offset,
                    )
                    path.offset = offset
                    continue
                _LOG.error(
                    "%s: NAK asks for a %+.0f s clock correction, above max_clock_offset",
                    path.name,
                    offset,
                )
            return _Outcome(ReplyKind.NAK, sent, rtt_ms, reply.timestamp)
        self._set_health(path, False, reason)
        return _Outcome(kind, sent)

    def _set_health(self, path: _Path, ok: bool, reason: str) -> None:
        if not ok:
            path.failed_at = time.monotonic()
        if path.ok == ok:
            return
        path.ok = ok
        if ok:
            _LOG.info("DC-09 path %s recovered (%s)", path.name, reason)
        else:
            _LOG.warning("DC-09 path %s failed: %s", path.name, reason)
        if self._on_health is None:
            return
        try:
            self._on_health(path.name, ok, reason)
        except Exception:
            _LOG.exception("path health callback failed")

    async def _supervise(self, path: _Path) -> None:
        interval = self._cfg.supervision_interval
        account = self._cfg.supervision_account
        assert account is not None  # guaranteed by SenderConfig
        while True:
            delay = path.last_tx + interval - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
                continue
            try:
                async with path.checkout() as link:
                    # A message may have gone out while we waited for the connection.
                    if time.monotonic() - path.last_tx >= interval:
                        await self._null(path, link, account)
            except Exception:
                # The loop boundary: a bug must not stop supervision for good.
                _LOG.exception("supervision of path %s failed", path.name)
                path.last_tx = time.monotonic()
