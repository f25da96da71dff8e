"""Pure codec: counters, words, addresses, EOL bands, debouncing, reply checks. No I/O."""

from __future__ import annotations

import itertools
import math
import struct

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from drivers.modbus.codec import (
    EOL_SCHEMES,
    Debouncer,
    EolScheme,
    EolState,
    ReadSpan,
    bits_from_word,
    counter_delta,
    counter_from_words,
    counter_increase,
    counter_to_words,
    eol_scheme,
    modicon_to_wire,
    plan_reads,
    resistance_from_voltage,
    span_values,
    tcp_response_problem,
    voltage_from_resistance,
    wire_to_modicon,
    word_from_bits,
)

u32 = st.integers(min_value=0, max_value=0xFFFF_FFFF)
u16 = st.integers(min_value=0, max_value=0xFFFF)
orders = st.sampled_from(["low_first", "high_first"])


# --------------------------------------------------------------------------- counters


@given(value=u32, order=orders)
def test_counter_round_trip(value, order):
    assert counter_from_words(counter_to_words(value, order), order) == value


@given(words=st.tuples(u16, u16), order=orders)
def test_words_round_trip(words, order):
    assert counter_to_words(counter_from_words(words, order), order) == words


def test_counter_word_orders_match_the_manuals():
    # ADAM-6050: 40001+2ch low word first; Moxa: 30017+2ch high word, 30018+2ch low word.
    assert counter_to_words(0x0001_2345, "low_first") == (0x2345, 0x0001)
    assert counter_to_words(0x0001_2345, "high_first") == (0x0001, 0x2345)
    assert counter_from_words([0x2345, 0x0001], "low_first") == 0x12345


@given(start=u32, edges=st.integers(min_value=0, max_value=0xFFFF_FFFF))
def test_counter_delta_counts_across_wrap(start, edges):
    assert counter_delta(start, (start + edges) & 0xFFFF_FFFF) == edges


def test_counter_delta_examples():
    assert counter_delta(0xFFFF_FFFF, 0) == 1
    assert counter_delta(0xFFFF_FFF0, 0x10) == 0x20
    assert counter_delta(5, 5) == 0


@given(start=u32, edges=st.integers(min_value=0, max_value=2**31 - 1))
def test_counter_increase_is_delta_for_plausible_counts(start, edges):
    assert counter_increase(start, (start + edges) & 0xFFFF_FFFF) == (edges, False)


def test_counter_increase_detects_a_reset():
    # Module power-cycled: counter went from 500 back to 3 -> 3 presses since.
    assert counter_increase(500, 3) == (3, True)


@pytest.mark.parametrize(
    "bad", [[1], [1, 2, 3], [0x10000, 0], [-1, 0]], ids=["one", "three", "big", "neg"]
)
def test_counter_from_words_rejects_bad_input(bad):
    with pytest.raises(ValueError, match=r"register|registers"):
        counter_from_words(bad, "low_first")


# --------------------------------------------------------------------------- bits and words


@given(word=u16)
def test_packed_word_round_trip(word):
    assert word_from_bits(bits_from_word(word)) == word


@given(bits=st.lists(st.booleans(), max_size=16))
def test_bits_round_trip(bits):
    assert bits_from_word(word_from_bits(bits), len(bits)) == bits


def test_packed_word_channel_zero_is_bit_zero():
    # Moxa 30049: channel 0 in the least significant bit.
    assert bits_from_word(0b101, 4) == [True, False, True, False]


# --------------------------------------------------------------------------- addresses


@pytest.mark.parametrize(
    ("point", "table", "address"),
    [
        ("00001", "coil", 0),
        ("00036", "coil", 35),
        ("10001", "discrete_input", 0),
        ("11001", "discrete_input", 1000),
        ("30049", "input_register", 48),
        ("40001", "holding_register", 0),
        ("400001", "holding_register", 0),
        ("465536", "holding_register", 65535),
    ],
)
def test_modicon_numbers(point, table, address):
    assert modicon_to_wire(point) == (table, address)


