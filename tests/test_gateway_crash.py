"""The gateway is killed with SIGKILL mid-relay: after restart each pending alarm reaches the
police exactly once (real processes, real Mosquitto, the DC-09 receiver simulator)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import yaml

from simulators.police import PoliceReceiver
from tests.gwkit import client, gateway_config, make_event, publish_event
from tests.helpers import Mosquitto, env_with_pythonpath, wait_for

ROOT = Path(__file__).resolve().parent.parent


def start_gateway(cfg_file: Path, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "campusguard.cli", "gateway", "--config", str(cfg_file)],
        cwd=ROOT,
        env=env_with_pythonpath(),
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )


async def test_sigkill_mid_relay_delivers_once(
    mosquitto: Mosquitto, tmp_path: Path, db_url: str
) -> None:
    # The receiver takes the first frames but swallows its replies: the gateway is waiting for
    # the ACK (mid-relay) when it is killed.
    async with PoliceReceiver(udp=False, drop_replies=1000) as police:
        cfg = gateway_config(tmp_path, mosquitto.port, police.tcp_port, db_url=db_url)
        cfg_file = tmp_path / "gateway.yaml"
        cfg_file.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), allow_unicode=True))
        log = tmp_path / "gateway.log"
        proc = start_gateway(cfg_file, log)
        try:
            # The gateway's persistent session must exist before campuses publish to it.
            await wait_for(lambda: "(events stream)" in log.read_text(), timeout=30)
            events = [make_event(seq=i + 1, zone_no=i + 1) for i in range(3)]
            async with client(mosquitto.port) as campus:
                for ev in events:
                    await publish_event(campus, ev)
            await police.wait_for(lambda: len(police.messages) >= 1, timeout=20)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
            police.drop_replies = 0
            proc = start_gateway(cfg_file, log)
            # The alarm that was in flight comes again with the same sequence number: the
            # receiver sees a retransmission, not a second alarm.
            await police.wait_for(
                lambda: len(police.messages) >= 3 and police.messages[0].duplicates >= 1,
                timeout=30,
            )
            zones = sorted(m.contact_id.zone for m in police.messages if m.contact_id)
            assert zones == [1, 2, 3], log.read_text()
            assert len({m.seq for m in police.messages}) == 3
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
