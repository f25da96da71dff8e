"""`campusguard demo`: a whole campus and its district centre on one machine.

An embedded MQTT broker (amqtt), a simulated ADAM-6050 DI module with panic buttons, a simulated
bollard controller, a simulated ONVIF camera over the guard room (with a live RTSP test stream
when GStreamer is installed), a simulated DC-09 police receiver, the campus edge and the central
gateway, all in this process and all talking the real protocols over loopback sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import socket
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import typer

from contract.config import EdgeConfig, GatewayConfig, parse_config
from edge.daemon import event_listener_queue, run_edge, status_listener_queue
from gateway.service import run_gateway
from simulators.bollard import BollardSimulator
from simulators.camera import CameraSimulator
from simulators.modbus_io import DIModuleSimulator
from simulators.police import PoliceReceiver
from simulators.rtsp import RtspTestStream, RtspUnavailable

log = logging.getLogger(__name__)

CAMPUS = "demo-xinghua-ps"
ACCOUNT = "1234"
CAMERA = "cam-guardroom"
CAMERA_PASSWORD = "demo-cam-pw"  # noqa: S105 (a simulator on loopback)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.asynccontextmanager
async def embedded_broker(port: int) -> AsyncIterator[int]:
    """amqtt in this process: only for the demo (tests and deployments use Mosquitto)."""
    from amqtt.broker import Broker

    port = port or _free_port()
    broker = Broker(
        {
            "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
            "plugins": {
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}
            },
        }
    )
    await broker.start()
    try:
        yield port
    finally:
        await broker.shutdown()


DEMO_USERS = (
    ("guard", "门卫 张师傅", "guard", "guard-demo"),
    ("lead", "安保主任 李老师", "supervisor", "lead-demo"),
)
"""The demo console's accounts (user, name, role, password): printed at start. A real edge
takes hashes from `campusguard console hash-password`, never a password in a file."""


CENTRAL_USERS = (
    ("dispatch", "接警员 王警官", "dispatcher", "dispatch-demo"),
    ("tech", "运维 赵工", "technician", "tech-demo"),
    ("inspector", "督导 陈老师", "inspector", "inspector-demo"),
    ("admin", "管理员", "admin", "admin-demo"),
)
"""The central consoles' demo accounts (in the gateway's database), printed at start."""
DEMO_TOKEN = "cgt_demo-admin-token-not-for-production"  # noqa: S105 (a demo, printed)


async def _central_accounts(store: Any) -> None:
    """Demo users and an admin API token in the gateway's database (once: kept on reruns)."""
    from contract.models import new_id
    from gateway.store.accounts import AccountStore
    from webkit.passwords import hash_password

    accounts = AccountStore(store.engine)
    for user, name, role, pw in CENTRAL_USERS:
        await accounts.create_user(user, role, ["*"], hash_password(pw), name)
    if not any(t.label == "demo" for t in await accounts.tokens("admin")):
        await accounts.add_token(new_id(), "admin", DEMO_TOKEN, "demo", None)


def _console_users() -> list[dict[str, str]]:
    from argon2 import PasswordHasher

    ph = PasswordHasher()
    return [
        {"user": u, "name": n, "role": r, "password_hash": ph.hash(pw)}
        for u, n, r, pw in DEMO_USERS
    ]


