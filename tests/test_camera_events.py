"""What a camera's events become at the edge: a line crossing resent after (re)subscribing
("Initialized") is not a new crossing - the fault suite saw it raise an intrusion at every edge
start, and two reached the police. A recording sink stands in for the edge's outbox (the event
path itself is tested end to end in test_cameras_e2e.py)."""

from __future__ import annotations

from typing import Any, cast

from contract.config import CameraConfig
from drivers.onvif.topics import CameraEvent
from edge.cameras import CameraWatcher
from edge.events import EventSink


class RecordingSink:
    def __init__(self) -> None:
        self.kinds: list[tuple[str, bool]] = []

    async def emit(self, kind: str, **kw: Any) -> None:
        self.kinds.append((kind, bool(kw.get("restore"))))


def crossing(initialized: bool) -> CameraEvent:
    return CameraEvent(
        "line_crossing",
        None,
        "line-1",
        "tns1:RuleEngine/LineDetector/Crossed",
        {"ObjectId": "7"},
        initialized=initialized,
    )


async def test_a_resent_crossing_is_no_intrusion_and_a_new_one_is() -> None:
    sink = RecordingSink()
    cam = CameraWatcher(
        CameraConfig(id="cam-gate", host="127.0.0.1", port=1),
        "dx-test",
        cast(EventSink, sink),
        lambda topic, payload: None,
    )
    await cam._on_event(crossing(initialized=True))
    assert sink.kinds == []
    await cam._on_event(crossing(initialized=False))
    assert sink.kinds == [("camera_intrusion", False)]
