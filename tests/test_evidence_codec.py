"""The evidence wire format and the signed verification links: pure, property-tested."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from contract import evidence as wire
from contract.models import new_id
from gateway.evidence import link_signature, verification_url, verify_link

JPEG_HEAD = b"\xff\xd8\xff\xe0"


def header_for(image: bytes, **kw: object) -> wire.EvidenceHeader:
    base: dict[str, object] = {
        "ident": new_id(),
        "campus": "school-1",
        "edge": "edge-1",
        "event_id": new_id(),
        "camera": "cam-gate",
        "shot": 0,
        "taken_at": datetime(2026, 11, 29, 8, 0, tzinfo=UTC),
        "image": image,
    }
    base.update(kw)
    return wire.snapshot_header(**base)  # type: ignore[arg-type]


@given(body=st.binary(min_size=0, max_size=4096), shot=st.integers(0, 99))
def test_round_trip(body: bytes, shot: int) -> None:
    image = JPEG_HEAD + body
    header = header_for(image, shot=shot)
    got_header, got_image = wire.decode(wire.encode(header, image))
    assert got_header == header and got_image == image


@given(body=st.binary(min_size=1, max_size=512), flip=st.integers(0, 10_000))
def test_any_changed_byte_of_the_picture_is_refused(body: bytes, flip: int) -> None:
    image = JPEG_HEAD + body
    payload = bytearray(wire.encode(header_for(image), image))
    pos = len(payload) - len(image) + flip % len(image)
    payload[pos] ^= 0x01
    with pytest.raises(wire.EvidenceError):
        wire.decode(bytes(payload))


@given(cut=st.integers(1, 300))
def test_truncated_messages_are_refused(cut: int) -> None:
    image = JPEG_HEAD + bytes(range(256))
    payload = wire.encode(header_for(image), image)
    with pytest.raises(wire.EvidenceError):
        wire.decode(payload[: len(payload) - cut])


@given(junk=st.binary(max_size=2000))
def test_garbage_never_raises_anything_but_evidence_error(junk: bytes) -> None:
    for payload in (junk, wire.MAGIC + junk, wire.MAGIC + b"{}\n" + junk):
        with pytest.raises(wire.EvidenceError):
            wire.decode(payload)


def test_a_missing_picture_carries_its_reason_and_no_image() -> None:
    header = wire.EvidenceHeader(
        id=new_id(),
        campus="school-1",
        edge="edge-1",
        event_id=new_id(),
        camera="cam-yard",
        taken_at=datetime.now(UTC),
        error="no picture within 10 s",
    )
    got, image = wire.decode(wire.encode(header))
    assert got.error == "no picture within 10 s" and image == b""
    with pytest.raises(wire.EvidenceError):
        wire.encode(header, JPEG_HEAD)


def test_a_picture_that_is_not_a_jpeg_or_too_big_is_refused() -> None:
    png = b"\x89PNG\r\n\x1a\n" + b"x" * 100
    header = wire.EvidenceHeader(
        id=new_id(),
        campus="school-1",
        edge="edge-1",
        event_id=new_id(),
        camera="cam-gate",
        taken_at=datetime.now(UTC),
        content_type="image/jpeg",
        size=len(png),
        sha256=hashlib.sha256(png).hexdigest(),
    )
    with pytest.raises(wire.EvidenceError, match="not a JPEG"):
        wire.decode(wire.encode(header, png))
    image = JPEG_HEAD + b"x" * 5000
    with pytest.raises(wire.EvidenceError, match="exceeds the limit"):
        wire.decode(wire.encode(header_for(image), image), max_image=1024)


KEY = b"k" * 32
ids = st.text("0123456789ABCDEFGHJKMNPQRSTVWXYZ", min_size=26, max_size=26)


@given(alarm=ids, other=ids, exp=st.integers(1_700_000_000, 2_000_000_000))
def test_links_verify_only_for_their_alarm_and_until_they_expire(
    alarm: str, other: str, exp: int
) -> None:
    sig = link_signature(KEY, alarm, exp)
    assert verify_link(KEY, alarm, exp, sig, at=exp - 1)
    assert not verify_link(KEY, alarm, exp, sig, at=exp + 1)
    assert not verify_link(KEY, alarm, exp + 1, sig, at=exp - 1)
    assert not verify_link(b"x" * 32, alarm, exp, sig, at=exp - 1)
    if other != alarm:
        assert not verify_link(KEY, other, exp, sig, at=exp - 1)


def test_a_verification_url_fits_a_dc09_x_data_block() -> None:
    url = verification_url("https://cg.example.edu.cn/", KEY, new_id(), 1_800_000_000)
    assert url.startswith("https://cg.example.edu.cn/verify/")
    assert "[" not in url and "]" not in url and len(url) < 200
