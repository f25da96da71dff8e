"""Police receiver simulator: replies checked byte for byte against the spec, not our encoder.

The worked example and its ACK are written out by hand from specs/dc09.md, the CRC is
recomputed bit by bit and AES is pycryptodome's, so a mistake shared by our codec and the
simulator cannot make these tests pass.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from Crypto.Cipher import AES

from drivers.dc09.codec import Frame, FrameBuffer, contact_id_data, decode, encode
from simulators.police import PoliceReceiver, serve_forever

SPEC_FRAME = b'\n2D8E003D"ADM-CID"0001R1L1#1234[#1234|1120 01 015]_08:30:00,03-15-2025\r'
SPEC_ACK = b'\nD2770014"ACK"0001R1L1#1234[]\r'
SPEC_TIME = datetime(2025, 3, 15, 8, 30, 0, tzinfo=UTC)
KEY = b"0123456789ABCDEF"


def crc_bitwise(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def wrap(body: bytes) -> bytes:
    """Frame a body by hand: LF, CRC, 0LLL, body, CR."""
    return b"\n%04X%04X%s\r" % (crc_bitwise(body), len(body), body)


def offset_to(when: datetime) -> float:
    """clock_offset that puts the receiver's clock a few seconds after ``when``."""
    return (when + timedelta(seconds=5) - datetime.now(UTC)).total_seconds()


@asynccontextmanager
async def tcp(
    rx: PoliceReceiver,
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    assert rx.tcp_port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", rx.tcp_port)
    try:
        yield reader, writer
    finally:
        writer.close()
        await writer.wait_closed()


async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, raw: bytes) -> bytes:
    writer.write(raw)
    await writer.drain()
    async with asyncio.timeout(2):
        return await reader.readuntil(b"\r")


async def udp_exchange(rx: PoliceReceiver, raw: bytes) -> bytes:
    assert rx.udp_port is not None
    loop = asyncio.get_running_loop()
    got: asyncio.Future[bytes] = loop.create_future()

    class Proto(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: object) -> None:
            if not got.done():
                got.set_result(data)

    transport, _ = await loop.create_datagram_endpoint(
        Proto, remote_addr=("127.0.0.1", rx.udp_port)
    )
    try:
        transport.sendto(raw)
        async with asyncio.timeout(2):
            return await got
    finally:
        transport.close()


def now_ts(rx: PoliceReceiver, skew: float = 0.0) -> bytes:
    t = rx.now() + timedelta(seconds=skew)
    return t.strftime("_%H:%M:%S,%m-%d-%Y").encode()


# ---------------------------------------------------------------- the worked example


async def test_worked_example_over_tcp_gets_the_spec_ack() -> None:
    async with PoliceReceiver(clock_offset=offset_to(SPEC_TIME)) as rx, tcp(rx) as (r, w):
        assert await exchange(r, w, SPEC_FRAME) == SPEC_ACK
    (msg,) = rx.messages
    assert (msg.token, msg.account, msg.seq, msg.code, msg.sent_at) == (
        "ADM-CID",
        "1234",
        1,
        "PA",
        SPEC_TIME,
    )
    assert msg.contact_id is not None
    assert (msg.contact_id.qualifier, msg.contact_id.code) == (1, 120)
    assert (msg.contact_id.partition, msg.contact_id.zone) == (1, 15)
    assert (msg.receiver, msg.prefix, msg.transport) == ("1", "1", "tcp")


async def test_worked_example_over_udp_gets_the_spec_ack() -> None:
    async with PoliceReceiver(clock_offset=offset_to(SPEC_TIME)) as rx:
        assert await udp_exchange(rx, SPEC_FRAME) == SPEC_ACK
        assert rx.messages[0].transport == "udp"


async def test_encrypted_worked_example_with_independent_aes() -> None:
    content = b"|#1234|1120 01 015]_08:30:00,03-15-2025"
    plain = b"x" * (-len(content) % 16) + content
    cipher = AES.new(KEY, AES.MODE_CBC, bytes(16)).encrypt(plain).hex().upper().encode()
    raw = wrap(b'"*ADM-CID"0001R1L1#1234[' + cipher)
    async with PoliceReceiver(key=KEY, clock_offset=offset_to(SPEC_TIME)) as rx, tcp(rx) as (r, w):
        reply = await exchange(r, w, raw)
    body = reply[9:-1]
    assert reply[1:9] == b"%04X%04X" % (crc_bitwise(body), len(body))
    head, _, ack_cipher = body.partition(b"[")
    assert head == b'"*ACK"0001R1L1#1234'
    ack_plain = AES.new(KEY, AES.MODE_CBC, bytes(16)).decrypt(bytes.fromhex(ack_cipher.decode()))
    pad, bar, rest = ack_plain.partition(b"|")
    assert bar == b"|"
    assert pad
    assert not set(pad) & set(b"[]|")
    assert rest.startswith(b"]_08:30:0")  # receiver time: 5 s after the message
    assert rx.messages[0].encrypted


