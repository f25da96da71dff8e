"""The bollard simulator speaks real Modbus: checked with a plain pymodbus client at the
addresses written out here from the generic-plc convention, not with our driver."""

from __future__ import annotations

import asyncio
import contextlib
import textwrap

import httpx
import pytest

from drivers.modbus.bollard_profile import load_bollard_profile
from simulators.bollard import BollardSimulator, run_bollard_sim
from tests.helpers import raw_modbus_client, wait_for

TRAVEL = 0.4
EFO = 0.1

# generic-plc, bollard i at +16 in every table (written out, not loaded from the profile).
DI_RAISED, DI_LOWERED, DI_UP, DI_DOWN, DI_MOVING = 0, 1, 2, 3, 4
DI_MANUAL, DI_MAINT, DI_IMPACT, DI_LOOP, DI_MAINS, DI_BATTERY = 5, 6, 7, 8, 9, 10
IR_FAULT, IR_PRESSURE, IR_TEMP, IR_CYCLES_HIGH, IR_CYCLES_LOW = 0, 1, 2, 3, 4
COIL_RAISE, COIL_LOWER, COIL_STOP, COIL_EFO, COIL_CLEAR_IMPACT = 0, 1, 2, 3, 4
BLOCK = 16


async def di(client, bollard: int = 0) -> list[int]:
    response = await client.read_discrete_inputs(BLOCK * bollard, count=11, device_id=1)
    assert not response.isError(), response
    return [int(b) for b in response.bits[:11]]


async def ir(client, bollard: int = 0) -> list[int]:
    response = await client.read_input_registers(BLOCK * bollard, count=5, device_id=1)
    assert not response.isError(), response
    return list(response.registers)


async def pulse(client, coil: int, bollard: int = 0) -> None:
    response = await client.write_coil(BLOCK * bollard + coil, True, device_id=1)
    assert not response.isError(), response
    assert response.bits[0] is True  # the echo is what was written


@contextlib.asynccontextmanager
async def rig(**kwargs):
    kwargs = {"travel_time": TRAVEL, "efo_travel_time": EFO, **kwargs}
    async with (
        BollardSimulator("generic-plc", **kwargs) as sim,
        raw_modbus_client(sim.port) as client,
    ):
        yield sim, client


async def test_binds_port_zero_and_starts_lowered_with_power_and_no_alarm():
    async with BollardSimulator() as a, BollardSimulator() as b:
        assert a.port > 0
        assert b.port > 0
        assert a.port != b.port
        async with raw_modbus_client(a.port) as client:
            for bollard in (0, 1):
                bits = await di(client, bollard)
                assert bits == [0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 1]
                # 150.0 bar and 20.0 degC at 0.1 per count; no fault, no cycles.
                assert await ir(client, bollard) == [0, 1500, 200, 0, 0]


async def test_raise_travels_then_makes_the_raised_limit():
    async with rig() as (sim, client):
        await pulse(client, COIL_RAISE)
        command = sim.last_command
        assert command is not None
        assert (command.bollard, command.command, command.accepted) == (0, "raise", True)
        # The command coil reads back 0: the controller cleared the pulse.
        assert (await client.read_coils(0, count=1, device_id=1)).bits[0] is False
        bits = await di(client)
        assert (bits[DI_RAISED], bits[DI_LOWERED]) == (0, 0)
        assert (bits[DI_MOVING], bits[DI_UP], bits[DI_DOWN]) == (1, 1, 0)
        assert await di(client, 1) == [0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 1]  # the other one still
        await wait_for(lambda: sim.state(0).raised_limit, TRAVEL * 3)
        state = sim.state(0)
        assert state.limit_reached_at is not None
        assert state.limit_reached_at - command.monotonic == pytest.approx(TRAVEL, abs=0.02)
        bits = await di(client)
        assert (bits[DI_RAISED], bits[DI_LOWERED], bits[DI_MOVING], bits[DI_UP]) == (1, 0, 0, 0)
        registers = await ir(client)
        assert (registers[IR_CYCLES_HIGH], registers[IR_CYCLES_LOW]) == (0, 1)
        assert registers[IR_TEMP] > 200  # the motor warmed up


