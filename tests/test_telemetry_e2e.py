"""Telemetry and uptime end to end: a simulated DI module and camera, the edge, real Mosquitto,
the gateway (SQLite and PostgreSQL) with the embedded telemetry store, its reports and API."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiomqtt
import httpx
import pytest
from pydantic import SecretStr

from contract import topics
from contract.config import ApiToken, EdgeConfig, GatewayConfig, InfluxConfig
from contract.models import DeviceStatus, EdgeState, utcnow
from edge import telemetry as edge_telemetry
from edge.daemon import run_edge
from edge.outbox import PRIORITY_ALARM, PRIORITY_TELEMETRY, Outbox
from gateway.service import GatewayRuntime, run_gateway
from gateway.telemetry.sink import InfluxSink
from simulators.modbus_io import DIModuleSimulator
from tests.edgekit import edge_config
from tests.gwkit import CAMPUS, gateway_config
from tests.helpers import Mosquitto, wait_for
from tests.influx import Influx

TECH = "tech-token-0123456789abcdefgh"
INSPECTOR = "insp-token-0123456789abcdefgh"
OTHER = "othr-token-0123456789abcdefgh"


def gw_cfg(tmp: Path, broker: int, db_url: str | None = None) -> GatewayConfig:
    cfg = gateway_config(tmp, broker, None, http=True, db_url=db_url)
    return cfg.model_copy(
        update={
            "api_tokens": [
                ApiToken(user="tech", role="technician", campuses=["*"], token=SecretStr(TECH)),
                ApiToken(
                    user="insp", role="inspector", campuses=[CAMPUS], token=SecretStr(INSPECTOR)
                ),
                ApiToken(user="other", role="technician", campuses=["x"], token=SecretStr(OTHER)),
            ]
        }
    )


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def fast_telemetry(cfg: EdgeConfig) -> EdgeConfig:
    tel = cfg.telemetry.model_copy(update={"interval": 1.0})
    return cfg.model_copy(update={"telemetry": tel})


async def test_device_and_edge_telemetry_reach_the_embedded_store(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    async with (
        DIModuleSimulator("adam-6050") as sim,
        run_gateway(gw_cfg(tmp_path, mosquitto.port)) as gw,
        run_edge(fast_telemetry(edge_config(tmp_path, mosquitto.port, sim.port))),
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{gw.http_port}") as http,
    ):

        async def samples(device: str) -> list[dict[str, Any]]:
            r = await http.get(f"/api/telemetry/{CAMPUS}/{device}", headers=auth(TECH))
            assert r.status_code == 200, r.text
            out: list[dict[str, Any]] = r.json()["samples"]
            return out

        async def have(device: str, n: int) -> bool:
            return len(await samples(device)) >= n

        await wait_for_async(lambda: have("di-1", 2), "DI module telemetry")
        await wait_for_async(lambda: have("edge-1", 2), "edge telemetry")
        di = (await samples("di-1"))[-1]
        assert di["kind"] == "di_module" and di["fields"]["online"] is True
        assert di["fields"]["requests"] > 5 and di["fields"]["errors"] == 0
        assert 0 < di["fields"]["latency_ms_avg"] < 300
        edge = (await samples("edge-1"))[-1]["fields"]
        assert edge["uplink_up"] is True and edge["outbox_depth"] >= 0
        assert edge["cpu_pct"] >= 0 and edge["rss_mib"] > 10 and edge["disk_free_mib"] > 0
        # The module goes away: its telemetry says so, with the errors counted.
        await sim.unplug()
        await wait_for_async(
            lambda: last_is(samples, "di-1", lambda f: f["online"] is False and f["errors"] > 0),
            "offline in telemetry",
        )
        assert gw.ingest.reject.total == 0
        other = await http.get(f"/api/telemetry/{CAMPUS}/di-1", headers=auth(OTHER))
        assert other.status_code == 404


async def last_is(samples: Any, device: str, pred: Any) -> bool:
    got = await samples(device)
    return bool(got) and bool(pred(got[-1]["fields"]))


async def wait_for_async(cond: Any, what: str, timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await cond():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


def batch(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "v": 1,
        "campus": CAMPUS,
        "edge": "edge-1",
        "ts": utcnow().isoformat(),
        "interval_s": 30.0,
        "samples": [{"device": "di-1", "kind": "di_module", "fields": {"online": True}}],
    }
    base.update(kw)
    return base


async def test_bad_telemetry_is_rejected_and_counted(mosquitto: Mosquitto, tmp_path: Path) -> None:
    async with run_gateway(gw_cfg(tmp_path, mosquitto.port)) as gw:
        await wait_for(gw.telemetry_mqtt.connected.is_set)
        topic = topics.telemetry_topic(CAMPUS)
        junk = [
            batch(samples=[{"device": "d", "kind": "camera", "fields": {"fps": "25"}}]),
            batch(samples=[{"device": "d", "kind": "camera", "fields": {"fps": None}}]),
            batch(samples=[{"device": "d", "kind": "camera", "fields": {}}]),
            batch(samples=[{"device": "d", "kind": "toaster", "fields": {"x": 1}}]),
            batch(ts=(utcnow() + timedelta(hours=2)).isoformat()),
            batch(ts=(utcnow() - timedelta(days=30)).isoformat()),
            batch(campus="other-campus"),
        ]
        async with aiomqtt.Client("127.0.0.1", mosquitto.port) as c:
            for b in junk:
                await c.publish(topic, json.dumps(b), qos=1)
            await c.publish(
                topic, b'{"v":1,"campus":"test-campus","samples":[{"fields":{"x":NaN}}]}'
            )
            await c.publish(topic, b"\x00garbage", qos=1)
            await c.publish(topic, json.dumps(batch()), qos=1)
        await wait_for(lambda: gw.ingest.accepted["telemetry"] == 1, what="the good batch")
        await wait_for(lambda: gw.ingest.reject.total == 9, what="nine rejects")
        counts = gw.ingest.reject.counts
        assert counts["invalid telemetry"] == 6
        assert counts["telemetry from the future"] == 1
        assert counts["telemetry too old"] == 1
        assert counts["campus mismatch"] == 1
        assert gw.ingest.telemetry_samples == 1


async def test_a_clock_jump_at_the_edge_keeps_the_interval_sane(
    tmp_path: Path, monkeypatch: Any
) -> None:
    cfg = edge_config(tmp_path, 1, 1)
    async with Outbox(tmp_path / "edge" / "outbox.db") as outbox:
        tel = edge_telemetry.EdgeTelemetry(cfg, outbox, [], lambda: True)
        tel.collect()
        real = datetime.now(UTC)

        class Jumped(datetime):
            @classmethod
            def now(cls, tz: Any = None) -> Jumped:  # type: ignore[override]
                return cls.fromtimestamp(real.timestamp() + 3 * 3600, tz)

        monkeypatch.setattr(edge_telemetry, "datetime", Jumped)
        (b,) = tel.collect()
        # The window is measured on the steady clock: a few ms, not three hours.
        assert b.interval_s < 5
        assert (b.ts - real).total_seconds() > 3 * 3600 - 5


async def test_telemetry_backlog_is_bounded_and_never_costs_an_alarm(tmp_path: Path) -> None:
    cfg = edge_config(tmp_path, 1, 1)
    cfg = cfg.model_copy(update={"telemetry": cfg.telemetry.model_copy(update={"keep_batches": 5})})
    async with Outbox(tmp_path / "edge" / "outbox.db") as outbox:
        await outbox.add("t/alarm", b"alarm", PRIORITY_ALARM, receipt_key="k")
        tel = edge_telemetry.EdgeTelemetry(cfg, outbox, [], lambda: False)
        for _ in range(12):
            await tel.step()
        items = await outbox.peek(100)
        assert sum(1 for i in items if i.priority == PRIORITY_TELEMETRY) == 5
        assert [i.payload for i in items if i.priority == PRIORITY_ALARM] == [b"alarm"]
        assert tel.dropped == 7 and tel.batches == 12


def status(device: str, online: bool, ts: datetime, error: str | None = None) -> bytes:
    return (
        DeviceStatus(campus=CAMPUS, device=device, online=online, ts=ts, error=error, points={})
        .model_dump_json()
        .encode()
    )


async def test_uptime_and_compliance_reports(
    mosquitto: Mosquitto, tmp_path: Path, db_url: str
) -> None:
    """Statuses as an edge sends them (a day ago and since), a maintenance window through the
    API, then the reports in JSON, CSV and HTML, scoped by token."""
    now = utcnow()
    t0 = now - timedelta(hours=10)
    async with (
        run_gateway(gw_cfg(tmp_path, mosquitto.port, db_url)) as gw,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{gw.http_port}") as http,
        aiomqtt.Client("127.0.0.1", mosquitto.port) as c,
    ):
        await wait_for(gw.mqtt.connected.is_set)
        steps = [
            ("cam-1", True, t0, None),
            ("di-1", True, t0, None),
            ("di-1", False, t0 + timedelta(hours=2), "timeout"),
            ("di-1", True, t0 + timedelta(hours=3), None),
            ("cam-1", False, t0 + timedelta(hours=8), "no route to host"),
        ]
        for dev, online, ts, err in steps:
            await c.publish(
                topics.device_status_topic(CAMPUS, dev), status(dev, online, ts, err), qos=1
            )
        edge_state = EdgeState(campus=CAMPUS, edge="edge-1", online=True, ts=t0, version="t")
        await c.publish(topics.edge_state_topic(CAMPUS), edge_state.model_dump_json(), qos=1)
        await wait_for(lambda: gw.ingest.accepted["device"] == 5, what="statuses stored")
        await wait_for(lambda: gw.ingest.accepted["edge"] == 1, what="edge state stored")

        # The camera's outage began with planned work: a maintenance window covers its first hour.
        window = {
            "campus": CAMPUS,
            "device": "cam-1",
            "start": (t0 + timedelta(hours=8)).isoformat(),
            "end": (t0 + timedelta(hours=9)).isoformat(),
            "reason": "replacing the lens",
        }
        assert (
            await http.post("/api/maintenance", json=window, headers=auth(INSPECTOR))
        ).status_code == 403
        made = await http.post("/api/maintenance", json=window, headers=auth(TECH))
        assert made.status_code == 201, made.text
        assert made.json()["user"] == "tech"

        start, end = t0.isoformat(), now.isoformat()
        q = {"start": start, "end": end, "campus": CAMPUS}
        rep = await http.get("/api/reports/uptime", params=q, headers=auth(INSPECTOR))
        assert rep.status_code == 200, rep.text
        body = rep.json()
        devs = {d["device"]: d for d in body["devices"]}
        span = (now - t0).total_seconds()
        assert abs(devs["di-1"]["downtime_s"] - 3600) < 1
        assert abs(devs["di-1"]["availability"] - (span - 3600) / span) < 1e-6
        assert devs["di-1"]["failures"] == 1 and abs(devs["di-1"]["mttr_s"] - 3600) < 1
        assert [o["cause"] for o in devs["di-1"]["outages"]] == ["timeout"]
        # cam-1: down from 8 h on, the first hour is maintenance; still down now.
        assert abs(devs["cam-1"]["maintenance_s"] - 3600) < 1
        assert abs(devs["cam-1"]["downtime_s"] - (span - 9 * 3600)) < 1
        assert devs["edge-1"]["availability"] == 1.0
        assert body["campuses"][0]["devices"] == 3

        csv_text = (
            await http.get("/api/reports/uptime", params={**q, "format": "csv"}, headers=auth(TECH))
        ).text
        assert csv_text.splitlines()[0].startswith("campus,device,kind,availability_pct")
        assert len(csv_text.splitlines()) == 4
        page = await http.get(
            "/api/reports/uptime", params={**q, "format": "html"}, headers=auth(TECH)
        )
        assert "text/html" in page.headers["content-type"] and "replacing" not in page.text
        assert "no route to host" in page.text

        # Scoped: another campus' technician sees nothing of this one; no token, no report.
        assert (
            await http.get("/api/reports/uptime", params=q, headers=auth(OTHER))
        ).status_code == 404
        assert (await http.get("/api/reports/uptime", params=q)).status_code == 401

        month = f"{now.astimezone(tz_of(gw)):%Y-%m}"
        comp = await http.get(
            "/api/reports/compliance", params={"month": month}, headers=auth(INSPECTOR)
        )
        assert comp.status_code == 200, comp.text
        (row,) = comp.json()
        assert row["campus"] == CAMPUS and row["devices"] == 3
        assert row["alarms"] == 0 and row["police_share"] is None
        html_page = await http.get(
            "/api/reports/compliance",
            params={"month": month, "format": "html"},
            headers=auth(INSPECTOR),
        )
        assert "Test school" in html_page.text
        future = await http.get(
            "/api/reports/compliance", params={"month": "2099-01"}, headers=auth(INSPECTOR)
        )
        assert future.status_code == 422


def tz_of(gw: GatewayRuntime) -> Any:
    from zoneinfo import ZoneInfo

    return ZoneInfo(gw.cfg.telemetry.report_timezone)


async def test_telemetry_and_alarm_latency_reach_influxdb(
    mosquitto: Mosquitto, influx: Influx, tmp_path: Path
) -> None:
    """Edge -> MQTT -> gateway -> InfluxDB 1.x (Debian's influxd, v1 API), and the latency of an
    alarm the police acknowledged."""
    from simulators.police import PoliceReceiver

    async with PoliceReceiver(udp=False) as police:
        cfg = gateway_config(tmp_path, mosquitto.port, police.tcp_port, http=True)
        influx_cfg = InfluxConfig(
            api="v1", url=influx.url, database="telemetry", flush_interval=0.2
        )
        cfg = cfg.model_copy(update={"influxdb": influx_cfg})
        async with (
            DIModuleSimulator("adam-6050") as sim,
            run_gateway(cfg) as gw,
            run_edge(fast_telemetry(edge_config(tmp_path, mosquitto.port, sim.port))) as edge,
        ):
            assert gw.telemetry.name == "influxdb"
            await wait_for(lambda: edge.uplink.connected.is_set())
            await wait_for(
                lambda: influx.count("di_module", "online") >= 2, timeout=20, what="DI telemetry"
            )
            await wait_for(lambda: influx.count("edge", "cpu_pct") >= 2, what="edge telemetry")
            rows = influx.rows('SELECT * FROM "di_module" WHERE "device" = \'di-1\'')
            assert rows and rows[-1]["campus"] == CAMPUS and rows[-1]["online"] is True
            assert rows[-1]["requests"] > 0
            await sim.press(0, 0.2)
            await police.wait_for(lambda: any(m.code == "PA" for m in police.messages), 10)
            await wait_for(lambda: influx.count("alarm", "to_police_ms") >= 1, what="alarm point")
            (alarm,) = influx.rows('SELECT * FROM "alarm" WHERE "restore" = \'false\'')
            assert alarm["kind"] == "panic" and alarm["path"] == "primary"
            assert 0 < alarm["edge_to_gateway_ms"] <= alarm["to_police_ms"] < 5000


def campus_batch(n: int, ts: datetime) -> bytes:
    samples = [
        {"device": f"dev-{d:02d}", "kind": "di_module", "fields": {"online": True, "requests": n}}
        for d in range(30)
    ]
    samples.append({"device": "edge-1", "kind": "edge", "fields": {"cpu_pct": 1.5}})
    body = {"campus": CAMPUS, "edge": "edge-1", "ts": ts.isoformat(), "interval_s": 30.0}
    return json.dumps({**body, "samples": samples}).encode()


@pytest.mark.parametrize(
    "down_s",
    [
        pytest.param(4.0, id="short"),
        pytest.param(180.0, id="3min", marks=[pytest.mark.slow, pytest.mark.timeout(600)]),
    ],
)
async def test_influxdb_down_under_load_loses_nothing(
    mosquitto: Mosquitto, influx: Influx, tmp_path: Path, down_s: float
) -> None:
    """Telemetry keeps coming over MQTT while InfluxDB is killed for a while: the gateway
    spools to disk with its memory bounded, and every point is in InfluxDB afterwards."""
    cfg = gateway_config(tmp_path, mosquitto.port, None)
    influx_cfg = InfluxConfig(
        api="v1",
        url=influx.url,
        database="telemetry",
        batch_size=500,
        flush_interval=0.2,
        timeout=1.0,
        max_buffer_points=2000,
    )
    cfg = cfg.model_copy(update={"influxdb": influx_cfg})
    sent = 0
    stop = asyncio.Event()
    async with run_gateway(cfg) as gw, aiomqtt.Client("127.0.0.1", mosquitto.port) as c:
        assert isinstance(gw.telemetry, InfluxSink)
        writer = gw.telemetry.writer
        await wait_for(gw.telemetry_mqtt.connected.is_set)
        topic = topics.telemetry_topic(CAMPUS)
        base = utcnow() - timedelta(hours=1)

        async def edges() -> None:  # 25 batches/s of 31 samples: a large campus group
            nonlocal sent
            while not stop.is_set():
                # distinct timestamps, so no point overwrites another in InfluxDB
                await c.publish(
                    topic, campus_batch(sent, base + timedelta(milliseconds=sent)), qos=1
                )
                sent += 1
                await asyncio.sleep(0.04)

        producer = asyncio.create_task(edges())
        await wait_for(lambda: writer.written >= 500, timeout=20, what="writes flowing")
        influx.kill()
        deadline = asyncio.get_running_loop().time() + down_s
        await wait_for(lambda: writer.spool.points > 0, timeout=30, what="spooling")
        while asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.2)  # the outage lasts down_s: a span of time, not a wait
            assert writer.buffer_depth <= influx_cfg.max_buffer_points
        influx.start()
        stop.set()
        await producer
        total = sent * 31
        await wait_for(lambda: gw.ingest.telemetry_samples == total, timeout=60, what="all in")
        await wait_for(lambda: writer.written == total, timeout=120, what="all written")
        stats = writer.stats()
    assert stats["max_buffer_seen"] <= influx_cfg.max_buffer_points
    assert stats["spooled"] > 0 and stats["dropped"] == 0 and stats["rejected"] == 0
    assert influx.count("di_module", "online") + influx.count("edge", "cpu_pct") == total
