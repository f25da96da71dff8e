"""DC-09 codec: the spec's worked example byte for byte, CRC, AES, errors and properties."""

from __future__ import annotations

import contextlib
import string
from dataclasses import replace
from datetime import UTC, datetime

import pytest
from Crypto.Cipher import AES  # pycryptodome (pysiaalarm's): an AES independent of ours
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.dc09.codec import (
    KNOWN_TOKENS,
    REPLY_TOKENS,
    ContactID,
    Frame,
    FrameBuffer,
    cid_to_sia,
    contact_id_data,
    crc16_arc,
    decode,
    encode,
    format_timestamp,
    make_nak,
    make_reply,
    parse_contact_id,
    parse_sia_dcs,
    parse_timestamp,
    sia_dcs_data,
)
from drivers.dc09.crypto import key_from_config
from drivers.dc09.errors import (
    CRCError,
    DC09Error,
    DecryptError,
    FrameFormatError,
    InvalidKeyError,
    LengthError,
)

# Verbatim from specs/dc09.md, "Worked example".
SPEC_BODY = b'"ADM-CID"0001R1L1#1234[#1234|1120 01 015]_08:30:00,03-15-2025'
SPEC_FRAME = b'\n2D8E003D"ADM-CID"0001R1L1#1234[#1234|1120 01 015]_08:30:00,03-15-2025\r'
SPEC_ACK = b'\nD2770014"ACK"0001R1L1#1234[]\r'
SPEC_TIME = datetime(2025, 3, 15, 8, 30, 0, tzinfo=UTC)

KEY128 = b"0123456789ABCDEF"
KEY192 = b"0123456789ABCDEF01234567"
KEY256 = b"0123456789ABCDEF0123456789ABCDEF"


def crc_bitwise(data: bytes) -> int:
    """Reference CRC-16/ARC, bit by bit, written from the definition (no table)."""
    crc = 0
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def spec_frame() -> Frame:
    return Frame(
        token="ADM-CID",
        seq=1,
        account="1234",
        data="#1234|1120 01 015",
        receiver="1",
        prefix="1",
        timestamp=SPEC_TIME,
    )


# ---------------------------------------------------------------- CRC and worked example


def test_crc_check_value() -> None:
    assert crc16_arc(b"123456789") == 0xBB3D
    assert crc16_arc(b"") == 0


@given(st.binary(max_size=200))
def test_crc_matches_bitwise_reference(data: bytes) -> None:
    assert crc16_arc(data) == crc_bitwise(data)


def test_worked_example_body_length_and_crc() -> None:
    assert len(SPEC_BODY) == 61 == 0x003D
    assert crc16_arc(SPEC_BODY) == 0x2D8E


def test_worked_example_encodes_byte_for_byte() -> None:
    assert contact_id_data("1234", 1, 120, 1, 15) == "#1234|1120 01 015"
    assert encode(spec_frame()) == SPEC_FRAME


def test_worked_example_decodes() -> None:
    assert decode(SPEC_FRAME) == spec_frame()


def test_worked_example_ack_byte_for_byte() -> None:
    ack = make_reply(decode(SPEC_FRAME), "ACK")
    assert encode(ack) == SPEC_ACK
    assert decode(SPEC_ACK) == Frame(token="ACK", seq=1, account="1234", receiver="1", prefix="1")


def test_worked_example_contact_id_and_sia_mapping() -> None:
    cid = parse_contact_id(decode(SPEC_FRAME).data)
    assert cid == ContactID(account="1234", qualifier=1, code=120, partition=1, zone=15)
    assert cid.sia_code == "PA"
    assert sia_dcs_data("1234", "PA", 15, partition=1) == "#1234|Nri1/PA015"


# ---------------------------------------------------------------- data helpers


def test_contact_id_helpers() -> None:
    assert contact_id_data("abc", 3, 602, 0, 0) == "#ABC|3602 00 000"
    assert cid_to_sia(120, 3) == "PH"
    assert cid_to_sia(602, 3) == "RP"  # a test code has no restore: the new code stands
    assert cid_to_sia(999) is None
    with pytest.raises(ValueError, match="qualifier"):
        contact_id_data("1234", 2, 120, 1, 15)
    with pytest.raises(ValueError, match=r"0\.\.999"):
        contact_id_data("1234", 1, 1200, 1, 15)
    with pytest.raises(ValueError, match="account"):
        contact_id_data("12", 1, 120, 1, 15)
    with pytest.raises(FrameFormatError):
        parse_contact_id("#1234|1120 1 015")


