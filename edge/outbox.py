"""The durable outbox: an event is on disk before anything else happens.

SQLite in WAL mode with ``synchronous=FULL`` so a committed alarm survives a power cut; the uplink
removes a row by its id only after the broker's PUBACK (never by timestamp). Alarms sort before
everything else. The per-edge sequence number is allocated in the same transaction as the row, so
sequence numbers are gapless and survive restarts.

All SQLite work runs on one dedicated thread: the event loop never waits on an fsync.

A full disk must not lose an alarm (tests/test_faults.py fills the edge's disk): the outbox keeps
a reserve file of ``RESERVE_BYTES`` beside its database and gives the space back the moment an
event cannot be stored for want of it, then stores the event. While the reserve is spent,
telemetry and evidence are refused (the space is for events), and an event that still cannot be
stored raises :class:`OutboxFullError`, which the caller holds on to and retries (edge/events.py).
The reserve is made again once the disk has room.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self, TypeVar

T = TypeVar("T")

log = logging.getLogger(__name__)

PRIORITY_ALARM = 0
PRIORITY_EVENT = 1
PRIORITY_EVIDENCE = 2
PRIORITY_TELEMETRY = 3

RESERVE_BYTES = 4 * 1024 * 1024
"""Disk space the outbox holds in reserve for events (a few thousand alarms) when the disk fills."""
RESERVE_RETRY_S = 5.0
"""How often, while the reserve is spent, to check whether the disk has room to make it again."""

BULK_BUDGET = 256 * 1024
"""Bytes of bulk messages (evidence, telemetry) handed out per batch: a picture queued on a slow
campus link must not hold an alarm that comes after it for more than about one picture's time."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    priority INTEGER NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    retain INTEGER NOT NULL DEFAULT 0,
    receipt_key TEXT,
    sent_at REAL,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_receipt ON outbox (receipt_key);
