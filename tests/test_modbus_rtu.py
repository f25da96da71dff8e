"""Modbus RTU over a socat pty pair: the simulator as an RS-485 line, the reader on the other end.

A pty ignores the baud rate: these tests check framing, unit addressing and the
logic, not line timing.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from drivers.modbus import (
    Backoff,
    ChannelSpec,
    DeviceProtocolError,
    DeviceTimeout,
    DIModuleReader,
    EolParams,
    EolState,
    ModbusBus,
    ModbusDeviceError,
    load_profile,
)
from simulators.modbus_io import DIModuleSimulator
from tests.helpers import wait_for

pytestmark = pytest.mark.skipif(
    shutil.which("socat") is None, reason="socat not installed: no pty pair for the RTU tests"
)

TIMEOUT = 0.3


@pytest.fixture
async def pty_pair(tmp_path: Path) -> AsyncIterator[tuple[str, str]]:
    """``socat -d -d pty,raw,echo=0,link=DEV pty,raw,echo=0,link=HOST`` (specs/modbus.md)."""
    dev, host = tmp_path / "dev", tmp_path / "host"
    proc = await asyncio.create_subprocess_exec(
        "socat",
        "-d",
        "-d",
        f"pty,raw,echo=0,link={dev}",
        f"pty,raw,echo=0,link={host}",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        await wait_for(lambda: dev.exists() and host.exists())
        yield str(dev), str(host)
    finally:
        if proc.returncode is None:
            proc.terminate()
        await proc.wait()


@contextlib.asynccontextmanager
async def line(
    pty_pair: tuple[str, str], profile: str, units: tuple[int, ...] = (1,)
) -> AsyncIterator[tuple[DIModuleSimulator, ModbusBus]]:
    dev, _host = pty_pair
    async with (
        DIModuleSimulator(profile, serial_port=dev, units=units) as sim,
        ModbusBus(timeout=TIMEOUT, backoff=Backoff(0.02, 0.1)) as bus,
    ):
        yield sim, bus


async def test_two_units_on_one_line_share_one_serial_client(pty_pair):
    profile = load_profile("zlan6042")
    async with line(pty_pair, "zlan6042", units=(1, 2)) as (sim, bus):
        host = pty_pair[1]
        readers = [
            DIModuleReader(bus.get_rtu(host, 9600), profile, unit, [ChannelSpec(channel=2)])
            for unit in (1, 2)
        ]
        assert readers[0].connection is readers[1].connection
        sim.set_input(2, True, unit=2)
        readings = await asyncio.gather(*(r.read() for r in readers))
        assert [r.channels[2].active for r in readings] == [False, True]
        assert len(bus.connections) == 1
        with pytest.raises(ValueError, match="9600"):
            bus.get_rtu(host, 19200)


async def test_latch_presses_over_rtu_are_all_counted(pty_pair):
    # The ADAM logic served over an RS-485 line: exercises write + read framing.
    async with line(pty_pair, "adam-6050") as (sim, bus):
        reader = DIModuleReader(
            bus.get_rtu(pty_pair[1]),
            load_profile("adam-6050"),
            1,
            [ChannelSpec(channel=1, mode="latch"), ChannelSpec(channel=2, mode="counter")],
        )
        await reader.read()
        total = {1: 0, 2: 0}
        for _ in range(10):
            await sim.press(1, 0.005)
            await sim.press(2, 0.005)
            for ch, r in (await reader.read()).channels.items():
                total[ch] += r.pulses
        assert total == {1: 10, 2: 10}
        assert not sim.latched(1)


async def test_eol_over_rtu(pty_pair):
    async with line(pty_pair, "zlan6042-res") as (sim, bus):
        reader = DIModuleReader(
            bus.get_rtu(pty_pair[1]),
            load_profile("zlan6042-res"),
            1,
            [ChannelSpec(channel=0, mode="eol", eol=EolParams(scheme="galaxy"))],
        )
        for ohms, state in ((1000, EolState.NORMAL), (2200, EolState.ALARM), (50, EolState.SHORT)):
            sim.set_resistance(0, ohms)
            assert (await reader.read()).channels[0].eol is state


async def test_absent_unit_times_out_and_the_line_keeps_working(pty_pair):
    profile = load_profile("zlan6042")
    async with line(pty_pair, "zlan6042", units=(1,)) as (_sim, bus):
        conn = bus.get_rtu(pty_pair[1])
        absent = DIModuleReader(conn, profile, 7, [ChannelSpec(channel=0)])
        present = DIModuleReader(conn, profile, 1, [ChannelSpec(channel=0)])
        started = time.monotonic()
        with pytest.raises(DeviceTimeout):
            await absent.read()
        assert time.monotonic() - started < TIMEOUT * 3
        assert (await present.read()).channels[0].active is False


async def test_garbage_and_silence_on_rtu(pty_pair):
    async with line(pty_pair, "zlan6042") as (sim, bus):
        reader = DIModuleReader(
            bus.get_rtu(pty_pair[1]), load_profile("zlan6042"), 1, [ChannelSpec(channel=0)]
        )
        await reader.read()
        sim.garbage_mode("noise")
        with pytest.raises(DeviceProtocolError):
            await reader.read()
        sim.normal_mode()
        await sim.unplug()  # serial: goes silent
        with pytest.raises(DeviceTimeout):
            await reader.read()
        await sim.plug()
        deadline = time.monotonic() + 3
        while True:
            try:
                await reader.read()
                break
            except ModbusDeviceError:
                assert time.monotonic() < deadline