# ---------------------------------------------------------------- replies


async def test_bad_crc_and_length_get_no_reply() -> None:
    async with PoliceReceiver(clock_offset=offset_to(SPEC_TIME)) as rx, tcp(rx) as (r, w):
        w.write(SPEC_FRAME.replace(b"2D8E", b"2D8F"))
        w.write(SPEC_FRAME.replace(b"003D", b"003E"))
        # The first reply on the connection is the one for the good frame: nothing before.
        assert await exchange(r, w, SPEC_FRAME) == SPEC_ACK
    assert (rx.counters.crc_errors, rx.counters.length_errors) == (1, 1)
    assert [e.reply for e in rx.log] == [None, None, "ACK"]
    assert len(rx.messages) == 1


async def test_unparsable_frame_gets_nak_with_receiver_time() -> None:
    async with PoliceReceiver() as rx, tcp(rx) as (r, w):
        reply = await exchange(r, w, wrap(b'"ADM-CID"0001R1L1#1234#1234|1120 01 015]'))
        nak = decode(reply)
        assert reply.startswith(b"\n")
        assert b'"NAK"0000R0L0A0[]_' in reply
        assert nak.timestamp is not None
        assert abs((nak.timestamp - rx.now()).total_seconds()) < 2
    assert rx.counters.format_errors == 1


@pytest.mark.parametrize(("skew", "reply"), [(-45, "NAK"), (-35, "ACK"), (15, "ACK"), (25, "NAK")])
async def test_timestamp_window(skew: float, reply: str) -> None:
    rx = PoliceReceiver(clock_offset=-7200)  # a receiver clock far from ours: theirs counts
    body = b'"SIA-DCS"0007R2L3#ABC[#ABC|Nri1/PA015]' + now_ts(rx, skew)
    out = rx.process(wrap(body))
    assert out is not None
    got = decode(out)
    assert got.token == reply
    if reply == "NAK":
        assert (got.seq, got.receiver, got.prefix, got.account) == (0, "2", "3", "")
        assert got.timestamp is not None
        assert abs((got.timestamp - rx.now()).total_seconds()) < 2
        assert rx.messages == []
    else:
        assert (got.seq, got.receiver, got.prefix, got.account) == (7, "2", "3", "ABC")
        assert rx.messages[0].code == "PA"


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b'"FOO"0005R1L1#1234[]', "unknown id"),
        (b'"ACK"0005R1L1#1234[]', "unknown id"),
        (b'"ADM-CID"0005R1L1#1234[#1234|1999 01 015]', "Contact ID 999"),
        (b'"ADM-CID"0005R1L1#1234[#1234|1120 1 15]', "not Contact ID"),
        (b'"SIA-DCS"0005R1L1#1234[#1234|NQQ015]', "SIA code QQ"),
    ],
)
async def test_not_understood_gets_duh(body: bytes, why: str) -> None:
    rx = PoliceReceiver()
    out = rx.process(wrap(body))
    assert out == wrap(b'"DUH"0005R1L1#1234[]')
    assert why in rx.log[0].reason
    assert rx.counters.duh == 1
    assert rx.messages == []


async def test_policy_duh_plain_when_key_required_and_unknown_account() -> None:
    rx = PoliceReceiver(key=KEY, accounts=["ABCD"])
    plain = encode(Frame("ADM-CID", 1, "ABCD", contact_id_data("ABCD", 1, 120, 1, 1)))
    assert decode(rx.process(plain) or b"").token == "DUH"
    other = Frame("NULL", 2, "1234", timestamp=rx.now(), encrypted=True)
    assert decode(rx.process(encode(other, KEY)) or b"").token == "DUH"
    assert "unknown account" in rx.log[-1].reason