@given(
    table=st.sampled_from(["coil", "discrete_input", "input_register", "holding_register"]),
    address=st.integers(min_value=0, max_value=65535),
)
def test_modicon_round_trip(table, address):
    assert modicon_to_wire(wire_to_modicon(table, address)) == (table, address)


@pytest.mark.parametrize("bad", ["36", "00000", "20001", "4000x", "5000000"])
def test_modicon_rejects_nonsense(bad):
    with pytest.raises(ValueError, match="Modicon"):
        modicon_to_wire(bad)


@given(
    addresses=st.lists(st.integers(min_value=0, max_value=3000), min_size=1, max_size=40),
    width=st.integers(min_value=1, max_value=2),
    max_count=st.integers(min_value=2, max_value=200),
)
def test_plan_reads_covers_everything_within_limits(addresses, width, max_count):
    spans = plan_reads(addresses, width=width, max_count=max_count)
    for span in spans:
        assert 1 <= span.count <= max_count
    for a, b in itertools.pairwise(spans):
        assert a.address < b.address
        if width == 1:
            assert a.end <= b.address
    for address in addresses:
        assert any(s.address <= address and address + width <= s.end for s in spans)


@given(
    start=st.integers(min_value=0, max_value=1000),
    stride=st.integers(min_value=1, max_value=4),
    n=st.integers(min_value=1, max_value=16),
)
def test_plan_reads_uses_one_request_when_it_fits(start, stride, n):
    addresses = [start + stride * i for i in range(n)]
    assume(stride * (n - 1) + 1 <= 125)
    assert plan_reads(addresses, max_count=125) == [ReadSpan(start, stride * (n - 1) + 1)]


def test_span_values_picks_each_channel():
    # ADAM latches: coil 35 + 4 ch, channels 0 and 2 -> one read of 35..43.
    spans = plan_reads([35, 43], max_count=2000)
    assert spans == [ReadSpan(35, 9)]
    block = [1, 0, 0, 0, 0, 0, 0, 0, 0]
    assert span_values(spans, [block], 35) == [1]
    assert span_values(spans, [block], 43) == [0]
    with pytest.raises(KeyError):
        span_values(spans, [block], 44)


# --------------------------------------------------------------------------- EOL


@pytest.mark.parametrize(
    ("ohms", "state"),
    [
        (0.0, EolState.SHORT),
        (699.9, EolState.SHORT),
        (700.0, EolState.NORMAL),
        (1000.0, EolState.NORMAL),
        (1499.9, EolState.NORMAL),
        (1500.0, EolState.ALARM),
        (2000.0, EolState.ALARM),
        (10999.0, EolState.ALARM),
        (11000.0, EolState.CUT),
        (math.inf, EolState.CUT),
        (None, EolState.UNKNOWN),
        (math.nan, EolState.UNKNOWN),
        (-1.0, EolState.UNKNOWN),
    ],
)
def test_galaxy_bands_at_their_edges(ohms, state):
    assert eol_scheme("galaxy").classify(ohms) is state


@pytest.mark.parametrize(
    ("scheme", "ohms", "state"),
    [
        ("ds2", 0.0, EolState.SHORT),
        ("ds2", 1000.0, EolState.NORMAL),
        ("ds2", 6600.0, EolState.ALARM),
        ("ds2", 6800.0, EolState.ALARM),
        ("ds2", math.inf, EolState.CUT),
        ("dsc", 5600.0, EolState.NORMAL),
        ("dsc", 0.0, EolState.SHORT),
        ("dsc", math.inf, EolState.CUT),
    ],
)
def test_ds2_and_dsc_nominal_values(scheme, ohms, state):
    assert eol_scheme(scheme).classify(ohms) is state


def test_violated_follows_the_wiring_convention():
    galaxy, dsc = eol_scheme("galaxy"), eol_scheme("dsc")
    assert galaxy.is_violated(EolState.ALARM) is True
    assert galaxy.is_violated(EolState.CUT) is False  # tamper, not a press
    assert dsc.is_violated(EolState.SHORT) is True  # single EOL: 0 or open = violated
    assert dsc.is_violated(EolState.CUT) is True
    assert dsc.is_violated(EolState.NORMAL) is False
    assert galaxy.is_violated(EolState.UNKNOWN) is None


