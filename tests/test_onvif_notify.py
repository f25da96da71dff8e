"""Push events (WS-BaseNotification Subscribe/Notify) from the camera simulator to the driver's
Notify listener over real HTTP; the webhook path through the edge; the snapshot and shutdown
fixes of the driver."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from contract.config import NotifyListenerConfig
from drivers.onvif import (
    CameraEvent,
    NotifyListener,
    NotifySubscriber,
    OnvifCamera,
    PullPointSubscriber,
    SubscriberState,
    SubscriberTiming,
)
from edge.daemon import event_listener_queue, run_edge
from gateway.service import run_gateway
from simulators.camera import SNAPSHOT_JPEG, CameraSimulator
from simulators.police import PoliceReceiver
from tests.gwkit import gateway_config
from tests.helpers import Mosquitto, free_port, wait_for
from tests.test_cameras_e2e import DI, PASSWORD, camera_edge, next_of

MOTION = "tns1:RuleEngine/CellMotionDetector/Motion"
CAM_ID = "cam-gate"
# A short term so renewal (and loss detection through it) happens on a test's time scale.
FAST_PUSH = SubscriberTiming(
    term=dt.timedelta(seconds=2),
    renew_at_fraction=0.5,
    backoff_initial_s=0.05,
    backoff_max_s=0.3,
    failed_retry_s=30.0,
    unsubscribe_timeout_s=2.0,
)
FAST_PULL = SubscriberTiming(
    pull_timeout_s=2.0,
    pull_grace_s=3.0,
    backoff_initial_s=0.05,
    backoff_max_s=0.3,
    failed_retry_s=30.0,
    unsubscribe_timeout_s=2.0,
)


@pytest.fixture
async def sim() -> AsyncIterator[CameraSimulator]:
    async with CameraSimulator(password=PASSWORD) as s:
        yield s


@pytest.fixture
async def listener() -> AsyncIterator[NotifyListener]:
    async with NotifyListener("127.0.0.1", free_port()) as lst:
        yield lst


def camera(sim: CameraSimulator, timeout: float = 5.0) -> OnvifCamera:
    return OnvifCamera(sim.host, sim.port, "admin", PASSWORD, timeout=timeout)


def notify_body(topic: str, data: dict[str, str], source: dict[str, str]) -> bytes:
    items = "".join(f'<tt:SimpleItem Name="{k}" Value="{v}"/>' for k, v in data.items())
    src = "".join(f'<tt:SimpleItem Name="{k}" Value="{v}"/>' for k, v in source.items())
    return (
        '<env:Envelope xmlns:env="http://www.w3.org/2003/05/soap-envelope" '
        'xmlns:wsnt="http://docs.oasis-open.org/wsn/b-2" '
        'xmlns:tt="http://www.onvif.org/ver10/schema">'
        "<env:Body><wsnt:Notify><wsnt:NotificationMessage>"
        '<wsnt:Topic Dialect="http://www.onvif.org/ver10/tev/topicExpression/ConcreteSet">'
        f"{topic}</wsnt:Topic><wsnt:Message>"
        '<tt:Message UtcTime="2026-01-01T00:00:00Z" PropertyOperation="Changed">'
        f"<tt:Source>{src}</tt:Source><tt:Data>{items}</tt:Data>"
        "</tt:Message></wsnt:Message></wsnt:NotificationMessage></wsnt:Notify></env:Body>"
        "</env:Envelope>"
    ).encode()


# --------------------------------------------------------------------------- push events


async def test_pushed_events_arrive_and_shutdown_unsubscribes(
    sim: CameraSimulator, listener: NotifyListener
) -> None:
    got: list[CameraEvent] = []
    async with camera(sim) as cam:
        async with NotifySubscriber(cam, listener, CAM_ID, got.append, timing=FAST_PUSH) as sub:
            await wait_for(lambda: sub.health().subscription_alive, what="push subscription")
            assert sub.state is SubscriberState.STARTED and sim.push_subscriptions == 1
            sim.emit(MOTION, {"IsMotion": "true"}, {"VideoSourceConfigurationToken": "vsconf"})
            sim.emit(DI, {"LogicalState": "1"}, {"InputToken": "DI_0"})
            await wait_for(lambda: len(got) == 2, what="two events")
            assert [(e.kind, e.active, e.source) for e in got] == [
                ("motion", True, "vsconf"),
                ("digital_input", True, "DI_0"),
            ]
            assert got[0].topic == MOTION and got[0].utc_time is not None
            health = sub.health()
            assert health.subscription_alive and health.last_event_at is not None
            # The simulator counts a Notify once our answer is back: wait for that, not sleep.
            await wait_for(lambda: sim.notifies_sent == listener.accepted, what="counted")
            assert sim.notifies_sent >= 1 and sim.notify_failures == 0
            assert not listener.rejected
            assert "CreatePullPointSubscription" not in sim.requests
        assert sim.active_subscriptions == 0
        assert sub.health().state is SubscriberState.STOPPED
        assert not sub.health().subscription_alive
    # The camera is gone from the listener: a late Notify is refused.
    async with httpx.AsyncClient() as http:
        late = await http.post(
            listener.consumer_url(CAM_ID, "x"), content=notify_body(MOTION, {}, {})
        )
    assert late.status_code == 404 and listener.rejected == {"unknown_camera": 1}


async def test_async_iterator(sim: CameraSimulator, listener: NotifyListener) -> None:
    async with camera(sim) as cam, NotifySubscriber(cam, listener, CAM_ID, timing=FAST_PUSH) as sub:
        await wait_for(lambda: sub.health().subscription_alive)
        sim.emit(DI, {"LogicalState": "true"}, {"InputToken": "DI_1"})
        async with asyncio.timeout(5):
            event = await anext(sub)
        assert (event.kind, event.active, event.source) == ("digital_input", True, "DI_1")


async def test_renews_before_the_term_ends(sim: CameraSimulator, listener: NotifyListener) -> None:
    got: list[CameraEvent] = []
    async with (
        camera(sim) as cam,
        NotifySubscriber(cam, listener, CAM_ID, got.append, timing=FAST_PUSH) as sub,
    ):
        await wait_for(lambda: sim.requests.get("Renew", 0) >= 2, timeout=6, what="renewals")
        # Past the 2 s term: the subscription lives on because it was renewed.
        assert sim.subscriptions_created == 1 and sim.push_subscriptions == 1
        assert sub.state is SubscriberState.STARTED and sub.health().failures == 0
        sim.emit(MOTION, {"IsMotion": "true"})
        await wait_for(lambda: len(got) == 1)
    assert sim.active_subscriptions == 0


async def test_dropped_subscription_is_recreated(
    sim: CameraSimulator, listener: NotifyListener
) -> None:
    got: list[CameraEvent] = []
    async with (
        camera(sim) as cam,
        NotifySubscriber(cam, listener, CAM_ID, got.append, timing=FAST_PUSH) as sub,
    ):
        await wait_for(lambda: sub.health().subscription_alive)
        old_url = listener.consumer_url(CAM_ID, sub._token or "")
        sim.drop_subscriptions()  # a camera reboot: it simply stops sending
        # Only the failed Renew tells: the subscriber treats it as loss and resubscribes.
        await wait_for(
            lambda: sim.subscriptions_created == 2 and sim.push_subscriptions == 1,
            timeout=8,
            what="a new subscription",
        )
        await wait_for(lambda: sub.state is SubscriberState.STARTED and sub._alive())
        assert sub.health().failures >= 1
        sim.emit(MOTION, {"IsMotion": "false"})
        await wait_for(lambda: any(e.active is False for e in got))
        # The old subscription's URL is no longer listened on.
        async with httpx.AsyncClient() as http:
            stale = await http.post(old_url, content=notify_body(MOTION, {}, {}))
        assert stale.status_code == 404
        assert listener.rejected == {"unknown_subscription": 1}
    assert sim.active_subscriptions == 0


async def test_subscription_cap_applies_to_push(
    sim: CameraSimulator, listener: NotifyListener
) -> None:
    sim.subscription_cap = 0
    async with camera(sim) as cam, NotifySubscriber(cam, listener, CAM_ID, timing=FAST_PUSH) as sub:
        await wait_for(lambda: sub.state is SubscriberState.FAILED)
        assert "TooManySubscriptions" in (sub.health().last_error or "")
        assert sim.requests["Subscribe"] == 1


async def test_bad_notifies_are_refused_and_counted(
    sim: CameraSimulator, listener: NotifyListener, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="drivers.onvif")
    got: list[CameraEvent] = []
    async with (
        camera(sim) as cam,
        NotifySubscriber(cam, listener, CAM_ID, got.append, timing=FAST_PUSH) as sub,
        httpx.AsyncClient(timeout=5) as http,
    ):
        await wait_for(lambda: sub.health().subscription_alive)
        url = listener.consumer_url(CAM_ID, sub._token or "")
        ok = notify_body(DI, {"LogicalState": "true"}, {"InputToken": "DI_0"})

        async def post(target: str, body: bytes) -> int:
            answer = await http.post(target, content=body)
            return answer.status_code

        assert await post(url, b"<not-xml") == 400
        assert await post(url, b"<?xml version='1.0'?><a>not soap</a>") == 400
        assert await post(url, b"<!DOCTYPE x [<!ENTITY e 'boom'>]><x>&e;</x>") == 400
        assert await post(url, b"x" * (listener.max_body + 1)) == 413
        assert await post(listener.consumer_url("cam-other", "t"), ok) == 404
        assert await post(listener.consumer_url(CAM_ID, "wrong-token"), ok) == 404
        assert await post(f"{listener.advertised_url}/onvif/notify/{CAM_ID}", ok) == 404
        assert listener.rejected == {
            "malformed": 3,
            "too_large": 1,
            "unknown_camera": 1,
            "unknown_subscription": 2,
        }
        # Logged once per kind, not once per request.
        lines = [r.getMessage() for r in caplog.records if "Notify refused" in r.getMessage()]
        assert len(lines) == 4
        assert not got
        # Still serving: a good Notify (and one from the camera) gets through.
        assert await post(url, ok) == 200
        sim.emit(MOTION, {"IsMotion": "true"})
        await wait_for(lambda: len(got) == 2)
        assert [e.kind for e in got] == ["digital_input", "motion"]


async def test_unknown_topic_named_by_onvif_parsers(
    sim: CameraSimulator, listener: NotifyListener, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="drivers.onvif")
    got: list[CameraEvent] = []
    async with (
        camera(sim) as cam,
        NotifySubscriber(cam, listener, CAM_ID, got.append, timing=FAST_PUSH) as sub,
    ):
        await wait_for(lambda: sub.health().subscription_alive)
        for _ in range(2):
            sim.emit(
                "tns1:VideoSource/ImageTooBright/ImagingService", {"State": "true"}, {"S": "v"}
            )
        sim.emit(MOTION, {"IsMotion": "true"})
        await wait_for(lambda: len(got) == 1)  # the unknown topic is no event of ours
    lines = [r.getMessage() for r in caplog.records if "unknown event topic" in r.getMessage()]
    assert len(lines) == 1 and "Image Too Bright (binary_sensor/problem) = True" in lines[0]


# --------------------------------------------------------------------------- the edge


async def test_webhook_camera_input_panic_reaches_police(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    port = free_port()
    async with (
        CameraSimulator(password=PASSWORD) as cam,
        PoliceReceiver(udp=False) as police,
        run_gateway(gateway_config(tmp_path, mosquitto.port, police.tcp_port)) as gw,
    ):
        cfg = camera_edge(tmp_path, mosquitto.port, cam.port)
        cameras = [cfg.cameras[0].model_copy(update={"events": "webhook"})]
        notify = NotifyListenerConfig(
            host="127.0.0.1", port=port, advertised_url=f"http://127.0.0.1:{port}"
        )
        cfg = cfg.model_copy(update={"cameras": cameras, "notify": notify})
        async with run_edge(cfg) as edge:
            await wait_for(gw.mqtt.connected.is_set)
            assert edge.notify is not None and edge.notify.port == port
            watcher = edge.cameras[CAM_ID]
            await wait_for(lambda: cam.push_subscriptions == 1, timeout=15, what="subscribed")
            assert isinstance(watcher.subscriber, NotifySubscriber)
            q = event_listener_queue(edge)
            cam.emit(DI, {"LogicalState": "true"}, {"InputToken": "DI_0"})
            ev = await next_of(q, "panic")
            assert (ev.device, ev.point, ev.zone_no) == (CAM_ID, "btn-at-cam", 31)
            await police.wait_for(lambda: any(m.code == "PA" for m in police.messages), timeout=10)
            cam.emit(DI, {"LogicalState": "false"}, {"InputToken": "DI_0"})
            assert (await next_of(q, "panic")).restore
            assert watcher.status().points["subscription"] == "started"
            assert "CreatePullPointSubscription" not in cam.requests
        # The edge's shutdown removed the push subscription from the camera.
        assert cam.active_subscriptions == 0


# --------------------------------------------------------------------------- driver fixes


@pytest.mark.parametrize("auth", ["digest", "basic"])
async def test_snapshot_asks_the_uri_once(auth: Any) -> None:
    async with CameraSimulator(password=PASSWORD, snapshot_auth=auth) as sim:
        async with camera(sim) as cam:
            for _ in range(3):
                assert await cam.snapshot("profile_main") == SNAPSHOT_JPEG
            assert await cam.snapshot("profile_sub") == SNAPSHOT_JPEG
        assert sim.requests["GetSnapshotUri"] == 2  # once per profile
        assert sim.snapshots == 4 and sim.auth_failures == 0


async def test_shutdown_while_a_subscription_is_being_created(sim: CameraSimulator) -> None:
    """The camera has created the subscription but not answered yet when shutdown comes."""
    gate = asyncio.Event()
    hold = False
    original = sim._create_pull_point

    async def slow_create(op: Any, request: Any) -> str:
        answer = await original(op, request)
        if hold:
            await gate.wait()  # the subscription exists on the camera; the answer is late
        return answer

    sim._create_pull_point = slow_create  # type: ignore[method-assign]
    async with camera(sim) as cam:
        sub = PullPointSubscriber(cam, timing=FAST_PULL)
        await sub.__aenter__()
        await wait_for(lambda: sim.pulls >= 1)
        hold = True
        sim.drop_subscriptions()  # the subscriber recreates...
        await wait_for(lambda: sim.subscriptions_created == 2, what="recreate under way")
        assert sim.active_subscriptions == 1
        stopping = asyncio.create_task(sub.shutdown())  # ...and is shut down meanwhile
        await wait_for(lambda: sub._task is None)
        gate.set()  # the camera answers
        await asyncio.wait_for(stopping, 10)
        assert sim.active_subscriptions == 0


async def test_shutdown_before_the_subscription_services_exist(sim: CameraSimulator) -> None:
    """CreatePullPointSubscription answered, the services for it not made yet."""
    gate = asyncio.Event()
    async with camera(sim) as cam:
        original = cam.lib.create_pullpoint_service

        async def slow_services() -> Any:
            await gate.wait()
            return await original()

        cam.lib.create_pullpoint_service = slow_services
        sub = PullPointSubscriber(cam, timing=FAST_PULL)
        await sub.__aenter__()
        await wait_for(lambda: sim.active_subscriptions == 1)
        await sub.shutdown()
        assert sim.active_subscriptions == 0
        gate.set()
