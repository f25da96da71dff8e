"""Bollard profiles, the pure decoder (property-tested) and the driver against the simulator
over real sockets (port 0, no fixed sleeps)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import random
import textwrap
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.modbus import (
    Backoff,
    DeviceExceptionResponse,
    DeviceProtocolError,
    DeviceTimeout,
    DeviceUnreachable,
    ModbusBus,
    ModbusDeviceError,
    ProfileError,
)
from drivers.modbus.bollard import BollardController, decode_reading, plan_reads_for
from drivers.modbus.bollard_model import BollardCommand, BollardReading
from drivers.modbus.bollard_profile import (
    COMMAND_NAMES,
    SIGNAL_NAMES,
    BollardProfile,
    list_bollard_profiles,
    load_bollard_profile,
)
from drivers.modbus.codec import MAX_READ_BITS, MAX_READ_REGISTERS, modicon_to_wire
from simulators.bollard import BollardSimulator

TRAVEL = 0.4
EFO = 0.1
TIMEOUT = 0.3
FAST_BACKOFF = Backoff(initial=0.02, maximum=0.1)
PROFILES_DIR = Path(__file__).resolve().parents[1] / "drivers" / "modbus" / "bollard_profiles"
GENERIC = PROFILES_DIR / "generic-plc.yaml"


# --------------------------------------------------------------------------- profiles


def test_generic_plc_ships_and_follows_the_convention():
    assert "generic-plc" in list_bollard_profiles()
    profile = load_bollard_profile("GENERIC-PLC")
    assert profile.name == "generic-plc"
    assert profile.max_bollards == 8
    s = profile.signals
    # Bollard 1 is 16 points further in every table.
    assert (s.raised_limit.table, s.raised_limit.address_of(1)) == ("discrete_input", 16)
    assert s.lowered_limit.address_of(2) == 33
    assert s.cycles is not None
    assert (s.cycles.address_of(1), s.cycles.word_order) == (19, "high_first")
    raise_ = profile.commands.get("raise")
    assert raise_ is not None
    assert (raise_.table, raise_.address_of(3), raise_.value) == ("coil", 48, 1)
    assert {name for name in SIGNAL_NAMES if profile.signal(name) is None} == set()
    assert {name for name in COMMAND_NAMES if profile.commands.get(name) is None} == set()


def test_command_names_cover_every_bollard_command():
    assert {c.value for c in BollardCommand} <= set(COMMAND_NAMES)
    assert set(SIGNAL_NAMES) <= set(BollardReading.__dataclass_fields__)


def test_modicon_numbers_in_the_yaml_agree_with_wire_addresses():
    data = yaml.safe_load(GENERIC.read_text())
    points = list(data["signals"].values()) + list(data["commands"].values())
    assert all("modicon" in p for p in points)
    for point in points:
        assert modicon_to_wire(point["modicon"]) == (point["table"], point["address"])


def test_load_by_path_and_json_schema(tmp_path):
    target = tmp_path / "site-bollards.yaml"
    target.write_text(GENERIC.read_text())
    assert load_bollard_profile(target).name == "site-bollards"
    assert load_bollard_profile(str(target)).model == "PLC bollard controller"
    schema = BollardProfile.model_json_schema()
    assert schema["additionalProperties"] is False
    assert "raise" in schema["$defs"]["BollardCommands"]["properties"]
    json.dumps(schema)


GOOD = """\
vendor: Acme
model: BC-2
max_bollards: 2
stride: {discrete_input: 8, coil: 8, input_register: 4}
signals:
  raised_limit: {table: discrete_input, address: 0, modicon: "10001"}
  lowered_limit: {table: discrete_input, address: 1}
  moving: {table: discrete_input, address: 2}
  pressure_bar: {table: input_register, address: 0, scale: 0.1}
  cycles: {table: input_register, address: 2, word_order: low_first}
commands:
  raise: {table: coil, address: 0, value: 1}
  lower: {table: coil, address: 1, value: 1}
unavailable:
  stop: the PLC stops on its own at the limits
