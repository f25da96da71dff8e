"""The technician, inspector and admin consoles (issue 8, parts 4, 5 and the admin pages of
part 2) in a real browser (Debian's Chromium through Playwright) against real parts: Mosquitto,
the gateway over HTTP, a DC-09 police receiver and, for the self-test, a real edge with the DI
module simulator behind it. Device states arrive as real status messages over MQTT."""

from __future__ import annotations

import contextlib
import csv
import functools
import io
import json
import re
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiomqtt
import httpx
import pytest
from playwright.async_api import Browser, BrowserContext, Page, expect

from contract import topics
from contract.config import GatewayConfig, parse_config
from contract.models import DeviceStatus, utcnow
from edge.daemon import run_edge
from gateway.selftest import HOPS
from gateway.service import GatewayRuntime, run_gateway
from gateway.store.accounts import AccountStore
from gateway.web.kit import HERE
from gateway.web.technician import STATES
from simulators.modbus_io import DIModuleSimulator
from simulators.police import PoliceReceiver
from tests.browser import chromium, login, needs_chromium, shot
from tests.gwkit import ACCOUNT, CAMPUS, client
from tests.helpers import Mosquitto, wait_for
from tests.test_selftest import edge_cfg
from webkit.passwords import hash_password

pytestmark = needs_chromium
OTHER = "campus-b"
PASSWORD = "console-pw-123"
USERS = {
    "tech": ("technician", ["*"], "赵工"),
    "techa": ("technician", [CAMPUS], "钱工"),
    "insp": ("inspector", ["*"], "孙督学"),
    "root": ("admin", ["*"], "管理员"),
}
CATALOGUES = {"tech": "technician", "insp": "inspector", "admin": "admin"}


def centre_config(tmp: Path, broker: int, police: int | None) -> GatewayConfig:
    data: dict[str, Any] = {
        "gateway": {
            "id": "gw-tech",
            "data_dir": str(tmp / "gw"),
            "http": {"host": "127.0.0.1", "port": 0},
        },
        "mqtt": {"host": "127.0.0.1", "port": broker, "keepalive": 5},
        "database": {"url": f"sqlite+aiosqlite:///{tmp}/gw/campusguard.db"},
        "campuses": [
            {"id": CAMPUS, "name": "黄村第一小学", "account": ACCOUNT},
            {"id": OTHER, "name": "清源幼儿园", "account": "5678", "type": "kindergarten"},
        ],
    }
    if police is not None:
        data["dc09"] = {
            "primary": {"host": "127.0.0.1", "port": police, "transport": "tcp"},
            "ack_timeout": 0.5,
            "attempts": 2,
            "supervision_interval": 0.5,
        }
    return parse_config(data, GatewayConfig, "tech-console-test")


@contextlib.asynccontextmanager
async def centre(
    mosquitto: Mosquitto, tmp: Path, police: int | None = None
) -> AsyncIterator[GatewayRuntime]:
    async with run_gateway(centre_config(tmp, mosquitto.port, police)) as gw:
        accounts = AccountStore(gw.store.engine)
        for name, (role, campuses, display) in USERS.items():
            await accounts.create_user(
                name, role, campuses, hash_password(PASSWORD), display=display
            )
        await wait_for(gw.mqtt.connected.is_set)
        yield gw


def base(gw: GatewayRuntime) -> str:
    return f"http://127.0.0.1:{gw.http_port}"


async def open_as(
    browser: Browser, gw: GatewayRuntime, user: str, lands: str, password: str = PASSWORD
) -> tuple[BrowserContext, Page]:
    return await login(
        browser, base(gw), user, password, lands, viewport=(1440, 1000), accept_downloads=True
    )


async def status(mq: aiomqtt.Client, campus: str, device: str, online: bool, **kw: Any) -> None:
    st = DeviceStatus(
        campus=campus,
        device=device,
        online=online,
        ts=kw.pop("ts", utcnow()),
        last_response=kw.pop("last_response", None),
        **kw,
    )
    await mq.publish(topics.device_status_topic(campus, device), st.model_dump_json(), qos=1)


