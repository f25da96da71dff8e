"""Fuzzing the Modbus decoders (issue 11, bad input): what a DI module or a bollard PLC answers
is decoded into a reading or refused with the documented error, never anything else; values a
controller could really send decode to what they mean.

* bollard status (``decode_reading``) for every bollard profile and bollard index: any register
  and bit values, in range or not, complete or not -> a reading, ``ValueError`` (a value out
  of range) or ``KeyError`` (a point not read); encoded readings decode back to themselves;
* DI modules: packed DI words, 32-bit counters in both word orders, counter wrap and reset,
  analog loop values through every built-in profile's scaling into the EOL schemes;
* the Modbus TCP reply check (``tcp_response_problem``) on any bytes: ``None`` or a reason,
  and ``None`` for every prefix of a valid reply.

Two sizes: a few hundred cases per target by default; ``-m slow`` runs 100,000.
"""

from __future__ import annotations

import math
import struct
import time
from collections import Counter
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from drivers.modbus.bollard import decode_reading, plan_reads_for
from drivers.modbus.bollard_profile import (
    AnalogSignal,
    BitSignal,
    CounterSignal,
    list_bollard_profiles,
    load_bollard_profile,
)
from drivers.modbus.codec import (
    BIT_TABLES,
    EOL_SCHEMES,
    EolState,
    Table,
    bits_from_word,
    counter_from_words,
    counter_increase,
    counter_to_words,
    resistance_from_voltage,
    tcp_response_problem,
    word_from_bits,
)
from drivers.modbus.profile import list_profiles, load_profile
from tests.test_fuzz_ingest import SIZES, report, sized

BOLLARD_PROFILES = [load_bollard_profile(name) for name in list_bollard_profiles()]
DI_PROFILES = [load_profile(name) for name in list_profiles()]
ANALOG = [p.capabilities.analog for p in DI_PROFILES if p.capabilities.analog is not None]
assert BOLLARD_PROFILES and ANALOG


def _addresses(profile: Any, index: int) -> list[tuple[Table, int]]:
    return [
        (table, address)
        for table, span in plan_reads_for(profile, [index])
        for address in range(span.address, span.end)
    ]


@st.composite
def raw_reads(draw: st.DrawFn) -> tuple[Any, int, dict[tuple[Table, int], int], str]:
    """A profile, a bollard and what the controller answered, well formed or not."""
    profile = draw(st.sampled_from(BOLLARD_PROFILES))
    index = draw(st.integers(0, profile.max_bollards - 1))
    addrs = _addresses(profile, index)
    how = draw(st.sampled_from(["valid", "valid", "out-of-range", "missing", "any-int"]))
    values: dict[tuple[Table, int], int] = {}
    for table, address in addrs:
        top = 1 if table in BIT_TABLES else 0xFFFF
        values[(table, address)] = draw(st.integers(0, top))
    if how == "out-of-range":
        key = draw(st.sampled_from(addrs))
        top = 1 if key[0] in BIT_TABLES else 0xFFFF
        values[key] = draw(st.integers(-(2**40), -1) | st.integers(top + 1, 2**40))
    elif how == "missing":
        del values[draw(st.sampled_from(addrs))]
    elif how == "any-int":
        for key in draw(st.lists(st.sampled_from(addrs), max_size=4)):
            values[key] = draw(st.integers(-(2**64), 2**64))
    return profile, index, values, how