def _edge_cfg(
    data_dir: Path, broker: int, modbus: int, bollards: int, camera: int, console_port: int
) -> EdgeConfig:
    return parse_config(
        {
            "campus": {
                "id": CAMPUS,
                "name": "大兴区兴华小学 (demo)",
                "type": "school",
                "address": "北京市大兴区兴华大街 1 号",
                "geo": {"lat": 39.7267, "lon": 116.3414},
            },
            "edge": {"id": "edge-1", "data_dir": str(data_dir / "edge"), "status_interval": 10},
            "mqtt": {"host": "127.0.0.1", "port": broker},
            "zones": [
                {
                    "id": "guardroom",
                    "name": "门卫室",
                    "location": "南门门卫室",
                    "plan": {"x": 0.42, "y": 0.86},
                },
                {
                    "id": "gate-south",
                    "name": "南门",
                    "location": "南门校门口",
                    "plan": {"x": 0.5, "y": 0.95},
                },
            ],
            "devices": [
                {
                    "id": "di-guardroom",
                    "profile": "adam-6050",
                    "host": "127.0.0.1",
                    "port": modbus,
                    "zone": "guardroom",
                    "inputs": [
                        {
                            "channel": 0,
                            "id": "btn-guardroom",
                            "kind": "panic",
                            "mode": "latch",
                            "zone": "guardroom",
                            "location": "值班台下",
                            "alarm_zone": 1,
                        },
                        {
                            "channel": 1,
                            "id": "btn-gate",
                            "kind": "panic",
                            "mode": "latch",
                            "zone": "gate-south",
                            "location": "岗亭",
                            "alarm_zone": 2,
                        },
                        {
                            "channel": 2,
                            "id": "btn-office",
                            "kind": "holdup",
                            "mode": "latch",
                            "zone": "guardroom",
                            "location": "办公室",
                            "alarm_zone": 3,
                        },
                    ],
                }
            ],
            "bollards": [
                {
                    "id": "gate-south-plc",
                    "profile": "generic-plc",
                    "host": "127.0.0.1",
                    "port": bollards,
                    "zone": "gate-south",
                    "location": "南门防冲撞柱",
                    "rules": {"travel_time": 3.0, "margin": 2.0, "efo_travel_time": 1.5},
                    "bollards": [
                        {"index": 0, "id": "bollard-s1", "alarm_zone": 21},
                        {"index": 1, "id": "bollard-s2", "alarm_zone": 22},
                    ],
                }
            ],
            "cameras": [
                {
                    # Over the guard-room panic button: its alarms get this camera's pictures.
                    "id": CAMERA,
                    "host": "127.0.0.1",
                    "port": camera,
                    "username": "admin",
                    "password": CAMERA_PASSWORD,
                    "timeout": 5,
                    "zone": "guardroom",
                    "covers": ["guardroom"],
                    "location": "门卫室值班台上方",
                }
            ],
            "console": {
                "enabled": True,
                "host": "127.0.0.1",
                "port": console_port,
                "users": _console_users(),
                "procedures": {
                    "panic": [
                        "确认报警位置，通过监控画面查看现场",
                        "携带防卫器械赶赴现场，同时通知安保主任",
                        "公安已自动收到报警；保持电话畅通，引导民警到场",
                    ],
                    "bollard_impact": ["查看大门监控，确认车辆冲撞情况", "封闭校门，疏散门口学生"],
                },
            },
        },
        EdgeConfig,
        "demo edge config",
    )


def _gateway_cfg(data_dir: Path, broker: int, police: int, http_port: int) -> GatewayConfig:
    return parse_config(
        {
            # amqtt has no shared subscriptions; one gateway needs none.
            "gateway": {
                "id": "gw-demo",
                "data_dir": str(data_dir / "gateway"),
                "share_group": None,
                "http": {"host": "127.0.0.1", "port": http_port},
            },
            "mqtt": {"host": "127.0.0.1", "port": broker},
            "database": {"url": f"sqlite+aiosqlite:///{data_dir}/gateway/campusguard.db"},
            "campuses": [
                {
                    "id": CAMPUS,
                    "name": "大兴区兴华小学 (demo)",
                    "account": ACCOUNT,
                    "geo": {"lat": 39.7267, "lon": 116.3414},
                }
            ],
            "dc09": {
                "primary": {"host": "127.0.0.1", "port": police, "transport": "tcp"},
                "supervision_interval": 30,
            },
        },
        GatewayConfig,
        "demo gateway config",
    )


def _command() -> str:
    """How the user can run ``campusguard`` from their shell (scripts/demo.sh runs it from
    the virtualenv, which is usually not on PATH)."""
    if shutil.which("campusguard"):
        return "campusguard"
    if Path(sys.argv[0]).name == "campusguard":
        return str(Path(sys.argv[0]).resolve())
    return f"{sys.executable} -m campusguard.cli"


def _say(text: str = "") -> None:
    typer.echo(text)