async def test_encrypted_without_timestamp_or_key_gets_nak() -> None:
    plain = b"|#1234|1120 01 015]".rjust(32, b"y")  # pad, no timestamp
    cipher = AES.new(KEY, AES.MODE_CBC, bytes(16)).encrypt(plain).hex().upper().encode()
    raw = wrap(b'"*ADM-CID"0001R1L1#1234[' + cipher)
    rx = PoliceReceiver(key=KEY)
    assert decode(rx.process(raw) or b"").token == "NAK"
    assert "without timestamp" in rx.log[0].reason
    keyless = PoliceReceiver()
    assert decode(keyless.process(raw) or b"").token == "NAK"
    assert keyless.counters.decrypt_errors == 1


async def test_null_is_acked_counted_not_recorded() -> None:
    rx = PoliceReceiver()
    out = rx.process(wrap(b'"NULL"0009R1L1#1234[]' + now_ts(rx)))
    assert out == wrap(b'"ACK"0009R1L1#1234[]')
    assert rx.counters.null == 1
    assert rx.messages == []


async def test_duplicate_acked_again_recorded_once(tmp_path: Path) -> None:
    log = tmp_path / "police.jsonl"
    async with PoliceReceiver(log_path=log) as rx:
        raw = wrap(b'"ADM-CID"0042R1L1#1234[#1234|1120 01 015]' + now_ts(rx))
        async with tcp(rx) as (r, w):
            first = await exchange(r, w, raw)
            second = await exchange(r, w, raw)
        assert first == second == wrap(b'"ACK"0042R1L1#1234[]')
        (msg,) = rx.messages
        assert msg.duplicates == 1
        assert (rx.counters.accepted, rx.counters.duplicates) == (1, 1)
    (line,) = log.read_text().splitlines()
    record = json.loads(line)
    assert (record["account"], record["seq"], record["code"]) == ("1234", 42, "PA")
    assert record["contact_id"]["zone"] == 15


# ---------------------------------------------------------------- fault knobs


async def test_drop_replies_pause_and_restart() -> None:
    async with PoliceReceiver(drop_replies=1) as rx:
        raw = wrap(b'"NULL"0001R1L1#1234[]' + now_ts(rx))
        async with tcp(rx) as (r, w):
            w.write(raw)
            await rx.wait_for(lambda: rx.counters.replies_dropped == 1, timeout=2)
            assert await exchange(r, w, raw) == wrap(b'"ACK"0001R1L1#1234[]')
            rx.pause()
            w.write(raw)
            await rx.wait_for(lambda: rx.counters.ignored_paused == 1, timeout=2)
            rx.resume()
            assert await exchange(r, w, raw) == wrap(b'"ACK"0001R1L1#1234[]')
        tcp_port, udp_port = rx.tcp_port, rx.udp_port
        await rx.stop()
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", tcp_port)
        await rx.start()
        assert (rx.tcp_port, rx.udp_port) == (tcp_port, udp_port)
        async with tcp(rx) as (r, w):
            assert await exchange(r, w, raw) == wrap(b'"ACK"0001R1L1#1234[]')


async def test_stop_closes_open_connections() -> None:
    async with PoliceReceiver() as rx, tcp(rx) as (r, _w):
        await rx.stop()
        async with asyncio.timeout(2):
            assert await r.read() == b""


async def test_wait_for_times_out_with_counters() -> None:
    async with PoliceReceiver() as rx:
        with pytest.raises(TimeoutError, match="counters"):
            await rx.wait_for(lambda: rx.counters.accepted > 0, timeout=0.05)


async def test_tcp_stream_split_and_garbage() -> None:
    async with PoliceReceiver(clock_offset=offset_to(SPEC_TIME)) as rx, tcp(rx) as (r, w):
        for part in (b"noise", SPEC_FRAME[:10], SPEC_FRAME[10:]):
            w.write(part)
            await w.drain()
        async with asyncio.timeout(2):
            assert await r.readuntil(b"\r") == SPEC_ACK
    assert FrameBuffer().feed(b"noise" + SPEC_FRAME) == [SPEC_FRAME]


async def test_serve_forever_entry_point() -> None:
    ready: asyncio.Future[PoliceReceiver] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(
        serve_forever("127.0.0.1", 0, key="0123456789ABCDEF", ready=ready.set_result)
    )
    try:
        async with asyncio.timeout(2):
            rx = await ready
        assert rx.key == KEY
        assert rx.tcp_port
        assert rx.udp_port
        with socket.create_connection(("127.0.0.1", rx.tcp_port), timeout=2):
            pass
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
