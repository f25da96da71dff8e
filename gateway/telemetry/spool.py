"""The telemetry writer's disk spool: whole batches as segment files, oldest first.

Each segment is one batch of line protocol, gzip-compressed, in a file named
``<sequence>-<points>.lp.gz`` (16-digit sequence, so names sort by age). A segment is written
to a hidden temp file, fsynced, renamed into place and the folder fsynced, so after a crash a
segment is either whole or absent. The spool never grows beyond ``max_bytes``: to make room the
OLDEST segments are deleted and their points counted as dropped (telemetry, not alarms: the
newest is the most useful). Synchronous on purpose: the writer calls it with whole batches.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections import deque
from dataclasses import dataclass
from pathlib import Path

_NAME = re.compile(r"^(\d{16})-(\d+)\.lp\.gz$")


@dataclass(eq=False, slots=True)
class Segment:
    seq: int
    count: int
    size: int
    path: Path


class Spool:
    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.segments: deque[Segment] = deque()
        self.bytes = 0
        self.points = 0
        self.claimed: Segment | None = None
        self._next_seq = 1

    def recover(self) -> None:
        """Create the folder, drop half-written temp files, list the segments by age."""
        self.directory.mkdir(parents=True, exist_ok=True)
        found: list[Segment] = []
        for entry in self.directory.iterdir():
            if entry.name.startswith(".") and entry.name.endswith(".tmp"):
                entry.unlink(missing_ok=True)
                continue
            m = _NAME.match(entry.name)
            if m is None:
                continue
            found.append(Segment(int(m.group(1)), int(m.group(2)), entry.stat().st_size, entry))
        found.sort(key=lambda s: s.seq)
        self.segments = deque(found)
        self.bytes = sum(s.size for s in found)
        self.points = sum(s.count for s in found)
        self._next_seq = (found[-1].seq + 1) if found else 1

    def _make_room(self, size: int) -> list[Segment]:
        """Delete the oldest segments (never the one being sent) until ``size`` more bytes
        fit; return what was deleted."""
        deleted: list[Segment] = []
        while self.bytes + size > self.max_bytes:
            victim = next((s for s in self.segments if s is not self.claimed), None)
            if victim is None:
                break
            self._forget(victim)
            victim.path.unlink(missing_ok=True)
            deleted.append(victim)
        return deleted

    def append(self, data: bytes, count: int) -> tuple[Segment | None, list[Segment]]:
        """Write one batch (already gzip-compressed). Returns the new segment (None when even
        an empty spool cannot hold it) and the older segments deleted to make room. Raises
        OSError when the disk refuses."""
        deleted = self._make_room(len(data))
        if self.bytes + len(data) > self.max_bytes:
            return None, deleted
        seq = self._next_seq
        self._next_seq += 1
        name = f"{seq:016d}-{count}.lp.gz"
        final = self.directory / name
        tmp = self.directory / f".{name}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, final)
        self._fsync_dir()
        seg = Segment(seq, count, len(data), final)
        self.segments.append(seg)
        self.bytes += seg.size
        self.points += seg.count
        return seg, deleted

    def _fsync_dir(self) -> None:
        with contextlib.suppress(OSError):
            dfd = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)

    def oldest(self) -> Segment | None:
        return self.segments[0] if self.segments else None

    def read(self, seg: Segment) -> bytes:
        return seg.path.read_bytes()

    def _forget(self, seg: Segment) -> None:
        with contextlib.suppress(ValueError):
            self.segments.remove(seg)
            self.bytes -= seg.size
            self.points -= seg.count

    def remove(self, seg: Segment) -> None:
        """The segment was delivered (or rejected for good): delete it."""
        self._forget(seg)
        if self.claimed is seg:
            self.claimed = None
        seg.path.unlink(missing_ok=True)
