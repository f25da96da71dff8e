"""The pure SIP codec and digest auth (drivers/sip), and the GB/T 28181 MANSCDP bodies."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st
from lxml import etree

from contract.config import CampusAccount
from contract.models import Geo
from drivers.sip import digest
from drivers.sip.message import (
    SipMessage,
    SipParseError,
    header_params,
    name_addr_uri,
    parse,
    request,
    response,
)
from gateway.relay import gb28181
from tests.gwkit import make_event

tokens = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-.", min_size=1, max_size=20)
digits20 = st.text(alphabet="0123456789", min_size=20, max_size=20)


def test_rfc2617_worked_example() -> None:
    assert (
        digest.response_hash(
            username="Mufasa",
            password="Circle Of Life",
            realm="testrealm@host.com",
            nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093",
            method="GET",
            uri="/dir/index.html",
            qop="auth",
            nc="00000001",
            cnonce="0a4f113b",
        )
        == "6629fae49393a05397450978507c4ef1"
    )


def test_challenge_forms() -> None:
    ch = digest.parse_challenge(
        'Digest realm="biloxi.com", qop="auth,auth-int", '
        'nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", opaque="5ccc069c403ebaf9f0171e9517f40e41"'
    )
    assert (ch.realm, ch.qop, ch.opaque) == ("biloxi.com", ("auth", "auth-int"), ch.opaque)
    ch = digest.parse_challenge('Digest algorithm=MD5, realm="asterisk", nonce="25813d13"')
    assert (ch.realm, ch.nonce, ch.algorithm, ch.qop) == ("asterisk", "25813d13", "MD5", ())
    with pytest.raises(digest.DigestError):
        digest.parse_challenge('Basic realm="x"')
    with pytest.raises(digest.DigestError):
        digest.parse_challenge('Digest realm="x", nonce="y", algorithm=SHA-512-256')
    with pytest.raises(digest.DigestError):
        digest.parse_challenge('Digest realm="x"')


@given(
    realm=st.text(min_size=1, max_size=30).filter(lambda s: "\r" not in s and "\n" not in s),
    nonce=st.text(alphabet="0123456789abcdef", min_size=4, max_size=40),
    user=digits20,
    password=st.text(min_size=1, max_size=30),
    qop=st.booleans(),
    opaque=st.none() | tokens,
    method=st.sampled_from(["REGISTER", "MESSAGE"]),
    nc=st.integers(1, 1000),
)
def test_digest_round_trip(
    realm: str,
    nonce: str,
    user: str,
    password: str,
    qop: bool,
    opaque: str | None,
    method: str,
    nc: int,
) -> None:
    header = digest.challenge_header(realm, nonce, qop=qop, opaque=opaque)
    ch = digest.parse_challenge(header)
    assert (ch.realm, ch.nonce, ch.opaque) == (realm, nonce, opaque)
    uri = "sip:34020000002000000001@3402000000"
    creds = digest.authorization(
        ch, method=method, uri=uri, username=user, password=password, nc=nc
    )
    assert digest.check(creds, method=method, password=password)
    assert not digest.check(creds, method=method, password=password + "x")
    other = "MESSAGE" if method == "REGISTER" else "REGISTER"
    assert not digest.check(creds, method=other, password=password)
    p = digest.parse_credentials(creds)
    assert p["username"] == user and p["realm"] == realm and p["uri"] == uri
    if qop:
        assert p["qop"] == "auth" and p["nc"] == f"{nc:08x}"


@given(
    method=st.sampled_from(["REGISTER", "MESSAGE", "OPTIONS"]),
    dev=digits20,
    srv=digits20,
    host=st.sampled_from(["127.0.0.1", "10.20.0.5", "gw.example"]),
    port=st.integers(1, 65535),
    cseq=st.integers(1, 2**31 - 1),
    expires=st.none() | st.integers(0, 86400),
    body=st.binary(max_size=1500),
)
def test_request_round_trip(
    method: str,
    dev: str,
    srv: str,
    host: str,
    port: int,
    cseq: int,
    expires: int | None,
    body: bytes,
) -> None:
    req = request(
        method,
        f"sip:{srv}@3402000000",
        via=f"{host}:{port}",
        from_uri=f"sip:{dev}@3402000000",
        from_tag="abc123",
        to_uri=f"sip:{srv}@3402000000",
        call_id="c1@x",
        cseq=cseq,
        contact=f"sip:{dev}@{host}:{port}",
        expires=expires,
        body=body,
        content_type="Application/MANSCDP+xml" if body else None,
    )
    back = parse(req.encode())
    assert (back.method, back.uri, back.body) == (method, req.uri, body)
    assert back.cseq() == (cseq, method)
    assert back.branch() == req.branch() and str(back.branch()).startswith("z9hG4bK")
    assert back.call_id() == "c1@x"
    assert header_params(back.get("From") or "")["tag"] == "abc123"
    assert name_addr_uri(back.get("Contact") or "") == f"sip:{dev}@{host}:{port}"
    assert back.expires() == expires
    assert back.get("content-length") == str(len(body))
    answer = parse(response(back, 200, to_tag="t9").encode())
    assert (answer.status, answer.reason, answer.is_request) == (200, "OK", False)
    assert answer.branch() == req.branch() and answer.cseq() == (cseq, method)
    assert header_params(answer.get("To") or "")["tag"] == "t9"
    assert answer.get("From") == back.get("From")


def test_compact_forms_folding_and_contact_expires() -> None:
    raw = (
        b"SIP/2.0 200 OK\r\n"
        b"v: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKx1;rport=5060\r\n"
        b"f: <sip:a@d>;tag=1\r\n"
        b"t: <sip:a@d>;tag=2\r\n"
        b"i: call-1\r\n"
        b"CSeq: 7 REGISTER\r\n"
        b"m: <sip:a@127.0.0.1:5060;transport=udp>;expires=1800\r\n"
        b"Expires: 3600\r\n"
        b"Subject: a long\r\n  folded line\r\n"
        b"l: 0\r\n\r\n"
    )
    msg = parse(raw)
    assert msg.get("Via") is not None and msg.branch() == "z9hG4bKx1"
    assert msg.call_id() == "call-1" and msg.cseq() == (7, "REGISTER")
    assert msg.expires() == 1800  # the Contact's expires wins
    assert msg.get("subject") == "a long folded line"
    assert msg.body == b""


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"hello\r\n\r\n",
        b"SIP/2.0 OK\r\n\r\n",
        b"REGISTER sip:x SIP/3.0\r\n\r\n",
        b"MESSAGE sip:x SIP/2.0\r\nno colon here\r\n\r\n",
        b"MESSAGE sip:x SIP/2.0\r\nContent-Length: 10\r\n\r\nshort",
        b"MESSAGE sip:x SIP/2.0\r\nCSeq: 1\r\n",
    ],
)
def test_bad_messages(raw: bytes) -> None:
    with pytest.raises(SipParseError):
        parse(raw)


@given(st.binary(max_size=600))
def test_parse_never_crashes(data: bytes) -> None:
    try:
        msg = parse(data)
    except SipParseError:
        return
    assert isinstance(msg, SipMessage)


def test_cseq_errors() -> None:
    msg = parse(b"OPTIONS sip:x SIP/2.0\r\nCSeq: x y z\r\n\r\n")
    with pytest.raises(SipParseError):
        msg.cseq()


# --- GB/T 28181 MANSCDP bodies -----------------------------------------------------------------

CAMPUS = CampusAccount(
    id="test-campus", name="兴华小学", account="1234", geo=Geo(lat=39.7267, lon=116.3412)
)


@given(
    kind=st.sampled_from(["panic", "fire", "camera_tamper", "trouble", "bollard_impact"]),
    drill=st.booleans(),
    text=st.text(max_size=200).filter(lambda s: all(c.isprintable() for c in s)),
    sn=st.integers(1, 9999),
    dev=digits20,
    priority=st.integers(1, 4),
    encoding=st.sampled_from(["GB2312", "UTF-8"]),
)
def test_alarm_body(
    kind: str, drill: bool, text: str, sn: int, dev: str, priority: int, encoding: str
) -> None:
    ev = make_event(
        kind=kind,
        drill=drill,
        text=text,
        ts=datetime(2026, 11, 29, 1, 2, 3, tzinfo=UTC),
        location="南门 south gate",
    )
    body = gb28181.alarm_body(
        ev, CAMPUS, sn=sn, device_id=dev, priority=priority, encoding=encoding
    )
    assert body.startswith(f'<?xml version="1.0" encoding="{encoding}"?>'.encode())
    root = etree.fromstring(body)  # libxml2 honours the declared encoding (expat has no GB2312)
    assert root.tag == "Notify"
    got = {child.tag: child.text for child in root}
    assert got["CmdType"] == "Alarm" and got["SN"] == str(sn) and got["DeviceID"] == dev
    assert got["AlarmPriority"] == str(4 if drill else priority)
    assert got["AlarmMethod"] == {"camera_tamper": "5", "trouble": "6"}.get(kind, "2")
    assert got["AlarmTime"] == "2026-11-29T09:02:03"  # Beijing time
    assert (got["Longitude"], got["Latitude"]) == ("116.341200", "39.726700")
    assert "兴华小学" in str(got["AlarmDescription"])
    assert ("DRILL" in str(got["AlarmDescription"])) is drill
    assert list(got) == [
        "CmdType",
        "SN",
        "DeviceID",
        "AlarmPriority",
        "AlarmMethod",
        "AlarmTime",
        "AlarmDescription",
        "Longitude",
        "Latitude",
    ]


def test_keepalive_body_and_gb2312_fallback() -> None:
    root = etree.fromstring(gb28181.keepalive_body(100001, "34020000001320000001"))
    assert [c.text for c in root] == ["Keepalive", "100001", "34020000001320000001", "OK"]
    ev = make_event(text="emoji \U0001f6a8 and 学校")
    body = gb28181.alarm_body(ev, CAMPUS, sn=1, device_id="3" * 20, priority=1)
    assert b"&#128680;" in body  # not in GB2312: a character reference, never '?'
    assert "学校".encode("gb2312") in body
