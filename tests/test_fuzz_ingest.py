"""Fuzzing the gateway's MQTT ingest (issue 11, bad input): anything a campus (or an attacker
holding a campus' credentials) can publish is either accepted and stored, or rejected, counted
and logged; ``Ingest.handle`` never raises for a bad message (a raise means "the store failed,
do not acknowledge", so a poison message would come back for ever).

The real ``Ingest`` runs on a real store, SQLite and PostgreSQL. Inputs: random bytes, random JSON, valid events,
edge states, device statuses and telemetry batches (then mutated field by field and byte by
byte), oversized payloads and deep nesting, on good and bad topics.

Two sizes: the default run uses a few hundred cases per target; ``-m slow`` runs 100,000.
The shared strategies and helpers here are used by the other ``test_fuzz_*`` files too.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, get_args

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from contract import topics
from contract.models import (
    MAX_PAYLOAD_BYTES,
    DeviceStatus,
    EdgeState,
    Event,
    EventKind,
    new_id,
)
from contract.telemetry import TelemetryBatch
from gateway.ingest import Ingest
from gateway.store.db import make_engine, migrate
from gateway.store.repo import Store

CI_EXAMPLES = 250
SLOW_EXAMPLES = 100_000
SIZES = [
    pytest.param(CI_EXAMPLES, id="ci"),
    pytest.param(SLOW_EXAMPLES, id="100k", marks=[pytest.mark.slow, pytest.mark.timeout(3600)]),
]


def sized(n: int) -> settings:
    return settings(
        max_examples=n,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        database=None,
    )


def report(name: str, n: int, started: float, counts: Counter[str]) -> None:
    """One line per target (shown with -s): cases run, seconds, outcomes by kind."""
    total = counts.pop("_cases", sum(counts.values()))
    took = time.monotonic() - started
    detail = ", ".join(f"{k} {v}" for k, v in counts.most_common())
    print(f"\nFUZZ {name}: {total} cases (asked {n}) in {took:.1f} s: {detail}")


# ------------------------------------------------------------------ shared strategies

json_scalars = (
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=30)
)


def _containers(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)


json_values = st.recursive(json_scalars, _containers, max_leaves=16)


@st.composite
def deep_nesting(draw: st.DrawFn) -> bytes:
    depth = draw(st.integers(1, 50_000))
    opener, closer = draw(st.sampled_from([(b"[", b"]"), (b'{"a":', b"}")]))
    return opener * depth + b"1" + closer * depth


@st.composite
def byte_mutations(draw: st.DrawFn, raw: bytes) -> bytes:
    """Up to 4 edits: overwrite, insert or delete a byte, or cut the tail."""
    out = bytearray(raw)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["set", "insert", "delete", "truncate"]))
        pos = draw(st.integers(0, max(len(out) - 1, 0)))
        if op == "set" and out:
            out[pos] = draw(st.integers(0, 255))
        elif op == "insert":
            out.insert(pos, draw(st.integers(0, 255)))
        elif op == "delete" and out:
            del out[pos]
        elif op == "truncate":
            del out[pos:]
    return bytes(out)


@st.composite
def field_mutations(draw: st.DrawFn, obj: dict[str, Any]) -> dict[str, Any]:
    """Up to 3 edits of a valid model's JSON object: drop, retype or add a member."""
    out = dict(obj)
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["drop", "set", "add"]))
        if op == "drop" and out:
            out.pop(draw(st.sampled_from(sorted(out))))
        elif op == "set" and out:
            out[draw(st.sampled_from(sorted(out)))] = draw(json_values)
        else:
            out[draw(st.text(max_size=8))] = draw(json_values)
    return out


CAMPUS = "fuzz-campus"
OTHER_CAMPUS = "other-campus"
ULID_CHARS = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
ulids = st.text(ULID_CHARS, min_size=26, max_size=26)
ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
LOWER = "abcdefghijklmnopqrstuvwxyz"