resistances = st.one_of(
    st.floats(min_value=0, max_value=50_000, allow_nan=False), st.just(math.inf)
)
states = st.sampled_from([s for s in EolState])


@given(
    ohms=resistances,
    previous=states,
    hysteresis=st.floats(min_value=0, max_value=0.5),
    name=st.sampled_from(sorted(EOL_SCHEMES)),
)
def test_hysteresis_only_ever_keeps_the_previous_state(ohms, previous, hysteresis, name):
    scheme = eol_scheme(name)
    result = scheme.classify(ohms, previous, hysteresis)
    assert result in (scheme.classify(ohms), previous)
    assert scheme.classify(ohms, previous, 0.0) is scheme.classify(ohms)


def test_hysteresis_holds_a_loop_sitting_on_an_edge():
    galaxy = eol_scheme("galaxy")
    assert galaxy.classify(1550, EolState.NORMAL, 0.05) is EolState.NORMAL
    assert galaxy.classify(1600, EolState.NORMAL, 0.05) is EolState.ALARM
    assert galaxy.classify(1450, EolState.ALARM, 0.05) is EolState.ALARM
    assert galaxy.classify(1400, EolState.ALARM, 0.05) is EolState.NORMAL


def test_custom_scheme():
    scheme = EolScheme.custom(
        "site", [("short", 500), ("normal", 3000), ("alarm", 9000), ("cut", math.inf)]
    )
    assert [scheme.classify(x) for x in (100, 2000, 5000, 1e6)] == [
        EolState.SHORT,
        EolState.NORMAL,
        EolState.ALARM,
        EolState.CUT,
    ]


@pytest.mark.parametrize(
    "bands",
    [
        [("normal", 1000), ("alarm", 500), ("cut", math.inf)],  # edges decrease
        [("normal", 1000), ("alarm", 5000)],  # does not reach infinity
        [("normal", 1000), ("unknown", math.inf)],  # unknown is not a band
    ],
)
def test_custom_scheme_rejects_bad_tables(bands):
    with pytest.raises(ValueError, match="EOL scheme"):
        EolScheme.custom("bad", bands)


def test_unknown_scheme_name():
    with pytest.raises(ValueError, match="galaxy"):
        eol_scheme("paradox")


@pytest.mark.parametrize(
    ("volts", "ohms"), [(4.1176, 700), (6.0, 1500), (9.1667, 11000)], ids=["short", "alarm", "cut"]
)
def test_voltage_divider_matches_the_spec_example(volts, ohms):
    # Vs = 10 V, Rs = 1 k: < 4.12 V short, 4.12-6.00 normal, 6.00-9.17 alarm, > 9.17 cut.
    assert resistance_from_voltage(volts, 10.0, 1000.0) == pytest.approx(ohms, rel=1e-3)


def test_voltage_extremes():
    assert resistance_from_voltage(0.0, 10.0, 1000.0) == 0.0
    assert resistance_from_voltage(10.0, 10.0, 1000.0) == math.inf
    assert resistance_from_voltage(12.0, 10.0, 1000.0) == math.inf
    assert math.isnan(resistance_from_voltage(math.nan, 10.0, 1000.0))


@given(ohms=st.floats(min_value=0, max_value=1e6), series=st.floats(min_value=100, max_value=1e4))
def test_voltage_round_trip(ohms, series):
    volts = voltage_from_resistance(ohms, 10.0, series)
    assume(volts < 10.0)
    assert resistance_from_voltage(volts, 10.0, series) == pytest.approx(ohms, rel=1e-6, abs=1e-6)


# --------------------------------------------------------------------------- debouncer


def test_debouncer_zero_reports_every_change_at_once():
    d: Debouncer[bool] = Debouncer(0.0)
    assert d.update(False, 0.0) is False
    assert d.update(False, 0.1) is None
    assert d.update(True, 0.2) is True
    assert d.update(False, 0.3) is False
    assert d.value is False