async def run_demo(
    data_dir: Path,
    duration: float | None,
    broker_port: int = 0,
    http_port: int = 8080,
    console_port: int = 8090,
) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 (once, at start)
    police_log = data_dir / "police-received.jsonl"
    async with contextlib.AsyncExitStack() as stack:
        broker = await stack.enter_async_context(embedded_broker(broker_port))
        sim = await stack.enter_async_context(DIModuleSimulator("adam-6050", http_port=0))
        plc = await stack.enter_async_context(
            BollardSimulator(bollards=2, travel_time=3.0, efo_travel_time=1.5, http_port=0)
        )
        police = await stack.enter_async_context(PoliceReceiver(udp=False, log_path=police_log))
        stream: RtspTestStream | None = None
        try:
            stream = await stack.enter_async_context(RtspTestStream(path="guardroom", label=CAMERA))
        except RtspUnavailable as exc:
            log.warning("camera %s: RTSP stream off: %s", CAMERA, exc)
        cam = await stack.enter_async_context(
            CameraSimulator(password=CAMERA_PASSWORD, stream=stream, http_port=0)
        )
        assert police.tcp_port is not None
        try:
            gw = await stack.enter_async_context(
                run_gateway(_gateway_cfg(data_dir, broker, police.tcp_port, http_port))
            )
        except OSError:
            # Port 8080 taken: any free port will do for a demo.
            gw = await stack.enter_async_context(
                run_gateway(_gateway_cfg(data_dir, broker, police.tcp_port, 0))
            )
        try:
            edge = await stack.enter_async_context(
                run_edge(_edge_cfg(data_dir, broker, sim.port, plc.port, cam.port, console_port))
            )
        except OSError:
            # Port 8090 taken: any free port will do for a demo.
            edge = await stack.enter_async_context(
                run_edge(_edge_cfg(data_dir, broker, sim.port, plc.port, cam.port, 0))
            )
        await _central_accounts(gw.store)
        events = event_listener_queue(edge)
        statuses = status_listener_queue(edge)
        await asyncio.wait_for(edge.uplink.connected.wait(), 10)
        await asyncio.wait_for(gw.mqtt.connected.wait(), 10)

        api = f"http://127.0.0.1:{gw.http_port}"
        press = f"{_command()} sim press 1 --url http://127.0.0.1:{sim.http_port}"
        _say("")
        _say("CampusGuard demo is running: one campus, one district centre, one police receiver.")
        _say(f"  MQTT broker (embedded amqtt)  127.0.0.1:{broker}")
        _say(f"  DI module (ADAM-6050 sim)     Modbus TCP 127.0.0.1:{sim.port}")
        _say(f"  bollard PLC (generic sim)     Modbus TCP 127.0.0.1:{plc.port}, 2 bollards")
        _say(
            f"  camera (ONVIF sim)            {cam.base_url}/onvif/device_service, "
            + (f"RTSP {stream.url} ({stream.codec})" if stream else "RTSP stream off")
        )
        _say(f"  police receiver (DC-09 sim)   TCP 127.0.0.1:{police.tcp_port}, log {police_log}")
        _say(f"  gateway API                   {api}/docs")
        accounts = ", ".join(f"{u} / {pw} ({r})" for u, _, r, pw in DEMO_USERS)
        _say(f"  guard console                 http://127.0.0.1:{edge.console_port}/  ({accounts})")
        central = ", ".join(f"{u} / {pw} ({r})" for u, _, r, pw in CENTRAL_USERS)
        _say(f"  central consoles              {api}/  ({central})")
        _say("")
        row = await _camera_online(gw.store)  # so that the alarm below gets its picture
        skew = row.points.get("clock_skew_s")
        _say(
            f"  camera {CAMERA} is online at the centre (its retained device status"
            + (
                f"; clock skew {round(skew, 1) or 0.0:.1f} s)"
                if isinstance(skew, int | float)
                else ")"
            )
        )
        _say("Pressing the guard-room panic button (channel 0) for 5 ms ...")
        t0 = time.monotonic()
        await sim.press(0, 0.005)
        event = await _next_event(events, "panic")
        await police.wait_for(lambda: len(police.messages) >= 1, timeout=10)
        got = police.messages[0]
        _say(
            f"  the police received {got.token} {got.data} (seq {got.seq}) "
            f"{(got.received_mono - t0) * 1e3:.0f} ms after the press"
        )
        status = await asyncio.wait_for(statuses.get(), 10)
        while status.state != "police_received":
            status = await asyncio.wait_for(statuses.get(), 10)
        _say(f"  the campus was told: alarm {event.id} {status.state} via {status.path}")
        _say(
            "  the button was released at once, yet the alarm stays raised (latched) until a "
            "guard closes it at the guard console: only then does the restore go to the police"
        )
        _say("Someone covers the guard-room camera (an ONVIF tamper event) ...")
        cam.inject("tamper", True)
        tamper = await _next_event(events, "camera_tamper")
        cam.inject("tamper", False)
        _say(f"  the edge raised {tamper.kind} {tamper.id} for the guard (not a police alarm)")
        _say("")
        _say("Try next:")
        _say(f"  {press}              press the gate button")
        _say(
            f"  {_command()} bollard send raise --campus {CAMPUS} --device gate-south-plc "
            f"--bollard 0 --broker 127.0.0.1:{broker}    raise a bollard (two-step)"
        )
        _say(
            f"  {_command()} sim bollard-do impact --bollard 1 "
            f"--url http://127.0.0.1:{plc.http_port}    a vehicle hits bollard 1: to the police"
        )
        _say(
            f"  curl -X POST 'http://127.0.0.1:{cam.http_port}/event?kind=field_intrusion"
            "&active=1'    someone in the camera's intrusion zone (GET /state: its knobs)"
        )
        if stream is not None:
            _say(f"  ffplay {stream.url}    watch the camera's test stream (or VLC)")
        bearer = f"curl -H 'Authorization: Bearer {DEMO_TOKEN}'"
        _say(f"  {bearer} {api}/api/alarms         the alarms and their state")
        _say(f"  {bearer} {api}/api/alarms/{event.id}   one alarm's timeline")
        _say(f"  {bearer} {api}/api/devices        device health")
        _say(f"  tail -f {police_log}   what the police platform got")
        _say("Stop with Ctrl-C." if duration is None else f"Stopping in {duration:.0f} s.")
        await _report_forever(police, duration)
        stats: dict[str, Any] = {
            "alarms at the police": len(police.messages),
            "events sent by the edge": edge.uplink.sent,
            "rejected messages": gw.ingest.reject.total,
        }
        _say("demo stopped: " + ", ".join(f"{k}: {v}" for k, v in stats.items()))


