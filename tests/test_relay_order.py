"""A campus' alarms reach the police in the order they were raised, even when the first of
them could not be delivered at once (issue 11's fault suite found later alarms overtaking one
waiting for its retry: a restore before its alarm). And a repeat of an alarm whose hand-over
to the relay was cut short is sent at once, not after the relay lease. Real Mosquitto, the
gateway, and the DC-09 receiver simulator (down, then up)."""

from __future__ import annotations

from pathlib import Path

from gateway.service import run_gateway
from simulators.police import PoliceReceiver
from tests.gwkit import client, gateway_config, make_event, publish_event
from tests.helpers import Mosquitto, free_port, wait_for


async def test_later_alarms_wait_behind_one_being_retried(
    mosquitto: Mosquitto, tmp_path: Path, db_url: str
) -> None:
    port = free_port()
    cfg = gateway_config(tmp_path, mosquitto.port, port, db_url=db_url)
    async with run_gateway(cfg) as gw, client(mosquitto.port) as campus:
        await wait_for(gw.mqtt.connected.is_set)
        first = make_event(zone_no=1)
        await publish_event(campus, first)
        await wait_for(lambda: gw.workers["dc09"].failed_attempts >= 1, what="a failed try")
        # While the first waits for its retry, the same button is released and pressed again,
        # and another button goes.
        later = [
            make_event(zone_no=1, restore=True, severity="info", seq=2),
            make_event(zone_no=1, seq=3),
            make_event(zone_no=2, seq=4),
        ]
        for ev in later:
            await publish_event(campus, ev)
        async with PoliceReceiver("127.0.0.1", port, udp=False) as police:

            def ours() -> list[tuple[int, int]]:
                return [
                    (m.contact_id.qualifier, m.contact_id.zone)
                    for m in police.alarms
                    if m.contact_id and m.contact_id.code == 120
                ]

            await police.wait_for(lambda: len(ours()) >= 4, timeout=30)
            assert ours() == [(1, 1), (3, 1), (1, 1), (1, 2)]


async def test_a_repeat_after_a_cut_hand_over_is_sent_at_once(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    async with PoliceReceiver(udp=False) as police:
        cfg = gateway_config(tmp_path, mosquitto.port, police.tcp_port)
        async with run_gateway(cfg) as gw, client(mosquitto.port) as campus:
            await wait_for(gw.mqtt.connected.is_set)
            ev = make_event()
            # As if the first hand-over had been cut short: stored and claimed, never queued.
            new, jobs = await gw.store.ingest_event(ev, ["dc09"], gw.ingest.worker_id, lease=30)
            assert new and len(jobs) == 1
            await publish_event(campus, ev)  # the broker's redelivery: a duplicate
            await police.wait_for(lambda: len(police.alarms) >= 1, timeout=5)
            assert [m.code for m in police.alarms] == ["PA"]
