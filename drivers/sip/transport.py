"""SIP over UDP on asyncio: non-INVITE client transactions (RFC 3261 17.1.2) with
retransmission (T1 doubling up to T2) until a final answer or the timeout, matched by the Via
branch; requests from the peer are answered by a callback (default: 200 OK to MESSAGE and
OPTIONS, 405 to anything else)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable
from types import TracebackType
from typing import Self

from drivers.sip.message import SipMessage, SipParseError, new_tag, parse, response

log = logging.getLogger(__name__)

T1 = 0.5
T2 = 4.0

Addr = tuple[str, int]
RequestHandler = Callable[[SipMessage, Addr], SipMessage | None]


class TransactionTimeout(TimeoutError):
    """No final answer within the time allowed."""


def source_ip_for(host: str, port: int) -> str:
    """The local address the system would use to reach ``host`` (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect((host, port))
            return str(s.getsockname()[0])
        except OSError:
            return "127.0.0.1"


def default_handler(req: SipMessage, addr: Addr) -> SipMessage | None:
    if req.method == "ACK":
        return None
    status = 200 if req.method in ("MESSAGE", "OPTIONS", "NOTIFY") else 405
    return response(req, status, to_tag=new_tag())


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, owner: SipUdpTransport) -> None:
        self.owner = owner

    def datagram_received(self, data: bytes, addr: Addr) -> None:
        self.owner._received(data, addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("SIP socket error: %s", exc)  # ICMP unreachable and the like: a timeout


class SipUdpTransport:
    def __init__(
        self,
        local_host: str,
        local_port: int,
        remote: Addr,
        on_request: RequestHandler = default_handler,
    ) -> None:
        self.local = (local_host, local_port)
        self.remote = remote
        self.on_request = on_request
        self._transport: asyncio.DatagramTransport | None = None
        self._pending: dict[str, asyncio.Future[SipMessage]] = {}
        self.bad_messages = 0

    async def __aenter__(self) -> Self:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Protocol(self), local_addr=self.local, family=socket.AF_INET
        )
        self._transport = transport
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        for fut in self._pending.values():
            if not fut.done():
                fut.cancel()

    @property
    def local_port(self) -> int:
        assert self._transport is not None
        return int(self._transport.get_extra_info("sockname")[1])

    def _received(self, data: bytes, addr: Addr) -> None:
        if not data.strip():
            return  # CRLF keep-alive
        try:
            msg = parse(data)
        except SipParseError as exc:
            self.bad_messages += 1
            log.debug("unreadable SIP datagram from %s: %s", addr, exc)
            return
        if msg.is_request:
            try:
                answer = self.on_request(msg, addr)
            except Exception:
                log.exception("handling a SIP %s from %s failed", msg.method, addr)
                return
            if answer is not None and self._transport is not None:
                self._transport.sendto(answer.encode(), addr)
            return
        branch = msg.branch()
        fut = self._pending.get(branch or "")
        if fut is not None and not fut.done() and msg.status is not None and msg.status >= 200:
            fut.set_result(msg)

    def send(self, msg: SipMessage) -> None:
        if self._transport is None:
            raise ConnectionError("the SIP socket is closed")
        self._transport.sendto(msg.encode(), self.remote)

    async def transact(self, req: SipMessage, within: float) -> SipMessage:
        """Send ``req`` and wait for its final answer, retransmitting over UDP meanwhile."""
        branch = req.branch()
        assert branch, "a request needs a Via branch"
        fut: asyncio.Future[SipMessage] = asyncio.get_running_loop().create_future()
        self._pending[branch] = fut
        try:
            async with asyncio.timeout(within):
                interval = T1
                while True:
                    self.send(req)
                    with contextlib.suppress(TimeoutError):
                        return await asyncio.wait_for(asyncio.shield(fut), interval)
                    interval = min(interval * 2, T2)
        except TimeoutError:
            raise TransactionTimeout(
                f"no answer to {req.method} from {self.remote[0]}:{self.remote[1]} in {within:g} s"
            ) from None
        finally:
            self._pending.pop(branch, None)
            if not fut.done():
                fut.cancel()
