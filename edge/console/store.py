"""The console's own records: each alarm's life at the booth (new -> acknowledged -> closed)
and the audit trail of every action (who, when, what).

A separate SQLite file (``<data_dir>/console.db``) rather than tables in the outbox: the outbox
is the alarm path and its one writer thread must never wait behind a page view; these records
are the guard's, may be pruned on their own schedule, and a damaged console file never touches
an alarm on its way to the police. Same discipline as the outbox: WAL, ``synchronous=FULL``,
all SQLite work on one thread (which also serialises two guards acknowledging at once).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal, Self, TypeVar

from contract.models import Event

T = TypeVar("T")

AlarmRecordState = Literal["new", "acknowledged", "closed"]
Disposition = Literal["real", "false_alarm", "test_drill", "device_fault"]
DISPOSITIONS: tuple[Disposition, ...] = ("real", "false_alarm", "test_drill", "device_fault")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS console_alarm (
    id TEXT PRIMARY KEY,
    event TEXT NOT NULL,
    ts TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'new',
    ack_by TEXT,
    ack_at TEXT,
    ack_note TEXT NOT NULL DEFAULT '',
    closed_by TEXT,
    closed_at TEXT,
    disposition TEXT,
    close_note TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS console_alarm_ts ON console_alarm (ts);
CREATE TABLE IF NOT EXISTS console_audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts TEXT NOT NULL,
    user TEXT NOT NULL,
    address TEXT NOT NULL,
    action TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT ''
);
"""

_COLS = "event, state, ack_by, ack_at, ack_note, closed_by, closed_at, disposition, close_note"


@dataclass(frozen=True, slots=True)
class AlarmRecord:
    """An alarm as the booth handled it."""

    event: Event
    state: AlarmRecordState
    ack_by: str | None
    ack_at: str | None
    ack_note: str
    closed_by: str | None
    closed_at: str | None
    disposition: str | None
    close_note: str

    @property
    def id(self) -> str:
        return self.event.id


@dataclass(frozen=True, slots=True)
class AuditEntry:
    ts: str
    user: str
    address: str
    action: str
    detail: str


def _record(row: tuple[str, ...]) -> AlarmRecord:
    return AlarmRecord(
        Event.model_validate_json(row[0]),
        row[1],  # type: ignore[arg-type]
        row[2],
        row[3],
        row[4],
        row[5],
        row[6],
        row[7],
        row[8],
    )


class ConsoleStore:
    """SQLite behind one thread; every method is a coroutine."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="console-db")
        self._conn: sqlite3.Connection | None = None

    async def __aenter__(self) -> Self:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        await self._run(self._open)
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._run(self._close)
        self._executor.shutdown(wait=True)

    def _open(self) -> None:
        conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.executescript(_SCHEMA)
        self._conn = conn

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    @property
    def db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("console store is not open")
        return self._conn

    async def _run(self, fn: Callable[[], T]) -> T:
        loop = asyncio.get_running_loop()
        return await asyncio.shield(loop.run_in_executor(self._executor, fn))

    async def add_alarm(self, event: Event) -> bool:
        """Record a new alarm; False if it was already there (a repeat)."""

        def work() -> bool:
            with self.db:
                cur = self.db.execute(
                    "INSERT OR IGNORE INTO console_alarm(id, event, ts) VALUES (?, ?, ?)",
                    (event.id, event.model_dump_json(), event.ts.isoformat()),
                )
            return cur.rowcount > 0

        return await self._run(work)

    async def alarm(self, alarm_id: str) -> AlarmRecord | None:
        def work() -> AlarmRecord | None:
            row = self.db.execute(
                f"SELECT {_COLS} FROM console_alarm WHERE id=?",  # noqa: S608 - fixed columns
                (alarm_id,),
            ).fetchone()
            return None if row is None else _record(row)

        return await self._run(work)

    async def alarms(self, open_only: bool = False, limit: int = 50) -> list[AlarmRecord]:
        """The newest first; ``open_only``: not closed yet."""

        def work() -> list[AlarmRecord]:
            where = "WHERE state != 'closed'" if open_only else ""
            rows = self.db.execute(
                f"SELECT {_COLS} FROM console_alarm {where} "  # noqa: S608 - fixed text
                "ORDER BY ts DESC, id DESC LIMIT ?",
                (limit,),
            ).fetchall()
            return [_record(r) for r in rows]

        return await self._run(work)

    async def count_new(self) -> int:
        def work() -> int:
            row = self.db.execute("SELECT count(*) FROM console_alarm WHERE state='new'")
            return int(row.fetchone()[0])

        return await self._run(work)

    async def acknowledge(
        self, alarm_id: str, user: str, at: str, note: str
    ) -> tuple[bool, AlarmRecord | None]:
        """Acknowledge if nobody has yet. Returns (won, the record as it is now): a guard who
        loses the race learns who acknowledged and when."""

        def work() -> tuple[bool, AlarmRecord | None]:
            with self.db:
                cur = self.db.execute(
                    "UPDATE console_alarm SET state='acknowledged', ack_by=?, ack_at=?, "
                    "ack_note=? WHERE id=? AND state='new'",
                    (user, at, note, alarm_id),
                )
            row = self.db.execute(
                f"SELECT {_COLS} FROM console_alarm WHERE id=?",  # noqa: S608 - fixed columns
                (alarm_id,),
            ).fetchone()
            return cur.rowcount > 0, None if row is None else _record(row)

        return await self._run(work)

    async def close(
        self, alarm_id: str, user: str, at: str, disposition: str, note: str
    ) -> tuple[bool, bool, AlarmRecord | None]:
        """Close if still open (an unacknowledged alarm is acknowledged by the same hand).
        Returns (won, also_acknowledged, the record as it is now)."""

        def work() -> tuple[bool, bool, AlarmRecord | None]:
            with self.db:
                acked = self.db.execute(
                    "UPDATE console_alarm SET state='acknowledged', ack_by=?, ack_at=?, "
                    "ack_note=? WHERE id=? AND state='new'",
                    (user, at, note, alarm_id),
                ).rowcount
                cur = self.db.execute(
                    "UPDATE console_alarm SET state='closed', closed_by=?, closed_at=?, "
                    "disposition=?, close_note=? WHERE id=? AND state='acknowledged'",
                    (user, at, disposition, note, alarm_id),
                )
            row = self.db.execute(
                f"SELECT {_COLS} FROM console_alarm WHERE id=?",  # noqa: S608 - fixed columns
                (alarm_id,),
            ).fetchone()
            return cur.rowcount > 0, acked > 0, None if row is None else _record(row)

        return await self._run(work)

    async def audit(self, ts: str, user: str, address: str, action: str, detail: str) -> None:
        def work() -> None:
            with self.db:
                self.db.execute(
                    "INSERT INTO console_audit(ts, user, address, action, detail) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (ts, user, address, action, detail[:1000]),
                )

        await self._run(work)

    async def audit_log(self, limit: int = 200) -> list[AuditEntry]:
        def work() -> list[AuditEntry]:
            rows = self.db.execute(
                "SELECT ts, user, address, action, detail FROM console_audit "
                "ORDER BY id DESC LIMIT ?",
                (limit,),
            ).fetchall()
            return [AuditEntry(*r) for r in rows]

        return await self._run(work)