def _word(first: str, rest: str, max_size: int) -> st.SearchStrategy[str]:
    """Strings of an id pattern from one binary draw (from_regex is too slow for 100,000)."""
    return st.binary(min_size=1, max_size=max_size).map(
        lambda b: first[b[0] % len(first)] + "".join(rest[x % len(rest)] for x in b[1:])
    )


idents = _word(ALNUM, ALNUM + "_.:-", 21)  # ID_PATTERN
field_keys = _word(LOWER, LOWER + "0123456789_", 11)  # FIELD_KEY_PATTERN
zones = st.sampled_from([UTC, timezone(timedelta(hours=8)), timezone(timedelta(hours=-5))])


@st.composite
def _recent_time(draw: st.DrawFn) -> str:
    # Drawn as an offset from now, so that the data drawn does not depend on the clock.
    offset = draw(st.integers(-3600, 30))
    zone = draw(zones)
    micro = draw(st.integers(0, 999_999))
    at = datetime.now(UTC).replace(microsecond=micro) + timedelta(seconds=offset)
    return at.astimezone(zone).isoformat()


def recent_times() -> st.SearchStrategy[str]:
    return _recent_time()


any_times = st.datetimes(timezones=zones).map(datetime.isoformat) | st.sampled_from(
    ["0001-01-01T00:00:00+05:00", "9999-12-31T23:59:59-05:00", "2026-02-30T00:00:00Z"]
)
detail_values = st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=20)


@st.composite
def event_objects(draw: st.DrawFn, campus: str = CAMPUS) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "v": 1,
        "id": draw(ulids),
        "campus": campus,
        "edge": draw(idents),
        "seq": draw(st.integers(0, 2**40)),
        "ts": draw(recent_times()),
        "kind": draw(st.sampled_from(get_args(EventKind))),
        "severity": draw(st.sampled_from(["critical", "high", "medium", "low", "info"])),
        "device": draw(idents),
    }
    optional = {
        "point": idents,
        "zone": idents,
        "zone_no": st.integers(0, 999),
        "location": st.text(max_size=50),
        "geo": st.fixed_dictionaries({"lat": st.floats(-90, 90), "lon": st.floats(-180, 180)}),
        "restore": st.booleans(),
        "drill": st.booleans(),
        "text": st.text(max_size=60),
        "detail": st.dictionaries(st.text(max_size=12), detail_values, max_size=6),
    }
    for key in draw(st.lists(st.sampled_from(sorted(optional)), unique=True)):
        obj[key] = draw(optional[key])
    return obj


@st.composite
def edge_state_objects(draw: st.DrawFn, campus: str = CAMPUS) -> dict[str, Any]:
    return {
        "v": 1,
        "campus": campus,
        "edge": draw(idents),
        "online": draw(st.booleans()),
        "ts": draw(recent_times()),
        "version": draw(st.text(max_size=10)),
        "reason": draw(st.text(max_size=20)),
    }


@st.composite
def device_status_objects(draw: st.DrawFn, campus: str = CAMPUS) -> dict[str, Any]:
    return {
        "v": 1,
        "campus": campus,
        "device": draw(idents),
        "online": draw(st.booleans()),
        "ts": draw(recent_times()),
        "latency_ms": draw(st.none() | st.floats(0, 1e4)),
        "error": draw(st.none() | st.text(max_size=30)),
        "points": draw(st.dictionaries(idents, detail_values, max_size=5)),
    }


field_values = (
    st.booleans() | st.integers(-(2**53), 2**53) | st.floats(allow_nan=False, allow_infinity=False)
)


@st.composite
def telemetry_objects(draw: st.DrawFn, campus: str = CAMPUS) -> dict[str, Any]:
    sample = st.fixed_dictionaries(
        {
            "device": idents,
            "kind": st.sampled_from(["edge", "di_module", "input", "bollard", "camera"]),
            "fields": st.dictionaries(field_keys, field_values, min_size=1, max_size=5),
        }
    )
    return {
        "v": 1,
        "campus": campus,
        "edge": draw(idents),
        "ts": draw(recent_times()),
        "interval_s": draw(st.floats(0, 86400)),
        "samples": draw(st.lists(sample, min_size=1, max_size=4)),
    }