async def test_lower_stop_midway_and_efo_speed():
    async with rig() as (sim, client):
        await pulse(client, COIL_RAISE)
        await wait_for(lambda: sim.state(0).position > 0.3, TRAVEL * 3)
        await pulse(client, COIL_STOP)
        stopped = sim.state(0)
        assert 0.3 < stopped.position < 1.0
        bits = await di(client)
        assert (bits[DI_RAISED], bits[DI_LOWERED], bits[DI_MOVING]) == (0, 0, 0)
        await pulse(client, COIL_LOWER)
        assert (await di(client))[DI_DOWN] == 1
        await wait_for(lambda: sim.state(0).lowered_limit, TRAVEL * 3)
        lowered_at = sim.state(0).limit_reached_at
        assert lowered_at is not None
        assert sim.state(0).cycles == 0  # no completed raise yet
        await pulse(client, COIL_EFO)
        efo = sim.last_command
        assert efo is not None
        await wait_for(lambda: sim.state(0).raised_limit, TRAVEL * 3)
        reached = sim.state(0).limit_reached_at
        assert reached is not None
        assert reached - efo.monotonic == pytest.approx(EFO, abs=0.02)


async def test_raise_refused_while_the_loop_is_occupied_but_not_efo():
    async with rig() as (sim, client):
        sim.set_vehicle_loop(0, True)
        await pulse(client, COIL_RAISE)
        refused = sim.last_command
        assert refused is not None
        assert not refused.accepted
        assert "loop" in refused.reason
        bits = await di(client)
        assert (bits[DI_LOOP], bits[DI_MOVING], bits[DI_LOWERED]) == (1, 0, 1)
        await pulse(client, COIL_EFO)
        assert sim.state(0).efo
        await wait_for(lambda: sim.state(0).raised_limit, TRAVEL * 3)


async def test_loop_occupied_during_a_raise_stops_it():
    async with rig() as (sim, client):
        await pulse(client, COIL_RAISE)
        await wait_for(lambda: sim.state(0).position > 0.2, TRAVEL * 3)
        sim.set_vehicle_loop(0, True)
        state = sim.state(0)
        assert not state.moving
        assert not state.raised_limit


async def test_jam_runs_the_motor_but_never_makes_the_limit():
    async with rig() as (sim, client):
        sim.jam(0)
        await pulse(client, COIL_RAISE)
        # Stalls 10 % short of the limit, motor still running.
        await wait_for(lambda: sim.state(0).position >= 0.9, TRAVEL * 3)
        bits = await di(client)
        assert (bits[DI_RAISED], bits[DI_LOWERED], bits[DI_MOVING]) == (0, 0, 1)
        assert sim.state(0).position == pytest.approx(0.9)
        sim.jam(0, False)
        await wait_for(lambda: sim.state(0).raised_limit, TRAVEL * 3)


async def test_fault_knobs_show_in_the_map():
    async with rig() as (sim, client):
        sim.set_fault(1, 42)
        sim.set_both_limits(1)
        sim.inject_impact(1)
        sim.set_mains(1, False)
        sim.set_battery(1, False)
        sim.set_maintenance(1, True)
        sim.set_manual(1, True)
        sim.set_pressure(1, 87.3)
        sim.set_temperature(1, -5.5)
        bits = await di(client, 1)
        assert bits[:2] == [1, 1]  # contradictory limit switches
        assert bits[DI_MANUAL:] == [1, 1, 1, 0, 0, 0]
        registers = await ir(client, 1)
        assert registers[IR_FAULT] == 42
        assert registers[IR_PRESSURE] == 873
        assert registers[IR_TEMP] == 0x10000 - 55  # int16, 0.1 degC
        await pulse(client, COIL_CLEAR_IMPACT, 1)
        assert (await di(client, 1))[DI_IMPACT] == 0
        assert await di(client, 0) == [0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 1]


