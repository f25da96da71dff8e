"""`campusguard discover onvif`: find ONVIF cameras by WS-Discovery.

A WS-Discovery ``Probe`` for ``dn:NetworkVideoTransmitter`` goes to the multicast group
239.255.255.250:3702 and, unicast, to every ``--target`` (cameras answer a unicast Probe too,
which works where a switch or VLAN drops multicast). ``ProbeMatches`` that relate to our Probe
are collected for ``--timeout`` seconds, deduplicated by endpoint reference, and their XAddrs and
ONVIF scopes (``onvif://www.onvif.org/name/...``, ``/hardware/...``, ``/location/...``,
URL-decoded) are read. With credentials, each camera is asked for its device information and
media profiles through :class:`drivers.onvif.OnvifCamera`; a camera that refuses is still
listed, with its error.

Why only the *codec* of the ``wsdiscovery`` package (2.1.2) is used, not its networking:
its ``ThreadedWSDiscovery`` always binds UDP port 3702 (so two copies, or a test on a free
port, cannot run), reads answers only on the multicast sockets -- the answer to a *unicast*
Probe arrives on its send socket, which it never reads, so unicast discovery silently finds
nothing (tried: the responder answered twice, ``searchServices`` returned ``[]``, and its IPv6
thread died sending the Probe to an IPv4 address) -- answers Probes that match nothing with an
empty ``ProbeMatches``, and works with threads and ``time.sleep``. Its message construction
and parsing (``constructProbe``, ``createSOAPMessage``, ``parseSOAPMessage``) are fine and are
used here over a small asyncio UDP transport. IPv4 only. The codec is strict: a ProbeMatch
without ``MetadataVersion`` or ``RelatesTo`` is counted as unreadable.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import socket
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

from wsdiscovery.actions import (  # type: ignore[import-untyped]
    NS_ACTION_PROBE_MATCH,
    constructProbe,
)
from wsdiscovery.message import (  # type: ignore[import-untyped]
    createSOAPMessage,
    parseSOAPMessage,
)
from wsdiscovery.qname import QName  # type: ignore[import-untyped]

from contract.models import ID_PATTERN

__all__ = [
    "MULTICAST_GROUP",
    "NS_DN",
    "NVT_TYPE",
    "WSD_PORT",
    "Discovery",
    "FoundCamera",
    "describe",
    "discover_onvif",
    "parse_target",
    "probe_message",
    "stanza",
    "table",
]

log = logging.getLogger(__name__)

MULTICAST_GROUP = "239.255.255.250"
WSD_PORT = 3702
NS_DN = "http://www.onvif.org/ver10/network/wsdl"
NVT_TYPE = "NetworkVideoTransmitter"
_ONVIF_SCOPE = "onvif://www.onvif.org/"
_MAX_DATAGRAM = 0xFFFF


@dataclass
class FoundCamera:
    """One camera that answered, and (with credentials) what it said about itself."""

    epr: str  # endpoint reference (urn:uuid:...): the same camera answers on every path
    xaddrs: list[str]
    scopes: list[str]  # URL-decoded
    types: list[str]  # namespace:local name
    answered_from: str  # host:port the ProbeMatches came from
    manufacturer: str = ""
    model: str = ""
    firmware: str = ""
    serial: str = ""
    profiles: list[str] = field(default_factory=list)
    error: str | None = None

    def _scope(self, kind: str) -> str:
        prefix = f"{_ONVIF_SCOPE}{kind}/"
        return next((s[len(prefix) :] for s in self.scopes if s.startswith(prefix)), "")

    @property
    def name(self) -> str:
        return self._scope("name")

    @property
    def hardware(self) -> str:
        return self._scope("hardware")

    @property
    def location(self) -> str:
        return self._scope("location")

    @property
    def xaddr(self) -> str:
        """The device-service address to use: the first http(s) one, IPv4 preferred."""
        web = [x for x in self.xaddrs if x.lower().startswith(("http://", "https://"))]
        v4 = [x for x in web if "[" not in x]
        return (v4 or web or self.xaddrs or [""])[0]

    @property
    def host(self) -> str:
        return urlsplit(self.xaddr).hostname or self.answered_from.rsplit(":", 1)[0]

    @property
    def port(self) -> int:
        parts = urlsplit(self.xaddr)
        try:
            explicit = parts.port
        except ValueError:
            explicit = None
        return explicit or (443 if parts.scheme == "https" else 80)


@dataclass
class Discovery:
    """What one discovery run saw."""

    cameras: list[FoundCamera] = field(default_factory=list)
    garbage: int = 0  # datagrams that were not a WS-Discovery message we could read
    unrelated: int = 0  # well-formed messages not answering our Probe (other MessageID, Hello)
    errors: list[str] = field(default_factory=list)  # send failures (no multicast route, ...)


def probe_message(
    message_id: str | None = None, types: list[tuple[str, str, str]] | None = None
) -> tuple[str, bytes]:
    """A Probe (``(namespace, local name, prefix)`` types; default the ONVIF NVT type).

    Returns:
        Its MessageID and the datagram.
    """
    wanted = [(NS_DN, NVT_TYPE, "dn")] if types is None else types
    env = constructProbe([QName(ns, local, prefix) for ns, local, prefix in wanted], [])
    if message_id is not None:
        env.setMessageId(message_id)
    return str(env.getMessageId()), str(createSOAPMessage(env)).encode("utf-8")


def parse_target(spec: str) -> tuple[str, int]:
    """``host`` or ``host:port`` (default port 3702); the host is resolved to IPv4 now."""
    host, sep, port = spec.strip().rpartition(":")
    if not sep:
        host, port = port, ""
    if not host:
        raise ValueError(f"bad target {spec!r}: expected host[:port]")
    number = int(port) if port else WSD_PORT
    if not 0 < number < 65536:
        raise ValueError(f"bad target {spec!r}: port out of range")
    info = socket.getaddrinfo(host, number, socket.AF_INET, socket.SOCK_DGRAM)
    return str(info[0][4][0]), number


class _Prober(asyncio.DatagramProtocol):
    def __init__(self, message_id: str, result: Discovery) -> None:
        self.message_id = message_id
        self.result = result
        self.by_epr: dict[str, FoundCamera] = {}

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        source = f"{addr[0]}:{addr[1]}"
        try:
            env = parseSOAPMessage(data, addr[0])
            matches = [] if env is None else list(env.getProbeResolveMatches())
            action = None if env is None else env.getAction()
            relates = None if env is None else env.getRelatesTo()
            found = [
                (
                    str(m.getEPR()).strip(),
                    [str(x) for x in m.getXAddrs()],
                    [unquote(str(s.getValue())) for s in m.getScopes()],
                    [f"{t.getNamespace()}:{t.getLocalname()}" for t in m.getTypes()],
                )
                for m in matches
            ]
        except Exception:  # a malformed message is the sender's problem, never ours
            log.debug("unreadable WS-Discovery datagram from %s", source, exc_info=True)
            env = None
        if env is None:
            self.result.garbage += 1
            log.info("ignored an unreadable datagram from %s (%d bytes)", source, len(data))
            return
        if action != NS_ACTION_PROBE_MATCH or relates != self.message_id:
            self.result.unrelated += 1
            log.debug("ignored %s from %s (not an answer to our Probe)", action, source)
            return
        for epr, xaddrs, scopes, types in found:
            if not epr:
                self.result.garbage += 1
                continue
            known = self.by_epr.get(epr)
            if known is None:
                cam = FoundCamera(epr, xaddrs, scopes, types, source)
                self.by_epr[epr] = cam
                self.result.cameras.append(cam)
                log.debug("found %s at %s", epr, xaddrs)
            else:  # the same camera on another path (multicast and unicast): merge addresses
                known.xaddrs += [x for x in xaddrs if x not in known.xaddrs]

    def error_received(self, exc: Exception) -> None:
        self.result.errors.append(str(exc))
        log.warning("WS-Discovery send/receive error: %s", exc)


async def discover_onvif(
    targets: list[tuple[str, int]] | None = None,
    *,
    multicast: bool = True,
    listen: float = 3.0,
    group: tuple[str, int] = (MULTICAST_GROUP, WSD_PORT),
    interface: str | None = None,
    repeats: int = 2,
    types: list[tuple[str, str, str]] | None = None,
) -> Discovery:
    """Probe, collect ProbeMatches for ``listen`` seconds, return the cameras found.

    Args:
        targets: ``(ipv4, port)`` to probe by unicast.
        multicast: Also probe the multicast ``group``.
        listen: Seconds to listen for answers.
        group: Multicast address and port (3702 on a real network).
        interface: Local IPv4 address to send the multicast probe from (default: the route's).
        repeats: Times each probe is sent (SOAP-over-UDP: UDP may drop one), same MessageID.
        types: Probe types, ``(namespace, local name, prefix)``; default ONVIF NVT.
    """
    message_id, datagram = probe_message(types=types)
    result = Discovery()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    try:
        sock.bind((interface or "0.0.0.0", 0))  # answers come back here
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
        if interface:
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(interface))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(
        lambda: _Prober(message_id, result), sock=sock
    )
    destinations = list(targets or []) + ([group] if multicast else [])
    try:
        for attempt in range(max(1, repeats)):
            if attempt:
                await asyncio.sleep(min(0.1, listen / 4))
            for dest in destinations:
                try:
                    transport.sendto(datagram, dest)
                except OSError as exc:
                    proto.error_received(exc)
        await asyncio.sleep(listen)  # the listening window itself, not a wait for a condition
    finally:
        transport.close()
    return result


async def describe(
    cams: list[FoundCamera], username: str, password: str, request_timeout: float = 5.0
) -> None:
    """Fill in device information and profile names; a failure goes into ``error``."""
    from drivers.onvif import CameraError, OnvifCamera

    async def one(cam: FoundCamera) -> None:
        if not cam.xaddr:
            cam.error = "no XAddr in its answer"
            return
        try:
            async with OnvifCamera(
                cam.host, cam.port, username, password, timeout=request_timeout
            ) as onvif:
                info = await onvif.device_info()
                cam.manufacturer = info.manufacturer
                cam.model = info.model
                cam.firmware = info.firmware_version
                cam.serial = info.serial_number
                cam.profiles = [p.name or p.token for p in await onvif.profiles()]
        except CameraError as exc:
            cam.error = str(exc)
        except Exception as exc:  # a broken camera must not stop the listing of the others
            log.debug("describing %s failed", cam.xaddr, exc_info=True)
            cam.error = f"{type(exc).__name__}: {exc}"

    await asyncio.gather(*(one(c) for c in cams))


def table(cams: list[FoundCamera], described: bool = False) -> str:
    """A readable listing: one row per camera, details or the error indented below."""
    rows = [("XADDR", "NAME", "HARDWARE", "LOCATION")]
    rows += [(c.xaddr or "-", c.name or "-", c.hardware or "-", c.location or "-") for c in cams]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines: list[str] = []
    for i, row in enumerate(rows):
        lines.append("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
        if i == 0 or not described:
            continue
        cam = cams[i - 1]
        if cam.error:
            lines.append(f"    error: {cam.error}")
        else:
            lines.append(
                f"    {cam.manufacturer} {cam.model}, firmware {cam.firmware or '?'}, "
                f"serial {cam.serial or '?'}, profiles: {', '.join(cam.profiles) or 'none'}"
            )
    return "\n".join(lines) + "\n"


def _ident(text: str, used: set[str], index: int) -> str:
    slug = re.sub(r"[^a-z0-9_.-]+", "-", text.lower()).strip("-._")[:60]
    candidate = slug if slug and re.match(ID_PATTERN, slug) else f"cam-{index}"
    while candidate in used:
        candidate = f"{candidate}-{index}"
    used.add(candidate)
    return candidate


def _quote(text: str) -> str:
    # A JSON string is a valid YAML double-quoted scalar.
    return json.dumps(text, ensure_ascii=False)


def stanza(cams: list[FoundCamera], username: str = "admin") -> str:
    """A ``cameras:`` stanza for the edge config; the password is an ``${ENV}`` placeholder."""
    used: set[str] = set()
    out = ["cameras:"]
    for i, cam in enumerate(cams, 1):
        ident = _ident(cam.name, used, i)
        what = " ".join(x for x in (cam.manufacturer, cam.model or cam.hardware) if x)
        out += [
            f"  - id: {ident}" + (f"    # {what}" if what else ""),
            f"    host: {_quote(cam.host)}",
            f"    port: {cam.port}",
            f"    username: {_quote(username)}",
            '    password: "${CAMERA_PASSWORD}"',
            "    # zone: <zone id>    # which zone's alarms this camera documents",
            f"    location: {_quote(cam.location)}",
        ]
        if cam.xaddr and urlsplit(cam.xaddr).path not in ("", "/onvif/device_service"):
            out.append(f"    # note: the camera's device service is at {cam.xaddr}")
    return "\n".join(out) + "\n"
