"""Video capture against real streams: the RTSP test stream (GStreamer, simulators/rtsp.py),
an unreachable URL, a stream that stalls (the server stops) and comes back, a video file with a
corrupt frame; the events reach the camera's event sink with ``source=video``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import cv2
import numpy as np
import pytest

from contract.config import CameraConfig, CameraVideoConfig
from edge.cameras import CameraWatcher, with_credentials
from edge.events import EventSink
from edge.video.analysis import TamperDetector, Thresholds
from edge.video.capture import CaptureSettings, StreamReader
from edge.video.monitor import VideoMonitor
from simulators.rtsp import RtspTestStream, RtspUnavailable
from tests.helpers import free_port


class RecordingSink:
    """Stands in for the edge's EventSink: keeps what was emitted."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    async def emit(self, kind: str, **kw: Any) -> None:
        self.events.append({"kind": kind, **kw})

    def kinds(self) -> list[tuple[str, bool]]:
        return [(e["kind"], e["restore"]) for e in self.events]


async def until(cond: Callable[[], bool], timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def stream(port: int = 0, **kw: Any) -> RtspTestStream:
    s = RtspTestStream(port=port, width=320, height=240, fps=15, label="cam-video", **kw)
    try:
        await s.start()
    except RtspUnavailable as exc:
        pytest.skip(str(exc))
    return s


def video_cfg(**kw: Any) -> CameraVideoConfig:
    base: dict[str, Any] = {
        "enabled": True,
        "fps": 5,
        "width": 320,
        "height": 180,
        "stall_s": 2.0,
        "open_timeout_s": 3.0,
        "read_timeout_s": 2.0,
        "backoff_cap_s": 2.0,
        "hold_s": 1.0,
    }
    return CameraVideoConfig(**(base | kw))


async def test_fps_measured_and_the_scrolling_pattern_is_no_tamper() -> None:
    s = await stream()
    sink = RecordingSink()
    cam = CameraWatcher(
        CameraConfig(id="cam-gate", host="127.0.0.1", port=1, video=video_cfg(stream_url=s.url)),
        "dx-test",
        cast(EventSink, sink),
        lambda topic, payload: None,
    )
    task = asyncio.create_task(cam.run_video())
    try:
        await until(lambda: cam.video is not None and cam.video.reader is not None, 5, "reader")
        assert cam.video is not None and cam.video.reader is not None
        reader = cam.video.reader
        await until(lambda: reader.up and reader.analysed >= 15, 20, "15 analysed frames")
        await asyncio.sleep(2.0)
        fps = reader.health.fps(time.monotonic())
        assert 10 <= fps <= 20, fps  # the stream's 15 fps are all decoded
        assert reader.health.resolution == (320, 240)
        assert reader.detector.baseline is not None
        tele = cam.telemetry()[0].fields
        assert tele["stream_ok"] is True and 10 <= float(tele["fps"]) <= 20
        assert float(tele["blur"]) > 0 and tele["decode_errors"] == 0
        points = cam.status().points  # offline for ONVIF, but the video points are there
        assert points["video"] == "ok" and points["video_resolution"] == "320x240"
        assert sink.events == []  # moving test pattern: no frozen, no tamper
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await s.stop()


async def test_watcher_reads_the_stream_uri_from_onvif_and_reports_loss() -> None:
    """The whole path in CameraWatcher.run: ONVIF connect, GetStreamUri, credentials put in the
    URL, frames analysed; the stream goes away: video_loss in the camera's sink, source=video."""
    from simulators.camera import CameraSimulator

    s = await stream()
    sink = RecordingSink()
    async with CameraSimulator(password="cam-pw", stream=s) as sim:
        cfg = CameraConfig(
            id="cam-gate",
            host=sim.host,
            port=sim.port,
            password="cam-pw",
            zone="gate",
            video=video_cfg(),
        )
        cam = CameraWatcher(cfg, "dx-test", cast(EventSink, sink), lambda topic, payload: None)
        task = asyncio.create_task(cam.run())
        try:
            await until(
                lambda: (
                    cam.video is not None
                    and cam.video.reader is not None
                    and cam.video.reader.analysed >= 5
                ),
                30,
                "frames analysed through GetStreamUri",
            )
            url = await cam.stream_url()
            assert url == s.url.replace("rtsp://", "rtsp://admin:cam-pw@")
            assert cam.online and cam.status().points["video"] == "ok"
            await s.stop()
            await until(lambda: ("video_loss", False) in sink.kinds(), 20, "video loss")
            ev = sink.events[-1]
            assert ev["device"] == "cam-gate" and ev["detail"]["source"] == "video"
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await s.stop()


async def test_stall_is_video_loss_then_restarted_and_restored() -> None:
    port = free_port()
    s = await stream(port)
    sink = RecordingSink()
    mon = VideoMonitor("cam-gate", video_cfg(), cast(EventSink, sink), _const(s.url), zone="gate")
    task = asyncio.create_task(mon.run())
    try:
        await until(lambda: mon.reader is not None and mon.reader.up, 20, "stream up")
        await s.stop()  # the server goes away: reads block or fail
        await until(lambda: ("video_loss", False) in sink.kinds(), 20, "video loss")
        loss = sink.events[0]
        assert loss["device"] == "cam-gate" and loss["zone"] == "gate"
        assert loss["detail"]["source"] == "video" and loss["point"] == "video"
        assert mon.points()["video"] == "down"
        s = await stream(port)  # the camera comes back on the same URL
        await until(lambda: ("video_loss", True) in sink.kinds(), 30, "restore")
        assert mon.reader is not None and mon.reader.restarts >= 1
        assert mon.points()["video"] == "ok"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await s.stop()


async def test_unreachable_url_is_an_error_with_backoff() -> None:
    url = f"rtsp://127.0.0.1:{free_port()}/nothing"
    sink = RecordingSink()
    mon = VideoMonitor("cam-x", video_cfg(backoff_cap_s=4.0), cast(EventSink, sink), _const(url))
    task = asyncio.create_task(mon.run())
    try:
        await until(lambda: sink.kinds() == [("video_loss", False)], 10, "video loss")
        assert mon.reader is not None
        await until(lambda: mon.reader is not None and mon.reader._failures >= 3, 15, "retries")
        assert mon.reader.backoff_s() == 4.0  # 1, 2, 4: capped
        assert "cannot open" in str(mon.points()["video_error"])
        assert mon.telemetry()["stream_ok"] is False
        assert len(sink.events) == 1  # one loss, not one per retry
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_credentials_go_into_the_stream_uri() -> None:
    assert (
        with_credentials("rtsp://10.0.0.5:554/Streaming/101", "admin", "p@ss:w")
        == "rtsp://admin:p%40ss%3Aw@10.0.0.5:554/Streaming/101"
    )
    assert with_credentials("rtsp://u:v@h/x", "admin", "pw") == "rtsp://u:v@h/x"


async def test_wrong_credentials_are_named_and_the_right_ones_play() -> None:
    """The stream asks for Digest credentials, as a camera does. OpenCV only says it cannot
    open; the capture thread then asks the camera itself, so the technician reads *why*."""
    s = await stream(username="admin", password="right-pw")
    try:
        for url, expect in (
            (with_credentials(s.url, "admin", "wrong-pw"), "wrong user name or password"),
            (s.url, "needs a user name and password"),
            (with_credentials(s.url.replace("/cam", "/nope"), "admin", "right-pw"), "404"),
        ):
            sink = RecordingSink()
            mon = VideoMonitor("cam-x", video_cfg(), cast(EventSink, sink), _const(url))
            task = asyncio.create_task(mon.run())
            try:
                await until(
                    lambda sink=sink: sink.kinds() == [("video_loss", False)], 15, "video loss"
                )
                error = str(mon.points()["video_error"])
                assert expect in error, error
                assert "wrong-pw" not in error and "right-pw" not in error  # never the password
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        sink = RecordingSink()
        good = with_credentials(s.url, "admin", "right-pw")
        mon = VideoMonitor("cam-x", video_cfg(), cast(EventSink, sink), _const(good))
        task = asyncio.create_task(mon.run())
        try:
            await until(lambda: mon.points()["video"] == "ok", 20, "the stream plays")
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    finally:
        await s.stop()


def _const(url: str) -> Callable[[], Any]:
    async def get() -> str:
        return url

    return get


def _mjpeg_with_a_corrupt_frame(path: Path, frames: int = 40, bad: int = 20) -> None:
    out = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), 10, (320, 240))
    rng = np.random.default_rng(1)
    for i in range(frames):
        img = rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)
        cv2.putText(img, str(i), (100, 150), cv2.FONT_HERSHEY_SIMPLEX, 3, (255, 255, 255), 5)
        out.write(img)
    out.release()
    data = bytearray(path.read_bytes())
    starts = [i for i in range(len(data) - 1) if data[i] == 0xFF and data[i + 1] == 0xD8]
    start = starts[bad]
    data[start : start + 2000] = bytes(2000)  # the picture's header is gone
    path.write_bytes(bytes(data))


