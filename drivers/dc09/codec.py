"""Pure SIA DC-09 codec: frames, CRC, replies, Contact ID and SIA DC-03 data, stream splitting.

Bytes in, values out: nothing here opens a socket or reads a clock, so every function can be
tested (and property-tested) without I/O. The wire format is described in
``/work/shared/specs/dc09.md``::

    <LF><crc><0LLL>"<id>"<seq>R<rcvr>L<pref>#<acct>[<data>][<x-data>...]_HH:MM:SS,MM-DD-YYYY<CR>
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final

from drivers.dc09.crypto import AES_BLOCK, aes_decrypt, aes_encrypt, check_key
from drivers.dc09.errors import CRCError, DecryptError, FrameFormatError, LengthError

__all__ = [
    "ACK",
    "ADM_CID",
    "CID_TO_SIA",
    "DUH",
    "KNOWN_TOKENS",
    "MAX_BODY",
    "MAX_FRAME",
    "MESSAGE_TOKENS",
    "NAK",
    "NULL",
    "REPLY_TOKENS",
    "SIA_DCS",
    "ContactID",
    "Frame",
    "FrameBuffer",
    "SiaEvent",
    "cid_to_sia",
    "contact_id_data",
    "crc16_arc",
    "decode",
    "encode",
    "format_timestamp",
    "make_nak",
    "make_reply",
    "parse_contact_id",
    "parse_sia_dcs",
    "parse_timestamp",
    "sia_dcs_data",
]

SIA_DCS: Final = "SIA-DCS"
ADM_CID: Final = "ADM-CID"
NULL: Final = "NULL"
ACK: Final = "ACK"
NAK: Final = "NAK"
DUH: Final = "DUH"

MESSAGE_TOKENS: Final = (SIA_DCS, ADM_CID, NULL)
"""Ids a panel (our sender) sends."""
REPLY_TOKENS: Final = (ACK, NAK, DUH)
"""Ids a receiver answers with."""
KNOWN_TOKENS: Final = MESSAGE_TOKENS + REPLY_TOKENS

MAX_BODY: Final = 0x0FFF
"""The length field is ``0LLL``: its first hex digit is always 0."""
MAX_FRAME: Final = 1 + 8 + MAX_BODY + 1
"""LF + crc + length + body + CR."""

# A NAK is sent before the receiver trusts anything in the message, so the standard NAK
# carries the anonymous account "A0" instead of "#acct": "NAK"0000R0L0A0[]_timestamp.
_ANON_ACCOUNT: Final = "A0"

_TOKEN_RE = re.compile(r"[A-Z0-9][A-Z0-9-]{0,15}")
_RL_RE = re.compile(r"[0-9A-F]{1,6}")
_ACCOUNT_RE = re.compile(r"[0-9A-F]{3,16}")
# Printable ASCII without '[' and ']': those delimit the blocks and cannot be escaped.
_TEXT_RE = re.compile(r"[\x20-\x5a\x5c\x5e-\x7e]*")
_LETTER_RE = re.compile(r"[A-Za-z]")
_HEX4_RE = re.compile(rb"[0-9A-Fa-f]{4}")
_HEX_RE = re.compile(r"[0-9A-Fa-f]+")
_TS_RE = re.compile(r"_([0-9]{2}):([0-9]{2}):([0-9]{2}),([0-9]{2})-([0-9]{2})-([0-9]{4})")
# R and L are matched lazily so that "L1A0[" (a NAK: line 1, anonymous account) is not read
# as line "1A0"; the regex engine backtracks to longer values when the short one fails.
# pysiaalarm writes "L0R0" in the NAK it sends for unparsable lines, hence the second R.
_HEADER_RE = re.compile(
    r'"(?P<star>\*?)(?P<token>[A-Z0-9][A-Z0-9-]{0,15})"'
    r"(?P<seq>[0-9]{4})"
    r"(?:R(?P<r1>[0-9A-Fa-f]{1,6}?))?"
    r"(?:L(?P<pref>[0-9A-Fa-f]{1,6}?))?"
    r"(?:R(?P<r2>[0-9A-Fa-f]{1,6}?))?"
    r"(?:#(?P<acct>[0-9A-Fa-f]{3,16})|(?P<anon>A0))?"
    r"\["
)
_CID_RE = re.compile(
    r"#(?P<acct>[0-9A-Fa-f]{3,16})\|(?P<q>[0-9])(?P<code>[0-9]{3}) (?P<part>[0-9]{2}) "
    r"(?P<zone>[0-9]{3})"
)
_SIA_RE = re.compile(
    r"#(?P<acct>[0-9A-Fa-f]{3,16})\|N"
    r"(?:ti[0-9]{2}:[0-9]{2}/)?"
    r"(?:id(?P<user>[0-9]+)/)?"
    r"(?:ri(?P<part>[0-9]+)/)?"
    r"(?P<code>[A-Z]{2})(?P<zone>[0-9]*)(?P<rest>[\x20-\x5a\x5c\x5e-\x7e]*)"
)

# Contact ID event code -> SIA DC-03 (new event, restore), from the table in the spec.
CID_TO_SIA: Final[dict[int, tuple[str, str | None]]] = {
    110: ("FA", "FH"),
    120: ("PA", "PH"),
    121: ("HA", "HH"),
    122: ("HA", "HH"),
    130: ("BA", "BH"),  # burglary: not in our spec's table, but standard Contact ID / DC-03
    137: ("TA", "TR"),
    144: ("TA", "TR"),
    150: ("UA", "UH"),  # 24-hour non-burglary (a bollard impact, by our default mapping)
    301: ("AT", "AR"),
    302: ("YT", "YR"),
    350: ("YC", "YK"),
    380: ("YX", "YZ"),
    601: ("RX", None),
    602: ("RP", None),
}
CID_QUALIFIERS: Final = (1, 3, 6)
"""1 new event / opening, 3 restore / closing, 6 previously reported condition still present."""


def _make_crc_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC_TABLE: Final = _make_crc_table()


def crc16_arc(data: bytes) -> int:
    """CRC-16/ARC: poly 0x8005 reflected (0xA001), init 0, no final XOR.

    Not CRC-CCITT, which some DC-09 snippets wrongly use. ``crc16_arc(b"123456789") == 0xBB3D``.
    """
    crc = 0
    for byte in data:
        crc = (crc >> 8) ^ _CRC_TABLE[(crc ^ byte) & 0xFF]
    return crc


def format_timestamp(ts: datetime) -> str:
    """Format an aware datetime as the DC-09 timestamp ``_HH:MM:SS,MM-DD-YYYY`` in UTC."""
    if ts.tzinfo is None:
        raise ValueError("DC-09 timestamps must be timezone-aware (they are sent in UTC)")
    u = ts.astimezone(UTC)
    # Explicit widths instead of strftime: %Y does not zero-pad years below 1000 on glibc.
    return f"_{u.hour:02d}:{u.minute:02d}:{u.second:02d},{u.month:02d}-{u.day:02d}-{u.year:04d}"


def parse_timestamp(text: str) -> datetime:
    """Parse ``_HH:MM:SS,MM-DD-YYYY`` (as in messages and NAKs) into an aware UTC datetime.

    Raises:
        FrameFormatError: Not a DC-09 timestamp or not a valid date and time.
    """
    m = _TS_RE.fullmatch(text)
    if m is None:
        raise FrameFormatError(f"bad DC-09 timestamp {text!r}")
    hh, mi, ss, mo, dd, yy = (int(g) for g in m.groups())
    try:
        return datetime(yy, mo, dd, hh, mi, ss, tzinfo=UTC)
    except ValueError:
        raise FrameFormatError(f"impossible DC-09 timestamp {text!r}") from None


def _check_text(what: str, value: str) -> None:
    if _TEXT_RE.fullmatch(value) is None:
        raise ValueError(f"{what} must be printable ASCII without '[' or ']': {value!r}")


@dataclass(frozen=True, slots=True)
class Frame:
    """One DC-09 message or reply, as values.

    Attributes:
        token: The id without quotes or ``*``: ``SIA-DCS``, ``ADM-CID``, ``NULL``, ``ACK``,
            ``NAK``, ``DUH`` (a decoded frame may carry an unknown id; receivers answer DUH).
        seq: Sequence number 1..9999 (0 in a NAK, which answers no particular message).
        account: Account, 3..16 uppercase hex. Empty only in replies, where it is written as
            the anonymous ``A0`` (the standard NAK form).
        data: The content inside the first ``[...]``, e.g. ``#1234|1120 01 015``.
        receiver: Receiver number ``R``, 1..6 uppercase hex, or None to omit it.
        prefix: Account prefix / line ``L``, 1..6 uppercase hex, or None to omit it.
        xdata: Extended data blocks as ``(letter, value)`` pairs, e.g. ``("V", url)``.
        timestamp: Aware datetime (normalised to UTC, whole seconds) or None.
        encrypted: Whether the frame is (to be) AES-encrypted (``*`` before the id).
    """

    token: str
    seq: int
    account: str = ""
    data: str = ""
    receiver: str | None = None
    prefix: str | None = None
    xdata: tuple[tuple[str, str], ...] = field(default=())
    timestamp: datetime | None = None
    encrypted: bool = False

    def __post_init__(self) -> None:
        """Validate every field so that :func:`encode` can only write well-formed frames."""
        if _TOKEN_RE.fullmatch(self.token) is None:
            raise ValueError(f"bad DC-09 id {self.token!r}")
        if not 0 <= self.seq <= 9999:
            raise ValueError(f"sequence number must be 0..9999, got {self.seq}")
        for name in ("receiver", "prefix"):
            value = getattr(self, name)
            if value is not None and _RL_RE.fullmatch(value) is None:
                raise ValueError(f"{name} must be 1..6 uppercase hex digits, got {value!r}")
        if self.account:
            if _ACCOUNT_RE.fullmatch(self.account) is None:
                raise ValueError(f"account must be 3..16 uppercase hex, got {self.account!r}")
        elif self.token not in REPLY_TOKENS:
            raise ValueError(f"a {self.token} frame needs an account")
        _check_text("data", self.data)
        xdata = tuple((str(k), str(v)) for k, v in self.xdata)
        for letter, value in xdata:
            if _LETTER_RE.fullmatch(letter) is None:
                raise ValueError(f"x-data identifier must be one ASCII letter, got {letter!r}")
            _check_text("x-data", value)
        object.__setattr__(self, "xdata", xdata)
        if self.timestamp is not None:
            if self.timestamp.tzinfo is None:
                raise ValueError("timestamp must be timezone-aware")
            ts = self.timestamp.astimezone(UTC).replace(microsecond=0)
            object.__setattr__(self, "timestamp", ts)


def _random_pad(n: int) -> bytes:
    # Alphanumerics only: the spec allows any byte but '|', '[' and ']', yet some receivers
    # decode the whole plaintext as ASCII before stripping the pad.
    alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
    return bytes(secrets.choice(alphabet) for _ in range(n))


def encode(frame: Frame, key: bytes | None = None, pad: bytes | None = None) -> bytes:
    """Encode a frame to wire bytes ``LF ... CR``.

    Args:
        frame: The frame. ``frame.encrypted`` decides whether it is encrypted.
        key: AES key (16/24/32 bytes); required when ``frame.encrypted``.
        pad: Pad source for encrypted frames, for deterministic tests: the first n bytes are
            used (n is 1..16, enough to fill the last block). Default: random characters.
            Must not contain ``|``, ``[`` or ``]``.

    Returns:
        The complete frame.

    Raises:
        ValueError: Encrypted without a key or timestamp, a bad pad, or a body over 4095 bytes.
        InvalidKeyError: The key length is not 16, 24 or 32 bytes.
    """
    head = [f'"{"*" if frame.encrypted else ""}{frame.token}"{frame.seq:04d}']
    if frame.receiver is not None:
        head.append(f"R{frame.receiver}")
    if frame.prefix is not None:
        head.append(f"L{frame.prefix}")
    head.append(f"#{frame.account}" if frame.account else _ANON_ACCOUNT)
    head.append("[")
    content = frame.data + "]" + "".join(f"[{k}{v}]" for k, v in frame.xdata)
    if frame.timestamp is not None:
        content += format_timestamp(frame.timestamp)
    if not frame.encrypted:
        body = "".join(head) + content
    else:
        if key is None:
            raise ValueError("an encrypted frame needs a key")
        check_key(key)
        if frame.timestamp is None:
            raise ValueError("an encrypted frame needs a timestamp (DC-09 makes it mandatory)")
        clear = content.encode("ascii")
        # At least one pad byte, so two identical messages never share a first block.
        n = AES_BLOCK - (len(clear) + 1) % AES_BLOCK
        if pad is None:
            pad_bytes = _random_pad(n)
        else:
            if len(pad) < n:
                raise ValueError(f"pad needs at least {n} bytes")
            pad_bytes = pad[:n]
            if any(b in pad_bytes for b in b"|[]"):
                raise ValueError("pad must not contain '|', '[' or ']'")
        cipher = aes_encrypt(key, pad_bytes + b"|" + clear)
        body = "".join(head) + cipher.hex().upper()
    raw = body.encode("ascii")
    if len(raw) > MAX_BODY:
        raise ValueError(f"DC-09 body is {len(raw)} bytes, the maximum is {MAX_BODY}")
    return b"\n%04X%04X%s\r" % (crc16_arc(raw), len(raw), raw)


def _parse_content(text: str) -> tuple[str, tuple[tuple[str, str], ...], datetime | None]:
    """Parse ``data]`` + ``[x-data]...`` + optional timestamp (what follows the first ``[``)."""
    close = text.find("]")
    if close < 0:
        raise FrameFormatError("data block is not closed with ']'")
    data = text[:close]
    if _TEXT_RE.fullmatch(data) is None:
        raise FrameFormatError("data block holds '[' or non-printable characters")
    pos = close + 1
    xdata: list[tuple[str, str]] = []
    while pos < len(text) and text[pos] == "[":
        end = text.find("]", pos)
        if end < 0:
            raise FrameFormatError("x-data block is not closed with ']'")
        inner = text[pos + 1 : end]
        if not inner or _LETTER_RE.fullmatch(inner[0]) is None:
            raise FrameFormatError(f"bad x-data block {inner!r}")
        if _TEXT_RE.fullmatch(inner) is None:
            raise FrameFormatError("x-data block holds '[' or non-printable characters")
        xdata.append((inner[0], inner[1:]))
        pos = end + 1
    tail = text[pos:]
    timestamp = parse_timestamp(tail) if tail else None
    return data, tuple(xdata), timestamp


def _decrypt_content(cipher_hex: str, key: bytes | None) -> str:
    if key is None:
        raise DecryptError("encrypted frame but no key configured")
    if _HEX_RE.fullmatch(cipher_hex) is None or len(cipher_hex) % 2:
        raise DecryptError("encrypted block is not hex")
    plain = aes_decrypt(key, bytes.fromhex(cipher_hex))
    # The pad ends at the first '|'. Some receivers (pysiaalarm's *ACK) pad with '0's and put
    # no '|' at all before the ']' of an empty data block, so accept ']' as the end too.
    ends = [i for i in (plain.find(b"|"), plain.find(b"]")) if i >= 0]
    if not ends:
        raise DecryptError("no '|' or ']' after the pad (wrong key?)")
    end = min(ends)
    if b"[" in plain[:end]:
        raise DecryptError("'[' inside the pad (wrong key?)")
    rest = plain[end + 1 :] if plain[end] == ord("|") else plain[end:]
    try:
        return rest.decode("ascii")
    except UnicodeDecodeError:
        raise DecryptError("decrypted content is not ASCII (wrong key?)") from None


def decode(raw: bytes, key: bytes | None = None) -> Frame:
    """Decode one complete frame ``LF ... CR``.

    Args:
        raw: The frame bytes, from LF to CR inclusive.
        key: AES key for encrypted frames (``*`` ids). Plain frames decode without it.

    Returns:
        The frame.

    Raises:
        LengthError: The length field does not match the body.
        CRCError: The CRC does not match the body.
        FrameFormatError: Anything else wrong in the framing, header, blocks or timestamp.
        DecryptError: Encrypted without a key, or the ciphertext does not decrypt to a
            well-formed content (usually a wrong key).
    """
    if len(raw) < 2 or raw[0] != 0x0A or raw[-1] != 0x0D:
        raise FrameFormatError("a frame starts with LF and ends with CR")
    inner = raw[1:-1]
    if len(inner) < 8 or _HEX4_RE.fullmatch(inner[:4]) is None:
        raise FrameFormatError("missing CRC field")
    if _HEX4_RE.fullmatch(inner[4:8]) is None:
        raise FrameFormatError("missing length field")
    body = inner[8:]
    length = int(inner[4:8], 16)
    if length != len(body):
        raise LengthError(f"length field says {length} bytes, body has {len(body)}")
    crc = int(inner[:4], 16)
    if crc != crc16_arc(body):
        raise CRCError(f"CRC field {crc:04X}, computed {crc16_arc(body):04X}")
    try:
        text = body.decode("ascii")
    except UnicodeDecodeError:
        raise FrameFormatError("body is not ASCII") from None
    m = _HEADER_RE.match(text)
    if m is None:
        raise FrameFormatError(f"bad header in {text[:40]!r}")
    if m["r1"] and m["r2"]:
        raise FrameFormatError("two receiver fields")
    encrypted = bool(m["star"])
    rest = text[m.end() :]
    if encrypted:
        try:
            data, xdata, timestamp = _parse_content(_decrypt_content(rest, key))
        except FrameFormatError as exc:
            raise DecryptError(f"decrypted content is malformed (wrong key?): {exc}") from None
    else:
        data, xdata, timestamp = _parse_content(rest)
    receiver = m["r1"] or m["r2"]
    try:
        return Frame(
            token=m["token"],
            seq=int(m["seq"]),
            account=m["acct"].upper() if m["acct"] else "",
            data=data,
            receiver=receiver.upper() if receiver else None,
            prefix=m["pref"].upper() if m["pref"] else None,
            xdata=xdata,
            timestamp=timestamp,
            encrypted=encrypted,
        )
    except ValueError as exc:
        raise FrameFormatError(str(exc)) from None


def make_reply(
    frame: Frame,
    token: str,
    *,
    timestamp: datetime | None = None,
    encrypted: bool | None = None,
) -> Frame:
    """Build the ACK (or DUH) for a message: it echoes seq, R, L and account, data empty.

    Args:
        frame: The message being answered.
        token: ``"ACK"`` or ``"DUH"``.
        timestamp: Receiver time; needed when the reply is encrypted (``*ACK``).
        encrypted: Encrypt the reply; defaults to ``frame.encrypted``. A DUH is never
            encrypted because the receiver may not have understood enough to pick a key.
    """
    enc = frame.encrypted if encrypted is None else encrypted
    if token != ACK:
        enc = False
    return Frame(
        token=token,
        seq=frame.seq,
        account=frame.account,
        receiver=frame.receiver,
        prefix=frame.prefix,
        timestamp=timestamp if (enc or token != ACK) else None,
        encrypted=enc,
    )


def make_nak(
    receiver_time: datetime, *, receiver: str | None = "0", prefix: str | None = "0"
) -> Frame:
    """Build the standard NAK ``"NAK"0000R0L0A0[]_HH:MM:SS,MM-DD-YYYY`` with the receiver's time."""
    return Frame(
        token=NAK,
        seq=0,
        receiver=receiver,
        prefix=prefix,
        timestamp=receiver_time,
    )


@dataclass(frozen=True, slots=True)
class ContactID:
    """A Contact ID (SIA DC-05) event as carried by ADM-CID: ``#acct|QEEE GG ZZZ``."""

    account: str
    qualifier: int
    code: int
    partition: int
    zone: int

    @property
    def sia_code(self) -> str | None:
        """The SIA DC-03 code for this event per the spec's table, or None if unknown."""
        return cid_to_sia(self.code, self.qualifier)


def contact_id_data(account: str, qualifier: int, code: int, partition: int, zone: int) -> str:
    """Build ADM-CID data: ``contact_id_data("1234", 1, 120, 1, 15) == "#1234|1120 01 015"``.

    Raises:
        ValueError: A field is out of range.
    """
    account = account.upper()
    if _ACCOUNT_RE.fullmatch(account) is None:
        raise ValueError(f"account must be 3..16 hex digits, got {account!r}")
    if qualifier not in CID_QUALIFIERS:
        raise ValueError(f"Contact ID qualifier must be 1, 3 or 6, got {qualifier}")
    if not 0 <= code <= 999 or not 0 <= partition <= 99 or not 0 <= zone <= 999:
        raise ValueError("Contact ID code/zone are 0..999 and partition 0..99")
    return f"#{account}|{qualifier}{code:03d} {partition:02d} {zone:03d}"


def parse_contact_id(data: str) -> ContactID:
    """Parse ADM-CID data ``#acct|QEEE GG ZZZ``.

    Raises:
        FrameFormatError: Not Contact ID data.
    """
    m = _CID_RE.fullmatch(data)
    if m is None:
        raise FrameFormatError(f"not Contact ID data: {data!r}")
    return ContactID(
        account=m["acct"].upper(),
        qualifier=int(m["q"]),
        code=int(m["code"]),
        partition=int(m["part"]),
        zone=int(m["zone"]),
    )


def cid_to_sia(code: int, qualifier: int = 1) -> str | None:
    """Map a Contact ID code to its SIA DC-03 code (restore code for qualifier 3)."""
    pair = CID_TO_SIA.get(code)
    if pair is None:
        return None
    new, restore = pair
    return restore if qualifier == 3 and restore else new


@dataclass(frozen=True, slots=True)
class SiaEvent:
    """A SIA DC-03 event as carried by SIA-DCS: ``#acct|N[ri<part>/]<CC><zone>``."""

    account: str
    code: str
    zone: str
    partition: int | None = None
    user: int | None = None
    extra: str = ""


def sia_dcs_data(
    account: str,
    code: str,
    zone: int | str | None = None,
    *,
    partition: int | None = None,
) -> str:
    """Build SIA-DCS data: ``sia_dcs_data("1234", "PA", 15, partition=1) == "#1234|Nri1/PA015"``.

    Args:
        account: Account, 3..16 hex digits.
        code: Two-letter SIA DC-03 event code.
        zone: Zone (address field); an int is written with three digits, a str as is.
        partition: Area number written as ``ri<n>/``, or None to omit it.

    Raises:
        ValueError: A field is malformed.
    """
    account = account.upper()
    if _ACCOUNT_RE.fullmatch(account) is None:
        raise ValueError(f"account must be 3..16 hex digits, got {account!r}")
    if re.fullmatch(r"[A-Z]{2}", code) is None:
        raise ValueError(f"SIA code must be two uppercase letters, got {code!r}")
    if isinstance(zone, int):
        if not 0 <= zone <= 9999:
            raise ValueError("zone must be 0..9999")
        zone_text = f"{zone:03d}"
    else:
        zone_text = zone or ""
        if not zone_text.isdigit() and zone_text:
            raise ValueError(f"zone must be digits, got {zone_text!r}")
    part = ""
    if partition is not None:
        if not 0 <= partition <= 999:
            raise ValueError("partition must be 0..999")
        part = f"ri{partition}/"
    return f"#{account}|N{part}{code}{zone_text}"


def parse_sia_dcs(data: str) -> SiaEvent:
    """Parse SIA-DCS data ``#acct|N[ti..:../][id<u>/][ri<p>/]<CC><zone>...``.

    Raises:
        FrameFormatError: Not SIA DC-03 data.
    """
    m = _SIA_RE.fullmatch(data)
    if m is None:
        raise FrameFormatError(f"not SIA DC-03 data: {data!r}")
    try:
        partition = int(m["part"]) if m["part"] else None
        user = int(m["user"]) if m["user"] else None
    except ValueError:  # more digits than int() converts (4300)
        raise FrameFormatError(f"absurd number in SIA DC-03 data: {data[:60]!r}...") from None
    return SiaEvent(
        account=m["acct"].upper(),
        code=m["code"],
        zone=m["zone"],
        partition=partition,
        user=user,
        extra=m["rest"],
    )


class FrameBuffer:
    """Sans-IO splitter of a TCP byte stream into frames (``LF ... CR``).

    Bytes before an LF are garbage and discarded; an LF inside a pending frame means the
    earlier frame was cut short, so the buffer resynchronises on the later LF (a valid body
    never holds LF: plain content is printable ASCII and ciphertext is hex).
    """

    def __init__(self, max_frame_size: int = MAX_FRAME) -> None:
        """Create a buffer that drops any pending frame longer than ``max_frame_size``."""
        if max_frame_size < 10:
            raise ValueError("max_frame_size must be at least 10 bytes")
        self._buf = bytearray()
        self._max = max_frame_size
        self.discarded = 0
        """Bytes thrown away so far (garbage, cut or oversized frames)."""

    @property
    def pending(self) -> int:
        """Number of bytes held waiting for the rest of a frame."""
        return len(self._buf)

    def clear(self) -> None:
        """Forget any partial frame (after a reconnect)."""
        self.discarded += len(self._buf)
        self._buf.clear()

    def feed(self, data: bytes) -> list[bytes]:
        """Add received bytes; return the complete frames they finish, in order."""
        buf = self._buf
        buf += data
        frames: list[bytes] = []
        while buf:
            lf = buf.find(b"\n")
            if lf < 0:
                self.discarded += len(buf)
                buf.clear()
                break
            if lf:
                self.discarded += lf
                del buf[:lf]
            cr = buf.find(b"\r", 1)
            later_lf = buf.rfind(b"\n", 1, cr if cr >= 0 else len(buf))
            if later_lf > 0:
                self.discarded += later_lf
                del buf[:later_lf]
                continue
            if cr < 0:
                if len(buf) > self._max:
                    self.discarded += len(buf)
                    buf.clear()
                break
            frame = bytes(buf[: cr + 1])
            del buf[: cr + 1]
            if len(frame) > self._max:
                self.discarded += len(frame)
                continue
            frames.append(frame)
        return frames
