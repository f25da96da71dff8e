"""The camera simulator's HTTP control API, checked end to end: what is injected over HTTP
arrives through the real ONVIF driver (PullPointSubscriber), and a fault set over HTTP is what
the driver sees."""

from __future__ import annotations

import asyncio
import re
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from drivers.onvif import (
    CameraAuthError,
    CameraEvent,
    OnvifCamera,
    PullPointSubscriber,
    SubscriberState,
    SubscriberTiming,
)
from simulators.camera import SNAPSHOT_JPEG, CameraSimulator
from tests.helpers import env_with_pythonpath, wait_for

PASSWORD = "s3cret-cam"
FAST = SubscriberTiming(
    pull_timeout_s=2.0,
    pull_grace_s=3.0,
    backoff_initial_s=0.05,
    backoff_max_s=0.3,
    failed_retry_s=30.0,
    unsubscribe_timeout_s=2.0,
)


@pytest.fixture
async def sim() -> AsyncIterator[CameraSimulator]:
    async with CameraSimulator(password=PASSWORD, http_port=0) as s:
        yield s


@pytest.fixture
async def http(sim: CameraSimulator) -> AsyncIterator[httpx.AsyncClient]:
    base = f"http://127.0.0.1:{sim.http_port}"
    async with httpx.AsyncClient(base_url=base, timeout=5, trust_env=False) as client:
        yield client


async def post(http: httpx.AsyncClient, path: str, **params: Any) -> dict[str, Any]:
    r = await http.post(path, params=params)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def camera(sim: CameraSimulator, password: str = PASSWORD) -> OnvifCamera:
    return OnvifCamera(sim.host, sim.port, "admin", password, timeout=5)


async def test_state_and_errors(sim: CameraSimulator, http: httpx.AsyncClient) -> None:
    assert sim.http_port not in (None, 0, sim.port)
    r = await http.get("/state")
    assert r.status_code == 200
    state = r.json()
    assert state["base_url"] == sim.base_url
    assert state["active_subscriptions"] == 0 and state["pull_fail"] is False
    assert state["stream_uri"] == sim.stream_uri and state["stream_codec"] is None
    assert state["password_changed"] is False and "password" not in state
    assert (await http.get("/nope")).status_code == 404
    assert (await http.get("/event", params={"kind": "motion"})).status_code == 405
    bad = await http.post("/event", params={"kind": "explosion"})
    assert bad.status_code == 400 and "digital_input" in bad.json()["error"]
    assert (await http.post("/event", params={"kind": "motion", "active": "maybe"})).is_client_error
    assert (await http.post("/fault")).status_code == 400  # no knob named
    assert (await http.post("/fault", params={"snapshot": "melted"})).status_code == 400
    assert (await http.post("/fault", params={"pull_delay": "soon"})).status_code == 400


async def test_digital_input_over_http_arrives_through_the_driver(
    sim: CameraSimulator, http: httpx.AsyncClient
) -> None:
    got: list[CameraEvent] = []
    async with camera(sim) as cam, PullPointSubscriber(cam, got.append, timing=FAST) as sub:
        await wait_for(lambda: sub.state is SubscriberState.STARTED and sim.pulls >= 1)
        await post(http, "/event", kind="digital_input", source="DI_1", active=1)
        await wait_for(lambda: len(got) == 1, what="the pressed input")
        assert (got[0].kind, got[0].active, got[0].source) == ("digital_input", True, "DI_1")
        assert got[0].topic == "tns1:Device/Trigger/DigitalInput"
        await post(http, "/event", kind="digital_input", source="DI_1", active=0)
        await wait_for(lambda: len(got) == 2, what="the released input")
        assert (got[1].kind, got[1].active) == ("digital_input", False)


async def test_every_kind_maps_to_itself(sim: CameraSimulator, http: httpx.AsyncClient) -> None:
    kinds = [
        "motion",
        "tamper",
        "scene_change",
        "video_loss",
        "field_intrusion",
        "line_crossing",
        "digital_input",
    ]
    got: list[CameraEvent] = []
    async with camera(sim) as cam, PullPointSubscriber(cam, got.append, timing=FAST):
        await wait_for(lambda: sim.active_subscriptions == 1 and sim.pulls >= 1)
        for kind in kinds:
            await post(http, "/event", kind=kind)
        await wait_for(lambda: len(got) == len(kinds), what="one event per kind")
    assert [e.kind for e in got] == kinds
    by_kind = {e.kind: e for e in got}
    assert by_kind["line_crossing"].active is None  # a pulse
    assert all(e.active is True for e in got if e.kind != "line_crossing")
    assert by_kind["digital_input"].source == "DI_0"
    assert by_kind["field_intrusion"].source == "field-1"


