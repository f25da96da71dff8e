"""SIP messages (RFC 3261), pure: parse and build requests and responses.

Enough for a GB/T 28181 device: request and status lines, headers in order (compact forms
expanded, names case-insensitive), name-addr values with their parameters (``tag``), Via with
its ``branch``, CSeq, Expires, Contact, and a body whose length is Content-Length.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field

SIP_VERSION = "SIP/2.0"
BRANCH_MAGIC = "z9hG4bK"
MAX_MESSAGE = 65_535

COMPACT = {
    "v": "Via",
    "f": "From",
    "t": "To",
    "i": "Call-ID",
    "m": "Contact",
    "l": "Content-Length",
    "c": "Content-Type",
    "e": "Content-Encoding",
    "k": "Supported",
    "s": "Subject",
}
_CANONICAL = {
    name.lower(): name
    for name in (
        "Via",
        "From",
        "To",
        "Call-ID",
        "CSeq",
        "Contact",
        "Expires",
        "Max-Forwards",
        "Content-Length",
        "Content-Type",
        "User-Agent",
        "Authorization",
        "WWW-Authenticate",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "Date",
        "Allow",
        "Server",
        "Supported",
        "Subject",
        "Content-Encoding",
        "Min-Expires",
        "Retry-After",
    )
}
_TOKEN = re.compile(r"^[A-Za-z0-9.!%*_+`'~-]+$")
_REASONS = {
    100: "Trying",
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    423: "Interval Too Brief",
    480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist",
    500: "Server Internal Error",
    503: "Service Unavailable",
}


class SipParseError(ValueError):
    """Not a SIP message we can read."""


def canonical(name: str) -> str:
    name = name.strip()
    low = name.lower()
    if low in COMPACT:
        return COMPACT[low]
    return _CANONICAL.get(low, name)


@dataclass
class SipMessage:
    """A request (``method`` and ``uri`` set) or a response (``status`` and ``reason``)."""

    method: str | None = None
    uri: str | None = None
    status: int | None = None
    reason: str = ""
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""

    @property
    def is_request(self) -> bool:
        return self.method is not None

    def get(self, name: str) -> str | None:
        """The first value of a header (any spelling of its name)."""
        want = canonical(name).lower()
        for k, v in self.headers:
            if k.lower() == want:
                return v
        return None

    def get_all(self, name: str) -> list[str]:
        want = canonical(name).lower()
        return [v for k, v in self.headers if k.lower() == want]

    def set(self, name: str, value: str) -> None:
        """Replace a header's values (or add it at the end)."""
        name = canonical(name)
        rest = [(k, v) for k, v in self.headers if k.lower() != name.lower()]
        at = next((i for i, (k, _) in enumerate(self.headers) if k.lower() == name.lower()), None)
        if at is None:
            rest.append((name, value))
        else:
            rest.insert(min(at, len(rest)), (name, value))
        self.headers = rest

    def cseq(self) -> tuple[int, str]:
        value = self.get("CSeq")
        if value is None:
            raise SipParseError("no CSeq")
        parts = value.split()
        if len(parts) != 2 or not parts[0].isdigit():
            raise SipParseError(f"bad CSeq {value!r}")
        return int(parts[0]), parts[1].upper()

    def branch(self) -> str | None:
        via = self.get("Via")
        return None if via is None else header_params(via).get("branch")

    def call_id(self) -> str:
        return self.get("Call-ID") or ""

    def expires(self) -> int | None:
        """The registration lifetime: the Contact's ``expires`` or the Expires header."""
        contact = self.get("Contact")
        if contact:
            value = header_params(contact).get("expires")
            if value and value.isdigit():
                return int(value)
        raw = self.get("Expires")
        return int(raw) if raw and raw.strip().isdigit() else None

    def encode(self) -> bytes:
        if self.is_request:
            start = f"{self.method} {self.uri} {SIP_VERSION}"
        else:
            start = f"{SIP_VERSION} {self.status} {self.reason}"
        lines = [start]
        lines += [f"{k}: {v}" for k, v in self.headers if k.lower() != "content-length"]
        lines.append(f"Content-Length: {len(self.body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8") + self.body


