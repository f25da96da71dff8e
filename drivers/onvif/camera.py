"""An ONVIF camera: device information, media profiles, stream and snapshot URIs, snapshots.

Transport only (onvif-zeep-async over HTTP); what an event or a picture means is decided
elsewhere. Every call is bounded by the camera's ``timeout`` and raises a
:class:`~.errors.CameraError` subclass on failure.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self, TypeVar

from . import _lib
from .errors import CameraProtocolError, boundary

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
        self._cam = _lib.new_camera(self.host, self.port, self._username, self._password)
        try:
            await self.call("connect", self._cam.update_xaddrs)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Close the library's HTTP sessions; safe to call twice."""
        cam, self._cam = self._cam, None
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
        """A JPEG from the profile's snapshot URI (HTTP digest auth).

        Raises:
            CameraAuthError: 401 from the snapshot URL.
            CameraTimeout: No picture within ``timeout``.
            CameraProtocolError: No snapshot URI, or an HTTP error status.
        """
        # Check the URI ourselves first: the library swallows a GetSnapshotUri fault.
        await self.snapshot_uri(profile_token)

        async def get() -> bytes | None:
            image: bytes | None = await self.lib.get_snapshot(profile_token, timeout=self.timeout)
            return image

        # The library bounds each request by timeout; the outer bound covers the digest
        # round trip and the body read together.
        image = await self.call("snapshot", get, bound_s=self.timeout * 2 + 1)
        if not image:
            raise CameraProtocolError(self.name, "snapshot", "no image (HTTP error status)")
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
