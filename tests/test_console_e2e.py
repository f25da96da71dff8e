"""The guard console in a real browser (Debian's Chromium through Playwright, never a browser
download) against a real edge: the DI module simulator, real Mosquitto, and where the test needs
them the gateway with the police receiver, the bollard simulator and the camera simulator."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, BrowserContext, Page

from contract.config import EdgeConfig, parse_config
from edge.console.auth import hash_password
from edge.daemon import EdgeRuntime, run_edge
from gateway.service import run_gateway
from simulators.bollard import BollardSimulator
from simulators.camera import CameraSimulator
from simulators.modbus_io import DIModuleSimulator
from simulators.police import PoliceReceiver
from tests.browser import chromium, needs_chromium, shot
from tests.browser import login as browser_login
from tests.gwkit import CAMPUS, gateway_config
from tests.helpers import Mosquitto, free_port, wait_for

pytestmark = needs_chromium

PASSWORD = "booth-pw-1"
HASH = hash_password(PASSWORD)
EVIL_LOCATION = "<b>east</b><script>alert(1)</script>"
CAM_PASSWORD = "campus-cam-pw"


def console_edge(
    tmp: Path,
    broker: int,
    modbus: int,
    *,
    bollard_port: int | None = None,
    camera_port: int | None = None,
    session_minutes: float = 480,
    language: str = "zh-CN",
) -> EdgeConfig:
    data: dict[str, Any] = {
        "campus": {"id": CAMPUS, "name": "Test school", "geo": {"lat": 39.7, "lon": 116.3}},
        "edge": {"id": "edge-1", "data_dir": str(tmp / "edge"), "status_interval": 1},
        "mqtt": {"host": "127.0.0.1", "port": broker, "keepalive": 5},
        "zones": [
            {"id": "gate", "name": "南门", "location": "south gate", "plan": {"x": 0.5, "y": 0.9}},
            {"id": "hall", "name": "教学楼", "plan": {"x": 0.3, "y": 0.3}},
        ],
        "devices": [
            {
                "id": "di-1",
                "profile": "adam-6050",
                "host": "127.0.0.1",
                "port": modbus,
                "poll_interval": 0.05,
                "timeout": 0.3,
                "zone": "gate",
                "location": EVIL_LOCATION,
                "inputs": [
                    {"channel": 0, "id": "btn-guard", "kind": "panic", "alarm_zone": 1},
                    {
                        "channel": 1,
                        "id": "btn-hall",
                        "kind": "panic",
                        "alarm_zone": 2,
                        "zone": "hall",
                    },
                ],
            }
        ],
        "test_signal": {"enabled": False},
        "console": {
            "enabled": True,
            "port": 0,
            "session_minutes": session_minutes,
            "language": language,
            "users": [
                {"user": "wang", "name": "王师傅", "role": "guard", "password_hash": HASH},
                {"user": "li", "name": "李队长", "role": "supervisor", "password_hash": HASH},
            ],
            "procedures": {
                "panic": ["确认报警位置", "拨打110并报告校名", "锁闭校门，疏导学生"],
            },
        },
    }
    if bollard_port is not None:
        data["bollards"] = [
            {
                "id": "gate-plc",
                "host": "127.0.0.1",
                "port": bollard_port,
                "poll_interval": 0.05,
                "timeout": 0.3,
                "zone": "gate",
                "location": "南门车道",
                "rules": {"travel_time": 0.4, "margin": 0.4, "efo_travel_time": 0.2},
                "bollards": [
                    {"index": 0, "id": "b-left", "alarm_zone": 21},
                    {"index": 1, "id": "b-right", "alarm_zone": 22},
                ],
            }
        ]
    if camera_port is not None:
        data["cameras"] = [
            {
                "id": "cam-gate",
                "host": "127.0.0.1",
                "port": camera_port,
                "username": "admin",
                "password": CAM_PASSWORD,
                "timeout": 3,
                "zone": "gate",
            }
        ]
    return parse_config(data, EdgeConfig, "console-test")


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with chromium() as b:
        yield b


def base(edge: EdgeRuntime) -> str:
    return f"http://127.0.0.1:{edge.console_port}"


async def login(
    browser: Browser, edge: EdgeRuntime, user: str = "wang", **ctx: Any
) -> tuple[BrowserContext, Page]:
    context, page = await browser_login(
        browser, base(edge), user, PASSWORD, "/board", viewport=(1366, 768), **ctx
    )
    await page.wait_for_selector("body[data-live=yes]")
    return context, page


async def test_press_alarm_sound_ack_police_status(
    mosquitto: Mosquitto, tmp_path: Path, browser: Browser
) -> None:
    async with (
        DIModuleSimulator("adam-6050") as sim,
        PoliceReceiver(udp=False) as police,
        run_gateway(gateway_config(tmp_path, mosquitto.port, police.tcp_port)) as gw,
    ):
        await wait_for(gw.mqtt.connected.is_set)
        async with run_edge(console_edge(tmp_path, mosquitto.port, sim.port)) as edge:
            await wait_for(edge.uplink.connected.is_set)
            _, page = await login(browser, edge)
            assert await page.get_attribute("body", "data-sound") == "off"
            await sim.press(0, 0.005)
            card = page.locator(".alarm[data-state=new]")
            await card.wait_for(timeout=5000)
            await page.wait_for_selector("body[data-sound=on]", timeout=5000)
            assert await page.get_attribute("#sound-indicator", "data-sound") == "on"
            text = await card.inner_text()
            assert "一键报警" in text and "南门" in text and "拨打110" in text
            # The device's location is shown as text, never as markup.
            assert EVIL_LOCATION in text
            assert await page.locator(".alarm script, .alarm .where b").count() == 0
            # The campus plan marks the alarm's zone.
            assert await card.locator("g.zone.hit[data-zone=gate]").count() == 1
            # The police status arrives on the card as the centre reports it.
            await card.locator("li[data-state=police_received]").wait_for(timeout=10000)
            await shot(page, "console-board.png")
            # A tablet held upright: one column, nothing cut off.
            await page.set_viewport_size({"width": 800, "height": 1280})
            await shot(page, "console-board-tablet.png")
            assert await page.evaluate("document.documentElement.scrollWidth <= 800")
            await page.set_viewport_size({"width": 1366, "height": 768})
            alarm_id = await card.get_attribute("data-id")
            assert alarm_id
            await card.locator("input[name=note]").first.fill("<i>保安已到场</i>")
            await card.locator(".btn-ack").click()
            await page.wait_for_selector("body[data-sound=off]", timeout=5000)
            acked = page.locator(f"#alarm-{alarm_id}")
            await page.wait_for_selector(f"#alarm-{alarm_id}[data-state=acknowledged]")
            assert "<i>保安已到场</i>" in await acked.locator("q.note").inner_text()
            # The centre hears of it: the alarm's record has the guard's acknowledgement ...
            found = await wait_for(
                lambda: _acked_at_centre(gw, alarm_id), timeout=10, what="guard ack at centre"
            )
            assert found
            # ... and sends the step back, shown on the card like the police steps.
            await acked.locator("li[data-state=guard_acknowledged]").wait_for(timeout=10000)
            # Close with a disposition.
            await acked.locator("select[name=disposition]").select_option("false_alarm")
            await acked.locator(".btn-close").click()
            await page.wait_for_selector(f"#alarm-{alarm_id}[data-state=closed]")
            await wait_for(lambda: _closed_at_centre(gw, alarm_id), timeout=10)
            entries = await edge.console.store.audit_log() if edge.console else []
            actions = [e.action for e in entries]
            assert {"login", "alarm_acknowledged", "alarm_closed"} <= set(actions)


async def _acked_at_centre(gw: Any, alarm_id: str) -> bool:
    found = await gw.store.alarm(alarm_id)
    return found is not None and found[0].guard_ack_at is not None


async def _closed_at_centre(gw: Any, alarm_id: str) -> bool:
    found = await gw.store.alarm(alarm_id)
    return found is not None and found[0].closed_at is not None


async def test_bollard_raise_arm_confirm_with_gate_camera(
    mosquitto: Mosquitto, tmp_path: Path, browser: Browser
) -> None:
    async with (
        DIModuleSimulator("adam-6050") as sim,
        BollardSimulator(bollards=2, travel_time=0.4, efo_travel_time=0.2) as plc,
        CameraSimulator(password=CAM_PASSWORD) as cam,
    ):
        cfg = console_edge(
            tmp_path, mosquitto.port, sim.port, bollard_port=plc.port, camera_port=cam.port
        )
        async with run_edge(cfg) as edge:
            poller = edge.bollards["gate-plc"]
            await wait_for(lambda: poller.state_of("b-left") == "down")
            await wait_for(lambda: edge.cameras["cam-gate"].online is True, timeout=15)
            _, page = await login(browser, edge)
            await page.click("nav a[href='/bollards']")
            row = page.locator("#bollard-gate-plc-0")
            await row.wait_for()
            assert await row.get_attribute("data-state") == "down"
            # The gate's camera picture beside the buttons, fresh from the camera.
            img = row.locator("img.gate-cam")
            await page.wait_for_function(
                "() => { const i = document.querySelector('#bollard-gate-plc-0 img.gate-cam');"
                " return i && i.complete && i.naturalWidth > 0; }"
            )
            assert await img.count() == 1
            await row.locator("button[data-action=raise]").click()
            # Armed: nothing moves until the guard confirms.
            await row.locator(".confirm:not([hidden]) .btn-confirm").wait_for(timeout=5000)
            assert plc.state(0).position == 0.0
            await page.wait_for_function(
                "() => [...document.querySelectorAll('img.gate-cam')]"
                ".every(i => i.complete && i.naturalWidth > 0)"
            )
            await shot(page, "console-bollards.png")
            await page.locator("#bollard-gate-plc-0 .btn-confirm").click()
            await page.wait_for_selector("#bollard-gate-plc-0[data-state=up]", timeout=5000)
            assert poller.state_of("b-left") == "up"
            # A refusal is explained: a raise with a vehicle on the loop.
            plc.set_vehicle_loop(1, True)
            await wait_for(lambda: poller.trackers["b-right"].vehicle_loop is True)
            await page.locator("#bollard-gate-plc-1 button[data-action=raise]").click()
            err = page.locator("#bollard-gate-plc-1 .form-error:not([hidden])")
            await err.wait_for(timeout=5000)
            assert "地感有车" in await err.inner_text()
            assert plc.state(1).position == 0.0
            # An alarm at the gate carries the gate camera's snapshot, served behind the login.
            await page.click("nav a[href='/board']")
            await sim.press(0, 0.005)
            await page.wait_for_function(
                "() => { const i = document.querySelector('.alarm .evidence img');"
                " return i && i.complete && i.naturalWidth > 0; }",
                timeout=15000,
            )
            src = await page.locator(".alarm .evidence img").first.get_attribute("src")
            assert src
            async with httpx.AsyncClient() as http:
                assert (await http.get(base(edge) + src)).status_code == 303  # no session


async def test_uplink_banner_and_devices(tmp_path: Path, browser: Browser) -> None:
    broker = Mosquitto(tmp_path / "broker")
    broker.start()
    try:
        async with (
            DIModuleSimulator("adam-6050") as sim,
            run_edge(console_edge(tmp_path, broker.port, sim.port, language="en")) as edge,
        ):
            await wait_for(edge.uplink.connected.is_set)
            await wait_for(lambda: edge.pollers["di-1"].online is True)
            _, page = await login(browser, edge)
            await page.click("nav a[href='/devices']")
            await page.wait_for_selector("#devices tr[data-device=di-1][data-online=yes]")
            # The device's location is text, not markup.
            loc = await page.locator("#devices tr[data-device=di-1] td.loc").inner_text()
            assert loc == EVIL_LOCATION
            assert await page.locator("#uplink-banner").count() == 0
            broker.stop()
            banner = page.locator("#uplink-banner")
            await banner.wait_for(timeout=15000)
            assert "queued" in await banner.inner_text()
            # An alarm while cut off: on screen at once, and counted as waiting.
            await sim.press(0, 0.005)
            await page.locator(".banner-unacked").wait_for(timeout=5000)
            await page.wait_for_function(
                "() => /\\(([1-9][0-9]*) waiting\\)/.test("
                "document.querySelector('#uplink-banner').textContent)",
                timeout=5000,
            )
            await sim.unplug("refuse")
            await page.wait_for_selector(
                "#devices tr[data-device=di-1][data-online=no]", timeout=5000
            )
            # Offline devices first.
            first = page.locator("#devices tbody tr").first
            assert await first.get_attribute("data-online") == "no"
            await shot(page, "console-devices.png")
            await sim.plug()
            broker.start()
            await page.wait_for_selector("#uplink-banner", state="detached", timeout=20000)
            # Chinese is one click away, on every screen.
            await page.click("header .langs a[href='/lang/zh-CN']")
            await page.wait_for_selector("html[lang=zh-CN]")
            assert "设备" in await page.locator("header nav").inner_text()
    finally:
        broker.stop()


async def test_drill_banner_start_end(
    mosquitto: Mosquitto, tmp_path: Path, browser: Browser
) -> None:
    async with (
        DIModuleSimulator("adam-6050") as sim,
        run_edge(console_edge(tmp_path, mosquitto.port, sim.port)) as edge,
    ):
        assert edge.drills is not None
        # A guard has no drill buttons; a supervisor has.
        _, guard = await login(browser, edge, "wang")
        assert await guard.locator("#drill-start").count() == 0
        _, page = await login(browser, edge, "li")
        await page.select_option("#drill-start select[name=kind]", "fire")
        await page.click("#drill-start button[type=submit]")
        for p in (page, guard):
            await p.locator("#drill-banner").wait_for(timeout=5000)
        assert "演练进行中" in await guard.locator("#drill-banner").inner_text()
        # An alarm during the drill is marked as one.
        await sim.press(0, 0.005)
        card = guard.locator(".alarm[data-drill=yes]")
        await card.wait_for(timeout=5000)
        assert "演练" in await card.locator(".badge-drill").inner_text()
        # Every screen shows the banner.
        await guard.click("nav a[href='/devices']")
        await guard.locator("#drill-banner").wait_for()
        await page.click("#drill-end")
        await guard.wait_for_selector("#drill-banner", state="detached", timeout=5000)
        assert edge.drills.current is None
        # The supervisor's audit log has who did what; a guard may not read it.
        await page.goto(base(edge) + "/audit")
        audit = await page.locator("table.audit").inner_text()
        assert "drill_start" in audit and "drill_end" in audit and "li" in audit
        r = await guard.request.get(base(edge) + "/audit")
        assert r.status == 403


async def test_bad_input(mosquitto: Mosquitto, tmp_path: Path, browser: Browser) -> None:
    async with (
        DIModuleSimulator("adam-6050") as sim,
        run_edge(console_edge(tmp_path, mosquitto.port, sim.port)) as edge,
    ):
        url = base(edge)
        context = await browser.new_context()
        page = await context.new_page()
        # Wrong password: one generic message, the same for an unknown user.
        messages = set()
        for user in ("wang", "nobody"):
            await page.goto(url + "/login")
            await page.fill("input[name=user]", user)
            await page.fill("input[name=password]", "wrong")
            await page.click("button[type=submit]")
            messages.add(await page.locator("#login-error").inner_text())
        assert messages == {"用户名或密码错误。"}
        await shot(page, "console-login.png")
        # Rate limit: five failures for a user, then even the right password waits.
        for _ in range(4):
            await page.fill("input[name=user]", "wang")
            await page.fill("input[name=password]", "wrong")
            await page.click("button[type=submit]")
        await page.fill("input[name=user]", "wang")
        await page.fill("input[name=password]", PASSWORD)
        await page.click("button[type=submit]")
        assert "尝试次数过多" in await page.locator("#login-error").inner_text()
        assert page.url.endswith("/login")

        # Two guards acknowledge the same alarm at once: one wins, the other is told who.
        ctx_a, a = await login(browser, edge, "li")
        ctx_b, b = await login(browser, edge, "li", extra_http_headers={"X-Forwarded-For": "other"})
        await sim.press(0, 0.005)
        for p in (a, b):
            await p.locator(".alarm[data-state=new]").wait_for(timeout=5000)
        # Both submit in the same instant (a click waits for actionability, which the
        # winner's live update may take away first).
        submit = "document.querySelector('.alarm[data-state=new] .ack-form').requestSubmit()"
        await asyncio.gather(a.evaluate(submit), b.evaluate(submit))
        await wait_for(
            lambda: a.locator(".alarm[data-state=acknowledged]").count(), what="ack on a"
        )

        async def one_told() -> bool:
            texts = [
                await p.locator(".alarm .form-error:not([hidden])").all_inner_texts()
                for p in (a, b)
            ]
            return sorted(len(t) for t in texts) == [0, 1]

        await wait_for(one_told, timeout=5, what="one guard told")
        told = [
            await p.locator(".alarm .form-error:not([hidden])").all_inner_texts() for p in (a, b)
        ]
        assert any("已由 li 确认" in t for ts in told for t in ts), told
        # HTML in a note is shown as text.
        note = "<img src=x onerror=alert(1)>note"
        await a.locator(".alarm .close-form input[name=note]").fill(note)
        await a.locator(".alarm .btn-close").click()
        await a.wait_for_selector(".alarm[data-state=closed]")
        assert note in await a.locator(".alarm p.closed q.note").inner_text()
        assert await a.locator(".alarm img[src=x]").count() == 0
        audit = await edge.console.store.audit_log() if edge.console else []
        assert [e.action for e in audit].count("alarm_acknowledged") == 1

        # A cross-site POST with the guard's cookie is refused, so is one without the token.
        alarm_id = await a.locator(".alarm").first.get_attribute("data-id")
        r = await a.request.post(
            f"{url}/alarms/{alarm_id}/close",
            form={"disposition": "real", "note": "x"},
            headers={"Origin": "http://evil.example"},
        )
        assert r.status == 403
        r = await a.request.post(
            f"{url}/alarms/{alarm_id}/close",
            form={"disposition": "real", "note": "x"},
            headers={"Origin": url},
        )
        assert r.status == 403
        # A form on another site posting here (the browser sends its own Origin).
        evil_port = free_port()
        await a.route(
            f"http://127.0.0.1:{evil_port}/",
            lambda route: route.fulfill(
                content_type="text/html",
                body=(
                    f'<form id=f method=post action="{url}/drill/end"></form>'
                    "<script>document.getElementById('f').submit()</script>"
                ),
            ),
        )
        async with a.expect_response(f"{url}/drill/end") as resp_info:
            await a.goto(f"http://127.0.0.1:{evil_port}/")
        assert (await resp_info.value).status == 403
        await ctx_a.close()
        await ctx_b.close()

        # Without a session every page leads to the login.
        async with httpx.AsyncClient() as http:
            r = await http.get(url + "/board")
            assert r.status_code == 303 and r.headers["location"].startswith("/login")


async def test_session_expires(mosquitto: Mosquitto, tmp_path: Path, browser: Browser) -> None:
    async with (
        DIModuleSimulator("adam-6050") as sim,
        run_edge(console_edge(tmp_path, mosquitto.port, sim.port, session_minutes=0.05)) as edge,
    ):
        _, page = await login(browser, edge)
        await asyncio.sleep(3.5)  # past the 3 s idle limit (the limit is the point here)
        await page.goto(base(edge) + "/devices")
        assert "/login" in page.url
        await page.locator("#login-expired").wait_for()