async def outages_of(gw: GatewayRuntime, device: str) -> int:
    _, outages, _ = await gw.store.uptime_inputs(
        utcnow() - timedelta(days=1), utcnow() + timedelta(seconds=1), None
    )
    return len([o for o in outages if o.device == device])


async def stored(gw: GatewayRuntime, device: str, outages: int) -> None:
    """Wait until the centre has stored this many outages of the device."""

    async def enough() -> bool:
        return await outages_of(gw, device) >= outages

    await wait_for(enough, 10, f"{outages} outage(s) of {device} stored")


# --- without a browser -------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", sorted(CATALOGUES))
def test_catalogues_have_the_same_keys(prefix: str) -> None:
    zh = json.loads((HERE / "i18n" / f"{prefix}.zh-CN.json").read_text(encoding="utf-8"))
    en = json.loads((HERE / "i18n" / f"{prefix}.en.json").read_text(encoding="utf-8"))
    assert zh.keys() == en.keys()
    assert all(k.startswith(f"{prefix}.") for k in zh)
    assert all(v.strip() for v in [*zh.values(), *en.values()])
    # Every key a template or the script names is in the catalogue ...
    name = CATALOGUES[prefix]
    used: set[str] = set()
    files = [*(HERE / "templates").glob(f"{name}*.html"), HERE / "static" / f"{name}.js"]
    for path in files:
        used |= set(re.findall(rf"""["']({prefix}\.[a-z_.]+[a-z_])["']""", path.read_text()))
    assert used and used <= zh.keys(), used - zh.keys()
    # ... and so is every label built from a value.
    dynamic: set[str] = set()
    if prefix == "tech":
        dynamic |= {f"tech.state.{s}" for s in STATES}
        dynamic |= {f"tech.mw.st.{s}" for s in ("active", "planned", "ended")}
        dynamic |= {f"tech.js.hop.{h}" for h in HOPS}
        dynamic |= {f"tech.js.selftest.{s}" for s in ("running", "passed", "failed")}
        dynamic |= {"tech.police.path.primary", "tech.police.path.backup"}
    elif prefix == "insp":
        dynamic |= {"insp.freq.monthly", "insp.freq.quarterly", "insp.freq.days"}
    else:
        dynamic |= {f"admin.outcome.{o}" for o in ("ok", "denied", "failed")}
    assert dynamic <= zh.keys(), dynamic - zh.keys()


def test_no_inline_scripts_or_styles() -> None:
    """The CSP forbids them: every script and style comes from /static."""
    for name in CATALOGUES.values():
        for path in (HERE / "templates").glob(f"{name}*.html"):
            text = path.read_text()
            assert "<style" not in text and " style=" not in text, path
            assert not re.search(r"<script(?![^>]*\bsrc=)", text), path
            assert not re.search(r"\son[a-z]+=", text), path


# --- the technician ----------------------------------------------------------------------------