async def test_password_fault_then_normal(sim: CameraSimulator, http: httpx.AsyncClient) -> None:
    state = await post(http, "/fault", password="changed-by-the-installer")
    assert state["password_changed"] is True
    with pytest.raises(CameraAuthError):
        await camera(sim).connect()
    assert sim.auth_failures >= 1
    async with camera(sim, "changed-by-the-installer") as cam:
        assert (await cam.device_info()).model == "SimCam 1"
    state = await post(http, "/normal")
    assert state["password_changed"] is False
    async with camera(sim) as cam:
        assert (await cam.device_info()).model == "SimCam 1"


async def test_snapshot_and_clock_faults(sim: CameraSimulator, http: httpx.AsyncClient) -> None:
    state = await post(http, "/fault", snapshot="401", clock_offset=3600)
    assert state["snapshot_fail"] == "401" and state["clock_offset"] == 3600
    async with camera(sim) as cam:
        # The driver compensates the hour; the snapshot refuses the right password.
        assert cam.clock_skew_s is not None and abs(cam.clock_skew_s - 3600) < 3
        with pytest.raises(CameraAuthError):
            await cam.snapshot("profile_main")
        await post(http, "/fault", snapshot="ok")
        assert await cam.snapshot("profile_main") == SNAPSHOT_JPEG
    state = await post(http, "/fault", snapshot_delay=0.2, pull_delay=0.1)
    assert (state["snapshot_delay"], state["pull_delay"]) == (0.2, 0.1)
    assert (sim.snapshot_delay, sim.pull_delay) == (0.2, 0.1)


async def test_pull_fail_drop_and_cap(sim: CameraSimulator, http: httpx.AsyncClient) -> None:
    async with camera(sim) as cam, PullPointSubscriber(cam, timing=FAST) as sub:
        await wait_for(lambda: sim.pulls >= 1)
        await post(http, "/fault", pull_fail=1)
        await wait_for(lambda: sub.health().consecutive_failures >= 2, what="failing pulls")
        await post(http, "/fault", pull_fail=0)
        await wait_for(lambda: sub.state is SubscriberState.STARTED, what="recovery")
        created = sim.subscriptions_created
        state = await post(http, "/drop")  # a camera reboot: the driver subscribes again
        assert state["active_subscriptions"] == 0
        await wait_for(lambda: sim.subscriptions_created > created and sim.active_subscriptions)
    state = await post(http, "/fault", subscription_cap=0)
    assert state["subscription_cap"] == 0
    async with camera(sim) as cam, PullPointSubscriber(cam, timing=FAST) as sub:
        await wait_for(lambda: sub.state is SubscriberState.FAILED, what="the cap refusing")
        assert "TooManySubscriptions" in (sub.health().last_error or "")
    assert (await post(http, "/fault", subscription_cap="none"))["subscription_cap"] is None


async def test_cli_prints_its_urls_and_stops_on_ctrl_c() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "campusguard.cli",
        "sim",
        "camera",
        "--port",
        "0",
        "--http-port",
        "0",
        "--rtsp-port",
        "0",
        "--name",
        "cam-test",
        cwd=Path(__file__).resolve().parent.parent,
        env=env_with_pythonpath(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        lines: list[str] = []
        async with asyncio.timeout(30):
            while not lines or lines[-1] != "Stop with Ctrl-C.":
                line = await proc.stdout.readline()  # type: ignore[union-attr]
                assert line, (await proc.stderr.read()).decode()  # type: ignore[union-attr]
                lines.append(line.decode().strip())
        out = "\n".join(lines)
        assert re.search(r"ONVIF device service +http://127\.0\.0\.1:\d+/onvif/device_service", out)
        assert re.search(r"RTSP stream +rtsp://127\.0\.0\.1:\d+/cam +\(h264\)", out)
        control = re.search(r"HTTP control +(http://127\.0\.0\.1:\d+)/state", out)
        assert control is not None
        async with httpx.AsyncClient(timeout=5, trust_env=False) as client:
            state = (await client.get(f"{control[1]}/state")).json()
            assert state["stream_uri"].startswith("rtsp://127.0.0.1:")
            assert state["stream_codec"] == "h264"
        proc.send_signal(signal.SIGINT)
        async with asyncio.timeout(15):
            code = await proc.wait()
        assert code == 0
        err = (await proc.stderr.read()).decode()  # type: ignore[union-attr]
        assert "Traceback" not in err
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
