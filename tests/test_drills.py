"""Drills end to end: the API starts one, the campus edge marks its alarms, the police get the
test code (never a real panic), the drill ends by itself, the records and the compliance view.

Real Mosquitto, the gateway on SQLite and PostgreSQL, the DI module simulator, the DC-09
police receiver simulator, and the CLI in a subprocess.
"""

from __future__ import annotations

import asyncio
import json
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast
from zoneinfo import ZoneInfo

import aiomqtt
import httpx
from pydantic import SecretStr

from contract import topics
from contract.config import ApiToken, CampusAccount, EdgeConfig, GatewayConfig
from contract.models import DrillCommand, EdgeState, new_id, utcnow
from edge.daemon import event_listener_queue, run_edge
from edge.drills import STATE_KEY
from edge.outbox import Outbox
from gateway import drills as drill_ops
from gateway.service import GatewayRuntime, run_gateway
from gateway.store.models import DrillRow
from simulators.modbus_io import DIModuleSimulator
from simulators.police import PoliceReceiver
from tests.edgekit import edge_config
from tests.gwkit import CAMPUS, gateway_config
from tests.helpers import env_with_pythonpath, wait_for

ADMIN = "admin-token-0123456789abcdefgh"
GUARD_OTHER = "guard-token-0123456789abcdefgh"
INSPECTOR = "insp-token-0123456789abcdefghij"

INPUTS: list[dict[str, Any]] = [
    {"channel": 0, "id": "btn-guard", "kind": "panic", "mode": "latch", "alarm_zone": 1},
    {
        "channel": 1,
        "id": "btn-police-line",
        "kind": "panic",
        "mode": "latch",
        "alarm_zone": 2,
        "real_during_drill": True,
    },
]


def gw_cfg(
    tmp: Path,
    broker: int,
    police: int | None,
    db_url: str | None = None,
    campuses: list[CampusAccount] | None = None,
) -> GatewayConfig:
    cfg = gateway_config(tmp, broker, police, http=True, db_url=db_url)
    tokens = [
        ApiToken(user="admin-wang", role="admin", campuses=["*"], token=SecretStr(ADMIN)),
        ApiToken(user="guard-li", role="guard", campuses=["x"], token=SecretStr(GUARD_OTHER)),
        ApiToken(user="insp", role="inspector", campuses=["*"], token=SecretStr(INSPECTOR)),
    ]
    update: dict[str, Any] = {"api_tokens": tokens}
    if campuses is not None:
        update["campuses"] = campuses
    return cfg.model_copy(update=update)


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def edge_cfg(tmp: Path, broker: int, modbus: int) -> EdgeConfig:
    return edge_config(tmp, broker, modbus, inputs=INPUTS)


def codes(police: PoliceReceiver) -> list[tuple[int, int, int]]:
    """(Contact ID code, qualifier, zone) of every alarm the police received."""
    return [
        (m.contact_id.code, m.contact_id.qualifier, m.contact_id.zone)
        for m in police.alarms
        if m.contact_id is not None
    ]


async def get_drill(http: httpx.AsyncClient, drill_id: str) -> dict[str, Any]:
    r = await http.get(f"/api/drills/{drill_id}", headers=auth(ADMIN))
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    return out


async def drill_is(http: httpx.AsyncClient, drill_id: str, status: str) -> dict[str, Any] | None:
    r = await http.get(f"/api/drills/{drill_id}", headers=auth(ADMIN))
    if r.status_code == 404:
        return None  # not recorded yet
    assert r.status_code == 200, r.text
    d: dict[str, Any] = r.json()
    return d if d["status"] == status else None


async def reach(
    http: httpx.AsyncClient, drill_id: str, status: str, timeout: float = 10.0
) -> dict[str, Any]:
    """Wait (with a deadline) until the drill's record has this status."""

    async def check() -> dict[str, Any] | None:
        return await drill_is(http, drill_id, status)

    found: dict[str, Any] = await wait_for(
        cast(Any, check), timeout=timeout, what=f"drill {drill_id} {status}"
    )
    return found


