"""DC09Sender against the police receiver simulator over real sockets (port 0, no sleeps)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import pydantic
import pytest

from drivers.dc09.codec import contact_id_data, decode, sia_dcs_data
from drivers.dc09.sender import DC09Sender, PathConfig, ReplyKind, SenderConfig
from simulators.police import PoliceReceiver

KEY128 = b"0123456789ABCDEF"
KEY256 = b"0123456789ABCDEF0123456789ABCDEF"
PANIC = contact_id_data("1234", 1, 120, 1, 15)
FAST = {"ack_timeout": 0.15, "connect_timeout": 0.5, "supervision_interval": 0}


def path(rx: PoliceReceiver, transport: str) -> PathConfig:
    port = rx.tcp_port if transport == "tcp" else rx.udp_port
    assert port is not None
    return PathConfig(host="127.0.0.1", port=port, transport=transport)  # type: ignore[arg-type]


def config(
    rx: PoliceReceiver,
    transport: str = "tcp",
    backup: PoliceReceiver | None = None,
    **kw: Any,
) -> SenderConfig:
    values: dict[str, Any] = {
        "receiver": "1",
        "prefix": "1",
        "primary": path(rx, transport),
        "backup": path(backup, transport) if backup else None,
        "key": rx.key,
        **FAST,
    }
    values.update(kw)
    return SenderConfig(**values)


class Health:
    """Records health callbacks and lets a test wait for one."""

    def __init__(self) -> None:
        self.events: list[tuple[str, bool, str]] = []
        self.changed = asyncio.Event()

    def __call__(self, name: str, ok: bool, reason: str) -> None:
        self.events.append((name, ok, reason))
        self.changed.set()

    async def wait(self, name: str, ok: bool, timeout: float) -> float:
        start = time.monotonic()
        async with asyncio.timeout(timeout):
            while not any(e[0] == name and e[1] == ok for e in self.events):
                self.changed.clear()
                await self.changed.wait()
        return time.monotonic() - start


@asynccontextmanager
async def receivers(n: int, **kw: Any) -> AsyncIterator[list[PoliceReceiver]]:
    async with AsyncExitStack() as stack:
        yield [await stack.enter_async_context(PoliceReceiver(**kw)) for _ in range(n)]


@pytest.mark.parametrize("transport", ["tcp", "udp"])
@pytest.mark.parametrize("key", [None, KEY128, KEY256], ids=["plain", "aes128", "aes256"])
async def test_ack(transport: str, key: bytes | None) -> None:
    async with PoliceReceiver(key=key) as rx, DC09Sender(config(rx, transport)) as tx:
        result = await tx.send("1234", PANIC)
        assert result.accepted
        assert result.reply is ReplyKind.ACK
        assert (result.path, result.seq, result.attempts) == ("primary", 1, 1)
        assert result.rtt_ms is not None
        assert result.rtt_ms > 0
        # An encrypted ACK carries the receiver's time; a plain one has none (spec example).
        assert (result.receiver_time is not None) == (key is not None)
        (msg,) = rx.messages
        assert (msg.token, msg.account, msg.seq, msg.code) == ("ADM-CID", "1234", 1, "PA")
        assert msg.contact_id is not None
        assert (msg.contact_id.partition, msg.contact_id.zone) == (1, 15)
        assert msg.encrypted == (key is not None)
        assert msg.transport == transport
        assert (msg.receiver, msg.prefix) == ("1", "1")


@pytest.mark.parametrize("transport", ["tcp", "udp"])
async def test_sia_dcs_with_xdata(transport: str) -> None:
    async with PoliceReceiver() as rx, DC09Sender(config(rx, transport, protocol="SIA-DCS")) as tx:
        xdata = [("X", "116.397"), ("Y", "39.908"), ("V", "http://cam.local/snap.jpg")]
        result = await tx.send("ab12", sia_dcs_data("AB12", "PA", 15, partition=1), xdata)
        assert result.accepted
        (msg,) = rx.messages
        assert (msg.token, msg.account, msg.code, msg.xdata) == (
            "SIA-DCS",
            "AB12",
            "PA",
            tuple(xdata),
        )
        assert msg.sia is not None
        assert (msg.sia.zone, msg.sia.partition) == ("015", 1)


@pytest.mark.parametrize("transport", ["tcp", "udp"])
async def test_clock_one_hour_off_nak_resync_ack(transport: str) -> None:
    async with AsyncExitStack() as stack:
        rx = await stack.enter_async_context(PoliceReceiver(clock_offset=3600, key=KEY128))
        tx = await stack.enter_async_context(DC09Sender(config(rx, transport)))
        result = await tx.send("1234", PANIC)
        assert result.accepted
        assert result.attempts == 2
        assert tx.clock_offset() == pytest.approx(3600, abs=3)
        assert result.clock_offset == tx.clock_offset()
        nak, ack = rx.log
        assert (nak.reply, ack.reply) == ("NAK", "ACK")
        assert nak.frame is not None
        assert ack.frame is not None
        assert nak.frame.seq == ack.frame.seq == result.seq  # same message, resent
        assert ack.frame.timestamp is not None
        assert nak.frame.timestamp is not None
        shift = (ack.frame.timestamp - nak.frame.timestamp).total_seconds()
        assert shift == pytest.approx(3600, abs=3)
        # The offset is remembered: the next message goes through at once.
        again = await tx.send("1234", PANIC)
        assert (again.accepted, again.attempts, again.seq) == (True, 1, 2)
        assert len(rx.messages) == 2


async def test_nak_beyond_max_clock_offset_is_final() -> None:
    async with AsyncExitStack() as stack:
        rx = await stack.enter_async_context(PoliceReceiver(clock_offset=3600))
        tx = await stack.enter_async_context(DC09Sender(config(rx, max_clock_offset=60)))
        result = await tx.send("1234", PANIC)
    assert (result.accepted, result.reply, result.attempts) == (False, ReplyKind.NAK, 1)
    assert result.receiver_time is not None
    assert tx.clock_offset() == 0


@pytest.mark.parametrize("transport", ["tcp", "udp"])
async def test_duh_is_recorded_not_looped(transport: str) -> None:
    health = Health()
    async with receivers(2) as (primary, backup):
        cfg = config(primary, transport, backup=backup)
        async with DC09Sender(cfg, on_health=health) as tx:
            result = await tx.send("1234", contact_id_data("1234", 1, 999, 1, 15))
    assert (result.accepted, result.reply, result.attempts, result.path) == (
        False,
        ReplyKind.DUH,
        1,
        "primary",
    )
    assert primary.counters.frames == 1  # exactly one frame: no retry
    assert primary.counters.duh == 1
    assert primary.messages == []
    assert backup.counters.frames == 0  # and no failover
    assert health.events == []


@pytest.mark.parametrize("transport", ["tcp", "udp"])
async def test_primary_down_retries_same_seq_then_backup_once(transport: str) -> None:
    health = Health()
    async with receivers(2) as (primary, backup):
        primary.pause()
        async with DC09Sender(config(primary, transport, backup=backup), on_health=health) as tx:
            result = await tx.send("1234", PANIC)
        assert result.accepted
        assert (result.path, result.attempts) == ("backup", 4)
        seqs = [decode(e.raw).seq for e in primary.log]
        assert seqs == [result.seq] * 3
        assert all(e.reply is None for e in primary.log)
        (msg,) = backup.messages
        assert (msg.seq, msg.duplicates) == (result.seq, 0)
        assert health.events[0][:2] == ("primary", False)
        assert "no reply" in health.events[0][2]


@pytest.mark.parametrize("transport", ["tcp", "udp"])
async def test_primary_refused_fails_over(transport: str) -> None:
    health = Health()
    async with receivers(2) as (primary, backup):
        cfg = config(primary, transport, backup=backup, ack_timeout=2.0)
        await primary.stop()
        async with DC09Sender(cfg, on_health=health) as tx:
            result = await tx.send("1234", PANIC)
        # Refused is seen at once (TCP RST, ICMP for UDP): no 3 x 2 s of timeouts.
        assert result.accepted
        assert (result.path, result.attempts) == ("backup", 4)
        assert health.events == [("primary", False, health.events[0][2])]
        assert "Refused" in health.events[0][2]


async def test_primary_paused_then_resumed() -> None:
    health = Health()
    async with receivers(2) as (primary, backup):
        cfg = config(primary, backup=backup, primary_retry_after=60)
        async with DC09Sender(cfg, on_health=health) as tx:
            assert (await tx.send("1234", PANIC)).path == "primary"
            primary.pause()
            failed = await tx.send("1234", PANIC)
            assert (failed.path, failed.attempts) == ("backup", 4)
            assert tx.path_health == {"primary": False, "backup": True}
            # Within the back-off the next alarm goes straight to the backup.
            quick = await tx.send("1234", PANIC)
            assert (quick.path, quick.attempts) == ("backup", 1)
            primary.resume()
            # When the backup fails too, the primary is still tried last, and recovers.
            backup.pause()
            last = await tx.send("1234", PANIC)
            assert (last.accepted, last.path, last.attempts) == (True, "primary", 4)
        assert [e[:2] for e in health.events] == [
            ("primary", False),
            ("backup", False),
            ("primary", True),
        ]
        assert [m.seq for m in primary.messages] == [1, 4]
        assert [m.seq for m in backup.messages] == [2, 3]


async def test_primary_back_in_use_after_backoff() -> None:
    async with receivers(2) as (primary, backup):
        cfg = config(primary, backup=backup, primary_retry_after=0)
        async with DC09Sender(cfg) as tx:
            primary.pause()
            assert (await tx.send("1234", PANIC)).path == "backup"
            primary.resume()
            result = await tx.send("1234", PANIC)
            assert (result.path, result.attempts) == ("primary", 1)
            assert tx.path_health == {"primary": True, "backup": True}


@pytest.mark.parametrize("transport", ["tcp", "udp"])
async def test_lost_reply_retransmits_same_seq_recorded_once(transport: str) -> None:
    async with PoliceReceiver(drop_replies=1) as rx, DC09Sender(config(rx, transport)) as tx:
        result = await tx.send("1234", PANIC)
    assert (result.accepted, result.attempts) == (True, 2)
    (msg,) = rx.messages
    assert msg.duplicates == 1
    assert [decode(e.raw).seq for e in rx.log] == [result.seq] * 2


async def test_tcp_reconnects_after_receiver_restart() -> None:
    async with PoliceReceiver() as rx, DC09Sender(config(rx)) as tx:
        assert (await tx.send("1234", PANIC)).accepted
        await rx.stop()
        await rx.start()  # same port, the old connection is gone
        result = await tx.send("1234", PANIC)
        assert result.accepted
        assert len(rx.messages) == 2


async def test_concurrent_sends_are_serialised_per_path() -> None:
    async with PoliceReceiver() as rx, DC09Sender(config(rx)) as tx:
        results = await asyncio.gather(*(tx.send("1234", PANIC) for _ in range(5)))
    assert all(r.accepted and r.attempts == 1 for r in results)
    assert sorted(r.seq for r in results) == [1, 2, 3, 4, 5]
    assert len(rx.messages) == 5


async def test_sequence_wraps_to_0001() -> None:
    async with PoliceReceiver() as rx, DC09Sender(config(rx)) as tx:
        tx._seq = 9998  # white-box: skip 9997 messages
        seqs = [(await tx.send("1234", PANIC)).seq for _ in range(3)]
    assert seqs == [9999, 1, 2]
    assert [m.seq for m in rx.messages] == [9999, 1, 2]


@pytest.mark.parametrize("transport", ["tcp", "udp"])
async def test_supervision_detects_failure_and_recovery(transport: str) -> None:
    interval = 0.2
    health = Health()
    async with PoliceReceiver(key=KEY128) as rx:
        cfg = config(
            rx,
            transport,
            ack_timeout=0.1,
            supervision_interval=interval,
            supervision_account="1234",
        )
        async with DC09Sender(cfg, on_health=health) as tx:
            await rx.wait_for(lambda: rx.counters.null >= 2, timeout=2)
            assert health.events == []
            rx.pause()
            took = await health.wait("primary", False, timeout=2)
            # The next NULL is due within one interval, and its ACK timeout follows.
            assert took <= 2 * interval + 0.1 + 0.2
            assert tx.path_health["primary"] is False
            rx.resume()
            took = await health.wait("primary", True, timeout=2)
            assert took <= 2 * interval + 0.2
        assert [e[:2] for e in health.events] == [("primary", False), ("primary", True)]
        assert rx.messages == []  # link tests are not alarms


async def test_supervision_stays_quiet_while_messages_flow() -> None:
    async with PoliceReceiver() as rx:
        cfg = config(rx, supervision_interval=0.3, supervision_account="1234")
        async with DC09Sender(cfg) as tx:
            deadline = time.monotonic() + 0.6
            while time.monotonic() < deadline:
                assert (await tx.send("1234", PANIC)).accepted
                await asyncio.sleep(0.05)  # pacing the traffic, not waiting for a condition
    assert rx.counters.null == 0
    assert rx.counters.accepted >= 5


async def test_send_null_self_test() -> None:
    async with PoliceReceiver() as rx:
        async with DC09Sender(config(rx, supervision_account="ABC")) as tx:
            result = await tx.send_null()
        assert (result.accepted, result.reply, result.attempts) == (True, ReplyKind.ACK, 1)
        assert rx.counters.null == 1


async def test_cancelled_send_is_not_a_delivery_failure() -> None:
    health = Health()
    async with PoliceReceiver() as rx:
        rx.pause()
        async with DC09Sender(config(rx, ack_timeout=5), on_health=health) as tx:
            task = asyncio.create_task(tx.send("1234", PANIC))
            await rx.wait_for(lambda: rx.counters.ignored_paused == 1, timeout=2)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert health.events == []
            assert tx.path_health["primary"] is True
            rx.resume()
            assert (await tx.send("1234", PANIC)).accepted  # the path lock was released


async def test_send_requires_running_sender_and_valid_message() -> None:
    async with PoliceReceiver() as rx:
        tx = DC09Sender(config(rx))
        with pytest.raises(RuntimeError, match="async with"):
            await tx.send("1234", PANIC)
        async with tx:
            with pytest.raises(ValueError, match="account"):
                await tx.send("12", PANIC)
            with pytest.raises(ValueError, match="data"):
                await tx.send("1234", "bad]data")
        assert rx.counters.frames == 0


def test_config_validation() -> None:
    primary = {"host": "127.0.0.1", "port": 1}
    with pytest.raises(pydantic.ValidationError, match="extra"):
        SenderConfig(primary=primary, supervision_interval=0, surprise=1)  # type: ignore[call-arg]
    with pytest.raises(pydantic.ValidationError, match="supervision_account"):
        SenderConfig(primary=primary)  # type: ignore[arg-type]
    with pytest.raises(pydantic.ValidationError, match="16, 24 or 32"):
        SenderConfig(primary=primary, supervision_interval=0, key=b"short")  # type: ignore[arg-type]
    with pytest.raises(pydantic.ValidationError, match="transport"):
        PathConfig(host="x", port=1, transport="sctp")  # type: ignore[arg-type]
    cfg = SenderConfig(
        primary=primary,  # type: ignore[arg-type]
        receiver="ab",
        supervision_account="abc",
    )
    assert (cfg.receiver, cfg.supervision_account, cfg.attempts, cfg.ack_timeout) == (
        "AB",
        "ABC",
        3,
        2.0,
    )
    assert "key" not in repr(SenderConfig(primary=primary, supervision_interval=0, key=KEY128))  # type: ignore[arg-type]
