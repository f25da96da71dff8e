"""The line-protocol encoder: property tests with a small parser written here, the batch
splitter, the refusals, and a round trip through a real InfluxDB 1.6."""

from __future__ import annotations

import itertools
import math
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from gateway.telemetry.points import (
    INT64_MAX,
    INT64_MIN,
    MAX_TIME_NS,
    MIN_TIME_NS,
    Point,
    PointError,
    encode_point,
    encode_points,
    split_lines,
)
from tests.influx import Influx

# --- a parser for what the encoder writes (written from the line-protocol spec) ------------


def _read_name(line: str, i: int, stops: str) -> tuple[str, int]:
    out = []
    while i < len(line) and line[i] not in stops:
        if line[i] == "\\":
            i += 1
        out.append(line[i])
        i += 1
    return "".join(out), i


def _read_value(line: str, i: int) -> tuple[Any, int]:
    if line[i] == '"':
        i += 1
        out = []
        while line[i] != '"':
            if line[i] == "\\":
                i += 1
            out.append(line[i])
            i += 1
        return "".join(out), i + 1
    raw, i = _read_name(line, i, ", ")
    if raw in ("true", "false"):
        return raw == "true", i
    if raw.endswith("i"):
        return int(raw[:-1]), i
    return float(raw), i


def parse_line(line: str) -> Point:
    measurement, i = _read_name(line, 0, ", ")
    tags: dict[str, str] = {}
    while line[i] == ",":
        key, i = _read_name(line, i + 1, "=")
        value, i = _read_name(line, i + 1, ", ")
        tags[key] = value
    assert line[i] == " "
    fields: dict[str, Any] = {}
    i += 1
    while True:
        key, i = _read_name(line, i, "=")
        value, i = _read_value(line, i + 1)
        fields[key] = value
        if line[i] == " ":
            break
        assert line[i] == ","
        i += 1
    return Point(measurement, fields, int(line[i + 1 :]), tags)


# --- strategies -----------------------------------------------------------------------------

_name_chars = st.characters(
    exclude_categories=["Cc", "Cs"], exclude_characters="\\\x7f", max_codepoint=0x2FFF
)
names = st.text(_name_chars, min_size=1, max_size=12).filter(lambda s: s != "time")
measurements = names.filter(lambda s: not s.startswith("#"))
floats = st.floats(allow_nan=False, allow_infinity=False)
ints = st.integers(INT64_MIN, INT64_MAX)
strings = st.text(st.characters(exclude_categories=["Cs"]), max_size=40)
field_values = st.one_of(floats, ints, st.booleans(), strings)
points = st.builds(
    Point,
    measurement=measurements,
    fields=st.dictionaries(names, field_values, min_size=1, max_size=4),
    time_ns=st.integers(MIN_TIME_NS, MAX_TIME_NS),
    tags=st.dictionaries(names, names, max_size=4),
)


