"""The ONVIF camera driver against the camera simulator (real sockets), and its topic mapper."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.onvif import (
    CameraAuthError,
    CameraEvent,
    CameraProtocolError,
    CameraTimeout,
    CameraUnreachable,
    OnvifCamera,
    Profile,
    PullPointSubscriber,
    SubscriberState,
    SubscriberTiming,
    UnknownTopicLog,
    map_event,
)
from drivers.onvif.topics import EVENT_KINDS, parse_bool
from simulators.camera import SNAPSHOT_JPEG, CameraSimulator
from tests.helpers import wait_for

PASSWORD = "s3cret-cam"
MOTION = "tns1:RuleEngine/CellMotionDetector/Motion"
DIGITAL_INPUT = "tns1:Device/Trigger/DigitalInput"
# Fast timings: the same state machine, on a test's time scale.
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
    async with CameraSimulator(password=PASSWORD, stream_uri="rtsp://10.1.2.3:8554/gate") as s:
        yield s


def camera(sim: CameraSimulator, password: str = PASSWORD, timeout: float = 5.0) -> OnvifCamera:
    return OnvifCamera(sim.host, sim.port, "admin", password, timeout=timeout)


# --------------------------------------------------------------------------- device, media


async def test_device_media_snapshot(sim: CameraSimulator) -> None:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    os.environ["http_proxy"] = "http://proxy.invalid:3128"
    try:
        async with camera(sim) as cam:
            assert os.environ["http_proxy"] == "http://proxy.invalid:3128"
            info = await cam.device_info()
            assert (info.manufacturer, info.model, info.serial_number) == (
                "CampusGuard",
                "SimCam 1",
                "SIM-0001",
            )
            profiles = await cam.profiles()
            assert [p.token for p in profiles] == ["profile_main", "profile_sub"]
            assert profiles[0] == Profile("profile_main", profiles[0].name, "H264", (1920, 1080))
            assert await cam.stream_uri("profile_sub") == "rtsp://10.1.2.3:8554/gate"
            assert await cam.snapshot_uri("profile_main") == sim.snapshot_url
            assert await cam.snapshot("profile_main") == SNAPSHOT_JPEG
            assert abs(cam.clock_skew_s or 0.0) < 3
    finally:
        os.environ.pop("http_proxy", None)
    assert (root.handlers, root.level) == (handlers, level)
    assert sim.snapshots == 1 and sim.auth_failures == 0


async def test_clock_an_hour_off() -> None:
    async with CameraSimulator(password=PASSWORD, clock_offset=3600.0) as sim:
        async with camera(sim) as cam:
            assert cam.clock_skew_s is not None and abs(cam.clock_skew_s - 3600) < 3
            assert (await cam.device_info()).model == "SimCam 1"
        assert sim.auth_failures == 0


async def test_wrong_password(sim: CameraSimulator) -> None:
    cam = camera(sim, password="guess")
    with pytest.raises(CameraAuthError) as err:
        await cam.connect()
    assert not err.value.retryable and err.value.retry_after_s >= 60
    assert cam.clock_skew_s is None  # closed again


async def test_snapshot_faults(sim: CameraSimulator) -> None:
    # Connected with room to spare (a loaded CI machine took more than 0.5 s to connect), then
    # the short bound the timeout case is about.
    async with camera(sim, timeout=5) as cam:
        cam.timeout = 0.5
        sim.snapshot_fail = "401"
        with pytest.raises(CameraAuthError):
            await cam.snapshot("profile_main")
        sim.snapshot_fail = "timeout"
        started = time.monotonic()
        with pytest.raises(CameraTimeout):
            await cam.snapshot("profile_main")
        assert time.monotonic() - started < 3
        sim.snapshot_fail = None
        assert await cam.snapshot("profile_main") == SNAPSHOT_JPEG


@pytest.mark.parametrize("mode", ["truncated", "html", "wrong"])
async def test_malformed_answers_are_a_protocol_error(sim: CameraSimulator, mode: str) -> None:
    """A camera (or a proxy in front of it) answering garbage: a clear device error, never a
    crash and never a hang; the same camera answering properly again works again."""
    async with camera(sim, timeout=2) as cam:
        sim.malformed = mode  # type: ignore[assignment]
        # (The library parses leniently, as sloppy cameras need: a list cut off after a
        # whole item comes back as the items before the cut. Single answers cannot.)
        calls = [cam.device_info] if mode == "truncated" else [cam.device_info, cam.profiles]
        for call in calls:
            with pytest.raises(CameraProtocolError) as err:
                await call()
            assert "camera" in str(err.value)
        sim.malformed = None
        assert (await cam.device_info()).model == "SimCam 1"


async def test_unreachable() -> None:
    async with CameraSimulator(password=PASSWORD) as sim:
        host, port = sim.host, sim.port
    with pytest.raises(CameraUnreachable):
        await OnvifCamera(host, port, "admin", PASSWORD, timeout=2).connect()


async def test_cancellation_is_not_a_device_error(sim: CameraSimulator) -> None:
    sim.snapshot_fail = "timeout"
    async with camera(sim, timeout=5) as cam:
        task = asyncio.create_task(cam.snapshot("profile_main"))
        await wait_for(lambda: sim.requests.get("GetSnapshotUri", 0) >= 1)
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


# --------------------------------------------------------------------------- events


async def test_events_arrive_and_shutdown_unsubscribes(sim: CameraSimulator) -> None:
    got: list[CameraEvent] = []
    async with camera(sim) as cam:
        async with PullPointSubscriber(cam, got.append, timing=FAST) as sub:
            await wait_for(lambda: sim.active_subscriptions == 1 and sim.pulls >= 1)
            assert sub.state is SubscriberState.STARTED
            sim.emit(MOTION, {"IsMotion": "true"}, {"VideoSourceConfigurationToken": "vsconf"})
            sim.emit(DIGITAL_INPUT, {"LogicalState": "1"}, {"InputToken": "DI_0"})
            await wait_for(lambda: len(got) == 2)
            assert [(e.kind, e.active, e.source) for e in got] == [
                ("motion", True, "vsconf"),
                ("digital_input", True, "DI_0"),
            ]
            assert got[0].topic == MOTION and got[0].utc_time is not None
            health = sub.health()
            assert health.subscription_alive and health.last_event_at is not None
            assert sim.requests.get("SetSynchronizationPoint") == 1
        assert sim.active_subscriptions == 0
        assert sub.health().state is SubscriberState.STOPPED
        assert not sub.health().subscription_alive


async def test_async_iterator_and_sync_point(sim: CameraSimulator) -> None:
    sim.emit(DIGITAL_INPUT, {"LogicalState": "true"}, {"InputToken": "DI_1"})  # before we subscribe
    async with camera(sim) as cam, PullPointSubscriber(cam, timing=FAST) as sub:
        async with asyncio.timeout(5):
            event = await anext(sub)
        # SetSynchronizationPoint made the camera resend the state it already had.
        assert (event.kind, event.active, event.source, event.initialized) == (
            "digital_input",
            True,
            "DI_1",
            True,
        )


async def test_dropped_subscription_is_recreated(sim: CameraSimulator) -> None:
    got: list[CameraEvent] = []
    async with camera(sim) as cam, PullPointSubscriber(cam, got.append, timing=FAST) as sub:
        await wait_for(lambda: sim.pulls >= 1)
        sim.drop_subscriptions()  # a camera reboot
        await wait_for(lambda: sim.subscriptions_created == 2 and sim.active_subscriptions == 1)
        sim.emit(MOTION, {"IsMotion": "false"})
        await wait_for(lambda: any(e.active is False for e in got))
        assert sub.state is SubscriberState.STARTED
        assert sub.health().failures == 1
    assert sim.active_subscriptions == 0


async def test_pull_failures_back_off_then_recover(sim: CameraSimulator) -> None:
    got: list[CameraEvent] = []
    async with camera(sim) as cam, PullPointSubscriber(cam, got.append, timing=FAST) as sub:
        await wait_for(lambda: sim.pulls >= 1)
        sim.pull_fail = True
        sim.emit(MOTION, {"IsMotion": "true"})
        await wait_for(lambda: sub.health().consecutive_failures >= 3)
        assert sub.state is SubscriberState.PAUSED
        # Back-off: a handful of attempts in a second, not hundreds.
        pulls = sim.pulls
        await asyncio.sleep(1.0)  # measuring a rate over a fixed window, not waiting
        assert sim.pulls - pulls < 12
        assert sim.active_subscriptions <= 1  # failed subscriptions are removed, not leaked
        sim.pull_fail = False
        await wait_for(lambda: sub.state is SubscriberState.STARTED)
        sim.emit(MOTION, {"IsMotion": "false"})
        await wait_for(lambda: any(e.active is False for e in got))
        assert sub.health().consecutive_failures == 0
    assert sim.active_subscriptions == 0


async def test_subscription_cap_is_a_failed_state(sim: CameraSimulator) -> None:
    sim.subscription_cap = 0
    async with camera(sim) as cam, PullPointSubscriber(cam, timing=FAST) as sub:
        await wait_for(lambda: sub.state is SubscriberState.FAILED)
        assert "TooManySubscriptions" in (sub.health().last_error or "")
        await asyncio.sleep(0.5)  # no retry within failed_retry_s: count over a window
        assert sim.requests["CreatePullPointSubscription"] == 1


async def test_wrong_password_subscriber_fails(sim: CameraSimulator) -> None:
    async with camera(sim) as cam:
        sim.password = "rotated"
        async with PullPointSubscriber(cam, timing=FAST) as sub:
            await wait_for(lambda: sub.state is SubscriberState.FAILED)
            assert sub.health().last_error is not None


async def test_unknown_topic_logged_once(
    sim: CameraSimulator, caplog: pytest.LogCaptureFixture
) -> None:
    got: list[CameraEvent] = []
    caplog.set_level(logging.INFO, logger="drivers.onvif")
    async with camera(sim) as cam, PullPointSubscriber(cam, got.append, timing=FAST) as sub:
        await wait_for(lambda: sim.pulls >= 1)
        for _ in range(3):
            sim.emit("tns1:Vendor/Fancy/Thing", {"State": "true"})
        sim.emit(MOTION, {"IsMotion": "true"})
        await wait_for(lambda: len(got) == 1)
        assert sub.unknown_topics.seen == {"tns1:Vendor/Fancy/Thing"}
    lines = [r for r in caplog.records if "unknown event topic" in r.getMessage()]
    assert len(lines) == 1


async def test_renews_before_the_term_ends(sim: CameraSimulator) -> None:
    import datetime as dt

    timing = SubscriberTiming(term=dt.timedelta(seconds=3), renew_at_fraction=0.5)
    async with camera(sim) as cam, PullPointSubscriber(cam, timing=timing) as sub:
        await wait_for(lambda: sim.requests.get("Renew", 0) >= 1, timeout=6)
        assert sub.state is SubscriberState.STARTED
        assert sim.subscriptions_created == 1


# --------------------------------------------------------------------------- mapper


@pytest.mark.parametrize(
    ("topic", "data", "source", "expected"),
    [
        ("tns1:VideoSource/MotionAlarm", {"State": "true"}, {}, ("motion", True, None)),
        (MOTION, {"IsMotion": "0"}, {"VideoSourceConfigurationToken": "v"}, ("motion", False, "v")),
        ("tns1:RuleEngine/TamperDetector/Tamper", {"IsTamper": "TRUE"}, {}, ("tamper", True, None)),
        (
            "tns1:VideoSource/GlobalSceneChange/ImagingService",
            {"State": "1"},
            {"Source": "vs"},
            ("scene_change", True, "vs"),
        ),
        ("tns1:VideoSource/SignalLoss", {"State": "false"}, {}, ("video_loss", False, None)),
        (
            DIGITAL_INPUT,
            {"LogicalState": "1"},
            {"InputToken": "DI_0"},
            ("digital_input", True, "DI_0"),
        ),
        (
            "tns1:RuleEngine/FieldDetector/ObjectsInside",
            {"IsInside": "true"},
            {"Rule": "zone1"},
            ("field_intrusion", True, "zone1"),
        ),
        (
            "tns1:RuleEngine/LineDetector/Crossed",
            {"ObjectId": "17"},
            {},
            ("line_crossing", None, None),
        ),
        ("tnshik:AlarmIn", {"State": "true"}, {"InputToken": "A1"}, ("digital_input", True, "A1")),
        ("tns1:RuleEngine/PeopleDetector/People", {"IsPeople": "true"}, {}, ("motion", True, None)),
        (
            "tns1:RuleEngine/LineCrossDetector/LineCross",
            {"IsLineCross": "true"},
            {},
            ("line_crossing", True, None),
        ),
        (
            "http://www.onvif.org/ver10/topics/RuleEngine/CellMotionDetector/Motion",
            {"IsMotion": "true"},
            {},
            ("motion", True, None),
        ),
        # A renamed data item: the first boolean value is used.
        (MOTION, {"State": "true"}, {}, ("motion", True, None)),
        (MOTION, {"IsMotion": "maybe"}, {}, ("motion", None, None)),
    ],
)
def test_map_event(
    topic: str, data: dict[str, str], source: dict[str, str], expected: tuple[object, ...]
) -> None:
    event = map_event(topic, data, source)
    assert event is not None
    assert (event.kind, event.active, event.source) == expected
    assert event.topic == topic


@pytest.mark.parametrize(
    "topic", ["", "/", "tns1:Vendor/Thing", "tns1:RuleEngine", "tns1:Motion//."]
)
def test_unknown_topics(topic: str) -> None:
    assert map_event(topic, {"State": "true"}, {}) is None


_items = st.dictionaries(st.text(max_size=12), st.text(max_size=12), max_size=4)


@given(topic=st.text(max_size=80), data=_items, source=_items)
def test_map_event_never_raises(topic: str, data: dict[str, str], source: dict[str, str]) -> None:
    event = map_event(topic, data, source)
    if event is not None:
        assert event.kind in EVENT_KINDS and event.topic == topic
        assert event.active in (True, False, None)


@given(
    prefix=st.sampled_from(["tns1:", "", "tt:", "ns0:"]),
    value=st.sampled_from(["true", "false", "1", "0", "True", " FALSE "]),
)
def test_map_event_value_variants(prefix: str, value: str) -> None:
    topic = f"{prefix}RuleEngine/{prefix}CellMotionDetector/{prefix}Motion"
    event = map_event(topic, {"IsMotion": value}, {})
    assert event is not None and event.kind == "motion"
    assert event.active is parse_bool(value)
    assert event.active is (value.strip().lower() in ("true", "1"))


def test_unknown_topic_log_is_bounded() -> None:
    seen = UnknownTopicLog("cam", limit=2)
    assert [seen.note(t) for t in ("a", "a", "b", "c", "a")] == [True, False, True, False, False]
    assert seen.unlogged == 1