"""


def _load(tmp_path: Path, text: str) -> BollardProfile:
    path = tmp_path / "broken.yaml"
    path.write_text(textwrap.dedent(text))
    return load_bollard_profile(path)


def test_good_fixture_loads(tmp_path):
    profile = _load(tmp_path, GOOD)
    assert profile.signals.moving is not None
    assert profile.signals.moving.address_of(1) == 10
    assert profile.unavailable == {"stop": "the PLC stops on its own at the limits"}


@pytest.mark.parametrize(
    ("old", "new", "key", "why"),
    [
        ("model: BC-2", "model: BC-2\ncolour: red", "colour", "Extra inputs"),
        ("  lowered_limit: {table: discrete_input, address: 1}\n", "",
         "signals.lowered_limit", "Field required"),
        ('address: 0, modicon: "10001"', 'address: 1, modicon: "10001"',
         "signals.raised_limit", "discrete_input 0"),
        ("{table: discrete_input, address: 2}", "{table: discrete_inputs, address: 2}",
         "signals.moving.table", "discrete_input"),
        ("raise: {table: coil, address: 0, value: 1}", "raise: {table: coil, address: 0, value: 3}",
         "commands.raise", "0 or 1"),
        ("raise: {table: coil", "raise: {table: discrete_input", "commands.raise", "cannot write"),
        ("{table: input_register, address: 0, scale: 0.1}",
         "{table: discrete_input, address: 5, scale: 0.1}", "signals.pressure_bar", "register"),
        ("scale: 0.1", "scale: 0", "signals.pressure_bar.scale", "greater than 0"),
        ("word_order: low_first", "words: 2", "signals.cycles", "word_order"),
        ("address: 2}", "address: 2, bit: 3}", "signals.moving", "one bit"),
        ("moving: {table: discrete_input, address: 2}", "moving: {table: discrete_input, address: 1}",
         "signals.moving", "also signals.lowered_limit"),
        ("discrete_input: 8,", "discrete_input: 2,", "stride.discrete_input", "bollard 1"),
        ("lower: {table: coil, address: 1", "lower: {table: coil, address: 0",
         "commands.lower", "also commands.raise"),
        ("cycles: {table: input_register, address: 2", "cycles: {table: input_register, address: 3",
         "signals.cycles", "stride.input_register"),
        ("max_bollards: 2", "max_bollards: 65", "max_bollards", "less than or equal to 64"),
        ("stop: the", "stopp: the", "unavailable.stopp", "'emergency_raise'"),
        ("stop: the", "raise: the", "commands.raise", "both mapped and listed as unavailable"),
        ("moving: {table: discrete_input, address: 2}",
         "moving: {table: discrete_input, address: 65530}", "signals.moving", "beyond address 65535"),
    ],
    ids=["extra-key", "missing-limit", "modicon-mismatch", "bad-table", "coil-value",
         "write-to-input", "analog-in-bits", "zero-scale", "no-word-order", "bit-of-a-bit",
         "same-address", "stride-too-small", "same-command", "counter-over-next-bollard",
         "too-many-bollards", "unknown-unavailable", "mapped-and-unavailable", "beyond-65535"],
)  # fmt: skip
def test_broken_profile_names_file_and_key(tmp_path, old, new, key, why):
    text = GOOD.replace(old, new)
    assert text != GOOD
    with pytest.raises(ProfileError) as info:
        _load(tmp_path, text)
    message = str(info.value)
    assert message.count("broken.yaml") == 1
    assert key in message
    assert why in message


def test_bad_yaml_not_a_mapping_unknown_name_and_missing_file(tmp_path):
    with pytest.raises(ProfileError, match=r"broken\.yaml: line 2: not valid YAML"):
        _load(tmp_path, "vendor: a\nmodel: b: c\n")
    with pytest.raises(ProfileError, match=r"broken\.yaml: a profile is a mapping"):
        _load(tmp_path, "- a list\n")
    with pytest.raises(ProfileError, match="generic-plc"):
        load_bollard_profile("faac-j355")
    with pytest.raises(ProfileError, match=r"nope\.yaml: cannot read"):
        load_bollard_profile(tmp_path / "nope.yaml")


# --------------------------------------------------------------------------- pure decoding

_BITS = ("raised_limit", "lowered_limit", "moving", "moving_up", "moving_down", "manual_mode",
         "maintenance", "impact", "vehicle_loop", "mains_ok", "battery_ok")  # fmt: skip
# The generic-plc convention's discrete inputs 10001-10011, in address order.
_GENERIC_DI = ("raised_limit", "lowered_limit", "moving_up", "moving_down", "moving",
               "manual_mode", "maintenance", "impact", "vehicle_loop", "mains_ok",
               "battery_ok")  # fmt: skip
GENERIC_PROFILE = load_bollard_profile("generic-plc")


@settings(max_examples=150, deadline=None)
@given(
    index=st.integers(0, 7),
    flags=st.fixed_dictionaries({name: st.booleans() for name in _BITS}),
    fault=st.integers(0, 0xFFFF),
    pressure_counts=st.integers(0, 0xFFFF),
    temp_counts=st.integers(-0x8000, 0x7FFF),
    cycles=st.integers(0, 0xFFFF_FFFF),
    seed=st.integers(0, 2**32),
)
def test_decode_generic_plc_from_the_written_out_convention(
    index, flags, fault, pressure_counts, temp_counts, cycles, seed
):
    # Encoded from the convention's table (README / YAML comments), not from the profile
    # object: a wrong address in the YAML fails here.
    noise = random.Random(seed)
    values: dict[tuple[str, int], int] = {}
    for address in range(8 * 16):  # other bollards' points and spare addresses: noise
        values["discrete_input", address] = noise.randint(0, 1)
        values["input_register", address] = noise.randint(0, 0xFFFF)
    base = 16 * index
    for offset, name in enumerate(_GENERIC_DI):
        values["discrete_input", base + offset] = int(flags[name])
    values["input_register", base + 0] = fault
    values["input_register", base + 1] = pressure_counts
    values["input_register", base + 2] = temp_counts & 0xFFFF
    values["input_register", base + 3] = cycles >> 16
    values["input_register", base + 4] = cycles & 0xFFFF
    reading = decode_reading(GENERIC_PROFILE, index, values, monotonic=5.0, latency_s=0.25)
    assert {name: getattr(reading, name) for name in _BITS} == flags
    assert reading.fault_code == fault
    assert reading.pressure_bar == pytest.approx(pressure_counts * 0.1)
    assert reading.motor_temp_c == pytest.approx(temp_counts * 0.1)
    assert reading.cycles == cycles
    assert (reading.monotonic, reading.latency_s) == (5.0, 0.25)
    assert reading.raw["cycles"] == cycles
    assert reading.raw["motor_temp_c"] == temp_counts & 0xFFFF


_TABLES = ("coil", "discrete_input", "holding_register", "input_register")
_REGISTER_TABLES = ("holding_register", "input_register")


@st.composite
def random_profiles(draw: st.DrawFn) -> dict[str, Any]:
    """A profile document with non-overlapping points, in any tables, bits and scales."""
    next_free = dict.fromkeys(_TABLES, 0)

    def take(table: str, width: int = 1) -> int:
        address = next_free[table] + draw(st.integers(0, 3))  # unmapped gaps
        next_free[table] = address + width
        return address

    signals: dict[str, Any] = {}
    for name in _BITS:
        if name not in ("raised_limit", "lowered_limit") and not draw(st.booleans()):
            continue
        table = draw(st.sampled_from(_TABLES))
        point: dict[str, Any] = {"table": table, "address": take(table)}
        if table in _REGISTER_TABLES and draw(st.booleans()):
            point["bit"] = draw(st.integers(0, 15))
        if draw(st.booleans()):
            point["invert"] = True
        signals[name] = point
    for name in ("pressure_bar", "motor_temp_c"):
        if draw(st.booleans()):
            table = draw(st.sampled_from(_REGISTER_TABLES))
            signals[name] = {
                "table": table,
                "address": take(table),
                "scale": draw(st.sampled_from([0.01, 0.1, 0.5, 1.0, 2.0])),
                "offset": draw(st.integers(-100, 100)),
                "signed": draw(st.booleans()),
            }
    if draw(st.booleans()):
        table = draw(st.sampled_from(_REGISTER_TABLES))
        signals["fault_code"] = {"table": table, "address": take(table)}
    if draw(st.booleans()):
        table = draw(st.sampled_from(_REGISTER_TABLES))
        words = draw(st.sampled_from([1, 2]))
        signals["cycles"] = {"table": table, "address": take(table, words), "words": words}
        if words == 2:
            signals["cycles"]["word_order"] = draw(st.sampled_from(["low_first", "high_first"]))
    stride = {t: next_free[t] + draw(st.integers(0, 5)) for t in _TABLES}
    return {
        "vendor": "Hypothesis",
        "model": "random",
        "max_bollards": draw(st.integers(1, 4)),
        "stride": stride,
        "max_gap": draw(st.sampled_from([None, 0, 2, 10])),
        "signals": signals,
    }


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(document=random_profiles(), data=st.data())
def test_decode_any_profile_recovers_the_signals(document, data):
    profile = BollardProfile.model_validate(document)
    index = data.draw(st.integers(0, profile.max_bollards - 1), label="index")
    values: dict[tuple[str, int], int] = {}
    expected: dict[str, Any] = {}
    for name, point in document["signals"].items():
        table = point["table"]
        address = point["address"] + index * document["stride"][table]
        if name in _BITS:
            truth = data.draw(st.booleans(), label=name)
            level = truth != point.get("invert", False)
            if table not in _REGISTER_TABLES:
                raw = int(level)
            elif "bit" in point:
                # The other bits of a status word are someone else's: random.
                others = data.draw(st.integers(0, 0xFFFF)) & ~(1 << point["bit"])
                raw = others | int(level) << point["bit"]
            else:
                raw = data.draw(st.integers(1, 0xFFFF)) if level else 0
            values[table, address] = raw
            expected[name] = truth
        elif name == "cycles":
            count = data.draw(st.integers(0, 0xFFFF_FFFF if point["words"] == 2 else 0xFFFF))
            if point["words"] == 1:
                values[table, address] = count
            else:
                high, low = count >> 16, count & 0xFFFF
                first, second = (low, high) if point["word_order"] == "low_first" else (high, low)
                values[table, address], values[table, address + 1] = first, second
            expected[name] = count
        elif name == "fault_code":
            values[table, address] = expected[name] = data.draw(st.integers(0, 0xFFFF))
        else:
            low = -0x8000 if point["signed"] else 0
            high = 0x7FFF if point["signed"] else 0xFFFF
            counts = data.draw(st.integers(low, high), label=name)
            values[table, address] = counts & 0xFFFF
            expected[name] = point["offset"] + counts * point["scale"]
    reading = decode_reading(profile, index, values)
    for name in SIGNAL_NAMES:
        if name in expected:
            assert getattr(reading, name) == pytest.approx(expected[name]), name
        else:
            assert getattr(reading, name) is None, name
    assert set(reading.raw) == set(expected)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(document=random_profiles(), data=st.data())
def test_read_plan_covers_every_point_in_few_requests(document, data):
    profile = BollardProfile.model_validate(document)
    indices = data.draw(
        st.sets(st.integers(0, profile.max_bollards - 1), min_size=1), label="indices"
    )
    plan = plan_reads_for(profile, indices)
    wanted: dict[str, set[int]] = {}
    for index in indices:
        for _name, point, width in profile.read_points():
            first = point.address_of(index)
            wanted.setdefault(point.wire_table, set()).update(range(first, first + width))
    covered = {
        (table, address) for table, span in plan for address in range(span.address, span.end)
    }
    assert {(t, a) for t, addresses in wanted.items() for a in addresses} <= covered
    for table, span in plan:
        limit = MAX_READ_BITS if table in ("coil", "discrete_input") else MAX_READ_REGISTERS
        assert 1 <= span.count <= limit
        assert span.address in wanted[table]
        assert span.end - 1 in wanted[table]
        if profile.max_gap is not None:
            inside = sorted(a for a in wanted[table] if span.address <= a < span.end)
            assert all(b - a - 1 <= profile.max_gap for a, b in itertools.pairwise(inside))
    # Nothing far apart: with no gap limit, one request per table.
    if profile.max_gap is None:
        assert len(plan) == len(wanted)


def test_decode_rejects_out_of_range_values():
    values = {("discrete_input", a): 0 for a in range(16)} | {
        ("input_register", a): 0 for a in range(16)
    }
    values["discrete_input", 0] = 2
    with pytest.raises(ValueError, match="discrete_input 0"):
        decode_reading(GENERIC_PROFILE, 0, values)
    del values["discrete_input", 0]
    with pytest.raises(KeyError):
        decode_reading(GENERIC_PROFILE, 0, values)


# --------------------------------------------------------------------------- against the simulator


@contextlib.asynccontextmanager
async def rig(
    bollards: int = 2, **sim_kwargs: Any
) -> AsyncIterator[tuple[BollardSimulator, BollardController]]:
    sim_kwargs = {"travel_time": TRAVEL, "efo_travel_time": EFO, **sim_kwargs}
    async with (
        BollardSimulator("generic-plc", bollards=bollards, **sim_kwargs) as sim,
        ModbusBus(timeout=TIMEOUT, backoff=FAST_BACKOFF, rng=random.Random(1)) as bus,
    ):
        connection = bus.get_tcp("127.0.0.1", sim.port)
        yield sim, BollardController(connection, sim.profile, 1, bollards)


async def read_until(
    ctl: BollardController,
    index: int,
    predicate: Callable[[BollardReading], bool],
    timeout: float = 3.0,
) -> BollardReading:
    """Poll until a reading satisfies ``predicate`` (device errors are retried)."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(ModbusDeviceError):
            reading = await ctl.read(index)
            if predicate(reading):
                return reading
        if time.monotonic() > deadline:
            raise AssertionError("no matching reading before the deadline")
        await asyncio.sleep(0.01)