CREATE INDEX IF NOT EXISTS outbox_order ON outbox (priority, id);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS point_state (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS evidence (
    id TEXT PRIMARY KEY,
    event_id TEXT NOT NULL,
    camera TEXT NOT NULL,
    shot INTEGER NOT NULL,
    taken_at TEXT NOT NULL,
    path TEXT,
    size INTEGER NOT NULL,
    error TEXT,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS evidence_event ON evidence (event_id);
CREATE INDEX IF NOT EXISTS evidence_created ON evidence (created);
CREATE TABLE IF NOT EXISTS alarm_status (
    alarm_id TEXT NOT NULL,
    state TEXT NOT NULL,
    ts TEXT NOT NULL,
    path TEXT,
    note TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (alarm_id, state)
);
"""


class OutboxFullError(OSError):
    """The disk is full (the reserve spent too): the message was not stored."""


def _disk_full(exc: BaseException) -> bool:
    """SQLite could not write for want of space (SQLITE_FULL, or an I/O error on the write)."""
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(exc, sqlite3.OperationalError) and (
        code is not None and (code & 0xFF) in (sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR)
    )


@dataclass(frozen=True, slots=True)
class EvidenceRecord:
    """A snapshot (or the reason for a missing one) the edge holds for an alarm."""

    id: str
    event_id: str
    camera: str
    shot: int
    taken_at: str
    path: str | None
    size: int
    error: str | None


@dataclass(frozen=True, slots=True)
class OutboxItem:
    id: int
    priority: int
    topic: str
    payload: bytes
    retain: bool
    receipt_key: str | None


class Outbox:
    """Durable, prioritised queue of MQTT messages waiting for the broker's acknowledgement."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox")
        self._conn: sqlite3.Connection | None = None
        self.changed = asyncio.Event()
        self.receipted = asyncio.Event()
        """Set by every receipt from the centre (the uplink clears it at each connection)."""
        self._depth = 0
        self._reserve = path.with_name(path.name + ".reserve")
        self.reserve_spent = False
        """The reserve was given back to store events: the disk is (or was) full."""
        self._reserve_checked = 0.0
        self.backlog_at_open = False
        """Messages that need a receipt were on disk when the outbox was opened: left by an
        earlier run of the edge (killed, restarted) that the centre may never have seen."""

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
        # FULL: the WAL is fsynced at every commit; an alarm reported stored is on the disk.
        conn.execute("PRAGMA synchronous=FULL")
        conn.executescript(_SCHEMA)
        self._conn = conn
        self._depth = conn.execute("SELECT count(*) FROM outbox").fetchone()[0]
        self.backlog_at_open = (
            conn.execute("SELECT 1 FROM outbox WHERE receipt_key IS NOT NULL LIMIT 1").fetchone()
            is not None
        )
        self._make_reserve()

    def _make_reserve(self) -> None:
        """Hold ``RESERVE_BYTES`` in a file (real blocks, not a sparse file); on a disk that has
        not that much room left, try again later."""
        try:
            if self._reserve.exists() and self._reserve.stat().st_size >= RESERVE_BYTES:
                self.reserve_spent = False
                return
            st = os.statvfs(self._reserve.parent)
            if st.f_bavail * st.f_frsize < 2 * RESERVE_BYTES:
                self.reserve_spent = True
                return
            with self._reserve.open("wb") as f:
                if hasattr(os, "posix_fallocate"):
                    os.posix_fallocate(f.fileno(), 0, RESERVE_BYTES)  # blocks, even compressed
                else:
                    f.write(b"\0" * RESERVE_BYTES)
                    f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            self._reserve.unlink(missing_ok=True)
            self.reserve_spent = True
            log.warning("could not set aside the outbox's disk reserve: %s", exc)
            return
        if self.reserve_spent:
            log.warning("the edge's disk has room again: the outbox's reserve is set aside again")
        self.reserve_spent = False

    def _spend_reserve(self) -> bool:
        """Give the reserve's space back so an event can be stored; False if none was left."""
        if not self._reserve.exists():
            return False
        self._reserve.unlink()
        self.reserve_spent = True
        self._reserve_checked = time.monotonic()
        log.critical(
            "the edge's disk is full: gave back the outbox's %d MiB reserve to store events; "
            "telemetry and evidence are refused until there is room again",
            RESERVE_BYTES // (1024 * 1024),
        )
        return True

    def _check_room(self) -> None:
        """While the reserve is spent: refuse bulk writes, and make it again once there is room."""
        if not self.reserve_spent:
            return
        if time.monotonic() - self._reserve_checked >= RESERVE_RETRY_S:
            self._reserve_checked = time.monotonic()
            self._make_reserve()
        if self.reserve_spent:
            raise OutboxFullError("the edge's disk is full: space is kept for events")

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def _run(self, fn: Callable[[], T]) -> T:
        loop = asyncio.get_running_loop()
        # shield: a cancelled caller must not leave a half-done transaction behind; the thread
        # finishes the statement either way.
        return await asyncio.shield(loop.run_in_executor(self._executor, fn))

    @property
    def db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("outbox is not open")
        return self._conn

    @property
    def depth(self) -> int:
        return self._depth

    async def add_sequenced(
        self,
        build: Callable[[int], tuple[str, bytes, T]],
        priority: int,
        receipt_key: str | None = None,
        point_state: tuple[str, str] | None = None,
    ) -> T:
        """Allocate the next sequence number and store the message built with it, atomically.

        ``build(seq)`` returns ``(topic, payload, value)``; ``value`` is handed back once the
        row is committed to disk. With ``receipt_key`` the row stays after the broker's PUBACK
        until :meth:`confirm` is called with that key (the gateway's receipt). With
        ``point_state`` (key, state) the input's reported state is saved in the same
        transaction (see :meth:`save_point_states`).
        """

        def work() -> T:
            try:
                return attempt()
            except sqlite3.OperationalError as exc:
                if not _disk_full(exc):
                    raise
                if not self._spend_reserve():
                    raise OutboxFullError(f"the edge's disk is full: {exc}") from exc
            try:
                return attempt()
            except sqlite3.OperationalError as exc:
                if not _disk_full(exc):
                    raise
                raise OutboxFullError(f"the edge's disk is full: {exc}") from exc

        def attempt() -> T:
            if self.reserve_spent and time.monotonic() - self._reserve_checked >= RESERVE_RETRY_S:
                self._reserve_checked = time.monotonic()
                self._make_reserve()
            db = self.db
            db.execute("BEGIN IMMEDIATE")
            try:
                row = db.execute("SELECT value FROM meta WHERE key='seq'").fetchone()
                seq = (row[0] if row else 0) + 1
                topic, payload, value = build(seq)
                db.execute(
                    "INSERT INTO meta(key, value) VALUES('seq', ?) "
                    "ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                    (seq,),
                )
                db.execute(
                    "INSERT INTO outbox(priority, topic, payload, retain, receipt_key, created) "
                    "VALUES (?, ?, ?, 0, ?, ?)",
                    (priority, topic, payload, receipt_key, time.time()),
                )
                if point_state is not None:
                    db.execute(
                        "INSERT INTO point_state(key, value) VALUES (?, ?) "
                        "ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                        point_state,
                    )
                db.execute("COMMIT")
            except BaseException:
                # A failed COMMIT (disk full) may have rolled back already.
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
            self._depth += 1
            return value

        value = await self._run(work)
        self.changed.set()
        return value

    async def add(
        self, topic: str, payload: bytes, priority: int, receipt_key: str | None = None
    ) -> None:
        """Queue a message that needs no sequence number (telemetry)."""

        def work() -> None:
            self._check_room()
            with self.db:
                self.db.execute(
                    "INSERT INTO outbox(priority, topic, payload, retain, receipt_key, created) "
                    "VALUES (?, ?, ?, 0, ?, ?)",
                    (priority, topic, payload, receipt_key, time.time()),
                )
            self._depth += 1

        await self._run(work)
        self.changed.set()

    async def trim(self, priority: int, keep: int) -> int:
        """Drop the oldest messages of one (bulk) priority beyond ``keep``; returns how many."""

        def work() -> int:
            with self.db:
                gone = self.db.execute(
                    "DELETE FROM outbox WHERE priority=? AND id NOT IN "
                    "(SELECT id FROM outbox WHERE priority=? ORDER BY id DESC LIMIT ?)",
                    (priority, priority, keep),
                ).rowcount
            self._depth -= gone
            return int(gone)

        return await self._run(work)

    async def add_evidence(
        self, record: EvidenceRecord, topic: str, payload: bytes, priority: int = PRIORITY_EVIDENCE
    ) -> None:
        """Index a snapshot and queue its message in one transaction; it leaves the outbox on
        the gateway's receipt (keyed by the evidence id), like an event."""

        def work() -> None:
            self._check_room()
            now = time.time()
            with self.db:
                self.db.execute(
                    "INSERT OR IGNORE INTO evidence(id, event_id, camera, shot, taken_at, path, "
                    "size, error, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        record.id,
                        record.event_id,
                        record.camera,
                        record.shot,
                        record.taken_at,
                        record.path,
                        record.size,
                        record.error,
                        now,
                    ),
                )
                self.db.execute(
                    "INSERT INTO outbox(priority, topic, payload, retain, receipt_key, created) "
                    "VALUES (?, ?, ?, 0, ?, ?)",
                    (priority, topic, payload, record.id, now),
                )
            self._depth += 1

        await self._run(work)
        self.changed.set()

    async def evidence_for(self, event_id: str) -> list[EvidenceRecord]:
        def work() -> list[EvidenceRecord]:
            rows = self.db.execute(
                "SELECT id, event_id, camera, shot, taken_at, path, size, error FROM evidence "
                "WHERE event_id=? ORDER BY camera, shot",
                (event_id,),
            ).fetchall()
            return [EvidenceRecord(*r) for r in rows]

        return await self._run(work)

    async def expire_evidence(self, created_before: float) -> list[str]:
        """Forget snapshots indexed before ``created_before``; returns their files to delete.
        A snapshot still waiting for the gateway's receipt keeps its message in the outbox."""

        def work() -> list[str]:
            with self.db:
                rows = self.db.execute(
                    "SELECT id, path FROM evidence WHERE created < ?", (created_before,)
                ).fetchall()
                self.db.executemany("DELETE FROM evidence WHERE id=?", [(r[0],) for r in rows])
            return [str(r[1]) for r in rows if r[1]]

        return await self._run(work)

    async def peek(self, limit: int = 64, resend_before: float = 0.0) -> list[OutboxItem]:
        """What to send next: unsent messages, and those sent before ``resend_before`` (on
        ``time.monotonic()``) whose receipt never came; the highest priority first, then the
        oldest."""

        def work() -> list[OutboxItem]:
            rows = self.db.execute(
                "SELECT id, priority, topic, payload, retain, receipt_key FROM outbox "
                "WHERE sent_at IS NULL OR sent_at < ? ORDER BY priority, id LIMIT ?",
                (resend_before, limit),
            ).fetchall()
            items: list[OutboxItem] = []
            bulk = 0
            for r in rows:
                if r[1] >= PRIORITY_EVIDENCE:
                    if items and bulk + len(r[3]) > BULK_BUDGET:
                        break
                    bulk += len(r[3])
                items.append(OutboxItem(r[0], r[1], r[2], bytes(r[3]), bool(r[4]), r[5]))
            return items

        return await self._run(work)

    async def published(self, items: list[OutboxItem]) -> None:
        """The broker acknowledged these: forget them (by id, never by time), or, for those
        that wait for the gateway's receipt, note when they went out."""
        if not items:
            return
        # The monotonic clock, not the wall clock: a wall clock stepped back an hour (NTP, a
        # dead clock battery) would hold every resend back an hour. ``sent_at`` means nothing
        # across runs and is cleared at each connection (``resend_all_unconfirmed``).
        now = time.monotonic()

        def work() -> None:
            with self.db:
                gone = self.db.executemany(
                    "DELETE FROM outbox WHERE id=?",
                    [(i.id,) for i in items if i.receipt_key is None],
                ).rowcount
                self.db.executemany(
                    "UPDATE outbox SET sent_at=? WHERE id=?",
                    [(now, i.id) for i in items if i.receipt_key is not None],
                )
            self._depth -= gone

        await self._run(work)

    async def confirm(self, keys: list[str]) -> int:
        """The gateway stored these events: they can go."""
        if not keys:
            return 0
        self.receipted.set()

        def work() -> int:
            with self.db:
                gone = self.db.executemany(
                    "DELETE FROM outbox WHERE receipt_key=?", [(k,) for k in keys]
                ).rowcount
            self._depth -= gone
            return int(gone)

        n = await self._run(work)
        if n:
            self.changed.set()
        return n

    async def waiting(self, receipt_key: str) -> bool:
        """Whether the message with this receipt key still waits for its receipt."""

        def work() -> bool:
            row = self.db.execute(
                "SELECT 1 FROM outbox WHERE receipt_key=? LIMIT 1", (receipt_key,)
            ).fetchone()
            return row is not None

        return await self._run(work)

    async def resend_all_unconfirmed(self) -> None:
        """After a reconnect: whatever still waits for a receipt may have died with the broker."""

        def work() -> None:
            with self.db:
                self.db.execute("UPDATE outbox SET sent_at=NULL WHERE sent_at IS NOT NULL")

        await self._run(work)
        self.changed.set()

    async def unconfirmed(self) -> int:
        def work() -> int:
            row = self.db.execute("SELECT count(*) FROM outbox WHERE sent_at IS NOT NULL")
            return int(row.fetchone()[0])

        return await self._run(work)

    async def last_seq(self) -> int:
        def work() -> int:
            row = self.db.execute("SELECT value FROM meta WHERE key='seq'").fetchone()
            return int(row[0]) if row else 0

        return await self._run(work)

    async def save_point_states(self, states: dict[str, str]) -> None:
        """Remember reported input states, so a restart does not re-raise a held button."""
        if not states:
            return

        def work() -> None:
            with self.db:
                self.db.executemany(
                    "INSERT INTO point_state(key, value) VALUES (?, ?) "
                    "ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                    list(states.items()),
                )

        await self._run(work)

    async def load_point_states(self) -> dict[str, str]:
        def work() -> dict[str, str]:
            rows = self.db.execute("SELECT key, value FROM point_state").fetchall()
            return {str(k): str(v) for k, v in rows}

        return await self._run(work)

    async def record_alarm_status(
        self, alarm_id: str, state: str, ts: str, path: str | None, note: str
    ) -> bool:
        """Keep what the centre told us about an alarm; False if we already had that step."""

        def work() -> bool:
            with self.db:
                cur = self.db.execute(
                    "INSERT OR IGNORE INTO alarm_status(alarm_id, state, ts, path, note) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (alarm_id, state, ts, path, note),
                )
            return cur.rowcount > 0

        return await self._run(work)

    async def alarm_statuses(self, alarm_id: str) -> list[tuple[str, str, str | None, str]]:
        def work() -> list[tuple[str, str, str | None, str]]:
            rows = self.db.execute(
                "SELECT state, ts, path, note FROM alarm_status WHERE alarm_id=? ORDER BY ts",
                (alarm_id,),
            ).fetchall()
            return [(r[0], r[1], r[2], r[3]) for r in rows]

        return await self._run(work)

    async def put_value(self, key: str, value: str | None) -> None:
        """Keep a small piece of edge state (JSON text) across restarts; None forgets it.
        Committed with fsync before this returns (the drill in progress lives here)."""

        def work() -> None:
            with self.db:
                if value is None:
                    self.db.execute("DELETE FROM kv WHERE key=?", (key,))
                else:
                    self.db.execute(
                        "INSERT INTO kv(key, value) VALUES (?, ?) "
                        "ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                        (key, value),
                    )

        await self._run(work)

    async def get_value(self, key: str) -> str | None:
        def work() -> str | None:
            row = self.db.execute("SELECT value FROM kv WHERE key=?", (key,)).fetchone()
            return None if row is None else str(row[0])

        return await self._run(work)
