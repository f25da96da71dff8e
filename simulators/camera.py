"""A simulated ONVIF camera: device, media and event services over real HTTP.

No installable ONVIF device emulator has an event service, so this is one, small enough to
read: SOAP 1.2 (``application/soap+xml``) on a Starlette app served by an in-process uvicorn,
dispatched on the path and the first element of the SOAP Body.

Services (paths under the simulator's base URL):

* ``/onvif/device_service``: GetSystemDateAndTime (no auth, the *simulated* clock),
  GetServices, GetCapabilities, GetDeviceInformation.
* ``/onvif/media_service``: GetProfiles (H.264), GetStreamUri, GetSnapshotUri.
* ``/onvif/event_service``: GetEventProperties, CreatePullPointSubscription, Subscribe (push:
  every event is POSTed as a ``wsnt:Notify`` to the ConsumerReference while it lives).
* ``/onvif/subscription/<n>``: PullMessages (long-poll), Renew, Unsubscribe,
  SetSynchronizationPoint (the last three also for push subscriptions).
* ``GET /snapshot.jpg``: a small JPEG behind HTTP Digest (or Basic) auth.

Every SOAP call but GetSystemDateAndTime needs a WS-Security UsernameToken whose digest
``Base64(SHA1(nonce + created + password))`` matches and whose ``Created`` lies within
``max_skew`` seconds of the camera clock; otherwise the reply is a SOAP Fault with subcode
``ter:NotAuthorized``, as cameras answer. WS-Addressing headers are accepted, never required.

Faults are knobs on the instance (``clock_offset``, ``pull_delay``, ``pull_fail``,
``snapshot_fail``, ``subscription_cap``, :meth:`CameraSimulator.drop_subscriptions`) and
events are injected with :meth:`CameraSimulator.emit`. With ``http_port`` the same knobs, event
injection by kind (:meth:`CameraSimulator.inject`) and the state are on a small HTTP control API
(:class:`simulators._control.ControlServer`, as for the Modbus simulators); with ``stream`` (a
:class:`simulators.rtsp.RtspTestStream`) GetStreamUri answers a live RTSP test stream.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import hashlib
import itertools
import logging
import re
import secrets
import socket
import xml.etree.ElementTree as ET
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Literal, Self
from xml.sax.saxutils import escape, quoteattr

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ._control import ControlServer, Query, query_arg
from ._control import Route as ControlRoute
from .rtsp import RtspTestStream

__all__ = ["SNAPSHOT_JPEG", "CameraSimulator", "Notification", "SnapshotFault"]

log = logging.getLogger(__name__)

SnapshotFault = Literal["401", "timeout"]
MalformedMode = Literal["truncated", "html", "wrong"]

NS = {
    "env": "http://www.w3.org/2003/05/soap-envelope",
    "wsse": "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd",
    "wsu": "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd",
    "wsa": "http://www.w3.org/2005/08/addressing",
    "tds": "http://www.onvif.org/ver10/device/wsdl",
    "trt": "http://www.onvif.org/ver10/media/wsdl",
    "tev": "http://www.onvif.org/ver10/events/wsdl",
    "tt": "http://www.onvif.org/ver10/schema",
    "wsnt": "http://docs.oasis-open.org/wsn/b-2",
    "wstop": "http://docs.oasis-open.org/wsn/t-1",
    "tns1": "http://www.onvif.org/ver10/topics",
    "ter": "http://www.onvif.org/ver10/error",
}
_XMLNS = " ".join(f'xmlns:{prefix}="{uri}"' for prefix, uri in NS.items())
_SOAP_CT = "application/soap+xml; charset=utf-8"
_TOPIC_DIALECT = "http://www.onvif.org/ver10/tev/topicExpression/ConcreteSet"
_PASSWORD_DIGEST = "#PasswordDigest"
# Cameras cap a long-poll; ONVIF clients ask for up to a minute or so.
_MAX_PULL_TIMEOUT = 120.0
_DEFAULT_TERM = dt.timedelta(minutes=10)
_DIGEST_REALM = "CampusGuard camera"
_PTZ_NS = "http://www.onvif.org/ver20/ptz/wsdl"


def _baseline_grey_jpeg() -> bytes:
    """An 8x8 mid-grey baseline JPEG, built by hand (the stdlib has no JPEG encoder).

    Mid-grey (128) level-shifts to all-zero samples, so the only block has DC difference 0
    and no AC coefficient. With one-symbol Huffman tables (DC category 0 -> ``0``,
    AC EOB -> ``0``) the scan is the two bits ``00``, padded with ones: ``0x3F``.
    """

    def segment(marker: int, payload: bytes) -> bytes:
        return bytes((0xFF, marker)) + (len(payload) + 2).to_bytes(2, "big") + payload

    app0 = b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    dqt = b"\x00" + bytes([1] * 64)  # 8-bit table 0, all ones
    sof0 = b"\x08\x00\x08\x00\x08\x01" + b"\x01\x11\x00"  # 8x8, 1 component, table 0
    counts_one_code_len_1 = b"\x01" + b"\x00" * 15
    dht_dc = b"\x00" + counts_one_code_len_1 + b"\x00"  # DC table 0: symbol 0 (category 0)
    dht_ac = b"\x10" + counts_one_code_len_1 + b"\x00"  # AC table 0: symbol 0x00 (EOB)
    sos = b"\x01" + b"\x01\x00" + b"\x00\x3f\x00"  # component 1 uses DC0/AC0, Ss=0 Se=63
    return (
        b"\xff\xd8"
        + segment(0xE0, app0)
        + segment(0xDB, dqt)
        + segment(0xC0, sof0)
        + segment(0xC4, dht_dc)
        + segment(0xC4, dht_ac)
        + segment(0xDA, sos)
        + b"\x3f"
        + b"\xff\xd9"
    )


SNAPSHOT_JPEG = _baseline_grey_jpeg()


class _SoapFault(Exception):
    """Answer the request with a SOAP 1.2 Fault."""

    def __init__(self, code: str, subcodes: tuple[str, ...], reason: str, status: int) -> None:
        super().__init__(reason)
        self.code = code
        self.subcodes = subcodes
        self.reason = reason
        self.status = status


def _sender_fault(subcode: str, reason: str, *more: str) -> _SoapFault:
    return _SoapFault("env:Sender", (subcode, *more), reason, 400)


def _receiver_fault(subcode: str, reason: str, *more: str) -> _SoapFault:
    return _SoapFault("env:Receiver", (subcode, *more), reason, 500)


def _not_authorized(reason: str) -> _SoapFault:
    return _sender_fault("ter:NotAuthorized", reason)


@dataclass(frozen=True, slots=True)
class Notification:
    """One event as the camera reports it.

    Attributes:
        topic: Concrete topic, e.g. ``tns1:RuleEngine/CellMotionDetector/Motion``.
        data: ``tt:Data`` simple items (name -> value; values are strings on the wire).
        source: ``tt:Source`` simple items.
        utc_time: Camera clock when it happened.
        operation: ``PropertyOperation``: ``Changed``, or ``Initialized`` when resent.
    """

    topic: str
    data: dict[str, str]
    source: dict[str, str]
    utc_time: dt.datetime
    operation: str = "Changed"


@dataclass(slots=True)
class _Subscription:
    ident: int
    terminates: dt.datetime
    queue: list[Notification] = field(default_factory=list)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    # Push (WS-BaseNotification Subscribe): where Notify is POSTed; None for a pull point.
    consumer: str | None = None


class _Server(uvicorn.Server):
    """uvicorn in-process: the test runner owns the signals, not the simulator."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None]:
        yield


