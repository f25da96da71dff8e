"""The demo's smoke test: the one place the embedded broker (amqtt) is used."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.helpers import env_with_pythonpath, free_port

ROOT = Path(__file__).resolve().parent.parent


def test_demo_runs_and_stops_cleanly(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "campusguard.cli",
            "demo",
            "--duration",
            "2",
            "--data-dir",
            str(tmp_path),
            "--http-port",
            str(free_port()),
        ],
        cwd=ROOT,
        env=env_with_pythonpath(),
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "the police received ADM-CID #1234|1120 01 001" in out
    assert "police_received via primary" in out
    assert re.search(r"campusguard(\.cli)? sim press 1 --url http://127\.0\.0\.1:\d+", out)
    # The press latched: its release is no restore (a guard resets it at the console).
    assert "stays raised (latched) until a guard closes it" in out
    assert "demo stopped: alarms at the police: 1" in out
    # The camera over the guard room: online at the centre (its retained device status), its
    # test stream served, and its tamper event raised for the guard, not the police.
    assert "camera cam-guardroom is online at the centre (its retained device status" in out
    assert re.search(r"camera \(ONVIF sim\) +http://127\.0\.0\.1:\d+/onvif/device_service", out)
    assert re.search(r"RTSP rtsp://127\.0\.0\.1:\d+/guardroom \((h264|mjpeg)\)", out)
    assert re.search(r"the edge raised camera_tamper \w+ for the guard", out)
    assert "curl -X POST 'http://127.0.0.1:" in out and "/event?kind=field_intrusion" in out
    assert (tmp_path / "police-received.jsonl").read_text().count("1120 01 001") == 1
    assert "Traceback" not in proc.stderr
