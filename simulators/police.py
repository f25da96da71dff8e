"""A police alarm-receiving centre (ARC) that speaks SIA DC-09, for tests and the demo.

It answers the way a real receiver does:

* ``ACK`` (``*ACK``, encrypted and timestamped, for encrypted messages) echoing seq, R, L and
  the account; ``NULL`` link tests are ACKed too;
* ``NAK`` with the receiver's time when the message timestamp is outside receiver time
  -40 s .. +20 s, when an encrypted message has no timestamp, or when the frame has a valid
  CRC but cannot be parsed or decrypted (the spec's "unparsable");
* ``DUH`` when the frame is intact but not understood: an unknown id, a Contact ID or SIA
  code it does not know, data it cannot read, an unknown account, or plain text where
  encryption is required;
* nothing at all for a CRC or length error. The bytes of such a frame cannot be trusted, so
  neither can the seq or account a reply would echo; the sender's timeout and
  retransmission (same seq) is the recovery DC-09 relies on. pysiaalarm, the independent
  receiver used in our interop tests, also sends no usable reply (a bare LF CR).

A retransmission (same account, seq, id and data within ``duplicate_window``) is ACKed again
but recorded once, with its ``duplicates`` counter raised.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Collection
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import IO, Literal, Self, cast

from drivers.dc09.codec import (
    ACK,
    ADM_CID,
    CID_TO_SIA,
    DUH,
    MESSAGE_TOKENS,
    NAK,
    NULL,
    SIA_DCS,
    ContactID,
    Frame,
    FrameBuffer,
    SiaEvent,
    decode,
    encode,
    make_nak,
    make_reply,
    parse_contact_id,
    parse_sia_dcs,
)
from drivers.dc09.crypto import key_from_config
from drivers.dc09.errors import CRCError, DC09Error, DecryptError, LengthError

__all__ = [
    "DEFAULT_PORT",
    "FrameLogEntry",
    "PoliceReceiver",
    "ReceivedMessage",
    "ReceiverCounters",
    "Transport",
    "serve_forever",
]

_LOG = logging.getLogger(__name__)

Transport = Literal["tcp", "udp"]

DEFAULT_PORT = 12000
"""DC-09 has no assigned port; this is only the simulator's default."""

# The spec's acceptance window: receiver time -40 s .. +20 s.
WINDOW_PAST_S = 40.0
WINDOW_FUTURE_S = 20.0

_SIA_CODES = frozenset(code for pair in CID_TO_SIA.values() for code in pair if code)


@dataclass(slots=True)
class ReceivedMessage:
    """One accepted alarm message (NULL link tests are only counted).

    Attributes:
        token: ``ADM-CID`` or ``SIA-DCS``.
        account: Account from the header.
        seq: Sequence number.
        data: Content of the data block.
        code: SIA DC-03 code (``PA`` ...), mapped from Contact ID for ADM-CID.
        contact_id: Parsed Contact ID (ADM-CID only).
        sia: Parsed SIA DC-03 event (SIA-DCS only).
        xdata: Extended data blocks.
        encrypted: Whether it came encrypted.
        receiver: R field.
        prefix: L field.
        sent_at: The message's own timestamp.
        transport: ``tcp`` or ``udp``.
        peer: Sender address.
        received_mono: ``time.monotonic()`` at reception.
        received_at: Receiver clock (wall clock plus ``clock_offset``) at reception.
        duplicates: Retransmissions received afterwards (ACKed, not recorded again).
    """

    token: str
    account: str
    seq: int
    data: str
    code: str | None
    contact_id: ContactID | None
    sia: SiaEvent | None
    xdata: tuple[tuple[str, str], ...]
    encrypted: bool
    receiver: str | None
    prefix: str | None
    sent_at: datetime | None
    transport: Transport
    peer: str
    received_mono: float
    received_at: datetime
    duplicates: int = 0


@dataclass(slots=True)
class FrameLogEntry:
    """Every frame that reached the receiver, with what it did about it."""

    transport: Transport
    peer: str
    raw: bytes
    frame: Frame | None
    reply: str | None
    """``ACK``, ``NAK``, ``DUH`` or None when nothing was sent back."""
    reason: str
    mono: float


@dataclass(slots=True)
class ReceiverCounters:
    """Counters of a :class:`PoliceReceiver`."""

    frames: int = 0
    accepted: int = 0
    duplicates: int = 0
    null: int = 0
    nak: int = 0
    duh: int = 0
    crc_errors: int = 0
    length_errors: int = 0
    format_errors: int = 0
    decrypt_errors: int = 0
    ignored_paused: int = 0
    replies_dropped: int = 0