@pytest.mark.parametrize("n", SIZES)
def test_bollard_status_decodes_or_refuses_cleanly(n: int) -> None:
    outcomes: Counter[str] = Counter()
    started = time.monotonic()

    @sized(n)
    @given(read=raw_reads())
    def check(read: tuple[Any, int, dict[tuple[Table, int], int], str]) -> None:
        outcomes["_cases"] += 1
        profile, index, values, how = read
        try:
            reading = decode_reading(profile, index, values, monotonic=1.0, latency_s=0.01)
        except KeyError:
            outcomes["refused: point not read"] += 1
            assert how in ("missing",)
            return
        except ValueError:
            outcomes["refused: value out of range"] += 1
            assert how in ("out-of-range", "any-int")
            return
        outcomes["decoded"] += 1
        for name, point, _width in profile.read_points():
            if isinstance(point, BitSignal):
                assert isinstance(getattr(reading, name), bool)
            elif isinstance(point, AnalogSignal):
                assert math.isfinite(getattr(reading, name))
            else:
                assert 0 <= getattr(reading, name) <= 0xFFFF_FFFF

    check()
    report("modbus bollard status", n, started, outcomes)


@st.composite
def wanted_readings(draw: st.DrawFn) -> tuple[Any, int, dict[str, Any]]:
    profile = draw(st.sampled_from(BOLLARD_PROFILES))
    index = draw(st.integers(0, profile.max_bollards - 1))
    want: dict[str, Any] = {}
    for name, point, _width in profile.read_points():
        if isinstance(point, BitSignal):
            want[name] = draw(st.booleans())
        elif isinstance(point, AnalogSignal):
            want[name] = draw(
                st.integers(-0x8000, 0x7FFF) if point.signed else st.integers(0, 0xFFFF)
            )
        elif isinstance(point, CounterSignal) and point.words == 2:
            want[name] = draw(st.integers(0, 0xFFFF_FFFF))
        else:
            want[name] = draw(st.integers(0, 0xFFFF))
    return profile, index, want


@pytest.mark.parametrize("n", SIZES)
def test_a_bollard_state_written_to_registers_reads_back(n: int) -> None:
    outcomes: Counter[str] = Counter()
    started = time.monotonic()

    @sized(n)
    @given(case=wanted_readings())
    def check(case: tuple[Any, int, dict[str, Any]]) -> None:
        outcomes["_cases"] += 1
        profile, index, want = case
        values = dict.fromkeys(_addresses(profile, index), 0)
        for name, point, _width in profile.read_points():
            key = (point.wire_table, point.address_of(index))
            if isinstance(point, BitSignal):
                bit = int(want[name] != point.invert)
                if point.bit is None:
                    values[key] = bit
                else:
                    values[key] = values[key] & ~(1 << point.bit) | bit << point.bit
            elif isinstance(point, AnalogSignal):
                values[key] = want[name] & 0xFFFF
            elif isinstance(point, CounterSignal) and point.words == 2:
                assert point.word_order is not None
                first, second = counter_to_words(want[name], point.word_order)
                values[key], values[(key[0], key[1] + 1)] = first, second
            else:
                values[key] = want[name]
        reading = decode_reading(profile, index, values)
        for name, point, _width in profile.read_points():
            got = getattr(reading, name)
            if isinstance(point, AnalogSignal):
                assert got == pytest.approx(point.offset + want[name] * point.scale), name
            else:
                assert got == want[name], name
        outcomes["read back"] += 1

    check()
    report("modbus bollard round trip", n, started, outcomes)


