"""A real InfluxDB 1.x (Debian's ``influxdb`` package) on free loopback ports, for the tests.

Like ``tests.helpers.Mosquitto``: a generated config in a work dir, started with a deadline on
``/ping``, stopped with SIGTERM (or killed with SIGKILL), restartable on the same ports and data
dir, so what it acknowledged before a kill is still there afterwards (WAL, fsync on).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from tests.helpers import free_port


def influxd_binary() -> str:
    found = shutil.which("influxd") or (
        "/usr/bin/influxd" if Path("/usr/bin/influxd").exists() else None
    )
    if found is None:
        raise RuntimeError(
            "influxd is not installed: run `bash scripts/setup.sh test` as root, or "
            "`sudo apt-get install influxdb`"
        )
    return found


class Influx:
    """One ``influxd`` (1.x, v1 HTTP API) in ``workdir``: HTTP and RPC on free ports, no
    reporting, no UDP / Graphite / collectd / OpenTSDB, no ``_internal`` monitor database."""

    ADMIN = ("cg-admin", "cg-admin-pw")

    def __init__(self, workdir: Path, database: str = "telemetry", auth: bool = False) -> None:
        self.workdir = workdir
        self.database = database
        self.auth = auth
        self.http_port = free_port()
        self.rpc_port = free_port()
        while self.rpc_port == self.http_port:
            self.rpc_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.conf = workdir / "influxdb.conf"
        self.log = workdir / "influxd.log"
        workdir.mkdir(parents=True, exist_ok=True)
        self.conf.write_text(
            "reporting-disabled = true\n"
            f'bind-address = "127.0.0.1:{self.rpc_port}"\n'
            "[meta]\n"
            f'  dir = "{workdir}/meta"\n'
            "  logging-enabled = false\n"
            "[data]\n"
            f'  dir = "{workdir}/data"\n'
            f'  wal-dir = "{workdir}/wal"\n'
            '  wal-fsync-delay = "0s"\n'
            '  index-version = "inmem"\n'
            "  query-log-enabled = false\n"
            "[monitor]\n"
            "  store-enabled = false\n"
            "[subscriber]\n"
            "  enabled = false\n"
            "[continuous_queries]\n"
            "  enabled = false\n"
            "[http]\n"
            "  enabled = true\n"
            f'  bind-address = "127.0.0.1:{self.http_port}"\n'
            f"  auth-enabled = {'true' if auth else 'false'}\n"
            "  log-enabled = false\n"
            "  pprof-enabled = false\n"
            "[logging]\n"
            '  level = "warn"\n'
            "  suppress-logo = true\n"
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self, timeout: float = 30.0) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [influxd_binary(), "run", "-config", str(self.conf)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"influxd exited: {self.log.read_text(errors='replace')}")
            if self.ping():
                if self.auth:
                    # with auth on and no user yet, InfluxDB lets anyone create the first admin
                    user, password = self.ADMIN
                    with contextlib.suppress(urllib.error.HTTPError):  # 401: made before
                        self._post(
                            {
                                "q": f"CREATE USER \"{user}\" WITH PASSWORD '{password}' "
                                "WITH ALL PRIVILEGES"
                            },
                            login=False,
                        )
                return
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"influxd did not answer /ping within {timeout} s")

    def ping(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/ping", timeout=0.5) as resp:
                return int(resp.status) == 204
        except (OSError, urllib.error.URLError):
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        """SIGKILL: no shutdown at all, as a crash or the OOM killer does."""
        if self.proc is not None:
            if self.proc.poll() is None:
                os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            self.proc = None

    def restart(self) -> None:
        """Start again on the same ports and data dir."""
        self.stop()
        self.start()

    # --- queries --------------------------------------------------------------------------

    def _post(self, params: dict[str, str], timeout: float = 30.0, login: bool = True) -> Any:
        url = f"{self.url}/query"
        if self.auth and login:  # 1.x reads u and p from the URL, not the form
            url += "?" + urllib.parse.urlencode({"u": self.ADMIN[0], "p": self.ADMIN[1]})
        body = urllib.parse.urlencode(params).encode()
        req = urllib.request.Request(url, data=body, method="POST")
        req.add_header("Content-Type", "application/x-www-form-urlencoded")
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read())

    def query(self, q: str, db: str | None = None, epoch: str = "ns") -> list[dict[str, Any]]:
        """Run InfluxQL; return the series of the first statement (``[]`` when empty). Raises
        on an error in the answer."""
        params = {"q": q, "epoch": epoch, "db": db or self.database}
        answer = self._post(params)
        results = answer.get("results", [])
        if "error" in answer:
            raise RuntimeError(f"influx query {q!r}: {answer['error']}")
        if results and "error" in results[0]:
            raise RuntimeError(f"influx query {q!r}: {results[0]['error']}")
        series: list[dict[str, Any]] = results[0].get("series", []) if results else []
        return series

    def rows(self, q: str, db: str | None = None) -> list[dict[str, Any]]:
        """The rows of every series of the first statement as dicts (tags merged in)."""
        out: list[dict[str, Any]] = []
        for s in self.query(q, db=db):
            for values in s.get("values", []):
                row = dict(zip(s["columns"], values, strict=True))
                row.update(s.get("tags") or {})
                row["_measurement"] = s.get("name")
                out.append(row)
        return out

    def count(self, measurement: str, field: str, db: str | None = None) -> int:
        series = self.query(f'SELECT count("{field}") FROM "{measurement}"', db=db)
        if not series:
            return 0
        return int(series[0]["values"][0][1])

    def create_database(self, name: str | None = None) -> str:
        name = name or self.database
        self._post({"q": f'CREATE DATABASE "{name}"'})
        return name

    def drop_database(self, name: str) -> None:
        self._post({"q": f'DROP DATABASE "{name}"'})
