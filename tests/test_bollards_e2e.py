"""Bollards through the edge: the controller simulator (real Modbus TCP), the edge, real
Mosquitto, the gateway and the police receiver."""

from __future__ import annotations

import asyncio
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiomqtt
import httpx
from pydantic import SecretStr

from contract import topics
from contract.config import ApiToken, EdgeConfig, parse_config
from contract.models import BollardCommandMessage, Event, new_id, utcnow
from edge.daemon import event_listener_queue, run_edge
from gateway.service import run_gateway
from simulators.bollard import BollardSimulator
from simulators.police import PoliceReceiver
from tests.gwkit import CAMPUS, client, gateway_config
from tests.helpers import Mosquitto, env_with_pythonpath, wait_for

ROOT = Path(__file__).resolve().parent.parent

TRAVEL = 0.4


def bollard_edge(tmp: Path, broker: int, port: int, **extra: Any) -> EdgeConfig:
    return parse_config(
        {
            "campus": {"id": CAMPUS, "name": "Test school", "geo": {"lat": 39.7, "lon": 116.3}},
            "edge": {"id": "edge-1", "data_dir": str(tmp / "edge")},
            "mqtt": {"host": "127.0.0.1", "port": broker, "keepalive": 5},
            "zones": [{"id": "gate", "name": "South gate"}],
            "bollards": [
                {
                    "id": "gate-plc",
                    "host": "127.0.0.1",
                    "port": port,
                    "poll_interval": 0.05,
                    "timeout": 0.3,
                    "zone": "gate",
                    "rules": {
                        "travel_time": TRAVEL,
                        "margin": 0.4,
                        "efo_travel_time": 0.2,
                        "efo_margin": 0.3,
                    },
                    "bollards": [
                        {"index": 0, "id": "b-left", "alarm_zone": 21},
                        {"index": 1, "id": "b-right", "alarm_zone": 22},
                    ],
                    **extra,
                }
            ],
        },
        EdgeConfig,
        "bollard-test",
    )


def command(
    action: str | None,
    *,
    step: str = "request",
    cid: str | None = None,
    token: str | None = None,
    role: str = "guard",
    bollard: int = 0,
    campus: str = CAMPUS,
    ttl: float = 30,
) -> BollardCommandMessage:
    now = utcnow()
    return BollardCommandMessage(
        id=cid or new_id(),
        campus=campus,
        device="gate-plc",
        bollard=bollard,
        step=step,
        action=action,
        token=token,
        user="guard-wang",
        role=role,
        reason="morning peak",  # type: ignore[arg-type]
        issued_at=now,
        expires_at=now + timedelta(seconds=ttl),
    )


async def send(c: aiomqtt.Client, msg: BollardCommandMessage) -> None:
    await c.publish(topics.command_topic(msg.campus), msg.model_dump_json(), qos=1)


async def next_command_event(
    q: asyncio.Queue[Event], cid: str, outcome: str | None = None
) -> dict[str, Any]:
    while True:
        ev = await asyncio.wait_for(q.get(), 10)
        mine = ev.kind == "bollard_command" and ev.detail.get("command_id") == cid
        if mine and (outcome is None or ev.detail.get("outcome") == outcome):
            return dict(ev.detail)


async def test_raise_two_step_then_done_with_position(mosquitto: Mosquitto, tmp_path: Path) -> None:
    async with (
        BollardSimulator(bollards=2, travel_time=TRAVEL, efo_travel_time=0.2) as sim,
        run_edge(bollard_edge(tmp_path, mosquitto.port, sim.port)) as edge,
        client(mosquitto.port) as centre,
    ):
        q = event_listener_queue(edge)
        poller = edge.bollards["gate-plc"]
        await wait_for(lambda: poller.state_of("b-left") == "down")
        await wait_for(edge.uplink.connected.is_set)
        req = command("raise")
        await send(centre, req)
        armed = await next_command_event(q, req.id)
        assert armed["outcome"] == "armed" and armed["token"]
        assert sim.state(0).position == 0.0  # nothing moves before the confirm
        await send(centre, command(None, step="confirm", cid=req.id, token=str(armed["token"])))
        assert (await next_command_event(q, req.id))["outcome"] == "accepted"
        done = await next_command_event(q, req.id)
        assert done["outcome"] == "done", done
        assert done["position"] == "up"
        assert (
            float(done["elapsed_s"]) <= TRAVEL + 0.4
        )  # travel + a poll, with slack for a loaded machine
        assert poller.state_of("b-left") == "up"
        # A replay of the same command id is refused.
        await send(centre, req)
        replay = await next_command_event(q, req.id, "refused")
        assert replay["code"] == "replay"


