"""Alarm evidence at the edge: snapshots from every camera that covers the alarm's zone.

The alarm goes first: the collector hears of an event only once it is on disk and queued for the
uplink (:class:`~edge.events.EventSink` listeners), and it never holds anything up. It asks all
covering cameras at once (one task per camera), writes each picture to
``<data_dir>/evidence/<day>/`` with fsync, and queues it for the gateway in the outbox at a lower
priority than events, where it stays until the gateway's receipt, like an event. A camera that
is offline, slow or refuses gives a record saying so instead of a picture, so the alarm record
tells a missing camera from a camera that was never asked. A picture that comes late (a slow
camera) is still attached when it comes: the timeout only bounds how long we wait.

A sweeper deletes the edge's copies after ``evidence.retention_days``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Mapping
from datetime import UTC
from pathlib import Path

from contract import evidence as wire
from contract import topics
from contract.config import EdgeConfig
from contract.files import write_durably
from contract.models import Event, new_id, utcnow
from drivers.onvif import CameraError
from edge.cameras import CameraWatcher
from edge.outbox import EvidenceRecord, Outbox

log = logging.getLogger(__name__)

SWEEP_EVERY_S = 3600.0


class EvidenceCollector:
    """Takes, keeps and ships the snapshots of one campus edge's alarms."""

    def __init__(
        self,
        cfg: EdgeConfig,
        outbox: Outbox,
        cameras: Mapping[str, CameraWatcher],
        directory: Path,
    ) -> None:
        self._cfg = cfg
        self._ev = cfg.evidence
        self._outbox = outbox
        self._cameras = cameras
        self.directory = directory
        self._kinds = set(self._ev.kinds)
        self._tasks: set[asyncio.Task[None]] = set()
        self.taken = 0
        self.missing = 0

    def cameras_for(self, event: Event) -> list[CameraWatcher]:
        """The cameras that document this event: those covering its zone, and the camera that
        raised it."""
        return [
            w
            for w in self._cameras.values()
            if w.cfg.id == event.device or (event.zone and event.zone in w.cfg.zones_covered())
        ]

    def on_event(self, event: Event) -> None:
        """EventSink listener: the event is on disk; start the snapshots, return at once."""
        if not self._ev.enabled or event.restore or event.kind not in self._kinds:
            return
        for watcher in self.cameras_for(event):
            task = asyncio.get_running_loop().create_task(
                self._camera(event, watcher), name=f"evidence-{event.id}-{watcher.cfg.id}"
            )
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def idle(self) -> None:
        """Wait until every snapshot started so far is stored (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def _camera(self, event: Event, watcher: CameraWatcher) -> None:
        start = time.monotonic()
        for shot in range(self._ev.shots):
            delay = start + shot * self._ev.interval - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            try:
                await self._shot(event, watcher, shot)
            except asyncio.CancelledError:
                raise
            except Exception:
                # The boundary of one snapshot: a failure here must not touch the alarm.
                log.exception("evidence for %s from %s failed", event.id, watcher.cfg.id)

    async def _shot(self, event: Event, watcher: CameraWatcher, shot: int) -> None:
        cam = watcher.cfg.id
        error: str | None = None
        image = b""
        marked = self._marked_picture(event, watcher) if shot == 0 else None
        try:
            if marked is not None:
                image = marked  # the video analysis' picture, marked with the zone and object
            else:
                image = await asyncio.wait_for(watcher.evidence_snapshot(), self._ev.timeout)
        except TimeoutError:
            error = f"no picture within {self._ev.timeout:g} s"
        except CameraError as exc:
            error = str(exc)
        if not error and not wire.is_jpeg(image):
            error, image = "the camera's snapshot is not a JPEG", b""
        if not error and len(image) > self._ev.max_bytes:
            error = f"picture of {len(image)} bytes exceeds evidence.max_bytes"
            image = b""
        taken = utcnow()
        ident = new_id()
        campus, edge = self._cfg.campus.id, self._cfg.edge.id
        if error is None:
            header = wire.snapshot_header(
                ident=ident,
                campus=campus,
                edge=edge,
                event_id=event.id,
                camera=cam,
                shot=shot,
                taken_at=taken,
                image=image,
            )
            day = taken.astimezone(UTC).strftime("%Y-%m-%d")
            file = self.directory / day / f"{event.id}-{cam}-{shot}.jpg"
            await asyncio.to_thread(write_durably, file, image)
            path: Path | None = file
            self.taken += 1
            lag = (taken - event.ts).total_seconds()
            log.info(
                "evidence %s: %s shot %d, %d bytes, %.2f s after",
                event.id,
                cam,
                shot,
                len(image),
                lag,
            )
        else:
            header = wire.EvidenceHeader(
                id=ident,
                campus=campus,
                edge=edge,
                event_id=event.id,
                camera=cam,
                shot=shot,
                taken_at=taken,
                error=error[:300],
            )
            path = None
            self.missing += 1
            log.warning("evidence %s: no picture from %s: %s", event.id, cam, error)
        await self._outbox.add_evidence(
            EvidenceRecord(
                id=ident,
                event_id=event.id,
                camera=cam,
                shot=shot,
                taken_at=taken.isoformat(),
                path=str(path) if path else None,
                size=len(image),
                error=header.error,
            ),
            topics.evidence_topic(campus),
            wire.encode(header, image),
        )

    @staticmethod
    def _marked_picture(event: Event, watcher: CameraWatcher) -> bytes | None:
        """For a no-parking event of this camera's own video analysis: the frame it judged,
        with the zone and the vehicle drawn on it (for the guard and the traffic police)."""
        if event.device != watcher.cfg.id or event.detail.get("cause") != "no_parking":
            return None
        video = watcher.video
        zone = event.detail.get("zone")
        if video is None or not isinstance(zone, str):
            return None
        return video.parking_snapshots.get(zone)

    async def sweep(self, now: float | None = None) -> int:
        """Delete the edge's copies older than the retention; returns how many files went."""
        cutoff = (now if now is not None else time.time()) - self._ev.retention_days * 86400
        paths = await self._outbox.expire_evidence(cutoff)

        def delete() -> int:
            n = 0
            for p in paths:
                if not p.endswith(".jpg"):
                    continue  # alarm clips have their own retention (edge/retention.py)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(p)
                    n += 1
            # Empty day folders go too.
            if self.directory.is_dir():
                for day in self.directory.iterdir():
                    with contextlib.suppress(OSError):
                        day.rmdir()
            return n

        n = await asyncio.to_thread(delete)
        if n:
            log.info(
                "evidence retention: deleted %d picture(s) older than %g days",
                n,
                self._ev.retention_days,
            )
        return n

    async def run(self) -> None:
        """The sweeper; in-flight snapshots are cancelled with it at shutdown."""
        try:
            while True:
                await self.sweep()
                await asyncio.sleep(SWEEP_EVERY_S)
        finally:
            for task in list(self._tasks):
                task.cancel()


def evidence_dir(cfg: EdgeConfig) -> Path:
    return cfg.edge.data_dir / "evidence"