class _UdpServer(asyncio.DatagramProtocol):
    def __init__(self, owner: PoliceReceiver) -> None:
        self._owner = owner
        self._transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Not an isinstance check: on 3.11 the selector transport does not subclass it.
        self._transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        peer = f"{addr[0]}:{addr[1]}"
        for raw in FrameBuffer(65_535).feed(data):  # one frame per datagram, but be lenient
            try:
                reply = self._owner.process(raw, "udp", peer)
            except Exception:
                _LOG.exception("police receiver failed on a datagram from %s", peer)
                continue
            if reply is not None and self._transport is not None:
                self._transport.sendto(reply, addr)


class PoliceReceiver:
    """DC-09 receiver simulator on TCP and UDP. Use as an async context manager."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        key: bytes | None = None,
        clock_offset: float = 0.0,
        tcp: bool = True,
        udp: bool = True,
        require_encryption: bool | None = None,
        accounts: Collection[str] | None = None,
        known_cid_codes: Collection[int] | None = None,
        known_sia_codes: Collection[str] | None = None,
        duplicate_window: float = 60.0,
        drop_replies: int = 0,
        log_path: Path | None = None,
    ) -> None:
        """Configure the receiver; sockets are bound on ``async with``.

        Args:
            host: Address to bind.
            port: Port for TCP and UDP (0 = any free port; UDP then tries TCP's number).
            key: AES key (16/24/32 bytes) for encrypted messages.
            clock_offset: Seconds added to the wall clock: the receiver's idea of "now".
            tcp: Serve TCP.
            udp: Serve UDP.
            require_encryption: DUH plain messages; defaults to True when a key is set.
            accounts: Accounts it knows (None = any).
            known_cid_codes: Contact ID codes it understands (default: the spec's table).
            known_sia_codes: SIA DC-03 codes it understands (default: the spec's table).
            duplicate_window: Seconds within which the same message is a retransmission.
            drop_replies: Swallow the next N replies (fault injection).
            log_path: Append every accepted message to this JSONL file.
        """
        self.host = host
        self._port = port
        self.key = key
        self.clock_offset = clock_offset
        self._serve_tcp = tcp
        self._serve_udp = udp
        self.require_encryption = (
            key is not None if require_encryption is None else require_encryption
        )
        self.accounts = None if accounts is None else frozenset(a.upper() for a in accounts)
        self.known_cid_codes = frozenset(CID_TO_SIA if known_cid_codes is None else known_cid_codes)
        self.known_sia_codes = frozenset(_SIA_CODES if known_sia_codes is None else known_sia_codes)
        self.duplicate_window = duplicate_window
        self.drop_replies = drop_replies
        self.log_path = log_path

        self.messages: list[ReceivedMessage] = []
        self.log: list[FrameLogEntry] = []
        self.counters = ReceiverCounters()
        self.paused = False
        self.tcp_port: int | None = None
        self.udp_port: int | None = None

        self._recent: dict[tuple[str, int, str, str], ReceivedMessage] = {}
        self._changed = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._udp: asyncio.DatagramTransport | None = None
        self._conns: dict[asyncio.StreamWriter, asyncio.Task[None] | None] = {}
        self._jsonl: IO[str] | None = None

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Self:
        """Bind the servers and open the log file."""
        self._open_log()
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the servers, every connection and the log file."""
        await self.stop()
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None

    def _open_log(self) -> None:
        if self.log_path is not None:
            self._jsonl = self.log_path.open("a", encoding="utf-8")

    async def start(self) -> None:
        """Bind (or re-bind after :meth:`stop`, on the same ports) and start serving."""
        if self._server is not None or self._udp is not None:
            return
        loop = asyncio.get_running_loop()
        if self._serve_tcp:
            self._server = await asyncio.start_server(
                self._handle_tcp, self.host, self.tcp_port or self._port
            )
            self.tcp_port = self._server.sockets[0].getsockname()[1]
        if self._serve_udp:
            wanted = self.udp_port or self._port or self.tcp_port or 0
            try:
                transport, _ = await loop.create_datagram_endpoint(
                    lambda: _UdpServer(self), local_addr=(self.host, wanted)
                )
            except OSError:
                if self._port or self.udp_port:
                    raise
                # The TCP port number is taken for UDP by someone else: any port will do.
                transport, _ = await loop.create_datagram_endpoint(
                    lambda: _UdpServer(self), local_addr=(self.host, 0)
                )
            self._udp = transport
            self.udp_port = transport.get_extra_info("sockname")[1]
        _LOG.info("police receiver listening tcp=%s udp=%s", self.tcp_port, self.udp_port)

    async def stop(self) -> None:
        """Close the listening sockets and drop every connection: the receiver is down."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        udp, self._udp = self._udp, None
        if udp is not None:
            udp.close()
        conns = list(self._conns.items())
        for writer, _ in conns:
            writer.close()
        tasks = [t for _, t in conns if t is not None and t is not asyncio.current_task()]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if server is not None:
            await server.wait_closed()

    def pause(self) -> None:
        """Keep the sockets open but ignore every frame: a hung receiver."""
        self.paused = True

    def resume(self) -> None:
        """Answer frames again after :meth:`pause`."""
        self.paused = False

    # ------------------------------------------------------------------ waiting

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    # "timeout" as a parameter (ASYNC109) is the API the tests want: wait_for(pred, timeout).
    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:  # noqa: ASYNC109
        """Wait until ``predicate()`` is true; it is re-checked after every frame.

        Raises:
            TimeoutError: Not true within ``timeout`` seconds.
        """
        try:
            async with asyncio.timeout(timeout):
                while not predicate():
                    await self._changed.wait()
        except TimeoutError:
            raise TimeoutError(
                f"condition not met within {timeout}s; counters: {self.counters}"
            ) from None

    @property
    def alarms(self) -> list[ReceivedMessage]:
        """Accepted messages (an alias of ``messages``, which never holds NULLs)."""
        return self.messages

    def now(self) -> datetime:
        """The receiver's clock: wall clock plus ``clock_offset``."""
        return datetime.now(UTC) + timedelta(seconds=self.clock_offset)

    # ------------------------------------------------------------------ transports

    async def _handle_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._conns[writer] = asyncio.current_task()
        peername = writer.get_extra_info("peername")
        peer = f"{peername[0]}:{peername[1]}" if peername else "?"
        buf = FrameBuffer()
        try:
            while True:
                chunk = await reader.read(4096)
                if not chunk:
                    break
                for raw in buf.feed(chunk):
                    reply = self.process(raw, "tcp", peer)
                    if reply is not None:
                        writer.write(reply)
                        await writer.drain()
        except OSError as exc:
            _LOG.debug("connection from %s ended: %s", peer, exc)
        except Exception:
            # The connection boundary: a simulator bug drops this connection, not the server.
            _LOG.exception("police receiver failed on a frame from %s", peer)
        finally:
            self._conns.pop(writer, None)
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    # ------------------------------------------------------------------ protocol

    def process(self, raw: bytes, transport: Transport = "tcp", peer: str = "") -> bytes | None:
        """Handle one frame and return the reply bytes, or None to stay silent.

        This is the receiver's whole decision logic, usable without sockets.
        """
        self.counters.frames += 1
        mono = time.monotonic()
        reply, frame, reason = self._decide(raw, transport, peer, mono)
        token: str | None = None
        if reply is not None:
            token = reply.token
            if token == NAK:
                self.counters.nak += 1
            elif token == DUH:
                self.counters.duh += 1
            if self.drop_replies > 0:
                self.drop_replies -= 1
                self.counters.replies_dropped += 1
                reason += "; reply dropped"
                token = None
        self.log.append(FrameLogEntry(transport, peer, raw, frame, token, reason, mono))
        self._notify()
        if reply is None or token is None:
            return None
        return encode(reply, self.key if reply.encrypted else None)

    def _nak(self, frame: Frame | None) -> Frame:
        if frame is None:
            return make_nak(self.now())
        return make_nak(self.now(), receiver=frame.receiver or "0", prefix=frame.prefix or "0")

    def _decide(
        self, raw: bytes, transport: Transport, peer: str, mono: float
    ) -> tuple[Frame | None, Frame | None, str]:
        if self.paused:
            self.counters.ignored_paused += 1
            return None, None, "paused"
        try:
            frame = decode(raw, self.key)
        except LengthError as exc:
            self.counters.length_errors += 1
            return None, None, f"dropped: {exc}"
        except CRCError as exc:
            self.counters.crc_errors += 1
            return None, None, f"dropped: {exc}"
        except DecryptError as exc:
            self.counters.decrypt_errors += 1
            return self._nak(None), None, f"NAK: {exc}"
        except DC09Error as exc:
            self.counters.format_errors += 1
            return self._nak(None), None, f"NAK: {exc}"

        if frame.token not in MESSAGE_TOKENS:
            return make_reply(frame, DUH), frame, f"DUH: unknown id {frame.token}"
        if self.require_encryption and not frame.encrypted:
            return make_reply(frame, DUH), frame, "DUH: plain message, encryption required"
        if self.accounts is not None and frame.account not in self.accounts:
            return make_reply(frame, DUH), frame, f"DUH: unknown account {frame.account}"

        now = self.now()
        if frame.timestamp is None:
            if frame.encrypted:
                return self._nak(frame), frame, "NAK: encrypted message without timestamp"
        else:
            skew = (frame.timestamp - now).total_seconds()
            if not -WINDOW_PAST_S <= skew <= WINDOW_FUTURE_S:
                return self._nak(frame), frame, f"NAK: timestamp {skew:+.0f}s off"

        ack = make_reply(frame, ACK, timestamp=now)
        if frame.token == NULL:
            self.counters.null += 1
            return ack, frame, "ACK: link test"

        cid: ContactID | None = None
        sia: SiaEvent | None = None
        try:
            if frame.token == ADM_CID:
                cid = parse_contact_id(frame.data)
                if cid.code not in self.known_cid_codes:
                    return make_reply(frame, DUH), frame, f"DUH: unknown Contact ID {cid.code}"
                code = cid.sia_code
            else:
                assert frame.token == SIA_DCS
                sia = parse_sia_dcs(frame.data)
                if sia.code not in self.known_sia_codes:
                    return make_reply(frame, DUH), frame, f"DUH: unknown SIA code {sia.code}"
                code = sia.code
        except DC09Error as exc:
            return make_reply(frame, DUH), frame, f"DUH: {exc}"

        key = (frame.account, frame.seq, frame.token, frame.data)
        seen = self._recent.get(key)
        if seen is not None and mono - seen.received_mono <= self.duplicate_window:
            seen.duplicates += 1
            self.counters.duplicates += 1
            return ack, frame, "ACK: duplicate"

        msg = ReceivedMessage(
            token=frame.token,
            account=frame.account,
            seq=frame.seq,
            data=frame.data,
            code=code,
            contact_id=cid,
            sia=sia,
            xdata=frame.xdata,
            encrypted=frame.encrypted,
            receiver=frame.receiver,
            prefix=frame.prefix,
            sent_at=frame.timestamp,
            transport=transport,
            peer=peer,
            received_mono=mono,
            received_at=now,
        )
        self._remember(key, msg)
        self.messages.append(msg)
        self.counters.accepted += 1
        self._write_jsonl(msg)
        _LOG.info("alarm %s acct %s seq %04d code %s", frame.token, frame.account, frame.seq, code)
        return ack, frame, "ACK"

    def _remember(self, key: tuple[str, int, str, str], msg: ReceivedMessage) -> None:
        horizon = msg.received_mono - self.duplicate_window
        for old in [k for k, m in self._recent.items() if m.received_mono < horizon]:
            del self._recent[old]
        self._recent[key] = msg

    def _write_jsonl(self, msg: ReceivedMessage) -> None:
        if self._jsonl is None:
            return
        record = asdict(msg)
        record["sent_at"] = msg.sent_at.isoformat() if msg.sent_at else None
        record["received_at"] = msg.received_at.isoformat()
        self._jsonl.write(json.dumps(record, sort_keys=True) + "\n")
        self._jsonl.flush()


async def serve_forever(
    host: str = "0.0.0.0",
    port: int = DEFAULT_PORT,
    *,
    key: str | None = None,
    key_encoding: Literal["ascii", "hex"] = "ascii",
    clock_offset: float = 0.0,
    tcp: bool = True,
    udp: bool = True,
    log_path: Path | None = None,
    ready: Callable[[PoliceReceiver], None] | None = None,
) -> None:
    """Run a police receiver until cancelled (the ``campusguard sim police`` entry).

    Args:
        host: Address to bind.
        port: TCP and UDP port (0 = any free port, see ``ready``).
        key: AES key as configured on the panel side, or None for plain DC-09.
        key_encoding: ``ascii`` (16/24/32 characters) or ``hex`` (32/48/64 hex digits).
        clock_offset: Seconds added to the receiver's clock.
        tcp: Serve TCP.
        udp: Serve UDP.
        log_path: JSONL file receiving every accepted alarm.
        ready: Called with the running receiver once its ports are bound.

    Raises:
        InvalidKeyError: The key does not decode to 16, 24 or 32 bytes.
    """
    key_bytes = key_from_config(key, key_encoding) if key is not None else None
    async with PoliceReceiver(
        host,
        port,
        key=key_bytes,
        clock_offset=clock_offset,
        tcp=tcp,
        udp=udp,
        log_path=log_path,
    ) as receiver:
        if ready is not None:
            ready(receiver)
        await asyncio.Event().wait()