async def _camera_online(store: Any, within: float = 20.0) -> Any:
    """The camera's device status as the centre stored it, once it says online."""
    deadline = time.monotonic() + within
    while True:
        rows = {r.device: r for r in await store.devices(CAMPUS)}
        row = rows.get(CAMERA)
        if row is not None and row.online:
            return row
        if time.monotonic() > deadline:
            error = None if row is None else row.error
            raise RuntimeError(f"camera {CAMERA} did not come online: {error or 'no status'}")
        await asyncio.sleep(0.1)  # poll the store until the deadline


async def _next_event(events: asyncio.Queue[Any], kind: str, within: float = 10.0) -> Any:
    """The next event of ``kind`` from the edge (others are skipped)."""
    async with asyncio.timeout(within):
        while True:
            event = await events.get()
            if event.kind == kind:
                return event


async def _report_forever(police: PoliceReceiver, duration: float | None) -> None:
    seen = len(police.messages)
    deadline = None if duration is None else time.monotonic() + duration
    while deadline is None or time.monotonic() < deadline:
        remaining = 1.0 if deadline is None else max(0.0, min(1.0, deadline - time.monotonic()))
        await _wait_beyond(police, seen, remaining)
        for m in police.messages[seen:]:
            _say(f"  police <- {m.token} {m.data} (seq {m.seq})")
        seen = len(police.messages)


async def _wait_beyond(police: PoliceReceiver, count: int, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await police.wait_for(lambda: len(police.messages) > count, timeout=seconds)
