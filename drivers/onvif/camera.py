"""An ONVIF camera: device information, media profiles, stream and snapshot URIs, snapshots.

Transport only (onvif-zeep-async over HTTP); what an event or a picture means is decided
elsewhere. Every call is bounded by the camera's ``timeout`` and raises a
:class:`~.errors.CameraError` subclass on failure.
"""

from __future__ import annotations

import asyncio
import logging
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self, TypeVar

import aiohttp

from . import _lib
from .errors import CameraAuthError, CameraProtocolError, boundary

__all__ = ["DEFAULT_TIMEOUT_S", "DeviceInfo", "OnvifCamera", "Profile"]

log = logging.getLogger(__name__)

# A LAN camera answers SOAP within a second or two; ten leaves room for a busy NVR-class box
# without letting a dead one hold a poller for the library's 90 s default.
DEFAULT_TIMEOUT_S = 10.0

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """GetDeviceInformation."""

    manufacturer: str
    model: str
    firmware_version: str
    serial_number: str
    hardware_id: str


@dataclass(frozen=True, slots=True)
class Profile:
    """A media profile (Media1).

    Attributes:
        token: What stream_uri/snapshot_uri take.
        name: The camera's name for it.
        encoding: ``H264``, ``JPEG``, ...; ``None`` when the profile has no video encoder.
        resolution: ``(width, height)`` or ``None``.
    """

    token: str
    name: str
    encoding: str | None
    resolution: tuple[int, int] | None


def _text(value: Any) -> str:
    return "" if value is None else str(value)


