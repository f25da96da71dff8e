"""Read one RTSP stream in its own thread; analyse at the analysis rate; never block the loop.

``cv2.VideoCapture`` (FFmpeg) opens with ``CAP_PROP_OPEN_TIMEOUT_MSEC`` and reads with
``CAP_PROP_READ_TIMEOUT_MSEC``, but a stalled server can still block ``read()`` for ~9 s. So the
reader thread never decides alone: :class:`StreamReader` keeps the time of the last frame, and
its :meth:`StreamReader.watchdog` (called from the loop) abandons a thread that has not produced a
frame within ``stall_s`` and starts a new one (a *generation* number: the old thread notices when
its read finally returns, releases its capture and ends). A stream that fails to open or stalls
is restarted with a capped exponential backoff.

Frames are decoded at the stream's rate (``grab``), but only ``fps`` of them a second are
retrieved, downscaled and analysed (in the thread, by the pure ``analysis`` module); the results
(condition changes) are handed to the loop with ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import cv2

from drivers.rtsp.probe import why_not
from edge.video.analysis import Change, Image, StreamHealth, TamperDetector, downscale
from edge.video.parking import ParkingChange, ParkingDetector

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CaptureSettings:
    fps: float = 5.0
    width: int = 640
    height: int = 360
    open_timeout_s: float = 10.0
    read_timeout_s: float = 5.0
    stall_s: float = 10.0
    backoff_first_s: float = 1.0
    backoff_cap_s: float = 60.0
    max_read_failures: int = 25
    """Consecutive failed reads (decode errors, end of stream) before the stream is reopened."""


def open_capture(url: str, s: CaptureSettings) -> cv2.VideoCapture:
    return cv2.VideoCapture(
        url,
        cv2.CAP_FFMPEG,
        [
            cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
            int(s.open_timeout_s * 1000),
            cv2.CAP_PROP_READ_TIMEOUT_MSEC,
            int(s.read_timeout_s * 1000),
        ],
    )


class StreamReader:
    """One stream: a reader thread (restarted as needed) plus health and tamper state.

    Args:
        url: A callable giving the URL to open (asked again at each restart), so a camera's
            GetStreamUri can change.
        on_changes: Called in the loop with the condition changes of each analysed frame.
        on_state: Called in the loop when the stream goes up (True) or down (False, reason).
    """

    def __init__(
        self,
        name: str,
        url: Callable[[], str | None],
        settings: CaptureSettings,
        detector: TamperDetector,
        loop: asyncio.AbstractEventLoop,
        on_changes: Callable[[list[Change | ParkingChange]], None],
        on_state: Callable[[bool, str | None], None],
        parking: list[ParkingDetector] | None = None,
    ) -> None:
        self.name = name
        self._url = url
        self.settings = settings
        self.detector = detector
        self.parking = parking or []
        self.last_frame: Image | None = None  # the last analysed (downscaled) frame
        self.health = StreamHealth(stall_s=settings.stall_s)
        self._loop = loop
        self._on_changes = on_changes
        self._on_state = on_state
        self._lock = threading.Lock()
        self._generation = 0
        self._thread: threading.Thread | None = None
        self._stopped = threading.Event()
        self.up = False
        self.error: str | None = "not started"
        self.restarts = 0
        self.analysed = 0
        self._failures = 0  # consecutive failed opens/stalls (for the backoff)
        self._started_at: float | None = None

    # --- control (from the loop) ------------------------------------------------------------

    def start(self) -> None:
        with self._lock:
            self._generation += 1
            gen = self._generation
        self._started_at = time.monotonic()
        self._thread = threading.Thread(
            target=self._run, args=(gen,), name=f"video-{self.name}-{gen}", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        with self._lock:
            self._generation += 1

    def watchdog(self, now: float | None = None) -> bool:
        """Abandon a stalled reader and start a new one; True if it did."""
        now = time.monotonic() if now is None else now
        if self._stopped.is_set() or not self.up:
            return False
        if not self.health.stalled(now):
            return False
        self._set_state(False, f"stalled: no frame for {self.settings.stall_s:g} s")
        self._failures += 1
        self.restarts += 1
        self.start()
        return True

    def backoff_s(self) -> float:
        s = self.settings
        if self._failures <= 0:
            return 0.0
        return float(min(s.backoff_cap_s, s.backoff_first_s * 2 ** (self._failures - 1)))

    # --- the thread ---------------------------------------------------------------------------

    def _current(self, gen: int) -> bool:
        return not self._stopped.is_set() and gen == self._generation

    def _set_state(self, up: bool, error: str | None) -> None:
        if self.up == up and self.error == error:
            return
        self.up, self.error = up, error
        if up:
            self._failures = 0
        self._post(lambda: self._on_state(up, error))

    def _post(self, fn: Callable[[], None]) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: shutting down
            self._loop.call_soon_threadsafe(fn)

    def _sleep(self, gen: int, seconds: float) -> None:
        end = time.monotonic() + seconds
        while self._current(gen) and time.monotonic() < end:
            time.sleep(min(0.2, max(0.0, end - time.monotonic())))

    def _run(self, gen: int) -> None:
        s = self.settings
        self._sleep(gen, self.backoff_s())
        while self._current(gen):
            url = self._url()
            if not url:
                self._failures += 1
                self._set_state(False, "no stream URL (camera not connected?)")
                self._sleep(gen, self.backoff_s())
                continue
            started = time.monotonic()
            cap = open_capture(url, s)
            try:
                if not cap.isOpened():
                    self._failures += 1
                    self.health.open_failures += 1
                    # OpenCV does not say why; ask the camera (wrong password, no such path).
                    why = why_not(url) if url.lower().startswith("rtsp") else ""
                    self._set_state(
                        False,
                        f"cannot open the stream ({redact(url)})" + (f": {why}" if why else ""),
                    )
                    self._sleep(gen, self.backoff_s())
                    continue
                fps = cap.get(cv2.CAP_PROP_FPS)
                self.health.opened(started, time.monotonic(), fps if fps > 0 else None)
                self._read(cap, gen)
            finally:
                cap.release()
            if self._current(gen):
                self._failures += 1
                self.restarts += 1
                self._sleep(gen, self.backoff_s())

    def _read(self, cap: cv2.VideoCapture, gen: int) -> None:
        s = self.settings
        interval = 1.0 / s.fps
        next_at = 0.0
        fails = 0
        while self._current(gen):
            ok = cap.grab()
            now = time.monotonic()
            if not self._current(gen):
                return  # abandoned by the watchdog while blocked
            if not ok:
                fails += 1
                self.health.error()
                if fails >= s.max_read_failures or self.health.stalled(now):
                    self._set_state(False, "the stream stopped (read failed)")
                    return
                continue
            if now < next_at:
                self.health.frame(now, *self._size(cap))
                fails = 0
                continue
            ok, frame = cap.retrieve()
            if not ok or frame is None or frame.ndim != 3:
                fails += 1
                self.health.error()  # a frame that does not decode is counted, not fatal
                continue
            fails = 0
            self.health.frame(now, frame.shape[1], frame.shape[0])
            self._set_state(True, None)
            next_at = now + interval
            small = downscale(cast(Image, frame), (s.width, s.height))
            with self._lock:
                if gen != self._generation:
                    return
                changes: list[Change | ParkingChange] = list(self.detector.update(small, now))
                for p in self.parking:
                    changes += p.update(small, now)
                self.last_frame = small
                self.analysed += 1
            if changes:
                self._post(lambda c=changes: self._on_changes(c))  # type: ignore[misc]

    @staticmethod
    def _size(cap: cv2.VideoCapture) -> tuple[int, int]:
        return int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))


def redact(url: str) -> str:
    """The URL without its password, for logs and status."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        user = creds.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}"
    return url
