"""One watcher per ONVIF camera: its events become ours, its inputs work like a DI module's.

A panic button wired to a camera's digital input goes the same way as a Modbus one (the same
``InputTracker`` rules, the same outbox, the same relay to the police). The camera's own
analytics (tamper, video loss, intrusion rules, motion) become events as configured. Health
(reachable, authenticated, clock skew, subscription alive, last event) is the camera's retained
device status, never a stale "online".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING
from urllib.parse import quote, urlsplit, urlunsplit

from contract import topics
from contract.config import CameraConfig, InputConfig
from contract.models import DetailValue, DeviceStatus, EventKind, utcnow
from contract.mqtt import Backoff
from contract.telemetry import FieldValue, Sample
from drivers.onvif import (
    CameraAuthError,
    CameraError,
    CameraEvent,
    EventSubscriber,
    NotifyListener,
    NotifySubscriber,
    OnvifCamera,
    PullPointSubscriber,
    SubscriberState,
)
from edge.alarms import InputTracker
from edge.events import EventSink
from edge.telemetry import PollStats

if TYPE_CHECKING:  # OpenCV is loaded only by an edge that analyses video
    from edge.video.monitor import VideoMonitor

log = logging.getLogger(__name__)

AUTH_RETRY_S = 300.0
"""A wrong password is not fixed by retrying: try again rarely, so the camera does not lock
the account and the log is not flooded."""

STATUS_EVERY_S = 30.0

_ANALYTICS: dict[str, tuple[str, EventKind]] = {
    # camera event kind -> (config switch in ``report``, our event kind)
    "motion": ("motion", "camera_motion"),
    "tamper": ("tamper", "camera_tamper"),
    "scene_change": ("tamper", "camera_tamper"),
    "video_loss": ("video_loss", "video_loss"),
    "field_intrusion": ("intrusion", "camera_intrusion"),
    "line_crossing": ("intrusion", "camera_intrusion"),
}


class CameraWatcher:
    def __init__(
        self,
        cfg: CameraConfig,
        campus: str,
        sink: EventSink,
        publish_retained: Callable[[str, bytes], None],
        notify: NotifyListener | None = None,
    ) -> None:
        self.cfg = cfg
        self._notify = notify
        self._campus = campus
        self._sink = sink
        self._publish_retained = publish_retained
        self.inputs = {i.source: i for i in cfg.inputs}
        self.trackers = {
            i.source: InputTracker(
                InputConfig(
                    channel=0,
                    id=i.id,
                    kind=i.kind,
                    mode="state",
                    zone=i.zone,
                    location=i.location,
                    alarm_zone=i.alarm_zone,
                    real_during_drill=i.real_during_drill,
                )
            )
            for i in cfg.inputs
        }
        self._active: dict[tuple[str, str | None], bool] = {}
        self.camera: OnvifCamera | None = None
        self.subscriber: EventSubscriber | None = None
        self.online: bool | None = None
        self.error: str | None = None
        self.last_event: datetime | None = None
        self.public_stream: str | None = None
        """The camera's RTSP URL without credentials, for the police dispatch console."""

    async def run(self) -> None:
        if self.cfg.video.enabled:  # the edge's own stream health and tamper (edge/video/)
            await asyncio.gather(self._run_onvif(), self.run_video())
            return
        await self._run_onvif()

    async def _run_onvif(self) -> None:
        backoff = Backoff(first=1.0, cap=60.0)
        while True:
            cam = OnvifCamera(
                self.cfg.host,
                self.cfg.port,
                self.cfg.username,
                self.cfg.secret(),
                timeout=self.cfg.timeout,
            )
            try:
                await cam.connect()
                self.camera = cam
                self.public_stream = await self._public_stream(cam)
                self._set_online(True, None)
                backoff.reset()
                async with self._subscriber(cam) as sub:
                    self.subscriber = sub
                    await self._watch(sub)
            except CameraAuthError as exc:
                self._set_online(False, f"authentication failed: {exc}")
                await asyncio.sleep(AUTH_RETRY_S)
            except CameraError as exc:
                self._set_online(False, str(exc))
                await asyncio.sleep(backoff.next())
            finally:
                self.subscriber = None
                with contextlib.suppress(Exception):
                    await cam.close()

    async def _public_stream(self, cam: OnvifCamera) -> str | None:
        """``video.stream_url`` or the camera's GetStreamUri, with any user and password taken
        out (it goes to the centre in the device status); None if the camera will not say."""
        url = self.cfg.video.stream_url
        if not url:
            try:
                token = self.cfg.video.profile or self.cfg.snapshot_profile
                if token is None:
                    profiles = await cam.profiles()
                    if not profiles:
                        return None
                    token = profiles[0].token
                url = await cam.stream_uri(token)
            except Exception as exc:  # a camera without a media service still works
                log.info("camera %s gives no stream URL: %s", self.cfg.id, exc)
                return None
        return without_credentials(url)

    def _subscriber(self, cam: OnvifCamera) -> EventSubscriber:
        """Pull point or push (Notify), as ``events:`` in the camera's config says."""
        if self.cfg.events == "webhook":
            if self._notify is None:
                raise RuntimeError(f"camera {self.cfg.id} uses webhook events: no notify listener")
            return NotifySubscriber(cam, self._notify, self.cfg.id, self._on_event)
        return PullPointSubscriber(cam, self._on_event)

    async def _watch(self, sub: EventSubscriber) -> None:
        """Publish health while the subscription lives; a failed one ends the session."""
        while True:
            health = sub.health()
            if health.state is SubscriberState.FAILED:
                raise CameraError(
                    self.cfg.host, "subscribe", health.last_error or "subscription failed"
                )
            self.publish_status()
            await asyncio.sleep(STATUS_EVERY_S if self.online else 1.0)

    def _set_online(self, online: bool, error: str | None) -> None:
        if self.online != online:
            log.log(
                logging.INFO if online else logging.WARNING,
                "camera %s is %s%s",
                self.cfg.id,
                "online" if online else "offline",
                f": {error}" if error else "",
            )
        self.online, self.error = online, error
        self.publish_status()

    async def _on_event(self, ev: CameraEvent) -> None:
        self.last_event = datetime.now(UTC)
        self.events_window += 1
        if ev.kind == "digital_input":
            await self._input(ev)
            return
        switch, kind = _ANALYTICS.get(ev.kind, ("", "camera_motion"))
        if switch not in self.cfg.report:
            return
        key = (ev.kind, ev.source)
        if ev.active is None:  # a pulse (line crossing): an event, no restore
            if ev.initialized:
                # The last crossing resent after (re)subscribing (PropertyOperation
                # "Initialized"): no one crossed now. Raising it was a false alarm at every
                # edge start (found by the fault suite).
                return
            await self._emit(kind, restore=False, ev=ev)
            return
        if self._active.get(key, False) == ev.active:
            return  # a state resent after (re)subscribing is not news
        self._active[key] = ev.active
        await self._emit(kind, restore=not ev.active, ev=ev)

    async def _input(self, ev: CameraEvent) -> None:
        tracker = self.trackers.get(ev.source or "")
        if tracker is None:
            log.debug("camera %s input %s is not configured", self.cfg.id, ev.source)
            return
        cfg = self.inputs[ev.source or ""]
        for signal in tracker.update(ev.active, 0, None, time.monotonic()):
            await self._sink.emit(
                signal.kind,
                device=self.cfg.id,
                point=cfg.id,
                zone=cfg.zone or self.cfg.zone,
                location=cfg.location or self.cfg.location,
                zone_no=cfg.alarm_zone,
                restore=signal.restore,
                real_during_drill=cfg.real_during_drill,
                detail={"source": "camera_input", "input": ev.source},
            )

    async def _emit(self, kind: EventKind, *, restore: bool, ev: CameraEvent) -> None:
        detail: dict[str, DetailValue] = {"topic": ev.topic[:120], "camera_event": ev.kind}
        if ev.source:
            detail["source"] = ev.source
        await self._sink.emit(
            kind,
            device=self.cfg.id,
            zone=self.cfg.zone,
            location=self.cfg.location,
            restore=restore,
            detail=detail,
        )

    def status(self) -> DeviceStatus:
        points: dict[str, DetailValue] = {}
        if self.online and self.camera is not None:
            if self.cfg.zone:
                points["zone"] = self.cfg.zone  # the cameras of an alarm's zone (dispatch)
            if self.public_stream:
                points["stream_url"] = self.public_stream  # no credentials in it
            points["clock_skew_s"] = self.camera.clock_skew_s
            if self.subscriber is not None:
                h = self.subscriber.health()
                points["subscription"] = h.state.value
                points["subscription_alive"] = h.subscription_alive
            points["last_event"] = self.last_event.isoformat() if self.last_event else None
            for source, tracker in self.trackers.items():
                points[self.inputs[source].id] = tracker.state
        if self.video is not None:
            points.update(self.video.points())
        return DeviceStatus(
            campus=self._campus,
            device=self.cfg.id,
            online=bool(self.online),
            ts=utcnow(),
            error=None if self.online else (self.error or "not connected yet"),
            points=points,
        )

    def publish_status(self) -> None:
        self._publish_retained(
            topics.device_status_topic(self._campus, self.cfg.id),
            self.status().model_dump_json().encode(),
        )

    # --- telemetry ----------------------------------------------------------------------------

    events_window = 0
    snapshot_stats: PollStats | None = None

    def telemetry(self) -> list[Sample]:
        """Online, clock skew, subscription, events and snapshots over the window."""
        fields: dict[str, FieldValue] = {"online": bool(self.online), "events": self.events_window}
        self.events_window = 0
        if self.online and self.camera is not None:
            skew = self.camera.clock_skew_s
            if skew is not None:
                fields["clock_skew_s"] = float(skew)
            if self.subscriber is not None:
                fields["subscription_alive"] = self.subscriber.health().subscription_alive
        if self.last_event is not None:
            age = (datetime.now(UTC) - self.last_event).total_seconds()
            fields["last_event_age_s"] = round(age, 1)
        if self.snapshot_stats is not None:
            for key, value in self.snapshot_stats.take().items():
                fields[f"snapshot_{key}"] = value
        if self.video is not None:
            fields.update(self.video.telemetry())
        return [Sample(device=self.cfg.id, kind="camera", fields=fields)]

    # --- alarm evidence -----------------------------------------------------------------------

    _snapshot_token: tuple[OnvifCamera, str] | None = None

    async def evidence_snapshot(self) -> bytes:
        """A picture for alarm evidence from the configured (or the first) media profile.

        Raises:
            CameraError: the camera is not connected now, or did not give a picture.
        """
        cam = self.camera
        if cam is None or not self.online:
            raise CameraError(self.cfg.host, "snapshot", self.error or "camera is not connected")
        if self._snapshot_token is None or self._snapshot_token[0] is not cam:
            token = self.cfg.snapshot_profile
            if token is None:
                profiles = await cam.profiles()
                if not profiles:
                    raise CameraError(self.cfg.host, "snapshot", "the camera has no media profile")
                token = profiles[0].token
            self._snapshot_token = (cam, token)
        if self.snapshot_stats is None:
            self.snapshot_stats = PollStats()
        start = time.monotonic()
        try:
            image = await cam.snapshot(self._snapshot_token[1])
        except BaseException:
            self.snapshot_stats.fail()
            raise
        self.snapshot_stats.ok(time.monotonic() - start)
        return image

    # --- alarm linkage: PTZ preset (issue 13) -------------------------------------------------

    async def goto_preset(self, preset: str, profile: str | None = None) -> None:
        """ONVIF PTZ GotoPreset on the configured (or the first) media profile.

        Raises:
            CameraError: the camera is not connected, has no PTZ service or refused.
        """
        cam = self.camera
        if cam is None or not self.online:
            raise CameraError(self.cfg.host, "GotoPreset", self.error or "camera is not connected")
        token = profile or self.cfg.snapshot_profile
        if token is None:
            profiles = await cam.profiles()
            if not profiles:
                raise CameraError(self.cfg.host, "GotoPreset", "the camera has no media profile")
            token = profiles[0].token

        async def go() -> None:
            ptz = await cam.lib.create_ptz_service()
            req = ptz.create_type("GotoPreset")
            req.ProfileToken = token
            req.PresetToken = preset
            await ptz.GotoPreset(req)

        await cam.call("GotoPreset", go)

    # --- the edge's own video analysis (issue 9) ----------------------------------------------

    video: VideoMonitor | None = None

    async def stream_url(self) -> str | None:
        """The RTSP URL to read: ``video.stream_url``, else GetStreamUri with credentials in it.

        Returns None while the camera is not connected.
        """
        if self.cfg.video.stream_url:
            return self.cfg.video.stream_url
        cam = self.camera
        if cam is None or not self.online:
            return None
        token = self.cfg.video.profile or self.cfg.snapshot_profile
        if token is None:
            profiles = await cam.profiles()
            if not profiles:
                raise CameraError(self.cfg.host, "GetStreamUri", "the camera has no media profile")
            token = profiles[0].token
        return with_credentials(await cam.stream_uri(token), self.cfg.username, self.cfg.secret())

    async def run_video(self) -> None:
        """Read and analyse the stream (a thread per stream); events go to our sink."""
        from edge.video.monitor import VideoMonitor

        self.video = VideoMonitor(
            self.cfg.id,
            self.cfg.video,
            self._sink,
            self.stream_url,
            zone=self.cfg.zone,
            location=self.cfg.location,
            on_status=self.publish_status,
        )
        await self.video.run()


def with_credentials(url: str, username: str, password: str) -> str:
    """``rtsp://user:pass@host/...`` (percent-encoded) unless the URL carries some already."""
    parts = urlsplit(url)
    if not username or parts.username is not None or not parts.hostname:
        return url
    netloc = f"{quote(username, safe='')}:{quote(password, safe='')}@{parts.netloc}"
    return urlunsplit(parts._replace(netloc=netloc))


def without_credentials(url: str) -> str:
    """The URL with any ``user:password@`` removed (safe to show and to send to the centre)."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=host))