def test_sia_dcs_helpers() -> None:
    assert sia_dcs_data("1234", "PA") == "#1234|NPA"
    assert sia_dcs_data("1234", "RP", "0") == "#1234|NRP0"
    ev = parse_sia_dcs("#1234|Nti08:30/id12/ri3/FA007^kitchen^")
    assert (ev.code, ev.zone, ev.partition, ev.user, ev.extra) == ("FA", "007", 3, 12, "^kitchen^")
    with pytest.raises(ValueError, match="two uppercase"):
        sia_dcs_data("1234", "pa", 1)
    with pytest.raises(FrameFormatError):
        parse_sia_dcs("#1234|1120 01 015")


def test_timestamps() -> None:
    assert format_timestamp(SPEC_TIME) == "_08:30:00,03-15-2025"
    assert parse_timestamp("_08:30:00,03-15-2025") == SPEC_TIME
    assert format_timestamp(datetime(5, 1, 2, tzinfo=UTC)) == "_00:00:00,01-02-0005"
    with pytest.raises(FrameFormatError):
        parse_timestamp("_25:30:00,03-15-2025")
    with pytest.raises(FrameFormatError):
        parse_timestamp("08:30:00,03-15-2025")
    with pytest.raises(ValueError, match="aware"):
        format_timestamp(datetime(2025, 3, 15))  # naive on purpose


def test_nak_forms() -> None:
    nak = make_nak(SPEC_TIME)
    assert encode(nak).endswith(b'"NAK"0000R0L0A0[]_08:30:00,03-15-2025\r')
    assert decode(encode(nak)) == nak
    # pysiaalarm's NAK for lines it cannot parse writes L before R.
    body = b'"NAK"0000L0R0A0[]_08:30:00,03-15-2025'
    raw = b"\n%04X%04X%s\r" % (crc_bitwise(body), len(body), body)
    got = decode(raw)
    assert (got.token, got.seq, got.account, got.timestamp) == ("NAK", 0, "", SPEC_TIME)
    # The lazy R/L fields must not swallow the anonymous account "A0".
    body = b'"NAK"0000R1A0L1A0A0[]_08:30:00,03-15-2025'
    raw = b"\n%04X%04X%s\r" % (crc_bitwise(body), len(body), body)
    assert (decode(raw).receiver, decode(raw).prefix) == ("1A0", "1A0")


# ---------------------------------------------------------------- AES


def test_key_from_config() -> None:
    assert key_from_config("0123456789ABCDEF", "ascii") == KEY128
    assert key_from_config("00" * 24, "hex") == bytes(24)
    assert len(key_from_config("A" * 32)) == 32
    for value, enc in [("short", "ascii"), ("00" * 16 + "0", "hex"), ("zz" * 16, "hex")]:
        with pytest.raises(InvalidKeyError):
            key_from_config(value, enc)  # type: ignore[arg-type]
    with pytest.raises(InvalidKeyError):
        key_from_config("ключ" * 4, "ascii")


@pytest.mark.parametrize("key", [KEY128, KEY192, KEY256])
def test_encrypted_frame_matches_independent_aes(key: bytes) -> None:
    frame = replace(spec_frame(), encrypted=True)
    raw = encode(frame, key, pad=b"P" * 16)
    body = raw[9:-1]
    assert raw[1:9] == b"%04X%04X" % (crc_bitwise(body), len(body))
    head, _, cipher_hex = body.partition(b"[")
    assert head == b'"*ADM-CID"0001R1L1#1234'
    assert cipher_hex == cipher_hex.upper()
    plain = AES.new(key, AES.MODE_CBC, bytes(16)).decrypt(bytes.fromhex(cipher_hex.decode()))
    content = b"|#1234|1120 01 015]_08:30:00,03-15-2025"
    assert len(plain) % 16 == 0
    assert plain == b"P" * (len(plain) - len(content)) + content
    assert decode(raw, key) == frame


def test_decrypts_ack_whose_pad_is_not_followed_by_bar() -> None:
    # pysiaalarm's *ACK: ']' + timestamp, left-filled with '0' to a whole block, no '|'.
    plain = b"]_08:30:00,03-15-2025".rjust(32, b"0")
    cipher = AES.new(KEY128, AES.MODE_CBC, bytes(16)).encrypt(plain).hex().upper().encode()
    body = b'"*ACK"0001R1L1#1234[' + cipher
    raw = b"\n%04X%04X%s\r" % (crc_bitwise(body), len(body), body)
    ack = decode(raw, KEY128)
    assert (ack.token, ack.encrypted, ack.seq, ack.data, ack.timestamp) == (
        "ACK",
        True,
        1,
        "",
        SPEC_TIME,
    )