KINDS: dict[str, tuple[Callable[..., st.SearchStrategy[dict[str, Any]]], str]] = {
    "event": (event_objects, topics.event_topic(CAMPUS)),
    "edge": (edge_state_objects, topics.edge_state_topic(CAMPUS)),
    "telemetry": (telemetry_objects, topics.telemetry_topic(CAMPUS)),
}


@st.composite
def valid_messages(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    kind = draw(st.sampled_from([*KINDS, "device"]))
    if kind == "device":
        obj = draw(device_status_objects())
        return topics.device_status_topic(CAMPUS, obj["device"]), obj
    strategy, topic = KINDS[kind]
    return topic, draw(strategy())


bad_topics = st.sampled_from(
    [
        topics.event_topic(OTHER_CAMPUS),
        topics.event_topic(CAMPUS).replace("/up/", "/down/"),
        f"cg/v1/{CAMPUS}/up/nonsense",
        f"cg/v1/{CAMPUS}/up/device/",
        f"cg/v1/{CAMPUS}/up/device/a/b",
        "cg/v1",
        "",
        f"cg/v1/{CAMPUS}\n/up/event",
    ]
) | st.text(max_size=40)
good_topics = st.sampled_from(
    [
        topics.event_topic(CAMPUS),
        topics.edge_state_topic(CAMPUS),
        topics.telemetry_topic(CAMPUS),
        topics.evidence_topic(CAMPUS),
        topics.device_status_topic(CAMPUS, "dev-1"),
    ]
)


@st.composite
def hostile_messages(draw: st.DrawFn) -> tuple[str, bytes]:
    how = draw(
        st.sampled_from(
            ["bytes", "json", "mutated-fields", "mutated-bytes", "oversized", "deep", "bad-topic"]
        )
    )
    topic, obj = draw(valid_messages())
    if how == "bytes":
        return topic, draw(st.binary(max_size=300))
    if how == "json":
        return topic, json.dumps(draw(json_values)).encode()
    if how == "mutated-fields":
        return topic, json.dumps(draw(field_mutations(obj))).encode()
    if how == "mutated-bytes":
        return topic, draw(byte_mutations(json.dumps(obj).encode()))
    if how == "oversized":
        size = draw(st.sampled_from([MAX_PAYLOAD_BYTES + 1, 3 * 1024 * 1024]))
        return topic, json.dumps({**obj, "text": "x" * size}).encode()
    if how == "deep":
        return topic, draw(deep_nesting())
    return draw(bad_topics), json.dumps(obj).encode()


# ------------------------------------------------------------------ the target


class IngestRig:
    """A real Ingest on a real store (SQLite, PostgreSQL), driven synchronously from Hypothesis."""

    def __init__(self, runner: asyncio.Runner, db_url: str) -> None:
        self.runner = runner
        self.engine = make_engine(db_url)
        runner.run(migrate(self.engine))
        self.store = Store(self.engine)
        self.dispatched = 0
        self.ingest = Ingest(self.store, {CAMPUS}, [], "fuzz-worker", self._dispatch)

    def _dispatch(self, _job: object) -> None:
        self.dispatched += 1

    def handle(self, topic: str, payload: bytes) -> tuple[str, tuple[str, str] | None]:
        """Outcome: ``accepted``, ``duplicate``, ``cleared`` or ``rejected: <reason>``."""
        ing = self.ingest
        rejects, accepted, dups = (
            Counter(ing.reject.counts),
            sum(ing.accepted.values()),
            ing.duplicates,
        )
        got = self.runner.run(ing.handle(topic, payload))
        new_rejects = ing.reject.counts - rejects
        grew = sum(ing.accepted.values()) - accepted
        assert sum(new_rejects.values()) + grew <= 1, "one message, one outcome"
        if new_rejects:
            assert got is None
            return f"rejected: {next(iter(new_rejects))}", got
        if grew:
            return ("duplicate" if ing.duplicates > dups else "accepted"), got
        assert payload == b"", f"{topic} {payload[:80]!r} neither accepted nor rejected"
        return "cleared", got

    def close(self) -> None:
        self.runner.run(self.engine.dispose())


@pytest.fixture
def rig(db_url: str) -> Any:
    """On both databases: PostgreSQL refuses what SQLite takes (a NUL in a text column made a
    valid alarm fail at every delivery; drawn text has NULs)."""
    with asyncio.Runner() as runner:
        r = IngestRig(runner, db_url)
        yield r
        r.close()


@pytest.mark.parametrize("n", SIZES)
def test_hostile_payloads_are_rejected_and_counted_never_raised(rig: IngestRig, n: int) -> None:
    outcomes: Counter[str] = Counter()
    started = time.monotonic()

    @sized(n)
    @given(message=hostile_messages())
    # Timestamps a datetime cannot hold once moved to UTC (OverflowError escaped pydantic).
    @example(
        message=(
            topics.event_topic(CAMPUS),
            b'{"v":1,"id":"01KB0000000000000000000000",'
            b'"campus":"fuzz-campus","edge":"e","seq":1,"ts":"0001-01-01T00:00:00+05:00",'
            b'"kind":"panic","severity":"high","device":"d"}',
        )
    )
    @example(
        message=(
            topics.edge_state_topic(CAMPUS),
            b'{"campus":"fuzz-campus","edge":"e","online":true,"ts":"9999-12-31T23:59:59-05:00"}',
        )
    )
    @example(
        message=(
            topics.telemetry_topic(CAMPUS),
            b'{"campus":"fuzz-campus","edge":"e",'
            b'"ts":"0001-01-01T00:00:00+05:00","interval_s":1,'
            b'"samples":[{"device":"d","kind":"edge","fields":{"a":1}}]}',
        )
    )
    @example(message=(topics.event_topic(CAMPUS), b"[" * 100_000 + b"]" * 100_000))
    def check(message: tuple[str, bytes]) -> None:
        outcomes["_cases"] += 1
        topic, payload = message
        outcome, _ = rig.handle(topic, payload)
        outcomes[outcome] += 1

    check()
    report("gateway ingest (hostile)", n, started, outcomes)
    assert sum(v for k, v in outcomes.items() if k.startswith("rejected")) > 0
    assert sum(rig.ingest.reject.counts.values()) == sum(
        v for k, v in outcomes.items() if k.startswith("rejected")
    )


@pytest.mark.parametrize("n", SIZES)
def test_valid_messages_are_accepted_and_stored(rig: IngestRig, n: int) -> None:
    outcomes: Counter[str] = Counter()
    started = time.monotonic()
    models: dict[str, type[BaseModel]] = {
        "event": Event,
        "edge": EdgeState,
        "device": DeviceStatus,
        "telemetry": TelemetryBatch,
    }

    @sized(max(n // 10, CI_EXAMPLES) if n > CI_EXAMPLES else n)
    @given(message=valid_messages())
    def check(message: tuple[str, dict[str, Any]]) -> None:
        outcomes["_cases"] += 1
        topic, obj = message
        if "id" in obj:
            obj = {**obj, "id": new_id()}  # drawn ids repeat across cases; a repeat is a duplicate
        kind = topics.parse_topic(topic)
        assert kind is not None
        model = models[kind.kind]
        payload = json.dumps(obj).encode()
        # The wire form round-trips: what the edge would publish parses back to the same model.
        parsed = model.model_validate_json(payload)
        assert model.model_validate_json(parsed.model_dump_json()) == parsed
        outcome, got = rig.handle(topic, payload)
        outcomes[outcome] += 1
        assert outcome == "accepted", outcome
        if isinstance(parsed, Event):
            assert got == (CAMPUS, parsed.id)
            stored = rig.runner.run(rig.store.event(parsed.id))
            assert stored is not None and stored.id == parsed.id and stored.kind == parsed.kind
            again, got2 = rig.handle(topic, payload)
            assert again == "duplicate" and got2 == got
            outcomes["repeat"] += 1

    check()
    report("gateway ingest (valid)", n, started, outcomes)
