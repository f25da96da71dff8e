"""The simulator speaks real Modbus: checked with a plain pymodbus client, not our driver."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from simulators.modbus_io import EMULATED_MODELS, DIModuleSimulator, run_modbus_sim
from tests.helpers import raw_modbus_client, wait_for


async def test_binds_port_zero_and_reports_the_port():
    async with DIModuleSimulator("adam-6050") as a, DIModuleSimulator("adam-6050") as b:
        assert a.port > 0
        assert b.port > 0
        assert a.port != b.port
        async with raw_modbus_client(a.port) as client:
            assert not (await client.read_coils(0, count=12, device_id=1)).isError()


async def test_adam_press_sets_state_latch_and_counter():
    async with DIModuleSimulator("adam-6050") as sim, raw_modbus_client(sim.port) as client:
        sim.set_input(3, True)
        assert (await client.read_coils(0, count=12, device_id=1)).bits[3] is True
        assert (await client.read_discrete_inputs(3, count=1, device_id=1)).bits[0] is True
        sim.set_input(3, False)
        await sim.press(3, 0.005)
        # Spec: latch 00036+4ch -> coil 35+12; counter 40001+2ch low word first -> HR 6, 7.
        assert (await client.read_coils(47, count=1, device_id=1)).bits[0] is True
        assert list((await client.read_holding_registers(6, count=2, device_id=1)).registers) == [
            2,
            0,
        ]
        # Clearing: write the latch coil (value unverified on hardware; both clear here).
        await client.write_coil(47, False, device_id=1)
        assert (await client.read_coils(47, count=1, device_id=1)).bits[0] is False
        assert sim.latched(3) is False
        # Clear counter 00034+4ch.
        await client.write_coil(45, True, device_id=1)
        assert sim.counter(3) == 0


async def test_moxa_counter_word_order_packed_word_and_reset_rules():
    async with DIModuleSimulator("moxa-e1210") as sim, raw_modbus_client(sim.port) as client:
        sim.set_counter(2, 0x0001_FFFF)
        await sim.press(2, 0.005)
        sim.set_input(0, True)
        # 30017+2ch high word, 30018+2ch low word: channel 2 at IR 20, 21.
        regs = (await client.read_input_registers(20, count=2, device_id=1)).registers
        assert list(regs) == [0x0002, 0x0000]
        assert (await client.read_input_registers(48, count=1, device_id=1)).registers[0] == 0b1
        refused = await client.write_coil(272 + 2, False, device_id=1)
        assert refused.isError()
        assert refused.exception_code == 3  # manual: writing 0 gives exception 03
        assert not (await client.write_coil(272 + 2, True, device_id=1)).isError()
        assert sim.counter(2) == 0


async def test_zlan_refuses_fc02_and_reports_ohms():
    async with DIModuleSimulator("zlan6042-res") as sim, raw_modbus_client(sim.port) as client:
        sim.set_input(1, True)
        assert (await client.read_coils(0, count=4, device_id=1)).bits[:4] == [
            False,
            True,
            False,
            False,
        ]
        assert (await client.read_discrete_inputs(0, count=4, device_id=1)).exception_code == 1
        sim.set_resistance(0, 1234.4)
        sim.set_resistance(1, float("inf"))
        regs = (await client.read_input_registers(0, count=2, device_id=1)).registers
        assert list(regs) == [1234, 10000]


async def test_et2260_latches_both_edges_and_clears_all():
    async with DIModuleSimulator("icpdas-et2260") as sim, raw_modbus_client(sim.port) as client:
        await sim.press(0, 0.001)
        await sim.press(4, 0.001)
        bits = (await client.read_discrete_inputs(0x20, count=0x26, device_id=1)).bits
        assert (bits[0], bits[4], bits[0x20], bits[0x24]) == (True, True, True, True)
        await client.write_coil(0x20, True, device_id=1)
        bits = (await client.read_discrete_inputs(0x20, count=6, device_id=1)).bits
        assert not any(bits[:6])


async def test_unknown_unit_gets_gateway_exception():
    async with (
        DIModuleSimulator("adam-6050", units=(1, 2)) as sim,
        raw_modbus_client(sim.port) as client,
    ):
        assert not (await client.read_coils(0, count=1, device_id=2)).isError()
        assert (await client.read_coils(0, count=1, device_id=9)).exception_code == 0x0B


async def test_last_flip_timestamps_the_input_change():
    async with DIModuleSimulator("adam-6050") as sim:
        before = time.monotonic()
        sim.set_input(5, True)
        flip = sim.last_flip
        assert flip is not None
        assert (flip.channel, flip.active, flip.unit) == (5, True, 1)
        assert before <= flip.monotonic <= time.monotonic()
        assert abs(flip.wall_time - time.time()) < 5
        sim.set_input(5, True)  # no change, no new flip
        assert sim.last_flip is flip


async def test_fault_knobs():
    async with DIModuleSimulator("adam-6050") as sim:
        async with raw_modbus_client(sim.port) as client:
            sim.exception_mode(2)
            assert (await client.read_coils(0, count=1, device_id=1)).exception_code == 2
            sim.normal_mode()
            assert not (await client.read_coils(0, count=1, device_id=1)).isError()
        port = sim.port
        await sim.unplug()
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", port)
        await sim.plug()
        assert sim.port == port
        async with raw_modbus_client(port) as client:
            assert not (await client.read_coils(0, count=1, device_id=1)).isError()


async def test_rejects_unknown_model_and_bad_arguments():
    with pytest.raises(ValueError, match="adam-6050"):
        DIModuleSimulator("siemens-s7")
    with pytest.raises(ValueError, match="units"):
        DIModuleSimulator("adam-6050", units=(1, 1))
    async with DIModuleSimulator("adam-6050") as sim:
        with pytest.raises(ValueError, match="channel"):
            sim.set_input(12, True)
        with pytest.raises(ValueError, match="unit"):
            sim.set_input(0, True, unit=5)
    assert {"adam-6050", "moxa-e1210", "zlan6042-res"} <= set(EMULATED_MODELS)


async def test_http_control_endpoint():
    async with (
        DIModuleSimulator("adam-6050", http_port=0) as sim,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{sim.http_port}") as http,
    ):
        assert (await http.post("/press", params={"channel": 2, "ms": 5})).status_code == 200
        assert sim.latched(2)
        assert sim.counter(2) == 1
        state = (await http.post("/set", params={"channel": 4, "active": 1})).json()
        assert state["units"]["1"]["inputs"][4] == 1
        assert sim.level(4)
        state = (await http.get("/state")).json()
        assert state["last_flip"]["channel"] == 4
        assert state["port"] == sim.port
        assert (await http.post("/fault", params={"mode": "exception", "code": 6})).json()[
            "exception"
        ] == 6
        assert (await http.post("/fault", params={"mode": "normal"})).json()["exception"] is None
        assert (await http.get("/press")).status_code == 405
        assert (await http.post("/nope")).status_code == 404
        bad = await http.post("/press", params={"channel": 99})
        assert bad.status_code == 400
        assert "channel" in bad.json()["error"]


async def test_run_modbus_sim_serves_until_cancelled():
    ready: asyncio.Future[DIModuleSimulator] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(
        run_modbus_sim("moxa-e1210", "127.0.0.1", 0, None, started=ready.set_result)
    )
    sim = await asyncio.wait_for(ready, 5)
    async with raw_modbus_client(sim.port) as client:
        assert not (await client.read_discrete_inputs(0, count=16, device_id=1)).isError()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await wait_for(lambda: sim.open_connections == 0)
