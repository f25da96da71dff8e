"""Video health and tamper, pure: generated scenes (OpenCV drawing) go through the detector.

Every tamper case is caught (black, blue, covered, defocus, moved, frozen) after its hold time,
and none of them fires on a clean scene with sensor noise or with a box passing through; the
day/night switch re-baselines instead of alarming; stream health measures fps and stalls.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.video.analysis import (
    Image,
    StreamHealth,
    TamperDetector,
    Thresholds,
    blur_score,
    downscale,
    frame_diff,
)

W, H = 640, 360
FPS = 5.0
T = Thresholds(hold_s=2.0, frozen_s=3.0, cooldown_s=10.0, rebaseline_s=5.0, baseline_frames=5)


def world(seed: int = 1, width: int = W + 200, height: int = H + 100) -> Image:
    """A textured scene larger than the frame, so the camera can be 'moved' across it."""
    rng = np.random.default_rng(seed)
    img = np.full((height, width, 3), 110, np.uint8)
    for _ in range(120):
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        colour = tuple(int(c) for c in rng.integers(20, 235, 3))
        if rng.random() < 0.5:
            cv2.rectangle(
                img,
                (x, y),
                (x + int(rng.integers(8, 60)), y + int(rng.integers(8, 60))),
                colour,
                -1,
            )
        else:
            cv2.circle(img, (x, y), int(rng.integers(4, 30)), colour, -1)
    return img


def view(scene: Image, dx: int = 60, dy: int = 40) -> Image:
    return scene[dy : dy + H, dx : dx + W].copy()


def noisy(frame: Image, rng: np.random.Generator, sigma: float = 2.0) -> Image:
    """A live sensor: a little noise on every frame."""
    noise = rng.normal(0, sigma, frame.shape)
    return np.clip(frame.astype(np.float32) + noise, 0, 255).astype(np.uint8)


def run(
    frames: list[Image], det: TamperDetector | None = None, t0: float = 0.0
) -> tuple[TamperDetector, list[tuple[str, bool]]]:
    det = det or TamperDetector(T)
    out: list[tuple[str, bool]] = []
    for i, f in enumerate(frames):
        out += [(c.cause, c.active) for c in det.update(f, t0 + i / FPS)]
    return det, out


def clean(n: int, seed: int = 7) -> list[Image]:
    rng = np.random.default_rng(seed)
    base = view(world())
    return [noisy(base, rng) for _ in range(n)]


def passing(n: int) -> list[Image]:
    """A car-sized box driving through the scene."""
    rng = np.random.default_rng(3)
    base = view(world())
    frames = []
    for i in range(n):
        f = base.copy()
        x = -200 + i * 40
        cv2.rectangle(f, (x, 200), (x + 180, 290), (40, 40, 200), -1)
        frames.append(noisy(f, rng))
    return frames


def baselined() -> TamperDetector:
    det, events = run(clean(10))
    assert det.baseline is not None and events == []
    return det


def tamper(kind: str, n: int) -> list[Image]:
    rng = np.random.default_rng(11)
    base = view(world())
    if kind == "black":
        return [np.zeros((H, W, 3), np.uint8) for _ in range(n)]
    if kind == "blue":
        return [np.full((H, W, 3), (200, 0, 0), np.uint8) for _ in range(n)]
    if kind == "covered":  # a hand or a bag: dark, a soft gradient, sensor noise
        grad = np.tile(np.linspace(20, 45, W, dtype=np.float32), (H, 1))
        dark = cv2.merge([grad, grad, grad]).astype(np.uint8)
        return [noisy(dark, rng, 1.5) for _ in range(n)]
    if kind == "defocus":
        return [noisy(cv2.GaussianBlur(base, (0, 0), 6), rng) for _ in range(n)]
    if kind == "moved":
        return [noisy(view(world(), dx=170, dy=90), rng) for _ in range(n)]
    if kind == "frozen":
        still = noisy(base, rng)
        return [still.copy() for _ in range(n)]
    raise AssertionError(kind)


@pytest.mark.parametrize(
    ("kind", "cause"),
    [
        ("black", "black"),
        ("blue", "blue"),
        ("covered", "covered"),
        ("defocus", "defocus"),
        ("moved", "moved"),
        ("frozen", "frozen"),
    ],
)
def test_every_tamper_case_is_caught_after_its_hold_and_restored(kind: str, cause: str) -> None:
    det = baselined()
    bad = tamper(kind, 25)  # 5 s
    _, events = run(bad[:5], det, t0=10.0)  # 1 s: less than hold_s
    assert events == []
    _, events = run(bad[5:], det, t0=11.0)
    assert events == [(cause, True)], events
    assert det.active == {cause}
    _, events = run(clean(15, seed=99), det, t0=20.0)
    assert events == [(cause, False)]


def test_no_false_alarm_on_clean_and_passing_through() -> None:
    det = baselined()
    _, events = run(clean(150, seed=5), det, t0=10.0)  # 30 s
    assert events == []
    _, events = run(passing(25), det, t0=40.0)
    assert events == []
    assert det.rebaselines == 0


def test_cooldown_holds_back_a_repeat() -> None:
    det = baselined()
    _, ev = run(tamper("black", 15), det, t0=10.0)
    assert ev == [("black", True)]
    _, ev = run(clean(2), det, t0=13.0)
    assert ev == [("black", False)]
    _, ev = run(tamper("black", 15), det, t0=14.0)  # within cooldown_s (10 s)
    assert ev == []
    _, ev = run(tamper("black", 10), det, t0=24.0)  # cooldown over
    assert ev == [("black", True)]


def test_day_night_switch_rebaselines_instead_of_alarming() -> None:
    det = baselined()
    rng = np.random.default_rng(2)
    # Infrared at night: grey, darker, a little softer, but the same view.
    night_base = cv2.cvtColor(cv2.cvtColor(view(world()), cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
    night_base = cv2.GaussianBlur((night_base * 0.45).astype(np.uint8), (0, 0), 1.2)
    night = [noisy(night_base, rng) for _ in range(60)]  # 12 s
    _, events = run(night, det, t0=10.0)
    assert events == []
    assert det.rebaselines == 1
    assert det.baseline is not None and det.baseline.mean < 70
    _, events = run(
        tamper("defocus", 5)[:1] * 0 + [noisy(night_base, rng) for _ in range(10)], det, t0=30.0
    )
    assert events == []


@settings(max_examples=30, deadline=None)
@given(sigma=st.floats(0.0, 8.0), k=st.integers(0, 4))
def test_blur_score_falls_with_blur(sigma: float, k: int) -> None:
    base = view(world(seed=k))
    g = cv2.cvtColor(base, cv2.COLOR_BGR2GRAY)
    sharper = blur_score(g)
    softer = blur_score(cv2.GaussianBlur(g, (0, 0), sigma + 0.5))
    assert softer < sharper


@settings(max_examples=30, deadline=None)
@given(a=st.integers(0, 255), b=st.integers(0, 255))
def test_frame_diff_is_the_mean_absolute_difference(a: int, b: int) -> None:
    x = np.full((36, 64), a, np.uint8)
    y = np.full((36, 64), b, np.uint8)
    assert frame_diff(x, y) == pytest.approx(abs(a - b))
    assert frame_diff(x, x) == 0


def test_downscale_to_analysis_size() -> None:
    big = np.zeros((1080, 1920, 3), np.uint8)
    assert downscale(big, (W, H)).shape == (H, W, 3)
    small = np.zeros((H, W, 3), np.uint8)
    assert downscale(small, (W, H)) is small


def test_stream_health_fps_and_stall() -> None:
    h = StreamHealth(window_s=10.0, stall_s=3.0)
    h.opened(0.0, 0.5, 25.0)
    assert h.open_time_s == 0.5 and h.expected_fps == 25.0
    assert not h.stalled(3.0)
    assert h.stalled(3.6)  # opened, never a frame
    for i in range(50):
        h.frame(1.0 + i * 0.2, W, H)  # 5 fps
    assert h.fps(10.8) == pytest.approx(5.0, rel=0.05)
    assert h.fps_low(10.8)  # 5 of 25 expected
    assert h.resolution == (W, H)
    assert not h.stalled(11.0)
    assert h.stalled(14.0)
    h.error()
    assert h.decode_errors == 1
