"""Retention of alarm video at the edge, and what happens when the data disk fills up (issue 13).

**Retention.** A clip is deleted ``clips.retention.ordinary_days`` after its alarm (30 by
default), or ``key_point_days`` (90) for a key-point camera (``key_point: true`` or a zone in
``key_zones``), but never while its alarm is still open: an alarm (of an alarm kind) is open until
the centre reports it closed (the alarm status in the outbox) or the guard console closed it.
The rolling buffer looks after itself (:class:`edge.clips.CameraBuffer`); snapshots have their own
sweeper (:class:`edge.evidence.EvidenceCollector`).

**Disk full.** Every ``check_every_s`` the free space of the edge's data disk is measured. Below
``min_free_mb`` video goes, oldest first: ordinary video (clips of closed alarms, then buffer
segments no clip being made needs), then key-point video, until the free space is back above
the threshold. Alarms, events and the outbox are never touched. The first time, a
``storage_low`` event (for the technician, not the police) is raised with what was deleted and
whether it was enough; when the space is back, its restore follows.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from contract.models import ALARM_KINDS
from edge.clips import ClipRecorder
from edge.events import EventSink

log = logging.getLogger(__name__)

MB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class _Video:
    """Something deletable: a clip (with its manifest) or a buffer segment."""

    key_point: bool
    start: float
    files: tuple[Path, ...]
    alarm: str | None = None
    kind: str | None = None


class EdgeRetention:
    """The edge's video sweeper and disk-full guard."""

    def __init__(
        self,
        recorder: ClipRecorder,
        sink: EventSink,
        device: str,
        data_dir: Path,
        alarm_open: Callable[[str], Awaitable[bool]],
        free_bytes: Callable[[Path], int] | None = None,
    ) -> None:
        self.recorder = recorder
        self.cfg = recorder.cfg.retention
        self._sink = sink
        self._device = device
        self.data_dir = data_dir
        self._alarm_open = alarm_open
        self._free = free_bytes or (lambda p: shutil.disk_usage(p).free)
        self.low = False
        self.deleted_for_space = 0
        self.deleted_by_age = 0

    # --- what there is ------------------------------------------------------------------------

    def _clips(self) -> list[_Video]:
        out: list[_Video] = []
        for mpath in self.recorder.directory.glob("*/*.json"):
            try:
                m = json.loads(mpath.read_text())
                info = m["info"]
                start = datetime.fromisoformat(info["start"]).timestamp()
            except (OSError, ValueError, KeyError, TypeError):
                continue
            files = [mpath]
            if m.get("path"):
                files.insert(0, Path(m["path"]))
            out.append(
                _Video(
                    bool(info.get("key_point")),
                    start,
                    tuple(files),
                    alarm=m.get("event_id"),
                    kind=m.get("kind"),
                )
            )
        return out

    async def _protected(self, v: _Video) -> bool:
        """A clip an open alarm still needs."""
        if v.alarm is None:
            return False
        if v.kind is not None and v.kind not in ALARM_KINDS:
            return False  # not an alarm (a camera's intrusion rule): nothing to close
        return await self._alarm_open(v.alarm)

    @staticmethod
    def _delete(v: _Video) -> int:
        freed = 0
        for f in v.files:
            with contextlib.suppress(OSError):
                freed += f.stat().st_size
                f.unlink()
        return freed

    # --- retention ----------------------------------------------------------------------------

    async def sweep(self, now: float | None = None) -> int:
        """Delete clips past their retention (not those of open alarms); returns how many."""
        t = now if now is not None else time.time()
        n = 0
        for v in self._clips():
            days = self.cfg.key_point_days if v.key_point else self.cfg.ordinary_days
            if v.start > t - days * 86400 or await self._protected(v):
                continue
            await asyncio.to_thread(self._delete, v)
            n += 1
        if n:
            self.deleted_by_age += n
            log.info("clip retention: deleted %d clip(s)", n)
        return n

    # --- disk full ----------------------------------------------------------------------------

    def free_mb(self) -> float:
        return self._free(self.data_dir) / MB

    async def check_space(self) -> int:
        """Free space if it is short; returns how many items were deleted."""
        limit = self.cfg.min_free_mb
        if self.free_mb() >= limit:
            if self.low:
                self.low = False
                log.info("storage: %.0f MB free again", self.free_mb())
                await self._sink.emit(
                    "storage_low",
                    device=self._device,
                    restore=True,
                    detail={"free_mb": round(self.free_mb(), 1), "min_free_mb": limit},
                )
            return 0
        candidates: list[_Video] = []
        for v in self._clips():
            if not await self._protected(v):
                candidates.append(v)
        for buf in self.recorder.buffers.values():
            for seg in list(buf.segments.values()):
                if not buf.held(seg):
                    candidates.append(_Video(buf.key_point, seg.start, (seg.path,)))
        # Ordinary before key points; oldest first within each.
        candidates.sort(key=lambda v: (v.key_point, v.start))
        deleted = freed = 0
        ordinary = key = 0
        for v in candidates:
            if self.free_mb() >= limit:
                break
            freed += await asyncio.to_thread(self._delete, v)
            deleted += 1
            if v.key_point:
                key += 1
            else:
                ordinary += 1
        for buf in self.recorder.buffers.values():  # forget deleted segments
            for name, seg in list(buf.segments.items()):
                if not seg.path.exists():
                    buf.segments.pop(name, None)
        self.deleted_for_space += deleted
        enough = self.free_mb() >= limit
        log.warning(
            "storage low: %.0f MB free (< %d MB): deleted %d video file(s) (%d ordinary, %d key "
            "point), %.1f MB%s",
            self.free_mb(),
            limit,
            deleted,
            ordinary,
            key,
            freed / MB,
            "" if enough else "; still short (alarms and the outbox are never deleted)",
        )
        if not self.low:
            self.low = True
            await self._sink.emit(
                "storage_low",
                device=self._device,
                detail={
                    "free_mb": round(self.free_mb(), 1),
                    "min_free_mb": limit,
                    "deleted": deleted,
                    "deleted_ordinary": ordinary,
                    "deleted_key_point": key,
                    "freed_mb": round(freed / MB, 1),
                    "enough": enough,
                },
            )
        return deleted

    async def run(self) -> None:
        last_sweep = 0.0
        while True:
            try:
                await self.check_space()
                if time.monotonic() - last_sweep >= self.cfg.sweep_every_s or not last_sweep:
                    last_sweep = time.monotonic()
                    await self.sweep()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("clip retention / free-space check failed; trying again later")
            await asyncio.sleep(self.cfg.check_every_s)