async def test_raise_refused_with_vehicle_on_loop(mosquitto: Mosquitto, tmp_path: Path) -> None:
    async with (
        BollardSimulator(bollards=2, travel_time=TRAVEL) as sim,
        run_edge(bollard_edge(tmp_path, mosquitto.port, sim.port)) as edge,
        client(mosquitto.port) as centre,
    ):
        q = event_listener_queue(edge)
        poller = edge.bollards["gate-plc"]
        sim.set_vehicle_loop(0, True)
        await wait_for(lambda: poller.trackers["b-left"].vehicle_loop is True)
        await wait_for(edge.uplink.connected.is_set)
        # A technician may not raise at all; a guard's raise is refused with the loop busy.
        req = command("raise", role="technician")
        await send(centre, req)
        assert (await next_command_event(q, req.id))["code"] == "role"
        req = command("raise")
        await send(centre, req)
        out = await next_command_event(q, req.id)
        assert out["outcome"] == "refused" and out["code"] == "vehicle_on_loop", out
        assert sim.state(0).position == 0.0
        # Expired command and another campus are refused too (the latter at the door).
        old = command("lower", ttl=-1)
        await send(centre, old)
        assert (await next_command_event(q, old.id))["code"] in ("expired", "bad_validity")
        rejected = edge.rejected
        await send(
            centre,
            command("stop", campus="other-campus").model_copy(
                update={"campus": CAMPUS, "device": "no-such-plc"}
            ),
        )
        await wait_for(lambda: edge.rejected > rejected)


async def test_unplugged_mid_move_fails_the_command(mosquitto: Mosquitto, tmp_path: Path) -> None:
    # A site that raises in one step (no arm/confirm) keeps the test short.
    async with BollardSimulator(bollards=2, travel_time=2.0) as sim:
        cfg = bollard_edge(
            tmp_path,
            mosquitto.port,
            sim.port,
            policy={"two_step": []},
            rules={"travel_time": 2.0, "margin": 0.5, "efo_travel_time": 1.0},
        )
        async with run_edge(cfg) as edge, client(mosquitto.port) as centre:
            q = event_listener_queue(edge)
            poller = edge.bollards["gate-plc"]
            await wait_for(lambda: poller.state_of("b-right") == "down")
            await wait_for(edge.uplink.connected.is_set)
            req = command("raise", bollard=1)
            await send(centre, req)
            assert (await next_command_event(q, req.id))["outcome"] == "accepted"
            await wait_for(lambda: poller.state_of("b-right") == "moving_up")
            await sim.unplug("refuse")  # the controller drops off mid-move
            await wait_for(lambda: poller.state_of("b-right") == "offline", timeout=5)
            # Offline: no position assumed, and the command is failed, not "done".
            assert poller.status().online is False
            assert poller.status().points == {}
            result = await next_command_event(q, req.id)
            assert result["outcome"] == "failed", result
            assert result["position"] is None


async def test_contradictory_limits_are_a_fault(mosquitto: Mosquitto, tmp_path: Path) -> None:
    async with (
        BollardSimulator(bollards=2, travel_time=TRAVEL) as sim,
        run_edge(bollard_edge(tmp_path, mosquitto.port, sim.port)) as edge,
    ):
        q = event_listener_queue(edge)
        poller = edge.bollards["gate-plc"]
        await wait_for(lambda: poller.state_of("b-left") == "down")
        sim.set_both_limits(0, True)
        while True:
            ev = await asyncio.wait_for(q.get(), 5)
            if ev.kind == "bollard_trouble":
                break
        assert ev.detail.get("code") == "contradictory_limits"
        assert poller.state_of("b-left") == "fault"


async def test_impact_reaches_the_police(mosquitto: Mosquitto, tmp_path: Path) -> None:
    async with (
        BollardSimulator(bollards=2, travel_time=TRAVEL) as sim,
        PoliceReceiver(udp=False) as police,
        run_gateway(gateway_config(tmp_path, mosquitto.port, police.tcp_port)) as gw,
    ):
        await wait_for(gw.mqtt.connected.is_set)
        async with run_edge(bollard_edge(tmp_path, mosquitto.port, sim.port)) as edge:
            poller = edge.bollards["gate-plc"]
            await wait_for(lambda: poller.state_of("b-right") == "down")
            sim.inject_impact(1)
            await police.wait_for(lambda: any(m.code == "UA" for m in police.alarms), timeout=10)
            [msg] = [m for m in police.alarms if m.code == "UA"]
            assert msg.contact_id is not None
            assert (msg.contact_id.code, msg.contact_id.zone) == (150, 22)
            alarms = await gw.store.alarms()
            assert any(a.kind == "bollard_impact" and a.point == "b-right" for a in alarms)


