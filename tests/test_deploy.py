"""docker-compose.yml cannot run here (no Docker engine): check its structure and that every
file and command it refers to exists and validates."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from contract.config import EdgeConfig, GatewayConfig, load_config

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_services_and_mounts(compose: dict) -> None:
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
    gw = load_config(ROOT / "config/compose/gateway.yaml", GatewayConfig)
    assert gw.database.url.startswith("postgresql+asyncpg://")
    assert gw.mqtt.host == "mosquitto"
    edge = load_config(ROOT / "config/compose/edge.yaml", EdgeConfig)
    assert edge.devices[0].host == "modbus-sim"


def test_compose_commands_exist(compose: dict) -> None:
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