async def test_a_corrupt_frame_is_counted_not_fatal(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.avi"
    _mjpeg_with_a_corrupt_frame(path)
    loop = asyncio.get_running_loop()
    states: list[bool] = []
    reader = StreamReader(
        "file",
        lambda: str(path),
        CaptureSettings(fps=1000, width=320, height=180, stall_s=5, max_read_failures=3),
        TamperDetector(Thresholds(baseline_frames=3)),
        loop,
        lambda changes: None,
        lambda up, err: states.append(up),
    )
    reader.start()
    try:
        # 40 frames in the file, one of them corrupt: the others are all analysed, and at the
        # end of the file the reader reopens it (a stream that ended) instead of crashing.
        await until(lambda: reader.restarts >= 1, 20, "end of file and reopen")
        # frame 20 fails to decode (counted) and the end of the file counts 3 failed reads
        assert reader.health.decode_errors >= 1 + 3
        assert reader.health.frames >= 39
        assert reader.analysed >= 39
        assert states[0] is True
    finally:
        reader.stop()


# --- campusguard camera calibrate ---------------------------------------------------------------


def _edge_yaml(tmp_path: Path, camera: dict[str, Any]) -> Path:
    import yaml

    data = yaml.safe_load(Path("config/edge.example.yaml").read_text(encoding="utf-8"))
    data["cameras"] = [camera]
    data.pop("linkage", None)  # its rules name the example's cameras
    path = tmp_path / "edge.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return path


def _scene_video(path: Path) -> None:
    from tests.test_video_analysis import clean

    out = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), 10, (640, 360))
    for frame in clean(10):
        out.write(frame)
    out.release()