async def test_cli_raises_a_bollard_and_reports_the_position(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    async with (
        BollardSimulator(bollards=2, travel_time=TRAVEL) as sim,
        run_edge(bollard_edge(tmp_path, mosquitto.port, sim.port)) as edge,
    ):
        poller = edge.bollards["gate-plc"]
        await wait_for(lambda: poller.state_of("b-left") == "down")
        await wait_for(edge.uplink.connected.is_set)
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "campusguard.cli",
            "bollard",
            "send",
            "raise",
            "--campus",
            CAMPUS,
            "--device",
            "gate-plc",
            "--bollard",
            "0",
            "--user",
            "guard-li",
            "--reason",
            "dismissal",
            "--yes",
            "--broker",
            f"127.0.0.1:{mosquitto.port}",
            "--wait",
            "20",
            cwd=ROOT,
            env=env_with_pythonpath(),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        text = out.decode()
        assert proc.returncode == 0, text + err.decode()
        assert "armed" in text and "accepted" in text and "position up confirmed" in text
        assert poller.state_of("b-left") == "up"


GUARD_TOKEN = "guard-token-0123456789abcdef"
OTHER_TOKEN = "other-token-0123456789abcdef"


async def test_gateway_api_commands_are_authorised_audited_and_followed(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    cfg = gateway_config(tmp_path, mosquitto.port, None, http=True).model_copy(
        update={
            "api_tokens": [
                ApiToken(
                    user="guard-zhang",
                    role="guard",
                    campuses=[CAMPUS],
                    token=SecretStr(GUARD_TOKEN),
                ),
                ApiToken(
                    user="guard-elsewhere",
                    role="guard",
                    campuses=["other-campus"],
                    token=SecretStr(OTHER_TOKEN),
                ),
            ]
        }
    )
    async with (
        BollardSimulator(bollards=2, travel_time=TRAVEL) as sim,
        run_gateway(cfg) as gw,
        run_edge(bollard_edge(tmp_path, mosquitto.port, sim.port)) as edge,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{gw.http_port}") as http,
    ):
        poller = edge.bollards["gate-plc"]
        await wait_for(lambda: poller.state_of("b-left") == "down")
        await wait_for(edge.uplink.connected.is_set)
        await wait_for(gw.mqtt.connected.is_set)
        url = f"/api/campuses/{CAMPUS}/bollards/gate-plc/0/commands"
        body = {"action": "raise", "reason": "morning peak"}
        assert (await http.post(url, json=body)).status_code == 401
        bad = {"Authorization": "Bearer not-a-token-at-all-xxxxxxxx"}
        assert (await http.post(url, json=body, headers=bad)).status_code == 401
        other = {"Authorization": f"Bearer {OTHER_TOKEN}"}
        refused = await http.post(url, json=body, headers=other)
        assert refused.status_code == 403
        guard = {"Authorization": f"Bearer {GUARD_TOKEN}"}
        # The refused attempt is in the audit of the campus it targeted.
        audit = (await http.get("/api/commands", headers=guard)).json()
        assert [(a["user"], a["state"], a["code"]) for a in audit] == [
            ("guard-elsewhere", "refused", "campus")
        ]

        sent = await http.post(url, json=body, headers=guard)
        assert sent.status_code == 202, sent.text
        cid = sent.json()["id"]
        assert sent.json()["user"] == "guard-zhang" and sent.json()["state"] == "sent"

        async def state(want: str) -> dict[str, Any] | None:
            got = (await http.get(f"/api/commands/{cid}", headers=guard)).json()
            return got if got["state"] == want else None

        armed = await wait_for(lambda: state("armed"), what="armed")
        assert armed["token"]
        confirm = {"step": "confirm", "command_id": cid, "token": armed["token"]}
        assert (await http.post(url, json=confirm, headers=guard)).status_code == 202
        done = await wait_for(lambda: state("done"), timeout=10, what="done")
        assert "position up" in done["detail"]
        assert poller.state_of("b-left") == "up"
        assert sim.state(0).raised_limit
        spec = (await http.get("/openapi.json")).json()
        assert "/api/campuses/{campus}/bollards/{device}/{bollard}/commands" in spec["paths"]


async def test_cli_scripts_the_simulator(tmp_path: Path) -> None:
    async with BollardSimulator(bollards=2, travel_time=TRAVEL, http_port=0) as sim:
        for args in (["impact", "--bollard", "1"], ["loop", "--set", "occupied=1"]):
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "campusguard.cli",
                "sim",
                "bollard-do",
                *args,
                "--url",
                f"http://127.0.0.1:{sim.http_port}",
                cwd=ROOT,
                env=env_with_pythonpath(),
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            _out, err = await asyncio.wait_for(proc.communicate(), 60)
            assert proc.returncode == 0, err.decode()
        assert sim.state(1).impact is True
        assert sim.state(0).vehicle_loop is True
