"""Pure video analysis: frame statistics, stream health and tamper against a baseline.

Everything here takes frames (NumPy arrays) and times (seconds, any monotonic clock) and returns
values: no capture, no clock, no I/O, so it is tested on generated frames directly.

Work is done on a downscaled frame (640x360 by default). Per frame: grey conversion, mean and
standard deviation of the grey image and of the colour channels, the variance of the Laplacian
(focus measure, Pech-Pacheco et al. 2000) and the mean absolute difference to the previous frame
(frozen image). The feature match for a moved camera (ORB, RANSAC partial affine) is the
expensive part and runs only every ``move_every`` frames, on a half-size grey image.

Conditions (each must hold ``hold_s`` before it is reported, and is not reported again for
``cooldown_s`` after it clears):

=========  ==================================================================================
black      grey mean < ``black_mean`` and std < ``flat_std``: video loss (a black screen)
blue       std < ``flat_std`` and one colour channel dominant (an encoder's "no signal")
covered    grey std < ``cover_std``, or < ``cover_ratio`` x the baseline's (lens covered,
           sprayed): texture is gone but the picture is not flat
defocus    Laplacian variance < ``defocus_ratio`` x the baseline's
moved      ORB match to the reference frame: inlier ratio < ``move_inliers`` or a shift of more
           than ``move_shift`` of the frame width (not checked while defocused)
frozen     mean abs difference to the previous frame < ``frozen_diff`` (a live sensor always
           has noise) for ``frozen_s``
=========  ==================================================================================

Baseline: the first ``baseline_frames`` good frames (means of the statistics; the last one is the
reference for the feature match). Day/night: when the grey mean differs from the baseline's by
more than ``daynight_delta`` (a switch to or from infrared, lights on or off) while the picture
still has texture (not covered), the relative checks (defocus, moved) are suspended; if it
persists ``rebaseline_s`` the baseline is taken again from the current picture. A lens covered
for that long is not re-baselined: covered (no texture) is checked first and is absolute.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal

import cv2
import numpy as np
import numpy.typing as npt

Image = npt.NDArray[np.uint8]
Cause = Literal["black", "blue", "covered", "defocus", "moved", "frozen"]
CAUSES: tuple[Cause, ...] = ("black", "blue", "covered", "defocus", "moved", "frozen")
VIDEO_LOSS_CAUSES: frozenset[Cause] = frozenset({"black", "blue"})
"""Causes that are a video loss (the picture is gone), not tamper with the scene."""


@dataclass(frozen=True)
class Thresholds:
    """Tuning of the detector (the camera's ``video:`` config fills it)."""

    black_mean: float = 16.0
    flat_std: float = 2.5
    cover_std: float = 8.0
    cover_ratio: float = 0.2
    defocus_ratio: float = 0.3
    move_inliers: float = 0.25
    move_shift: float = 0.05
    frozen_diff: float = 0.05
    frozen_s: float = 10.0
    hold_s: float = 5.0
    cooldown_s: float = 60.0
    daynight_delta: float = 50.0
    rebaseline_s: float = 60.0
    baseline_frames: int = 10
    move_every: int = 5


@dataclass(frozen=True)
class FrameStats:
    mean: float
    std: float
    channels: tuple[float, float, float]  # B, G, R means
    blur: float  # variance of the Laplacian
    diff: float | None  # mean abs difference to the previous frame (None: first frame)


def downscale(frame: Image, size: tuple[int, int]) -> Image:
    """The frame at ``size`` (width, height), by area interpolation; unchanged if already so."""
    h, w = frame.shape[:2]
    if (w, h) == size:
        return frame
    return cv2.resize(frame, size, interpolation=cv2.INTER_AREA)  # type: ignore[return-value]


def grey(frame: Image) -> Image:
    if frame.ndim == 2:
        return frame
    return cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)  # type: ignore[return-value]


def blur_score(g: Image) -> float:
    """Variance of the Laplacian: high for a sharp textured picture, low when defocused."""
    lap = cv2.Laplacian(g, cv2.CV_16S, ksize=3)
    _, std = cv2.meanStdDev(lap)
    return float(std[0][0]) ** 2


def frame_diff(a: Image, b: Image) -> float:
    """Mean absolute difference of two grey frames of the same size."""
    return float(cv2.norm(a, b, cv2.NORM_L1)) / a.size


