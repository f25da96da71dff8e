"""No-parking zone, pure: a car-sized box that parks in the zone past the dwell is raised and
restored when it leaves; one that passes through, or parks outside the zone, is not; hours."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import cv2
import numpy as np
import pytest

from edge.video.analysis import Image
from edge.video.parking import ParkingDetector, in_hours, iou, mark
from tests.test_video_analysis import noisy, view, world

ZONE = [(0, 180), (639, 180), (639, 359), (0, 359)]  # the strip in front of the gate
FPS = 5.0


def scene(car: tuple[int, int] | None, rng: np.random.Generator) -> Image:
    f = view(world())
    if car is not None:
        x, y = car
        cv2.rectangle(f, (x, y), (x + 160, y + 80), (30, 30, 190), -1)
        cv2.rectangle(f, (x + 20, y + 10), (x + 140, y + 35), (200, 200, 200), -1)  # windows
    return noisy(f, rng)


def run(
    det: ParkingDetector, cars: list[tuple[int, int] | None], t0: float = 0.0
) -> list[tuple[bool, float]]:
    rng = np.random.default_rng(5)
    out = []
    for i, car in enumerate(cars):
        out += [(c.active, c.dwell_s) for c in det.update(scene(car, rng), t0 + i / FPS)]
    return out


def detector() -> ParkingDetector:
    det = ParkingDetector("no-parking", ZONE, (640, 360), max_dwell_s=10.0, gone_s=2.0)
    assert run(det, [None] * 10) == []  # 2 s of empty scene: the background
    return det


def test_a_car_parked_in_the_zone_is_raised_after_the_dwell_and_restored() -> None:
    det = detector()
    arrive = [(-160 + i * 40, 240) for i in range(8)]  # drives in from the left
    parked = [(120, 240)] * 60  # 12 s standing
    events = run(det, arrive + parked, t0=2.0)
    assert len(events) == 1 and events[0][0] is True and events[0][1] >= 10.0
    assert run(det, [None] * 20, t0=20.0) == [(False, pytest.approx(events[0][1], abs=15))]


def test_passing_through_and_parking_outside_the_zone_are_not_raised() -> None:
    det = detector()
    passing = [(-160 + i * 25, 240) for i in range(36)]  # 7 s across the frame
    assert run(det, passing, t0=2.0) == []
    outside = [(300, 40)] * 75  # 15 s standing above the strip
    assert run(det, outside, t0=10.0) == []


def test_hours_and_days() -> None:
    mon_0745 = datetime(2026, 11, 30, 7, 45)
    assert in_hours(mon_0745, [0, 1, 2, 3, 4], ["07:00-08:30", "15:30-17:30"])
    assert not in_hours(mon_0745.replace(hour=10), [0, 1, 2, 3, 4], ["07:00-08:30"])
    assert not in_hours(datetime(2026, 11, 29, 7, 45), [0, 1, 2, 3, 4], ["07:00-08:30"])  # Sun
    assert in_hours(mon_0745.replace(hour=23), [0], [])
    with pytest.raises(ValueError, match="start must be before"):
        in_hours(mon_0745, [0], ["09:00-08:00"])


def test_iou_and_marked_snapshot() -> None:
    assert iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert iou((0, 0, 10, 10), (20, 20, 5, 5)) == 0.0
    assert iou((0, 0, 10, 10), (5, 0, 10, 10)) == pytest.approx(50 / 150)
    frame = np.zeros((360, 640, 3), np.uint8)
    out = mark(frame, ZONE, (100, 200, 50, 40), "parked 130 s")
    assert out.shape == frame.shape and np.count_nonzero(out) > 0 and np.count_nonzero(frame) == 0


async def test_parking_event_reaches_the_sink_only_in_hours() -> None:
    import asyncio
    from typing import cast

    from contract.config import CameraVideoConfig
    from edge.events import EventSink
    from edge.video.monitor import VideoMonitor
    from edge.video.parking import ParkingChange

    class Sink:
        def __init__(self) -> None:
            self.events: list[dict[str, Any]] = []

        async def emit(self, kind: str, **kw: Any) -> None:
            self.events.append({"kind": kind, **kw})

    async def no_url() -> None:
        return None

    zones = [
        {"id": "no-parking", "polygon": ZONE, "days": [0, 1, 2, 3, 4, 5, 6]},
        {"id": "never", "polygon": ZONE, "days": []},
    ]
    sink = Sink()
    mon = VideoMonitor("cam-gate", CameraVideoConfig(zones=zones), cast(EventSink, sink), no_url)
    emitter = asyncio.create_task(mon._emit_loop())
    try:
        mon._changes([ParkingChange("never", True, (1, 2, 3, 4), 130.0)])  # not in its hours
        mon._changes([ParkingChange("never", False, (1, 2, 3, 4), 140.0)])
        mon._changes([ParkingChange("no-parking", True, (100, 200, 160, 80), 130.0)])
        mon._changes([ParkingChange("no-parking", False, (100, 200, 160, 80), 150.0)])
        for _ in range(20):
            await asyncio.sleep(0.01)
    finally:
        emitter.cancel()
    assert [(e["kind"], e["restore"], e["point"]) for e in sink.events] == [
        ("camera_intrusion", False, "parking_no-parking"),
        ("camera_intrusion", True, "parking_no-parking"),
    ]
    detail = sink.events[0]["detail"]
    assert detail == {
        "source": "video",
        "cause": "no_parking",
        "zone": "no-parking",
        "dwell_s": 130.0,
        "box": "100,200,160,80",
    }


def test_a_no_parking_alarm_gets_the_marked_picture_as_its_evidence() -> None:
    """The evidence of a no-parking event is the frame the analysis judged, with the zone and
    the vehicle drawn on it, not a fresh snapshot (the car may have left by then)."""
    from types import SimpleNamespace

    from edge.evidence import EvidenceCollector
    from tests.gwkit import make_event

    marked = b"\xff\xd8\xff\xe0marked"
    watcher: Any = SimpleNamespace(
        cfg=SimpleNamespace(id="cam-gate"),
        video=SimpleNamespace(parking_snapshots={"gate-strip": marked}),
    )
    parking = make_event(
        kind="camera_intrusion",
        device="cam-gate",
        detail={"source": "video", "cause": "no_parking", "zone": "gate-strip"},
    )
    assert EvidenceCollector._marked_picture(parking, watcher) == marked
    other_cam = make_event(kind="camera_intrusion", device="cam-hall", detail=dict(parking.detail))
    assert EvidenceCollector._marked_picture(other_cam, watcher) is None
    panic = make_event(kind="panic", device="cam-gate")
    assert EvidenceCollector._marked_picture(panic, watcher) is None
