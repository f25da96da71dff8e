"""`campusguard discover modbus` against simulated modules on real sockets."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import yaml

from campusguard.discover import parse_hosts, parse_numbers, scan_modbus
from contract.config import EdgeConfig, parse_config
from simulators.modbus_io import DIModuleSimulator
from tests.helpers import env_with_pythonpath, free_port

ROOT = Path(__file__).resolve().parent.parent


def test_ranges() -> None:
    assert parse_hosts("127.0.0.1-3") == ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
    assert parse_numbers("1-3,7") == [1, 2, 3, 7]


async def test_scan_finds_modules_and_their_profiles() -> None:
    closed = free_port()
    async with (
        DIModuleSimulator("adam-6050", units=(1, 2)) as adam,
        DIModuleSimulator("moxa-e1210") as moxa,
    ):
        found = await scan_modbus(["127.0.0.1"], [adam.port, moxa.port, closed], [1, 2, 3])
        by = {(f.port, f.unit): f for f in found}
        assert set(by) == {(adam.port, 1), (adam.port, 2), (moxa.port, 1)}
        # Several models answer the same addresses; the right one is always among the fits,
        # and one that cannot be (ADAM's latch coils on a Moxa) is not.
        assert "adam-6050" in by[(adam.port, 1)].fits
        assert "moxa-e1210" in by[(moxa.port, 1)].fits
        assert "adam-6050" not in by[(moxa.port, 1)].fits


async def test_cli_prints_a_valid_stanza() -> None:
    async with DIModuleSimulator("adam-6050") as adam:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "campusguard.cli",
            "discover",
            "modbus",
            "--hosts",
            "127.0.0.1",
            "--ports",
            str(adam.port),
            "--units",
            "1-2",
            "--stanza",
            cwd=ROOT,
            env=env_with_pythonpath(),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    text = out.decode()
    assert proc.returncode == 0, err.decode()
    assert f"127.0.0.1:{adam.port} unit 1: fits " in text and "adam-6050" in text
    devices = yaml.safe_load(text[text.index("devices:") :])["devices"]
    cfg = parse_config({"campus": {"id": "c1", "name": "x"}, "devices": devices}, EdgeConfig, "x")
    assert cfg.devices[0].port == adam.port
