"""The end-to-end self-test: every hop real (DI simulator, edge, Mosquitto, gateway on SQLite
and PostgreSQL, DC-09 police receiver) and timed; the failures name their hop."""

from __future__ import annotations

import asyncio
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx

from contract import topics
from contract.config import ApiToken, EdgeConfig, GatewayConfig, parse_config
from contract.models import SelftestRequest, new_id, utcnow
from edge.daemon import event_listener_queue, run_edge
from gateway.selftest import HOPS
from gateway.service import GatewayRuntime, run_gateway
from simulators.modbus_io import DIModuleSimulator
from simulators.police import PoliceReceiver
from tests.gwkit import CAMPUS, client, gateway_config
from tests.helpers import Mosquitto, env_with_pythonpath, wait_for

TOKEN = "selftest-token-0123456789abcdef"
TEST_CH = 11  # the ADAM-6050's last DI: the test input, wired to DO 0


def edge_cfg(tmp: Path, broker: int, modbus: int) -> EdgeConfig:
    return parse_config(
        {
            "campus": {"id": CAMPUS, "name": "Test school", "geo": {"lat": 39.7, "lon": 116.3}},
            "edge": {"id": "edge-1", "data_dir": str(tmp / "edge"), "status_interval": 5},
            "mqtt": {"host": "127.0.0.1", "port": broker, "keepalive": 5},
            "zones": [{"id": "gate", "name": "South gate", "location": "south gate"}],
            "test_signal": {"enabled": False},
            "devices": [
                {
                    "id": "di-1",
                    "profile": "adam-6050",
                    "host": "127.0.0.1",
                    "port": modbus,
                    "poll_interval": 0.02,
                    "timeout": 0.3,
                    "zone": "gate",
                    "inputs": [
                        {"channel": 0, "id": "btn-guard", "kind": "panic", "alarm_zone": 1},
                        {"channel": TEST_CH, "id": "test-in", "kind": "test", "alarm_zone": 12},
                    ],
                    "test_output": {"channel": 0, "pulse_ms": 60},
                }
            ],
        },
        EdgeConfig,
        "test-edge",
    )


def gw_cfg(tmp: Path, broker: int, police: int, db_url: str | None = None) -> GatewayConfig:
    cfg = gateway_config(tmp, broker, police, http=True, db_url=db_url)
    tok = ApiToken(user="tech-li", role="technician", campuses=["*"], token=TOKEN)
    return cfg.model_copy(update={"api_tokens": [tok]})


def manual_tests_at_police(police: PoliceReceiver, cid: int = 601) -> list[int]:
    return [
        m.contact_id.zone
        for m in police.messages
        if m.contact_id and m.contact_id.code == cid and m.contact_id.qualifier == 1
    ]


async def start(gw: GatewayRuntime, device: str = "di-1", mode: str = "synthetic") -> str:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gw.http_port}") as http:
        r = await http.post(
            "/api/selftest",
            json={"campus": CAMPUS, "device": device, "mode": mode, "timeout": 10},
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["state"] == "running" and body["hops"][0]["hop"] == "requested"
    return str(body["id"])


async def finished(gw: GatewayRuntime, sid: str, timeout: float = 15) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gw.http_port}") as http:

        async def done() -> dict[str, Any] | None:
            r = await http.get(f"/api/selftest/{sid}", headers={"Authorization": f"Bearer {TOKEN}"})
            assert r.status_code == 200, r.text
            body: dict[str, Any] = r.json()
            return body if body["state"] != "running" else None

        return await wait_for(done, timeout=timeout, what=f"self-test {sid} to finish")


