"""DIModuleReader against the simulator over real sockets (port 0, no fixed sleeps)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import socket
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import yaml

from drivers.modbus import (
    Backoff,
    ChannelSpec,
    DeviceExceptionResponse,
    DeviceProtocolError,
    DeviceTimeout,
    DeviceUnreachable,
    DIModuleReader,
    EolParams,
    EolState,
    ModbusBus,
    ModbusDeviceError,
    ModuleReading,
    load_profile,
)
from simulators.modbus_io import DIModuleSimulator
from tests.helpers import wait_for

TIMEOUT = 0.3
FAST_BACKOFF = Backoff(initial=0.02, maximum=0.1)


async def read_until(
    reader: DIModuleReader, predicate: Callable[[ModuleReading], bool], timeout: float = 3.0
) -> ModuleReading:
    """Poll the reader until a reading satisfies ``predicate`` (errors are retried)."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(ModbusDeviceError):
            reading = await reader.read()
            if predicate(reading):
                return reading
        if time.monotonic() > deadline:
            raise AssertionError("no matching reading before the deadline")
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def rig(
    profile: str, specs: list[ChannelSpec], **sim_kwargs
) -> AsyncIterator[tuple[DIModuleSimulator, ModbusBus, DIModuleReader]]:
    async with (
        DIModuleSimulator(profile, **sim_kwargs) as sim,
        ModbusBus(timeout=TIMEOUT, backoff=FAST_BACKOFF, rng=random.Random(1)) as bus,
    ):
        reader = DIModuleReader(bus.get_tcp("127.0.0.1", sim.port), load_profile(profile), 1, specs)
        yield sim, bus, reader


class Poller:
    """Reads every ``interval`` seconds in the background and sums the pulses per channel."""

    def __init__(self, reader: DIModuleReader, interval: float) -> None:
        self.reader = reader
        self.interval = interval
        self.pulses: dict[int, int] = {}
        self.reads = 0
        self.errors: list[Exception] = []

    async def run(self) -> None:
        while True:
            try:
                reading = await self.reader.read()
            except ModbusDeviceError as exc:
                self.errors.append(exc)
            else:
                self.reads += 1
                for ch, r in reading.channels.items():
                    self.pulses[ch] = self.pulses.get(ch, 0) + r.pulses
            await asyncio.sleep(self.interval)


@contextlib.asynccontextmanager
async def polling(reader: DIModuleReader, interval: float = 0.05) -> AsyncIterator[Poller]:
    poller = Poller(reader, interval)
    task = asyncio.create_task(poller.run())
    try:
        await wait_for(lambda: poller.reads >= 1)
        yield poller
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


# --------------------------------------------------------------------------- modes


async def test_state_mode_sees_a_press_and_polarity():
    specs = [ChannelSpec(channel=0), ChannelSpec(channel=1, active_level="low")]
    async with rig("adam-6050", specs) as (sim, _bus, reader):
        first = await reader.read()
        assert first.channels[0].active is False
        assert first.channels[1].active is True  # NC contact open = active
        assert first.channels[0].pulses == 0
        sim.set_input(0, True)
        sim.set_input(1, True)
        reading = await read_until(reader, lambda r: r.channels[0].active is True)
        assert reading.channels[0].pulses == 1
        assert reading.channels[0].raw == 1
        assert reading.channels[1].active is False
        assert 0 < reading.latency_s < TIMEOUT
        assert reading.requests == 1  # both channels in one FC01 request
        sim.set_input(0, False)
        reading = await read_until(reader, lambda r: r.channels[0].active is False)
        assert reading.channels[0].pulses == 0


async def test_latch_mode_never_misses_5ms_presses():
    specs = [ChannelSpec(channel=ch, mode="latch") for ch in (0, 5)]
    async with rig("adam-6050", specs) as (sim, _bus, reader), polling(reader, 0.05) as poller:
        rng = random.Random(7)
        for _ in range(50):
            await sim.press(5, 0.005)
            # Presses land at random phases of the 50 ms poll; wait for the reader to
            # collect each one so two presses never share a poll.
            await wait_for(lambda: not sim.latched(5))
            await asyncio.sleep(rng.uniform(0, 0.02))
        await wait_for(lambda: poller.pulses.get(5) == 50)
        assert poller.pulses.get(0, 0) == 0
        assert not poller.errors