async def holds_for(
    ctl: BollardController, index: int, predicate: Callable[[BollardReading], bool], span: float
) -> None:
    """Poll for ``span`` seconds; every reading must satisfy ``predicate`` (a thing that must
    *not* happen can only be checked by watching for a while)."""
    deadline = time.monotonic() + span
    while time.monotonic() < deadline:
        reading = await ctl.read(index)
        assert predicate(reading), reading
        await asyncio.sleep(0.02)


async def test_raise_moves_then_makes_the_raised_limit_within_travel_time():
    async with rig() as (sim, ctl):
        first = await ctl.read(0)
        assert (first.lowered_limit, first.raised_limit, first.moving) == (True, False, False)
        before = ctl.connection.transactions
        await ctl.read(0)
        assert ctl.connection.transactions - before == 2  # one request per table
        started = time.monotonic()
        await ctl.command(0, BollardCommand.RAISE)
        assert sim.last_command is not None
        assert sim.last_command.monotonic >= started
        moving = await ctl.read(0)
        assert (moving.moving, moving.moving_up, moving.moving_down) == (True, True, False)
        assert not moving.raised_limit
        assert (await ctl.read(1)).moving is False  # the other bollard stays put
        raised = await read_until(ctl, 0, lambda r: bool(r.raised_limit), TRAVEL * 4)
        elapsed = time.monotonic() - started
        assert TRAVEL * 0.9 < elapsed < TRAVEL + 0.2
        assert (raised.lowered_limit, raised.moving) == (False, False)
        assert raised.cycles == 1
        assert raised.latency_s < TIMEOUT


