"""The GB/T 28181 sink: the gateway registers with the police video platform as a device and
sends each alarm as a SIP MESSAGE with a MANSCDP ``<Notify><CmdType>Alarm</CmdType>`` body.

- Registration: REGISTER; a 401 is answered with digest credentials (RFC 2617, MD5); the
  granted lifetime is refreshed at 80 % of it. A refusal (403 or wrong credentials) is logged
  as an error and retried with capped back-off; so is a platform that does not answer.
- Keep-alive: a MESSAGE ``<Notify><CmdType>Keepalive</CmdType>`` every ``keepalive_interval``;
  ``keepalive_misses`` unanswered in a row, or a 401 / 403 / 404 to any MESSAGE (a restarted
  platform no longer knows us), and the gateway registers again.
- Alarms: the platform's 200 OK is the delivery ACK. The ``SN`` is the relay job's sequence
  number, fixed when the alarm was stored, so a resend after a crash or timeout carries the
  same SN (the platform can drop the repeat). A 200 only counts while registered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
import xml.etree.ElementTree as ET
from datetime import datetime
from types import TracebackType
from typing import Any, Literal, Self
from zoneinfo import ZoneInfo

from contract.aio import cancel_and_wait
from contract.config import CampusAccount, Gb28181Config
from contract.models import Event, Geo, utcnow
from drivers.sip import digest
from drivers.sip.message import SipMessage, new_branch, new_tag, request
from drivers.sip.transport import SipUdpTransport, TransactionTimeout, source_ip_for
from gateway.relay.base import Delivery

log = logging.getLogger(__name__)

CONTENT_TYPE = "Application/MANSCDP+xml"

AlarmMethod = Literal[1, 2, 3, 4, 5, 6, 7]
"""1 phone, 2 device, 3 SMS, 4 GPS, 5 video, 6 device fault, 7 other."""

_VIDEO = {"camera_tamper", "camera_intrusion", "video_loss", "camera_motion"}
_FAULT = {"trouble", "transmission_fault", "device_offline", "bollard_trouble", "test_missed"}
_NAMES = {
    "panic": "一键报警 panic",
    "duress": "胁迫报警 duress",
    "holdup": "劫持报警 hold-up",
    "fire": "火警 fire",
    "intrusion": "入侵报警 intrusion",
    "tamper": "防拆报警 tamper",
    "trouble": "设备故障 trouble",
    "transmission_fault": "传输故障 transmission fault",
    "bollard_impact": "防冲撞装置撞击 bollard impact",
    "camera_tamper": "视频遮挡 camera tamper",
    "camera_intrusion": "区域入侵 camera intrusion",
    "video_loss": "视频丢失 video loss",
    "test": "测试 test",
}


def alarm_method(kind: str) -> AlarmMethod:
    if kind in _VIDEO:
        return 5
    if kind in _FAULT:
        return 6
    return 2


def local_time(ts: datetime, zone: str) -> str:
    """GB/T 28181 times: local, ``YYYY-MM-DDTHH:MM:SS``, no zone."""
    return ts.astimezone(ZoneInfo(zone)).strftime("%Y-%m-%dT%H:%M:%S")


def _xml(root: ET.Element, encoding: str) -> bytes:
    ET.indent(root, space="")
    body = ET.tostring(root, encoding="unicode", xml_declaration=False)
    head = f'<?xml version="1.0" encoding="{encoding}"?>\n'
    # Characters GB2312 lacks go out as character references, never as '?'.
    return (head + body + "\n").encode(encoding.lower(), errors="xmlcharrefreplace")


def _text(parent: ET.Element, tag: str, value: str) -> None:
    ET.SubElement(parent, tag).text = value


def description(event: Event, campus: CampusAccount) -> str:
    what = _NAMES.get(event.kind, event.kind)
    parts = [("演练 DRILL " if event.drill else "") + what, campus.name or campus.id]
    if event.location:
        parts.append(event.location)
    if event.text:
        parts.append(event.text)
    return " / ".join(parts)[:256]


def alarm_body(
    event: Event,
    campus: CampusAccount,
    *,
    sn: int,
    device_id: str,
    priority: int,
    zone: str = "Asia/Shanghai",
    encoding: str = "GB2312",
) -> bytes:
    """The MANSCDP alarm notification for ``event``."""
    root = ET.Element("Notify")
    _text(root, "CmdType", "Alarm")
    _text(root, "SN", str(sn))
    _text(root, "DeviceID", device_id)
    _text(root, "AlarmPriority", str(4 if event.drill else priority))
    _text(root, "AlarmMethod", str(alarm_method(event.kind)))
    _text(root, "AlarmTime", local_time(event.ts, zone))
    _text(root, "AlarmDescription", description(event, campus))
    geo: Geo | None = event.geo or campus.geo
    if geo is not None:
        _text(root, "Longitude", f"{geo.lon:.6f}")
        _text(root, "Latitude", f"{geo.lat:.6f}")
    return _xml(root, encoding)


def keepalive_body(sn: int, device_id: str, encoding: str = "GB2312") -> bytes:
    root = ET.Element("Notify")
    _text(root, "CmdType", "Keepalive")
    _text(root, "SN", str(sn))
    _text(root, "DeviceID", device_id)
    _text(root, "Status", "OK")
    return _xml(root, encoding)


RegState = Literal["unregistered", "registering", "registered", "refused", "unreachable"]


class Gb28181Client:
    """Registration, keep-alive and MESSAGE delivery for one platform."""

    def __init__(self, cfg: Gb28181Config) -> None:
        self.cfg = cfg
        self.user = cfg.username or cfg.device_id
        self.uri = f"sip:{cfg.server_id}@{cfg.domain}"
        self.aor = f"sip:{cfg.device_id}@{cfg.domain}"
        self.transport = SipUdpTransport(
            cfg.local_host, cfg.local_port, (cfg.server_host, cfg.server_port)
        )
        self.state: RegState = "unregistered"
        self.since = utcnow()
        self.reason = ""
        self.registered = asyncio.Event()
        self.registrations = 0
        self.keepalives_sent = 0
        self.keepalive_misses = 0
        self._lost = asyncio.Event()
        self._call_id = f"{secrets.token_hex(10)}@campusguard"
        self._from_tag = new_tag()
        self._cseq = 0
        self._sn = 0
        self._challenge: digest.Challenge | None = None
        self._nc = 0
        self._task: asyncio.Task[None] | None = None
        self.expires_at = 0.0

    async def __aenter__(self) -> Self:
        await self.transport.__aenter__()
        self._task = asyncio.create_task(self._run(), name="gb28181-registration")
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._task is not None:
            await cancel_and_wait([self._task])
        if self.state == "registered":
            with contextlib.suppress(Exception):
                await self._register(expires=0, within=1.0)  # unregister, best effort
        await self.transport.__aexit__(et, e, tb)

    # --- state ----------------------------------------------------------------------------

    def _set(self, state: RegState, reason: str = "") -> None:
        if state != self.state:
            level = logging.INFO if state in ("registered", "registering") else logging.ERROR
            log.log(
                level,
                "GB/T 28181 platform %s:%d: %s%s",
                self.cfg.server_host,
                self.cfg.server_port,
                state,
                f" ({reason})" if reason else "",
            )
            self.state, self.since = state, utcnow()
        self.reason = reason
        if state == "registered":
            self.registered.set()
        else:
            self.registered.clear()

    def lost(self, reason: str) -> None:
        """The platform no longer knows us: register again now."""
        if self.state == "registered":
            self._set("unregistered", reason)
            self._lost.set()

    @property
    def contact_host(self) -> str:
        if self.cfg.contact_host:
            return self.cfg.contact_host
        if self.cfg.local_host not in ("0.0.0.0", ""):
            return self.cfg.local_host
        return source_ip_for(self.cfg.server_host, self.cfg.server_port)

    def _via(self) -> str:
        return f"{self.contact_host}:{self.transport.local_port}"

    def next_sn(self) -> int:
        """SNs of keep-alives (100000 and up: apart from the alarms' relay sequence numbers)."""
        self._sn = self._sn % 899_999 + 1
        return 100_000 + self._sn

    # --- registration ---------------------------------------------------------------------

    async def _run(self) -> None:
        backoff = 1.0
        while True:
            if self.state != "registered":  # a refresh keeps alarms flowing meanwhile
                self._set("registering", self.reason)
            try:
                granted = await self._register(self.cfg.expires, within=self.cfg.timeout)
            except TransactionTimeout as exc:
                self._set("unreachable", str(exc))
                granted = None
            except _Refused as exc:
                self._set("refused", str(exc))
                granted = None
            if granted is None:
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.cfg.retry_max)
                continue
            backoff = 1.0
            self.registrations += 1
            self.expires_at = time.monotonic() + granted
            self._set("registered", f"expires in {granted} s")
            await self._stay_registered(granted)

    async def _stay_registered(self, granted: int) -> None:
        """Keep-alives until the refresh is due or the registration is lost."""
        refresh_at = time.monotonic() + max(1.0, granted * 0.8)
        self._lost.clear()
        self.keepalive_misses = 0
        next_keepalive = time.monotonic() + self.cfg.keepalive_interval
        while True:
            now = time.monotonic()
            wake = min(refresh_at, next_keepalive)
            if now >= refresh_at:
                return  # the loop registers again (a refresh)
            if now >= next_keepalive:
                next_keepalive = now + self.cfg.keepalive_interval
                if not await self._keepalive():
                    return
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._lost.wait(), wake - now)
            if self._lost.is_set():
                return

    async def _keepalive(self) -> bool:
        body = keepalive_body(self.next_sn(), self.cfg.device_id, self.cfg.encoding)
        self.keepalives_sent += 1
        try:
            answer = await self.message(body)
        except TransactionTimeout:
            self.keepalive_misses += 1
            if self.keepalive_misses >= self.cfg.keepalive_misses:
                self.lost(f"{self.keepalive_misses} keep-alives unanswered")
                return False
            return True
        self.keepalive_misses = 0
        if answer.status in (401, 403, 404):
            self.lost(f"keep-alive answered {answer.status} {answer.reason}")
            return False
        return True

    def _request(self, method: str, **kw: Any) -> SipMessage:
        self._cseq += 1
        return request(
            method,
            self.uri,
            via=self._via(),
            from_uri=self.aor,
            from_tag=self._from_tag if method == "REGISTER" else new_tag(),
            to_uri=self.aor if method == "REGISTER" else self.uri,
            call_id=self._call_id if method == "REGISTER" else f"{secrets.token_hex(10)}@cg",
            cseq=self._cseq,
            branch=new_branch(),
            **kw,
        )

    def _credentials(self, method: str) -> list[tuple[str, str]]:
        if self._challenge is None:
            return []
        self._nc += 1
        value = digest.authorization(
            self._challenge,
            method=method,
            uri=self.uri,
            username=self.user,
            password=self.cfg.secret(),
            nc=self._nc,
        )
        return [("Authorization", value)]

    async def _register(self, expires: int, within: float) -> int:
        """One registration (answering a challenge once); returns the granted lifetime."""
        contact = f"sip:{self.cfg.device_id}@{self._via()}"
        for attempt in range(2):
            req = self._request(
                "REGISTER",
                contact=contact,
                expires=expires,
                extra=self._credentials("REGISTER"),
            )
            answer = await self.transport.transact(req, within)
            if answer.status == 200:
                granted = answer.expires()
                return granted if granted is not None else expires
            if answer.status in (401, 407) and attempt == 0:
                header = answer.get("WWW-Authenticate") or answer.get("Proxy-Authenticate")
                if header is None:
                    raise _Refused(f"{answer.status} without a challenge")
                try:
                    self._challenge = digest.parse_challenge(header)
                except digest.DigestError as exc:
                    raise _Refused(f"unusable challenge: {exc}") from None
                self._nc = 0
                continue
            if answer.status in (401, 407):
                raise _Refused(f"credentials refused ({answer.status} {answer.reason})")
            raise _Refused(f"{answer.status} {answer.reason}")
        raise _Refused("no registration")  # unreachable: the loop returns or raises

    # --- messages ---------------------------------------------------------------------------

    async def message(self, body: bytes) -> SipMessage:
        req = self._request("MESSAGE", body=body, content_type=CONTENT_TYPE)
        return await self.transport.transact(req, self.cfg.timeout)

    def health(self) -> dict[str, Any]:
        return {
            "platform": f"{self.cfg.server_host}:{self.cfg.server_port}",
            "ok": self.state == "registered",
            "state": self.state,
            "since": self.since,
            "reason": self.reason,
            "registrations": self.registrations,
            "keepalives_sent": self.keepalives_sent,
            "keepalive_misses": self.keepalive_misses,
        }


