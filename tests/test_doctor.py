"""``campusguard doctor`` (issue 12, part 4) against real peers: Mosquitto (plain, with a password
file, with TLS client certificates and the ACL), the Modbus DI and bollard simulators, the ONVIF
camera simulator, the DC-09 police receiver, PostgreSQL and SQLite, InfluxDB 1.x, an SMTP server
(aiosmtpd) and a TCP listener as the webhook receiver. No mocks: a peer that is "down" is a port
nobody listens on, or a server that was stopped."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sqlite3
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiosmtpd.controller import Controller
from aiosmtpd.handlers import Sink
from typer.testing import CliRunner

from campusguard.cli import app
from campusguard.doctor import Check, load, run_checks
from simulators.bollard import BollardSimulator
from simulators.camera import CameraSimulator
from simulators.modbus_io import DIModuleSimulator
from simulators.police import PoliceReceiver
from tests.helpers import Mosquitto, Postgres, free_port
from tests.influx import Influx

ROOT = Path(__file__).resolve().parent.parent
CAMPUSGUARD = Path(os.environ.get("VIRTUAL_ENV", ROOT / ".venv")) / "bin" / "campusguard"
CAMPUS = "test-campus"
CAM_PASSWORD = "cam-secret-pw-42"
DB_PASSWORD = "db-secret-pw-42"  # PostgreSQL here trusts loopback: it must just never be shown


def write(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


def edge_data(
    tmp: Path,
    broker_port: int,
    devices: list[tuple[str, int]],
    *,
    bollard_port: int | None = None,
    camera_port: int | None = None,
    console_port: int | None = None,
    mqtt: dict[str, Any] | None = None,
) -> dict[str, Any]:
    data: dict[str, Any] = {
        "campus": {"id": CAMPUS, "name": "Test school"},
        "edge": {"id": "edge-1", "data_dir": str(tmp / "edge")},
        "mqtt": {"host": "127.0.0.1", "port": broker_port, **(mqtt or {})},
        "devices": [
            {
                "id": dev_id,
                "profile": "adam-6050",
                "host": "127.0.0.1",
                "port": port,
                "timeout": 0.5,
                "inputs": [
                    {"channel": 0, "id": f"{dev_id}-btn", "kind": "panic", "mode": "latch"},
                    {"channel": 1, "id": f"{dev_id}-door", "kind": "intrusion"},
                ],
            }
            for dev_id, port in devices
        ],
    }
    if bollard_port is not None:
        data["bollards"] = [
            {
                "id": "gate-plc",
                "profile": "generic-plc",
                "host": "127.0.0.1",
                "port": bollard_port,
                "bollards": [{"index": 0, "id": "bollard-1"}, {"index": 1, "id": "bollard-2"}],
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
            }
        ]
    if console_port is not None:
        from webkit.passwords import hash_password

        user = {"user": "guard", "role": "guard", "password_hash": hash_password("guard-pw-123")}
        data["console"] = {
            "enabled": True,
            "host": "127.0.0.1",
            "port": console_port,
            "users": [user],
        }
    return data


def by_name(checks: list[dict[str, Any]] | list[Check]) -> dict[str, dict[str, Any]]:
    rows = [c if isinstance(c, dict) else c.__dict__ for c in checks]
    return {r["check"]: r for r in rows}


def assert_all_ok(checks: dict[str, dict[str, Any]]) -> None:
    """Everything OK; the clock may be WARN (a container or VM often has no NTP to tell)."""
    for name, c in checks.items():
        allowed = ("OK", "WARN") if name == "clock" else ("OK",)
        assert c["status"] in allowed, c
        assert bool(c["fix"]) == (c["status"] != "OK"), c


async def doctor_cli(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        str(CAMPUSGUARD),
        "doctor",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def doctor_api(path: Path, timeout: float = 2.0) -> dict[str, dict[str, Any]]:
    cfg = load(path, "gateway" if "gateway" in path.name else "edge")
    return by_name(await run_checks(cfg, path, timeout))


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    b = Mosquitto(tmp_path / "mosquitto")
    b.start()
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture
async def di_sims() -> AsyncIterator[list[DIModuleSimulator]]:
    async with DIModuleSimulator("adam-6050") as a, DIModuleSimulator("adam-6050") as b:
        yield [a, b]


# --- the edge -----------------------------------------------------------------------------------


async def test_edge_everything_up(
    tmp_path: Path, broker: Mosquitto, di_sims: list[DIModuleSimulator]
) -> None:
    async with (
        BollardSimulator("generic-plc", bollards=2) as plc,
        CameraSimulator(password=CAM_PASSWORD) as cam,
    ):
        cfg = write(
            tmp_path / "edge.yaml",
            edge_data(
                tmp_path,
                broker.port,
                [("di-1", di_sims[0].port), ("di-2", di_sims[1].port)],
                bollard_port=plc.port,
                camera_port=cam.port,
                console_port=free_port(),
            ),
        )
        di_sims[0].set_input(0, True)  # a press: the latch is read, never cleared (no write)
        rc, out, err = await doctor_cli("--config", str(cfg), "--json", "--timeout", "3")
        assert rc == 0, out + err
        report = json.loads(out)
        assert report["kind"] == "edge" and report["ok"] is True
        checks = by_name(report["checks"])
        expected = {"config", "data dir", "clock", "mqtt broker", "modbus di-1", "modbus di-2"}
        expected |= {"bollards gate-plc", "camera cam-gate", "console port"}
        assert set(checks) == expected
        assert_all_ok(checks)
        assert "SUBSCRIBE cg/v1/test-campus/down/# granted" in checks["mqtt broker"]["detail"]
        assert "1 active" in checks["modbus di-1"]["detail"]
        assert "0 active" in checks["modbus di-2"]["detail"]
        assert "2 bollard(s) read" in checks["bollards gate-plc"]["detail"]
        camera = checks["camera cam-gate"]["detail"]
        assert "SimCam 1" in camera and "clock skew" in camera and "snapshot" in camera
        assert "stream rtsp://" in camera
        assert CAM_PASSWORD not in out
        assert di_sims[0].latched(0)  # still there for the running edge

        rc, out, _ = await doctor_cli("--config", str(cfg), "--timeout", "3")  # the table
        assert rc == 0
        assert out.splitlines()[-1].startswith("0 FAIL, ")
        assert any(line.startswith("OK    modbus di-2 ") for line in out.splitlines())


async def test_edge_broker_down_and_one_device_down(
    tmp_path: Path, di_sims: list[DIModuleSimulator]
) -> None:
    dead_broker, dead_device = free_port(), free_port()
    cfg = write(
        tmp_path / "edge.yaml",
        edge_data(tmp_path, dead_broker, [("di-1", di_sims[0].port), ("di-2", dead_device)]),
    )
    checks = await doctor_api(cfg)
    mqtt = checks["mqtt broker"]
    assert mqtt["status"] == "FAIL"
    assert mqtt["detail"] == f"127.0.0.1:{dead_broker}: connection refused"
    assert "mqtt.host / mqtt.port" in mqtt["fix"]
    down = checks["modbus di-2"]
    assert down["status"] == "FAIL"
    assert down["detail"] == f"di-2 at 127.0.0.1:{dead_device}: connection refused"
    assert "devices[1].host / devices[1].port" in down["fix"]
    assert checks["modbus di-1"]["status"] == "OK"
    assert checks["config"]["status"] == checks["data dir"]["status"] == "OK"


async def test_edge_modbus_wrong_unit_id(tmp_path: Path, di_sims: list[DIModuleSimulator]) -> None:
    """A unit id the device does not serve: the simulator answers as a Modbus gateway does."""
    data = edge_data(tmp_path, free_port(), [("di-1", di_sims[0].port)])
    data["devices"][0]["unit"] = 7
    checks = await doctor_api(write(tmp_path / "edge.yaml", data))
    c = checks["modbus di-1"]
    assert c["status"] == "FAIL"
    assert f"di-1 at 127.0.0.1:{di_sims[0].port} unit 7: illegal unit id" in c["detail"]
    assert "devices[0].unit" in c["fix"]


async def test_wrong_mqtt_password_is_not_authorised(tmp_path: Path) -> None:
    passwd = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
    pwfile = tmp_path / "passwd"
    subprocess.run(
        [passwd, "-c", "-b", str(pwfile), CAMPUS, "right-password-123"], check=True, timeout=30
    )
    pwfile.chmod(0o600)
    b = Mosquitto(tmp_path / "mosquitto")
    conf = b.conf.read_text().replace("allow_anonymous true", "allow_anonymous false")
    b.conf.write_text(conf + f"password_file {pwfile}\n")
    b.start()
    try:
        for password, status in (("wrong-password-456", "FAIL"), ("right-password-123", "OK")):
            mqtt = {"username": CAMPUS, "password": password}
            cfg = write(tmp_path / "edge.yaml", edge_data(tmp_path, b.port, [], mqtt=mqtt))
            rc, out, err = await doctor_cli("--config", str(cfg), "--json", "--timeout", "3")
            c = by_name(json.loads(out)["checks"])["mqtt broker"]
            assert c["status"] == status, c
            assert password not in out + err
            if status == "FAIL":
                assert rc == 1
                assert "not authorised" in c["detail"] and f"user '{CAMPUS}'" in c["detail"]
                assert "mqtt.password" in c["fix"]
            else:
                assert rc == 0, out
    finally:
        b.stop()


@pytest.fixture
def certs(tmp_path: Path) -> Path:
    out = tmp_path / "certs"
    runner = CliRunner()
    args = ["certs", "generate", "--out", str(out), "--ip", "127.0.0.1", "--campus", CAMPUS]
    assert runner.invoke(app, args).exit_code == 0
    acl = ["certs", "acl", "--campus", CAMPUS, "--gateway", "gw-1", "--out"]
    assert runner.invoke(app, [*acl, str(out / "mosquitto.acl")]).exit_code == 0
    return out


async def test_tls_broker_with_acl(tmp_path: Path, certs: Path) -> None:
    b = Mosquitto(tmp_path / "mosquitto", tls_dir=certs, acl_file=certs / "mosquitto.acl")
    b.start()
    try:
        tls = {
            "ca_file": str(certs / "ca.crt"),
            "cert_file": str(certs / f"edge-{CAMPUS}.crt"),
            "key_file": str(certs / f"edge-{CAMPUS}.key"),
        }
        cfg = write(tmp_path / "edge.yaml", edge_data(tmp_path, b.port, [], mqtt={"tls": tls}))
        c = (await doctor_api(cfg))["mqtt broker"]
        assert c["status"] == "OK", c
        assert "TLS" in c["detail"] and f"SUBSCRIBE cg/v1/{CAMPUS}/down/# granted" in c["detail"]

        # No client certificate: the broker (require_certificate) hangs up.
        ca_only = {"ca_file": tls["ca_file"]}
        cfg = write(tmp_path / "edge.yaml", edge_data(tmp_path, b.port, [], mqtt={"tls": ca_only}))
        c = (await doctor_api(cfg))["mqtt broker"]
        assert c["status"] == "FAIL", c
        assert "client certificate" in c["fix"] and "mqtt.tls.cert_file" in c["fix"]

        # A CA that did not sign the broker's certificate.
        other = tmp_path / "other-certs"
        args = ["certs", "generate", "--out", str(other), "--ip", "127.0.0.1"]
        assert CliRunner().invoke(app, args).exit_code == 0
        bad = {**tls, "ca_file": str(other / "ca.crt")}
        cfg = write(tmp_path / "edge.yaml", edge_data(tmp_path, b.port, [], mqtt={"tls": bad}))
        c = (await doctor_api(cfg))["mqtt broker"]
        assert c["status"] == "FAIL", c
        assert "certificate verify failed" in c["detail"]
        assert "mqtt.tls.ca_file" in c["fix"]
    finally:
        b.stop()


# --- the gateway --------------------------------------------------------------------------------


def gateway_data(
    tmp: Path, broker_port: int, db_url: str, police_port: int, **extra: Any
) -> dict[str, Any]:
    return {
        "gateway": {"id": "gw-1", "data_dir": str(tmp / "gw")},
        "mqtt": {"host": "127.0.0.1", "port": broker_port},
        "database": {"url": db_url},
        "campuses": [{"id": CAMPUS, "name": "Test school", "account": "1234"}],
        "dc09": {
            "primary": {"host": "127.0.0.1", "port": police_port},
            "ack_timeout": 1.0,
            "supervision_interval": 0,
        },
        **extra,
    }


async def test_gateway_everything_up(
    tmp_path: Path, broker: Mosquitto, postgres_server: Postgres, influx: Influx
) -> None:
    from gateway.store.db import make_engine, migrate

    url = postgres_server.create_database("doctor_up")
    engine = make_engine(url)
    try:
        await migrate(engine)
    finally:
        await engine.dispose()
    url = url.replace("postgres@", f"postgres:{DB_PASSWORD}@")
    webhook = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    webhook_port = webhook.sockets[0].getsockname()[1]
    smtp = Controller(Sink(), hostname="127.0.0.1", port=free_port())
    smtp.start()
    try:
        async with webhook, PoliceReceiver() as police:
            assert police.tcp_port is not None
            extra = {
                "influxdb": {"api": "v1", "url": influx.url, "database": influx.database},
                "webhook": {
                    "url": f"http://127.0.0.1:{webhook_port}/alarms",
                    "secret": "webhook-secret-0123456789",
                },
                "notify": {
                    "recipients": [
                        {"name": "Principal", "channels": [{"type": "email", "to": "p@ex.org"}]}
                    ],
                    "smtp": {
                        "host": "127.0.0.1",
                        "port": smtp.port,
                        "security": "none",
                        "sender": "cg@ex.org",
                    },
                },
            }
            cfg = write(
                tmp_path / "gateway.yaml",
                gateway_data(tmp_path, broker.port, url, police.tcp_port, **extra),
            )
            rc, out, err = await doctor_cli("--config", str(cfg), "--json", "--timeout", "3")
            assert rc == 0, out + err
            report = json.loads(out)
            assert report["kind"] == "gateway"
            checks = by_name(report["checks"])
            assert set(checks) == {
                "config",
                "data dir",
                "clock",
                "mqtt broker",
                "database",
                "police primary",
                "influxdb",
                "webhook sink",
                "smtp",
            }
            assert_all_ok(checks)
            assert "schema up to date" in checks["database"]["detail"]
            assert "NULL link test ACKed" in checks["police primary"]["detail"]
            assert "readable and writable" in checks["influxdb"]["detail"]
            assert "no mail sent" in checks["smtp"]["detail"]
            for secret in (DB_PASSWORD, "webhook-secret-0123456789"):
                assert secret not in out + err
            assert police.messages == []  # a link test is no alarm
    finally:
        smtp.stop()


async def test_gateway_police_down_and_database_newer(tmp_path: Path, broker: Mosquitto) -> None:
    db = tmp_path / "gw.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) PRIMARY KEY)")
        conn.execute("INSERT INTO alembic_version VALUES ('9999_from_the_future')")
    dead = free_port()
    cfg = write(
        tmp_path / "gateway.yaml",
        gateway_data(tmp_path, broker.port, f"sqlite+aiosqlite:///{db}", dead),
    )
    checks = await doctor_api(cfg)
    police = checks["police primary"]
    assert police["status"] == "FAIL"
    assert police["detail"] == f"127.0.0.1:{dead}/tcp: connection refused"
    assert "dc09.primary.host / dc09.primary.port" in police["fix"]
    database = checks["database"]
    assert database["status"] == "FAIL"
    assert "9999_from_the_future is newer than this program" in database["detail"]
    assert checks["mqtt broker"]["status"] == "OK"


async def test_bad_config_is_the_config_check_message(tmp_path: Path) -> None:
    data = edge_data(tmp_path, 1883, [("di-1", 502)])
    data["devices"][0]["pol_interval"] = 0.1
    cfg = write(tmp_path / "edge.yaml", data)
    rc, out, err = await doctor_cli("--config", str(cfg))
    assert rc == 2 and out == ""
    assert err.startswith("campusguard: config error: ")
    assert "did you mean 'poll_interval'?" in err
    check = CliRunner().invoke(app, ["config", "check", str(cfg)])
    assert check.exit_code == 2
    assert check.output == err
