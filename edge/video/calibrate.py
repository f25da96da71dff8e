"""``campusguard camera calibrate``: grab a frame, write the baseline and draw the zones.

For the installer: ``baseline.png`` (the analysis-size picture the tamper checks compare with),
``baseline.json`` (its statistics and the thresholds they give) and ``zones.png`` (the picture
with every configured ``video.zones`` polygon drawn and named), to check on a laptop that the
camera looks where it should and the zones sit where they are meant to.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import cast

import cv2
import numpy as np

from contract.config import CameraConfig
from edge.video.analysis import Image, TamperDetector, downscale, frame_stats, grey
from edge.video.capture import CaptureSettings, open_capture, redact
from edge.video.monitor import thresholds

ZONE_COLOURS = [(0, 0, 255), (0, 200, 255), (255, 0, 255), (0, 255, 0), (255, 128, 0)]


class CalibrateError(Exception):
    """The frame could not be had; the message says why."""


@dataclass(frozen=True)
class Calibration:
    files: list[Path]
    stats: dict[str, object]
    warnings: list[str]


def grab_frame(url: str, timeout_s: float = 10.0, settle: int = 5) -> Image:
    """One decoded frame (after ``settle`` frames, so an H.264 stream has its key frame)."""
    s = CaptureSettings(open_timeout_s=timeout_s, read_timeout_s=timeout_s)
    cap = open_capture(url, s)
    try:
        if not cap.isOpened():
            raise CalibrateError(f"cannot open the stream {redact(url)}")
        frame = None
        end = time.monotonic() + timeout_s
        got = 0
        while got <= settle and time.monotonic() < end:
            ok, f = cap.read()
            if ok and f is not None:
                frame, got = f, got + 1
        if frame is None:
            raise CalibrateError(f"no frame from {redact(url)} within {timeout_s:g} s")
        return cast(Image, frame)
    finally:
        cap.release()


def draw_zones(frame: Image, cam: CameraConfig) -> Image:
    out = frame.copy()
    for i, zone in enumerate(cam.video.zones):
        colour = ZONE_COLOURS[i % len(ZONE_COLOURS)]
        pts = np.array(zone.polygon, np.int32).reshape(-1, 1, 2)
        overlay = out.copy()
        cv2.fillPoly(overlay, [pts], colour)
        out = cv2.addWeighted(overlay, 0.25, out, 0.75, 0).astype(np.uint8)
        cv2.polylines(out, [pts], True, colour, 2)
        x, y = zone.polygon[0]
        cv2.putText(out, zone.id, (x + 4, y + 18), cv2.FONT_HERSHEY_SIMPLEX, 0.6, colour, 2)
    return out


def calibrate(cam: CameraConfig, frame: Image, out: Path, url: str = "") -> Calibration:
    """Write baseline.png, baseline.json and zones.png for one camera's frame into ``out``."""
    v = cam.video
    small = downscale(frame, (v.width, v.height))
    det = TamperDetector(thresholds(v))
    base = det.set_baseline(small)
    s = frame_stats(small, grey(small), None)
    out.mkdir(parents=True, exist_ok=True)
    stats: dict[str, object] = {
        "camera": cam.id,
        "taken": datetime.now(UTC).isoformat(),
        "stream": redact(url) if url else None,
        "source_size": [int(frame.shape[1]), int(frame.shape[0])],
        "analysis_size": [v.width, v.height],
        "mean": round(base.mean, 2),
        "std": round(base.std, 2),
        "blur": round(base.blur, 1),
        "channels_bgr": [round(c, 1) for c in s.channels],
        "features": 0 if base.ref is None else len(base.ref.keypoints),
        "covered_below_std": max(v.cover_std, round(0.2 * base.std, 2)),
        "defocus_below_blur": round(v.defocus_ratio * base.blur, 1),
        "zones": {z.id: [list(p) for p in z.polygon] for z in v.zones},
    }
    warnings: list[str] = []
    if base.std < 2 * v.cover_std:
        warnings.append("little texture: the picture looks covered or dark; check the camera")
    if base.ref is None:
        warnings.append("too few features: a moved camera cannot be detected on this view")
    stats["warnings"] = warnings
    files = [out / "baseline.png", out / "baseline.json", out / "zones.png"]
    cv2.imwrite(str(files[0]), small)
    files[1].write_text(json.dumps(stats, indent=2) + "\n", encoding="utf-8")
    cv2.imwrite(str(files[2]), draw_zones(small, cam))
    return Calibration(files, stats, warnings)