class _Refused(Exception):
    pass


class Gb28181Sink:
    name = "gb28181"

    def __init__(
        self, cfg: Gb28181Config, campuses: dict[str, CampusAccount], client: Gb28181Client
    ) -> None:
        self.cfg = cfg
        self.campuses = campuses
        self.client = client

    def accepts(self, event: Event) -> bool:
        return event.campus in self.campuses and (self.cfg.restores or not event.restore)

    def wants(self, event: Event) -> bool:
        return self.accepts(event) and event.kind in self.cfg.kinds

    def body(self, event: Event, sn: int) -> bytes:
        return alarm_body(
            event,
            self.campuses[event.campus],
            sn=sn,
            device_id=self.cfg.channels.get(event.campus, self.cfg.device_id),
            priority=self.cfg.priority.get(event.kind, 2),
            zone=self.cfg.timezone,
            encoding=self.cfg.encoding,
        )

    async def deliver(self, event: Event, seq: int | None) -> Delivery:
        client = self.client
        if not client.registered.is_set():
            # A moment's grace for a registration under way; the queue retries after that.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(client.registered.wait(), self.cfg.timeout)
        if not client.registered.is_set():
            return Delivery(
                "failed", "gb28181", f"not registered with the platform ({client.state})"
            )
        started = time.monotonic()
        try:
            answer = await client.message(self.body(event, seq or client.next_sn()))
        except TransactionTimeout as exc:
            return Delivery("failed", "gb28181", str(exc))
        rtt = (time.monotonic() - started) * 1000
        status = answer.status or 0
        if status == 200:
            return Delivery("delivered", "gb28181", f"SN {seq}", rtt)
        detail = f"{status} {answer.reason}"
        if status in (401, 403, 404):
            client.lost(f"MESSAGE answered {detail}")
            return Delivery("failed", "gb28181", f"{detail}; registering again", rtt)
        if status >= 500 or status in (408, 480):
            return Delivery("failed", "gb28181", detail, rtt)
        return Delivery("rejected", "gb28181", detail, rtt)

    def health(self) -> dict[str, Any]:
        return self.client.health()