async def test_counter_mode_on_moxa_counts_back_to_back_presses():
    specs = [ChannelSpec(channel=3, mode="counter"), ChannelSpec(channel=4, mode="counter")]
    async with rig("moxa-e1210", specs) as (sim, _bus, reader):
        sim.set_counter(3, 0xFFFF_FFF0)  # wrap-around on the way
        async with polling(reader, 0.05) as poller:
            for _ in range(50):
                await sim.press(3, 0.005)
                await asyncio.sleep(0.005)  # several presses per poll: all counted
            await wait_for(lambda: poller.pulses.get(3) == 50)
            assert poller.pulses.get(4, 0) == 0
        assert sim.counter(3) == (0xFFFF_FFF0 + 50) & 0xFFFF_FFFF


async def test_counter_reset_by_a_module_restart_is_reported():
    async with rig("adam-6050", [ChannelSpec(channel=0, mode="counter")]) as (sim, _, reader):
        sim.set_counter(0, 500)
        await reader.read()
        sim.set_counter(0, 0)  # power cycle
        await sim.press(0, 0.001)
        reading = (await reader.read()).channels[0]
        assert (reading.pulses, reading.counter_reset, reading.raw) == (1, True, 1)


async def test_packed_word_state_on_moxa():
    profile = load_profile("moxa-e1210")
    async with (
        DIModuleSimulator("moxa-e1210") as sim,
        ModbusBus(timeout=TIMEOUT) as bus,
    ):
        reader = DIModuleReader(
            bus.get_tcp("127.0.0.1", sim.port),
            profile,
            None,
            [ChannelSpec(channel=ch) for ch in (0, 9, 15)],
            use_packed_word=True,
        )
        sim.set_input(9, True)
        sim.set_input(15, True)
        reading = await reader.read()
        assert [reading.channels[ch].active for ch in (0, 9, 15)] == [False, True, True]
        assert reading.requests == 1


async def test_et2260_latch_cleared_with_one_write():
    specs = [ChannelSpec(channel=ch, mode="latch") for ch in range(6)]
    async with rig("icpdas-et2260", specs) as (sim, _bus, reader):
        await sim.press(1, 0.001)
        await sim.press(4, 0.001)
        reading = await reader.read()
        assert {ch: r.pulses for ch, r in reading.channels.items()} == {
            0: 0,
            1: 1,
            2: 0,
            3: 0,
            4: 1,
            5: 0,
        }
        # state read + latch read + ONE clear-all write
        assert reading.requests == 3
        assert not sim.latched(1)
        assert not sim.latched(4)
        assert all(r.pulses == 0 for r in (await reader.read()).channels.values())


async def test_zlan_state_is_read_with_fc01():
    async with rig("zlan6042", [ChannelSpec(channel=3)]) as (sim, _bus, reader):
        sim.set_input(3, True)
        assert (await reader.read()).channels[3].active is True


@pytest.mark.parametrize(
    ("scheme", "sequence"),
    [
        (
            "galaxy",
            [
                (1000, EolState.NORMAL, False),
                (2000, EolState.ALARM, True),
                (math.inf, EolState.CUT, False),
                (100, EolState.SHORT, False),
                (1000, EolState.NORMAL, False),
            ],
        ),
        (
            "dsc",
            [
                (5600, EolState.NORMAL, False),
                (0, EolState.SHORT, True),
                (5600, EolState.NORMAL, False),
                (math.inf, EolState.CUT, True),
            ],
        ),
    ],
)
async def test_eol_mode_follows_the_loop_resistance(scheme, sequence):
    specs = [ChannelSpec(channel=2, mode="eol", eol=EolParams(scheme=scheme))]
    async with rig("zlan6042-res", specs) as (sim, _bus, reader):
        for ohms, state, active in sequence:
            sim.set_resistance(2, ohms)
            channel = (await reader.read()).channels[2]
            assert (channel.eol, channel.active) == (state, active), ohms
        assert channel.ohms == math.inf or channel.ohms is not None


