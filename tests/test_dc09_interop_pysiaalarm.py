"""Interop with an independent DC-09 receiver: pysiaalarm (the Home Assistant SIA library).

A shared codec is not proof: these tests run our sender against pysiaalarm's asyncio servers,
which have their own regexes, CRC and AES (pycryptodome). What pysiaalarm does, read from
its source (3.2.x):

* key: ``SIAAccount(account_id, key)`` takes the key as a *string* and uses its UTF-8 bytes as
  the AES key (16/24/32 characters for AES-128/192/256; it validates them as hex digits).
  That is our ``key_from_config(value, "ascii")``, not the hex-decoded form.
* timestamps: ``allowed_timeband=(40, 20)`` against ``datetime.now(UTC)`` -- the spec window;
  a message outside it gets ``"NAK"0000R<r>L<l>A0[]_<its time>`` (seq 0000, account A0).
* ``*ACK``: the pad is ``'0'`` characters from ``str.zfill`` and is not followed by ``|``.
* TCP: one ``read(1000)`` is taken as one frame, hence our one-frame-per-write rule.
* limitation: its ADM-CID regex accepts at most one x-data block, and it never checks the
  length field; neither affects what we send.
* limitation: on Python 3.11 its UDP server never registers its transport (it asserts
  ``isinstance(transport, asyncio.DatagramTransport)``, which the 3.11 selector transport is
  not), so it would never reply. The ``_udp_transport_fix`` fixture stores the transport
  without the assert; the parsing and replying stay pysiaalarm's own.

pysiaalarm's ``SIAClient.__aexit__`` returns True and would swallow a failing assert, so the
servers are started and stopped explicitly here.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pysiaalarm import CommunicationsProtocol, SIAAccount, SIAEvent
from pysiaalarm.aio import SIAClient
from pysiaalarm.aio.server import SIAServerUDP

from drivers.dc09.codec import (
    Frame,
    contact_id_data,
    crc16_arc,
    encode,
    sia_dcs_data,
)
from drivers.dc09.crypto import key_from_config
from drivers.dc09.sender import DC09Sender, PathConfig, ReplyKind, SenderConfig

SPEC_FRAME = b'\n2D8E003D"ADM-CID"0001R1L1#1234[#1234|1120 01 015]_08:30:00,03-15-2025\r'
KEYS = {
    "plain": None,
    "aes128": "0123456789ABCDEF",
    "aes192": "0123456789ABCDEF01234567",
    "aes256": "0123456789ABCDEF0123456789ABCDEF",
}


@pytest.fixture(autouse=True)
def _udp_transport_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    def connection_made(self: SIAServerUDP, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    monkeypatch.setattr(SIAServerUDP, "connection_made", connection_made)


class Inbox:
    """Events delivered by pysiaalarm to its callback (only ACKed ones are delivered)."""

    def __init__(self) -> None:
        self.events: list[SIAEvent] = []
        self._changed = asyncio.Event()

    async def on_event(self, event: SIAEvent) -> None:
        self.events.append(event)
        self._changed.set()

    async def wait(self, count: int, timeout: float = 3.0) -> list[SIAEvent]:
        async with asyncio.timeout(timeout):
            while len(self.events) < count:
                self._changed.clear()
                await self._changed.wait()
        return self.events


@asynccontextmanager
async def sia_server(transport: str, key: str | None) -> AsyncIterator[tuple[int, Inbox]]:
    inbox = Inbox()
    proto = CommunicationsProtocol.TCP if transport == "tcp" else CommunicationsProtocol.UDP
    client: Any = SIAClient(
        "127.0.0.1", 0, [SIAAccount("1234", key)], inbox.on_event, protocol=proto
    )
    await client.async_start()
    if transport == "tcp":
        port = client.server.sockets[0].getsockname()[1]
    else:
        port = client.transport.get_extra_info("sockname")[1]
    try:
        yield port, inbox
    finally:
        await client.async_stop()
        # Let pysiaalarm's per-connection handlers finish closing (our sender has closed its
        # side by now), so the event loop does not end with them pending.
        handlers = [
            t
            for t in asyncio.all_tasks()
            if getattr(t.get_coro(), "__qualname__", "") == "SIAServerTCP.handle_line"
        ]
        if handlers:
            await asyncio.wait(handlers, timeout=2)


def sender(
    port: int,
    transport: str,
    key: str | None,
    *,
    protocol: str = "ADM-CID",
    clock: Callable[[], datetime] | None = None,
) -> DC09Sender:
    cfg = SenderConfig(
        protocol=protocol,  # type: ignore[arg-type]
        receiver="1",
        prefix="1",
        primary=PathConfig(host="127.0.0.1", port=port, transport=transport),  # type: ignore[arg-type]
        key=key_from_config(key, "ascii") if key else None,
        ack_timeout=0.5,
        attempts=2,
        supervision_interval=0,
        supervision_account="1234",
    )
    return DC09Sender(cfg) if clock is None else DC09Sender(cfg, clock=clock)


@pytest.mark.parametrize("transport", ["tcp", "udp"])
@pytest.mark.parametrize("key_name", list(KEYS))
async def test_adm_cid_panic_accepted_by_pysiaalarm(transport: str, key_name: str) -> None:
    key = KEYS[key_name]
    async with sia_server(transport, key) as (port, inbox):
        async with sender(port, transport, key) as tx:
            result = await tx.send("1234", contact_id_data("1234", 1, 120, 1, 15))
        (event,) = await inbox.wait(1)
    assert (result.accepted, result.reply, result.attempts) == (True, ReplyKind.ACK, 1)
    if key:  # pysiaalarm's *ACK carries its time, decrypted by us
        assert result.receiver_time is not None
        assert abs((result.receiver_time - datetime.now(UTC)).total_seconds()) < 5
    assert event.valid_message
    assert event.valid_timestamp
    assert event.encrypted == bool(key)
    assert (event.account, event.sequence, event.receiver, event.line) == (
        "1234",
        "0001",
        "R1",
        "L1",
    )
    assert (event.message_type.value, event.code) == ("ADM-CID", "PA")  # type: ignore[union-attr]
    assert (event.event_qualifier, event.event_type, event.partition, event.ri) == (
        "1",
        "120",
        "01",
        "015",
    )


@pytest.mark.parametrize("transport", ["tcp", "udp"])
@pytest.mark.parametrize("key_name", list(KEYS))
async def test_sia_dcs_panic_accepted_by_pysiaalarm(transport: str, key_name: str) -> None:
    key = KEYS[key_name]
    async with sia_server(transport, key) as (port, inbox):
        async with sender(port, transport, key, protocol="SIA-DCS") as tx:
            data = sia_dcs_data("1234", "PA", 15, partition=1)
            result = await tx.send("1234", data, [("X", "116.397"), ("Y", "39.908")])
        (event,) = await inbox.wait(1)
    assert (result.accepted, result.reply) == (True, ReplyKind.ACK)
    assert (event.account, event.code, event.ri, event.message) == ("1234", "PA", "1", "015")
    assert event.encrypted == bool(key)
    assert event.valid_timestamp
    assert event.extended_data is not None
    assert [(x.identifier, x.value) for x in event.extended_data] == [
        ("X", "116.397"),
        ("Y", "39.908"),
    ]


@pytest.mark.parametrize("transport", ["tcp", "udp"])
@pytest.mark.parametrize("key_name", ["plain", "aes256"])
async def test_null_link_test_acked_by_pysiaalarm(transport: str, key_name: str) -> None:
    key = KEYS[key_name]
    async with sia_server(transport, key) as (port, inbox):
        async with sender(port, transport, key) as tx:
            result = await tx.send_null()
        (event,) = await inbox.wait(1)
    assert (result.accepted, result.reply) == (True, ReplyKind.ACK)
    assert (event.message_type.value, event.code) == ("NULL", "RP")  # type: ignore[union-attr]


@pytest.mark.parametrize("transport", ["tcp", "udp"])
@pytest.mark.parametrize("key_name", ["plain", "aes128"])
async def test_pysiaalarm_nak_resyncs_our_clock(transport: str, key_name: str) -> None:
    """Our clock an hour fast: pysiaalarm NAKs with its time, we resend the same seq."""
    key = KEYS[key_name]

    def fast_clock() -> datetime:
        return datetime.now(UTC) + timedelta(hours=1)

    async with sia_server(transport, key) as (port, inbox):
        async with sender(port, transport, key, clock=fast_clock) as tx:
            result = await tx.send("1234", contact_id_data("1234", 1, 120, 1, 15))
            offset = tx.clock_offset()
        (event,) = await inbox.wait(1)
    assert (result.accepted, result.attempts) == (True, 2)
    assert offset == pytest.approx(-3600, abs=3)
    assert event.sequence == f"{result.seq:04d}"
    assert event.valid_timestamp


@pytest.mark.parametrize("transport", ["tcp", "udp"])
async def test_pysiaalarm_duh_for_unknown_code_is_not_looped(transport: str) -> None:
    async with sia_server(transport, None) as (port, inbox):
        async with sender(port, transport, None, protocol="SIA-DCS") as tx:
            result = await tx.send("1234", "#1234|NQQ015")  # "QQ" is no SIA code
            ok = await tx.send("1234", sia_dcs_data("1234", "PA", 15))
        await inbox.wait(1)
    assert (result.accepted, result.reply, result.attempts) == (False, ReplyKind.DUH, 1)
    assert ok.accepted
    assert [e.code for e in inbox.events] == ["PA"]  # pysiaalarm delivers ACKed events only


def test_pysiaalarm_parses_the_spec_worked_example() -> None:
    """The spec's frame and our encoding of it, parsed by pysiaalarm's own code."""
    line = SPEC_FRAME.decode().strip()
    body = line[8:]
    assert SIAEvent._crc_calc(body) == "2D8E" == f"{crc16_arc(body.encode()):04X}"
    event = SIAEvent.from_line(line, {"1234": SIAAccount("1234", None, allowed_timeband=None)})
    assert event.valid_message
    assert (event.account, event.code, event.ri, event.partition) == ("1234", "PA", "015", "01")


def test_pysiaalarm_decrypts_our_encrypted_frame() -> None:
    key = KEYS["aes192"]
    assert key is not None
    frame = Frame(
        "ADM-CID",
        1,
        "1234",
        contact_id_data("1234", 1, 120, 1, 15),
        "1",
        "1",
        timestamp=datetime(2025, 3, 15, 8, 30, tzinfo=UTC),
        encrypted=True,
    )
    line = encode(frame, key_from_config(key)).decode().strip()
    account = SIAAccount("1234", key, allowed_timeband=None)
    event = SIAEvent.from_line(line, {"1234": account})
    assert event.valid_message
    assert (event.code, event.ri, event.timestamp) == ("PA", "015", frame.timestamp)
