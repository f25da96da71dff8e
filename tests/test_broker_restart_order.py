"""A device's alarms reach the police in order across a broker restart (issue 11).

Mosquitto 2.0 does not restore shared subscriptions after a restart: what a campus edge publishes
between its reconnect and the gateway's new subscription is acknowledged by the broker and
dropped. The edge sent those events again only after their receipt timeout (10 s), after later
ones of the same button had reached the police (the hour's soak: 137 alarms behind a later one
of their device, over three broker restarts). The edge now sends one event on a new connection
and holds the rest until that event's receipt proves a gateway is listening. Real Mosquitto
(restarted), the edge, the gateway (away across the restart, then back), the DI module simulator
and the DC-09 receiver.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from contract.config import GatewayConfig
from edge.daemon import EdgeRuntime, run_edge
from gateway.service import run_gateway
from simulators.modbus_io import DIModuleSimulator
from simulators.police import PoliceReceiver
from tests.edgekit import edge_config
from tests.faults import gateway_exactly_once
from tests.gwkit import gateway_config
from tests.helpers import Mosquitto, wait_for


async def press(sim: DIModuleSimulator) -> None:
    await sim.press(0, 0.005)
    # The next press only after the edge saw this one (two in one poll are one alarm).
    await wait_for(lambda: not sim.latched(0), timeout=5)


async def first_alarm(
    cfg: GatewayConfig, edge: EdgeRuntime, sim: DIModuleSimulator, police: PoliceReceiver
) -> None:
    """A press through a running gateway to the police; the gateway then goes away."""
    async with run_gateway(cfg) as gw:
        await wait_for(gw.mqtt.connected.is_set)
        await wait_for(edge.uplink.connected.is_set)
        await press(sim)
        await police.wait_for(lambda: len(police.alarms) >= 2, timeout=10)


async def gateway_back_then_press(
    cfg: GatewayConfig, sim: DIModuleSimulator, police: PoliceReceiver
) -> None:
    """The gateway comes back and a button is pressed at once: well before a 10 s resend of
    what the edge sent to nobody. Five presses in all reach the police."""
    async with run_gateway(cfg) as gw:
        await wait_for(gw.mqtt.connected.is_set)
        await press(sim)
        await police.wait_for(lambda: len(police.alarms) >= 10, timeout=30)
        await asyncio.sleep(1.0)  # anything twice or late would show now


def five_once_in_order(tmp_path: Path, police: PoliceReceiver) -> None:
    """Five presses, each an alarm then its restore; through the gateway's records, each police
    message is its alarm, once, and no alarm came after a later one of the button."""
    n, twice, disorder = gateway_exactly_once(tmp_path / "gw" / "campusguard.db", police)
    assert (n, twice) == (5, [])
    assert disorder == [], disorder


async def test_alarms_published_before_the_gateway_resubscribes_keep_their_order(
    tmp_path: Path,
) -> None:
    broker = Mosquitto(tmp_path / "mosquitto")
    broker.start()
    try:
        async with DIModuleSimulator("adam-6050") as sim, PoliceReceiver(udp=False) as police:
            cfg = gateway_config(tmp_path, broker.port, police.tcp_port)
            async with run_edge(edge_config(tmp_path, broker.port, sim.port)) as edge:
                await first_alarm(cfg, edge, sim, police)
                # The gateway is away while the broker restarts: the broker forgets its shared
                # subscription, and the edge is back before the gateway subscribes again.
                broker.stop()
                await wait_for(lambda: not edge.uplink.connected.is_set(), 10, "edge offline")
                broker.start()
                await wait_for(edge.uplink.connected.is_set, 20, "edge back")
                for _ in range(3):
                    await press(sim)
                await asyncio.sleep(0.5)  # what the edge sends now has no subscriber
                await gateway_back_then_press(cfg, sim, police)
    finally:
        broker.stop()
    five_once_in_order(tmp_path, police)


async def test_an_edge_restarted_with_a_backlog_holds_it_until_a_gateway_listens(
    tmp_path: Path,
) -> None:
    """The slow fault suite's "all faults at once": the edge was killed and came back (a new
    process, its first connection) with alarms queued on disk while the broker had restarted
    and the gateway was not subscribed yet; the backlog went to nobody, and came again 10 s
    later behind alarms pressed after it (116 of 587)."""
    broker = Mosquitto(tmp_path / "mosquitto")
    broker.start()
    try:
        async with DIModuleSimulator("adam-6050") as sim, PoliceReceiver(udp=False) as police:
            cfg = gateway_config(tmp_path, broker.port, police.tcp_port)
            ecfg = edge_config(tmp_path, broker.port, sim.port)
            async with run_edge(ecfg) as edge:
                await first_alarm(cfg, edge, sim, police)
                broker.stop()
                await wait_for(lambda: not edge.uplink.connected.is_set(), 10, "edge offline")
                for _ in range(3):
                    await press(sim)  # queued on the edge's disk
                await wait_for(lambda: edge.outbox.depth >= 6, 5, "the backlog on disk")
            # A new edge process on the same disk; the broker is back without the gateway's
            # subscription.
            broker.start()
            async with run_edge(ecfg) as edge:
                await wait_for(edge.uplink.connected.is_set, 20, "edge up")
                await asyncio.sleep(0.5)  # what the edge sends now has no subscriber
                await gateway_back_then_press(cfg, sim, police)
    finally:
        broker.stop()
    five_once_in_order(tmp_path, police)
