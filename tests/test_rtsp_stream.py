"""The RTSP test stream is a real live stream: opened with OpenCV's bundled FFmpeg, frames read
within a deadline, the picture moves; and the camera simulator hands its URL out through
GetStreamUri to the real ONVIF driver."""

from __future__ import annotations

import asyncio
import itertools
import socket
import sys
import time
from typing import Any

import cv2
import numpy as np
import pytest

from drivers.onvif import OnvifCamera
from simulators.camera import CameraSimulator
from simulators.rtsp import DEBIAN_PACKAGES, RtspTestStream, RtspUnavailable
from tests.helpers import free_port

PASSWORD = "s3cret-cam"


def read_frames(url: str, count: int, deadline_s: float = 20.0) -> list[Any]:
    """``count`` decoded frames from ``url``; fails after ``deadline_s`` (runs in a thread)."""
    cap = cv2.VideoCapture(
        url,
        cv2.CAP_FFMPEG,
        [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, 5000, cv2.CAP_PROP_READ_TIMEOUT_MSEC, 5000],
    )
    try:
        assert cap.isOpened(), f"cannot open {url}"
        frames: list[Any] = []
        end = time.monotonic() + deadline_s
        while len(frames) < count:
            assert time.monotonic() < end, f"only {len(frames)} frames in {deadline_s} s"
            ok, frame = cap.read()
            if ok:
                frames.append(frame)
        return frames
    finally:
        cap.release()


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def assert_live(frames: list[Any], width: int, height: int) -> None:
    assert all(f.shape == (height, width, 3) for f in frames)
    # The pattern scrolls and the clock ticks: consecutive frames are never the same picture.
    diffs = [float(np.mean(cv2.absdiff(a, b))) for a, b in itertools.pairwise(frames)]
    assert min(diffs) > 0.5, diffs
    assert all(10 < float(np.mean(f)) < 245 for f in frames)  # a picture, not black or white


async def test_h264_stream_on_a_given_port() -> None:
    port = free_port()
    async with RtspTestStream(port=port, path="gate", label="cam-gate") as stream:
        assert stream.url == f"rtsp://127.0.0.1:{port}/gate"
        assert stream.codec == "h264"  # x264enc (gstreamer1.0-plugins-ugly) is installed
        assert stream.running
        frames = await asyncio.to_thread(read_frames, stream.url, 8)
        assert_live(frames, 640, 360)
    assert not stream.running
    assert not port_open(port)  # stopped cleanly: nothing listens any more


async def test_mjpeg_stream_on_a_free_port() -> None:
    async with RtspTestStream(codec="mjpeg", width=320, height=240, fps=10) as stream:
        assert stream.port != 0 and stream.codec == "mjpeg"
        assert stream.launch is not None and "jpegenc" in stream.launch
        frames = await asyncio.to_thread(read_frames, stream.url, 5)
        assert_live(frames, 320, 240)


async def test_two_clients_share_one_stream() -> None:
    async with RtspTestStream(width=320, height=240) as stream:
        a, b = await asyncio.gather(
            asyncio.to_thread(read_frames, stream.url, 3),
            asyncio.to_thread(read_frames, stream.url, 3),
        )
        assert len(a) == len(b) == 3


async def test_without_gstreamer_the_error_names_the_packages() -> None:
    # The virtualenv's interpreter has no PyGObject: the same failure as a machine without it.
    with pytest.raises(RtspUnavailable) as err:
        async with RtspTestStream(python=sys.executable):
            pass
    assert "gir1.2-gst-rtsp-server-1.0" in str(err.value)
    assert "sudo apt-get install " + " ".join(DEBIAN_PACKAGES) in str(err.value)
    with pytest.raises(RtspUnavailable, match="not found"):
        await RtspTestStream(python="/nonexistent/python3").start()


async def test_port_in_use_is_an_error_not_a_hang() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        started = time.monotonic()
        with pytest.raises(RuntimeError, match="cannot listen"):
            await RtspTestStream(port=port, start_timeout=10).start()
        assert time.monotonic() - started < 10


async def test_camera_stream_uri_through_the_driver_opens() -> None:
    async with (
        RtspTestStream(width=320, height=240, label="cam-guardroom") as stream,
        CameraSimulator(password=PASSWORD, stream=stream) as sim,
        OnvifCamera(sim.host, sim.port, "admin", PASSWORD, timeout=5) as cam,
    ):
        profiles = await cam.profiles()
        uris = {await cam.stream_uri(p.token) for p in profiles}
        assert uris == {stream.url}
        frames = await asyncio.to_thread(read_frames, stream.url, 3)
        assert_live(frames, 320, 240)


async def test_camera_without_a_stream_keeps_its_uri() -> None:
    async with (
        CameraSimulator(password=PASSWORD, stream_uri="rtsp://10.1.2.3:8554/gate") as sim,
        OnvifCamera(sim.host, sim.port, "admin", PASSWORD, timeout=5) as cam,
    ):
        assert await cam.stream_uri("profile_main") == "rtsp://10.1.2.3:8554/gate"