async def test_lower_and_stop_midway():
    async with rig() as (sim, ctl):
        sim.local_command(0, "emergency_raise")
        await read_until(ctl, 0, lambda r: bool(r.raised_limit), EFO * 10)
        await ctl.command(0, BollardCommand.LOWER)
        reading = await read_until(ctl, 0, lambda r: not r.raised_limit, TRAVEL)
        assert (reading.moving, reading.moving_down) == (True, True)
        await ctl.command(0, BollardCommand.STOP)
        stopped = await ctl.read(0)
        assert (stopped.raised_limit, stopped.lowered_limit, stopped.moving) == (
            False,
            False,
            False,
        )
        await holds_for(
            ctl, 0, lambda r: not (r.raised_limit or r.lowered_limit or r.moving), TRAVEL
        )
        await ctl.command(0, BollardCommand.LOWER)
        await read_until(ctl, 0, lambda r: bool(r.lowered_limit), TRAVEL * 2)


async def test_emergency_raise_is_faster():
    async with rig() as (_sim, ctl):
        started = time.monotonic()
        await ctl.command(1, BollardCommand.EMERGENCY_RAISE)
        await read_until(ctl, 1, lambda r: bool(r.raised_limit), TRAVEL * 2)
        assert time.monotonic() - started < TRAVEL * 0.6


