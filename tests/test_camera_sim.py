"""The camera simulator is a real ONVIF device: checked with the real onvif-zeep-async client
(and onvif-parsers, and httpx for the snapshot), over real sockets."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

# onvif.client calls logging.basicConfig at import: keep the root logger as pytest set it.
_root = logging.getLogger()
_saved_handlers, _saved_level = list(_root.handlers), _root.level
import onvif  # noqa: E402
import onvif_parsers  # noqa: E402
from onvif import ONVIFCamera  # noqa: E402
from onvif.exceptions import ONVIFAuthError, ONVIFError, ONVIFTimeoutError  # noqa: E402
from zeep.exceptions import Fault  # noqa: E402

from simulators.camera import SNAPSHOT_JPEG, CameraSimulator, parse_duration  # noqa: E402
from tests.helpers import wait_for  # noqa: E402

_root.handlers[:] = _saved_handlers
_root.setLevel(_saved_level)

WSDL_DIR = str(Path(onvif.__file__).parent / "wsdl")
PASSWORD = "s3cret-cam"
MOTION = "tns1:RuleEngine/CellMotionDetector/Motion"
DIGITAL_INPUT = "tns1:Device/Trigger/DigitalInput"
TERM = dt.timedelta(minutes=10)


def subcodes(fault: Fault) -> list[str]:
    return [q.localname for q in fault.subcodes or []]


@contextlib.asynccontextmanager
async def client(
    sim: CameraSimulator, *, password: str = PASSWORD, adjust_time: bool = True
) -> AsyncIterator[Any]:
    # The constructor pops http_proxy/https_proxy from the environment: put them back.
    saved = {k: os.environ[k] for k in ("http_proxy", "https_proxy") if k in os.environ}
    cam = ONVIFCamera(
        sim.host, sim.port, "admin", password, wsdl_dir=WSDL_DIR, adjust_time=adjust_time
    )
    os.environ.update(saved)
    try:
        yield cam
    finally:
        await cam.close()


@pytest.fixture
async def sim() -> AsyncIterator[CameraSimulator]:
    async with CameraSimulator(password=PASSWORD, stream_uri="rtsp://10.1.2.3:8554/gate") as s:
        yield s


async def create_pullpoint(cam: Any) -> Any:
    """CreatePullPointSubscription by hand; returns the pull-point service."""
    events = await cam.create_events_service()
    result = await events.CreatePullPointSubscription({"InitialTerminationTime": "PT600S"})
    cam.xaddrs["http://www.onvif.org/ver10/events/wsdl/PullPointSubscription"] = (
        result.SubscriptionReference.Address._value_1
    )
    return await cam.create_pullpoint_service()


# --------------------------------------------------------------------------- device, media


async def test_device_media_and_snapshot(sim: CameraSimulator) -> None:
    async with client(sim) as cam:
        await cam.update_xaddrs()
        assert cam.xaddrs["http://www.onvif.org/ver10/media/wsdl"] == (
            f"{sim.base_url}/onvif/media_service"
        )
        assert cam.xaddrs["http://www.onvif.org/ver10/events/wsdl"] == (
            f"{sim.base_url}/onvif/event_service"
        )
        caps = await (await cam.create_devicemgmt_service()).GetCapabilities({"Category": "All"})
        assert caps.Events.XAddr == f"{sim.base_url}/onvif/event_service"
        assert caps.Events.WSPullPointSupport is True

        info = await (await cam.create_devicemgmt_service()).GetDeviceInformation()
        assert (info.Manufacturer, info.SerialNumber) == ("CampusGuard", "SIM-0001")

        media = await cam.create_media_service()
        profiles = await media.GetProfiles()
        assert [p.token for p in profiles] == ["profile_main", "profile_sub"]
        assert {p.VideoEncoderConfiguration.Encoding for p in profiles} == {"H264"}
        assert profiles[0].VideoEncoderConfiguration.Resolution.Width == 1920

        req = media.create_type("GetStreamUri")
        req.ProfileToken = profiles[1].token
        req.StreamSetup = {"Stream": "RTP-Unicast", "Transport": {"Protocol": "RTSP"}}
        assert (await media.GetStreamUri(req)).Uri == "rtsp://10.1.2.3:8554/gate"

        req.ProfileToken = "nope"
        with pytest.raises(Fault) as err:
            await media.GetStreamUri(req)
        assert "NoProfile" in subcodes(err.value)

        assert await cam.get_snapshot_uri("profile_main") == sim.snapshot_url
        image = await cam.get_snapshot("profile_main")  # digest auth, as the library does it
        assert image == SNAPSHOT_JPEG
        assert image[:2] == b"\xff\xd8" and image[-2:] == b"\xff\xd9"
    assert sim.snapshots == 1
    assert sim.auth_failures == 0


async def test_snapshot_http_auth(sim: CameraSimulator) -> None:
    async with httpx.AsyncClient() as http:
        bare = await http.get(sim.snapshot_url)
        assert bare.status_code == 401
        assert bare.headers["www-authenticate"].startswith("Digest ")
        ok = await http.get(sim.snapshot_url, auth=httpx.DigestAuth("admin", PASSWORD))
        assert ok.status_code == 200 and ok.headers["content-type"] == "image/jpeg"
        bad = await http.get(sim.snapshot_url, auth=httpx.DigestAuth("admin", "wrong"))
        assert bad.status_code == 401
        # A digest camera does not take Basic credentials.
        basic = await http.get(sim.snapshot_url, auth=("admin", PASSWORD))
        assert basic.status_code == 401
    assert sim.auth_failures == 2

    async with (
        CameraSimulator(password=PASSWORD, snapshot_auth="basic") as basic_sim,
        httpx.AsyncClient() as http,
    ):
        assert (await http.get(basic_sim.snapshot_url, auth=("admin", PASSWORD))).is_success
        bare = await http.get(basic_sim.snapshot_url)
        assert bare.headers["www-authenticate"].startswith("Basic ")


async def test_snapshot_faults(sim: CameraSimulator) -> None:
    async with client(sim) as cam:
        await cam.update_xaddrs()
        sim.snapshot_fail = "401"
        with pytest.raises(ONVIFAuthError):
            await cam.get_snapshot("profile_main")
        sim.snapshot_fail = "timeout"
        with pytest.raises(ONVIFTimeoutError):
            await cam.get_snapshot("profile_main", timeout=0.3)
        sim.snapshot_fail = None
        assert await cam.get_snapshot("profile_main") == SNAPSHOT_JPEG


# --------------------------------------------------------------------------- WS-Security


async def test_clock_one_hour_off() -> None:
    async with CameraSimulator(password=PASSWORD, clock_offset=3600.0) as sim:
        async with client(sim, adjust_time=True) as cam:
            await cam.update_xaddrs()
            assert abs(cam.dt_diff.total_seconds() - 3600) < 3
            info = await (await cam.create_devicemgmt_service()).GetDeviceInformation()
            assert info.Model == "SimCam 1"
        assert sim.auth_failures == 0

        async with client(sim, adjust_time=False) as cam:
            devicemgmt = await cam.create_devicemgmt_service()
            # GetSystemDateAndTime needs no auth, so the skewed camera still answers it...
            sys_time = await devicemgmt.GetSystemDateAndTime()
            assert sys_time.UTCDateTime.Date.Year >= 2024
            # ...but anything else is refused: Created is an hour off the camera clock.
            with pytest.raises(Fault) as err:
                await devicemgmt.GetDeviceInformation()
            assert subcodes(err.value) == ["NotAuthorized"]
        assert sim.auth_failures == 1

        # The clock is a run-time knob: once the camera is "fixed", a fresh client works.
        sim.clock_offset = 0.0
        async with client(sim, adjust_time=False) as cam:
            info = await (await cam.create_devicemgmt_service()).GetDeviceInformation()
            assert info.Manufacturer == "CampusGuard"


async def test_wrong_password_is_a_clear_error(sim: CameraSimulator) -> None:
    async with client(sim, password="guess") as cam:
        devicemgmt = await cam.create_devicemgmt_service()
        with pytest.raises(Fault) as err:
            await devicemgmt.GetDeviceInformation()
        assert err.value.code.endswith("Sender")
        assert subcodes(err.value) == ["NotAuthorized"]
        assert "not Authorized" in err.value.message
        # update_xaddrs falls back from GetServices to GetCapabilities, and then gives up.
        with pytest.raises((Fault, ONVIFError)):
            await cam.update_xaddrs()
    assert sim.auth_failures >= 3


async def test_no_security_header_is_refused(sim: CameraSimulator) -> None:
    envelope = (
        '<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope"><s:Body>'
        '<GetDeviceInformation xmlns="http://www.onvif.org/ver10/device/wsdl"/>'
        "</s:Body></s:Envelope>"
    )
    async with httpx.AsyncClient() as http:
        reply = await http.post(
            f"{sim.base_url}/onvif/device_service",
            content=envelope,
            headers={"Content-Type": "application/soap+xml"},
        )
    assert reply.status_code == 400
    assert reply.headers["content-type"].startswith("application/soap+xml")
    assert "ter:NotAuthorized" in reply.text


# --------------------------------------------------------------------------- events


async def test_events_reach_the_library_and_parse(sim: CameraSimulator) -> None:
    lost: list[bool] = []
    async with client(sim) as cam:
        await cam.update_xaddrs()
        props = await (await cam.create_events_service()).GetEventProperties()
        assert props.FixedTopicSet is True

        manager = await cam.create_pullpoint_manager(TERM, lambda: lost.append(True))
        assert sim.active_subscriptions == 1
        pullpoint = manager.get_service()

        # Long-poll first, then raise the events: the pull must wake up with them.
        pull = asyncio.create_task(
            pullpoint.PullMessages({"MessageLimit": 100, "Timeout": dt.timedelta(seconds=10)})
        )
        await wait_for(lambda: sim.pulls == 1)
        started = time.monotonic()
        sim.emit(MOTION, {"IsMotion": "true"}, {"VideoSourceConfigurationToken": "vsconf"})
        sim.emit(DIGITAL_INPUT, {"LogicalState": "true"}, {"InputToken": "DI_0"})
        result = await pull
        assert time.monotonic() - started < 5
        messages = list(result.NotificationMessage)
        if len(messages) == 1:  # the first event may wake the poll before the second is queued
            more = await pullpoint.PullMessages({"MessageLimit": 100, "Timeout": "PT5S"})
            messages += list(more.NotificationMessage)
        topics = [m.Topic._value_1 for m in messages]
        assert topics == [MOTION, DIGITAL_INPUT]
        assert messages[1].Message._value_1.Source.SimpleItem[0].Value == "DI_0"

        motion = await onvif_parsers.parse(topics[0], "cam1", messages[0])
        assert motion[0].device_class == "motion" and motion[0].value is True
        door = await onvif_parsers.parse(topics[1], "cam1", messages[1])
        assert door[0].name == "Digital Input" and door[0].value is True
        assert door[0].uid.endswith("DI_0")

        # SetSynchronizationPoint resends the current states, marked Initialized.
        await manager.set_synchronization_point()
        sync = await pullpoint.PullMessages({"MessageLimit": 100, "Timeout": "PT5S"})
        assert sorted(m.Topic._value_1 for m in sync.NotificationMessage) == sorted(topics)
        assert {m.Message._value_1.PropertyOperation for m in sync.NotificationMessage} == {
            "Initialized"
        }

        # Nothing queued: the long-poll returns empty when its Timeout runs out.
        started = time.monotonic()
        empty = await pullpoint.PullMessages({"MessageLimit": 10, "Timeout": "PT0.3S"})
        assert not empty.NotificationMessage
        assert 0.25 < time.monotonic() - started < 3

        renewal = await (await cam.create_subscription_service("PullPointSubscription")).Renew(
            "PT300S"
        )
        assert 290 < (renewal.TerminationTime - renewal.CurrentTime).total_seconds() <= 300

        await manager.shutdown()  # Unsubscribe
        assert sim.active_subscriptions == 0
    assert sim.subscriptions_created == 1
    assert not lost


async def test_subscription_cap(sim: CameraSimulator) -> None:
    sim.subscription_cap = 1
    async with client(sim) as cam:
        await cam.update_xaddrs()
        pullpoint = await create_pullpoint(cam)
        events = await cam.create_events_service()
        with pytest.raises(Fault) as err:
            await events.CreatePullPointSubscription({"InitialTerminationTime": "PT60S"})
        assert subcodes(err.value) == ["Action", "TooManySubscriptions"]
        assert (sim.subscriptions_created, sim.active_subscriptions) == (1, 1)

        await (await cam.create_subscription_service("PullPointSubscription")).Unsubscribe()
        with pytest.raises(Fault):
            await pullpoint.PullMessages({"MessageLimit": 1, "Timeout": "PT0S"})
        await events.CreatePullPointSubscription({"InitialTerminationTime": "PT60S"})
        assert sim.active_subscriptions == 1


async def test_dropped_subscriptions_fault(sim: CameraSimulator) -> None:
    async with client(sim) as cam:
        await cam.update_xaddrs()
        pullpoint = await create_pullpoint(cam)
        # A poll in progress when the camera drops its subscriptions ends with a fault too.
        pull = asyncio.create_task(pullpoint.PullMessages({"MessageLimit": 1, "Timeout": "PT10S"}))
        await wait_for(lambda: sim.pulls == 1)
        sim.drop_subscriptions()
        with pytest.raises(Fault) as err:
            await pull
        assert "ResourceUnknown" in subcodes(err.value)
        with pytest.raises(Fault):
            await pullpoint.PullMessages({"MessageLimit": 1, "Timeout": "PT0S"})
        subscription = await cam.create_subscription_service("PullPointSubscription")
        with pytest.raises(Fault):
            await subscription.Renew("PT60S")
        assert sim.active_subscriptions == 0


async def test_slow_and_failing_pulls(sim: CameraSimulator) -> None:
    async with client(sim) as cam:
        await cam.update_xaddrs()
        pullpoint = await create_pullpoint(cam)
        sim.emit(MOTION, {"IsMotion": "true"})
        sim.pull_delay = 0.3
        started = time.monotonic()
        slow = await pullpoint.PullMessages({"MessageLimit": 10, "Timeout": "PT5S"})
        assert time.monotonic() - started >= 0.3
        assert len(slow.NotificationMessage) == 1

        sim.pull_delay = 0.0
        sim.pull_fail = True
        with pytest.raises(Fault) as err:
            await pullpoint.PullMessages({"MessageLimit": 10, "Timeout": "PT1S"})
        assert err.value.code.endswith("Receiver")
        sim.pull_fail = False
        sim.emit(MOTION, {"IsMotion": "false"})
        ok = await pullpoint.PullMessages({"MessageLimit": 10, "Timeout": "PT1S"})
        assert ok.NotificationMessage[0].Message._value_1.Data.SimpleItem[0].Value == "false"


async def test_shutdown_wakes_a_long_poll() -> None:
    async with CameraSimulator(password=PASSWORD) as sim, client(sim) as cam:
        await cam.update_xaddrs()
        pullpoint = await create_pullpoint(cam)
        pull = asyncio.create_task(pullpoint.PullMessages({"MessageLimit": 1, "Timeout": "PT60S"}))
        await wait_for(lambda: sim.pulls == 1)
        started = time.monotonic()
        await sim.__aexit__(None, None, None)
        assert time.monotonic() - started < 5
        with contextlib.suppress(Exception):
            await pull


# --------------------------------------------------------------------------- pieces


def test_parse_duration() -> None:
    assert parse_duration("PT60S") == dt.timedelta(seconds=60)
    assert parse_duration("PT1M30.5S") == dt.timedelta(seconds=90.5)
    assert parse_duration("P1DT1H") == dt.timedelta(days=1, hours=1)
    for bad in ("P", "PT", "60", "P1Y"):
        with pytest.raises(ValueError, match="duration"):
            parse_duration(bad)


def test_snapshot_is_a_baseline_jpeg() -> None:
    assert SNAPSHOT_JPEG.startswith(b"\xff\xd8\xff\xe0") and SNAPSHOT_JPEG.endswith(b"\xff\xd9")
    assert b"\xff\xc0" in SNAPSHOT_JPEG  # SOF0: baseline
    sof = SNAPSHOT_JPEG.index(b"\xff\xc0")
    assert SNAPSHOT_JPEG[sof + 5 : sof + 9] == b"\x00\x08\x00\x08"  # 8x8
