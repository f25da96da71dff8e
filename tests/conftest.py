from __future__ import annotations

import itertools
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import Mosquitto, Postgres
from tests.influx import Influx


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    broker = Mosquitto(tmp_path / "mosquitto")
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[Postgres]:
    # Not under pytest's tmp dir: as root the server runs as 'postgres', which cannot enter
    # pytest's private (0700) folders.
    workdir = Path(tempfile.mkdtemp(prefix="cg-pg-"))
    server = Postgres(workdir)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


_db_numbers = itertools.count(1)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The gateway's database: SQLite (the default) and a real PostgreSQL, one fresh database
    per test."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path}/gw/campusguard.db"
    server: Postgres = request.getfixturevalue("postgres_server")
    return server.create_database(f"cg_test_{next(_db_numbers)}")


@pytest.fixture
def influx(tmp_path: Path) -> Iterator[Influx]:
    """A real InfluxDB 1.x (Debian's influxd) on free ports with database ``telemetry``."""
    server = Influx(tmp_path / "influxdb")
    server.start()
    server.create_database()
    try:
        yield server
    finally:
        server.stop()
