"""The edge outbox: on disk first, alarms first, gone only when confirmed."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from edge.outbox import PRIORITY_ALARM, PRIORITY_EVENT, PRIORITY_TELEMETRY, Outbox


def _build(topic: str, key: str):  # type: ignore[no-untyped-def]
    def build(seq: int) -> tuple[str, bytes, int]:
        return topic, f"{key}:{seq}".encode(), seq

    return build


async def test_alarms_first_then_age_and_gapless_sequence(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    async with Outbox(path) as box:
        assert await box.add_sequenced(_build("t/event", "e1"), PRIORITY_EVENT, "k1") == 1
        assert await box.add_sequenced(_build("t/tel", "t1"), PRIORITY_TELEMETRY) == 2
        assert await box.add_sequenced(_build("t/alarm", "a1"), PRIORITY_ALARM, "k3") == 3
        items = await box.peek()
        assert [i.payload for i in items] == [b"a1:3", b"e1:1", b"t1:2"]
        assert box.depth == 3
    # Committed means on disk: another connection sees it, and the sequence continues.
    rows = sqlite3.connect(path).execute("SELECT count(*) FROM outbox").fetchone()[0]
    assert rows == 3
    async with Outbox(path) as box:
        assert box.depth == 3
        assert await box.add_sequenced(_build("t/alarm", "a2"), PRIORITY_ALARM, "k4") == 4
        assert await box.last_seq() == 4


async def test_kept_until_receipt_and_resent(tmp_path: Path) -> None:
    async with Outbox(tmp_path / "outbox.db") as box:
        await box.add_sequenced(_build("t/alarm", "a"), PRIORITY_ALARM, "key-a")
        await box.add_sequenced(_build("t/tel", "t"), PRIORITY_TELEMETRY)
        items = await box.peek()
        await box.published(items)  # the broker's PUBACK
        # Telemetry is done; the alarm waits for the gateway's receipt.
        assert box.depth == 1
        assert await box.peek(resend_before=0.0) == []
        assert await box.unconfirmed() == 1
        # Not confirmed in time: it comes back for sending.
        again = await box.peek(resend_before=float("inf"))
        assert [i.receipt_key for i in again] == ["key-a"]
        await box.resend_all_unconfirmed()
        assert len(await box.peek()) == 1
        assert await box.confirm(["key-a", "unknown"]) == 1
        assert box.depth == 0
        assert await box.peek(resend_before=float("inf")) == []


async def test_point_states_and_alarm_status(tmp_path: Path) -> None:
    async with Outbox(tmp_path / "outbox.db") as box:
        await box.save_point_states({"di/btn": "active"})
        await box.save_point_states({"di/btn": "normal", "di/b2": "active"})
        assert await box.load_point_states() == {"di/btn": "normal", "di/b2": "active"}
        assert await box.record_alarm_status("A" * 26, "received", "t1", None, "")
        assert not await box.record_alarm_status("A" * 26, "received", "t1", None, "")
        assert await box.record_alarm_status("A" * 26, "police_received", "t2", "primary", "")
        steps = await box.alarm_statuses("A" * 26)
        assert [s[0] for s in steps] == ["received", "police_received"]


async def test_point_state_is_saved_with_its_event(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    async with Outbox(path) as box:
        await box.add_sequenced(
            _build("t/alarm", "a1"), PRIORITY_ALARM, "k1", point_state=("di-1/btn", "active")
        )
    # One transaction: whoever sees the event sees the state (and the other way round).
    db = sqlite3.connect(path)
    assert db.execute("SELECT value FROM point_state WHERE key='di-1/btn'").fetchone() == (
        "active",
    )
    assert db.execute("SELECT count(*) FROM outbox").fetchone()[0] == 1
