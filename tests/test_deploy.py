"""docker-compose.yml cannot run here (no Docker engine): check its structure and that every
file and command it refers to exists and validates."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from contract.config import EdgeConfig, GatewayConfig, load_config

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


def test_compose_services_and_mounts(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"mosquitto", "postgres", "gateway", "edge", "police-sim", "modbus-sim"} <= set(services)
    for name, svc in services.items():
        for vol in svc.get("volumes", []):
            src = vol.split(":")[0]
            if src.startswith("./"):
                assert (ROOT / src).exists(), f"{name} mounts missing {src}"
            else:
                assert src in compose["volumes"], f"{name} uses undeclared volume {src}"
        for dep in svc.get("depends_on", {}):
            assert dep in services


def test_compose_configs_validate(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CG_DB_PASSWORD", "x")
    monkeypatch.setenv("CG_INFLUX_TOKEN", "t0ken")
    gw = load_config(ROOT / "config/compose/gateway.yaml", GatewayConfig)
    assert gw.database.url.startswith("postgresql+asyncpg://")
    assert gw.mqtt.host == "mosquitto"
    assert gw.influxdb is not None
    assert (gw.influxdb.api, gw.influxdb.url) == ("v2", "http://influxdb:8086")
    assert (gw.influxdb.org, gw.influxdb.bucket) == ("campusguard", "telemetry")
    assert gw.influxdb.token_text() == "t0ken"
    edge = load_config(ROOT / "config/compose/edge.yaml", EdgeConfig)
    assert edge.devices[0].host == "modbus-sim"


def test_compose_commands_exist(compose: dict[str, Any]) -> None:
    from typer.main import get_command

    from campusguard.cli import app

    cli = get_command(app)
    for name, svc in compose["services"].items():
        cmd = svc.get("command")
        if not cmd or cmd[0] != "campusguard":
            continue
        group = cli
        for word in cmd[1:]:
            if word.startswith("-"):
                break
            sub = group.commands.get(word)  # type: ignore[attr-defined]
            assert sub is not None, f"{name}: unknown command {word!r}"
            group = sub


# --- InfluxDB and Grafana ---------------------------------------------------------------------

DASHBOARDS = ROOT / "dashboards"
DATASOURCE_UID = "campusguard-influx"


def _mounts(svc: dict[str, Any]) -> dict[str, str]:
    """Container path -> host path of a service's bind mounts (read-only ones only)."""
    out = {}
    for vol in svc.get("volumes", []):
        src, dst, *mode = vol.split(":")
        if src.startswith("./"):
            assert mode == ["ro"], f"{vol}: config and dashboards are mounted read-only"
            out[dst] = src
    return out


def test_compose_influxdb_and_grafana(compose: dict[str, Any]) -> None:
    services = compose["services"]
    influx = services["influxdb"]
    assert influx["image"].startswith("influxdb:2")
    env = influx["environment"]
    assert env["DOCKER_INFLUXDB_INIT_MODE"] == "setup"
    assert env["DOCKER_INFLUXDB_INIT_ORG"] == "campusguard"
    assert env["DOCKER_INFLUXDB_INIT_BUCKET"] == "telemetry"
    assert env["DOCKER_INFLUXDB_INIT_ADMIN_TOKEN"].startswith("${CG_INFLUX_TOKEN:?")
    assert influx["healthcheck"]["test"]
    assert any(v.endswith(":/var/lib/influxdb2") for v in influx["volumes"])
    # the gateway gets the token its config refers to
    assert "CG_INFLUX_TOKEN" in services["gateway"]["environment"]

    grafana = services["grafana"]
    assert re.fullmatch(r"grafana/grafana:1[01]\.\d+\.\d+", grafana["image"]), "a full version"
    assert "3000:3000" in grafana["ports"]
    assert "influxdb" in grafana["depends_on"]
    assert "CG_INFLUX_TOKEN" in grafana["environment"]  # read by the data source file
    assert grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD"].startswith("${")
    mounts = _mounts(grafana)
    assert (
        mounts["/etc/grafana/provisioning/datasources"] == "./dashboards/provisioning/datasources"
    )
    assert mounts["/etc/grafana/provisioning/dashboards"] == "./dashboards/provisioning/dashboards"
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    folder = next(dst for dst, src in mounts.items() if src == "./dashboards")
    assert home.startswith(folder + "/")
    assert (DASHBOARDS / home.removeprefix(folder + "/")).is_file()


def test_grafana_provisioning(compose: dict[str, Any]) -> None:
    ds_file = DASHBOARDS / "provisioning/datasources/influxdb.yaml"
    sources = yaml.safe_load(ds_file.read_text())["datasources"]
    assert len(sources) == 1
    ds = sources[0]
    assert ds["uid"] == DATASOURCE_UID and ds["type"] == "influxdb"
    assert ds["url"] == "http://influxdb:8086"  # the compose service
    assert ds["jsonData"]["version"] == "InfluxQL"
    assert ds["jsonData"]["dbName"] == "telemetry"
    assert ds["jsonData"]["httpHeaderName1"] == "Authorization"
    assert ds["secureJsonData"]["httpHeaderValue1"] == "Token ${CG_INFLUX_TOKEN}"

    providers = yaml.safe_load(
        (DASHBOARDS / "provisioning/dashboards/campusguard.yaml").read_text()
    )["providers"]
    assert [p["type"] for p in providers] == ["file"]
    mounts = _mounts(compose["services"]["grafana"])
    path = providers[0]["options"]["path"]
    assert mounts.get(path) == "./dashboards", f"provider path {path} is not the mounted folder"


@pytest.mark.parametrize(
    "name", ["district-overview", "campus-detail", "device-detail", "alarm-latency"]
)
def test_dashboards_use_the_provisioned_datasource(name: str) -> None:
    dash = json.loads((DASHBOARDS / f"{name}.json").read_text(encoding="utf-8"))
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    ds_var = variables["datasource"]
    assert ds_var["type"] == "datasource" and ds_var["query"] == "influxdb"
    assert ds_var["current"]["value"] == DATASOURCE_UID
    allowed = {DATASOURCE_UID, "${datasource}"}

    def refs(node: object) -> list[dict[str, Any]]:
        if isinstance(node, dict):
            found = [node["datasource"]] if isinstance(node.get("datasource"), dict) else []
            return found + [r for v in node.values() for r in refs(v)]
        if isinstance(node, list):
            return [r for v in node for r in refs(v)]
        return []

    used = [
        r for r in refs(dash["panels"]) + refs(dash["templating"]) if r.get("type") != "grafana"
    ]
    assert used, f"{name}: no data source referenced"
    for ref in used:
        assert ref == {"type": "influxdb", "uid": ref["uid"]} and ref["uid"] in allowed, (
            f"{name}: panel or variable uses data source {ref}"
        )