async def test_eol_pulses_count_entries_into_alarm():
    specs = [ChannelSpec(channel=0, mode="eol")]
    async with rig("zlan6042-res", specs) as (sim, _bus, reader):
        sim.set_resistance(0, 1000)
        await reader.read()
        sim.set_resistance(0, 2000)
        assert (await reader.read()).channels[0].pulses == 1
        assert (await reader.read()).channels[0].pulses == 0


# --------------------------------------------------------------------------- sharing


async def test_units_and_readers_share_one_connection():
    profile = load_profile("adam-6050")
    async with (
        DIModuleSimulator("adam-6050", units=(1, 2, 3)) as sim,
        ModbusBus(timeout=TIMEOUT) as bus,
    ):
        readers = [
            DIModuleReader(
                bus.get_tcp("127.0.0.1", sim.port), profile, unit, [ChannelSpec(channel=0)]
            )
            for unit in (1, 2, 3)
        ]
        readers.append(
            DIModuleReader(
                bus.get_tcp("127.0.0.1", sim.port),
                profile,
                1,
                [ChannelSpec(channel=7, mode="latch")],
            )
        )
        assert len({id(r.connection) for r in readers}) == 1
        sim.set_input(0, True, unit=2)
        for _ in range(10):  # concurrent reads serialise on the connection's lock
            readings = await asyncio.gather(*(r.read() for r in readers))
        assert [r.channels[0].active for r in readings[:3]] == [False, True, False]
        assert len(bus.connections) == 1
        assert sim.connections_accepted == 1
        assert sim.open_connections == 1
        sock = readers[0].connection.client.ctx.transport.get_extra_info("socket")
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        assert bus.get_tcp("127.0.0.1", sim.port, timeout=TIMEOUT) is readers[0].connection
        with pytest.raises(ValueError, match="timeout"):
            bus.get_tcp("127.0.0.1", sim.port, timeout=TIMEOUT * 2)


# --------------------------------------------------------------------------- faults


async def test_unplug_fails_fast_then_recovers_and_counts_presses_made_meanwhile():
    async with rig("adam-6050", [ChannelSpec(channel=0, mode="counter")]) as (sim, _, reader):
        await reader.read()
        await sim.unplug()
        started = time.monotonic()
        with pytest.raises(DeviceUnreachable):
            await reader.read()
        assert time.monotonic() - started < TIMEOUT
        with pytest.raises(DeviceUnreachable):  # refused, then back-off
            await reader.read()
        await sim.press(0, 0.001)  # the module counts while the network is down
        await sim.press(0, 0.001)
        await sim.plug()
        reading = await read_until(reader, lambda r: True)
        assert reading.channels[0].pulses == 2


async def test_silent_module_times_out_then_recovers():
    async with rig("adam-6050", [ChannelSpec(channel=0, mode="latch")]) as (sim, _, reader):
        await reader.read()
        await sim.unplug("silent")
        await sim.press(0, 0.001)
        started = time.monotonic()
        with pytest.raises(DeviceTimeout):
            await reader.read()
        assert TIMEOUT * 0.9 < time.monotonic() - started < TIMEOUT * 3
        await sim.plug()
        reading = await read_until(reader, lambda r: True)
        assert reading.channels[0].pulses == 1  # the latch kept the press


async def test_exception_response():
    async with rig("adam-6050", [ChannelSpec(channel=0)]) as (sim, _bus, reader):
        sim.exception_mode(2)
        with pytest.raises(DeviceExceptionResponse) as info:
            await reader.read()
        assert info.value.code == 2
        assert info.value.function_code == 1
        sim.normal_mode()
        assert (await reader.read()).channels[0].active is False


@pytest.mark.parametrize("kind", ["noise", "truncated"])
async def test_garbage_is_a_protocol_error_not_a_hang(kind):
    async with rig("adam-6050", [ChannelSpec(channel=0, mode="latch")]) as (sim, _, reader):
        sim.garbage_mode(kind)
        started = time.monotonic()
        with pytest.raises(DeviceProtocolError):
            await reader.read()
        assert time.monotonic() - started < TIMEOUT  # detected from the bytes, no timeout
        sim.normal_mode()
        await read_until(reader, lambda r: True)


