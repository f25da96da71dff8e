"""The edge's own watch on a camera's stream: status points, telemetry fields and events.

Events go through the edge's :class:`~edge.events.EventSink` like the camera's own ONVIF
analytics, with ``point="video"`` and ``detail.source = "video"`` so the two are never taken for
one another (an ONVIF tamper and a video tamper of the same camera are two reports):

- ``video_loss``: the stream cannot be opened or stalls (no frame for ``stall_s``); restored
  when frames come again. An alarm for the guard and the technician.
- ``camera_tamper`` with ``detail.cause`` = ``covered`` | ``defocus`` | ``moved`` | ``frozen`` |
  ``black`` | ``blue``; each restored when the picture is good again.
- ``camera_intrusion`` with ``detail.cause = "no_parking"``, the zone, the dwell and the box: a
  vehicle-sized object stayed in a no-parking zone longer than allowed, in its hours; restored
  when it leaves. :attr:`VideoMonitor.parking_snapshots` keeps the last marked picture (JPEG)
  per zone.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from zoneinfo import ZoneInfo

import cv2

from contract.config import CameraVideoConfig
from contract.models import DetailValue, EventKind
from edge.events import EventSink
from edge.video.analysis import Change, TamperDetector, Thresholds
from edge.video.capture import CaptureSettings, StreamReader
from edge.video.parking import ParkingChange, ParkingDetector, in_hours, mark

log = logging.getLogger(__name__)

WATCHDOG_EVERY_S = 1.0


def thresholds(v: CameraVideoConfig) -> Thresholds:
    return Thresholds(
        black_mean=v.black_mean,
        cover_std=v.cover_std,
        defocus_ratio=v.defocus_ratio,
        move_inliers=v.move_inliers,
        move_shift=v.move_shift,
        frozen_diff=v.frozen_diff,
        frozen_s=v.frozen_s,
        hold_s=v.hold_s,
        cooldown_s=v.cooldown_s,
        rebaseline_s=v.rebaseline_s,
        baseline_frames=max(1, round(v.fps * 2)),
        move_every=max(1, round(v.fps)),
    )


def capture_settings(v: CameraVideoConfig) -> CaptureSettings:
    return CaptureSettings(
        fps=v.fps,
        width=v.width,
        height=v.height,
        open_timeout_s=v.open_timeout_s,
        read_timeout_s=v.read_timeout_s,
        stall_s=v.stall_s,
        backoff_cap_s=v.backoff_cap_s,
    )


class VideoMonitor:
    """Runs one :class:`StreamReader` and reports what it finds.

    Args:
        url: Coroutine giving the stream URL (asked at each (re)start); ``None``: not known yet.
    """

    def __init__(
        self,
        camera_id: str,
        cfg: CameraVideoConfig,
        sink: EventSink,
        url: Callable[[], Awaitable[str | None]],
        *,
        zone: str | None = None,
        location: str = "",
        on_status: Callable[[], None] | None = None,
    ) -> None:
        self.camera_id = camera_id
        self.cfg = cfg
        self._sink = sink
        self._url_fn = url
        self._zone = zone
        self._location = location
        self._on_status = on_status
        self._url: str | None = None
        self._queue: asyncio.Queue[tuple[EventKind, bool, dict[str, DetailValue]]] = asyncio.Queue()
        self.reader: StreamReader | None = None
        self.video_lost = False
        self.frames_window_start = time.monotonic()
        self._decode_errors_sent = 0
        self._parking_raised: set[str] = set()
        self.parking_snapshots: dict[str, bytes] = {}

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self._url = await self._resolve()
        self.reader = StreamReader(
            self.camera_id,
            lambda: self._url,
            capture_settings(self.cfg),
            TamperDetector(thresholds(self.cfg)),
            loop,
            self._changes,
            self._state,
            parking=self._parking(),
        )
        self.reader.start()
        emitter = asyncio.create_task(self._emit_loop(), name=f"video-events-{self.camera_id}")
        try:
            while True:
                await asyncio.sleep(WATCHDOG_EVERY_S)
                if not self.reader.up:
                    self._url = await self._resolve() or self._url
                self.reader.watchdog()
        finally:
            self.reader.stop()
            emitter.cancel()
            await asyncio.gather(emitter, return_exceptions=True)

    def _parking(self) -> list[ParkingDetector]:
        v = self.cfg
        return [
            ParkingDetector(
                z.id,
                z.polygon,
                (v.width, v.height),
                max_dwell_s=z.max_dwell_s,
                min_area=z.min_area,
            )
            for z in v.zones
            if z.no_parking
        ]

    async def _resolve(self) -> str | None:
        try:
            return await self._url_fn()
        except Exception as exc:  # the camera is not connected: try again later
            log.debug("camera %s: no stream URL: %s", self.camera_id, exc)
            return None

    # --- from the reader (in the loop) ----------------------------------------------------------

    def _state(self, up: bool, error: str | None) -> None:
        log.log(
            logging.INFO if up else logging.WARNING,
            "camera %s video %s%s",
            self.camera_id,
            "up" if up else "down",
            f": {error}" if error else "",
        )
        if up and self.video_lost:
            self.video_lost = False
            self._queue.put_nowait(("video_loss", True, {"source": "video"}))
        elif not up and not self.video_lost:
            self.video_lost = True
            self._queue.put_nowait(
                ("video_loss", False, {"source": "video", "reason": (error or "")[:200]})
            )
        if self._on_status is not None:
            self._on_status()

    def _changes(self, changes: list[Change | ParkingChange]) -> None:
        for c in changes:
            if isinstance(c, ParkingChange):
                self._parking_change(c)
                continue
            detail: dict[str, DetailValue] = {"source": "video", "cause": c.cause, "value": c.value}
            self._queue.put_nowait(("camera_tamper", not c.active, detail))
        if self._on_status is not None:
            self._on_status()

    def _parking_change(self, c: ParkingChange) -> None:
        zone = next(z for z in self.cfg.zones if z.id == c.zone)
        if c.active:
            local = datetime.now(ZoneInfo(self.cfg.timezone))
            if not in_hours(local, zone.days, zone.hours):
                return  # parking is allowed now: not an event (and so no restore either)
            self._parking_raised.add(c.zone)
            if self.reader is not None and self.reader.last_frame is not None:
                label = f"{c.zone}: {c.dwell_s:.0f} s"
                pic = mark(self.reader.last_frame, zone.polygon, c.box, label)
                ok, jpeg = cv2.imencode(".jpg", pic)
                if ok:
                    self.parking_snapshots[c.zone] = jpeg.tobytes()
        elif c.zone in self._parking_raised:
            self._parking_raised.discard(c.zone)
        else:
            return
        detail: dict[str, DetailValue] = {
            "source": "video",
            "cause": "no_parking",
            "zone": c.zone,
            "dwell_s": round(c.dwell_s, 1),
            "box": ",".join(map(str, c.box)),
        }
        self._queue.put_nowait(("camera_intrusion", not c.active, detail))

    async def _emit_loop(self) -> None:
        while True:
            kind, restore, detail = await self._queue.get()
            try:
                await self._sink.emit(
                    kind,
                    device=self.camera_id,
                    point=_point(kind, detail),
                    zone=self._zone,
                    location=self._location,
                    restore=restore,
                    detail=detail,
                )
            except Exception:
                log.exception("camera %s: cannot record a video event", self.camera_id)

    # --- status and telemetry -------------------------------------------------------------------

    def points(self) -> dict[str, DetailValue]:
        r = self.reader
        if r is None:
            return {"video": "starting"}
        now = time.monotonic()
        h = r.health
        d = r.detector
        pts: dict[str, DetailValue] = {
            "video": "ok" if r.up else "down",
            "video_error": r.error,
            "video_fps": round(h.fps(now), 2),
            "video_decode_errors": h.decode_errors,
            "video_restarts": r.restarts,
            "video_tamper": ",".join(sorted(d.active)) or None,
        }
        if h.resolution:
            pts["video_resolution"] = f"{h.resolution[0]}x{h.resolution[1]}"
        if h.open_time_s is not None:
            pts["video_open_s"] = round(h.open_time_s, 3)
        if d.last is not None:
            pts["video_blur"] = round(d.last.blur, 1)
        return pts

    def telemetry(self) -> dict[str, float | int | bool]:
        """fps, blur, stream_ok, decode_errors (over the window) for the camera's sample."""
        r = self.reader
        if r is None:
            return {"stream_ok": False}
        h = r.health
        errors = h.decode_errors - self._decode_errors_sent
        self._decode_errors_sent = h.decode_errors
        fields: dict[str, float | int | bool] = {
            "stream_ok": r.up,
            "fps": round(h.fps(time.monotonic()), 2),
            "decode_errors": errors,
        }
        if r.detector.last is not None:
            fields["blur"] = round(r.detector.last.blur, 1)
        return fields


def _point(kind: EventKind, detail: dict[str, DetailValue]) -> str:
    """The event's point: one per condition, so raise and restore pair up in the sink."""
    if kind == "video_loss":
        return "video"
    if detail.get("cause") == "no_parking":
        return f"parking_{detail['zone']}"[:64]
    return f"video_{detail['cause']}"