_DIGEST_FIELD = re.compile(r'(\w+)=(?:"([^"]*)"|([^\s,]*))')


def _xml_datetime(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


_DURATION = re.compile(
    r"^P(?:(?P<d>\d+)D)?(?:T(?:(?P<h>\d+)H)?(?:(?P<m>\d+)M)?(?:(?P<s>\d+(?:\.\d+)?)S)?)?$"
)


def parse_duration(text: str) -> dt.timedelta:
    """An ``xs:duration`` without years or months (``PT60S``, ``PT1M30S``, ``P1D``).

    Raises:
        ValueError: Not such a duration.
    """
    match = _DURATION.match(text.strip())
    if match is None or text.strip() in ("P", "PT"):
        raise ValueError(f"unsupported duration {text!r}")
    parts = {k: float(v) if v else 0.0 for k, v in match.groupdict().items()}
    return dt.timedelta(days=parts["d"], hours=parts["h"], minutes=parts["m"], seconds=parts["s"])


def _parse_datetime(text: str) -> dt.datetime:
    moment = dt.datetime.fromisoformat(text.strip())
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


# kind -> (topic, data item, source item, default source); the topics drivers/onvif maps.
_EVENT_KINDS: dict[str, tuple[str, str, str, str]] = {
    "motion": (
        "tns1:RuleEngine/CellMotionDetector/Motion",
        "IsMotion",
        "VideoSourceConfigurationToken",
        "vsconf",
    ),
    "tamper": (
        "tns1:RuleEngine/TamperDetector/Tamper",
        "IsTamper",
        "VideoSourceConfigurationToken",
        "vsconf",
    ),
    "scene_change": (
        "tns1:VideoSource/GlobalSceneChange/ImagingService",
        "State",
        "VideoSourceToken",
        "VideoSourceToken",
    ),
    "video_loss": ("tns1:VideoSource/SignalLoss", "State", "VideoSource", "VideoSourceToken"),
    "field_intrusion": (
        "tns1:RuleEngine/FieldDetector/ObjectsInside",
        "IsInside",
        "Rule",
        "field-1",
    ),
    "line_crossing": ("tns1:RuleEngine/LineDetector/Crossed", "ObjectId", "Rule", "line-1"),
    "digital_input": ("tns1:Device/Trigger/DigitalInput", "LogicalState", "InputToken", "DI_0"),
}


def _flag(raw: str, name: str) -> bool:
    text = raw.strip().lower()
    if text not in ("0", "1", "true", "false"):
        raise ValueError(f"{name} must be 0/1 or true/false, got {raw!r}")
    return text in ("1", "true")


class CameraSimulator:
    """A simulated ONVIF camera, an async context manager serving real HTTP.

    Args:
        host: Address to bind (and to advertise in XAddrs and URIs).
        port: TCP port; 0 picks a free one (read it back from :attr:`port`).
        username: ONVIF and snapshot user.
        password: Its password.
        clock_offset: Seconds the camera clock is ahead of real UTC (negative: behind).
        stream_uri: What GetStreamUri answers (an RTSP server run elsewhere) when no
            ``stream`` is attached.
        stream: An :class:`~simulators.rtsp.RtspTestStream` (started by the caller):
            GetStreamUri answers its URL.
        http_port: Also serve the HTTP control endpoint on this port (0 = any free
            one; ``None`` = none); see :meth:`_http_routes`.
        http_host: Address for the HTTP control endpoint (default: ``host``).
        profiles: Number of H.264 media profiles, 1 or 2.
        max_skew: Seconds a WS-Security ``Created`` may differ from the camera clock.
        subscription_cap: Most live pull-point subscriptions; ``None``: no cap.
        snapshot_auth: HTTP auth scheme the snapshot URL demands.

    Attributes:
        clock_offset: Settable at run time.
        pull_delay: Seconds every PullMessages waits before it answers (a slow camera).
        pull_fail: PullMessages answers a SOAP Fault (``ter:Action``) while set.
        snapshot_fail: ``"401"``: the snapshot always refuses the credentials;
            ``"timeout"``: it never answers (until the simulator stops).
        snapshot_delay: Seconds every snapshot takes before it answers (a slow camera).
        malformed: While set, every SOAP answer but GetSystemDateAndTime is broken:
            ``"truncated"`` (the XML cut off half-way), ``"html"`` (an HTML error page with
            status 200, as a camera behind a broken proxy gives) or ``"wrong"`` (a well-formed
            envelope with an answer the operation never returns).
        subscription_cap: See above; settable at run time.
        subscriptions_created: CreatePullPointSubscription calls that succeeded.
        pulls: PullMessages calls received (on live subscriptions or not).
        auth_failures: SOAP requests and snapshot fetches refused for bad credentials.
        snapshots: Snapshots served.
        requests: SOAP operations received, by name.
        notifies_sent: Notify POSTs the consumer answered with 2xx (push subscriptions).
        notify_failures: Notify POSTs refused or not delivered (the batch is lost).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        username: str = "admin",
        password: str = "campus-cam-pw",
        clock_offset: float = 0.0,
        stream_uri: str = "rtsp://127.0.0.1:8554/cam",
        profiles: int = 2,
        max_skew: float = 5.0,
        subscription_cap: int | None = None,
        snapshot_auth: Literal["digest", "basic"] = "digest",
        manufacturer: str = "CampusGuard",
        model: str = "SimCam 1",
        serial_number: str = "SIM-0001",
        stream: RtspTestStream | None = None,
        http_port: int | None = None,
        http_host: str | None = None,
    ) -> None:
        """Configure the camera; nothing listens until entered."""
        if profiles not in (1, 2):
            raise ValueError("profiles must be 1 or 2")
        self.host = host
        self.port = port
        self.username = username
        self.password = password
        self.clock_offset = float(clock_offset)
        self.stream_uri = stream_uri
        self.profiles = profiles
        self.max_skew = max_skew
        self.subscription_cap = subscription_cap
        self.snapshot_auth = snapshot_auth
        self.manufacturer = manufacturer
        self.model = model
        self.serial_number = serial_number
        self.stream = stream
        self.http_port = http_port
        self.http_host = http_host or host
        self._http: ControlServer | None = None
        self._password0 = password  # what POST /normal puts back
        self._line_objects = itertools.count(1)
        self.pull_delay = 0.0
        self.pull_fail = False
        self.snapshot_fail: SnapshotFault | None = None
        self.snapshot_delay = 0.0
        self.malformed: MalformedMode | None = None
        self.subscriptions_created = 0
        self.pulls = 0
        self.auth_failures = 0
        self.snapshots = 0
        self.requests: dict[str, int] = {}
        self.notifies_sent = 0
        self.notify_failures = 0
        self.ptz_gotos: list[tuple[str, str]] = []  # (profile, preset) reached: linkage
        self.ptz_delay = 0.0  # seconds GotoPreset takes (a hanging PTZ head)
        self._pushers: dict[int, asyncio.Task[None]] = {}
        self._push_client: httpx.AsyncClient | None = None
        self._subs: dict[int, _Subscription] = {}
        self._sub_ids = itertools.count(1)
        # Last state per (topic, source): what SetSynchronizationPoint resends.
        self._states: dict[tuple[str, tuple[tuple[str, str], ...]], Notification] = {}
        self._digest_nonces: set[str] = set()
        self._closing = asyncio.Event()
        self._server: _Server | None = None
        self._sockets: list[socket.socket] = []
        self._main: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Self:
        """Bind, start serving, fill in :attr:`port`."""
        # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY on accepted sockets only when the
        # listening socket says TCP; without it every answer waits ~40 ms for a delayed ACK.
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        sock.setblocking(False)
        self.port = int(sock.getsockname()[1])
        self._sockets = [sock]
        config = uvicorn.Config(
            self._app(),
            lifespan="off",
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=2,
        )
        config.load()
        server = _Server(config)
        server.lifespan = config.lifespan_class(config)
        await server.startup(sockets=self._sockets)
        self._server = server
        self._closing.clear()
        self._main = asyncio.create_task(server.main_loop(), name="camera-sim")
        log.debug("Camera simulator listening on %s", self.base_url)
        if self.http_port is not None:
            self._http = ControlServer(
                self._control_state, self._http_routes, fixed={"/state": ControlRoute("GET")}
            )
            try:
                self.http_port = await self._http.start(self.http_host, self.http_port)
            except BaseException:
                await self.__aexit__(None, None, None)
                raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Wake every long-poll and hanging snapshot, then stop the server."""
        http, self._http = self._http, None
        if http is not None:
            await http.close()
        self._closing.set()
        for sub in self._subs.values():
            sub.wake.set()
        await self._stop_pushers()
        server, self._server = self._server, None
        if server is None:
            return
        server.should_exit = True
        if self._main is not None:
            await self._main
            self._main = None
        await server.shutdown(sockets=self._sockets)
        self._sockets = []

    @property
    def base_url(self) -> str:
        """``http://host:port`` of the running camera."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def snapshot_url(self) -> str:
        """Where the snapshot JPEG is served."""
        return f"{self.base_url}/snapshot.jpg"

    def now(self) -> dt.datetime:
        """The camera clock: real UTC plus :attr:`clock_offset`."""
        return dt.datetime.now(dt.UTC) + dt.timedelta(seconds=self.clock_offset)

    # ------------------------------------------------------------------ knobs

    @property
    def active_subscriptions(self) -> int:
        """Pull-point subscriptions alive now (not unsubscribed, dropped or expired)."""
        self._expire()
        return len(self._subs)

    def emit(
        self, topic: str, data: dict[str, str], source: dict[str, str] | None = None
    ) -> Notification:
        """Raise an event: every live subscription gets it on its next PullMessages.

        Args:
            topic: e.g. ``tns1:RuleEngine/CellMotionDetector/Motion``.
            data: e.g. ``{"IsMotion": "true"}``.
            source: e.g. ``{"InputToken": "DI_0"}``; ``None``: no source items.
        """
        note = Notification(topic, dict(data), dict(source or {}), self.now())
        self._states[(topic, tuple(sorted(note.source.items())))] = note
        self._expire()
        for sub in self._subs.values():
            sub.queue.append(note)
            sub.wake.set()
        return note

    def drop_subscriptions(self) -> None:
        """Forget every subscription, as a camera reboot does: later calls on them fault."""
        for sub in self._subs.values():
            sub.wake.set()
        self._subs.clear()

    def snapshot(self) -> dict[str, object]:
        """The simulator's state and counters, JSON-ready."""
        return {
            "base_url": self.base_url,
            "clock_offset": self.clock_offset,
            "subscriptions_created": self.subscriptions_created,
            "active_subscriptions": self.active_subscriptions,
            "pulls": self.pulls,
            "auth_failures": self.auth_failures,
            "snapshots": self.snapshots,
            "pull_delay": self.pull_delay,
            "pull_fail": self.pull_fail,
            "snapshot_fail": self.snapshot_fail,
            "subscription_cap": self.subscription_cap,
            "requests": dict(self.requests),
        }

    # ------------------------------------------------------------------ HTTP control

    def inject(self, kind: str, active: bool = True, source: str | None = None) -> Notification:
        """Raise one of the events a campus cares about by its kind, on its standard topic.

        Args:
            kind: ``motion``, ``tamper``, ``scene_change``, ``video_loss``,
                ``field_intrusion``, ``line_crossing`` (a pulse: ``active`` is ignored)
                or ``digital_input`` (a panic button wired to the camera).
            active: The state now (``False``: it ended).
            source: What raised it: the input token for ``digital_input`` (default
                ``DI_0``), the rule for intrusion and line crossing, else the video source.

        Raises:
            ValueError: Unknown kind.
        """
        spec = _EVENT_KINDS.get(kind)
        if spec is None:
            raise ValueError(f"kind must be one of {', '.join(_EVENT_KINDS)}")
        topic, item, source_key, default_source = spec
        if kind == "line_crossing":
            value = str(next(self._line_objects))  # ObjectId: each message is one crossing
        else:
            value = "true" if active else "false"
        return self.emit(topic, {item: value}, {source_key: source or default_source})

    def set_faults(self, query: Query) -> None:
        """Set the fault knobs named in ``query`` (HTTP names; see :meth:`_http_routes`).

        Raises:
            ValueError: No knob named, or a value that does not fit it.
        """
        knobs = {
            "clock_offset",
            "pull_delay",
            "pull_fail",
            "snapshot",
            "snapshot_delay",
            "subscription_cap",
            "password",
            "malformed",
        }
        if not knobs & query.keys():
            raise ValueError(f"name at least one of {', '.join(sorted(knobs))}")
        if "clock_offset" in query:
            self.clock_offset = float(query["clock_offset"])
        if "pull_delay" in query:
            self.pull_delay = max(0.0, float(query["pull_delay"]))
        if "pull_fail" in query:
            self.pull_fail = _flag(query["pull_fail"], "pull_fail")
        if "snapshot" in query:
            mode = query["snapshot"].strip().lower()
            if mode not in ("401", "timeout", "ok", "none", ""):
                raise ValueError("snapshot must be 401, timeout or ok")
            faults: dict[str, SnapshotFault] = {"401": "401", "timeout": "timeout"}
            self.snapshot_fail = faults.get(mode)
        if "snapshot_delay" in query:
            self.snapshot_delay = max(0.0, float(query["snapshot_delay"]))
        if "subscription_cap" in query:
            cap = query["subscription_cap"].strip().lower()
            self.subscription_cap = None if cap in ("", "none") else max(0, int(cap))
        if "malformed" in query:
            mode = query["malformed"].strip().lower()
            if mode not in ("truncated", "html", "wrong", "none", ""):
                raise ValueError("malformed must be truncated, html, wrong or none")
            self.malformed = None if mode in ("none", "") else mode  # type: ignore[assignment]
        if "password" in query:
            if not query["password"]:
                raise ValueError("password must not be empty")
            self.password = query["password"]  # clients with the old one get NotAuthorized

    def clear_faults(self) -> None:
        """Back to a healthy camera: clock right, pulls and snapshots normal, no cap, the
        password it started with."""
        self.clock_offset = 0.0
        self.pull_delay = 0.0
        self.pull_fail = False
        self.snapshot_fail = None
        self.snapshot_delay = 0.0
        self.malformed = None
        self.subscription_cap = None
        self.password = self._password0

    def _control_state(self) -> dict[str, object]:
        """``GET /state``: :meth:`snapshot` plus what the control API and stream add."""
        return {
            **self.snapshot(),
            "username": self.username,
            "password_changed": self.password != self._password0,
            "snapshot_delay": self.snapshot_delay,
            "malformed": self.malformed,
            "stream_uri": self.stream.url if self.stream is not None else self.stream_uri,
            "stream_codec": None if self.stream is None else self.stream.codec,
            "http_port": self.http_port,
        }

    def _http_routes(self, query: Query) -> dict[str, ControlRoute]:
        """The control endpoints (``GET /state`` is answered before this runs):

        * ``POST /event?kind=<kind>&active=1&source=DI_0``: :meth:`inject`.
        * ``POST /drop``: forget every subscription (a camera reboot).
        * ``POST /fault?<knob>=<value>...``: :meth:`set_faults`; knobs ``clock_offset``
          (s), ``pull_delay`` (s), ``pull_fail`` (0/1), ``snapshot`` (401, timeout, ok),
          ``snapshot_delay`` (s), ``subscription_cap`` (n or none), ``password``,
          ``malformed`` (truncated, html, wrong or none).
        * ``POST /normal``: :meth:`clear_faults`.
        """

        def event() -> None:
            active = _flag(query_arg(query, "active", "1"), "active")
            self.inject(query_arg(query, "kind"), active, query.get("source") or None)

        return {
            "/event": ControlRoute("POST", event),
            "/drop": ControlRoute("POST", self.drop_subscriptions),
            "/fault": ControlRoute("POST", lambda: self.set_faults(query)),
            "/normal": ControlRoute("POST", self.clear_faults),
        }

    # ------------------------------------------------------------------ HTTP

    def _app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/onvif/device_service", self._soap_endpoint("device"), methods=["POST"]),
                Route("/onvif/media_service", self._soap_endpoint("media"), methods=["POST"]),
                Route("/onvif/event_service", self._soap_endpoint("events"), methods=["POST"]),
                Route("/onvif/ptz_service", self._soap_endpoint("ptz"), methods=["POST"]),
                Route(
                    "/onvif/subscription/{ident:int}",
                    self._soap_endpoint("subscription"),
                    methods=["POST"],
                ),
                Route("/snapshot.jpg", self._snapshot, methods=["GET"]),
            ]
        )

    def _soap_endpoint(self, service: str) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            body = await request.body()
            try:
                status, payload = await self._soap(service, request, body)
            except _SoapFault as fault:
                status, payload = fault.status, _fault_body(fault)
            envelope = f'<?xml version="1.0" encoding="UTF-8"?>\n<env:Envelope {_XMLNS}>'
            envelope += f"<env:Body>{payload}</env:Body></env:Envelope>"
            if self.malformed is not None and b"GetSystemDateAndTime" not in body:
                return self._malformed_answer(envelope)
            return Response(envelope.encode(), status_code=status, media_type=_SOAP_CT)

        return endpoint

    def _malformed_answer(self, envelope: str) -> Response:
        if self.malformed == "html":
            page = b"<html><body><h1>502 Bad Gateway</h1></body></html>"
            return Response(page, status_code=200, media_type="text/html")
        if self.malformed == "wrong":
            wrong = (
                f'<?xml version="1.0" encoding="UTF-8"?>\n<env:Envelope {_XMLNS}><env:Body>'
                "<tds:GetHostnameResponse><tds:HostnameInformation><tt:FromDHCP>false"
                "</tt:FromDHCP></tds:HostnameInformation></tds:GetHostnameResponse>"
                "</env:Body></env:Envelope>"
            )
            return Response(wrong.encode(), status_code=200, media_type=_SOAP_CT)
        return Response(envelope[: len(envelope) // 2].encode(), media_type=_SOAP_CT)

    async def _soap(self, service: str, request: Request, body: bytes) -> tuple[int, str]:
        try:
            root = ET.fromstring(body)
        except ET.ParseError:
            raise _sender_fault("ter:WellFormed", "malformed XML") from None
        soap_body = root.find("env:Body", NS)
        if root.tag != f"{{{NS['env']}}}Envelope" or soap_body is None or not len(soap_body):
            raise _sender_fault("ter:WellFormed", "not a SOAP 1.2 envelope")
        operation = soap_body[0]
        name = operation.tag.rpartition("}")[2]
        self.requests[name] = self.requests.get(name, 0) + 1
        handler = self._handlers().get((service, name))
        if handler is None:
            raise _receiver_fault("ter:ActionNotSupported", f"{name} not supported on this service")
        if (service, name) != ("device", "GetSystemDateAndTime"):
            self._authenticate(root)
        return 200, await handler(operation, request)

    def _handlers(
        self,
    ) -> dict[tuple[str, str], Callable[[ET.Element, Request], Awaitable[str]]]:
        return {
            ("device", "GetSystemDateAndTime"): self._get_system_date_and_time,
            ("device", "GetServices"): self._get_services,
            ("device", "GetCapabilities"): self._get_capabilities,
            ("device", "GetDeviceInformation"): self._get_device_information,
            ("media", "GetProfiles"): self._get_profiles,
            ("media", "GetStreamUri"): self._get_stream_uri,
            ("media", "GetSnapshotUri"): self._get_snapshot_uri,
            ("events", "GetEventProperties"): self._get_event_properties,
            ("events", "CreatePullPointSubscription"): self._create_pull_point,
            ("events", "Subscribe"): self._subscribe_push,
            ("subscription", "PullMessages"): self._pull_messages,
            ("subscription", "Renew"): self._renew,
            ("subscription", "Unsubscribe"): self._unsubscribe,
            ("subscription", "SetSynchronizationPoint"): self._set_synchronization_point,
            ("ptz", "GotoPreset"): self._ptz_goto_preset,
        }

    # ------------------------------------------------------------------ WS-Security

    def _authenticate(self, root: ET.Element) -> None:
        try:
            self._check_token(root)
        except _SoapFault:
            self.auth_failures += 1
            raise

    def _check_token(self, root: ET.Element) -> None:
        token = root.find("env:Header/wsse:Security/wsse:UsernameToken", NS)
        if token is None:
            raise _not_authorized("Sender not Authorized: no UsernameToken")
        user = token.findtext("wsse:Username", "", NS)
        password_el = token.find("wsse:Password", NS)
        if password_el is None or user != self.username:
            raise _not_authorized("Sender not Authorized")
        given = (password_el.text or "").strip()
        if password_el.get("Type", "").endswith(_PASSWORD_DIGEST):
            nonce_text = token.findtext("wsse:Nonce", "", NS).strip()
            created_text = token.findtext("wsu:Created", "", NS).strip()
            try:
                nonce = base64.b64decode(nonce_text, validate=True)
                created = _parse_datetime(created_text)
            except ValueError:
                raise _not_authorized("Sender not Authorized: bad Nonce or Created") from None
            raw = nonce + created_text.encode() + self.password.encode()
            expected = base64.b64encode(hashlib.sha1(raw).digest()).decode()
            if not secrets.compare_digest(given, expected):
                raise _not_authorized("Sender not Authorized")
            skew = abs((created - self.now()).total_seconds())
            if skew > self.max_skew:
                raise _not_authorized(f"Sender not Authorized: Created is {skew:.0f} s off")
        elif not secrets.compare_digest(given, self.password):
            raise _not_authorized("Sender not Authorized")

    # ------------------------------------------------------------------ PTZ (issue 13: linkage)

    PTZ_PRESETS = ("1", "2", "3", "gate", "guardroom")
    """Preset tokens the simulated PTZ head knows."""

    async def _ptz_goto_preset(self, op: ET.Element, request: Request) -> str:
        profile = (op.findtext(f"{{{_PTZ_NS}}}ProfileToken") or "").strip()
        preset = (op.findtext(f"{{{_PTZ_NS}}}PresetToken") or "").strip()
        if profile not in self._profile_tokens():
            raise _sender_fault("ter:InvalidArgVal", f"no profile {profile!r}", "ter:NoProfile")
        if preset not in self.PTZ_PRESETS:
            raise _sender_fault("ter:InvalidArgVal", f"no preset {preset!r}", "ter:NoToken")
        if self.ptz_delay:
            await asyncio.sleep(self.ptz_delay)
        self.ptz_gotos.append((profile, preset))
        return f'<tptz:GotoPresetResponse xmlns:tptz="{_PTZ_NS}"/>'

    # ------------------------------------------------------------------ device service

    async def _get_system_date_and_time(self, op: ET.Element, request: Request) -> str:
        now = self.now()
        return (
            "<tds:GetSystemDateAndTimeResponse><tds:SystemDateAndTime>"
            "<tt:DateTimeType>Manual</tt:DateTimeType>"
            "<tt:DaylightSavings>false</tt:DaylightSavings>"
            "<tt:TimeZone><tt:TZ>UTC0</tt:TZ></tt:TimeZone>"
            f"<tt:UTCDateTime>{_date_time(now)}</tt:UTCDateTime>"
            f"<tt:LocalDateTime>{_date_time(now)}</tt:LocalDateTime>"
            "</tds:SystemDateAndTime></tds:GetSystemDateAndTimeResponse>"
        )

    def _xaddr(self, service: str) -> str:
        return f"{self.base_url}/onvif/{service}_service"

    async def _get_services(self, op: ET.Element, request: Request) -> str:
        services = [
            (NS["tds"], self._xaddr("device"), 2, 40),
            (NS["trt"], self._xaddr("media"), 2, 40),
            (NS["tev"], self._xaddr("event"), 2, 40),
            (_PTZ_NS, self._xaddr("ptz"), 2, 40),
        ]
        return (
            "<tds:GetServicesResponse>"
            + "".join(
                f"<tds:Service><tds:Namespace>{ns}</tds:Namespace>"
                f"<tds:XAddr>{escape(xaddr)}</tds:XAddr>"
                f"<tds:Version><tt:Major>{major}</tt:Major><tt:Minor>{minor}</tt:Minor>"
                "</tds:Version></tds:Service>"
                for ns, xaddr, major, minor in services
            )
            + "</tds:GetServicesResponse>"
        )

    async def _get_capabilities(self, op: ET.Element, request: Request) -> str:
        return (
            "<tds:GetCapabilitiesResponse><tds:Capabilities>"
            f"<tt:Device><tt:XAddr>{escape(self._xaddr('device'))}</tt:XAddr></tt:Device>"
            f"<tt:Events><tt:XAddr>{escape(self._xaddr('event'))}</tt:XAddr>"
            "<tt:WSSubscriptionPolicySupport>false</tt:WSSubscriptionPolicySupport>"
            "<tt:WSPullPointSupport>true</tt:WSPullPointSupport>"
            "<tt:WSPausableSubscriptionManagerInterfaceSupport>false"
            "</tt:WSPausableSubscriptionManagerInterfaceSupport></tt:Events>"
            f"<tt:Media><tt:XAddr>{escape(self._xaddr('media'))}</tt:XAddr>"
            "<tt:StreamingCapabilities><tt:RTPMulticast>false</tt:RTPMulticast>"
            "<tt:RTP_TCP>true</tt:RTP_TCP><tt:RTP_RTSP_TCP>true</tt:RTP_RTSP_TCP>"
            "</tt:StreamingCapabilities></tt:Media>"
            "</tds:Capabilities></tds:GetCapabilitiesResponse>"
        )

    async def _get_device_information(self, op: ET.Element, request: Request) -> str:
        return (
            "<tds:GetDeviceInformationResponse>"
            f"<tds:Manufacturer>{escape(self.manufacturer)}</tds:Manufacturer>"
            f"<tds:Model>{escape(self.model)}</tds:Model>"
            "<tds:FirmwareVersion>1.0.0</tds:FirmwareVersion>"
            f"<tds:SerialNumber>{escape(self.serial_number)}</tds:SerialNumber>"
            "<tds:HardwareId>sim</tds:HardwareId>"
            "</tds:GetDeviceInformationResponse>"
        )

    # ------------------------------------------------------------------ media service

    def _profile_tokens(self) -> list[str]:
        return ["profile_main", "profile_sub"][: self.profiles]

    async def _get_profiles(self, op: ET.Element, request: Request) -> str:
        sizes = [(1920, 1080, 4096), (640, 360, 512)]
        parts = []
        for index, token in enumerate(self._profile_tokens()):
            width, height, kbps = sizes[index]
            parts.append(
                f'<trt:Profiles token="{token}" fixed="true">'
                f"<tt:Name>{'Main' if index == 0 else 'Sub'}</tt:Name>"
                '<tt:VideoSourceConfiguration token="vsconf">'
                "<tt:Name>VideoSource</tt:Name><tt:UseCount>2</tt:UseCount>"
                "<tt:SourceToken>VideoSourceToken</tt:SourceToken>"
                '<tt:Bounds x="0" y="0" width="1920" height="1080"/>'
                "</tt:VideoSourceConfiguration>"
                f'<tt:VideoEncoderConfiguration token="venc_{index}">'
                f"<tt:Name>H264_{index}</tt:Name><tt:UseCount>1</tt:UseCount>"
                "<tt:Encoding>H264</tt:Encoding>"
                f"<tt:Resolution><tt:Width>{width}</tt:Width>"
                f"<tt:Height>{height}</tt:Height></tt:Resolution>"
                "<tt:Quality>5</tt:Quality>"
                "<tt:RateControl><tt:FrameRateLimit>25</tt:FrameRateLimit>"
                "<tt:EncodingInterval>1</tt:EncodingInterval>"
                f"<tt:BitrateLimit>{kbps}</tt:BitrateLimit></tt:RateControl>"
                "<tt:H264><tt:GovLength>50</tt:GovLength>"
                "<tt:H264Profile>Main</tt:H264Profile></tt:H264>"
                "<tt:Multicast><tt:Address><tt:Type>IPv4</tt:Type>"
                "<tt:IPv4Address>0.0.0.0</tt:IPv4Address></tt:Address>"
                "<tt:Port>0</tt:Port><tt:TTL>1</tt:TTL><tt:AutoStart>false</tt:AutoStart>"
                "</tt:Multicast><tt:SessionTimeout>PT60S</tt:SessionTimeout>"
                "</tt:VideoEncoderConfiguration></trt:Profiles>"
            )
        return f"<trt:GetProfilesResponse>{''.join(parts)}</trt:GetProfilesResponse>"

    def _check_profile(self, op: ET.Element) -> None:
        token = (op.findtext("trt:ProfileToken", "", NS) or "").strip()
        if token not in self._profile_tokens():
            raise _sender_fault("ter:InvalidArgVal", f"no profile {token!r}", "ter:NoProfile")

    @staticmethod
    def _media_uri(response: str, uri: str) -> str:
        return (
            f"<trt:{response}><trt:MediaUri><tt:Uri>{escape(uri)}</tt:Uri>"
            "<tt:InvalidAfterConnect>false</tt:InvalidAfterConnect>"
            "<tt:InvalidAfterReboot>false</tt:InvalidAfterReboot>"
            f"<tt:Timeout>PT0S</tt:Timeout></trt:MediaUri></trt:{response}>"
        )

    async def _get_stream_uri(self, op: ET.Element, request: Request) -> str:
        self._check_profile(op)
        uri = self.stream.url if self.stream is not None else self.stream_uri
        return self._media_uri("GetStreamUriResponse", uri)

    async def _get_snapshot_uri(self, op: ET.Element, request: Request) -> str:
        self._check_profile(op)
        return self._media_uri("GetSnapshotUriResponse", self.snapshot_url)

    # ------------------------------------------------------------------ event service

    async def _get_event_properties(self, op: ET.Element, request: Request) -> str:
        return (
            "<tev:GetEventPropertiesResponse>"
            "<tev:TopicNamespaceLocation>http://www.onvif.org/onvif/ver10/topics/"
            "topicns.xml</tev:TopicNamespaceLocation>"
            "<wsnt:FixedTopicSet>true</wsnt:FixedTopicSet>"
            "<wstop:TopicSet>"
            '<tns1:RuleEngine wstop:topic="false"><CellMotionDetector wstop:topic="false">'
            '<Motion wstop:topic="true"/></CellMotionDetector>'
            '<TamperDetector wstop:topic="false"><Tamper wstop:topic="true"/>'
            "</TamperDetector></tns1:RuleEngine>"
            '<tns1:VideoSource wstop:topic="false"><MotionAlarm wstop:topic="true"/>'
            "</tns1:VideoSource>"
            '<tns1:Device wstop:topic="false"><Trigger wstop:topic="false">'
            '<DigitalInput wstop:topic="true"/></Trigger></tns1:Device>'
            "</wstop:TopicSet>"
            f"<wsnt:TopicExpressionDialect>{_TOPIC_DIALECT}</wsnt:TopicExpressionDialect>"
            "<tev:MessageContentFilterDialect>http://www.onvif.org/ver10/tev/"
            "messageContentFilter/ItemFilter</tev:MessageContentFilterDialect>"
            "<tev:MessageContentSchemaLocation>http://www.onvif.org/onvif/ver10/schema/"
            "onvif.xsd</tev:MessageContentSchemaLocation>"
            "</tev:GetEventPropertiesResponse>"
        )

    def _termination(self, text: str | None, now: dt.datetime) -> dt.datetime:
        if not text or not text.strip():
            return now + _DEFAULT_TERM
        try:
            if text.strip().startswith("P"):
                return now + parse_duration(text)
            return _parse_datetime(text)
        except ValueError:
            raise _sender_fault("ter:InvalidArgVal", f"bad termination time {text!r}") from None

    def _expire(self) -> None:
        now = self.now()
        for ident in [i for i, sub in self._subs.items() if sub.terminates <= now]:
            self._subs.pop(ident).wake.set()

    def _subscription_address(self, ident: int) -> str:
        return f"{self.base_url}/onvif/subscription/{ident}"

    def _check_cap(self) -> None:
        """The cap counts pull-point and push subscriptions together."""
        self._expire()
        if self.subscription_cap is not None and len(self._subs) >= self.subscription_cap:
            # What cameras with a subscription cap answer (Axis, Hikvision word it alike).
            raise _receiver_fault(
                "ter:Action",
                "too many subscriptions",
                "ter:TooManySubscriptions",
            )

    async def _create_pull_point(self, op: ET.Element, request: Request) -> str:
        self._check_cap()
        now = self.now()
        terminates = self._termination(op.findtext("tev:InitialTerminationTime", None, NS), now)
        sub = _Subscription(next(self._sub_ids), terminates)
        self._subs[sub.ident] = sub
        self.subscriptions_created += 1
        return (
            "<tev:CreatePullPointSubscriptionResponse><tev:SubscriptionReference>"
            f"<wsa:Address>{escape(self._subscription_address(sub.ident))}</wsa:Address>"
            "</tev:SubscriptionReference>"
            f"<wsnt:CurrentTime>{_xml_datetime(now)}</wsnt:CurrentTime>"
            f"<wsnt:TerminationTime>{_xml_datetime(terminates)}</wsnt:TerminationTime>"
            "</tev:CreatePullPointSubscriptionResponse>"
        )

    def _subscription(self, request: Request) -> _Subscription:
        self._expire()
        ident = int(request.path_params["ident"])
        sub = self._subs.get(ident)
        if sub is None:
            # A camera that rebooted or expired the subscription: the resource is gone.
            raise _sender_fault(
                "ter:InvalidArgVal", f"unknown subscription {ident}", "ter:ResourceUnknown"
            )
        return sub

    async def _pull_messages(self, op: ET.Element, request: Request) -> str:
        self.pulls += 1
        sub = self._subscription(request)
        try:
            timeout = parse_duration(op.findtext("tev:Timeout", "PT0S", NS) or "PT0S")
            limit = int(op.findtext("tev:MessageLimit", "100", NS) or "100")
        except ValueError as exc:
            raise _sender_fault("ter:InvalidArgVal", str(exc)) from None
        if self.pull_delay > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.pull_delay):
                    await self._closing.wait()
        if self.pull_fail:
            raise _receiver_fault("ter:Action", "PullMessages failed (simulated)")
        deadline = min(timeout.total_seconds(), _MAX_PULL_TIMEOUT)
        loop = asyncio.get_running_loop()
        until = loop.time() + deadline
        while not sub.queue and not self._closing.is_set() and sub.ident in self._subs:
            sub.wake.clear()
            remaining = until - loop.time()
            if remaining <= 0:
                break
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await sub.wake.wait()
        if sub.ident not in self._subs:
            raise _sender_fault(
                "ter:InvalidArgVal", f"subscription {sub.ident} ended", "ter:ResourceUnknown"
            )
        batch, sub.queue[:] = sub.queue[: max(limit, 1)], sub.queue[max(limit, 1) :]
        now = self.now()
        return (
            "<tev:PullMessagesResponse>"
            f"<tev:CurrentTime>{_xml_datetime(now)}</tev:CurrentTime>"
            f"<tev:TerminationTime>{_xml_datetime(sub.terminates)}</tev:TerminationTime>"
            + "".join(self._notification(sub, note) for note in batch)
            + "</tev:PullMessagesResponse>"
        )

    def _notification(self, sub: _Subscription, note: Notification) -> str:
        def items(values: dict[str, str]) -> str:
            return "".join(
                f"<tt:SimpleItem Name={quoteattr(k)} Value={quoteattr(v)}/>"
                for k, v in values.items()
            )

        return (
            "<wsnt:NotificationMessage>"
            "<wsnt:SubscriptionReference>"
            f"<wsa:Address>{escape(self._subscription_address(sub.ident))}</wsa:Address>"
            "</wsnt:SubscriptionReference>"
            f'<wsnt:Topic Dialect="{_TOPIC_DIALECT}">{escape(note.topic)}</wsnt:Topic>'
            "<wsnt:ProducerReference>"
            f"<wsa:Address>{escape(self._xaddr('event'))}</wsa:Address>"
            "</wsnt:ProducerReference>"
            "<wsnt:Message>"
            f'<tt:Message UtcTime="{_xml_datetime(note.utc_time)}" '
            f'PropertyOperation="{note.operation}">'
            f"<tt:Source>{items(note.source)}</tt:Source>"
            f"<tt:Data>{items(note.data)}</tt:Data>"
            "</tt:Message></wsnt:Message></wsnt:NotificationMessage>"
        )

    async def _renew(self, op: ET.Element, request: Request) -> str:
        sub = self._subscription(request)
        now = self.now()
        sub.terminates = self._termination(op.findtext("wsnt:TerminationTime", None, NS), now)
        return (
            "<wsnt:RenewResponse>"
            f"<wsnt:TerminationTime>{_xml_datetime(sub.terminates)}</wsnt:TerminationTime>"
            f"<wsnt:CurrentTime>{_xml_datetime(now)}</wsnt:CurrentTime>"
            "</wsnt:RenewResponse>"
        )

    async def _unsubscribe(self, op: ET.Element, request: Request) -> str:
        sub = self._subscription(request)
        self._subs.pop(sub.ident, None)
        sub.wake.set()
        return "<wsnt:UnsubscribeResponse/>"

    async def _set_synchronization_point(self, op: ET.Element, request: Request) -> str:
        sub = self._subscription(request)
        sub.queue.extend(
            Notification(n.topic, n.data, n.source, self.now(), "Initialized")
            for n in self._states.values()
        )
        sub.wake.set()
        return "<tev:SetSynchronizationPointResponse/>"

    # ------------------------------------------------------------------ push (Notify)

    @property
    def push_subscriptions(self) -> int:
        """Push (Subscribe) subscriptions alive now; also counted in active_subscriptions."""
        self._expire()
        return sum(1 for sub in self._subs.values() if sub.consumer is not None)

    async def _subscribe_push(self, op: ET.Element, request: Request) -> str:
        """WS-BaseNotification Subscribe: POST a wsnt:Notify to ConsumerReference for every
        event while the subscription lives; Renew/Unsubscribe on its manager address."""
        self._check_cap()
        consumer = (op.findtext("wsnt:ConsumerReference/wsa:Address", "", NS) or "").strip()
        if not consumer.startswith(("http://", "https://")):
            raise _sender_fault("ter:InvalidArgVal", f"bad ConsumerReference {consumer!r}")
        now = self.now()
        terminates = self._termination(op.findtext("wsnt:InitialTerminationTime", None, NS), now)
        sub = _Subscription(next(self._sub_ids), terminates, consumer=consumer)
        self._subs[sub.ident] = sub
        self.subscriptions_created += 1
        self._pushers[sub.ident] = asyncio.create_task(
            self._push(sub), name=f"camera-sim-notify-{sub.ident}"
        )
        return (
            "<wsnt:SubscribeResponse><wsnt:SubscriptionReference>"
            f"<wsa:Address>{escape(self._subscription_address(sub.ident))}</wsa:Address>"
            "</wsnt:SubscriptionReference>"
            f"<wsnt:CurrentTime>{_xml_datetime(now)}</wsnt:CurrentTime>"
            f"<wsnt:TerminationTime>{_xml_datetime(terminates)}</wsnt:TerminationTime>"
            "</wsnt:SubscribeResponse>"
        )

    def _live(self, sub: _Subscription) -> bool:
        self._expire()
        return not self._closing.is_set() and self._subs.get(sub.ident) is sub

    async def _push(self, sub: _Subscription) -> None:
        """Send the subscription's queue as Notify POSTs, in order, while it lives.

        A consumer that does not answer 2xx loses that batch (counted in
        :attr:`notify_failures`); like cameras, the subscription stays until it expires.
        """
        assert sub.consumer is not None
        if self._push_client is None:
            self._push_client = httpx.AsyncClient(timeout=5.0, trust_env=False)
        client = self._push_client
        try:
            while self._live(sub):
                if not sub.queue:
                    sub.wake.clear()
                    remaining = (sub.terminates - self.now()).total_seconds()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(max(remaining, 0.01)):
                            await sub.wake.wait()
                    continue
                batch, sub.queue[:] = sub.queue[:100], sub.queue[100:]
                envelope = (
                    f'<?xml version="1.0" encoding="UTF-8"?>\n<env:Envelope {_XMLNS}>'
                    "<env:Header><wsa:Action>http://docs.oasis-open.org/wsn/bw-2/"
                    "NotificationConsumer/Notify</wsa:Action></env:Header>"
                    "<env:Body><wsnt:Notify>"
                    + "".join(self._notification(sub, note) for note in batch)
                    + "</wsnt:Notify></env:Body></env:Envelope>"
                )
                try:
                    answer = await client.post(
                        sub.consumer, content=envelope.encode(), headers={"Content-Type": _SOAP_CT}
                    )
                except httpx.HTTPError as exc:
                    self.notify_failures += 1
                    log.debug("Notify to %s failed: %s", sub.consumer, exc)
                    continue
                if 200 <= answer.status_code < 300:
                    self.notifies_sent += 1
                else:
                    self.notify_failures += 1
                    log.debug("Notify to %s: HTTP %d", sub.consumer, answer.status_code)
        finally:
            self._pushers.pop(sub.ident, None)

    async def _stop_pushers(self) -> None:
        pushers = list(self._pushers.values())
        for task in pushers:
            task.cancel()
        for task in pushers:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._pushers.clear()
        client, self._push_client = self._push_client, None
        if client is not None:
            await client.aclose()

    # ------------------------------------------------------------------ snapshot

    async def _snapshot(self, request: Request) -> Response:
        if self.snapshot_fail == "timeout":
            # A hung camera: no answer until the simulator stops.
            await self._closing.wait()
            return Response(b"", status_code=503)
        if self.snapshot_fail != "401" and self._http_auth_ok(request):
            if self.snapshot_delay > 0:
                await asyncio.sleep(self.snapshot_delay)  # a slow camera (simulated latency)
            self.snapshots += 1
            return Response(SNAPSHOT_JPEG, media_type="image/jpeg")
        if request.headers.get("authorization"):
            self.auth_failures += 1
        if self.snapshot_auth == "basic":
            challenge = f'Basic realm="{_DIGEST_REALM}"'
        else:
            nonce = secrets.token_hex(16)
            if len(self._digest_nonces) > 1000:  # a long demo run must not grow without bound
                self._digest_nonces.clear()
            self._digest_nonces.add(nonce)
            challenge = (
                f'Digest realm="{_DIGEST_REALM}", qop="auth", algorithm=MD5, '
                f'nonce="{nonce}", opaque="{secrets.token_hex(8)}"'
            )
        return Response(b"Unauthorized", status_code=401, headers={"WWW-Authenticate": challenge})

    def _http_auth_ok(self, request: Request) -> bool:
        header = request.headers.get("authorization", "")
        scheme, _, rest = header.partition(" ")
        if scheme.lower() == "basic" and self.snapshot_auth == "basic":
            try:
                user, _, pw = base64.b64decode(rest).decode().partition(":")
            except ValueError:
                return False
            return user == self.username and secrets.compare_digest(pw, self.password)
        if scheme.lower() != "digest" or self.snapshot_auth != "digest":
            return False
        fields = {k: quoted or bare for k, quoted, bare in _DIGEST_FIELD.findall(rest)}
        if (
            fields.get("username") != self.username
            or fields.get("nonce") not in self._digest_nonces
            or fields.get("uri", "").partition("?")[0] != request.url.path
        ):
            return False

        def md5(text: str) -> str:
            return hashlib.md5(text.encode()).hexdigest()

        ha1 = md5(f"{self.username}:{_DIGEST_REALM}:{self.password}")
        ha2 = md5(f"{request.method}:{fields.get('uri', '')}")
        if fields.get("qop"):
            parts = [fields["nonce"], fields.get("nc", ""), fields.get("cnonce", ""), "auth"]
            expected = md5(f"{ha1}:{':'.join(parts)}:{ha2}")
        else:
            expected = md5(f"{ha1}:{fields['nonce']}:{ha2}")
        return secrets.compare_digest(fields.get("response", ""), expected)


def _date_time(moment: dt.datetime) -> str:
    moment = moment.astimezone(dt.UTC)
    return (
        # tt:DateTime is Time then Date (onvif.xsd), not the other way round.
        f"<tt:Time><tt:Hour>{moment.hour}</tt:Hour><tt:Minute>{moment.minute}</tt:Minute>"
        f"<tt:Second>{moment.second}</tt:Second></tt:Time>"
        f"<tt:Date><tt:Year>{moment.year}</tt:Year><tt:Month>{moment.month}</tt:Month>"
        f"<tt:Day>{moment.day}</tt:Day></tt:Date>"
    )


def _fault_body(fault: _SoapFault) -> str:
    subcode = ""
    for value in reversed(fault.subcodes):
        subcode = f"<env:Subcode><env:Value>{value}</env:Value>{subcode}</env:Subcode>"
    return (
        f"<env:Fault><env:Code><env:Value>{fault.code}</env:Value>{subcode}</env:Code>"
        f'<env:Reason><env:Text xml:lang="en">{escape(fault.reason)}</env:Text></env:Reason>'
        "</env:Fault>"
    )


async def run_camera_sim(
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    username: str = "admin",
    password: str = "campus-cam-pw",
    http_port: int | None = 8023,
    http_host: str | None = None,
    name: str = "sim-camera",
    rtsp: bool = True,
    rtsp_port: int = 8554,
    rtsp_path: str = "cam",
    codec: Literal["auto", "h264", "mjpeg"] = "auto",
    started: Callable[[CameraSimulator], None] | None = None,
) -> None:
    """Run a simulated camera until cancelled (for ``campusguard sim camera``).

    Args:
        host: Address to bind (ONVIF, RTSP and, by default, HTTP control).
        port: ONVIF HTTP port (0 = any free port).
        username: ONVIF and snapshot user.
        password: Its password.
        http_port: HTTP control port, ``None`` = no HTTP control (0 = any free port).
        http_host: Address for HTTP control (default: ``host``).
        name: Shown in the video next to the clock, and in the log.
        rtsp: Serve the RTSP test stream; without GStreamer the camera runs without it
            (GetStreamUri answers a placeholder) and one warning names the packages.
        rtsp_port: RTSP port (0 = any free port).
        rtsp_path: RTSP mount path.
        codec: ``auto`` (H.264 if an encoder is installed), ``h264`` or ``mjpeg``.
        started: Called once listening, with the simulator (ports and stream filled in).
    """
    from .rtsp import RtspUnavailable

    async with contextlib.AsyncExitStack() as stack:
        stream: RtspTestStream | None = None
        if rtsp:
            try:
                stream = await stack.enter_async_context(
                    RtspTestStream(host, rtsp_port, rtsp_path, codec=codec, label=name)
                )
            except RtspUnavailable as exc:
                log.warning("camera %s: RTSP stream off: %s", name, exc)
        sim = await stack.enter_async_context(
            CameraSimulator(
                host,
                port,
                username=username,
                password=password,
                stream=stream,
                http_port=http_port,
                http_host=http_host,
            )
        )
        log.info(
            "Camera simulator %s: ONVIF %s, RTSP %s, HTTP control %s",
            name,
            sim.base_url,
            "off" if stream is None else f"{stream.url} ({stream.codec})",
            "off" if sim.http_port is None else f"on port {sim.http_port}",
        )
        if started is not None:
            started(sim)
        await asyncio.Event().wait()
