"""The no-parking zone end to end (issue 9, part 3): a scene played as a real RTSP stream (an
empty gate, then a car that stops in the strip), the edge's video analysis, the event, and its
first picture - the analysed frame marked with the zone and the car - stored at the gateway as
the alarm's evidence. Real GStreamer RTSP server, ONVIF camera simulator, Mosquitto, gateway."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from contract.config import EdgeConfig, parse_config
from edge.daemon import event_listener_queue, run_edge
from gateway.service import run_gateway
from simulators.camera import CameraSimulator
from simulators.rtsp import RtspTestStream, RtspUnavailable
from tests.gwkit import CAMPUS, gateway_config
from tests.helpers import Mosquitto

PASSWORD = "cam-secret-1"
W, H, FPS = 320, 240, 10
ZONE = [(60, 150), (300, 150), (300, 235), (60, 235)]
CAR = ((110, 165), (220, 225))  # x0,y0 - x1,y1, inside the zone
ZONE_BGR = (0, 200, 255)  # how edge/video/parking.py draws the zone


def scene(path: Path, seconds: int = 90, empty_s: int = 4) -> None:
    """A road in front of the gate; after ``empty_s`` a blue car drives in and stays."""
    out = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), FPS, (W, H))
    rng = np.random.default_rng(3)
    for i in range(seconds * FPS):
        img = np.full((H, W, 3), 110, np.uint8)
        cv2.rectangle(img, (0, 140), (W, H), (70, 70, 70), -1)  # the road
        cv2.line(img, (0, 190), (W, 190), (200, 200, 200), 2)
        noise = rng.integers(-3, 4, img.shape, dtype=np.int16)  # a live sensor is never still
        img = np.clip(img.astype(np.int16) + noise, 0, 255).astype(np.uint8)
        if i >= empty_s * FPS:
            cv2.rectangle(img, CAR[0], CAR[1], (190, 70, 20), -1)
            cv2.rectangle(
                img, (CAR[0][0] + 15, CAR[0][1] + 8), (CAR[1][0] - 15, 190), (60, 40, 20), -1
            )
        out.write(img)
    out.release()


def edge_cfg(tmp: Path, broker: int, camera: int, stream: str) -> EdgeConfig:
    data: dict[str, Any] = {
        "campus": {"id": CAMPUS, "name": "Test school"},
        "edge": {"id": "edge-1", "data_dir": str(tmp / "edge")},
        "mqtt": {"host": "127.0.0.1", "port": broker, "keepalive": 5},
        "zones": [{"id": "gate", "name": "South gate"}],
        "test_signal": {"enabled": False},
        "cameras": [
            {
                "id": "cam-gate",
                "host": "127.0.0.1",
                "port": camera,
                "password": PASSWORD,
                "timeout": 3,
                "zone": "gate",
                "video": {
                    "enabled": True,
                    "stream_url": stream,
                    "fps": 5,
                    "width": W,
                    "height": H,
                    "hold_s": 1.0,
                    "zones": [
                        {
                            "id": "gate-strip",
                            "polygon": [list(p) for p in ZONE],
                            "max_dwell_s": 2,
                            "min_area": 1500,
                            "days": [0, 1, 2, 3, 4, 5, 6],
                        }
                    ],
                },
            }
        ],
        "evidence": {"timeout": 3},
    }
    return parse_config(data, EdgeConfig, "parking-e2e")


async def test_a_car_parked_at_the_gate_is_an_event_with_the_marked_picture(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    video = tmp_path / "gate.avi"
    scene(video)
    stream = RtspTestStream(width=W, height=H, fps=FPS, video_file=str(video))
    try:
        await stream.start()
    except RtspUnavailable as exc:
        pytest.skip(str(exc))
    try:
        async with (
            CameraSimulator(password=PASSWORD) as cam,
            run_gateway(gateway_config(tmp_path, mosquitto.port, None)) as gw,
            run_edge(edge_cfg(tmp_path, mosquitto.port, cam.port, stream.url)) as edge,
        ):
            q = event_listener_queue(edge)
            async with asyncio.timeout(60):
                while True:
                    ev = await q.get()
                    if ev.kind == "camera_intrusion" and not ev.restore:
                        break
            assert ev.detail["cause"] == "no_parking" and ev.detail["zone"] == "gate-strip"
            assert float(str(ev.detail["dwell_s"])) >= 2

            async def stored() -> list[Any]:
                return [r for r in await gw.store.evidence_for(ev.id) if r.path]

            rows: list[Any] = []

            async def have_rows() -> bool:
                rows[:] = await stored()
                return bool(rows)

            deadline = time.monotonic() + 30
            while not await have_rows():
                assert time.monotonic() < deadline, "no evidence at the gateway"
                await asyncio.sleep(0.2)
            first = min(rows, key=lambda r: r.shot)
            assert first.camera == "cam-gate" and first.content_type == "image/jpeg"
            data = (gw.cfg.gateway.data_dir / "evidence" / first.path).read_bytes()
            img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
            assert img is not None and img.shape[:2] == (H, W)  # the analysed frame
            # The zone's outline is drawn on it, in the marking colour, along its top edge...
            edge_px = img[ZONE[0][1], ZONE[0][0] + 20 : ZONE[1][0] - 20].astype(int)
            near = np.abs(edge_px - np.array(ZONE_BGR)).sum(axis=1) < 120
            assert near.mean() > 0.5, edge_px[:5]
            # ... and the car is in the picture, boxed in red.
            car = img[CAR[0][1] + 20, (CAR[0][0] + CAR[1][0]) // 2].astype(int)
            assert car[0] > car[2], car  # blue-ish body
    finally:
        await stream.stop()
