"""No-parking zone: a vehicle-sized object that stays inside a polygon longer than allowed.

Pure, like ``analysis``: frames and times in, changes out. Method (kept simple, no model):

- a reference background of the scene (grey, blurred), learnt from the first frames and then
  updated slowly (running average) **only where nothing is in the foreground**, so a parked car
  is never absorbed into the background the way a plain MOG2 model absorbs it;
- the foreground inside the zone (difference to the background above ``diff``, opened and
  closed), its connected blobs of at least ``min_area`` pixels (vehicle-sized at the analysis
  resolution);
- stationary tracking: a blob whose box overlaps the tracked one (IoU >= ``iou``) continues its
  track; a car driving through changes its box every frame and never accumulates dwell; a track
  that stays ``max_dwell_s`` is raised, and restored once no blob matched it for ``gone_s``;
- a large sudden change of the whole picture (lights, day/night) relearns the background.

Only in the configured hours (``in_hours``) does a raised track become an event.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, time

import cv2
import numpy as np

from edge.video.analysis import Image, grey

Box = tuple[int, int, int, int]  # x, y, w, h


def iou(a: Box, b: Box) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    ix = max(0, min(ax + aw, bx + bw) - max(ax, bx))
    iy = max(0, min(ay + ah, by + bh) - max(ay, by))
    inter = ix * iy
    union = aw * ah + bw * bh - inter
    return inter / union if union else 0.0


def parse_window(text: str) -> tuple[time, time]:
    """``"07:00-08:30"`` -> (07:00, 08:30); raises ValueError."""
    start, _, end = text.partition("-")
    a, b = time.fromisoformat(start.strip()), time.fromisoformat(end.strip())
    if not a < b:
        raise ValueError(f"window {text!r}: the start must be before the end")
    return a, b


def in_hours(now: datetime, days: list[int], windows: list[str]) -> bool:
    """Whether ``now`` (local time) is on one of ``days`` (0 = Monday) inside a window.

    No windows: all day on those days.
    """
    if now.weekday() not in days:
        return False
    if not windows:
        return True
    t = now.time()
    return any(a <= t < b for a, b in map(parse_window, windows))


@dataclass
class Track:
    box: Box
    since: float
    seen: float
    raised: bool = False


@dataclass(frozen=True)
class ParkingChange:
    zone: str
    active: bool
    box: Box
    dwell_s: float


@dataclass
class ParkingDetector:
    zone: str
    polygon: list[tuple[int, int]]
    size: tuple[int, int]  # analysis width, height
    max_dwell_s: float = 120.0
    min_area: int = 2500
    diff: float = 30.0
    iou: float = 0.6
    gone_s: float = 5.0
    alpha: float = 0.02
    learn_frames: int = 5
    relearn_fraction: float = 0.6
    background: np.ndarray | None = None
    tracks: list[Track] = field(default_factory=list)
    _learn: list[np.ndarray] = field(default_factory=list)
    _mask: np.ndarray | None = None
    _roi: tuple[int, int, int, int] = (0, 0, 0, 0)
    _kernel: np.ndarray = field(default_factory=lambda: np.ones((5, 5), np.uint8))

    def __post_init__(self) -> None:
        # Work on the zone's bounding rectangle only (the rest of the picture does not matter).
        pts = np.array(self.polygon, np.int32)
        x0, y0 = (int(v) for v in pts.min(axis=0))
        x1, y1 = (int(v) + 1 for v in pts.max(axis=0))
        self._roi = (x0, y0, x1, y1)
        mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
        cv2.fillPoly(mask, [(pts - [x0, y0]).reshape(-1, 1, 2)], 255)
        self._mask = mask

    def blobs(self, fg: np.ndarray) -> list[Box]:
        n, _, stats, _ = cv2.connectedComponentsWithStats(fg)
        return [
            (int(x), int(y), int(w), int(h))
            for x, y, w, h, area in stats[1:n]
            if area >= self.min_area
        ]

    def update(self, frame: Image, now: float) -> list[ParkingChange]:
        x0, y0, x1, y1 = self._roi
        g = cv2.GaussianBlur(grey(frame)[y0:y1, x0:x1], (5, 5), 0).astype(np.float32)
        if self.background is None:
            self._learn.append(g)
            if len(self._learn) >= self.learn_frames:
                self.background = np.median(np.stack(self._learn), axis=0).astype(np.float32)
                self._learn = []
            return []
        delta = cv2.absdiff(g, self.background)
        fg_all: np.ndarray = (delta > self.diff).astype(np.uint8) * 255
        if np.count_nonzero(fg_all) > self.relearn_fraction * fg_all.size:
            self.background, self._learn = None, [g]  # lights / day-night: learn again
            return self._end_all(now)
        fg_all = cv2.morphologyEx(fg_all, cv2.MORPH_OPEN, self._kernel)
        fg_all = cv2.morphologyEx(fg_all, cv2.MORPH_CLOSE, self._kernel, iterations=2)
        # Only where nothing is in front: a parked car never becomes background.
        cv2.accumulateWeighted(g, self.background, self.alpha, mask=cv2.bitwise_not(fg_all))
        fg = cv2.bitwise_and(fg_all, self._mask)  # type: ignore[arg-type]
        changes: list[ParkingChange] = []
        matched: set[int] = set()
        for bx, by, bw, bh in self.blobs(fg):
            box = (bx + x0, by + y0, bw, bh)
            best = max(
                (i for i in range(len(self.tracks)) if i not in matched),
                key=lambda i: iou(self.tracks[i].box, box),
                default=None,
            )
            if best is not None and iou(self.tracks[best].box, box) >= self.iou:
                tr = self.tracks[best]
                tr.box, tr.seen = box, now
                matched.add(best)
            else:
                self.tracks.append(Track(box, now, now))
                matched.add(len(self.tracks) - 1)
        keep: list[Track] = []
        for i, tr in enumerate(self.tracks):
            if i not in matched and now - tr.seen >= (self.gone_s if tr.raised else 0.0):
                if tr.raised:
                    changes.append(ParkingChange(self.zone, False, tr.box, tr.seen - tr.since))
                continue
            if not tr.raised and now - tr.since >= self.max_dwell_s:
                tr.raised = True
                changes.append(ParkingChange(self.zone, True, tr.box, now - tr.since))
            keep.append(tr)
        self.tracks = keep
        return changes

    def _end_all(self, now: float) -> list[ParkingChange]:
        out = [
            ParkingChange(self.zone, False, t.box, t.seen - t.since)
            for t in self.tracks
            if t.raised
        ]
        self.tracks = []
        return out


def mark(frame: Image, polygon: list[tuple[int, int]], box: Box | None, label: str) -> Image:
    """The frame with the zone outlined and the object boxed: for the guard and the police."""
    out = frame.copy()
    cv2.polylines(out, [np.array(polygon, np.int32).reshape(-1, 1, 2)], True, (0, 200, 255), 2)
    if box is not None:
        x, y, w, h = box
        cv2.rectangle(out, (x, y), (x + w, y + h), (0, 0, 255), 3)
        cv2.putText(out, label, (x, max(14, y - 6)), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 255), 2)
    return out