def test_calibrate_writes_baseline_and_zones(tmp_path: Path) -> None:
    import json

    from typer.testing import CliRunner

    from campusguard.cli import app

    video = tmp_path / "scene.avi"
    _scene_video(video)
    cfg = _edge_yaml(
        tmp_path,
        {
            "id": "cam-gate-south",
            "host": "192.0.2.10",
            "zone": "gate-south",
            "video": {
                "enabled": True,
                "stream_url": str(video),
                "zones": [
                    {"id": "no-parking", "polygon": [[20, 200], [620, 200], [620, 350], [20, 350]]}
                ],
            },
        },
    )
    out = tmp_path / "calib"
    res = CliRunner().invoke(
        app,
        ["camera", "calibrate", "-c", str(cfg), "--camera", "cam-gate-south", "--out", str(out)],
    )
    assert res.exit_code == 0, res.output
    assert "wrote" in res.output and "baseline: mean" in res.output
    stats = json.loads((out / "baseline.json").read_text())
    assert stats["camera"] == "cam-gate-south" and stats["analysis_size"] == [640, 360]
    assert stats["features"] >= 20 and stats["blur"] > 100 and stats["warnings"] == []
    base = cv2.imread(str(out / "baseline.png"))
    zones = cv2.imread(str(out / "zones.png"))
    assert base.shape == zones.shape == (360, 640, 3)
    assert float(np.mean(cv2.absdiff(base[200:350, 20:620], zones[200:350, 20:620]))) > 5
    assert float(np.mean(cv2.absdiff(base[:150], zones[:150]))) < 1  # outside: untouched

    res = CliRunner().invoke(
        app, ["camera", "calibrate", "-c", str(cfg), "--camera", "nope", "--out", str(out)]
    )
    assert res.exit_code == 2 and "no camera 'nope'" in res.output


def test_calibrate_unreachable_stream_is_an_error(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from campusguard.cli import app

    url = f"rtsp://127.0.0.1:{free_port()}/x"
    cfg = _edge_yaml(tmp_path, {"id": "cam-a", "host": "192.0.2.10", "video": {"stream_url": url}})
    res = CliRunner().invoke(
        app, ["camera", "calibrate", "-c", str(cfg), "--camera", "cam-a", "--out", str(tmp_path)]
    )
    assert res.exit_code == 1 and "cannot open the stream" in res.output


@pytest.mark.parametrize(
    ("polygon", "problem"),
    [
        ([[10, 10], [700, 10], [700, 300]], "point (700, 10) is outside the 640x360 frame"),
        ([[0, 0], [100, 100], [100, 0], [0, 100]], "edges 0 and 2 cross"),
        ([[0, 0], [50, 50], [100, 100]], "no area"),
    ],
)
def test_bad_zone_polygon_is_a_config_error_naming_camera_and_zone(
    tmp_path: Path, polygon: list[list[int]], problem: str
) -> None:
    from contract.config import ConfigError, EdgeConfig, load_config

    cfg = _edge_yaml(
        tmp_path,
        {
            "id": "cam-gate-south",
            "host": "192.0.2.10",
            "video": {"zones": [{"id": "no-parking", "polygon": polygon}]},
        },
    )
    with pytest.raises(ConfigError) as err:
        load_config(cfg, EdgeConfig)
    msg = str(err.value)
    assert "camera 'cam-gate-south' video zone 'no-parking'" in msg and problem in msg
