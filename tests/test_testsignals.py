"""Periodic test signals: to the police as Contact ID 602 / SIA RP; a missed one is a fault at
the centre (``test_missed``) and its restore when the tests come back."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from contract.config import (
    ConfigError,
    Dc09Config,
    EdgeConfig,
    EdgeTestSignalConfig,
    GatewayConfig,
    GatewayTestSignalsConfig,
    parse_config,
)
from contract.models import utcnow
from edge.daemon import event_listener_queue, run_edge
from gateway.relay.dc09 import event_code
from gateway.service import GatewayRuntime, run_gateway
from gateway.store.models import AlarmRow, EventRow
from gateway.testsignals import rows
from simulators.modbus_io import DIModuleSimulator
from simulators.police import PoliceReceiver
from tests.edgekit import edge_config
from tests.gwkit import CAMPUS, gateway_config, make_event, publish_event
from tests.gwkit import client as gwkit_client
from tests.helpers import Mosquitto, wait_for

INTERVAL = 1.0
GRACE = 0.5


def fast_edge(tmp: Path, broker: int, modbus: int) -> EdgeConfig:
    inputs = [
        {"channel": 0, "id": "btn-guard", "kind": "panic", "alarm_zone": 1},
        {"channel": 5, "id": "test-btn", "kind": "test", "alarm_zone": 6},
    ]
    cfg = edge_config(tmp, broker, modbus, inputs=inputs)
    # Below the configurable minimum (60 s) on purpose: seconds, not days, in a test.
    fast = EdgeTestSignalConfig.model_construct(enabled=True, interval=INTERVAL, first_after=0.1)
    return cfg.model_copy(update={"test_signal": fast})


def fast_gateway(tmp: Path, broker: int, police: int, db_url: str | None = None) -> GatewayConfig:
    cfg = gateway_config(tmp, broker, police, db_url=db_url)
    watch = GatewayTestSignalsConfig.model_construct(
        expect=True, interval=INTERVAL, grace=GRACE, relay_missed=True, start=None
    )
    return cfg.model_copy(update={"test_signals": watch})


def at_police(police: PoliceReceiver, cid: int, qualifier: int = 1) -> int:
    return sum(
        1
        for m in police.messages
        if m.contact_id and m.contact_id.code == cid and m.contact_id.qualifier == qualifier
    )


async def missed_events(gw: GatewayRuntime, restore: bool) -> list[EventRow]:
    async with gw.store.session() as s:
        q = select(EventRow).where(EventRow.kind == "test_missed", EventRow.restore == restore)
        return list((await s.execute(q)).scalars())


def test_codes_periodic_manual_missed() -> None:
    cfg = Dc09Config.model_validate({"primary": {"host": "127.0.0.1", "port": 1}})
    periodic = make_event(kind="test", severity="low", detail={"periodic": True})
    code = event_code(cfg, periodic)
    assert code is not None and (code.cid, code.sia) == (602, "RP")
    manual = make_event(kind="test", severity="low", detail={"selftest_id": "x" * 26})
    code = event_code(cfg, manual)
    assert code is not None and (code.cid, code.sia) == (601, "RX")
    assert event_code(cfg, make_event(kind="test", severity="info", restore=True)) is None
    code = event_code(cfg, make_event(kind="test_missed", severity="high"))
    assert code is not None and (code.cid, code.sia, code.sia_restore) == (350, "YC", "YK")
    # relay_missed: false keeps test_missed from the police (the technician still has it).
    gw = parse_config(
        {
            "campuses": [{"id": CAMPUS, "account": "1234"}],
            "dc09": {"primary": {"host": "127.0.0.1", "port": 1}},
            "test_signals": {"relay_missed": False},
        },
        GatewayConfig,
        "gw",
    )
    assert gw.dc09 is not None
    assert event_code(gw.dc09, make_event(kind="test_missed", severity="high")) is None
    assert event_code(gw.dc09, periodic) is not None


def test_config_limits(tmp_path: Path) -> None:
    base = {"campus": {"id": CAMPUS, "name": "x"}}
    with pytest.raises(ConfigError, match=r"test_signal\.interval"):
        parse_config({**base, "test_signal": {"interval": 10}}, EdgeConfig, "edge.yaml")
    cfg = parse_config(base, EdgeConfig, "edge.yaml")
    assert cfg.test_signal.enabled and cfg.test_signal.interval == 86400
    dev = {
        "id": "di-1",
        "profile": "adam-6050",
        "host": "127.0.0.1",
        "inputs": [{"channel": 0, "id": "b", "kind": "panic"}],
        "test_output": {"channel": 0},
    }
    with pytest.raises(ConfigError, match="kind: test"):
        parse_config({**base, "devices": [dev]}, EdgeConfig, "edge.yaml")
    gw = parse_config({"campuses": [{"id": CAMPUS, "account": "1234"}]}, GatewayConfig, "gw")
    assert (gw.test_signals.interval, gw.test_signals.grace) == (86400, 600)


async def test_periodic_test_reaches_police_as_602(mosquitto: Mosquitto, tmp_path: Path) -> None:
    async with (
        DIModuleSimulator("adam-6050") as sim,
        PoliceReceiver(udp=False) as police,
        run_gateway(fast_gateway(tmp_path, mosquitto.port, police.tcp_port)) as gw,
    ):
        await wait_for(gw.mqtt.connected.is_set)
        async with run_edge(fast_edge(tmp_path, mosquitto.port, sim.port)) as edge:
            events = event_listener_queue(edge)
            await police.wait_for(lambda: at_police(police, 602) >= 2, timeout=10)
            first = await asyncio.wait_for(events.get(), 5)
            assert first.kind == "test" and first.detail["periodic"] is True
            assert first.detail["interval_s"] == INTERVAL
            sia = [m.code for m in police.messages if m.contact_id and m.contact_id.code == 602]
            assert set(sia) == {"RP"}
            # A test button on a DI module: a manual test (601), its release not sent.
            await sim.press(5, 0.05)
            await police.wait_for(lambda: at_police(police, 601) == 1)
            assert at_police(police, 601, 3) == 0
            assert not [m for m in police.messages if m.code == "PA"]
            (row,) = await rows(gw.store)
            assert row.campus == CAMPUS and not row.missed and row.interval_s == INTERVAL
            assert gw.testsignals is not None and gw.testsignals.raised == 0


async def test_missed_test_raised_and_restored(
    mosquitto: Mosquitto, tmp_path: Path, db_url: str
) -> None:
    async with (
        DIModuleSimulator("adam-6050") as sim,
        PoliceReceiver(udp=False) as police,
        run_gateway(fast_gateway(tmp_path, mosquitto.port, police.tcp_port, db_url)) as gw,
    ):
        await wait_for(gw.mqtt.connected.is_set)
        # Never heard from: not missed, however long it stays quiet.
        await asyncio.sleep(INTERVAL + GRACE + 0.3)
        assert await rows(gw.store) == [] and not await missed_events(gw, False)
        async with run_edge(fast_edge(tmp_path, mosquitto.port, sim.port)):
            await police.wait_for(lambda: at_police(police, 602) >= 1, timeout=10)
        stopped = utcnow()  # the edge is stopped: no more tests
        missed = await wait_for(
            lambda: missed_events(gw, False), timeout=10, what="test_missed raised"
        )
        assert len(missed) == 1
        (row,) = await rows(gw.store)
        assert row.missed and row.last_at is not None
        late = (missed[0].received_at.replace(tzinfo=stopped.tzinfo) - stopped).total_seconds()
        assert late >= 0  # not before the edge stopped ...
        # ... and only once interval + grace had passed since the last test.
        last = row.last_at.replace(tzinfo=stopped.tzinfo)
        since_last = (missed[0].received_at.replace(tzinfo=stopped.tzinfo) - last).total_seconds()
        assert since_last >= INTERVAL + GRACE - 0.05, since_last

        # For the technician: an alarm record; to the police as communication trouble (350).
        async def relayed() -> bool:
            async with gw.store.session() as s:
                alarm = await s.get(AlarmRow, missed[0].id)
                return alarm is not None and alarm.state == "police_received"

        await wait_for(relayed, timeout=10, what="test_missed at the police")
        await asyncio.sleep(INTERVAL + GRACE)
        assert len(await missed_events(gw, False)) == 1  # raised once, not every check

        # The edge back: its test restores the fault.
        async with run_edge(fast_edge(tmp_path, mosquitto.port, sim.port)):
            restored = await wait_for(
                lambda: missed_events(gw, True), timeout=10, what="test_missed restore"
            )
            assert len(restored) == 1
            (row,) = await rows(gw.store)
            assert not row.missed and row.missed_since is None
            await police.wait_for(lambda: at_police(police, 350, 3) >= 1, timeout=10)


async def test_an_edge_clock_behind_is_not_a_silent_campus(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """An edge whose clock is an hour behind (a dead clock battery, no NTP) sends its periodic
    tests on time; they carry its wrong time. The centre judges silence on its own clock: no
    test is reported missed. (Before, every check found the last test an hour old.)"""
    async with (
        PoliceReceiver(udp=False) as police,
        run_gateway(fast_gateway(tmp_path, mosquitto.port, police.tcp_port)) as gw,
        gwkit_client(mosquitto.port, "edge-behind") as edge,
    ):
        await wait_for(gw.mqtt.connected.is_set)
        behind = timedelta(hours=1)
        for seq in range(1, 9):  # every half interval, for 4 intervals
            test = make_event(
                kind="test",
                severity="low",
                seq=seq,
                ts=utcnow() - behind,
                restore=False,
                detail={"periodic": True, "interval_s": INTERVAL},
            )
            await publish_event(edge, test)
            await asyncio.sleep(INTERVAL / 2)  # the edge's pace
        await police.wait_for(lambda: at_police(police, 602) >= 8, timeout=10)
        assert not await missed_events(gw, False)
        assert gw.testsignals is not None and gw.testsignals.raised == 0
