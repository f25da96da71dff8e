"""The RTSP DESCRIBE codec (drivers/rtsp/describe.py), pure: worked examples from RFC 2326 and
RFC 2617, and properties over arbitrary bytes (it answers or raises RtspError, nothing else)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.rtsp.describe import (
    RtspError,
    answer_to,
    describe,
    explain,
    parse_answer,
    target,
)
from drivers.sip.digest import check


def test_target_splits_credentials_off_the_wire_url() -> None:
    t = target("rtsp://admin:p%40ss%3Aw@10.0.0.5:8554/Streaming/101?transport=tcp")
    assert (t.host, t.port, t.username, t.password) == ("10.0.0.5", 8554, "admin", "p@ss:w")
    assert t.url == "rtsp://10.0.0.5:8554/Streaming/101?transport=tcp"
    assert target("rtsp://cam/x").port == 554
    for bad in ("http://cam/x", "rtsp:///x", "rtsp://cam:99999/x"):
        with pytest.raises(RtspError):
            target(bad)


def test_describe_and_the_answer_of_rfc_2326() -> None:
    t = target("rtsp://server.example.com/fizzle/foo")
    assert describe(t, 312).startswith(
        b"DESCRIBE rtsp://server.example.com/fizzle/foo RTSP/1.0\r\nCSeq: 312\r\n"
    )
    a = parse_answer(
        b"RTSP/1.0 200 OK\r\nCSeq: 312\r\nContent-Type: application/sdp\r\n"
        b"Content-Length: 376\r\n\r\nv=0\r\n"
    )
    assert (a.status, a.reason, a.header("content-type")) == (200, "OK", "application/sdp")


def test_digest_answer_is_what_the_server_checks() -> None:
    t = target("rtsp://admin:secret@cam:554/live")
    challenge = 'Digest realm="IP Camera", nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093"'
    auth = answer_to(['Basic realm="x"', challenge], t)
    assert auth is not None and auth.startswith("Digest ")
    assert check(auth, method="DESCRIBE", password="secret")
    assert not check(auth, method="DESCRIBE", password="other")
    basic = answer_to(['Basic realm="x"'], t)
    assert basic == "Basic YWRtaW46c2VjcmV0"
    assert answer_to([challenge], target("rtsp://cam/live")) is None


def test_explanations_name_the_cause() -> None:
    assert "wrong user name or password" in explain(401, True)
    assert "needs a user name" in explain(401, False)
    assert "404" in explain(404, True)


@settings(max_examples=300)
@given(st.binary(max_size=2048))
def test_any_bytes_are_an_answer_or_a_clean_refusal(data: bytes) -> None:
    try:
        a = parse_answer(data)
    except RtspError:
        return
    assert 100 <= a.status <= 599


@settings(max_examples=300)
@given(
    st.integers(100, 599),
    st.text(
        alphabet=st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",)),
        max_size=40,
    ),
    st.dictionaries(
        st.from_regex(r"[A-Za-z][A-Za-z0-9-]{0,20}", fullmatch=True),
        st.text(
            alphabet=st.characters(
                blacklist_characters="\r\n", blacklist_categories=("Cs",), min_codepoint=32
            ),
            max_size=60,
        ),
        max_size=8,
    ),
)
def test_answers_round_trip(status: int, reason: str, headers: dict[str, str]) -> None:
    lines = [f"RTSP/1.0 {status} {reason}"] + [f"{k}: {v}" for k, v in headers.items()]
    a = parse_answer(("\r\n".join(lines) + "\r\n\r\n").encode())
    assert a.status == status and a.reason == reason.strip()
    for k, v in headers.items():
        assert v.strip() in (a.headers.get(k.lower()) or [])