def test_debouncer_waits_for_a_stable_value():
    d: Debouncer[bool] = Debouncer(0.3)
    assert d.update(False, 0.0) is None
    assert d.update(False, 0.3) is False
    assert d.update(True, 1.0) is None
    assert d.update(False, 1.1) is None  # bounce: back to the reported value
    assert d.update(True, 1.2) is None  # candidate restarts at 1.2
    assert d.update(True, 1.4) is None
    assert d.update(True, 1.5) is True
    assert d.value is True


def test_debouncer_counts_consecutive_samples_for_eol():
    d: Debouncer[EolState] = Debouncer(samples=3)
    assert d.update(EolState.NORMAL, 0.0) is None
    assert d.update(EolState.NORMAL, 0.1) is None
    assert d.update(EolState.NORMAL, 0.2) is EolState.NORMAL
    assert d.update(EolState.ALARM, 0.3) is None
    assert d.update(EolState.CUT, 0.4) is None
    assert d.update(EolState.ALARM, 0.5) is None
    assert d.update(EolState.ALARM, 0.6) is None
    assert d.update(EolState.ALARM, 0.7) is EolState.ALARM


@given(
    samples=st.lists(st.booleans(), min_size=1, max_size=60),
    needed=st.integers(min_value=1, max_value=5),
)
def test_debouncer_never_reports_a_run_shorter_than_needed(samples, needed):
    d: Debouncer[bool] = Debouncer(samples=needed)
    run = 0
    for i, value in enumerate(samples):
        run = run + 1 if i and samples[i - 1] == value else 1
        reported = d.update(value, float(i))
        if reported is not None:
            assert reported == value
            assert run >= needed


def test_debouncer_rejects_nonsense():
    with pytest.raises(ValueError, match="debounce_s"):
        Debouncer(-1.0)
    with pytest.raises(ValueError, match="samples"):
        Debouncer(samples=0)


# --------------------------------------------------------------------------- reply checks


def _request(tid: int, unit: int, fc: int, address: int, count: int) -> bytes:
    return struct.pack(">HHHBBHH", tid, 0, 6, unit, fc, address, count)


def _reply(tid: int, unit: int, fc: int, count: int) -> bytes:
    data = bytes((count + 7) // 8) if fc in (1, 2) else bytes(2 * count)
    pdu = bytes([fc, len(data)]) + data
    return struct.pack(">HHHB", tid, 0, len(pdu) + 1, unit) + pdu


@given(
    tid=st.integers(min_value=1, max_value=65000),
    unit=st.integers(min_value=0, max_value=255),
    fc=st.sampled_from([1, 2, 3, 4]),
    count=st.integers(min_value=1, max_value=125),
)
def test_valid_replies_and_their_prefixes_pass(tid, unit, fc, count):
    request = _request(tid, unit, fc, 0, count)
    reply = _reply(tid, unit, fc, count)
    for cut in range(len(reply) + 1):
        assert tcp_response_problem(request, reply[:cut]) is None


def test_exception_reply_passes():
    request = _request(7, 1, 3, 0, 2)
    assert tcp_response_problem(request, struct.pack(">HHHBBB", 7, 0, 3, 1, 0x83, 2)) is None


def test_garbage_is_named():
    request = _request(7, 1, 3, 0, 2)
    reply = _reply(7, 1, 3, 2)
    noise = bytes(b ^ 0xA5 for b in reply)
    assert "protocol id" in (tcp_response_problem(request, noise) or "")
    short = reply[:4] + (len(reply) - 7).to_bytes(2, "big") + reply[6:-1]
    assert "length" in (tcp_response_problem(request, short) or "")
    wrong_fc = reply[:7] + b"\x04" + reply[8:]
    assert "function" in (tcp_response_problem(request, wrong_fc) or "")
    wrong_unit = reply[:6] + b"\x09" + reply[7:]
    assert "unit" in (tcp_response_problem(request, wrong_unit) or "")


def test_stale_reply_to_an_older_request_is_left_to_pymodbus():
    request = _request(8, 1, 3, 0, 2)
    assert tcp_response_problem(request, _reply(7, 1, 1, 5)) is None
