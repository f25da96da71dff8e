"""The database password (issue 11, secrets): from ``${ENV}`` or a secret file, never shown.

``database.password`` / ``password_file`` keep PostgreSQL's password out of the URL; a URL that
carries one anyway is shown with ``***`` in every dump of the config. The connection test runs
against the real PostgreSQL of the suite with a role that must give its password (a
``scram-sha-256`` line for that role alone in ``pg_hba.conf``; the others stay on trust).
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from sqlalchemy import text

from contract.config import ConfigError, DatabaseConfig, GatewayConfig, load_config
from gateway.store.db import make_engine
from tests.gwkit import gateway_config
from tests.helpers import Postgres, _pg_bin

# Characters a URL must escape: the password reaches asyncpg intact all the same.
PASSWORD = "p@ss:w/rd%-?#ö"
ROLE = "cg_pw_role"


def test_a_password_in_the_url_is_never_dumped() -> None:
    db = DatabaseConfig(url="postgresql+asyncpg://campusguard:db-pw@postgres:5432/campusguard")
    assert db.connect_url() == db.url  # it still connects with it
    shown = json.dumps(db.model_dump(mode="json"))
    assert "db-pw" not in shown
    assert "postgresql+asyncpg://campusguard:***@postgres:5432/campusguard" in shown


def test_password_file_goes_into_the_connect_url_only(tmp_path: Path) -> None:
    secret = tmp_path / "db.password"
    secret.write_text(PASSWORD + "\n", encoding="utf-8")
    db = DatabaseConfig(url="postgresql+asyncpg://cg@db/campusguard", password_file=secret)
    assert db.connect_url() == (
        "postgresql+asyncpg://cg:p%40ss%3Aw%2Frd%25-%3F%23%C3%B6@db/campusguard"
    )
    assert PASSWORD not in json.dumps(db.model_dump(mode="json"))


@pytest.mark.parametrize(
    ("database", "message"),
    [
        (
            {"url": "postgresql+asyncpg://cg:inline@db/x", "password": "x"},
            "the password is in url too",
        ),
        ({"url": "postgresql+asyncpg://db/x", "password": "x"}, "needs a user name in url"),
        ({"url": "sqlite+aiosqlite:///tmp/x.db", "password": "x"}, "SQLite has no password"),
    ],
)
def test_a_password_given_twice_or_without_a_user_stops_the_config(
    tmp_path: Path, database: dict[str, str], message: str
) -> None:
    data = gateway_config(tmp_path, 1883, 12345).model_dump(mode="json", exclude_none=True)
    data["database"] = database
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    with pytest.raises(ConfigError) as exc:
        load_config(path, GatewayConfig)
    assert str(path) in str(exc.value)
    assert "database" in str(exc.value)
    assert message in str(exc.value)


@pytest.fixture
def password_role(postgres_server: Postgres) -> Iterator[str]:
    """A role that PostgreSQL asks for its password; the URL of a database it owns."""
    pg = postgres_server
    url = pg.create_database(f"pw_check_{uuid.uuid4().hex[:8]}")
    psql = [_pg_bin("psql"), "-h", "127.0.0.1", "-p", str(pg.port), "-U", "postgres", "-v"]
    escaped = PASSWORD.replace("'", "''")
    subprocess.run(
        [
            *psql,
            "ON_ERROR_STOP=1",
            "-c",
            f"DROP ROLE IF EXISTS {ROLE}; CREATE ROLE {ROLE} LOGIN PASSWORD '{escaped}'",
        ],
        check=True,
        capture_output=True,
    )
    hba = pg.data / "pg_hba.conf"
    before = hba.read_text()
    line = f"host all {ROLE} 127.0.0.1/32 scram-sha-256\n"
    hba.write_text(line + before)  # first match wins: this role only
    reload = [*psql, "ON_ERROR_STOP=1", "-c", "SELECT pg_reload_conf()"]
    subprocess.run(reload, check=True, capture_output=True)
    try:
        yield url.replace("postgres@", f"{ROLE}@", 1)
    finally:
        hba.write_text(before)
        subprocess.run(reload, check=True, capture_output=True)


async def test_the_gateway_connects_with_the_password_from_its_file(
    tmp_path: Path, password_role: str
) -> None:
    secret = tmp_path / "db.password"
    secret.write_text(PASSWORD, encoding="utf-8")
    db = DatabaseConfig(url=password_role, password_file=secret)
    engine = make_engine(db.connect_url())
    try:
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT current_user"))).scalar() == ROLE
    finally:
        await engine.dispose()
    # And PostgreSQL does check it: the URL alone (no password) is refused.
    engine = make_engine(password_role)
    try:
        with pytest.raises(Exception, match="password"):
            async with engine.connect():
                pass
    finally:
        await engine.dispose()
