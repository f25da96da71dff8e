"""Secrets never reach logs or API responses (issue 11, security 3).

The gateway and the edge run with known secret values (MQTT password, DC-09 key, API token,
InfluxDB token, evidence link key), taken from environment variables as in production; a press
goes to the police (encrypted DC-09) and the campus, with DEBUG logging of every logger
captured; then the logs and the API's answers are searched for each secret.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import httpx
import pytest

from contract.config import EdgeConfig, GatewayConfig, parse_config
from edge.daemon import run_edge
from gateway.service import run_gateway
from simulators.modbus_io import DIModuleSimulator
from simulators.police import PoliceReceiver
from tests.edgekit import edge_config
from tests.gwkit import gateway_config
from tests.helpers import Mosquitto, wait_for

SECRETS = {
    "CG_TEST_MQTT_PASSWORD": "mqtt-pw-Zq8vX1-secret",
    "CG_TEST_DC09_KEY": "7F3A9C21D4E5B6A7081928374655AABBCCDDEEFF00112233445566778899AABB",
    "CG_TEST_API_TOKEN": "api-token-K2m9Pq7Rt5Vw3Xy1",
    "CG_TEST_INFLUX_TOKEN": "influx-token-Hh4Jj6Ll8Nn0",
    "CG_TEST_LINK_KEY": "link-key-Ss2Dd4Ff6Gg8Hh0Jj",
}


def _env(name: str) -> str:
    return "${" + name + "}"


def _variants(secret: str) -> list[str]:
    out = {secret, secret.lower(), secret.upper()}
    if all(c in "0123456789abcdefABCDEF" for c in secret):
        out.add(" ".join(secret[i : i + 2] for i in range(0, len(secret), 2)))  # hex dumps
    return sorted(out)


async def test_secrets_stay_out_of_logs_and_api(
    mosquitto: Mosquitto,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    caplog.set_level(logging.DEBUG)
    key = bytes.fromhex(SECRETS["CG_TEST_DC09_KEY"])
    answers: list[str] = []
    async with (
        DIModuleSimulator("adam-6050") as sim,
        PoliceReceiver(udp=False, key=key) as police,
    ):
        base = gateway_config(tmp_path, mosquitto.port, police.tcp_port, http=True)
        gdata: dict[str, Any] = base.model_dump(mode="json", exclude_defaults=True)
        gdata.setdefault("mqtt", {}).update(
            username="gateway", password=_env("CG_TEST_MQTT_PASSWORD")
        )
        gdata["dc09"]["key"] = _env("CG_TEST_DC09_KEY")
        gdata["api_tokens"] = [
            {
                "user": "ops",
                "role": "admin",
                "campuses": ["test-campus"],
                "token": _env("CG_TEST_API_TOKEN"),
            }
        ]
        gdata["influxdb"] = {
            "api": "v2",
            "url": "http://127.0.0.1:9",  # nothing listens: errors get logged
            "org": "cg",
            "bucket": "cg",
            "token": _env("CG_TEST_INFLUX_TOKEN"),
            "spool_dir": str(tmp_path / "spool"),
        }
        gdata.setdefault("evidence", {}).update(
            public_url="https://cg.example.org", link_key=_env("CG_TEST_LINK_KEY")
        )
        gcfg = parse_config(gdata, GatewayConfig, "secrets-gw")
        edata: dict[str, Any] = edge_config(tmp_path, mosquitto.port, sim.port).model_dump(
            mode="json", exclude_defaults=True
        )
        edata.setdefault("mqtt", {}).update(username="edge", password=_env("CG_TEST_MQTT_PASSWORD"))
        ecfg = parse_config(edata, EdgeConfig, "secrets-edge")
        async with run_gateway(gcfg) as gw:
            await wait_for(gw.mqtt.connected.is_set)
            async with run_edge(ecfg) as edge:
                await wait_for(edge.uplink.connected.is_set)
                await sim.press(1, 0.005)
                await police.wait_for(
                    lambda: any(m.contact_id and m.code == "PA" for m in police.messages),
                    timeout=10,
                )
                auth = {"Authorization": f"Bearer {SECRETS['CG_TEST_API_TOKEN']}"}
                async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gw.http_port}") as http:
                    alarms = await http.get("/api/alarms", headers=auth)
                    assert alarms.status_code == 200, alarms.text
                    answers.append(alarms.text)
                    for row in alarms.json():
                        answers.append(
                            (await http.get(f"/api/alarms/{row['id']}", headers=auth)).text
                        )
                    for path in (
                        "/api/edges",
                        "/api/devices",
                        "/api/stats",
                        "/metrics",
                        "/healthz",
                        "/openapi.json",
                        "/api/commands",
                    ):
                        answers.append((await http.get(path, headers=auth)).text)
                    # A wrong token's refusal does not echo what it was compared with.
                    bad = await http.get("/api/alarms", headers={"Authorization": "Bearer nope"})
                    answers.append(bad.text)
    logs = caplog.text + "\n".join(f"{r.getMessage()} {r.args!r}" for r in caplog.records)
    assert "DEBUG" in caplog.text or any(r.levelno == logging.DEBUG for r in caplog.records)
    assert len(caplog.records) > 20  # the scenario did log
    leaks = [
        (name, where)
        for name, secret in SECRETS.items()
        for variant in _variants(secret)
        for where, text in (("logs", logs), ("api", "\n".join(answers)))
        if variant in text
    ]
    assert not leaks, leaks
