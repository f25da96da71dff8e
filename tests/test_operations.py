"""Operations: Prometheus /metrics on the gateway and the edge, JSON logs, graceful shutdown."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import yaml
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from contract.config import ApiToken, EdgeConfig, HttpConfig
from edge.daemon import run_edge
from gateway.service import run_gateway
from simulators.modbus_io import DIModuleSimulator
from simulators.police import PoliceReceiver
from tests.edgekit import edge_config
from tests.gwkit import client, gateway_config, make_event, publish_event
from tests.helpers import Mosquitto, env_with_pythonpath, wait_for

ROOT = Path(__file__).resolve().parent.parent
SCRAPER = "prometheus-token-0123456789abcdef"
READER = "inspector-token-0123456789abcdef"


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def test_gateway_metrics(mosquitto: Mosquitto, tmp_path: Path) -> None:
    cfg = gateway_config(tmp_path, mosquitto.port, None, http=True)
    tokens = [
        ApiToken(user="prom", role="technician", campuses=["*"], token=SecretStr(SCRAPER)),
        ApiToken(user="insp", role="inspector", campuses=["*"], token=SecretStr(READER)),
    ]
    async with (
        PoliceReceiver(udp=False) as police,
        run_gateway(
            gateway_config(tmp_path, mosquitto.port, police.tcp_port, http=True).model_copy(
                update={"api_tokens": tokens}
            )
        ) as gw,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{gw.http_port}") as anon,
        httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{gw.http_port}",
            headers={"Authorization": f"Bearer {SCRAPER}"},
        ) as http,
    ):
        # The scrape needs a token with health.read (unless gateway.http.metrics_public).
        assert (await anon.get("/metrics")).status_code == 401
        assert (
            await anon.get("/metrics", headers={"Authorization": f"Bearer {READER}"})
        ).status_code == 403
        assert cfg.gateway.http is not None and not cfg.gateway.http.metrics_public
        await wait_for(gw.mqtt.connected.is_set)
        async with client(mosquitto.port) as campus:
            for i in range(3):
                await publish_event(campus, make_event(seq=i + 1, zone_no=i + 1))
        await police.wait_for(lambda: len(police.messages) >= 3, timeout=10)
        await wait_for(lambda: gw.workers["dc09"].delivered >= 3)

        async def scrape() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
            r = await http.get("/metrics")
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
            return samples(r.text)

        m = await wait_for(
            lambda: _latency_count(scrape), timeout=10, what="latency observed in /metrics"
        )
        assert (
            m[
                (
                    "campusguard_gateway_relay_outcomes_total",
                    (("outcome", "delivered"), ("sink", "dc09")),
                )
            ]
            == 3
        )
        assert m[("campusguard_gateway_relay_pending", ())] == 0
        assert m[("campusguard_gateway_mqtt_backlog", (("stream", "events"),))] == 0
        assert m[("campusguard_gateway_mqtt_connected", (("stream", "telemetry"),))] == 1
        assert ("campusguard_gateway_devices", (("state", "online"),)) in m
        assert m[("campusguard_gateway_messages_accepted_total", (("kind", "event"),))] >= 3
        p99_bucket = m[
            ("campusguard_gateway_relay_latency_seconds_bucket", (("le", "5.0"), ("sink", "dc09")))
        ]
        assert p99_bucket == 3


async def test_gateway_metrics_public_when_configured(mosquitto: Mosquitto, tmp_path: Path) -> None:
    cfg = gateway_config(tmp_path, mosquitto.port, None, http=True)
    node = cfg.gateway.model_copy(
        update={"http": HttpConfig(host="127.0.0.1", port=0, metrics_public=True)}
    )
    async with (
        run_gateway(cfg.model_copy(update={"gateway": node})) as gw,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{gw.http_port}") as anon,
    ):
        r = await anon.get("/metrics")
        assert r.status_code == 200 and "campusguard_gateway_relay_pending" in r.text
        # Only the scrape: the rest of the API still wants a login.
        assert (await anon.get("/api/stats")).status_code == 401


async def _latency_count(
    scrape: object,
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
    m = await scrape()  # type: ignore[operator]
    key = ("campusguard_gateway_relay_latency_seconds_count", (("sink", "dc09"),))
    return m if m.get(key, 0) >= 3 else None


def start_edge(cfg_file: Path, log: Path, *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "campusguard.cli", "edge", "--config", str(cfg_file), *extra],
        cwd=ROOT,
        env=env_with_pythonpath(),
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )


async def test_sigterm_with_queued_alarm_and_dead_broker(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """SIGTERM with an alarm in the outbox and no broker: out within 10 s, nothing lost; the
    restarted edge sends the alarm (exactly once). The logs are JSON lines."""
    async with (
        DIModuleSimulator("adam-6050") as sim,
        PoliceReceiver(udp=False) as police,
        run_gateway(gateway_config(tmp_path, mosquitto.port, police.tcp_port)) as gw,
    ):
        await wait_for(gw.mqtt.connected.is_set)
        cfg = edge_config(tmp_path, mosquitto.port, sim.port)
        cfg_file = tmp_path / "edge.yaml"
        cfg_file.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), allow_unicode=True))
        log = tmp_path / "edge.log"
        mosquitto.stop()
        proc = start_edge(cfg_file, log, "--log-format", "json")
        try:
            await wait_for(lambda: "running" in log.read_text(), timeout=30, what="edge up")
            await sim.press(1, 0.005)
            await wait_for(
                lambda: "panic button pressed" in log.read_text(), timeout=10, what="event"
            )
            t0 = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            rc = proc.wait(10)
            took = time.monotonic() - t0
            assert took < 10, took
            assert rc == 0, log.read_text()
            lines = [ln for ln in log.read_text().splitlines() if ln.strip()]
            records = [json.loads(ln) for ln in lines]  # every line is one JSON object
            assert {"ts", "level", "logger", "msg"} <= set(records[0])
            assert any("SIGTERM" in r["msg"] for r in records)
            # An orderly stop, not the watchdog's hard exit.
            assert not any("longer than" in r["msg"] for r in records), records[-5:]
            mosquitto.start()
            proc = start_edge(cfg_file, log)
            await police.wait_for(
                lambda: [m.code for m in police.messages].count("PA") >= 1, timeout=30
            )
            await asyncio.sleep(1.0)
            zones = [m.contact_id.zone for m in police.messages if m.code == "PA" and m.contact_id]
            assert zones == [2]  # exactly once
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


async def test_edge_metrics(mosquitto: Mosquitto, tmp_path: Path) -> None:
    async with DIModuleSimulator("adam-6050") as sim:
        data = edge_config(tmp_path, mosquitto.port, sim.port).model_dump(mode="json")
        data["metrics"] = {"host": "127.0.0.1", "port": 0}
        cfg = EdgeConfig.model_validate(data)
        async with run_edge(cfg) as edge:
            assert edge.metrics_port
            await wait_for(edge.uplink.connected.is_set)
            await wait_for(lambda: edge.pollers["di-1"].online)
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{edge.metrics_port}") as h:
                r = await h.get("/metrics")
                assert r.status_code == 200
                assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
                m = samples(r.text)
                assert (await h.get("/nope")).status_code == 404
    assert m[("campusguard_edge_uplink_connected", ())] == 1
    assert m[("campusguard_edge_devices", (("state", "online"),))] == 1
    assert ("campusguard_edge_outbox_depth", ()) in m
    assert ("campusguard_edge_outbox_unconfirmed", ()) in m
    assert m[("campusguard_edge_poll_latency_seconds", (("device", "di-1"),))] >= 0
