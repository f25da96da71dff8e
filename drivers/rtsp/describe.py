"""The DESCRIBE exchange, pure: build the request (with Basic or Digest credentials answering
a challenge) and read the answer's status line and headers. Bytes in, values out."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit, urlunsplit

from drivers.sip.digest import DigestError, authorization, parse_challenge

MAX_HEAD = 16384
"""An answer's status line and headers larger than this are not RTSP we can use."""


class RtspError(ValueError):
    """Not an RTSP answer we can read."""


@dataclass(frozen=True, slots=True)
class Target:
    """A stream URL split into what goes on the wire and the credentials it carried."""

    host: str
    port: int
    url: str  # without credentials
    username: str | None
    password: str | None


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    reason: str
    headers: dict[str, list[str]] = field(default_factory=dict)

    def header(self, name: str) -> str | None:
        values = self.headers.get(name.lower())
        return values[0] if values else None


def target(url: str) -> Target:
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("rtsp", "rtsps") or not parts.hostname:
        raise RtspError(f"not an rtsp:// URL: {url[:80]!r}")
    try:
        port = parts.port or (322 if parts.scheme.lower() == "rtsps" else 554)
    except ValueError as exc:
        raise RtspError(f"bad port in {url[:80]!r}") from exc
    host = parts.hostname
    netloc = f"[{host}]" if ":" in host else host
    if parts.port:
        netloc += f":{parts.port}"
    clean = urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
    user = unquote(parts.username) if parts.username is not None else None
    pw = unquote(parts.password) if parts.password is not None else None
    return Target(host, port, clean, user, pw)


def describe(t: Target, cseq: int, auth: str | None = None) -> bytes:
    lines = [
        f"DESCRIBE {t.url} RTSP/1.0",
        f"CSeq: {cseq}",
        "Accept: application/sdp",
        "User-Agent: CampusGuard-probe",
    ]
    if auth:
        lines.append(f"Authorization: {auth}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def answer_to(challenges: list[str], t: Target) -> str | None:
    """The Authorization value answering the server's challenges with the URL's credentials
    (Digest preferred over Basic); None when there is nothing to answer with."""
    if t.username is None:
        return None
    pw = t.password or ""
    for value in challenges:
        if value.strip().lower().startswith("digest "):
            try:
                ch = parse_challenge(value)
                return authorization(
                    ch, method="DESCRIBE", uri=t.url, username=t.username, password=pw
                )
            except DigestError:
                continue
    for value in challenges:
        if value.strip().lower().startswith("basic"):
            token = base64.b64encode(f"{t.username}:{pw}".encode()).decode()
            return f"Basic {token}"
    return None


def head_complete(data: bytes) -> bool:
    return b"\r\n\r\n" in data or b"\n\n" in data


def parse_answer(data: bytes) -> Answer:
    """The status line and headers of an RTSP answer (the body, if any, is ignored)."""
    head = data.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
    if len(head) > MAX_HEAD:
        raise RtspError("answer head too large")
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text = head.decode("latin-1")
    lines = text.replace("\r\n", "\n").split("\n")
    first = lines[0].split(" ", 2)
    if len(first) < 2 or not first[0].startswith("RTSP/") or not first[1].isdigit():
        raise RtspError(f"not an RTSP status line: {lines[0][:60]!r}")
    status = int(first[1])
    if not 100 <= status <= 599:
        raise RtspError(f"status {status} out of range")
    headers: dict[str, list[str]] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name.strip():
            continue
        headers.setdefault(name.strip().lower(), []).append(value.strip())
    return Answer(status, first[2].strip() if len(first) > 2 else "", headers)


def explain(status: int, had_credentials: bool) -> str:
    """What a person should read when the stream did not open with this answer."""
    if status == 401:
        if had_credentials:
            return "wrong user name or password for the stream (RTSP 401)"
        return "the stream needs a user name and password (RTSP 401)"
    if status == 403:
        return "the camera refuses this user the stream (RTSP 403)"
    if status == 404:
        return "no such stream path on the camera (RTSP 404)"
    if status == 453:
        return "the camera has no bandwidth for another stream (RTSP 453)"
    if status == 454 or status == 503:
        return f"the camera is busy or out of sessions (RTSP {status})"
    if 200 <= status < 300:
        return "the camera answers but the video could not be decoded"
    return f"the camera answered RTSP {status}"