async def test_drill_from_the_api_reaches_the_police_as_a_test(
    mosquitto: Any, tmp_path: Path, db_url: str
) -> None:
    async with (
        DIModuleSimulator("adam-6050") as sim,
        PoliceReceiver(udp=False) as police,
        run_gateway(gw_cfg(tmp_path, mosquitto.port, police.tcp_port, db_url)) as gw,
        run_edge(edge_cfg(tmp_path, mosquitto.port, sim.port)) as edge,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{gw.http_port}") as http,
    ):
        await wait_for(gw.mqtt.connected.is_set)
        await wait_for(edge.uplink.connected.is_set)
        assert edge.drills is not None
        body = {"campus": CAMPUS, "kind": "fire", "minutes": 0.1, "note": "autumn fire drill"}
        # Read-only roles may not run drills; for a token of another campus, it is not there.
        r = await http.post("/api/drills", json=body, headers=auth(INSPECTOR))
        assert r.status_code == 403
        r = await http.post("/api/drills", json=body, headers=auth(GUARD_OTHER))
        assert r.status_code == 404
        r = await http.post("/api/drills", json={**body, "campus": "nowhere"}, headers=auth(ADMIN))
        assert r.status_code == 404
        made = await http.post("/api/drills", json=body, headers=auth(ADMIN))
        assert made.status_code == 201, made.text
        drill = made.json()
        assert drill["status"] in ("requested", "running") and drill["started_by"] == "admin-wang"
        # Started twice: one drill, the second refused naming the first.
        again = await http.post("/api/drills", json=body, headers=auth(ADMIN))
        assert again.status_code == 409 and drill["id"] in again.json()["detail"]
        running = await reach(http, drill["id"], "running")
        assert edge.drills.active and edge.sink.drill
        assert running["actual_start"] is not None

        events = event_listener_queue(edge)
        await sim.press(0, 0.01)  # an ordinary button: a drill alarm, a test at the police
        await police.wait_for(lambda: (601, 1, 1) in codes(police))
        await sim.press(1, 0.01)  # "real even during drills": goes out as real
        await police.wait_for(lambda: (120, 1, 2) in codes(police))
        assert not any(c == 120 and z == 1 for c, _, z in codes(police))
        pressed = [e for e in [events.get_nowait() for _ in range(events.qsize())] if e.is_alarm]
        flags = {(e.point, e.drill) for e in pressed if not e.restore}
        assert flags == {("btn-guard", True), ("btn-police-line", False)}
        alarms = (
            await http.get("/api/alarms", params={"campus": CAMPUS}, headers=auth(ADMIN))
        ).json()
        assert {(a["point"], a["drill"]) for a in alarms} >= flags

        # It ends by itself at its planned end; the record says so and counts its alarm.
        ended = await reach(http, drill["id"], "ended", timeout=15)
        assert not edge.sink.drill
        assert ended["end_reason"] == "planned end reached" and ended["alarms"] == 1
        assert ended["notes"] == "autumn fire drill" and ended["kind"] == "fire"
        # The next press is real again.
        await sim.press(0, 0.01)
        await police.wait_for(lambda: (120, 1, 1) in codes(police))
        assert sum(1 for c, q, _ in codes(police) if c == 601) == 2  # the drill press + restore
        listed = (await http.get("/api/drills", headers=auth(INSPECTOR))).json()
        assert [d["id"] for d in listed] == [drill["id"]]
        # An end for a drill that is over is refused; the campus ignores a late command.
        late = await http.post(f"/api/drills/{drill['id']}/end", headers=auth(ADMIN))
        assert late.status_code == 409


async def test_scheduled_drill_crosses_a_gateway_restart(
    mosquitto: Any, tmp_path: Path, db_url: str
) -> None:
    """Scheduled, then the gateway stops before it begins: a new gateway on the same database
    starts it on time, and the drill still ends (and its record with it)."""
    cfg = gw_cfg(tmp_path, mosquitto.port, None, db_url)
    async with (
        DIModuleSimulator("adam-6050") as sim,
        run_edge(edge_cfg(tmp_path, mosquitto.port, sim.port)) as edge,
    ):
        assert edge.drills is not None
        events = event_listener_queue(edge)
        async with (
            run_gateway(cfg) as gw,
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{gw.http_port}") as http,
        ):
            await wait_for(gw.mqtt.connected.is_set)
            await wait_for(edge.uplink.connected.is_set)
            at = utcnow() + timedelta(seconds=3)
            body = {"campus": CAMPUS, "kind": "earthquake", "minutes": 0.05}
            made = await http.post(
                "/api/drills", json={**body, "planned_start": at.isoformat()}, headers=auth(ADMIN)
            )
            assert made.status_code == 201, made.text
            drill = made.json()
            assert drill["status"] == "scheduled"
            # Overlapping the scheduled one: refused, naming it.
            clash = await http.post(
                "/api/drills",
                json={**body, "planned_start": (at + timedelta(seconds=1)).isoformat()},
                headers=auth(ADMIN),
            )
            assert clash.status_code == 409 and drill["id"] in clash.json()["detail"]
        assert not edge.drills.active  # the first gateway is gone before the planned start
        async with (
            run_gateway(cfg) as gw2,
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{gw2.http_port}") as http,
        ):
            await wait_for(lambda: edge.drills is not None and edge.drills.active, timeout=10)
            assert edge.drills.current is not None and edge.drills.current.id == drill["id"]
            started_at = utcnow()
            assert started_at >= at
            ended = await reach(http, drill["id"], "ended", timeout=15)
            assert ended["end_reason"] == "planned end reached"
            assert ended["source"] == "api" and ended["kind"] == "earthquake"
            got = [e for e in [events.get_nowait() for _ in range(events.qsize())]]
            drill_events = [(e.kind, e.restore) for e in got if e.kind == "drill"]
            assert drill_events == [("drill", False), ("drill", True)]


