"""SIPp (Debian package sip-tester) as a GB/T 28181 platform for the tests: a real process on a
free UDP port, with its scenario from simulators/sipp/ and a log of every SIP message."""

from __future__ import annotations

import contextlib
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

SCENARIOS = Path(__file__).resolve().parent.parent / "simulators" / "sipp"


def sipp_binary() -> str:
    found = shutil.which("sipp")
    if found is None:
        raise RuntimeError(
            "sipp is not installed: run scripts/setup.sh test as root, or "
            "`sudo apt-get install sip-tester`"
        )
    return found


def _udp_port_taken(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
        return False


class Sipp:
    """``Sipp(workdir, "platform", port, username=..., password=...)``; ``start()``,
    ``stop()``; ``messages()`` the SIP messages it received and sent so far."""

    def __init__(
        self,
        workdir: Path,
        scenario: str,
        port: int,
        *,
        username: str = "",
        password: str = "",
        realm: str = "3402000000",
        expires: int = 3600,
    ) -> None:
        self.workdir = workdir
        self.scenario = SCENARIOS / f"{scenario}.xml"
        self.port = port
        self.keys = {
            "username": username,
            "password": password,
            "realm": realm,
            "expires": str(expires),
        }
        workdir.mkdir(parents=True, exist_ok=True)
        self.log = workdir / f"sipp-{scenario}-{port}-{time.monotonic_ns()}.log"
        self.errors = self.log.with_suffix(".errors")
        self.proc: subprocess.Popen[bytes] | None = None
        self.logs: list[Path] = []

    def start(self) -> None:
        args = [
            sipp_binary(),
            "-sf",
            str(self.scenario),
            "-t",
            "u1",
            "-i",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-nostdin",
            "-trace_msg",
            "-message_file",
            str(self.log),
            "-trace_err",
            "-error_file",
            str(self.errors),
            "-deadcall_wait",
            "0",
        ]
        for key, value in self.keys.items():
            args += ["-key", key, value]
        self.logs.append(self.log)
        self.proc = subprocess.Popen(
            args, cwd=self.workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while not _udp_port_taken(self.port):
            if self.proc.poll() is not None:
                raise RuntimeError(f"sipp exited at start: {self.read(self.errors)}")
            if time.monotonic() > deadline:
                raise RuntimeError("sipp did not bind its UDP port")
            time.sleep(0.02)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        # A fresh log per run (a restarted platform is a new process).
        self.log = self.workdir / f"sipp-{self.scenario.stem}-{self.port}-{time.monotonic_ns()}.log"

    @staticmethod
    def read(path: Path) -> str:
        with contextlib.suppress(OSError):
            return path.read_bytes().decode("utf-8", errors="replace")
        return ""

    def raw(self) -> bytes:
        out = b""
        for path in self.logs:
            with contextlib.suppress(OSError):
                out += path.read_bytes()
        return out

    def received(self, what: str) -> list[bytes]:
        """Messages SIPp received whose start line begins with ``what`` (e.g. "MESSAGE",
        "REGISTER"), each as raw bytes (its body in the wire encoding)."""
        out = []
        for block in re.split(rb"-{10,} [^\n]*\n", self.raw()):
            if block.lstrip().startswith(b"UDP message received"):
                _, _, msg = block.lstrip().partition(b"\n")
                msg = msg.lstrip(b"\r\n")
                if msg.startswith(what.encode()):
                    out.append(msg)
        return out

    def sent(self, what: str) -> list[bytes]:
        """Messages SIPp sent whose start line begins with ``what`` (e.g. "SIP/2.0 200")."""
        out = []
        for block in re.split(rb"-{10,} [^\n]*\n", self.raw()):
            if block.lstrip().startswith(b"UDP message sent"):
                _, _, msg = block.lstrip().partition(b"\n")
                msg = msg.lstrip(b"\r\n")
                if msg.startswith(what.encode()):
                    out.append(msg)
        return out
