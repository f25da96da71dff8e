"""Retention of alarm video and records (issue 13 part 2) and disk-full handling.

Real parts: the edge daemon (outbox, event sink, uplink to a real Mosquitto), the gateway's
store (SQLite, migrated) and vault, real files; for disk full a real 40 MB tmpfs is mounted as
the edge's data disk when this process may mount (root, as here). Where it may not, the
free-space threshold is set above the real free space instead (then every unprotected video
goes, and the ordinary-before-key-point order is checked on the tmpfs run only). The clip files
are stand-in bytes written where the clip recorder writes them, with its manifests (what the
sweepers read): a real clip is made end to end in ``tests/test_clips.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from contract import evidence as wire
from contract.config import EdgeConfig, GatewayEvidenceConfig, parse_config
from contract.models import Event, new_id, utcnow
from edge.clips import iso
from edge.daemon import EdgeRuntime, event_listener_queue, run_edge
from gateway.evidence import EvidenceVault
from gateway.service import run_gateway
from gateway.store.db import make_engine, migrate
from gateway.store.models import EvidenceRow
from gateway.store.repo import Store, now
from simulators.camera import CameraSimulator
from tests.gwkit import CAMPUS, gateway_config, make_event
from tests.helpers import Mosquitto, wait_for

DAY = 86400.0
MB = 1024 * 1024


def edge_cfg(
    data_dir: Path, broker: int, cams: dict[str, CameraSimulator], **retention: Any
) -> EdgeConfig:
    return parse_config(
        {
            "campus": {"id": CAMPUS, "name": "Test school"},
            "edge": {"id": "edge-1", "data_dir": str(data_dir)},
            "mqtt": {"host": "127.0.0.1", "port": broker, "keepalive": 5},
            "zones": [{"id": "gate"}, {"id": "yard"}],
            "cameras": [
                {
                    "id": "cam-gate",
                    "host": "127.0.0.1",
                    "port": cams["gate"].port,
                    "password": "pw",
                    "zone": "gate",
                    "key_point": True,
                },
                {
                    "id": "cam-yard",
                    "host": "127.0.0.1",
                    "port": cams["yard"].port,
                    "password": "pw",
                    "zone": "yard",
                },
            ],
            "evidence": {"enabled": False},
            "clips": {"enabled": True, "retention": {"check_every_s": 3600, **retention}},
        },
        EdgeConfig,
        "retention-test",
    )


@contextlib.asynccontextmanager
async def edge_with_cameras(
    data_dir: Path, broker: int, **retention: Any
) -> AsyncIterator[EdgeRuntime]:
    # The cameras have no RTSP stream: their buffers stay down; retention does not need them.
    async with (
        CameraSimulator(password="pw", stream_uri="rtsp://127.0.0.1:9/none") as gate,
        CameraSimulator(password="pw", stream_uri="rtsp://127.0.0.1:9/none") as yard,
        run_edge(edge_cfg(data_dir, broker, {"gate": gate, "yard": yard}, **retention)) as edge,
    ):
        yield edge


def fake_clip(
    edge: EdgeRuntime, camera: str, alarm_ts: float, size: int = 1000, kind: str = "panic"
) -> tuple[str, Path]:
    """A clip as the recorder leaves it: the file and its manifest (queued)."""
    assert edge.clips is not None
    event_id = new_id()
    key = camera == "cam-gate"
    day = edge.clips.directory / iso(alarm_ts).strftime("%Y-%m-%d")
    day.mkdir(parents=True, exist_ok=True)
    path = day / f"{event_id}-{camera}.mp4"
    with open(path, "wb") as f:
        head = b"\0\0\0\x20ftypisom"
        f.write(head + b"v" * (size - len(head)))  # real blocks: the disk-full test counts them
    info = wire.ClipInfo(
        clip_id=new_id(), start=iso(alarm_ts - 30), end=iso(alarm_ts + 30), key_point=key
    )
    manifest = {
        "clip_id": info.clip_id,
        "event_id": event_id,
        "kind": kind,
        "camera": camera,
        "content_type": "video/mp4",
        "path": str(path),
        "error": None,
        "info": json.loads(info.model_dump_json()),
        "queued": True,
    }
    path.with_suffix(".json").write_text(json.dumps(manifest))
    return event_id, path


async def close(edge: EdgeRuntime, alarm_id: str) -> None:
    await edge.outbox.record_alarm_status(alarm_id, "closed", utcnow().isoformat(), None, "")


async def test_the_edge_sweeper_keeps_key_points_longer_and_open_alarms_always(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    async with edge_with_cameras(tmp_path / "edge", mosquitto.port) as edge:
        assert edge.retention is not None
        t = time.time()
        ordinary_id, ordinary = fake_clip(edge, "cam-yard", t)
        key_id, key = fake_clip(edge, "cam-gate", t)
        open_id, still_open = fake_clip(edge, "cam-yard", t)
        _, not_alarm = fake_clip(edge, "cam-yard", t, kind="camera_intrusion")
        for alarm in (ordinary_id, key_id):
            await close(edge, alarm)
        sweep = edge.retention.sweep
        assert await sweep(now=t + 29 * DAY) == 0
        assert await sweep(now=t + 31 * DAY) == 2  # the ordinary closed one, the non-alarm one
        assert not ordinary.exists() and not ordinary.with_suffix(".json").exists()
        assert not not_alarm.exists()
        assert key.exists() and still_open.exists()
        assert await sweep(now=t + 89 * DAY) == 0
        assert await sweep(now=t + 91 * DAY) == 1
        assert not key.exists()
        assert still_open.exists(), "a clip of an open alarm is never deleted"
        await close(edge, open_id)
        assert await sweep(now=t + 91 * DAY) == 1 and not still_open.exists()


@contextlib.contextmanager
def small_disk(path: Path, mb: int) -> Iterator[bool]:
    """A tmpfs of ``mb`` MB at ``path``; yields False when this process may not mount."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        yield False
        return
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={mb}m", "tmpfs", str(path)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        yield False
        return
    try:
        yield True
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


