"""Fuzzing the DC-09 codec (issue 11, bad input) the way the relay meets bytes from a police
receiver: a TCP stream cut into frames by ``FrameBuffer``, each frame decoded with the path's
key. Whatever arrives, the only exception is a ``DC09Error`` (the sender's boundary catches
exactly that), a frame buffer never holds more than one frame's worth, and every valid
frame, plain or encrypted, decodes back to itself from any chunking.

Two sizes: a few hundred cases per target by default; ``-m slow`` runs 100,000.
"""

from __future__ import annotations

import string
import time
from collections import Counter
from datetime import UTC, datetime

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from drivers.dc09.codec import (
    KNOWN_TOKENS,
    MAX_FRAME,
    REPLY_TOKENS,
    Frame,
    FrameBuffer,
    crc16_arc,
    decode,
    encode,
    make_nak,
    make_reply,
    parse_contact_id,
    parse_sia_dcs,
)
from drivers.dc09.errors import CRCError, DC09Error, DecryptError, FrameFormatError, LengthError
from tests.test_fuzz_ingest import SIZES, byte_mutations, report, sized

KEYS = [b"0123456789ABCDEF", b"0123456789ABCDEF01234567", b"0123456789ABCDEF0123456789ABCDEF"]
WRONG_KEYS = [b"FEDCBA9876543210", b"x" * 24, b"y" * 32]
HEX = "0123456789ABCDEF"
PRINTABLE = bytes(c for c in range(0x20, 0x7F) if c not in b"[]")


# Strategies built on one binary draw each: a hundred thousand cases need cheap generation.
def _text(raw: bytes) -> str:
    return bytes(PRINTABLE[b % len(PRINTABLE)] for b in raw).decode()


def _hex(raw: bytes) -> str:
    return "".join(HEX[b % 16] for b in raw)


TEXT = st.binary(max_size=40).map(_text)


def hex_text(lo: int, hi: int) -> st.SearchStrategy[str]:
    return st.binary(min_size=lo, max_size=hi).map(_hex)


_T0 = int(datetime(1000, 1, 1, tzinfo=UTC).timestamp())
_T1 = int(datetime(9999, 12, 31, tzinfo=UTC).timestamp())
TIMESTAMPS = st.integers(_T0, _T1).map(lambda t: datetime.fromtimestamp(t, UTC))


@st.composite
def frames(draw: st.DrawFn, encrypted: bool | None = None) -> Frame:
    enc = draw(st.booleans()) if encrypted is None else encrypted
    token = draw(st.sampled_from(KNOWN_TOKENS))
    account = draw(hex_text(3, 16))
    if token in REPLY_TOKENS and draw(st.booleans()):
        account = ""
    return Frame(
        token=token,
        seq=draw(st.integers(0, 9999)),
        account=account,
        data=draw(TEXT),
        receiver=draw(st.none() | hex_text(1, 6)),
        prefix=draw(st.none() | hex_text(1, 6)),
        xdata=tuple(
            draw(st.lists(st.tuples(st.sampled_from(string.ascii_letters), TEXT), max_size=3))
        ),
        timestamp=draw(TIMESTAMPS) if enc else draw(st.none() | TIMESTAMPS),
        encrypted=enc,
    )


@st.composite
def replies(draw: st.DrawFn) -> Frame:
    """What a receiver answers: ACK (maybe encrypted), DUH, the standard NAK."""
    msg = draw(frames(encrypted=draw(st.booleans())))
    how = draw(st.sampled_from(["ACK", "DUH", "NAK"]))
    if how == "NAK":
        return make_nak(draw(TIMESTAMPS))
    return make_reply(msg, how, timestamp=draw(TIMESTAMPS))


def reframe(body: bytes) -> bytes:
    """A body with a correct CRC and length, so the parser behind them meets the bytes."""
    return b"\n%04X%04X%s\r" % (crc16_arc(body), len(body), body)


@st.composite
def hostile_streams(draw: st.DrawFn) -> tuple[bytes, bytes | None]:
    """Bytes from the receiver's socket, and the key the path is configured with."""
    key = draw(st.none() | st.sampled_from(KEYS))
    how = draw(
        st.sampled_from(["random", "mutated", "mutated-reframed", "wrong-key", "long", "mixed"])
    )
    frame = draw(replies() | frames())
    real_key = key or KEYS[0]
    raw = encode(frame, real_key if frame.encrypted else None)
    if how == "random":
        return draw(st.binary(max_size=400)), key
    if how == "mutated":  # CRC and length fields included, left as they are
        return draw(byte_mutations(raw)), key
    if how == "mutated-reframed":
        return reframe(draw(byte_mutations(raw[9:-1]))), key
    if how == "wrong-key":
        enc = encode(frame if frame.encrypted else _encrypted(frame, draw), real_key)
        wrong = draw(st.none() | st.sampled_from([k for k in WRONG_KEYS if k != real_key]))
        return enc, wrong
    if how == "long":
        return b"\n" + draw(st.binary(min_size=1, max_size=64)) * draw(st.integers(1, 100)), key
    parts = draw(st.lists(st.sampled_from([raw, b"\n", b"\r", b"\n\r", b"garbage"]), max_size=6))
    return b"".join(parts), key


def _encrypted(frame: Frame, draw: st.DrawFn) -> Frame:
    return Frame(
        token=frame.token,
        seq=frame.seq,
        account=frame.account,
        data=frame.data,
        receiver=frame.receiver,
        prefix=frame.prefix,
        xdata=frame.xdata,
        timestamp=frame.timestamp or draw(TIMESTAMPS),
        encrypted=True,
    )


