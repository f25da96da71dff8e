"""The edge runs for years: nothing it receives may pile up in its memory. The soak (bench/soak.py,
issue 11) found the edge's RSS growing 54 MiB an hour: every alarm status from the centre was
put on a queue that only tests read. Real Mosquitto, the edge, the DI module simulator."""

from __future__ import annotations

import gc
from pathlib import Path

from contract import topics
from contract.models import AlarmStatus, new_id, utcnow
from edge.daemon import run_edge
from edge.selftest import REMEMBER
from simulators.modbus_io import DIModuleSimulator
from tests.edgekit import edge_config
from tests.gwkit import CAMPUS, client
from tests.helpers import Mosquitto, wait_for

STATUSES = 3000
"""Half of them "received", half "police_received": more than the self-tester remembers."""


def alive(kind: type) -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if type(o) is kind)


async def test_alarm_statuses_from_the_centre_are_not_kept_in_memory(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    async with (
        DIModuleSimulator("adam-6050") as sim,
        run_edge(edge_config(tmp_path, mosquitto.port, sim.port)) as edge,
    ):
        await wait_for(edge.uplink.connected.is_set)
        seen: list[str] = []
        edge.status_listeners.append(lambda st: seen.append(st.alarm_id))
        before = alive(AlarmStatus)
        async with client(mosquitto.port) as centre:
            for round_no, state in enumerate(("received", "police_received"), 1):
                for i in range(STATUSES // 2):
                    st = AlarmStatus(
                        alarm_id=new_id() if state == "received" else seen[i],
                        campus=CAMPUS,
                        state=state,
                        ts=utcnow(),
                        path="primary",
                    )
                    await centre.publish(
                        topics.alarm_status_topic(CAMPUS), st.model_dump_json(), qos=1
                    )
                target = round_no * STATUSES // 2
                await wait_for(lambda t=target: len(seen) >= t, 30, f"{state} statuses")
        # Every status is on disk (the guard console reads them from there) ...
        assert len(await edge.outbox.alarm_statuses(seen[-1])) == 2
        edge.status_listeners.clear()
        seen.clear()
        # ... and no more of them are held in memory than the self-tester's bounded memory of
        # police answers that came before their test event (``edge/selftest.py``).
        assert alive(AlarmStatus) - before <= REMEMBER + 10