async def test_raise_refused_by_the_controller_while_the_loop_is_occupied():
    async with rig() as (sim, ctl):
        sim.set_vehicle_loop(0, True)
        await ctl.command(0, BollardCommand.RAISE)  # written, not done
        reading = await ctl.read(0)
        assert (reading.vehicle_loop, reading.moving, reading.lowered_limit) == (True, False, True)
        await holds_for(ctl, 0, lambda r: bool(r.lowered_limit and not r.moving), TRAVEL / 2)
        await ctl.command(0, BollardCommand.EMERGENCY_RAISE)  # EFO overrides the loop
        await read_until(ctl, 0, lambda r: bool(r.raised_limit), TRAVEL * 2)


async def test_impact_seen_and_cleared():
    async with rig() as (sim, ctl):
        assert ctl.can_clear_impact
        sim.inject_impact(1)
        readings = await ctl.read_all()
        assert [r.impact for r in readings] == [False, True]
        await ctl.clear_impact(1)
        assert (await ctl.read(1)).impact is False


async def test_contradictory_limits_and_other_signals_are_reported_as_read():
    async with rig() as (sim, ctl):
        sim.set_both_limits(0)
        sim.set_fault(0, 513)
        sim.set_mains(0, False)
        sim.set_battery(0, False)
        sim.set_maintenance(0, True)
        sim.set_manual(0, True)
        sim.set_pressure(0, 92.4)
        sim.set_temperature(0, -3.2)
        before = ctl.connection.transactions
        both, other = await ctl.read_all()
        assert ctl.connection.transactions - before == 2  # all bollards, still one per table
        assert (both.raised_limit, both.lowered_limit) == (True, True)
        assert both.fault_code == 513
        assert (both.mains_ok, both.battery_ok, both.maintenance, both.manual_mode) == (
            False,
            False,
            True,
            True,
        )
        assert both.pressure_bar == pytest.approx(92.4)
        assert both.motor_temp_c == pytest.approx(-3.2)
        assert (other.raised_limit, other.lowered_limit, other.fault_code) == (False, True, 0)
        assert both.monotonic == other.monotonic


