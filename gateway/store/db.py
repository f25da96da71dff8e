"""Opening the database and bringing its schema up to date with Alembic."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, event
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import ConnectionPoolEntry, NullPool

MIGRATIONS = Path(__file__).parent / "migrations"


def _sqlite_pragmas(dbapi_conn: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
    # Let us issue BEGIN ourselves (below): the driver's implicit, deferred BEGIN lets a read
    # transaction try to become a writer and fail with "database is locked" at once.
    dbapi_conn.isolation_level = None  # type: ignore[attr-defined]
    cur = dbapi_conn.cursor()
    # WAL lets the API read while ingest writes; FULL makes every committed alarm durable.
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA busy_timeout=5000")
    cur.close()


def _sqlite_begin(conn: Connection) -> None:
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def make_engine(url: str) -> AsyncEngine:
    if url.startswith("sqlite"):
        path = url.split(":///", 1)[1] if ":///" in url else ""
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        # One connection: SQLite has one writer anyway, and in-process queuing is cheaper and
        # fairer than lock retries. Several gateways need PostgreSQL.
        engine = create_async_engine(url, pool_size=1, max_overflow=0, pool_timeout=15)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        event.listen(engine.sync_engine, "begin", _sqlite_begin)
        return engine
    # No pre-ping: it cost a round trip before every transaction, ~10 per alarm. A connection
    # that died in the pool (PostgreSQL restarted, a proxy cut it) fails its first statement
    # instead; SQLAlchemy then sees the disconnect and discards every pooled connection older
    # than it, and the alarm path's store operations try once more on a fresh one
    # (``repo._reconnecting``). Recycling after 30 min keeps clear of server / NAT idle cuts.
    return create_async_engine(url, pool_size=10, max_overflow=10, pool_recycle=1800)


def _read_only(dbapi_conn: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA query_only=1")
    cur.execute("PRAGMA busy_timeout=5000")
    cur.close()


def read_sessions(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions for reads that must not queue behind writes (the consoles' live boards). On
    SQLite the store has ONE connection, and every alarm written goes through it with an
    fsync: a read queued behind a burst of them would show the alarm late. WAL lets readers run
    beside the writer, so these read on connections of their own, opened per read (NullPool:
    nothing to close at shutdown), refusing to write. Other databases (and an in-memory SQLite,
    which a second connection would not see) get the store's own sessions."""
    url = engine.url
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return async_sessionmaker(engine, expire_on_commit=False)
    reads = create_async_engine(url, poolclass=NullPool)
    event.listen(reads.sync_engine, "connect", _read_only)
    return async_sessionmaker(reads, expire_on_commit=False)


async def migrate(engine: AsyncEngine) -> None:
    """Upgrade the schema to the newest Alembic revision (idempotent)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    async with engine.begin() as conn:
        await conn.run_sync(_upgrade, cfg)


def _upgrade(sync_conn: object, cfg: Config) -> None:
    cfg.attributes["connection"] = sync_conn
    command.upgrade(cfg, "head")