async def test_edge_restart_keeps_the_drill_and_ends_it_on_time(
    mosquitto: Any, tmp_path: Path
) -> None:
    """A drill started at the campus console: the centre records it; the edge restarts in the
    middle and still ends it at its planned end; a drill whose end passed while the edge was
    down ends at once."""
    cfg = edge_cfg(tmp_path, mosquitto.port, 1)
    cfg = cfg.model_copy(update={"devices": []})
    async with (
        run_gateway(gw_cfg(tmp_path, mosquitto.port, None)) as gw,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{gw.http_port}") as http,
    ):
        async with run_edge(cfg) as edge:
            assert edge.drills is not None
            # At once, before the edge's tasks have run a step (the timer must still hold).
            d = await edge.drills.start("intruder", 0.06, "guard-zhang")  # 3.6 s
            await wait_for(edge.uplink.connected.is_set)
            assert edge.sink.drill
            # A second, different drill is refused; the same one again changes nothing.
            cmd = DrillCommand(
                id=new_id(),
                campus=CAMPUS,
                action="start",
                kind="fire",
                planned_end=utcnow() + timedelta(minutes=5),
                user="admin-wang",
                issued_at=utcnow(),
            )
            await edge.drills.handle(cmd)
            assert edge.drills.current is not None and edge.drills.current.id == d.id
            assert (await edge.drills.start("intruder", 1, "x", drill_id=d.id)).id == d.id
            # An end for another drill is ignored.
            await edge.drills.handle(cmd.model_copy(update={"action": "end"}))
            assert edge.drills.active
            rec = await reach(http, d.id, "running")
            assert rec["source"] == "console" and rec["started_by"] == "guard-zhang"
        async with run_edge(cfg) as edge:
            assert edge.drills is not None
            assert edge.drills.active and edge.sink.drill  # before anything else runs
            assert edge.drills.current is not None and edge.drills.current.id == d.id
            await wait_for(lambda: not edge.sink.drill, timeout=10, what="the planned end")
            assert utcnow() >= datetime.fromisoformat(d.planned_end)
            ended = await reach(http, d.id, "ended")
            assert ended["end_reason"] == "planned end reached"
            # A start repeated by the broker after the end does not start it again.
            await edge.drills.handle(
                cmd.model_copy(update={"id": d.id, "planned_end": utcnow() + timedelta(hours=1)})
            )
            assert not edge.drills.active

    # Down through the planned end: it ends as soon as the edge is back.
    gone = {
        "id": new_id(),
        "kind": "fire",
        "planned_end": (utcnow() - timedelta(minutes=1)).isoformat(),
        "started_by": "guard-zhang",
        "source": "console",
        "started_at": (utcnow() - timedelta(minutes=31)).isoformat(),
        "announced": True,
    }
    async with Outbox(cfg.edge.data_dir / "outbox.db") as outbox:
        await outbox.put_value(STATE_KEY, json.dumps(gone))
    async with run_edge(cfg) as edge:
        assert edge.drills is not None
        assert not edge.drills.active and not edge.sink.drill


def campuses() -> list[CampusAccount]:
    return [
        CampusAccount(id=CAMPUS, name="Test school", account="1234", type="school"),
        CampusAccount(id="never-ps", name="Never drilled", account="1235"),
        CampusAccount(id="new-kg", name="New kindergarten", account="1236", type="kindergarten"),
        CampusAccount(id="lapsed-ps", name="Lapsed school", account="1237"),
    ]