@pytest.mark.parametrize("n", SIZES)
def test_receiver_bytes_only_ever_raise_dc09_error(n: int) -> None:
    outcomes: Counter[str] = Counter()
    started = time.monotonic()

    @sized(n)
    @given(stream=hostile_streams(), cuts=st.lists(st.integers(0, 2000), max_size=6))
    @example(stream=(b"\n\r", None), cuts=[])  # pysiaalarm's answer to a CRC error
    @example(stream=(b"\n" + b"0" * 8 + b"\r", None), cuts=[])
    def check(stream: tuple[bytes, bytes | None], cuts: list[int]) -> None:
        outcomes["_cases"] += 1
        data, key = stream
        fb = FrameBuffer()
        prev = 0
        for cut in [*sorted(c % (len(data) + 1) for c in cuts), len(data)]:
            for raw in fb.feed(data[prev:cut]):
                assert len(raw) <= MAX_FRAME
                try:
                    frame = decode(raw, key)
                except DC09Error as exc:
                    outcomes[f"rejected: {type(exc).__name__}"] += 1
                else:
                    outcomes["decoded"] += 1
                    assert isinstance(frame, Frame) and frame.token
            prev = cut
            assert fb.pending <= MAX_FRAME
        # Also the bytes as one frame, unsplit (a UDP datagram).
        try:
            decode(data, key)
        except DC09Error as exc:
            outcomes[f"datagram rejected: {type(exc).__name__}"] += 1
        else:
            outcomes["datagram decoded"] += 1

    check()
    report("dc09 receiver bytes", n, started, outcomes)


@pytest.mark.parametrize("n", SIZES)
def test_valid_frames_round_trip_through_any_chunking(n: int) -> None:
    outcomes: Counter[str] = Counter()
    started = time.monotonic()

    @sized(n)
    @given(
        fs=st.lists(replies() | frames(), min_size=1, max_size=4),
        key=st.sampled_from(KEYS),
        cuts=st.lists(st.integers(0, 5000), max_size=8),
    )
    def check(fs: list[Frame], key: bytes, cuts: list[int]) -> None:
        outcomes["_cases"] += 1
        stream = b"".join(encode(f, key if f.encrypted else None) for f in fs)
        fb = FrameBuffer()
        out: list[bytes] = []
        prev = 0
        for cut in [*sorted(c % (len(stream) + 1) for c in cuts), len(stream)]:
            out += fb.feed(stream[prev:cut])
            prev = cut
        assert [decode(r, key) for r in out] == fs
        assert fb.pending == 0
        outcomes["frames"] += len(fs)

    check()
    report("dc09 round trip", n, started, outcomes)


@pytest.mark.parametrize("n", SIZES)
def test_damage_is_caught_by_its_own_check(n: int) -> None:
    """One byte changed in a valid frame: the CRC (body), length or CRC field says so; a wrong
    key says so as a DecryptError (or, DC-09 having no MAC, yields other content)."""
    outcomes: Counter[str] = Counter()
    started = time.monotonic()

    @sized(n)
    @given(frame=replies() | frames(), key=st.sampled_from(KEYS), data=st.data())
    def check(frame: Frame, key: bytes, data: st.DataObject) -> None:
        outcomes["_cases"] += 1
        raw = encode(frame, key if frame.encrypted else None)
        pos = data.draw(st.integers(1, len(raw) - 2))
        value = data.draw(st.integers(0, 255).filter(lambda v: v != raw[pos]))
        bad = raw[:pos] + bytes([value]) + raw[pos + 1 :]
        try:
            got = decode(bad, key)
        except (CRCError, LengthError, FrameFormatError) as exc:
            outcomes[type(exc).__name__] += 1
        else:
            # Only a change of case in a hex CRC or length digit leaves the frame intact.
            assert pos < 9 and bad[1:9].upper() == raw[1:9].upper(), (pos, bad)
            assert got == frame
            outcomes["same frame (hex case)"] += 1
        if frame.encrypted:
            wrong = data.draw(st.sampled_from([k for k in WRONG_KEYS if len(k) == len(key)]))
            try:
                garbled = decode(raw, wrong)
            except DecryptError:
                outcomes["wrong key refused"] += 1
            else:
                # DC-09 has no MAC: about 1 in 300 wrong-key plaintexts end in ']' after
                # printable bytes and pass as an empty data block. Never as the real content.
                assert garbled != frame
                outcomes["wrong key garbled, not detected (no MAC in DC-09)"] += 1

    check()
    report("dc09 single-byte damage", n, started, outcomes)


@pytest.mark.parametrize("n", SIZES)
def test_event_data_parsers_only_raise_frame_format_error(n: int) -> None:
    outcomes: Counter[str] = Counter()
    started = time.monotonic()
    cid = st.from_regex(r"\A#[0-9A-F]{3,16}\|[0-9]{4} [0-9]{2} [0-9]{3}\Z")
    sia = st.from_regex(
        r"\A#[0-9A-F]{3,16}\|N(ti[0-9]{2}:[0-9]{2}/)?(ri[0-9]{1,3}/)?[A-Z]{2}[0-9]*"
    )

    @sized(n)
    @given(text=st.text(max_size=80) | cid | sia | cid.flatmap(lambda c: st.just(c[:-1])))
    @example(text="#1234|Nid" + "9" * 5000 + "/BA1")  # int() refuses over 4300 digits
    @example(text="#1234|Nri" + "9" * 5000 + "/BA1")
    def check(text: str) -> None:
        outcomes["_cases"] += 1
        for parse in (parse_contact_id, parse_sia_dcs):
            try:
                parse(text)
            except FrameFormatError:
                outcomes[f"{parse.__name__} rejected"] += 1
            else:
                outcomes[f"{parse.__name__} parsed"] += 1

    check()
    report("dc09 event data", n, started, outcomes)