async def run_cli(gw: GatewayRuntime, *args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "campusguard.cli",
        "selftest",
        "--gateway",
        f"http://127.0.0.1:{gw.http_port}",
        "--token",
        TOKEN,
        "--campus",
        CAMPUS,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=env_with_pythonpath(),
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


def assert_all_hops(body: dict[str, Any]) -> None:
    assert body["state"] == "passed", body
    hops = {h["hop"]: h for h in body["hops"]}
    assert list(hops) == list(HOPS)
    for h in body["hops"]:
        assert h["at"] is not None and h["ms"] is not None and h["ms"] >= -5, h
    # The police answered before the edge heard of it, and both after the event was stored.
    assert hops["gateway_stored"]["ms"] <= hops["police_ack"]["ms"] <= hops["status_at_edge"]["ms"]
    assert body["failed_hop"] is None and body["event_id"]


async def test_synthetic_selftest_passes_every_hop_timed(
    mosquitto: Mosquitto, tmp_path: Path, db_url: str
) -> None:
    async with (
        DIModuleSimulator("adam-6050") as sim,
        PoliceReceiver(udp=False) as police,
        run_gateway(gw_cfg(tmp_path, mosquitto.port, police.tcp_port, db_url)) as gw,
    ):
        await wait_for(gw.mqtt.connected.is_set)
        async with run_edge(edge_cfg(tmp_path, mosquitto.port, sim.port)) as edge:
            await wait_for(edge.uplink.connected.is_set)
            events = event_listener_queue(edge)
            body = await finished(gw, await start(gw))
            assert_all_hops(body)
            # At the police: a manual test (601 / RX) for the test input's zone, never a panic.
            await police.wait_for(lambda: manual_tests_at_police(police) == [12])
            assert not [m for m in police.messages if m.code == "PA"]
            ev = await asyncio.wait_for(events.get(), 5)
            assert (ev.kind, ev.detail["selftest_id"], ev.id) == (
                "test",
                body["id"],
                body["event_id"],
            )
            last = await asyncio.wait_for(events.get(), 5)
            assert last.kind == "selftest" and last.detail["hop"] == "status_at_edge"
            # It has an alarm record (for its status), as a test.
            found = await gw.store.alarm(body["event_id"])
            assert found is not None and found[0].kind == "test"


async def test_pulse_selftest_comes_back_through_the_input(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    async with (
        DIModuleSimulator("adam-6050", wiring={0: TEST_CH}) as sim,
        PoliceReceiver(udp=False) as police,
        run_gateway(gw_cfg(tmp_path, mosquitto.port, police.tcp_port)) as gw,
    ):
        await wait_for(gw.mqtt.connected.is_set)
        async with run_edge(edge_cfg(tmp_path, mosquitto.port, sim.port)) as edge:
            await wait_for(edge.uplink.connected.is_set)
            await wait_for(lambda: edge.pollers["di-1"].online)
            events = event_listener_queue(edge)
            edge.sink.drill = True  # a drill runs: a self-test is a test all the same
            body = await finished(gw, await start(gw, mode="pulse"))
            assert_all_hops(body)
            assert sim.last_flip is not None and sim.last_flip.channel == TEST_CH
            assert not sim.output(0)  # the pulse ended
            seen = [await asyncio.wait_for(events.get(), 5) for _ in range(3)]
            tagged = [e for e in seen if e.kind == "test" and not e.restore]
            assert tagged and tagged[0].point == "test-in"
            assert tagged[0].detail["selftest_id"] == body["id"]
            assert tagged[0].detail["mode"] == "pulse" and tagged[0].drill is False
            # One test (and its release): never a second one from a pulse mid-poll.
            assert sorted((e.kind, e.restore) for e in seen) == [
                ("selftest", False),
                ("test", False),
                ("test", True),
            ]
            await police.wait_for(lambda: manual_tests_at_police(police) == [12])
            # The test input's release is not sent to the police.
            await asyncio.sleep(0.3)
            assert len([m for m in police.messages if m.contact_id]) == 1


async def test_police_down_fails_at_police_ack_and_cli_exits_nonzero(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    async with (
        DIModuleSimulator("adam-6050") as sim,
        PoliceReceiver(udp=False) as police,
        run_gateway(gw_cfg(tmp_path, mosquitto.port, police.tcp_port)) as gw,
    ):
        await wait_for(gw.mqtt.connected.is_set)
        await police.stop()  # the police receiver is down
        async with run_edge(edge_cfg(tmp_path, mosquitto.port, sim.port)) as edge:
            await wait_for(edge.uplink.connected.is_set)
            body = await finished(gw, await start(gw))
            assert body["state"] == "failed" and body["failed_hop"] == "police_ack", body
            assert "police receiver" in body["detail"]
            hops = {h["hop"]: h["at"] for h in body["hops"]}
            assert hops["gateway_stored"] is not None and hops["police_ack"] is None
            code, out = await run_cli(gw, "--device", "di-1", "--timeout", "10")
            assert code != 0, out
            assert "FAILED at police_ack" in out, out
            assert "gateway_stored" in out


async def test_expired_request_and_unknown_device_are_refused(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    async with (
        DIModuleSimulator("adam-6050") as sim,
        PoliceReceiver(udp=False) as police,
        run_gateway(gw_cfg(tmp_path, mosquitto.port, police.tcp_port)) as gw,
    ):
        await wait_for(gw.mqtt.connected.is_set)
        async with (
            run_edge(edge_cfg(tmp_path, mosquitto.port, sim.port)) as edge,
            client(mosquitto.port) as centre,
        ):
            await wait_for(edge.uplink.connected.is_set)
            events = event_listener_queue(edge)
            # An unknown device, through the API: the edge says so, the gateway names the hop.
            body = await finished(gw, await start(gw, device="no-such-device"))
            assert body["state"] == "failed" and body["failed_hop"] == "edge_outbox"
            assert "no device 'no-such-device'" in body["detail"]
            ev = await asyncio.wait_for(events.get(), 5)
            assert ev.kind == "selftest" and ev.detail["code"] == "unknown_device"
            # A request that expired on its way (sent by any centre tool).
            ts = utcnow() - timedelta(seconds=60)
            req = SelftestRequest(
                id=new_id(),
                campus=CAMPUS,
                device="di-1",
                user="tech-li",
                issued_at=ts,
                expires_at=ts + timedelta(seconds=30),
            )
            await centre.publish(topics.selftest_topic(CAMPUS), req.model_dump_json(), qos=1)
            ev = await asyncio.wait_for(events.get(), 5)
            assert ev.kind == "selftest" and ev.detail["selftest_id"] == req.id
            assert ev.detail["outcome"] == "refused" and ev.detail["code"] == "expired"
            assert "expired" in str(ev.detail["reason"])
            # A pulse that does not come back (the test relay is not wired here).
            body = await finished(gw, await start(gw, device="di-1", mode="pulse"))
            assert body["state"] == "failed" and body["failed_hop"] == "edge_outbox", body
            assert "did not answer the pulse" in body["detail"]
            # None of it reached the police as a test.
            assert manual_tests_at_police(police) == []


async def test_cli_selftest_passes_against_a_running_gateway(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    async with (
        DIModuleSimulator("adam-6050") as sim,
        PoliceReceiver(udp=False) as police,
        run_gateway(gw_cfg(tmp_path, mosquitto.port, police.tcp_port)) as gw,
    ):
        await wait_for(gw.mqtt.connected.is_set)
        async with run_edge(edge_cfg(tmp_path, mosquitto.port, sim.port)) as edge:
            await wait_for(edge.uplink.connected.is_set)
            code, out = await run_cli(gw, "--device", "di-1", "--mode", "synthetic")
            assert code == 0, out
            for hop in HOPS:
                assert hop in out, out
            assert "PASSED" in out
            assert manual_tests_at_police(police) == [12]


async def test_api_refuses_without_token_or_campus(mosquitto: Mosquitto, tmp_path: Path) -> None:
    cfg = gw_cfg(tmp_path, mosquitto.port, None)  # type: ignore[arg-type]  # no police relay
    async with (
        run_gateway(cfg) as gw,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{gw.http_port}") as http,
    ):
        body = {"campus": CAMPUS, "device": "di-1", "mode": "synthetic"}
        assert (await http.post("/api/selftest", json=body)).status_code == 401
        auth = {"Authorization": f"Bearer {TOKEN}"}
        other = {**body, "campus": "other-campus"}
        assert (await http.post("/api/selftest", json=other, headers=auth)).status_code == 404
        bad = {**body, "mode": "smoke"}
        assert (await http.post("/api/selftest", json=bad, headers=auth)).status_code == 422
        r = await http.get(f"/api/selftest/{new_id()}", headers=auth)
        assert r.status_code == 404
