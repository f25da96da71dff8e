"""A WS-Discovery responder for the simulated ONVIF camera.

Pair it with a :class:`simulators.camera.CameraSimulator`
(:meth:`WSDiscoveryResponder.for_camera`). It answers a ``Probe`` whose Types it has
(``dn:NetworkVideoTransmitter``, ``tds:Device``), or one with no Types, with a ``ProbeMatches``
whose ``RelatesTo`` is the Probe's ``MessageID`` and which carries the camera's endpoint
reference, device-service XAddr and ONVIF scopes (``onvif://www.onvif.org/name/...``,
``/hardware/...``, ``/location/...``, URL-encoded). A Probe for other types gets no answer, as
from a real camera.

It listens by unicast on ``host:port`` (3702 as on a camera; 0 picks a free port, read it back
from :attr:`~WSDiscoveryResponder.port`) and, when asked, also joins the multicast group
239.255.255.250 on ``multicast_port`` (0: a free one, read back too). The messages are built
and read with the ``wsdiscovery`` package's codec; its threaded networking always binds port
3702 and cannot serve tests (see :mod:`campusguard.discover_onvif`), so the transport is
asyncio's. Unreadable datagrams are counted in :attr:`~WSDiscoveryResponder.garbage` and
otherwise ignored.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import uuid
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, cast
from urllib.parse import quote

from wsdiscovery.actions import (  # type: ignore[import-untyped]
    NS_ACTION_PROBE,
    constructProbeMatch,
)
from wsdiscovery.message import (  # type: ignore[import-untyped]
    createSOAPMessage,
    parseSOAPMessage,
)
from wsdiscovery.qname import QName  # type: ignore[import-untyped]
from wsdiscovery.scope import Scope  # type: ignore[import-untyped]
from wsdiscovery.service import Service  # type: ignore[import-untyped]
from wsdiscovery.util import matchesFilter  # type: ignore[import-untyped]

if TYPE_CHECKING:
    from simulators.camera import CameraSimulator

__all__ = ["MULTICAST_GROUP", "WSD_PORT", "WSDiscoveryResponder"]

log = logging.getLogger(__name__)

MULTICAST_GROUP = "239.255.255.250"
WSD_PORT = 3702
NS_DN = "http://www.onvif.org/ver10/network/wsdl"
NS_TDS = "http://www.onvif.org/ver10/device/wsdl"


class _Endpoint(asyncio.DatagramProtocol):
    def __init__(self, owner: WSDiscoveryResponder, label: str) -> None:
        self.owner = owner
        self.label = label
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        reply = self.owner.handle(data, (str(addr[0]), int(addr[1])), self.label)
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply, addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("WS-Discovery responder %s socket error: %s", self.label, exc)


class WSDiscoveryResponder:
    """Answers WS-Discovery Probes for one ONVIF camera; an async context manager.

    Args:
        xaddr: The camera's device-service address, e.g. ``http://127.0.0.1:8080/onvif/device_service``.
        name: ``onvif://www.onvif.org/name/<name>`` scope.
        hardware: ``.../hardware/<hardware>`` scope.
        location: ``.../location/<location>`` scope (empty: none).
        endpoint: Endpoint reference; default a new ``urn:uuid:``.
        host: Address for the unicast socket.
        port: Unicast UDP port; 0 picks a free one.
        multicast: Also join ``multicast_group`` on ``multicast_port``.
        multicast_port: 3702 on a real network; any port in tests.
        interface: Local IPv4 address whose interface joins the group (default: the kernel's).

    Attributes:
        probes: Probes received (answered or not).
        answered: ProbeMatches sent.
        unmatched: Probes not answered because their Types (or Scopes) did not match.
        ignored: Readable WS-Discovery messages that were not Probes.
        garbage: Datagrams that could not be read.
    """

    def __init__(
        self,
        xaddr: str,
        *,
        name: str = "SimCam",
        hardware: str = "SimCam-1",
        location: str = "",
        endpoint: str | None = None,
        host: str = "127.0.0.1",
        port: int = WSD_PORT,
        multicast: bool = False,
        multicast_group: str = MULTICAST_GROUP,
        multicast_port: int = WSD_PORT,
        interface: str | None = None,
    ) -> None:
        """Configure; nothing listens until entered."""
        self.xaddr = xaddr
        self.name = name
        self.hardware = hardware
        self.location = location
        self.endpoint = endpoint or uuid.uuid4().urn
        self.host = host
        self.port = port
        self.multicast = multicast
        self.multicast_group = multicast_group
        self.multicast_port = multicast_port
        self.interface = interface
        self.probes = 0
        self.answered = 0
        self.unmatched = 0
        self.ignored = 0
        self.garbage = 0
        self._transports: list[asyncio.DatagramTransport] = []
        self._unserved: list[socket.socket] = []

    @classmethod
    def for_camera(cls, camera: CameraSimulator, **kwargs: Any) -> WSDiscoveryResponder:
        """A responder advertising a running camera simulator's device service."""
        return cls(f"{camera.base_url}/onvif/device_service", **kwargs)

    @property
    def scopes(self) -> list[str]:
        """The scopes advertised (URL-encoded, as on the wire)."""
        base = "onvif://www.onvif.org/"
        out = [
            f"{base}type/video_encoder",
            f"{base}Profile/Streaming",
            f"{base}name/{quote(self.name, safe='')}",
            f"{base}hardware/{quote(self.hardware, safe='')}",
        ]
        if self.location:
            out.append(f"{base}location/{quote(self.location, safe='')}")
        return out

    def _service(self) -> Any:
        types = [QName(NS_DN, "NetworkVideoTransmitter", "dn"), QName(NS_TDS, "Device", "tds")]
        return Service(types, [Scope(s) for s in self.scopes], [self.xaddr], self.endpoint, 0)

    def handle(self, data: bytes, addr: tuple[str, int], label: str = "unicast") -> bytes | None:
        """The reply to one datagram, or ``None``."""
        try:
            env = parseSOAPMessage(data, addr[0])
            action = None if env is None else env.getAction()
        except Exception:  # malformed XML or a message missing required parts
            log.debug("unreadable datagram from %s:%s", *addr, exc_info=True)
            env = action = None
        if env is None:
            self.garbage += 1
            log.info("ignored an unreadable %s datagram from %s:%s", label, *addr)
            return None
        if action != NS_ACTION_PROBE:
            self.ignored += 1
            return None
        self.probes += 1
        service = self._service()
        try:
            matches = matchesFilter(service, env.getTypes() or None, env.getScopes() or None)
        except Exception:  # an unparsable scope in the Probe
            log.debug("bad Probe scopes from %s:%s", *addr, exc_info=True)
            matches = False
        if not matches:
            self.unmatched += 1
            return None
        reply = createSOAPMessage(constructProbeMatch([service], env.getMessageId()))
        self.answered += 1
        return str(reply).encode("utf-8")

    async def __aenter__(self) -> Self:
        """Bind the unicast socket (and join the group); fill in :attr:`port`."""
        try:
            sock = self._socket()
            sock.bind((self.host, self.port))
            self.port = int(sock.getsockname()[1])
            await self._serve(sock, "unicast")
            if self.multicast:
                msock = self._socket()
                msock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if hasattr(socket, "SO_REUSEPORT"):  # several simulated cameras on one host
                    msock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                msock.bind(("", self.multicast_port))
                mreq = struct.pack(
                    "4s4s",
                    socket.inet_aton(self.multicast_group),
                    socket.inet_aton(self.interface or "0.0.0.0"),
                )
                msock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
                self.multicast_port = int(msock.getsockname()[1])
                await self._serve(msock, "multicast")
        except BaseException:
            self._close()
            raise
        log.debug("WS-Discovery responder for %s on %s:%s", self.xaddr, self.host, self.port)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the sockets."""
        self._close()

    def _socket(self) -> socket.socket:
        """A UDP socket, closed with the responder even before it is served."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
        self._unserved.append(sock)
        return sock

    async def _serve(self, sock: socket.socket, label: str) -> None:
        sock.setblocking(False)
        transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
            lambda: _Endpoint(self, label), sock=sock
        )
        self._unserved.remove(sock)
        self._transports.append(transport)

    def _close(self) -> None:
        transports, self._transports = self._transports, []
        for t in transports:
            t.close()
        socks, self._unserved = self._unserved, []
        for s in socks:
            s.close()