async def test_pressure_drifts_and_cycles_count_completed_raises():
    async with rig(travel_time=0.1) as (sim, client):
        sim.set_pressure(0, 100.0, drift_bar_per_s=-50.0)  # a leak
        # Well under 95 bar: the register holds tenths, rounded, so 94.96 bar still reads 950.
        await wait_for(lambda: sim.state(0).pressure_bar < 94.5, 2)
        assert (await ir(client))[IR_PRESSURE] < 950
        sim.set_pressure_drift(0, 0.0)
        for _ in range(2):
            await pulse(client, COIL_RAISE)
            await wait_for(lambda: sim.state(0).raised_limit, 2)
            await pulse(client, COIL_LOWER)
            await wait_for(lambda: sim.state(0).lowered_limit, 2)
        await pulse(client, COIL_LOWER)  # already lowered: no travel, no cycle
        state = sim.state(0)
        assert state.cycles == 2
        assert state.motor_temp_c > 20.0 + 3 * 0.8 * 0.9  # four travels warmed it
        sim.set_cycles(0, 0x0001_FFFF)  # just below a word boundary
        await pulse(client, COIL_RAISE)
        await wait_for(lambda: sim.state(0).raised_limit, 2)
        registers = await ir(client)
        assert (registers[IR_CYCLES_HIGH], registers[IR_CYCLES_LOW]) == (2, 0)  # high word first


async def test_power_and_mode_rules():
    async with rig() as (sim, client):
        sim.set_mains(0, False)
        await pulse(client, COIL_RAISE)
        assert sim.last_command is not None
        assert sim.last_command.reason == "no mains"
        await pulse(client, COIL_EFO)  # from the accumulator
        assert sim.state(0).efo
        await pulse(client, COIL_STOP)
        sim.set_battery(0, False)
        await pulse(client, COIL_EFO)
        assert not sim.last_command.accepted
        sim.set_mains(0, True)
        sim.set_manual(0, True)
        await pulse(client, COIL_LOWER)
        assert "manual" in sim.last_command.reason
        record = sim.local_command(0, "lower")  # the key switch at the cabinet
        assert record.accepted
        assert record.local
        assert sim.state(0).direction == -1
        sim.set_manual(0, False)
        sim.set_maintenance(0, True)
        assert not sim.state(0).moving  # manual release stops it
        await pulse(client, COIL_RAISE)
        assert "maintenance" in sim.last_command.reason
        with pytest.raises(ValueError, match="command"):
            sim.local_command(0, "dance")


async def test_non_command_writes_and_unknown_units_are_refused():
    async with rig() as (_sim, client):
        assert (await client.write_coil(5, True, device_id=1)).exception_code == 2
        assert (await client.write_register(0, 1, device_id=1)).exception_code == 2
        assert (await client.read_coils(0, count=1, device_id=9)).exception_code == 0x0B
        # Writing 0 to a command coil is accepted and does nothing.
        assert not (await client.write_coil(COIL_RAISE, False, device_id=1)).isError()


async def test_network_fault_knobs():
    async with rig() as (sim, client):
        sim.exception_mode(4)
        assert (await client.read_discrete_inputs(0, count=1, device_id=1)).exception_code == 4
        sim.normal_mode()
        await pulse(client, COIL_RAISE)
        port = sim.port
        await sim.unplug()
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", port)
        # The bollard carries on while the network is down.
        await wait_for(lambda: sim.state(0).raised_limit, TRAVEL * 3)
        await sim.plug()
        assert sim.port == port
        async with raw_modbus_client(port) as again:
            assert (await di(again))[DI_RAISED] == 1