async def test_compliance_view(mosquitto: Any, tmp_path: Path, db_url: str) -> None:
    cfg = gw_cfg(tmp_path, mosquitto.port, None, db_url, campuses=campuses())
    tz = ZoneInfo(cfg.telemetry.report_timezone)
    now = utcnow()
    async with (
        run_gateway(cfg) as gw,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{gw.http_port}") as http,
        aiomqtt.Client("127.0.0.1", mosquitto.port) as c,
    ):
        await wait_for(gw.mqtt.connected.is_set)
        # "never-ps" has been connected for 100 days and never drilled; "new-kg" was never
        # heard of; "lapsed-ps" drilled 100 days ago; the test school just held one.
        long_ago = now - timedelta(days=100)
        st = EdgeState(campus="never-ps", edge="edge-1", online=True, ts=long_ago, version="t")
        await c.publish(topics.edge_state_topic("never-ps"), st.model_dump_json(), qos=1)
        await wait_for(lambda: gw.ingest.accepted["edge"] == 1, what="edge state")
        await add_ended(gw, CAMPUS, now - timedelta(minutes=20), now - timedelta(minutes=5))
        await add_ended(gw, "lapsed-ps", long_ago, long_ago + timedelta(minutes=30))

        r = await http.get("/api/drills/compliance", headers=auth(INSPECTOR))
        assert r.status_code == 200, r.text
        rows = {row["campus"]: row for row in r.json()}
        assert rows[CAMPUS]["overdue"] is False and rows[CAMPUS]["drills_this_period"] == 1
        assert rows[CAMPUS]["required"] == "monthly" and rows[CAMPUS]["last_drill_kind"] == "fire"
        assert rows["never-ps"]["overdue"] is True and rows["never-ps"]["last_drill_end"] is None
        assert rows["lapsed-ps"]["overdue"] is True
        assert rows["new-kg"]["overdue"] is False and rows["new-kg"]["required"] == "quarterly"
        # The test school's next drill is due by the end of next month.
        _, month_end, _ = drill_ops.period_bounds("monthly", now, tz)
        _, next_end, _ = drill_ops.period_bounds("monthly", month_end, tz)
        assert datetime.fromisoformat(rows[CAMPUS]["next_due"]) == next_end

        csv_text = (
            await http.get(
                "/api/drills/compliance", params={"format": "csv"}, headers=auth(INSPECTOR)
            )
        ).text
        assert csv_text.splitlines()[0].startswith("campus,name,type,required")
        assert len(csv_text.splitlines()) == 5
        page = await http.get(
            "/api/drills/compliance", params={"format": "html"}, headers=auth(INSPECTOR)
        )
        assert "2 overdue" in page.text and "Lapsed school" in page.text

        # The monthly compliance report counts drills held from the drill records.
        month = f"{now.astimezone(tz):%Y-%m}"
        rep = await http.get(
            "/api/reports/compliance",
            params={"month": month, "campus": CAMPUS},
            headers=auth(INSPECTOR),
        )
        assert rep.status_code == 200, rep.text
        (row,) = rep.json()
        assert row["drills_held"] == 1 and row["drills_required"] == "monthly"
        assert row["drill_days"] == [f"{(now - timedelta(minutes=5)).astimezone(tz):%Y-%m-%d}"]


async def add_ended(gw: GatewayRuntime, campus: str, start: datetime, end: datetime) -> None:
    await gw.store.add_drill(
        DrillRow(
            id=new_id(),
            campus=campus,
            kind="fire",
            state="ended",
            source="api",
            planned_start=start,
            planned_end=end,
            actual_start=start,
            actual_end=end,
            started_by="admin-wang",
            ended_by="edge",
            end_reason="planned end reached",
            notes="",
            alarms=0,
            created_at=start,
        )
    )


def test_periods() -> None:
    tz = ZoneInfo("Asia/Shanghai")
    at = datetime(2026, 11, 29, 3, 0, tzinfo=UTC)  # 11:00 in Beijing
    lo, hi, label = drill_ops.period_bounds("monthly", at, tz)
    assert label == "2026-11"
    assert lo == datetime(2026, 10, 31, 16, 0, tzinfo=UTC)
    assert hi == datetime(2026, 11, 30, 16, 0, tzinfo=UTC)
    lo, hi, label = drill_ops.period_bounds("quarterly", at, tz)
    assert label == "2026-Q4" and hi == datetime(2026, 12, 31, 16, 0, tzinfo=UTC)
    # Due by the end of the period after the drill's.
    assert drill_ops.due_after("monthly", at, tz) == datetime(2026, 12, 31, 16, 0, tzinfo=UTC)
    assert drill_ops.due_after("quarterly", at, tz) == datetime(2027, 3, 31, 16, 0, tzinfo=UTC)
    assert drill_ops.due_after("45d", at, tz) == at + timedelta(days=45)
    never = drill_ops.campus_compliance("c", "", "school", "monthly", at, tz, None, [], None)
    assert never.overdue is False
    assert never.next_due == datetime(2026, 11, 30, 16, 0, tzinfo=UTC)