def test_decrypt_errors() -> None:
    frame = Frame("SIA-DCS", 7, "1234", "#1234|NPA1", timestamp=SPEC_TIME, encrypted=True)
    raw = encode(frame, KEY128)
    with pytest.raises(DecryptError, match="no key"):
        decode(raw)
    with pytest.raises(DecryptError):
        decode(raw, KEY256)  # wrong key: garbage plaintext, never a wrong frame
    with pytest.raises(InvalidKeyError):
        decode(raw, b"short")


def test_random_pad_differs_and_avoids_delimiters() -> None:
    frame = Frame("NULL", 1, "1234", timestamp=SPEC_TIME, encrypted=True)
    a, b = encode(frame, KEY128), encode(frame, KEY128)
    assert a != b  # the pad randomises the first block under the fixed zero IV
    assert decode(a, KEY128) == decode(b, KEY128) == frame


def test_encode_refuses_what_it_cannot_send() -> None:
    enc = Frame("NULL", 1, "1234", timestamp=SPEC_TIME, encrypted=True)
    with pytest.raises(ValueError, match="key"):
        encode(enc)
    with pytest.raises(ValueError, match="timestamp"):
        encode(Frame("NULL", 1, "1234", encrypted=True), KEY128)
    with pytest.raises(ValueError, match="pad needs"):
        encode(enc, KEY128, pad=b"x")
    with pytest.raises(ValueError, match="must not contain"):
        encode(enc, KEY128, pad=b"|" * 16)
    with pytest.raises(ValueError, match="maximum"):
        encode(Frame("SIA-DCS", 1, "1234", "x" * 4100))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"token": "ack"}, "id"),
        ({"seq": 10000}, "sequence"),
        ({"receiver": "1234567"}, "receiver"),
        ({"prefix": "g"}, "prefix"),
        ({"account": "12"}, "account"),
        ({"account": ""}, "needs an account"),
        ({"data": "a]b"}, "data"),
        ({"data": "a\rb"}, "data"),
        ({"xdata": [("1", "x")]}, "letter"),
        ({"xdata": [("V", "[x")]}, "x-data"),
        ({"timestamp": datetime(2025, 1, 1)}, "aware"),
    ],
)
def test_frame_validation(kwargs: dict[str, object], match: str) -> None:
    base: dict[str, object] = {"token": "SIA-DCS", "seq": 1, "account": "1234"}
    with pytest.raises(ValueError, match=match):
        Frame(**{**base, **kwargs})  # type: ignore[arg-type]


# ---------------------------------------------------------------- decode errors


def test_decode_errors() -> None:
    with pytest.raises(FrameFormatError):
        decode(SPEC_FRAME[1:])
    with pytest.raises(CRCError):
        decode(SPEC_FRAME.replace(b"2D8E", b"2D8F"))
    with pytest.raises(CRCError):
        decode(SPEC_FRAME.replace(b"1120", b"1121"))
    with pytest.raises(LengthError):
        decode(SPEC_FRAME.replace(b"003D", b"003C"))
    with pytest.raises(FrameFormatError):
        decode(b"\n0x2D003D" + SPEC_BODY + b"\r")  # int(..., 16) would accept "0x2D"
    body = b'"ADM-CID"0001R1L1#1234[#1234|1120 01 015]_08:30:00,13-15-2025'
    with pytest.raises(FrameFormatError, match="impossible"):
        decode(b"\n%04X%04X%s\r" % (crc16_arc(body), len(body), body))


def test_decode_x_data_and_unknown_token() -> None:
    frame = Frame(
        "SIA-DCS",
        42,
        "ABCDEF",
        "#ABCDEF|Nri1/PA015",
        receiver="12",
        prefix="3",
        xdata=(("X", "116.3975"), ("Y", "39.9087"), ("V", "https://cam.example/a?b=1")),
        timestamp=SPEC_TIME,
    )
    raw = encode(frame)
    assert b"[X116.3975][Y39.9087][V" in raw
    assert decode(raw) == frame
    odd = Frame("FOO-BAR", 3, "1234", "x")
    assert decode(encode(odd)) == odd  # decodable, so a receiver can answer DUH