async def test_custom_profile_with_command_register_status_word_and_low_first_counter(tmp_path):
    path = tmp_path / "site-plc.yaml"
    path.write_text(
        textwrap.dedent("""\
        vendor: Site
        model: S7 block
        max_bollards: 2
        stride: {holding_register: 10}
        signals:
          raised_limit: {table: holding_register, address: 0, bit: 0}
          lowered_limit: {table: holding_register, address: 0, bit: 1}
          mains_ok: {table: holding_register, address: 0, bit: 2, invert: true}
          cycles: {table: holding_register, address: 2, word_order: low_first}
        commands:
          raise: {table: holding_register, address: 1, value: 1}
          lower: {table: holding_register, address: 1, value: 2}
        """)
    )
    async with (
        BollardSimulator(path, bollards=2, travel_time=0.05) as sim,
        raw_modbus_client(sim.port) as client,
    ):
        status = (await client.read_holding_registers(10, count=4, device_id=1)).registers
        assert list(status) == [0b010, 0, 0, 0]  # lowered; "mains failed" bit clear
        assert not (await client.write_register(11, 1, device_id=1)).isError()
        await wait_for(lambda: sim.state(1).raised_limit)
        status = (await client.read_holding_registers(10, count=4, device_id=1)).registers
        assert list(status) == [0b001, 0, 1, 0]
        sim.set_mains(1, False)
        assert (await client.read_holding_registers(10, count=1, device_id=1)).registers[0] == 0b101
        assert not (await client.write_register(11, 7, device_id=1)).isError()  # no such value
        assert sim.state(1).raised_limit
        assert (await client.write_register(12, 1, device_id=1)).exception_code == 2


async def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="bollards"):
        BollardSimulator(bollards=9)
    with pytest.raises(ValueError, match="travel"):
        BollardSimulator(travel_time=0)
    async with BollardSimulator(bollards=1) as sim:
        with pytest.raises(ValueError, match="bollard 1"):
            sim.inject_impact(1)
        with pytest.raises(ValueError, match="fault code"):
            sim.set_fault(0, 70000)


async def test_http_control_endpoint():
    async with (
        BollardSimulator(http_port=0, travel_time=TRAVEL) as sim,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{sim.http_port}") as http,
    ):
        state = (await http.post("/impact", params={"bollard": 1})).json()
        assert state["bollards"][1]["impact"] is True
        state = (await http.post("/loop", params={"bollard": 0, "occupied": 1})).json()
        assert state["bollards"][0]["vehicle_loop"] is True
        assert (await http.post("/jam", params={"bollard": 1})).json()["bollards"][1]["jammed"]
        state = (await http.post("/fault", params={"bollard": 0, "code": 7})).json()
        assert state["bollards"][0]["fault_code"] == 7
        state = (await http.post("/command", params={"bollard": 0, "cmd": "raise"})).json()
        assert state["last_command"]["reason"] == "vehicle loop occupied"
        state = (await http.post("/link", params={"mode": "exception", "code": 6})).json()
        assert state["exception"] == 6
        assert (await http.post("/link", params={"mode": "normal"})).json()["exception"] is None
        state = (await http.get("/state")).json()
        assert state["port"] == sim.port
        assert state["bollards"][0]["lowered_limit"] is True
        assert (await http.get("/impact")).status_code == 405
        assert (await http.post("/nope")).status_code == 404
        bad = await http.post("/impact", params={"bollard": 5})
        assert bad.status_code == 400
        assert "bollard 5" in bad.json()["error"]
        assert (await http.post("/loop", params={"occupied": "maybe"})).status_code == 400


async def test_run_bollard_sim_serves_until_cancelled():
    ready: asyncio.Future[BollardSimulator] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(
        run_bollard_sim("generic-plc", "127.0.0.1", 0, None, bollards=1, started=ready.set_result)
    )
    sim = await asyncio.wait_for(ready, 5)
    async with raw_modbus_client(sim.port) as client:
        assert (await di(client))[DI_LOWERED] == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await wait_for(lambda: sim.open_connections == 0)


def test_profile_object():
    profile = load_bollard_profile("generic-plc")
    assert BollardSimulator(profile, bollards=8).profile is profile
