"""A guard that cannot silence it (issue 13, part 5): a panic alarm latches until a guard resets
it at the console. Releasing the button, pressing it again or restarting the edge does not end
it; the guard's reset (closing the alarm at the console) does, as a restore naming the guard,
and the reset is in the console's audit log. Real edge, DI module simulator, Mosquitto, HTTP."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import httpx

from contract.models import Event
from edge.daemon import EdgeRuntime, event_listener_queue, run_edge
from simulators.modbus_io import DIModuleSimulator
from tests.helpers import Mosquitto, wait_for
from tests.test_console_e2e import PASSWORD, console_edge


def drain(q: asyncio.Queue[Event]) -> list[Event]:
    out = []
    while not q.empty():
        out.append(q.get_nowait())
    return out


async def next_kind(q: asyncio.Queue[Event], kind: str, restore: bool, timeout: float = 5) -> Event:
    async with asyncio.timeout(timeout):
        while True:
            ev = await q.get()
            if ev.kind == kind and ev.restore is restore:
                return ev


async def console_close(edge: EdgeRuntime, alarm_id: str, user: str = "wang") -> httpx.Response:
    base = f"http://127.0.0.1:{edge.console_port}"
    async with httpx.AsyncClient(base_url=base, headers={"Origin": base}) as c:
        r = await c.post("/login", data={"user": user, "password": PASSWORD})
        assert r.status_code == 303, r.text
        board = (await c.get("/board")).text
        m = re.search(r'data-csrf="([^"]+)"', board)
        assert m
        return await c.post(
            f"/alarms/{alarm_id}/close",
            data={"disposition": "real", "note": "police on site"},
            headers={"X-CSRF-Token": m.group(1)},
        )


async def test_panic_latches_until_the_guard_resets_it(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    async with DIModuleSimulator("adam-6050") as sim:
        cfg = console_edge(tmp_path, mosquitto.port, sim.port)
        async with run_edge(cfg) as edge:
            q = event_listener_queue(edge)
            await wait_for(lambda: edge.pollers["di-1"].online is True, what="module online")
            await sim.press(0, 0.01)
            alarm = await next_kind(q, "panic", restore=False)
            # The release was seen and held back: no restore, the alarm stays raised.
            await wait_for(lambda: edge.sink.suppressed >= 1, what="release held back")
            # Pressed again while latched: no second alarm either.
            await sim.press(0, 0.01)
            await wait_for(lambda: edge.sink.suppressed >= 3, what="second press held back")
            assert not [e for e in drain(q) if e.kind == "panic"]
            assert [e.id for e in edge.sink.latched()] == [alarm.id]
            # Another button is its own alarm, latched on its own.
            await sim.press(1, 0.01)
            other = await next_kind(q, "panic", restore=False)
            assert other.point == "btn-hall"
        # A restart (or a crash) does not unlatch it.
        async with run_edge(cfg) as edge:
            q = event_listener_queue(edge)
            assert {e.id for e in edge.sink.latched()} == {alarm.id, other.id}
            await wait_for(lambda: edge.pollers["di-1"].online is True, what="module online")
            before = edge.sink.suppressed
            await sim.press(0, 0.01)
            await wait_for(lambda: edge.sink.suppressed >= before + 2, what="held back")
            assert not [e for e in drain(q) if e.kind == "panic"]
            # The guard closes it at the console: that is the reset.
            r = await console_close(edge, alarm.id)
            assert r.status_code == 200, r.text
            restore = await next_kind(q, "panic", restore=True)
            assert restore.point == "btn-guard" and restore.detail["reset_by"] == "wang"
            assert restore.detail["alarm_id"] == alarm.id
            assert [e.id for e in edge.sink.latched()] == [other.id]
            assert edge.console is not None
            audit = await edge.console.store.audit_log()
            assert any(a.action == "alarm_reset" and alarm.id in a.detail for a in audit)
            # Now the button raises a new alarm again.
            await sim.press(0, 0.01)
            again = await next_kind(q, "panic", restore=False)
            assert again.id != alarm.id and again.point == "btn-guard"