def same_value(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    return type(a) is type(b) and a == b


@given(points)
def test_encode_then_parse_gives_the_point_back(p: Point) -> None:
    line = encode_point(p)
    assert "\n" not in line.replace('\\"', "").split('"', 1)[0]  # no newline before a string
    back = parse_line(line)
    assert back.measurement == p.measurement
    assert back.tags == dict(p.tags)
    assert back.time_ns == p.time_ns
    assert back.fields.keys() == p.fields.keys()
    for key, value in p.fields.items():
        assert same_value(back.fields[key], value), (key, value, back.fields[key])


@given(st.lists(points, min_size=1, max_size=8))
def test_split_lines_recovers_each_line_of_a_body(ps: list[Point]) -> None:
    body = encode_points(ps)
    assert split_lines(body) == [encode_point(p).encode() for p in ps]


def test_escaping_and_types_exactly() -> None:
    p = Point(
        "cpu load,x",
        {"f 1": 1.5, "n=": 7, "ok": True, "s": 'say "hi"\\ \nnext', "neg": -0.0},
        1_700_000_000_123_456_789,
        {"site,a": "b=c d", "empty": ""},
    )
    assert encode_point(p) == (
        "cpu\\ load\\,x,site\\,a=b\\=c\\ d "
        'f\\ 1=1.5,n\\==7i,ok=true,s="say \\"hi\\"\\\\ \nnext",neg=-0.0 '
        "1700000000123456789"
    )


@pytest.mark.parametrize(
    ("point", "message"),
    [
        (Point("m", {"x": math.nan}, 1), "NaN or infinity"),
        (Point("m", {"x": math.inf}, 1), "NaN or infinity"),
        (Point("m", {"x": -math.inf}, 1), "NaN or infinity"),
        (Point("m", {}, 1), "at least one field"),
        (Point("", {"x": 1}, 1), "empty measurement"),
        (Point("m", {"": 1}, 1), "empty field key"),
        (Point("m", {"x": 1}, 1, {"": "a"}), "empty tag key"),
        (Point("m", {"time": 1}, 1), "'time' cannot be a field key"),
        (Point("m", {"x": 1}, 1, {"time": "a"}), "'time' cannot be a tag key"),
        (Point("#m", {"x": 1}, 1), "may not start with '#'"),
        (Point("m\\", {"x": 1}, 1), "backslash"),
        (Point("m", {"x": 1}, 1, {"t": "a\nb"}), "control character"),
        (Point("m", {"x": 2**63}, 1), "outside int64"),
        (Point("m", {"x": [1]}, 1), "allowed: float, int, bool, str"),  # type: ignore[dict-item]
        (Point("m", {"x": "a" * 70000}, 1), "longer than 64 KiB"),
        (Point("m", {"x": 1}, 2**63), "outside InfluxDB's range"),
        (Point("m", {"x": 1}, 1.5), "integer of nanoseconds"),  # type: ignore[arg-type]
    ],
)
def test_what_line_protocol_cannot_carry_is_refused_clearly(point: Point, message: str) -> None:
    with pytest.raises(PointError, match=message.replace("(", r"\(").replace(")", r"\)")):
        encode_point(point)


# --- through InfluxDB itself ----------------------------------------------------------------


@pytest.fixture(scope="module")
def influx_module(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Influx]:
    server = Influx(tmp_path_factory.mktemp("influx-points"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


_dbs = itertools.count(1)


def _consistent(ps: list[Point]) -> list[Point]:
    """InfluxDB keeps one type per field and measurement, and a series with the same time is
    one point: give each point its own time, keep the first type of each field."""
    types: dict[tuple[str, str], type] = {}
    out = []
    for n, p in enumerate(ps):
        if set(p.tags) & set(p.fields):
            continue  # a tag and a field of one name are ambiguous in a query answer
        ok = all(
            types.setdefault((p.measurement, k), type(v)) is type(v) for k, v in p.fields.items()
        )
        if ok:
            out.append(Point(p.measurement, p.fields, 1_600_000_000_000_000_000 + n, p.tags))
    return out


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(points, min_size=1, max_size=10))
def test_round_trip_through_influxdb(influx_module: Influx, ps: list[Point]) -> None:
    ps = _consistent(ps)
    assume(ps)
    db = influx_module.create_database(f"rt{next(_dbs)}")
    req = urllib.request.Request(
        f"{influx_module.url}/write?db={db}&precision=ns", data=encode_points(ps), method="POST"
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 204
    got: dict[tuple[str, str, int], dict[str, Any]] = {}
    for series in influx_module.query("SELECT * FROM /.*/ GROUP BY *", db=db):
        for values in series["values"]:
            row = dict(zip(series["columns"], values, strict=True))
            t = row.pop("time")
            tags = {k: v for k, v in (series.get("tags") or {}).items() if v != ""}
            key = (series["name"], repr(sorted(tags.items())), t)
            got[key] = {k: v for k, v in row.items() if v is not None}
    assert len(got) == len(ps)
    for p in ps:
        tags = {k: v for k, v in p.tags.items() if v != ""}
        row = got[(p.measurement, repr(sorted(tags.items())), p.time_ns)]
        assert row.keys() == p.fields.keys()
        for k, v in p.fields.items():
            if isinstance(v, float):
                assert float(row[k]) == v  # JSON writes 1.0 as 1
            else:
                assert row[k] == v and type(row[k]) is type(v)
    influx_module.drop_database(db)
