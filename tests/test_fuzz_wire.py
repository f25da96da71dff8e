"""Fuzzing the binary evidence codec and the telemetry batch codec (issue 11, bad input).

* ``contract.evidence.decode``: any bytes -> a header and a picture, or ``EvidenceError``;
  a picture it accepts always matches its header's size and SHA-256 and is a JPEG; every
  snapshot or "no picture" header it encodes decodes back to itself;
* ``TelemetryBatch.model_validate_json``: any bytes -> a batch or pydantic's
  ``ValidationError``; every valid batch survives the wire unchanged.

Two sizes: a few hundred cases per target by default; ``-m slow`` runs 100,000.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from pydantic import ValidationError

from contract import evidence
from contract.telemetry import TelemetryBatch
from tests.test_fuzz_ingest import (
    CAMPUS,
    SIZES,
    byte_mutations,
    deep_nesting,
    field_mutations,
    json_values,
    report,
    sized,
    telemetry_objects,
)

ULID_CHARS = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
ulids = st.binary(min_size=26, max_size=26).map(lambda b: "".join(ULID_CHARS[x % 32] for x in b))
names = st.binary(min_size=1, max_size=12).map(
    lambda b: "c" + "".join("abcdefghijklmnopqrstuvwxyz0123456789-_."[x % 39] for x in b)
)
times = st.integers(0, 4_000_000_000).map(lambda t: datetime.fromtimestamp(t, UTC))
jpegs = st.binary(max_size=2000).map(lambda b: b"\xff\xd8\xff" + b)


@st.composite
def evidence_messages(draw: st.DrawFn) -> tuple[evidence.EvidenceHeader, bytes]:
    ident, edge, event_id, camera = draw(ulids), draw(names), draw(ulids), draw(names)
    shot, taken_at = draw(st.integers(0, 99)), draw(times)
    if draw(st.booleans()):
        image = draw(jpegs)
        snap = evidence.snapshot_header(
            ident=ident,
            campus=CAMPUS,
            edge=edge,
            event_id=event_id,
            camera=camera,
            shot=shot,
            taken_at=taken_at,
            image=image,
        )
        return snap, image
    header = evidence.EvidenceHeader(
        id=ident,
        campus=CAMPUS,
        edge=edge,
        event_id=event_id,
        camera=camera,
        shot=shot,
        taken_at=taken_at,
        error=draw(st.text(max_size=50)),
    )
    return header, b""


@st.composite
def evidence_payloads(draw: st.DrawFn) -> bytes:
    header, image = draw(evidence_messages())
    raw = evidence.encode(header, image)
    how = draw(st.sampled_from(["bytes", "magic+bytes", "mutated", "header-fields", "long"]))
    if how == "bytes":
        return draw(st.binary(max_size=300))
    if how == "magic+bytes":
        return evidence.MAGIC + draw(st.binary(max_size=300))
    if how == "mutated":
        return draw(byte_mutations(raw))
    if how == "header-fields":
        obj = json.loads(header.model_dump_json())
        head = json.dumps(draw(field_mutations(obj))).encode()
        return evidence.MAGIC + head + b"\n" + image
    return evidence.MAGIC + b"{" * draw(st.integers(4000, 5000))


@pytest.mark.parametrize("n", SIZES)
def test_evidence_bytes_decode_or_raise_evidence_error(n: int) -> None:
    outcomes: Counter[str] = Counter()
    started = time.monotonic()

    @sized(n)
    @given(payload=evidence_payloads(), limit=st.sampled_from([1000, evidence.MAX_IMAGE_BYTES]))
    @example(payload=evidence.MAGIC + b"[" * 4000 + b"\n", limit=1000)
    def check(payload: bytes, limit: int) -> None:
        outcomes["_cases"] += 1
        try:
            header, image = evidence.decode(payload, max_image=limit)
        except evidence.EvidenceError:
            outcomes["EvidenceError"] += 1
            return
        outcomes["decoded"] += 1
        assert len(image) == header.size <= limit
        if image:
            assert hashlib.sha256(image).hexdigest() == header.sha256
            assert evidence.is_jpeg(image)
        else:
            assert header.error is not None

    check()
    report("evidence codec (hostile)", n, started, outcomes)


@pytest.mark.parametrize("n", SIZES)
def test_evidence_round_trips(n: int) -> None:
    outcomes: Counter[str] = Counter()
    started = time.monotonic()

    @sized(n)
    @given(message=evidence_messages())
    def check(message: tuple[evidence.EvidenceHeader, bytes]) -> None:
        outcomes["_cases"] += 1
        header, image = message
        assert evidence.decode(evidence.encode(header, image)) == (header, image)
        outcomes["snapshot" if image else "no picture"] += 1

    check()
    report("evidence codec (round trip)", n, started, outcomes)


@st.composite
def telemetry_payloads(draw: st.DrawFn) -> bytes:
    obj = draw(telemetry_objects())
    how = draw(st.sampled_from(["bytes", "json", "fields", "mutated", "deep", "values"]))
    if how == "bytes":
        return draw(st.binary(max_size=300))
    if how == "json":
        return json.dumps(draw(json_values)).encode()
    if how == "fields":
        return json.dumps(draw(field_mutations(obj))).encode()
    if how == "mutated":
        return draw(byte_mutations(json.dumps(obj).encode()))
    if how == "deep":
        return draw(deep_nesting())
    sample = dict(obj["samples"][0])
    sample["fields"] = {"x": draw(json_values)}
    return json.dumps({**obj, "samples": [sample]}).encode()


@pytest.mark.parametrize("n", SIZES)
def test_telemetry_batches_parse_or_raise_validation_error(n: int) -> None:
    outcomes: Counter[str] = Counter()
    started = time.monotonic()

    @sized(n)
    @given(payload=telemetry_payloads())
    @example(
        payload=b'{"campus":"fuzz-campus","edge":"e","ts":"0001-01-01T00:00:00+05:00",'
        b'"interval_s":1,"samples":[{"device":"d","kind":"edge","fields":{"a":1e999}}]}'
    )
    def check(payload: bytes) -> None:
        outcomes["_cases"] += 1
        try:
            batch = TelemetryBatch.model_validate_json(payload)
        except ValidationError:
            outcomes["ValidationError"] += 1
            return
        outcomes["parsed"] += 1
        assert TelemetryBatch.model_validate_json(batch.model_dump_json()) == batch

    check()
    report("telemetry codec (hostile)", n, started, outcomes)


@pytest.mark.parametrize("n", SIZES)
def test_telemetry_round_trips(n: int) -> None:
    outcomes: Counter[str] = Counter()
    started = time.monotonic()

    @sized(n)
    @given(obj=telemetry_objects())
    def check(obj: dict[str, object]) -> None:
        outcomes["_cases"] += 1
        batch = TelemetryBatch.model_validate_json(json.dumps(obj))
        again = TelemetryBatch.model_validate_json(batch.model_dump_json())
        assert again == batch
        assert abs(batch.ts - datetime.fromisoformat(str(obj["ts"]))) < timedelta(microseconds=1)
        outcomes["batches"] += 1

    check()
    report("telemetry codec (round trip)", n, started, outcomes)