async def test_disk_full_deletes_oldest_ordinary_video_first_and_raises_a_technician_alarm(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    disk = tmp_path / "disk"
    with small_disk(disk, 40) as mounted:
        # On the tmpfs: keep 12 MB free. Without it: a threshold above the real free space.
        min_free = (
            12
            if mounted
            else int(os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize / MB) + 100_000
        )
        gw_cfg = gateway_config(tmp_path, mosquitto.port, None)
        async with (
            run_gateway(gw_cfg) as gw,
            edge_with_cameras(disk / "edge", mosquitto.port, min_free_mb=min_free) as edge,
        ):
            assert edge.retention is not None
            events = event_listener_queue(edge)
            t = time.time()
            old_ord = [fake_clip(edge, "cam-yard", t - 3000 + i, 3 * MB) for i in range(3)]
            key = [fake_clip(edge, "cam-gate", t - 5000 + i, 3 * MB) for i in range(2)]
            _, open_clip = fake_clip(edge, "cam-yard", t - 9000, 3 * MB)
            for alarm_id, _ in old_ord + key:
                await close(edge, alarm_id)
            if mounted:
                # Fill the disk until 7 MB are free: two ordinary clips (6 MB) are enough.
                free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
                with open(disk / "ballast", "wb") as f:
                    f.write(b"\0" * (free - 7 * MB))
            assert edge.retention.free_mb() < min_free
            deleted = await edge.retention.check_space()
            ev = await _next(events, "storage_low")
            assert not ev.restore and ev.device == "edge-1"
            assert ev.detail["deleted_ordinary"] == (2 if mounted else 3)
            assert open_clip.exists(), "video of an open alarm is never deleted"
            if mounted:
                assert deleted == 2
                # The oldest ordinary clips went; the newest ordinary and the key points stay.
                assert [p.exists() for _, p in old_ord] == [False, False, True]
                assert all(p.exists() for _, p in key)
                assert ev.detail["enough"] is True
            else:
                assert not any(p.exists() for _, p in old_ord + key)
            # Alarms are never dropped: one raised now is on disk and reaches the centre,
            # and so does the technician's storage_low event.
            panic = await edge.sink.emit("panic", device="cam-yard", point="btn", zone="yard")

            async def at_centre(event_id: str) -> bool:
                return await gw.store.event(event_id) is not None

            await wait_for(lambda: at_centre(panic.id), timeout=15, what="alarm at the centre")
            await wait_for(lambda: at_centre(ev.id), timeout=15, what="storage_low at the centre")
            stored = await gw.store.event(ev.id)
            assert stored is not None and stored.kind == "storage_low"
            assert (await gw.store.alarm(ev.id)) is None, "storage_low is no police alarm"
            if mounted:
                (disk / "ballast").unlink()
                assert await edge.retention.check_space() == 0
                back = await _next(events, "storage_low")
                assert back.restore
            assert edge.retention.low is not mounted


async def _next(q: asyncio.Queue[Event], kind: str) -> Event:
    while True:
        ev = await asyncio.wait_for(q.get(), 10)
        if ev.kind == kind:
            return ev


async def test_the_gateway_keeps_records_a_year_and_clips_by_their_kind_never_an_open_alarm(
    tmp_path: Path,
) -> None:
    engine = make_engine(f"sqlite+aiosqlite:///{tmp_path}/gw.db")
    await migrate(engine)
    store = Store(engine)
    vault = EvidenceVault(GatewayEvidenceConfig(), tmp_path / "evidence")
    try:
        closed, still_open = make_event(), make_event()
        fault = make_event(kind="device_offline", severity="medium", point=None)
        for ev in (closed, still_open, fault):
            await store.ingest_event(ev, [], "w")
        await store.set_alarm_state(closed.id, "closed")

        def clip_row(alarm: Event, key_point: bool) -> EvidenceRow:
            ident = new_id()
            rel = f"{CAMPUS}/day/{ident}.mp4"
            vault.path(rel).parent.mkdir(parents=True, exist_ok=True)
            vault.path(rel).write_bytes(b"\0\0\0\x20ftypisom")
            return EvidenceRow(
                id=ident,
                event_id=alarm.id,
                campus=CAMPUS,
                edge="edge-1",
                camera="cam",
                shot=0,
                taken_at=now(),
                received_at=now(),
                content_type="video/mp4",
                size=12,
                sha256=None,
                path=rel,
                error=None,
                clip_start=now(),
                clip_end=now(),
                gaps=[],
                key_point=key_point,
            )

        ordinary, key, of_open = (
            clip_row(closed, False),
            clip_row(closed, True),
            clip_row(still_open, False),
        )
        for row in (ordinary, key, of_open):
            assert await store.add_evidence(row)
        day = utcnow()
        assert await vault.sweep_clips(store, day + timedelta(days=29)) == 0
        assert await vault.sweep_clips(store, day + timedelta(days=31)) == 1
        assert not vault.path(ordinary.path or "").exists()
        assert await vault.sweep_clips(store, day + timedelta(days=91)) == 1
        assert await store.evidence(key.id) is None
        assert await store.evidence(of_open.id) is not None, "an open alarm keeps its clips"
        # Records: a year by default; never an open alarm.
        assert vault.cfg.records_days == 365
        assert await vault.sweep_records(store, day + timedelta(days=200)) == (0, 0)
        assert await vault.sweep_records(store, day + timedelta(days=366)) == (1, 2)
        assert await store.alarm(closed.id) is None and await store.event(closed.id) is None
        assert await store.event(fault.id) is None
        assert await store.alarm(still_open.id) is not None
        assert await store.event(still_open.id) is not None
        assert await store.evidence(of_open.id) is not None
    finally:
        await engine.dispose()


def test_records_retention_has_a_regulatory_floor() -> None:
    with pytest.raises(ValueError, match="greater than or equal to 30"):
        GatewayEvidenceConfig(records_days=10)