async def test_unplugged_mid_move_raises_and_never_returns_a_stale_reading():
    async with rig() as (sim, ctl):
        await ctl.command(0, BollardCommand.RAISE)
        await read_until(ctl, 0, lambda r: bool(r.moving), TRAVEL)
        await sim.unplug()
        with pytest.raises(DeviceUnreachable):
            await ctl.read(0)
        with pytest.raises(ModbusDeviceError):
            await ctl.command(0, BollardCommand.STOP)
        await sim.plug()
        # The bollard kept moving while the link was down: the first reading is the new truth.
        reading = await read_until(ctl, 0, lambda r: True)
        assert reading.moving or reading.raised_limit
        await read_until(ctl, 0, lambda r: bool(r.raised_limit), TRAVEL * 2)


async def test_silent_controller_times_out():
    async with rig() as (sim, ctl):
        await ctl.read(0)
        await sim.unplug("silent")
        started = time.monotonic()
        with pytest.raises(DeviceTimeout):
            await ctl.read(0)
        assert TIMEOUT * 0.9 < time.monotonic() - started < TIMEOUT * 3
        with pytest.raises(DeviceTimeout) as info:
            await ctl.command(0, BollardCommand.RAISE)
        assert info.value.request_sent  # outcome unknown: the caller must read to find out
        assert not sim.state(0).moving  # the silenced controller never saw it
        await sim.plug()
        await read_until(ctl, 0, lambda r: True)


