"""Telemetry points and a pure InfluxDB line-protocol encoder.

One point is one line::

    measurement[,tag=value...] field=value[,field=value...] timestamp_ns

Escaping (the rules InfluxDB 1.x and 2.x agree on): in the measurement a comma and a space get a
backslash; in tag keys, tag values and field keys a comma, an equals sign and a space; in string
field values a double quote and a backslash. Integers are written ``123i``, booleans ``true`` /
``false``, floats in Python's shortest round-trip form (``repr``), so a float reads back
bit-identical.

What line protocol cannot carry is refused with :class:`PointError` naming the point and the
problem, never silently altered: NaN and infinities, a point without fields, an empty
measurement or key, ``time`` as a tag or field key (InfluxDB rejects it), control characters or
a backslash in a name (1.x and 2.x read a backslash in a name differently), a measurement
starting with ``#`` (a comment line), integers outside int64, strings longer than 64 KiB, and
timestamps outside InfluxDB's range. A tag whose value is the empty string is left out (an empty
tag and a missing tag are the same series in InfluxDB).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

FieldValue = float | int | bool | str

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
# InfluxDB's own bounds for a timestamp (models.MinNanoTime / MaxNanoTime).
MIN_TIME_NS = INT64_MIN + 2
MAX_TIME_NS = INT64_MAX - 1
MAX_STRING_BYTES = 64 * 1024 - 1

_BAD_NAME = re.compile(r"[\x00-\x1f\x7f\\\ud800-\udfff]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")
_MEASUREMENT_ESC = str.maketrans({",": "\\,", " ": "\\ "})
_KEY_ESC = str.maketrans({",": "\\,", "=": "\\=", " ": "\\ "})
_STRING_ESC = str.maketrans({"\\": "\\\\", '"': '\\"'})


class PointError(ValueError):
    """This point cannot be written as line protocol; the message says why."""


@dataclass(frozen=True, slots=True)
class Point:
    """One telemetry point: a measurement, tags, at least one field, a time in ns (UTC)."""

    measurement: str
    fields: Mapping[str, FieldValue]
    time_ns: int
    tags: Mapping[str, str] = field(default_factory=dict)


def _check_name(what: str, name: str, measurement: str) -> None:
    if not isinstance(name, str):
        raise PointError(f"{measurement!r}: {what} must be a string, got {name!r}")
    if not name:
        raise PointError(f"{measurement!r}: empty {what}")
    if _BAD_NAME.search(name):
        raise PointError(
            f"{measurement!r}: {what} {name!r} contains a control character, a backslash or "
            "invalid Unicode, which line protocol cannot carry"
        )


def _field_value(key: str, value: FieldValue, measurement: str) -> str:
    # bool first: it is an int subclass.
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        if not INT64_MIN <= value <= INT64_MAX:
            raise PointError(f"{measurement!r}: field {key!r}: integer {value} is outside int64")
        return f"{value}i"
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            raise PointError(
                f"{measurement!r}: field {key!r} is {value}; InfluxDB cannot store NaN or infinity"
            )
        return repr(value)
    if isinstance(value, str):
        if _SURROGATE.search(value):
            raise PointError(f"{measurement!r}: field {key!r}: string is not valid Unicode")
        if len(value.encode("utf-8")) > MAX_STRING_BYTES:
            raise PointError(f"{measurement!r}: field {key!r}: string longer than 64 KiB")
        return '"' + value.translate(_STRING_ESC) + '"'
    raise PointError(
        f"{measurement!r}: field {key!r} has type {type(value).__name__}; "
        "allowed: float, int, bool, str"
    )


# Validated, escaped names, memoised: telemetry repeats the same few names and tag values
# millions of times. Bounded: each is emptied when it grows past _CACHE_MAX entries.
_CACHE_MAX = 50_000
_MEASUREMENTS: dict[str, str] = {}
_KEYS: dict[str, str] = {}  # tag keys and field keys
_TAG_VALUES: dict[str, str] = {}


def _remember(cache: dict[str, str], name: str, escaped: str) -> str:
    if len(cache) >= _CACHE_MAX:
        cache.clear()
    cache[name] = escaped
    return escaped


def _measurement(m: str) -> str:
    _check_name("measurement", m, m)
    if m.startswith("#"):
        raise PointError(f"{m!r}: a measurement may not start with '#' (a comment line)")
    return _remember(_MEASUREMENTS, m, m.translate(_MEASUREMENT_ESC))


def _key(what: str, key: str, m: str) -> str:
    _check_name(what, key, m)
    if key == "time":
        raise PointError(f"{m!r}: 'time' cannot be a {what}")
    return _remember(_KEYS, key, key.translate(_KEY_ESC))


def _tag_value(key: str, value: object, m: str) -> str:
    if not isinstance(value, str):
        raise PointError(f"{m!r}: tag {key!r} must be a string, got {value!r}")
    _check_name(f"tag {key!r} value", value, m)
    return _remember(_TAG_VALUES, value, value.translate(_KEY_ESC))


def encode_point(point: Point) -> str:
    """One line of line protocol (no trailing newline) for ``point``; raises PointError."""
    m = point.measurement
    head = _MEASUREMENTS.get(m) or _measurement(m)
    tags = point.tags
    if tags:
        parts = [head]
        for key in sorted(tags):
            value = tags[key]
            ekey = _KEYS.get(key) or _key("tag key", key, m)
            if value == "":
                continue
            evalue = _TAG_VALUES.get(value) if type(value) is str else None
            parts.append(f",{ekey}={evalue or _tag_value(key, value, m)}")
        head = "".join(parts)
    fields = point.fields
    if not fields:
        raise PointError(f"{m!r}: a point needs at least one field")
    out = []
    for key, fvalue in fields.items():
        ekey = _KEYS.get(key) or _key("field key", key, m)
        if type(fvalue) is float and fvalue - fvalue == 0.0:  # not NaN, not infinite
            out.append(f"{ekey}={fvalue!r}")
        elif type(fvalue) is int and INT64_MIN <= fvalue <= INT64_MAX:
            out.append(f"{ekey}={fvalue}i")
        else:
            out.append(f"{ekey}={_field_value(key, fvalue, m)}")
    t = point.time_ns
    if type(t) is not int or not MIN_TIME_NS <= t <= MAX_TIME_NS:
        if isinstance(t, bool) or not isinstance(t, int):
            raise PointError(f"{m!r}: time must be an integer of nanoseconds, got {t!r}")
        raise PointError(f"{m!r}: time {t} ns is outside InfluxDB's range")
    return f"{head} {','.join(out)} {t}"


def encode_points(points: Iterable[Point]) -> bytes:
    """Several points as one line-protocol body (UTF-8, lines joined by newlines)."""
    return "\n".join(encode_point(p) for p in points).encode("utf-8")


def split_lines(body: bytes) -> list[bytes]:
    """Split a body made by :func:`encode_points` back into its lines.

    Not simply on ``\\n``: a string field value may contain a newline. Outside string values
    every backslash in our output escapes the next character (names may not contain one), and
    a string value starts at ``="`` in the field section and ends at its unescaped ``"``.
    """
    lines: list[bytes] = []
    n = len(body)
    start = 0
    i = 0
    while start < n:
        # series key: up to the first unescaped space
        i = start
        while i < n and body[i] != 0x20:
            if body[i] == 0x0A:
                break
            i += 2 if body[i] == 0x5C else 1
        if i < n and body[i] == 0x20:
            i += 1
        # field section: key=value[,key=value] up to an unescaped space or newline
        while i < n and body[i] != 0x0A:
            c = body[i]
            if c == 0x5C:
                i += 2
            elif c == 0x3D and i + 1 < n and body[i + 1] == 0x22:  # ="
                i += 2
                while i < n and body[i] != 0x22:
                    i += 2 if body[i] == 0x5C else 1
                i += 1
            elif c == 0x20:
                # timestamp: up to the newline
                while i < n and body[i] != 0x0A:
                    i += 1
            else:
                i += 1
        end = min(i, n)
        if end > start:
            lines.append(body[start:end])
        start = end + 1
    return lines