def parse(data: bytes) -> SipMessage:
    """One SIP message from one datagram (or stream frame)."""
    if len(data) > MAX_MESSAGE:
        raise SipParseError("message too large")
    data = data.lstrip(b"\r\n")  # keep-alive CRLFs
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        head, sep, body = data.partition(b"\n\n")
        if not sep:
            raise SipParseError("no end of headers")
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text = head.decode("latin-1")
    raw_lines = re.split(r"\r?\n", text)
    if not raw_lines or not raw_lines[0].strip():
        raise SipParseError("empty message")
    # Unfold continuation lines (a line starting with white space continues the previous).
    lines: list[str] = []
    for line in raw_lines[1:]:
        if line[:1] in (" ", "\t") and lines:
            lines[-1] += " " + line.strip()
        elif line:
            lines.append(line)
    msg = _start_line(raw_lines[0].strip())
    for line in lines:
        name, colon, value = line.partition(":")
        if not colon or not name.strip() or not _TOKEN.match(name.strip()):
            raise SipParseError(f"bad header line {line[:60]!r}")
        msg.headers.append((canonical(name), value.strip()))
    length = msg.get("Content-Length")
    if length is not None:
        if not length.strip().isdigit():
            raise SipParseError(f"bad Content-Length {length!r}")
        n = int(length)
        if n > len(body):
            raise SipParseError("body shorter than Content-Length")
        body = body[:n]
    msg.body = body
    return msg


def _start_line(line: str) -> SipMessage:
    parts = line.split(" ", 2)
    if parts[0] == SIP_VERSION:
        if len(parts) < 2 or not parts[1].isdigit() or len(parts[1]) != 3:
            raise SipParseError(f"bad status line {line[:60]!r}")
        return SipMessage(status=int(parts[1]), reason=parts[2] if len(parts) > 2 else "")
    if len(parts) != 3 or parts[2] != SIP_VERSION or not _TOKEN.match(parts[0]):
        raise SipParseError(f"bad request line {line[:60]!r}")
    return SipMessage(method=parts[0].upper(), uri=parts[1])


def header_params(value: str) -> dict[str, str]:
    """``;name=value`` parameters of a header value (outside any ``<...>``), names lowercase."""
    outside = re.sub(r"<[^>]*>", "", value)
    out: dict[str, str] = {}
    for part in outside.split(";")[1:]:
        name, _, val = part.partition("=")
        if name.strip():
            out[name.strip().lower()] = val.strip().strip('"')
    return out


def name_addr_uri(value: str) -> str:
    """The URI of a From / To / Contact value."""
    m = re.search(r"<([^>]*)>", value)
    return m.group(1) if m else value.split(";")[0].strip()


def new_branch() -> str:
    return BRANCH_MAGIC + secrets.token_hex(8)


def new_tag() -> str:
    return secrets.token_hex(6)


def request(
    method: str,
    uri: str,
    *,
    via: str,
    from_uri: str,
    from_tag: str,
    to_uri: str,
    call_id: str,
    cseq: int,
    branch: str | None = None,
    to_tag: str | None = None,
    contact: str | None = None,
    expires: int | None = None,
    extra: list[tuple[str, str]] | None = None,
    body: bytes = b"",
    content_type: str | None = None,
    user_agent: str = "CampusGuard",
) -> SipMessage:
    """A request; ``via`` is ``host:port`` and the transport is UDP (rport asked for)."""
    headers = [
        ("Via", f"SIP/2.0/UDP {via};rport;branch={branch or new_branch()}"),
        ("From", f"<{from_uri}>;tag={from_tag}"),
        ("To", f"<{to_uri}>" + (f";tag={to_tag}" if to_tag else "")),
        ("Call-ID", call_id),
        ("CSeq", f"{cseq} {method.upper()}"),
        ("Max-Forwards", "70"),
    ]
    if contact is not None:
        headers.append(("Contact", f"<{contact}>"))
    if expires is not None:
        headers.append(("Expires", str(expires)))
    headers.append(("User-Agent", user_agent))
    headers += extra or []
    if content_type is not None:
        headers.append(("Content-Type", content_type))
    return SipMessage(method=method.upper(), uri=uri, headers=headers, body=body)


def response(
    req: SipMessage,
    status: int,
    reason: str | None = None,
    *,
    to_tag: str | None = None,
    extra: list[tuple[str, str]] | None = None,
    body: bytes = b"",
) -> SipMessage:
    """The answer to ``req``: its Via(s), From, Call-ID and CSeq copied, To tagged."""
    headers = [("Via", v) for v in req.get_all("Via")]
    for name in ("From", "To", "Call-ID", "CSeq"):
        value = req.get(name)
        if value is None:
            raise SipParseError(f"request without {name}")
        if name == "To" and to_tag and "tag" not in header_params(value):
            value = f"{value};tag={to_tag}"
        headers.append((name, value))
    headers += extra or []
    return SipMessage(
        status=status, reason=reason or _REASONS.get(status, "Unknown"), headers=headers, body=body
    )