async def test_cancellation_stays_cancellation():
    async with rig("adam-6050", [ChannelSpec(channel=0)]) as (sim, _bus, reader):
        await sim.unplug("silent")
        task = asyncio.create_task(reader.read())
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await sim.plug()
        await read_until(reader, lambda r: True)


async def test_link_transitions_are_logged_once_each(caplog):
    caplog.set_level(logging.DEBUG, logger="drivers.modbus.bus")
    async with rig("adam-6050", [ChannelSpec(channel=0)]) as (sim, _bus, reader):
        await reader.read()
        await sim.unplug()
        failures = 0
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:  # many attempts while down
            with contextlib.suppress(DeviceUnreachable):
                await reader.read()
            failures += 1
            await asyncio.sleep(0.01)
        await sim.plug()
        await read_until(reader, lambda r: True)
        conn = reader.connection
        assert conn.state == "up"
    ours = [r for r in caplog.records if r.name == "drivers.modbus.bus"]
    downs = [r for r in ours if r.levelno == logging.WARNING]
    ups = [r for r in ours if r.levelno == logging.INFO]
    assert failures > 5
    assert len(downs) == 1
    assert "down" in downs[0].getMessage()
    assert len(ups) == 1
    assert "up again" in ups[0].getMessage()


def test_backoff_is_capped_jittered_and_grows():
    backoff = Backoff(initial=0.1, maximum=5.0)
    rng = random.Random(3)
    delays = [[backoff.delay(n, rng) for _ in range(200)] for n in range(1, 12)]
    for n, samples in enumerate(delays, start=1):
        nominal = min(5.0, 0.1 * 2 ** (n - 1))
        assert all(nominal * 0.5 <= d <= nominal for d in samples)
        assert len(set(samples)) > 1  # jittered
    assert max(delays[-1]) <= 5.0
    with pytest.raises(ValueError, match="back-off"):
        Backoff(initial=1.0, maximum=0.5)


# --------------------------------------------------------------------------- configuration


async def test_reader_rejects_what_the_module_cannot_do():
    async with ModbusBus() as bus:
        conn = bus.get_tcp("127.0.0.1", 1)
        with pytest.raises(ValueError, match="counter mode"):
            DIModuleReader(
                conn, load_profile("moxa-e1210"), 1, [ChannelSpec(channel=0, mode="latch")]
            )
        with pytest.raises(ValueError, match=r"channels 0\.\.11"):
            DIModuleReader(conn, load_profile("adam-6050"), 1, [ChannelSpec(channel=12)])
        with pytest.raises(ValueError, match="twice"):
            DIModuleReader(
                conn, load_profile("adam-6050"), 1, [ChannelSpec(channel=1), ChannelSpec(channel=1)]
            )
        with pytest.raises(ValueError, match="end-of-line"):
            DIModuleReader(conn, load_profile("adam-6050"), 1, [ChannelSpec(channel=0, mode="eol")])
    with pytest.raises(ValueError, match="mode 'eol'"):
        ChannelSpec(channel=0, eol=EolParams())


# --------------------------------------------------------------------------- latch clear failures


class FlakyConnection:
    """Stands in for a ModbusConnection: latch 0 is set, the first clear times out."""

    def __init__(self, clear_error: ModbusDeviceError) -> None:
        self.latched = True
        self.clear_error: ModbusDeviceError | None = clear_error
        self.transactions = 0

    async def read_bits(self, table, address, count, unit):
        self.transactions += 1
        if address == 35:  # ADAM latch coils
            return [self.latched] + [False] * (count - 1)
        return [False] * count

    async def read_registers(self, table, address, count, unit):
        raise AssertionError("not used")

    async def write_coil(self, address, value, unit):
        self.transactions += 1
        if self.clear_error is not None:
            error, self.clear_error = self.clear_error, None
            if error.request_sent and not isinstance(error, DeviceExceptionResponse):
                self.latched = False  # the write arrived; only the answer was lost
            raise error
        self.latched = False


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        # Outcome unknown: counted now (at-least-once).
        (DeviceTimeout("lost reply"), 1),
        # Never sent / refused: the latch is still set and counted by the next read.
        (DeviceUnreachable("down", request_sent=False), 1),
        (DeviceExceptionResponse(4), 1),
    ],
    ids=["timeout", "unsent", "refused"],
)
async def test_failed_latch_clear_never_loses_the_press(error, expected):
    conn = FlakyConnection(error)
    reader = DIModuleReader(
        conn,  # type: ignore[arg-type]
        load_profile("adam-6050"),
        1,
        [ChannelSpec(channel=0, mode="latch")],
    )
    with pytest.raises(type(error)):
        await reader.read()
    assert (await reader.read()).channels[0].pulses == expected
    assert (await reader.read()).channels[0].pulses == 0