class OnvifCamera:
    """One ONVIF camera, an async context manager (or :meth:`connect` / :meth:`close`).

    Args:
        host: Camera address.
        port: HTTP port of its ONVIF services.
        username: ONVIF user.
        password: Its password.
        timeout: Seconds any single call may take.
    """

    def __init__(
        self,
        host: str,
        port: int,
        username: str,
        password: str,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        """Configure; no I/O until :meth:`connect`."""
        self.host = host
        self.port = port
        self.timeout = timeout
        self._username = username
        self._password = password
        self._cam: Any = None
        self._snapshot_uris: dict[str, str] = {}
        self._http: aiohttp.ClientSession | None = None

    @property
    def name(self) -> str:
        """``host:port``, as it appears in errors and logs."""
        return f"{self.host}:{self.port}"

    async def __aenter__(self) -> Self:
        """Connect (see :meth:`connect`)."""
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the HTTP sessions."""
        await self.close()

    async def connect(self) -> None:
        """Read the camera clock, then its service addresses (GetServices/GetCapabilities).

        Raises:
            CameraAuthError: Wrong credentials; do not retry soon.
            CameraError: Any other failure (the sessions are closed again).
        """
        if self._cam is not None:
            return
        await _lib.warm_wsdl_cache()  # once per process: see there
        self._cam = _lib.new_camera(self.host, self.port, self._username, self._password)
        try:
            await self.call("connect", self._cam.update_xaddrs)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Close the library's and the snapshot HTTP sessions; safe to call twice."""
        cam, self._cam = self._cam, None
        http, self._http = self._http, None
        self._snapshot_uris.clear()
        if http is not None:
            await http.close()
        if cam is not None:
            await cam.close()

    @property
    def clock_skew_s(self) -> float | None:
        """Camera clock minus ours, in seconds (1 s resolution); ``None`` before connecting."""
        diff = None if self._cam is None else self._cam.dt_diff
        return None if diff is None else float(diff.total_seconds())

    @property
    def lib(self) -> Any:
        """The connected library object (``onvif.ONVIFCamera``), for the event subscriber."""
        if self._cam is None:
            raise RuntimeError("camera not connected")
        return self._cam

    async def call(
        self, action: str, call: Callable[[], Awaitable[_T]], bound_s: float | None = None
    ) -> _T:
        """Run one library call, bounded (default ``timeout``), its exceptions translated."""
        with boundary(self.name, action):
            async with asyncio.timeout(self.timeout if bound_s is None else bound_s):
                return await call()

    async def device_info(self) -> DeviceInfo:
        """GetDeviceInformation."""

        async def get() -> Any:
            devicemgmt = await self.lib.create_devicemgmt_service()
            return await devicemgmt.GetDeviceInformation()

        info = await self.call("GetDeviceInformation", get)
        with self._parsing("GetDeviceInformation"):
            if info is None or not (_text(info.Manufacturer) or _text(info.Model)):
                raise CameraProtocolError(
                    self.name, "GetDeviceInformation", "answer has no Manufacturer or Model"
                )
            return DeviceInfo(
                manufacturer=_text(info.Manufacturer),
                model=_text(info.Model),
                firmware_version=_text(info.FirmwareVersion),
                serial_number=_text(info.SerialNumber),
                hardware_id=_text(info.HardwareId),
            )

    async def profiles(self) -> list[Profile]:
        """GetProfiles (Media1: the bundled WSDLs have no Media2)."""

        async def get() -> Any:
            media = await self.lib.create_media_service()
            return await media.GetProfiles()

        answer = await self.call("GetProfiles", get)
        if answer is None:
            raise CameraProtocolError(self.name, "GetProfiles", "answer has no Profiles")
        result: list[Profile] = []
        with self._parsing("GetProfiles"):
            for item in answer or ():
                encoder = getattr(item, "VideoEncoderConfiguration", None)
                encoding = None if encoder is None else _text(encoder.Encoding) or None
                size = None if encoder is None else getattr(encoder, "Resolution", None)
                resolution = None if size is None else (int(size.Width), int(size.Height))
                result.append(Profile(_text(item.token), _text(item.Name), encoding, resolution))
        return result

    async def stream_uri(self, profile_token: str) -> str:
        """GetStreamUri for RTSP over RTP unicast."""

        async def get() -> Any:
            media = await self.lib.create_media_service()
            req = media.create_type("GetStreamUri")
            req.ProfileToken = profile_token
            req.StreamSetup = {"Stream": "RTP-Unicast", "Transport": {"Protocol": "RTSP"}}
            return await media.GetStreamUri(req)

        return await self._media_uri("GetStreamUri", get)

    async def snapshot_uri(self, profile_token: str) -> str:
        """GetSnapshotUri (asked directly: the library's helper logs and returns None)."""

        async def get() -> Any:
            media = await self.lib.create_media_service()
            req = media.create_type("GetSnapshotUri")
            req.ProfileToken = profile_token
            return await media.GetSnapshotUri(req)

        return await self._media_uri("GetSnapshotUri", get)

    async def _media_uri(self, action: str, get: Callable[[], Awaitable[Any]]) -> str:
        answer = await self.call(action, get)
        uri = _text(getattr(answer, "Uri", None))
        if not uri:
            raise CameraProtocolError(self.name, action, "answer has no Uri")
        return uri

    async def snapshot(self, profile_token: str) -> bytes:
        """A JPEG from the profile's snapshot URI (HTTP digest or basic auth).

        The URI is asked once per profile (GetSnapshotUri) and cached until :meth:`close` or
        until the URL answers 404; the picture is then one GET (two with the digest
        challenge), all within ``timeout``. We do not use the library's ``get_snapshot``: it
        swallows a GetSnapshotUri fault, and asking for the URI ourselves first made every
        snapshot cost two GetSnapshotUri calls.

        Raises:
            CameraAuthError: 401 from the snapshot URL.
            CameraTimeout: No picture within ``timeout``.
            CameraProtocolError: No snapshot URI, or an HTTP error status.
        """
        uri = self._snapshot_uris.get(profile_token)
        if uri is None:
            uri = await self.snapshot_uri(profile_token)
            self._snapshot_uris[profile_token] = uri
        image = await self.call("snapshot", lambda: self._fetch(profile_token, uri))
        return image

    async def _fetch(self, profile_token: str, uri: str) -> bytes:
        """GET the snapshot URL: digest first (the ONVIF norm), basic when that is asked."""
        url = self.lib.rewrite_url(uri) or uri
        parts = urllib.parse.urlsplit(url)
        username = urllib.parse.unquote(parts.username or "") or self._username
        password = urllib.parse.unquote(parts.password or "") or self._password
        if parts.username is not None:  # credentials in the URL: send them as auth instead
            netloc = parts.hostname or ""
            netloc = f"[{netloc}]" if ":" in netloc else netloc
            netloc += f":{parts.port}" if parts.port else ""
            url = urllib.parse.urlunsplit(parts._replace(netloc=netloc))
        if self._http is None:
            self._http = aiohttp.ClientSession(trust_env=False)
        digest = aiohttp.DigestAuthMiddleware(username, password)
        async with self._http.get(url, middlewares=(digest,)) as response:
            challenge = response.headers.get("WWW-Authenticate", "")
            if response.status != 401 or not challenge.lower().startswith("basic"):
                return await self._image(profile_token, response)
        basic = {"Authorization": aiohttp.encode_basic_auth(username, password)}
        async with self._http.get(url, headers=basic) as response:
            return await self._image(profile_token, response)

    async def _image(self, profile_token: str, response: aiohttp.ClientResponse) -> bytes:
        if response.status in (401, 403):
            raise CameraAuthError(self.name, "snapshot", "credentials refused")
        if response.status == 404:
            self._snapshot_uris.pop(profile_token, None)  # ask for the URI again next time
        if response.status >= 300:
            raise CameraProtocolError(self.name, "snapshot", f"HTTP {response.status}")
        image = await response.read()
        if not image:
            raise CameraProtocolError(self.name, "snapshot", "empty image")
        return image

    def _parsing(self, action: str) -> _Parsing:
        return _Parsing(self.name, action)


class _Parsing:
    """An answer of an unexpected shape is the camera's fault: a protocol error."""

    def __init__(self, host: str, action: str) -> None:
        self._host = host
        self._action = action

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is not None and isinstance(exc, AttributeError | TypeError | ValueError):
            detail = f"unexpected answer: {exc}"
            raise CameraProtocolError(self._host, self._action, detail) from exc
