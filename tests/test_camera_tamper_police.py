"""Camera tamper goes to the guard always and to the police by configuration (issue 9, part 2):
with no DC-09 code for ``camera_tamper`` the police never hear of it; with one (and routing to
``dc09``) the covered lens found by the edge's video analysis reaches the receiver with its
restore. Real Mosquitto, real gateway, the DC-09 receiver simulator."""

from __future__ import annotations

from pathlib import Path

from contract.config import GatewayConfig, parse_config
from gateway.service import run_gateway
from simulators.police import PoliceReceiver
from tests.gwkit import client, gateway_config, make_event, publish_event
from tests.helpers import Mosquitto, wait_for


def tamper(**kw: object) -> dict[str, object]:
    return {
        "kind": "camera_tamper",
        "severity": "high",
        "device": "cam-gate",
        "point": None,
        "text": "camera covered",
        "detail": {"cause": "covered", "source": "video"},
        **kw,
    }


async def test_tamper_is_not_sent_to_the_police_by_default(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    async with PoliceReceiver(udp=False) as police:
        cfg = gateway_config(tmp_path, mosquitto.port, police.tcp_port)
        async with run_gateway(cfg) as gw, client(mosquitto.port) as campus:
            await wait_for(gw.mqtt.connected.is_set)
            ev = make_event(**tamper())
            await publish_event(campus, ev)
            await publish_event(campus, make_event(seq=2))  # a panic after it
            await police.wait_for(lambda: len(police.alarms) >= 1)
            assert [m.contact_id.code for m in police.alarms if m.contact_id] == [120]
            # The centre has it all the same (the technician sees it).
            assert await gw.store.event(ev.id) is not None


async def test_tamper_goes_to_the_police_when_configured(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    async with PoliceReceiver(udp=False) as police:
        base = gateway_config(tmp_path, mosquitto.port, police.tcp_port)
        data = base.model_dump(mode="json", exclude_none=True)
        data["gateway"]["http"] = None  # no HTTP server (exclude_none dropped the null)
        data["dc09"]["codes"] = {"camera_tamper": {"cid": 144, "sia": "TA", "sia_restore": "TR"}}
        data["routing"] = [{"sinks": ["dc09"], "kinds": ["panic", "camera_tamper"]}]
        cfg = parse_config(data, GatewayConfig, "tamper-test")
        async with run_gateway(cfg) as gw, client(mosquitto.port) as campus:
            await wait_for(gw.mqtt.connected.is_set)
            await publish_event(campus, make_event(**tamper()))
            await publish_event(campus, make_event(**tamper(restore=True, severity="info", seq=2)))
            await police.wait_for(lambda: len(police.alarms) >= 2)
            codes = [
                (m.contact_id.qualifier, m.contact_id.code) for m in police.alarms if m.contact_id
            ]
            assert codes == [(1, 144), (3, 144)]
