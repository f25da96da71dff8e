"""A blocking DESCRIBE probe (the capture thread's, after OpenCV could not open a stream): one
TCP connection, at most two requests (the second answering an authentication challenge)."""

from __future__ import annotations

import socket

from drivers.rtsp.describe import (
    MAX_HEAD,
    RtspError,
    answer_to,
    describe,
    explain,
    head_complete,
    parse_answer,
    target,
)


def why_not(url: str, timeout: float = 3.0) -> str:
    """Why ``url`` does not play, in words (never raises; never shows the password)."""
    try:
        t = target(url)
    except RtspError as exc:
        return str(exc)
    if t.url.lower().startswith("rtsps"):
        return "cannot open the stream (RTSPS not probed)"
    try:
        with socket.create_connection((t.host, t.port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(describe(t, 1))
            first = parse_answer(_read_head(sock))
            if first.status == 401:
                auth = answer_to(first.headers.get("www-authenticate", []), t)
                if auth is not None:
                    sock.sendall(describe(t, 2, auth))
                    second = parse_answer(_read_head(sock))
                    return explain(second.status, True)
                return explain(401, False)
            return explain(first.status, t.username is not None)
    except TimeoutError:
        return "the camera does not answer RTSP (timeout)"
    except ConnectionRefusedError:
        return "nothing listens on the stream's port (connection refused)"
    except RtspError as exc:
        return f"the camera's RTSP answer cannot be read: {exc}"
    except OSError as exc:
        return f"cannot reach the camera: {exc.strerror or exc}"


def _read_head(sock: socket.socket) -> bytes:
    data = b""
    while not head_complete(data):
        chunk = sock.recv(4096)
        if not chunk:
            if data:
                break
            raise RtspError("connection closed without an answer")
        data += chunk
        if len(data) > MAX_HEAD:
            raise RtspError("answer head too large")
    # Skip a body (e.g. SDP of a 200) is not needed: the connection is closed after use.
    return data