async def run_cli(*args: str, token: str | None = ADMIN) -> tuple[int, str, str]:
    env = env_with_pythonpath()
    env.pop("CG_API_TOKEN", None)
    if token is not None:
        env["CG_API_TOKEN"] = token
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "campusguard.cli",
        "drill",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_cli_start_list_end(mosquitto: Any, tmp_path: Path) -> None:
    async with (
        DIModuleSimulator("adam-6050") as sim,
        run_gateway(gw_cfg(tmp_path, mosquitto.port, None)) as gw,
        run_edge(edge_cfg(tmp_path, mosquitto.port, sim.port)) as edge,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{gw.http_port}") as http,
    ):
        await wait_for(gw.mqtt.connected.is_set)
        await wait_for(edge.uplink.connected.is_set)
        url = f"http://127.0.0.1:{gw.http_port}"
        code, out, err = await run_cli(
            "start", "--campus", CAMPUS, "--kind", "stampede", "--minutes", "10", "--url", url
        )
        assert code == 0, err
        assert out.startswith("started ") and "stampede" in out
        drill_id = out.split()[1]
        await reach(http, drill_id, "running")
        assert (await get_drill(http, drill_id))["source"] == "cli"
        code, out, err = await run_cli("start", "--campus", CAMPUS, "--url", url)
        assert code == 1 and "409" in err and drill_id in err
        code, out, err = await run_cli("list", "--state", "running", "--url", url)
        assert code == 0 and drill_id in out and "running" in out
        code, out, err = await run_cli("end", drill_id, "--url", url, token=None)
        assert code == 2 and "token" in err
        code, out, err = await run_cli("end", drill_id, "--url", url)
        assert code == 0 and out.startswith("ending "), err
        ended = await reach(http, drill_id, "ended")
        assert ended["end_reason"] == "ended by admin-wang"
        assert not edge.sink.drill


async def test_drill_for_an_offline_campus_waits_for_it(mosquitto: Any, tmp_path: Path) -> None:
    """The edge is away when the drill is started: the record says requested, the command
    waits in the edge's persistent session, and the actual start is the edge's."""
    async with (
        DIModuleSimulator("adam-6050") as sim,
        run_gateway(gw_cfg(tmp_path, mosquitto.port, None)) as gw,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{gw.http_port}") as http,
    ):
        cfg = edge_cfg(tmp_path, mosquitto.port, sim.port)
        async with run_edge(cfg) as edge:  # its session on the broker exists from now on
            await wait_for(edge.uplink.connected.is_set)
        body = {"campus": CAMPUS, "kind": "stampede", "minutes": 5}
        made = await http.post("/api/drills", json=body, headers=auth(ADMIN))
        assert made.status_code == 201, made.text
        drill = made.json()
        assert drill["status"] == "requested" and drill["actual_start"] is None
        listed = await http.get("/api/drills", params={"state": "requested"}, headers=auth(ADMIN))
        assert [d["id"] for d in listed.json()] == [drill["id"]]
        back = utcnow()
        async with run_edge(cfg) as edge:
            running = await reach(http, drill["id"], "running")
            assert edge.sink.drill
            assert datetime.fromisoformat(running["actual_start"]) >= back
            ended = await http.post(f"/api/drills/{drill['id']}/end", headers=auth(ADMIN))
            assert ended.status_code == 202, ended.text
            done = await reach(http, drill["id"], "ended")
            assert done["ended_by"] == "admin-wang" and not edge.sink.drill


async def test_a_restore_after_the_drill_ended_is_still_a_drill(tmp_path: Path) -> None:
    """A button pressed during a drill and released after it ended: the release belongs to the
    drill (the police never had the alarm as real), the next press is real."""
    from edge.events import EventSink
    from edge.outbox import Outbox

    cfg = edge_config(tmp_path, 1, 1)
    async with Outbox(tmp_path / "edge" / "outbox.db") as outbox:
        sink = EventSink(cfg, outbox)
        sink.drill = True
        pressed = await sink.emit("panic", device="di-1", point="btn-guard")
        sink.drill = False
        released = await sink.emit("panic", device="di-1", point="btn-guard", restore=True)
        again = await sink.emit("panic", device="di-1", point="btn-guard")
        again_released = await sink.emit("panic", device="di-1", point="btn-guard", restore=True)
    assert pressed.drill and released.drill
    assert not again.drill and not again_released.drill
