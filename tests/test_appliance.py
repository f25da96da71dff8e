"""Appliance install without Docker (issue 12, part 4): the install script stages the
application, config directory, state directory, systemd units and journald log rotation; the
units pass `systemd-analyze verify`. (Creating the user and calling systemctl need a real
system: the script's --root mode skips exactly those, and the virtualenv with --no-venv.)"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "install-appliance.sh"
CAMPUSGUARD = Path(os.environ.get("VIRTUAL_ENV", ROOT / ".venv")) / "bin" / "campusguard"


def install(dest: Path, role: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), "--role", role, "--root", str(dest), "--no-venv"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("role", ["edge", "gateway"])
def test_install_stages_config_state_units_and_log_rotation(tmp_path: Path, role: str) -> None:
    r = install(tmp_path, role)
    assert r.returncode == 0, r.stderr
    etc = tmp_path / "etc" / "campusguard"
    cfg = etc / f"{role}.yaml"
    assert cfg.read_text() == (ROOT / "config" / f"{role}.example.yaml").read_text()
    assert stat.S_IMODE(cfg.stat().st_mode) == 0o640  # may hold secrets
    assert stat.S_IMODE((etc / f"{role}.env").stat().st_mode) == 0o640
    assert stat.S_IMODE(etc.stat().st_mode) == 0o750
    assert (tmp_path / "var" / "lib" / "campusguard").is_dir()
    unit = (tmp_path / "etc" / "systemd" / "system" / f"campusguard-{role}.service").read_text()
    assert f"--config /etc/campusguard/{role}.yaml" in unit
    assert "Restart=always" in unit and "ProtectSystem=strict" in unit
    journald = tmp_path / "etc" / "systemd" / "journald.conf.d" / "campusguard.conf"
    assert "MaxRetentionSec=" in journald.read_text()
    app = tmp_path / "opt" / "campusguard"
    for package in ("campusguard", "contract", "drivers", "edge", "gateway", "webkit"):
        assert (app / package / "__init__.py").exists(), package
    assert "doctor" in r.stdout and f"systemctl enable --now campusguard-{role}" in r.stdout
    # A second run (an upgrade) keeps the edited config.
    cfg.write_text("# edited by the installer\n")
    assert install(tmp_path, role).returncode == 0
    assert cfg.read_text() == "# edited by the installer\n"


def test_install_refuses_a_bad_role(tmp_path: Path) -> None:
    r = install(tmp_path, "router")
    assert r.returncode == 2 and "--role must be edge or gateway" in r.stderr


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not here")
@pytest.mark.parametrize("role", ["edge", "gateway"])
def test_units_verify(tmp_path: Path, role: str) -> None:
    """systemd's own check; the only change is where the program lives in this checkout."""
    text = (ROOT / "config" / "systemd" / f"campusguard-{role}.service").read_text()
    unit = tmp_path / f"campusguard-{role}.service"
    unit.write_text(text.replace("/opt/campusguard/venv/bin/campusguard", str(CAMPUSGUARD)))
    r = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0 and not r.stderr.strip(), r.stderr
    # What ExecStartPre runs (the same arguments): the shipped example config passes.
    assert f"config check /etc/campusguard/{role}.yaml --kind {role}" in text
    r = subprocess.run(
        [
            str(CAMPUSGUARD),
            "config",
            "check",
            str(ROOT / "config" / f"{role}.example.yaml"),
            "--kind",
            role,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "CG_MQTT_PASSWORD": "x" * 12},
    )
    assert r.returncode == 0, r.stderr + r.stdout