async def test_exception_and_garbage_are_device_errors():
    async with rig() as (sim, ctl):
        sim.exception_mode(4)
        with pytest.raises(DeviceExceptionResponse) as info:
            await ctl.read(0)
        assert (info.value.code, info.value.function_code) == (4, 2)
        with pytest.raises(DeviceExceptionResponse) as info:
            await ctl.command(0, BollardCommand.RAISE)
        assert info.value.function_code == 5
        for kind in ("noise", "truncated"):
            sim.normal_mode()
            await read_until(ctl, 0, lambda r: True)
            sim.garbage_mode(kind)
            started = time.monotonic()
            with pytest.raises(DeviceProtocolError):
                await ctl.read(0)
            assert time.monotonic() - started < TIMEOUT  # seen in the bytes, not a timeout
        sim.normal_mode()
        await read_until(ctl, 0, lambda r: True)


async def test_cancellation_stays_cancellation():
    async with rig() as (sim, ctl):
        await sim.unplug("silent")
        task = asyncio.create_task(ctl.read(0))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_command_register_profile(tmp_path):
    path = tmp_path / "site.yaml"
    path.write_text(
        textwrap.dedent("""\
        vendor: Site
        model: one bollard, a command register
        signals:
          raised_limit: {table: holding_register, address: 0, bit: 0}
          lowered_limit: {table: holding_register, address: 0, bit: 1}
        commands:
          raise: {table: holding_register, address: 1, value: 1}
          lower: {table: holding_register, address: 1, value: 2}
        unavailable:
          stop: the PLC has none
        """)
    )
    profile = load_bollard_profile(path)
    async with (
        BollardSimulator(profile, bollards=1, travel_time=0.05) as sim,
        ModbusBus(timeout=TIMEOUT) as bus,
    ):
        ctl = BollardController(bus.get_tcp("127.0.0.1", sim.port), profile)
        assert ctl.supported_commands == {BollardCommand.RAISE, BollardCommand.LOWER}
        assert not ctl.can_clear_impact
        await ctl.command(0, BollardCommand.RAISE)
        reading = await read_until(ctl, 0, lambda r: bool(r.raised_limit))
        assert reading.moving is None  # not in the profile: unknown, not False
        with pytest.raises(ValueError, match="the PLC has none"):
            await ctl.command(0, BollardCommand.STOP)
        with pytest.raises(ValueError, match="clear_impact"):
            await ctl.clear_impact(0)


async def test_rejects_bad_indices_and_counts():
    async with rig(bollards=2) as (_sim, ctl):
        with pytest.raises(ValueError, match="bollard 2"):
            await ctl.read(2)
        with pytest.raises(ValueError, match="bollard -1"):
            await ctl.command(-1, BollardCommand.RAISE)
        with pytest.raises(ValueError, match=r"1\.\.8"):
            BollardController(ctl.connection, ctl.profile, 1, bollards=9)
        assert BollardController(ctl.connection, ctl.profile).unit == 1


def test_readme_example_is_a_valid_profile(tmp_path):
    readme = (PROFILES_DIR / "README.md").read_text()
    example = readme.split("```yaml\n", 1)[1].split("```", 1)[0]
    profile = _load(tmp_path, example)
    assert profile.max_bollards == 4
    assert profile.signals.mains_ok is not None
    assert profile.signals.mains_ok.address_of(3) == 30
    raise_, stop = profile.commands.get("raise"), profile.commands.get("stop")
    assert raise_ is not None
    assert stop is not None
    assert (raise_.address_of(1), stop.value) == (16, 3)