def frame_stats(frame: Image, g: Image, prev: Image | None) -> FrameStats:
    mean, std = cv2.meanStdDev(g)
    ch = cv2.mean(frame) if frame.ndim == 3 else (float(mean[0][0]),) * 3
    return FrameStats(
        mean=float(mean[0][0]),
        std=float(std[0][0]),
        channels=(float(ch[0]), float(ch[1]), float(ch[2])),
        blur=blur_score(g),
        diff=frame_diff(g, prev) if prev is not None and prev.shape == g.shape else None,
    )


def is_black(s: FrameStats, t: Thresholds) -> bool:
    return s.mean < t.black_mean and s.std < t.flat_std


def is_blue(s: FrameStats, t: Thresholds) -> bool:
    b, g, r = s.channels
    return s.std < t.flat_std and b > 100 and b > 2 * max(g, r, 1.0)


@dataclass
class Reference:
    """Features of the reference frame for the moved-camera check."""

    keypoints: Any
    descriptors: Any
    width: int


_ORB = cv2.ORB.create(nfeatures=300, fastThreshold=12)
_MATCHER = cv2.BFMatcher(cv2.NORM_HAMMING, crossCheck=True)


def reference(g: Image) -> Reference | None:
    """ORB features of a grey frame (matched at half size); None if it has too few."""
    small = cv2.pyrDown(g)
    kp, des = _ORB.detectAndCompute(small, None)
    if des is None or len(kp) < 20:
        return None
    return Reference(kp, des, small.shape[1])


def match(ref: Reference, g: Image) -> tuple[float, float]:
    """(inlier ratio, shift as a fraction of the width) of ``g`` against the reference.

    The inlier ratio is RANSAC inliers of a partial affine fit over the reference's keypoints:
    near 1 for the same view, near 0 when the camera looks elsewhere.
    """
    small = cv2.pyrDown(g)
    kp, des = _ORB.detectAndCompute(small, None)
    if des is None or len(kp) < 8:
        return 0.0, 0.0
    matches = _MATCHER.match(ref.descriptors, des)
    if len(matches) < 8:
        return 0.0, 0.0
    src = np.array([ref.keypoints[m.queryIdx].pt for m in matches], dtype=np.float32)
    dst = np.array([kp[m.trainIdx].pt for m in matches], dtype=np.float32)
    m, inliers = cv2.estimateAffinePartial2D(src, dst, method=cv2.RANSAC, ransacReprojThreshold=3)
    if m is None or inliers is None:
        return 0.0, 0.0
    ratio = float(np.count_nonzero(inliers)) / len(ref.keypoints)
    shift = float(np.hypot(m[0, 2], m[1, 2])) / ref.width
    return ratio, shift


@dataclass
class Baseline:
    mean: float
    std: float
    blur: float
    ref: Reference | None


@dataclass
class _Held:
    """One condition: raw -> held ``hold`` seconds -> active; cleared -> cooldown."""

    since: float | None = None
    active: bool = False
    cleared_at: float | None = None

    def step(self, raw: bool, now: float, hold: float, cooldown: float) -> bool | None:
        """True when it becomes active, False when it clears, None otherwise."""
        if raw:
            if self.since is None:
                self.since = now
            if (
                not self.active
                and now - self.since >= hold
                and (self.cleared_at is None or now - self.cleared_at >= cooldown)
            ):
                self.active = True
                return True
            return None
        self.since = None
        if self.active:
            self.active = False
            self.cleared_at = now
            return False
        return None


@dataclass(frozen=True)
class Change:
    cause: Cause
    active: bool  # True: raised; False: restored
    value: float  # the measure that decided it


