"""The police dispatch console (issue 8, part 3) in a real browser (Debian's Chromium through
Playwright) against real parts: Mosquitto, the gateway over HTTP and, where the campus must see
the dispatcher's steps, a real edge with the DI module simulator behind it."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, get_args

import cv2
import httpx
import numpy as np
from playwright.async_api import Browser, BrowserContext, Page

from contract import topics
from contract.config import GatewayConfig, parse_config
from contract.evidence import EvidenceHeader
from contract.models import (
    ALARM_KINDS,
    AlarmState,
    DeviceStatus,
    EdgeState,
    Severity,
    new_id,
    utcnow,
)
from edge.cameras import without_credentials
from edge.daemon import run_edge
from gateway.service import GatewayRuntime, run_gateway
from gateway.store.accounts import AccountStore
from gateway.web.dispatch import ACTIONS
from gateway.web.kit import HERE
from simulators.camera import CameraSimulator
from simulators.modbus_io import DIModuleSimulator
from tests.browser import chromium, login, needs_chromium, shot
from tests.edgekit import edge_config
from tests.gwkit import ACCOUNT, CAMPUS, client, make_event, publish_event
from tests.helpers import Mosquitto, wait_for
from tests.test_cameras_e2e import camera_edge
from webkit.passwords import hash_password

browser_needed = needs_chromium
OTHER = "campus-b"
PASSWORD = "dispatch-pw-123"
USERS = {
    "disp": ("dispatcher", ["*"], "张警官"),
    "dispa": ("dispatcher", [CAMPUS], "李警官"),
    "guard": ("guard", [CAMPUS], "王师傅"),
}
EVIL = "<img src=x onerror=alert(1)>东门"
CAM_PASSWORD = "cam-secret-9"


def centre_config(tmp: Path, broker: int, db_url: str | None = None) -> GatewayConfig:
    return parse_config(
        {
            "gateway": {
                "id": "gw-dispatch",
                "data_dir": str(tmp / "gw"),
                "http": {"host": "127.0.0.1", "port": 0},
            },
            "mqtt": {"host": "127.0.0.1", "port": broker, "keepalive": 5},
            "database": {"url": db_url or f"sqlite+aiosqlite:///{tmp}/gw/campusguard.db"},
            "campuses": [
                {
                    "id": CAMPUS,
                    "name": "黄村第一小学",
                    "account": ACCOUNT,
                    "address": "北京市大兴区黄村镇兴华大街 1 号",
                    "geo": {"lat": 39.7263, "lon": 116.3412},
                    "contacts": [
                        {"name": "陈校长", "role": "校长", "phone": "+86 10 6924 0001"},
                        {"name": "刘主任", "role": "安保主任", "phone": "13800138000"},
                    ],
                },
                {
                    "id": OTHER,
                    "name": "清源幼儿园",
                    "account": "5678",
                    "address": "北京市大兴区清源路 8 号",
                    "geo": {"lat": 39.7541, "lon": 116.3297},
                    "type": "kindergarten",
                },
            ],
        },
        GatewayConfig,
        "dispatch-test",
    )


@contextlib.asynccontextmanager
async def centre(
    mosquitto: Mosquitto, tmp: Path, db_url: str | None = None
) -> AsyncIterator[GatewayRuntime]:
    async with run_gateway(centre_config(tmp, mosquitto.port, db_url)) as gw:
        accounts = AccountStore(gw.store.engine)
        for name, (role, campuses, display) in USERS.items():
            await accounts.create_user(
                name, role, campuses, hash_password(PASSWORD), display=display
            )
        await wait_for(gw.mqtt.connected.is_set)
        yield gw


def base(gw: GatewayRuntime) -> str:
    return f"http://127.0.0.1:{gw.http_port}"


async def open_console(
    browser: Browser, gw: GatewayRuntime, user: str, **ctx: Any
) -> tuple[BrowserContext, Page]:
    context, page = await login(browser, base(gw), user, PASSWORD, "/dispatch", **ctx)
    await page.wait_for_selector("body[data-connected=yes]")
    return context, page


async def session(gw: GatewayRuntime, user: str) -> tuple[httpx.AsyncClient, str]:
    c = httpx.AsyncClient(base_url=base(gw), headers={"Origin": base(gw)})
    r = await c.post("/api/auth/login", json={"user": user, "password": PASSWORD})
    assert r.status_code == 200, r.text
    return c, str(r.json()["csrf"])


async def stored(gw: GatewayRuntime, alarm_id: str) -> None:
    await wait_for(lambda: gw.store.alarm(alarm_id), 10, f"alarm {alarm_id} stored")


def frames_of(lines: list[str]) -> list[dict[str, Any]]:
    return [json.loads(x[6:]) for x in lines if x.startswith("data: ")]


# --- without a browser -------------------------------------------------------------------------


def test_catalogues_have_the_same_keys() -> None:
    zh = json.loads((HERE / "i18n" / "dispatch.zh-CN.json").read_text(encoding="utf-8"))
    en = json.loads((HERE / "i18n" / "dispatch.en.json").read_text(encoding="utf-8"))
    assert zh.keys() == en.keys()
    assert all(k.startswith("dispatch.") for k in zh)
    # Every key a template or the script names is in the catalogue.
    used: set[str] = set()
    for path in [*(HERE / "templates").glob("dispatch*.html"), HERE / "static" / "dispatch.js"]:
        used |= set(re.findall(r"""["'](dispatch\.[a-z_.]+[a-z_])["']""", path.read_text()))
    used.discard("dispatch.alarm")  # the live frame's type
    assert used and used <= zh.keys(), used - zh.keys()
    # ... and so is every label built from a value: alarm kinds, states, severities.
    dynamic = {f"dispatch.kind.{k}" for k in ALARM_KINDS}
    dynamic |= {f"dispatch.state.{s}" for s in get_args(AlarmState)}
    dynamic |= {f"dispatch.sev.{s}" for s in get_args(Severity)}
    dynamic |= {f"dispatch.act.{a}" for a in ACTIONS}
    assert dynamic <= zh.keys(), dynamic - zh.keys()


def test_stream_urls_leave_the_campus_without_credentials() -> None:
    assert (
        without_credentials("rtsp://admin:s3cret@10.1.2.3:554/h264") == "rtsp://10.1.2.3:554/h264"
    )
    assert without_credentials("rtsp://10.1.2.3/live") == "rtsp://10.1.2.3/live"


async def test_a_camera_reports_its_zone_and_stream_without_credentials(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """The edge puts the camera's zone and RTSP URL (GetStreamUri, user and password taken out)
    in its retained status; the gateway stores it; the console lists it for the zone."""
    async with (
        CameraSimulator(password=CAM_PASSWORD) as cam,
        run_gateway(centre_config(tmp_path, mosquitto.port)) as gw,
        run_edge(camera_edge(tmp_path, mosquitto.port, cam.port, password=CAM_PASSWORD)),
    ):

        async def reported() -> dict[str, Any] | None:
            for d in await gw.store.devices(CAMPUS):
                if d.device == "cam-gate" and d.points.get("stream_url"):
                    return dict(d.points)
            return None

        points = await wait_for(reported, 15, "the camera's stream URL at the centre")
        assert points["zone"] == "gate"
        url = str(points["stream_url"])
        assert url.startswith("rtsp://127.0.0.1:") and "@" not in url
        assert CAM_PASSWORD not in url and "admin" not in url


async def test_dispatch_api_rules_audit_and_the_campus_gets_each_step(
    mosquitto: Mosquitto, tmp_path: Path, db_url: str
) -> None:
    """On SQLite and on PostgreSQL."""
    async with (
        centre(mosquitto, tmp_path, db_url) as gw,
        client(mosquitto.port, "campus-watch") as mq,
    ):
        await mq.subscribe(topics.alarm_status_topic(CAMPUS), qos=1)
        ev = make_event()
        drill = make_event(drill=True, severity="critical")
        other = make_event(campus=OTHER)
        for e in (ev, drill, other):
            await publish_event(mq, e)
        for e in (ev, drill, other):
            await stored(gw, e.id)
        disp, csrf = await session(gw, "disp")
        url = f"/api/alarms/{ev.id}/dispatch"
        async with contextlib.aclosing(disp):
            # A session without the CSRF token (or from another site) is refused.
            r = await disp.post(url, json={"state": "received"})
            assert r.status_code == 403 and "CSRF" in r.text
            r = await disp.post(
                url,
                json={"state": "received"},
                headers={"X-CSRF-Token": csrf, "Origin": "http://evil.example"},
            )
            assert r.status_code == 403
            h = {"X-CSRF-Token": csrf}
            r = await disp.post(url, json={"state": "received", "note": "110 接警"}, headers=h)
            assert r.json() == {"alarm_id": ev.id, "state": "police_received", "changed": True}
            r = await disp.post(url, json={"state": "received"}, headers=h)  # a repeat
            assert r.status_code == 200 and r.json()["changed"] is False
            r = await disp.post(url, json={"state": "dispatched"}, headers=h)
            assert r.json()["changed"] is True
            r = await disp.post(url, json={"state": "received"}, headers=h)
            assert r.status_code == 409  # no step back
            r = await disp.post(url, json={"state": "bogus"}, headers=h)
            assert r.status_code == 422
            # A drill is received and closed, never dispatched.
            r = await disp.post(
                f"/api/alarms/{drill.id}/dispatch", json={"state": "dispatched"}, headers=h
            )
            assert r.status_code == 409 and "drill" in r.text
            r = await disp.post(
                f"/api/alarms/{new_id()}/dispatch", json={"state": "received"}, headers=h
            )
            assert r.status_code == 404
        # A dispatcher of campus A does not learn campus B's alarm exists.
        dispa, csrf_a = await session(gw, "dispa")
        async with contextlib.aclosing(dispa):
            r = await dispa.post(
                f"/api/alarms/{other.id}/dispatch",
                json={"state": "received"},
                headers={"X-CSRF-Token": csrf_a},
            )
            assert r.status_code == 404
        # A guard reads the console but may not dispatch.
        guard, csrf_g = await session(gw, "guard")
        async with contextlib.aclosing(guard):
            r = await guard.post(url, json={"state": "on_scene"}, headers={"X-CSRF-Token": csrf_g})
            assert r.status_code == 403
            page = await guard.get("/dispatch")
            assert page.status_code == 200 and ev.id in page.text and other.id not in page.text
            assert 'class="act' not in (await guard.get(f"/dispatch/alarms/{ev.id}")).text
            assert (await guard.get(f"/dispatch/alarms/{other.id}")).status_code == 404
            assert other.id not in (await guard.get("/dispatch/queue")).text
        # The campus gets each step with who took it, over its MQTT downlink.
        seen: dict[str, str] = {}
        async with asyncio.timeout(10):
            async for msg in mq.messages:
                st = json.loads(bytes(msg.payload))  # type: ignore[arg-type]
                if st["alarm_id"] == ev.id and st.get("path") == "dispatch":
                    seen[st["state"]] = st["note"]
                if {"police_received", "dispatched"} <= seen.keys():
                    break
        assert seen["police_received"] == "by disp: 110 接警"
        assert seen["dispatched"] == "by disp"
        # Every step and every refusal is in the audit log.
        rows = await AccountStore(gw.store.engine).audit_log(action="alarms.dispatch")
        outcomes = sorted((r.outcome, r.detail) for r in rows if r.user == "disp")
        assert ("ok", "dispatched") in outcomes and ("ok", "received") in outcomes
        assert any(o == "refused" for o, _ in outcomes)


# --- in the browser ------------------------------------------------------------------------------


@browser_needed
async def test_alarm_appears_live_and_the_campus_sees_each_step(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    async with (
        DIModuleSimulator("adam-6050") as sim,
        centre(mosquitto, tmp_path) as gw,
        run_edge(edge_config(tmp_path, mosquitto.port, sim.port)) as edge,
        chromium() as browser,
    ):
        await wait_for(edge.uplink.connected.is_set)
        # A camera of the alarm's zone reports its stream (no credentials in it).
        async with client(mosquitto.port, "cam-status") as mq:
            cam = DeviceStatus(
                campus=CAMPUS,
                device="cam-gate",
                online=True,
                ts=utcnow(),
                points={"zone": "gate", "stream_url": "rtsp://10.20.0.11:554/Streaming/101"},
            )
            await mq.publish(
                topics.device_status_topic(CAMPUS, "cam-gate"), cam.model_dump_json(), qos=1
            )
            # An older alarm of the other campus, for a fuller picture.
            await publish_event(
                mq,
                make_event(
                    campus=OTHER, kind="intrusion", severity="high", location="北侧围墙", zone="n"
                ),
            )
        await wait_for(lambda: gw.store.devices(CAMPUS), 10, "camera status stored")

        _, page = await open_console(browser, gw, "disp")
        assert await page.locator("#open-list > .alarm-card").count() == 1
        assert await page.get_attribute("body", "data-sound") == "off"
        await sim.press(0, 0.005)
        card = page.locator("#open-list > .alarm-card[data-campus='test-campus']")
        await card.wait_for(timeout=5000)  # live, no reload
        alarm_id = await card.get_attribute("data-id")
        assert alarm_id
        # A new critical alarm: highlighted, sounding, on top, and shown in the panel.
        assert await card.get_attribute("data-alert") == "yes"
        await page.wait_for_selector("body[data-sound=on]", timeout=5000)
        first = page.locator("#open-list > .alarm-card").first
        assert await first.get_attribute("data-id") == alarm_id
        panel = page.locator(f"#detail-{alarm_id}")
        await panel.wait_for(timeout=5000)
        text = await panel.inner_text()
        for expected in (
            "黄村第一小学",
            "兴华大街",
            "陈校长",
            "13800138000",
            "一键报警",
            "39.70000",  # where the edge says it is
        ):
            assert expected in text, expected
        assert await panel.locator("svg.map circle.here").count() == 1
        assert await panel.locator("a.stream").inner_text() == (
            "rtsp://10.20.0.11:554/Streaming/101"
        )
        await shot(page, "dispatch-console.png")

        for state, alarm_state in (
            ("received", "police_received"),
            ("dispatched", "dispatched"),
            ("on_scene", "on_scene"),
        ):
            await panel.locator("input[name=note]").fill(f"note {state}")
            await panel.locator(f"button.act[data-state={state}]").click()
            step = f"#detail-{alarm_id} .timeline li[data-state={alarm_state}][data-path=dispatch]"
            await page.wait_for_selector(step, timeout=5000)
            assert f"by disp: note {state}" in await page.inner_text(step)
            if state == "received":
                # Received: the highlight and the sound stop.
                await page.wait_for_selector(f"#card-{alarm_id}[data-alert=no]", timeout=5000)
                await page.wait_for_selector("body[data-sound=off]", timeout=5000)
            # No step back: the buttons up to here are disabled.
            assert await page.locator(
                f"#detail-{alarm_id} button.act[data-state=received]"
            ).is_disabled()
        await page.locator(f"#detail-{alarm_id} button.act[data-state=closed]").click()
        await page.wait_for_selector(f"#closed-list > #card-{alarm_id}", timeout=5000)
        assert await page.locator(f"#open-list > #card-{alarm_id}").count() == 0

        # Each step reached the campus edge (what its guard console shows).
        async def at_edge() -> bool:
            states = {s for s, _, path, _ in await edge.outbox.alarm_statuses(alarm_id)}
            return {"police_received", "dispatched", "on_scene", "closed"} <= states

        await wait_for(at_edge, 10, "the steps at the edge")

        # English.
        await page.click("header.top .langs a[href='/lang/en']")
        await page.wait_for_selector("html[lang=en]")
        await page.wait_for_selector("body[data-connected=yes]")
        assert "Open alarms" in await page.inner_text("#queue")
        await page.locator(f"#card-{alarm_id}").click()
        await page.wait_for_selector(f"#detail-{alarm_id}")
        assert "Panic button" in await page.inner_text(f"#detail-{alarm_id}")
        assert "Closed" in await page.inner_text(f"#card-{alarm_id}")
        await shot(page, "dispatch-console-en.png")  # the closed alarm's whole timeline


@browser_needed
async def test_scope_read_only_drill_fault_and_snapshots(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    async with centre(mosquitto, tmp_path) as gw, chromium() as browser:
        _, page_a = await open_console(browser, gw, "dispa")
        _, page_g = await open_console(browser, gw, "guard")
        # The stream of the campus-A dispatcher, read as a plain SSE client.
        sse, _ = await session(gw, "dispa")
        lines: list[str] = []

        async def read_stream() -> None:
            async with sse.stream("GET", "/stream", timeout=None) as r:
                async for line in r.aiter_lines():
                    lines.append(line)

        reader = asyncio.create_task(read_stream())
        await wait_for(lambda: "retry: 2000" in lines, 5, "the SSE stream open")
        async with client(mosquitto.port, "pub") as mq:
            secret = make_event(campus=OTHER, location="campus B secret place")
            await publish_event(mq, secret)
            await stored(gw, secret.id)
            drill = make_event(drill=True, location=EVIL)
            await publish_event(mq, drill)
            await page_a.locator(f"#card-{drill.id}").wait_for(timeout=5000)
            await wait_for(lambda: any(drill.id in x for x in lines), 5, "drill frame")
        # Campus B's alarm reached neither the page nor the stream of a campus-A user.
        assert secret.id not in await page_a.content()
        assert not any(secret.id in x or "secret place" in x for x in lines)
        assert all(f["id"] != secret.id for f in frames_of(lines))
        # A drill is marked as one and never sounds.
        drill_card = page_a.locator(f"#card-{drill.id}")
        assert await drill_card.get_attribute("data-drill") == "yes"
        assert await drill_card.get_attribute("data-alert") == "no"
        assert await page_a.get_attribute("body", "data-sound") == "off"
        # Text from the campus is shown as text, never as markup.
        assert EVIL in await drill_card.inner_text()
        assert await drill_card.locator("img").count() == 0
        await drill_card.click()
        panel = page_a.locator(f"#detail-{drill.id}")
        await panel.wait_for()
        assert await panel.locator(".drill-note").count() == 1
        assert await panel.locator("button.act[data-state=dispatched]").is_disabled()

        # The guard: same campus, read-only, no buttons.
        await page_g.locator(f"#card-{drill.id}").wait_for(timeout=5000)
        await page_g.locator(f"#card-{drill.id}").click()
        await page_g.locator(f"#detail-{drill.id}").wait_for()
        assert await page_g.locator("form.actions, button.act").count() == 0
        assert await page_g.locator(".badge.readonly").count() == 1
        assert secret.id not in await page_g.content()

        # A snapshot: served to the console by session, campus-checked.
        img = np.zeros((240, 320, 3), np.uint8)
        cv2.putText(img, "CAM-GATE", (40, 130), cv2.FONT_HERSHEY_SIMPLEX, 1.5, (0, 0, 255), 3)
        jpeg = cv2.imencode(".jpg", img)[1].tobytes()
        header = EvidenceHeader(
            id=new_id(),
            campus=CAMPUS,
            edge="edge-1",
            event_id=drill.id,
            camera="cam-gate",
            shot=0,
            taken_at=datetime.now(UTC),
            content_type="image/jpeg",
            size=len(jpeg),
            sha256=hashlib.sha256(jpeg).hexdigest(),
        )
        assert await gw.vault.store(gw.store, header, jpeg)
        # The panel looks again for snapshots while the alarm is young.
        await page_a.locator(f"#detail-{drill.id} .shots img").wait_for(timeout=10000)
        r = await page_a.request.get(f"{base(gw)}/dispatch/evidence/{header.id}")
        assert r.status == 200 and (await r.body()) == jpeg
        async with httpx.AsyncClient(base_url=base(gw)) as anon:
            r2 = await anon.get(f"/dispatch/evidence/{header.id}")
            assert r2.status_code in (303, 401)

        # A campus edge that goes offline: a transmission-path fault of its own kind, then its
        # restore on the same card.
        async with client(mosquitto.port, "edge-state") as mq:
            for online in (True, False):
                st = EdgeState(campus=CAMPUS, edge="edge-1", online=online, ts=utcnow())
                await mq.publish(
                    topics.edge_state_topic(CAMPUS), st.model_dump_json(), qos=1, retain=True
                )
            fault = page_a.locator("#open-list > .alarm-card[data-kind=transmission_fault]")
            await fault.wait_for(timeout=10000)
            assert await fault.locator(".badge.fault").count() == 1
            st = EdgeState(campus=CAMPUS, edge="edge-1", online=True, ts=utcnow())
            await mq.publish(
                topics.edge_state_topic(CAMPUS), st.model_dump_json(), qos=1, retain=True
            )
            await fault.locator(".badge.restore").wait_for(timeout=10000)
        await shot(page_a, "dispatch-console-scope.png")
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
        await sse.aclose()