async def test_technician_sees_health_runs_selftest_and_maintenance(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    async with (
        DIModuleSimulator("adam-6050") as sim,
        PoliceReceiver(udp=False) as police,
    ):
        assert police.tcp_port is not None
        async with (
            centre(mosquitto, tmp_path, police.tcp_port) as gw,
            run_edge(edge_cfg(tmp_path, mosquitto.port, sim.port)) as edge,
            client(mosquitto.port, "tech-test") as mq,
            chromium() as browser,
        ):
            await wait_for(edge.uplink.connected.is_set)
            now = utcnow()
            # A camera that stopped answering, and a bell that keeps dropping out and back.
            await status(mq, CAMPUS, "cam-dead", False, ts=now - timedelta(minutes=10))
            for i, online in enumerate((True, False, True, False, True)):
                ts = now - timedelta(minutes=5) + timedelta(seconds=i * 20)
                await status(mq, CAMPUS, "di-flap", online, ts=ts, last_response=ts, latency_ms=3)
            await status(mq, OTHER, "other-cam", False, ts=now - timedelta(minutes=3))
            await stored(gw, "di-flap", 2)
            await stored(gw, "other-cam", 1)
            await wait_for(functools.partial(_online, gw, "di-1"), 15, "di-1 online at the centre")

            ctx, page = await open_as(browser, gw, "tech", "/technician")
            rows = page.locator("tr.device")
            # Offline first, then the flapping one, then the rest.
            await expect(rows.first).to_have_attribute("data-state", "offline")
            states = [str(await r.get_attribute("data-state")) for r in await rows.all()]
            assert states == sorted(
                states, key=lambda s: ["offline", "flapping", "online"].index(s)
            )
            assert states.count("offline") == 2
            flap = page.locator("tr.device[data-device=di-flap]")
            await expect(flap).to_have_attribute("data-state", "flapping")
            await expect(flap.locator(".badge.state")).to_have_text("频繁掉线")
            await expect(page.locator("tr.device[data-device=di-1]")).to_have_attribute(
                "data-state", "online"
            )
            # The campus link and the police path.
            await expect(page.locator(f"tr.edge[data-campus={CAMPUS}]")).to_have_class(
                re.compile(r"\bonline\b")
            )
            await expect(page.locator("li.path[data-path=primary]")).to_have_attribute(
                "data-ok", "yes"
            )
            # Filters: the state and the campus.
            await page.select_option("#filter-state", "offline")
            await page.wait_for_url("**state=offline**")
            assert {await r.get_attribute("data-state") for r in await rows.all()} == {"offline"}
            await page.select_option("#filter-campus", OTHER)
            await page.wait_for_url(f"**campus={OTHER}**")
            await expect(rows).to_have_count(1)
            await expect(rows.first).to_have_attribute("data-device", "other-cam")
            await page.goto(base(gw) + "/technician")

            # Self-test of di-1: every hop timed, PASSED.
            await page.click("tr.device[data-device=di-1] button.selftest-run")
            verdict = page.locator("#selftest-verdict")
            await expect(verdict).to_have_attribute("data-state", "passed", timeout=20000)
            await expect(verdict).to_have_text("通过")
            hops = page.locator("#selftest-hops tr")
            await expect(hops).to_have_count(len(HOPS))
            for i in range(len(HOPS)):
                assert "毫秒" in (await hops.nth(i).locator("td").nth(2).inner_text())
            await expect(page.locator("#selftest-hops tr.done")).to_have_count(len(HOPS))
            # The police's ACK of the self-test is the path's last ACK (the live refresh).
            await expect(page.locator("li.path[data-path=primary] time.ago")).to_have_count(
                1, timeout=15000
            )
            await shot(page, "technician-console.png", full=True)

            # A maintenance window on the dead camera: created, listed, ended.
            form = page.locator("#mw-form")
            await form.locator("select[name=campus]").select_option(CAMPUS)
            await form.locator("input[name=device]").fill("cam-dead")
            await form.locator("input[name=reason]").fill("更换摄像机电源")
            await form.locator("button[type=submit]").click()
            window = page.locator("tr.mw", has_text="更换摄像机电源")
            await expect(window).to_have_class(re.compile(r"\bmw-active\b"))
            await expect(
                page.locator("tr.device[data-device=cam-dead] .badge.drill")
            ).to_be_visible()
            await window.locator("button.mw-end").click()
            await expect(page.locator("tr.mw", has_text="更换摄像机电源")).to_have_class(
                re.compile(r"\bmw-ended\b")
            )
            # ... and the report leaves it out of availability: the camera was down all along,
            # so the counted time is the period without the window, all of it down.
            lo, hi = (now - timedelta(hours=1)).isoformat(), utcnow().isoformat()
            r = await page.request.get(
                base(gw) + "/api/reports/uptime", params={"start": lo, "end": hi}
            )
            assert r.status == 200, await r.text()
            dead = next(d for d in (await r.json())["devices"] if d["device"] == "cam-dead")
            assert dead["maintenance_s"] > 0
            assert dead["downtime_s"] == pytest.approx(
                dead["period_s"] - dead["maintenance_s"], abs=1
            )
            assert dead["availability"] == 0

            # The device page: 30 daily bars and the outage.
            await page.click("tr.device[data-device=cam-dead] a")
            await page.wait_for_url("**/technician/device/**/cam-dead")
            await expect(page.locator("svg.uptime-chart rect.bar")).to_have_count(30)
            await expect(page.locator("svg.uptime-chart rect.bar.bad")).to_have_count(1)
            await expect(page.locator("tr.outage")).to_have_count(1)
            await expect(page.locator("tr.outage .badge.alarm")).to_be_visible()

            # The police receiver goes down: the console shows the path down (live refresh).
            await page.goto(base(gw) + "/technician")
            await police.stop()
            await expect(page.locator("li.path[data-path=primary]")).to_have_attribute(
                "data-ok", "no", timeout=20000
            )
            await expect(page.locator("li.path[data-path=primary] .path-state")).to_have_text(
                "中断"
            )
            await ctx.close()

            # A technician of campus A only never sees campus B.
            ctx, page = await open_as(browser, gw, "techa", "/technician")
            await expect(page.locator("tr.device").first).to_be_visible()
            body = await page.content()
            assert "other-cam" not in body and "清源幼儿园" not in body
            for url in (
                f"/technician?campus={OTHER}",
                f"/technician/device/{OTHER}/other-cam",
                f"/technician/health?campus={OTHER}",
            ):
                answer = await page.goto(base(gw) + url)
                assert answer is not None and answer.status == 404, url
            r2 = await page.request.post(
                base(gw) + "/api/maintenance",
                data={"campus": OTHER, "reason": "x"},
                headers={
                    "X-CSRF-Token": await _csrf(page, gw),
                    "Origin": base(gw),
                },
            )
            assert r2.status == 404
            await page.goto(base(gw) + "/inspector")
            await expect(page.locator("tr.campus-row")).to_have_count(1)
            assert "清源幼儿园" not in await page.locator("#report").inner_text()
            await ctx.close()


async def _online(gw: GatewayRuntime, device: str) -> bool:
    return any(d.device == device and d.online for d in await gw.store.devices(CAMPUS))


async def _csrf(page: Page, gw: GatewayRuntime) -> str:
    await page.goto(base(gw) + "/technician")
    return str(await page.locator("body").get_attribute("data-csrf"))


# --- the inspector -------------------------------------------------------------------------------


async def test_inspector_report_csv_print_and_no_other_consoles(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    async with (
        centre(mosquitto, tmp_path) as gw,
        client(mosquitto.port, "insp-test") as mq,
        chromium() as browser,
    ):
        now = utcnow()
        await status(mq, CAMPUS, "di-1", True, ts=now - timedelta(minutes=2), last_response=now)
        await status(mq, OTHER, "cam-1", False, ts=now - timedelta(minutes=1))
        await stored(gw, "cam-1", 1)
        ctx, page = await open_as(browser, gw, "insp", "/inspector")
        rows = page.locator("tr.campus-row")
        await expect(rows).to_have_count(3)  # two campuses and the district
        await expect(page.locator("tr.campus-row.district th")).to_have_text("全区合计")
        other = page.locator(f"tr.campus-row[data-campus={OTHER}]")
        await expect(other).to_contain_text("清源幼儿园")
        await expect(other).to_contain_text("要求每季度一次")
        await expect(other.locator("td").nth(2)).to_have_text("1")  # one outage
        school = page.locator(f"tr.campus-row[data-campus={CAMPUS}]")
        await expect(school).to_contain_text("未达标")  # no drill this month
        month = await page.locator("#month").input_value()
        assert re.fullmatch(r"\d{4}-\d{2}", month)

        # The CSV: one line per campus, the numbers of the page.
        async with page.expect_download() as info:
            await page.click("#csv")
        download = await info.value
        text = Path(await download.path()).read_text(encoding="utf-8")
        table = list(csv.DictReader(io.StringIO(text)))
        assert [r["campus"] for r in table] == [CAMPUS, OTHER]
        assert table[0]["availability_pct"] == "100.0000"
        assert float(table[1]["availability_pct"]) == 0
        assert table[1]["drills_required"] == "quarterly"
        assert download.suggested_filename == f"compliance-{month}.csv"

        # The printable view: no navigation, no buttons, the title of the printed page.
        await page.click("#print")
        await expect(page.locator("body")).to_have_attribute("data-printed", "yes")
        await page.emulate_media(media="print")
        await expect(page.locator("header.top")).to_be_hidden()
        await expect(page.locator("#report-form")).to_be_hidden()
        await expect(page.locator(".print-head h1")).to_have_text(f"校园安全合规月报（{month}）")
        await expect(page.locator("#report")).to_be_visible()
        await page.emulate_media(media="screen")
        await shot(page, "inspector-console.png")

        # A month that has not begun: said so, no report.
        await page.goto(base(gw) + "/inspector?month=2999-01")
        await expect(page.locator("#report-error")).to_be_visible()
        await expect(page.locator("#report")).to_have_count(0)
        # English.
        await page.goto(base(gw) + "/lang/en")
        await page.goto(base(gw) + "/inspector")
        await expect(page.locator("tr.campus-row.district th")).to_have_text("District total")

        # Not the technician's or the admin's console.
        for url in ("/technician", "/technician/health", "/admin"):
            answer = await page.goto(base(gw) + url)
            assert answer is not None and answer.status == 403, url
        await ctx.close()
        # Nobody logged in: off to the login page.
        anon = await browser.new_context()
        p2 = await anon.new_page()
        await p2.goto(base(gw) + "/inspector?month=2026-01")
        assert "/login?next=/inspector" in p2.url
        await anon.close()


# --- the admin -----------------------------------------------------------------------------------


async def test_admin_manages_users_tokens_and_reads_the_audit(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    async with centre(mosquitto, tmp_path) as gw, chromium() as browser:
        ctx, page = await open_as(browser, gw, "root", "/admin")
        # A new user, who can then log in.
        form = page.locator("#user-form")
        await form.locator("input[name=name]").fill("newbie")
        await form.locator("input[name=display]").fill("新同事")
        await form.locator("select[name=role]").select_option("technician")
        await form.locator("input[name=campuses]").fill(CAMPUS)
        await form.locator("input[name=password]").fill("newbie-pw-123")
        await form.locator("button[type=submit]").click()
        row = page.locator("tr.user[data-user=newbie]")
        await expect(row.locator(".u-state")).to_have_text("正常")
        await expect(row.locator(".u-campuses")).to_have_value(CAMPUS)
        nctx, npage = await open_as(browser, gw, "newbie", "/technician", "newbie-pw-123")

        # Their campuses changed: saved.
        await row.locator(".u-campuses").fill(f"{CAMPUS},{OTHER}")
        await row.locator(".u-save").click()
        await expect(page.locator("tr.user[data-user=newbie] .u-campuses")).to_have_value(
            f"{CAMPUS},{OTHER}"
        )
        # (the change ended their session) log in again, then get disabled: the session ends.
        await nctx.close()
        nctx, npage = await open_as(browser, gw, "newbie", "/technician", "newbie-pw-123")
        await page.locator("tr.user[data-user=newbie] .u-disable").click()
        row = page.locator("tr.user[data-user=newbie]")
        await expect(row.locator(".u-state")).to_have_text("已停用")
        await expect(row).to_have_class(re.compile(r"\bdisabled\b"))
        await npage.goto(base(gw) + "/technician")
        assert "/login" in npage.url
        await nctx.close()
        # ... cannot log in; enabled again with a new password, can.
        async with httpx.AsyncClient(base_url=base(gw), headers={"Origin": base(gw)}) as http:
            r = await http.post(
                "/api/auth/login", json={"user": "newbie", "password": "newbie-pw-123"}
            )
            assert r.status_code == 401
        await row.locator(".u-enable").click()
        row = page.locator("tr.user[data-user=newbie]")
        await expect(row.locator(".u-state")).to_have_text("正常")
        await row.locator(".u-password").fill("fresh-pw-4567")
        await row.locator(".u-reset").click()
        await expect(page.locator("tr.user[data-user=newbie] .u-password")).to_have_value("")
        nctx, npage = await open_as(browser, gw, "newbie", "/technician", "fresh-pw-4567")
        await nctx.close()

        # An API token of the technician, revoked here: refused at once.
        async with httpx.AsyncClient(base_url=base(gw), headers={"Origin": base(gw)}) as http:
            r = await http.post("/api/auth/login", json={"user": "tech", "password": PASSWORD})
            csrf = r.json()["csrf"]
            r = await http.post(
                "/api/tokens", json={"label": "巡检脚本"}, headers={"X-CSRF-Token": csrf}
            )
            assert r.status_code == 201, r.text
            secret, token_id = r.json()["token"], r.json()["id"]
        bearer = {"Authorization": f"Bearer {secret}"}
        async with httpx.AsyncClient(base_url=base(gw)) as http:
            assert (await http.get("/api/devices", headers=bearer)).status_code == 200
            await page.reload()
            tok = page.locator(f"tr.token[data-id='{token_id}']")
            await expect(tok.locator(".t-state")).to_have_text("有效")
            await tok.locator(".t-revoke").click()
            await expect(page.locator(f"tr.token[data-id='{token_id}'] .t-state")).to_have_text(
                "已吊销"
            )
            assert (await http.get("/api/devices", headers=bearer)).status_code == 401

        # The audit log, filtered: newbie's logins only.
        await page.locator("#audit-filter input[name=user]").fill("newbie")
        await page.locator("#audit-filter input[name=action]").fill("login")
        await page.locator("#audit-filter button[type=submit]").click()
        await page.wait_for_url("**user=newbie**")
        entries = page.locator("tr.entry")
        await expect(entries.first).to_be_visible()
        seen = {
            (await e.get_attribute("data-user"), await e.get_attribute("data-action"))
            for e in await entries.all()
        }
        assert seen == {("newbie", "login")}
        outcomes = {await e.get_attribute("data-outcome") for e in await entries.all()}
        assert outcomes == {"ok", "failed"}  # three logins and the refused one
        await page.select_option("#audit-filter select[name=outcome]", "failed")
        await page.locator("#audit-filter button[type=submit]").click()
        await page.wait_for_url("**outcome=failed**")
        await expect(entries).to_have_count(1)
        # Dates: today is in, a day long past is not.
        # The page reads the days in the reports' zone (Asia/Shanghai here), not UTC: from
        # 16:00 UTC on, UTC's date is the day before Shanghai's.
        today = datetime.now(ZoneInfo(gw.cfg.telemetry.report_timezone)).date().isoformat()
        await page.goto(base(gw) + f"/admin?user=newbie&start={today}&end={today}")
        await expect(entries.first).to_be_visible()
        await page.goto(base(gw) + "/admin?user=newbie&start=2001-01-01&end=2001-01-31")
        await expect(entries).to_have_count(0)
        # The CSV of the same selection.
        await page.goto(base(gw) + "/admin?user=newbie&action=login")
        async with page.expect_download() as info:
            await page.click("#audit-csv")
        text = Path(await (await info.value).path()).read_text(encoding="utf-8")
        lines = list(csv.DictReader(io.StringIO(text)))
        assert lines and {(x["user"], x["action"]) for x in lines} == {("newbie", "login")}
        # The admin's own actions are in the log too.
        await page.goto(base(gw) + "/admin?action=token.revoke")
        await expect(page.locator("tr.entry")).to_have_count(1)
        await expect(page.locator("tr.entry")).to_contain_text(token_id)
        await page.goto(base(gw) + "/admin")
        await shot(page, "admin-console.png")
        # An admin cannot disable themselves (no button), and other roles get 403.
        await expect(page.locator("tr.user[data-user=root] .u-disable")).to_have_count(0)
        await ctx.close()
        ctx, page = await open_as(browser, gw, "tech", "/technician")
        answer = await page.goto(base(gw) + "/admin")
        assert answer is not None and answer.status == 403
        await ctx.close()
