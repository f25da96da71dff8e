"""The edge is killed with SIGKILL right after a press: the alarm was on disk before anything
else, so after a restart it reaches the police exactly once (real processes, real Mosquitto)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import yaml

from gateway.service import run_gateway
from simulators.modbus_io import DIModuleSimulator
from simulators.police import PoliceReceiver
from tests.edgekit import edge_config
from tests.gwkit import gateway_config
from tests.helpers import Mosquitto, env_with_pythonpath, wait_for

ROOT = Path(__file__).resolve().parent.parent


def start_edge(cfg_file: Path, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "campusguard.cli", "edge", "--config", str(cfg_file)],
        cwd=ROOT,
        env=env_with_pythonpath(),
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )


async def test_sigkill_right_after_press_loses_nothing(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
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
        # The broker is away when the press comes, so the alarm cannot have left the edge
        # before the kill: only the outbox on disk can save it.
        mosquitto.stop()
        proc = start_edge(cfg_file, log)
        try:
            await wait_for(lambda: "running" in log.read_text(), timeout=30, what="edge up")
            await sim.press(1, 0.005)
            await wait_for(
                lambda: "panic button pressed —" in log.read_text(), timeout=10, what="event"
            )
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
            mosquitto.start()
            proc = start_edge(cfg_file, log)
            await police.wait_for(
                lambda: [m.code for m in police.messages].count("PA") >= 1, timeout=30
            )
            await police.wait_for(lambda: any(m.code == "PH" for m in police.messages), 10)
            zones = [m.contact_id.zone for m in police.messages if m.code == "PA" and m.contact_id]
            assert zones == [2]  # exactly once
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