@pytest.mark.parametrize("n", SIZES)
def test_di_module_values_decode_or_refuse_cleanly(n: int) -> None:
    outcomes: Counter[str] = Counter()
    started = time.monotonic()
    any_word = st.integers(0, 0xFFFF) | st.integers(-(2**33), 2**33)

    @sized(n)
    @given(
        word=any_word,
        channels=st.integers(-2, 20),
        words=st.lists(any_word, max_size=3),
        order=st.sampled_from(["low_first", "high_first"]),
        previous=st.integers(0, 0xFFFF_FFFF),
        current=st.integers(0, 0xFFFF_FFFF),
        raw=st.integers(0, 0xFFFF),
        supply=st.floats(0.1, 100),
        series=st.floats(1, 1e6),
        hysteresis=st.floats(0, 0.99),
        previous_state=st.none() | st.sampled_from(list(EolState)),
    )
    @example(
        word=0xFFFF, channels=16, words=[0, 0], order="low_first", previous=5, current=4,
        raw=0xFFFF, supply=10.0, series=1000.0, hysteresis=0.0, previous_state=None,
    )  # fmt: skip
    def check(
        word: int,
        channels: int,
        words: list[int],
        order: Any,
        previous: int,
        current: int,
        raw: int,
        supply: float,
        series: float,
        hysteresis: float,
        previous_state: EolState | None,
    ) -> None:
        outcomes["_cases"] += 1
        # Packed DI word: channel i is bit i, and back.
        try:
            bits = bits_from_word(word, channels)
        except ValueError:
            outcomes["packed word refused"] += 1
            assert not (0 <= word <= 0xFFFF and 0 <= channels <= 16)
        else:
            assert word_from_bits(bits) == word & ((1 << channels) - 1)
            outcomes["packed word"] += 1
        # A 32-bit counter from two registers, and back.
        try:
            value = counter_from_words(words, order)
        except ValueError:
            outcomes["counter refused"] += 1
            assert len(words) != 2 or not all(0 <= w <= 0xFFFF for w in words)
        else:
            assert list(counter_to_words(value, order)) == words
            outcomes["counter"] += 1
        edges, reset = counter_increase(previous, current)
        assert 0 <= edges <= 0xFFFF_FFFF
        assert edges == (current if reset else (current - previous) % 2**32)
        # Analog loop values through each built-in profile's scaling into every EOL scheme.
        for analog in ANALOG:
            units = analog.to_units(raw)
            ohms = (
                math.inf
                if math.isinf(units)
                else resistance_from_voltage(units, supply, series)
                if analog.quantity == "voltage"
                else units
            )
            for scheme in EOL_SCHEMES.values():
                state = scheme.classify(ohms, previous_state, hysteresis)
                assert isinstance(state, EolState)
                assert scheme.is_violated(state) in (True, False, None)
                outcomes[f"eol {state.value}"] += 1

    check()
    report("modbus DI values", n, started, outcomes)


def _request(tid: int, unit: int, fc: int, address: int, count: int) -> bytes:
    return struct.pack(">HHHBBHH", tid, 0, 6, unit, fc, address, count)


def _reply(tid: int, unit: int, fc: int, count: int, data: bytes) -> bytes:
    size = (count + 7) // 8 if fc in (1, 2) else 2 * count
    body = data[:size].ljust(size, b"\0")
    return struct.pack(">HHHBBB", tid, 0, 3 + size, unit, fc, size) + body


@pytest.mark.parametrize("n", SIZES)
def test_tcp_reply_check_names_garbage_and_passes_real_replies(n: int) -> None:
    outcomes: Counter[str] = Counter()
    started = time.monotonic()

    @sized(n)
    @given(
        tid=st.integers(0, 0xFFFF),
        unit=st.integers(0, 255),
        fc=st.sampled_from([1, 2, 3, 4]),
        address=st.integers(0, 0xFFFF),
        count=st.integers(1, 125),
        data=st.binary(max_size=250),
        junk=st.binary(max_size=300),
        cut=st.integers(0, 300),
    )
    def check(
        tid: int, unit: int, fc: int, address: int, count: int, data: bytes, junk: bytes, cut: int
    ) -> None:
        outcomes["_cases"] += 1
        request = _request(tid, unit, fc, address, count)
        reply = _reply(tid, unit, fc, count, data)
        for i in range(0, len(reply) + 1, max(1, len(reply) // 8)):
            assert tcp_response_problem(request, reply[:i]) is None, (i, reply)
        assert tcp_response_problem(request, reply) is None
        problem = tcp_response_problem(request, junk)
        assert problem is None or isinstance(problem, str)
        mixed = reply[: cut % (len(reply) + 1)] + junk
        problem = tcp_response_problem(request, mixed)
        outcomes["garbage named" if problem else "plausible so far"] += 1

    check()
    report("modbus tcp reply check", n, started, outcomes)