VOLTAGE_PROFILE = """\
vendor: Acme
model: AI-4
channels: 4
capabilities:
  state: {table: discrete_input, address: 0}
  analog:
    read: {modicon: "30101", stride: 1}
    quantity: voltage
    scale: 0.001
unavailable: {latch: none, counter: none}
"""


class AnalogConnection:
    """Stands in for a ModbusConnection: input registers from a dict, counted."""

    def __init__(self, registers: dict[int, int]) -> None:
        self.registers = registers
        self.transactions = 0
        self.asked: list[tuple[str, int, int]] = []

    async def read_registers(self, table, address, count, unit):
        self.transactions += 1
        self.asked.append((table, address, count))
        return [self.registers.get(address + i, 0) for i in range(count)]


async def test_eol_from_a_voltage_input(tmp_path):
    path = tmp_path / "ai.yaml"
    path.write_text(VOLTAGE_PROFILE)
    profile = load_profile(path)
    with pytest.raises(ValueError, match="supply_v"):
        DIModuleReader(AnalogConnection({}), profile, 1, [ChannelSpec(channel=0, mode="eol")])  # type: ignore[arg-type]
    conn = AnalogConnection({100: 4000, 101: 5000, 103: 8000})
    eol = EolParams(scheme="galaxy", supply_v=10.0, series_ohm=1000.0)
    reader = DIModuleReader(
        conn,  # type: ignore[arg-type]
        profile,
        1,
        [ChannelSpec(channel=ch, mode="eol", eol=eol) for ch in (0, 1, 3)],
    )
    reading = await reader.read()
    assert [reading.channels[ch].eol for ch in (0, 1, 3)] == [
        EolState.SHORT,  # 4.0 V -> 667 ohm
        EolState.NORMAL,  # 5.0 V -> 1 k
        EolState.ALARM,  # 8.0 V -> 4 k
    ]
    assert reading.channels[1].ohms == pytest.approx(1000.0)
    assert conn.asked == [("input_register", 100, 4)]  # one request for all three


async def test_eol_four_state_module(tmp_path: Path) -> None:
    """A module that classifies its loops itself and reports a state code per channel (a
    4-state EOL input). The simulated ZLAN's loop registers serve as that code register: the
    bytes on the wire are real, only the meaning comes from this profile."""
    base = load_profile("zlan6042-res").model_dump(mode="json", exclude_none=True)
    base["model"] = "4-state EOL module (test)"
    base["capabilities"]["analog"] = {
        "read": base["capabilities"]["analog"]["read"],
        "quantity": "state",
        "state_codes": {0: "normal", 1: "alarm", 2: "cut", 3: "short"},
    }
    path = tmp_path / "four-state.yaml"
    path.write_text(yaml.safe_dump(base, allow_unicode=True))
    profile = load_profile(path)
    specs = [ChannelSpec(channel=0, mode="eol")]
    async with (
        DIModuleSimulator("zlan6042-res") as sim,
        ModbusBus(timeout=TIMEOUT, backoff=FAST_BACKOFF) as bus,
    ):
        reader = DIModuleReader(bus.get_tcp("127.0.0.1", sim.port), profile, 1, specs)
        seen = []
        for code in (0, 1, 2, 3, 7):
            sim.set_resistance(0, code)
            seen.append((await reader.read()).channels[0].eol)
        assert seen == [
            EolState.NORMAL,
            EolState.ALARM,
            EolState.CUT,
            EolState.SHORT,
            EolState.UNKNOWN,
        ]