# ---------------------------------------------------------------- FrameBuffer


def test_frame_buffer_splits_and_discards_garbage() -> None:
    fb = FrameBuffer()
    stream = b"junk" + SPEC_FRAME + b"\r\r" + SPEC_ACK
    out: list[bytes] = []
    for i in range(len(stream)):
        out += fb.feed(stream[i : i + 1])
    assert out == [SPEC_FRAME, SPEC_ACK]
    assert fb.discarded == 6
    assert fb.pending == 0


def test_frame_buffer_resyncs_on_cut_frame_and_limits_size() -> None:
    fb = FrameBuffer(max_frame_size=80)
    assert fb.feed(SPEC_FRAME[:20] + SPEC_ACK) == [SPEC_ACK]
    assert fb.feed(b"\n" + b"x" * 100) == []
    assert fb.pending == 0
    assert fb.feed(b"yy\r" + SPEC_FRAME) == [SPEC_FRAME]
    with pytest.raises(ValueError, match="at least"):
        FrameBuffer(5)


# ---------------------------------------------------------------- properties

HEX = "0123456789ABCDEF"
TEXT = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0x7E, exclude_characters="[]"), max_size=40
)
TIMESTAMPS = st.datetimes(
    min_value=datetime(1000, 1, 1),  # hypothesis bounds are naive
    max_value=datetime(9999, 12, 31),
    timezones=st.just(UTC),
).map(lambda d: d.replace(microsecond=0))


@st.composite
def frames(draw: st.DrawFn, encrypted: bool = False) -> Frame:
    token = draw(st.sampled_from(KNOWN_TOKENS))
    account = draw(st.text(HEX, min_size=3, max_size=16))
    if token in REPLY_TOKENS and draw(st.booleans()):
        account = ""
    return Frame(
        token=token,
        seq=draw(st.integers(0, 9999)),
        account=account,
        data=draw(TEXT),
        receiver=draw(st.none() | st.text(HEX, min_size=1, max_size=6)),
        prefix=draw(st.none() | st.text(HEX, min_size=1, max_size=6)),
        xdata=tuple(
            draw(st.lists(st.tuples(st.sampled_from(string.ascii_letters), TEXT), max_size=3))
        ),
        timestamp=draw(TIMESTAMPS) if encrypted else draw(st.none() | TIMESTAMPS),
        encrypted=encrypted,
    )


@given(frames())
def test_plain_round_trip(frame: Frame) -> None:
    raw = encode(frame)
    assert decode(raw) == frame
    assert FrameBuffer().feed(b"garbage" + raw) == [raw]


@given(frames(encrypted=True), st.sampled_from([KEY128, KEY192, KEY256]))
def test_encrypted_round_trip(frame: Frame, key: bytes) -> None:
    raw = encode(frame, key)
    assert decode(raw, key) == frame
    assert raw[9:-1].partition(b"[")[2].isalnum()  # only hex after '['


@given(st.binary(max_size=300), st.sampled_from([None, KEY128]))
def test_garbage_only_raises_dc09_error(raw: bytes, key: bytes | None) -> None:
    for candidate in (raw, b"\n" + raw + b"\r"):
        with contextlib.suppress(DC09Error):
            decode(candidate, key)


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(
    frames(encrypted=True),
    st.sampled_from([None, KEY128]),
    st.lists(st.tuples(st.integers(0, 500), st.integers(0, 255)), min_size=1, max_size=4),
)
def test_mutated_frames_only_raise_dc09_error(
    frame: Frame, key: bytes | None, edits: list[tuple[int, int]]
) -> None:
    """Corrupt the body and fix CRC and length, so the parser itself meets the garbage."""
    body = bytearray(encode(frame, KEY128)[9:-1])
    for pos, value in edits:
        body[pos % len(body)] = value
    raw = b"\n%04X%04X%s\r" % (crc16_arc(bytes(body)), len(body), bytes(body))
    with contextlib.suppress(DC09Error):
        decode(raw, key)


@given(st.lists(frames(), min_size=1, max_size=5), st.data())
def test_frame_buffer_any_chunking(fs: list[Frame], data: st.DataObject) -> None:
    stream = b"".join(encode(f) for f in fs)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    fb = FrameBuffer()
    out: list[bytes] = []
    prev = 0
    for cut in [*cuts, len(stream)]:
        out += fb.feed(stream[prev:cut])
        prev = cut
    assert [decode(r) for r in out] == fs