@dataclass
class TamperDetector:
    """Per-camera state: feed downscaled frames with their time, get condition changes."""

    thresholds: Thresholds = field(default_factory=Thresholds)
    baseline: Baseline | None = None
    rebaselines: int = 0
    last: FrameStats | None = None
    last_match: tuple[float, float] = (1.0, 0.0)
    _prev: Image | None = None
    _learn: list[FrameStats] = field(default_factory=list)
    _held: dict[Cause, _Held] = field(default_factory=lambda: {c: _Held() for c in CAUSES})
    _frames: int = 0
    _shift_since: float | None = None

    @property
    def active(self) -> set[Cause]:
        return {c for c, h in self._held.items() if h.active}

    def set_baseline(self, frame: Image) -> Baseline:
        """Take the baseline from one good frame (``campusguard camera calibrate``)."""
        g = grey(frame)
        s = frame_stats(frame, g, None)
        self.baseline = Baseline(s.mean, s.std, s.blur, reference(g))
        return self.baseline

    def update(self, frame: Image, now: float) -> list[Change]:
        t = self.thresholds
        g = grey(frame)
        s = frame_stats(frame, g, self._prev)
        self._prev = g
        self.last = s
        self._frames += 1
        raw: dict[Cause, tuple[bool, float]] = {
            "black": (is_black(s, t), s.mean),
            "blue": (is_blue(s, t), s.channels[0]),
        }
        flat = raw["black"][0] or raw["blue"][0]
        b = self.baseline
        covered = not flat and (
            s.std < t.cover_std or (b is not None and s.std < t.cover_ratio * b.std)
        )
        raw["covered"] = (covered, s.std)
        frozen = s.diff is not None and s.diff < t.frozen_diff and not flat
        raw["frozen"] = (frozen, s.diff if s.diff is not None else -1.0)
        defocus = moved = False
        if b is None:
            if not flat and not covered:
                self._learn.append(s)
                if len(self._learn) >= t.baseline_frames:
                    self._take_baseline(g)
        elif not flat and not covered:
            if abs(s.mean - b.mean) > t.daynight_delta:  # day/night: relative checks paused
                if self._shift_since is None:
                    self._shift_since = now
                elif now - self._shift_since >= t.rebaseline_s:
                    self._learn = [s]
                    self._take_baseline(g)
                    self.rebaselines += 1
                    self._shift_since = None
            else:
                self._shift_since = None
                defocus = s.blur < t.defocus_ratio * b.blur
                # A blurred picture has no features to match: defocus, not moved.
                if defocus:
                    self.last_match = (1.0, 0.0)
                elif b.ref is not None and (
                    self._frames % max(1, t.move_every) == 0 or self._held["moved"].since
                ):
                    self.last_match = match(b.ref, g)
                ratio, shift = self.last_match
                moved = not defocus and (ratio < t.move_inliers or shift > t.move_shift)
        raw["defocus"] = (defocus, s.blur)
        raw["moved"] = (moved, self.last_match[0])
        changes: list[Change] = []
        for cause, (on, value) in raw.items():
            hold = t.frozen_s if cause == "frozen" else t.hold_s
            step = self._held[cause].step(on, now, hold, t.cooldown_s)
            if step is not None:
                changes.append(Change(cause, step, round(value, 3)))
        return changes

    def _take_baseline(self, g: Image) -> None:
        n = len(self._learn)
        self.baseline = Baseline(
            mean=sum(x.mean for x in self._learn) / n,
            std=sum(x.std for x in self._learn) / n,
            blur=sum(x.blur for x in self._learn) / n,
            ref=reference(g),
        )
        self.last_match = (1.0, 0.0)
        self._learn = []


@dataclass
class StreamHealth:
    """Frames per second over a rolling window, decode errors, stall, opens."""

    expected_fps: float | None = None
    window_s: float = 10.0
    stall_s: float = 10.0
    decode_errors: int = 0
    frames: int = 0
    opens: int = 0
    open_failures: int = 0
    resolution: tuple[int, int] | None = None
    last_frame: float | None = None
    opened_at: float | None = None
    open_time_s: float | None = None
    _times: deque[float] = field(default_factory=deque)

    def opened(self, started: float, now: float, fps: float | None) -> None:
        self.opens += 1
        self.opened_at = now
        self.open_time_s = now - started
        if fps and 0 < fps <= 240 and self.expected_fps is None:
            self.expected_fps = fps

    def frame(self, now: float, width: int, height: int) -> None:
        self.frames += 1
        self.last_frame = now
        self.resolution = (width, height)
        self._times.append(now)
        while self._times and now - self._times[0] > self.window_s:
            self._times.popleft()

    def error(self) -> None:
        self.decode_errors += 1

    def fps(self, now: float) -> float:
        """Frames per second over the window (0 with fewer than two frames in it)."""
        while self._times and now - self._times[0] > self.window_s:
            self._times.popleft()
        if len(self._times) < 2:
            return 0.0
        span = max(now - self._times[0], self._times[-1] - self._times[0])
        return (len(self._times) - 1) / span if span > 0 else 0.0

    def stalled(self, now: float) -> bool:
        """No frame for ``stall_s`` (since the last frame, or since the stream was opened)."""
        since = self.last_frame if self.last_frame is not None else self.opened_at
        return since is not None and now - since > self.stall_s

    def fps_low(self, now: float, ratio: float = 0.5) -> bool:
        """Measured fps below ``ratio`` x expected (only once a full window has passed)."""
        if not self.expected_fps or self.opened_at is None or now - self.opened_at < self.window_s:
            return False
        return self.fps(now) < ratio * self.expected_fps
