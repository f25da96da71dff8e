"""Pre- and post-alarm video (issue 13): a rolling buffer per camera and a clip per alarm.

**The buffer.** For every camera with clips on, a supervised ``ffmpeg`` child reads the camera's
RTSP stream (the URL from GetStreamUri, credentials in it) and writes it, *without re-encoding*
(``-c copy``), as MPEG-TS segments of about ``segment_s`` seconds, cut on the wall clock
(``-segment_atclocktime``) at the next key frame. Packets are stamped with the wall clock on
arrival (``-use_wallclock_as_timestamps``), so the segment list ffmpeg keeps (CSV: file, start,
end) gives each segment's real interval; each segment's own timestamps start at zero
(``-reset_timestamps``), which is what the concat demuxer wants. Segments older than
``pre_s + margin_s`` go, unless a clip still being made needs them. When ffmpeg dies or the
camera is down, the buffer waits with a growing backoff (capped at ``restart_max_s``) and tries
again; a stream that stops producing segments is restarted. Each camera's buffer runs on its own:
one that is down holds up nobody.

**The clip.** An alarm (an :class:`~edge.events.EventSink` listener: the alarm is on disk and
queued before we hear of it, and nothing here can delay it) starts one job per camera covering
the alarm's zone (the same cameras that take its snapshots). The job holds the segments of
``[alarm - pre_s, alarm + post_s]`` against deletion, waits until the segment that covers the end
is complete (at most ``ready_grace_s`` more), and joins the segments with ffmpeg's concat demuxer,
again ``-c copy``, into an MP4 with ``+faststart`` (Matroska if the codec does not go into MP4).
What the video actually covers and every gap in it (the camera was down, ffmpeg restarted) are
recorded; a camera with no video at all gives a record saying why. Two alarms close together on
one camera each get their clip: each holds its own segments.

**Shipping.** A clip is written with fsync under ``<clips>/<day>/``, with a JSON manifest beside
it, and queued in the outbox in chunks of :data:`contract.evidence.CHUNK_BYTES` at
:data:`PRIORITY_CLIP` (after alarms, events, snapshots and telemetry), each chunk kept until the
gateway's receipt. A manifest not marked queued (a crash between the file and the outbox) is
queued again at start.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from contract import evidence as wire
from contract import topics
from contract.aio import cancel_and_wait
from contract.config import RECOMMENDED_PRE_S, CameraConfig, ClipsConfig, EdgeConfig
from contract.files import write_durably
from contract.models import Event, new_id
from drivers.onvif import CameraError
from edge.cameras import CameraWatcher, without_credentials
from edge.outbox import EvidenceRecord, Outbox

log = logging.getLogger(__name__)

PRIORITY_CLIP = 4
"""Below telemetry (3): clips are big and never urgent; the outbox hands out bulk messages
within its byte budget, so an alarm behind a clip waits for at most one chunk."""
GAP_TOLERANCE_S = 0.5
"""A hole between segments shorter than this is jitter of the arrival stamps, not a gap."""
POLL_S = 0.25
_EPOCH_MIN = 1_000_000_000.0  # a segment start before 2001 is ffmpeg's "unknown" (the first one)


def find_ffmpeg(name: str = "ffmpeg") -> str | None:
    """The ffmpeg program, or None (``scripts/setup.sh`` installs it: ``apt-get install
    ffmpeg``)."""
    return shutil.which(name)


def clips_dir(cfg: EdgeConfig) -> Path:
    return cfg.clips.directory or cfg.edge.data_dir / "clips"


def clips_on(cfg: EdgeConfig, cam: CameraConfig) -> bool:
    """Whether this camera keeps a buffer."""
    return cam.clips.enabled if cam.clips is not None else cfg.clips.enabled


def is_key_point(cfg: EdgeConfig, cam: CameraConfig) -> bool:
    return cam.key_point or (cam.zone is not None and cam.zone in cfg.clips.retention.key_zones)


def iso(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)


@dataclass(frozen=True, slots=True)
class Segment:
    path: Path
    start: float
    end: float

    @property
    def size(self) -> int:
        try:
            return self.path.stat().st_size
        except OSError:
            return 0


@dataclass
class _Hold:
    start: float
    end: float


class CameraBuffer:
    """One camera's rolling buffer of segments and the ffmpeg that writes it."""

    def __init__(
        self,
        cfg: ClipsConfig,
        watcher: CameraWatcher,
        directory: Path,
        ffmpeg: str | None,
        key_point: bool,
    ) -> None:
        self.cfg = cfg
        self.watcher = watcher
        self.camera = watcher.cfg.id
        self.directory = directory
        self.ffmpeg = ffmpeg
        self.key_point = key_point
        self.segments: dict[str, Segment] = {}
        self.state = "starting" if ffmpeg else "no_ffmpeg"
        self.error: str | None = None if ffmpeg else "ffmpeg is not installed"
        self.restarts = 0
        self.pid: int | None = None
        self.changed = asyncio.Event()
        self._holds: list[_Hold] = []
        self._run_id = ""
        self._stderr: deque[str] = deque(maxlen=5)
        self._proc: asyncio.subprocess.Process | None = None

    # --- what clips and the janitor ask --------------------------------------------------------

    def hold(self, start: float, end: float) -> _Hold:
        """Keep the segments overlapping ``[start, end]`` until :meth:`release`."""
        h = _Hold(start, end)
        self._holds.append(h)
        return h

    def release(self, h: _Hold) -> None:
        with contextlib.suppress(ValueError):
            self._holds.remove(h)

    def held(self, seg: Segment) -> bool:
        return any(seg.end >= h.start and seg.start <= h.end for h in self._holds)

    def covering(self, start: float, end: float) -> list[Segment]:
        """Complete segments overlapping ``[start, end]``, oldest first."""
        segs = [s for s in self.segments.values() if s.end > start and s.start < end]
        return sorted(segs, key=lambda s: s.start)

    def newest_end(self) -> float:
        return max((s.end for s in self.segments.values()), default=0.0)

    def bytes(self) -> int:
        return sum(s.size for s in self.segments.values())

    def points(self) -> dict[str, str | int | float | bool | None]:
        """The buffer's state for status and telemetry."""
        newest = self.newest_end()
        return {
            "clip_buffer": self.state,
            "clip_buffer_error": self.error,
            "clip_buffer_s": round(
                newest - min((s.start for s in self.segments.values()), default=newest), 1
            ),
            "clip_buffer_restarts": self.restarts,
        }

    def cpu_seconds(self) -> float | None:
        """User + system CPU seconds of the running ffmpeg (Linux ``/proc``), for the bench."""
        if self.pid is None:
            return None
        try:
            fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        ticks = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / ticks

    # --- the segmenter ------------------------------------------------------------------------

    def command(self, url: str) -> list[str]:
        assert self.ffmpeg is not None
        keep = int(self.cfg.buffer_s() / self.cfg.segment_s) + 4
        return [
            self.ffmpeg,
            "-nostdin",
            "-hide_banner",
            "-loglevel",
            "error",
            "-rtsp_transport",
            self.cfg.rtsp_transport,
            "-use_wallclock_as_timestamps",
            "1",
            "-i",
            url,
            "-map",
            "0:v",
            "-map",
            "0:a?",
            "-c",
            "copy",
            "-copyts",
            "-f",
            "segment",
            "-segment_time",
            str(self.cfg.segment_s),
            "-segment_atclocktime",
            "1",
            "-segment_format",
            "mpegts",
            "-reset_timestamps",
            "1",
            "-segment_list",
            str(self.directory / f"{self._run_id}.csv"),
            "-segment_list_type",
            "csv",
            "-segment_list_size",
            str(keep),
            str(self.directory / f"{self._run_id}-%06d.ts"),
        ]

    async def run(self) -> None:
        """Keep the segmenter running: restart with backoff; never raises but cancellation."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self._load_existing()
        if self.ffmpeg is None:
            log.error("camera %s: no alarm clips: ffmpeg is not installed", self.camera)
            await asyncio.Event().wait()  # nothing to run; the camera's state says why
        backoff = 1.0
        while True:
            started = time.monotonic()
            try:
                await self._run_once()
            except asyncio.CancelledError:
                raise
            except CameraError as exc:
                self._down(str(exc))
            except Exception as exc:  # the boundary of one camera's buffer
                log.exception("camera %s: clip buffer failed", self.camera)
                self._down(f"{type(exc).__name__}: {exc}")
            if time.monotonic() - started > 60:
                backoff = 1.0
            deadline = time.monotonic() + backoff
            backoff = min(backoff * 2, self.cfg.restart_max_s)
            while time.monotonic() < deadline:
                self._prune()
                await asyncio.sleep(min(POLL_S * 4, max(0.0, deadline - time.monotonic())))

    def _down(self, why: str) -> None:
        if self.state != "down" or self.error != why:
            log.warning("camera %s: clip buffer down: %s", self.camera, why)
        self.state, self.error = "down", why
        self.changed.set()

    async def _run_once(self) -> None:
        url = await self.watcher.stream_url()
        if url is None:
            self._down("camera not connected")
            return
        self._run_id = f"{int(time.time() * 1000):015d}"
        cmd = self.command(url)
        self._stderr.clear()
        proc = await asyncio.create_subprocess_exec(
            *cmd,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        self._proc, self.pid = proc, proc.pid
        self.restarts += 1
        log.info(
            "camera %s: clip buffer recording %s (pid %d)",
            self.camera,
            without_credentials(url),
            proc.pid,
        )
        reader = asyncio.create_task(self._read_stderr(proc))
        spawned = time.time()
        stall = max(4.0 * self.cfg.segment_s, 15.0)
        # Progress is judged on the steady clock: a segment's times are the wall clock's, and a
        # clock stepped back an hour would hide a stall for that hour (one stepped forward
        # would report one at once).
        progress = time.monotonic()
        try:
            while proc.returncode is None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(proc.wait(), POLL_S)
                fresh = self._scan_run(spawned)
                if fresh and self.state != "recording":
                    log.info("camera %s: clip buffer up", self.camera)
                    self.state, self.error = "recording", None
                if fresh:
                    progress = time.monotonic()
                    self.changed.set()
                self._prune()
                if proc.returncode is None and time.monotonic() - progress > stall:
                    self._down(f"no video for {stall:g} s")
                    break
            self._scan_run(spawned)
            if proc.returncode is not None:
                err = self._stderr[-1] if self._stderr else f"exit status {proc.returncode}"
                self._down(f"ffmpeg stopped: {err}"[:200])
        finally:
            await self._stop(proc)
            await cancel_and_wait([reader])
            self._scan_run(spawned)
            self._proc, self.pid = None, None

    async def _stop(self, proc: asyncio.subprocess.Process) -> None:
        if proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()  # ffmpeg closes the open segment and its list on SIGTERM
        try:
            await asyncio.shield(asyncio.wait_for(proc.wait(), 3.0))
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()

    async def _read_stderr(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stderr is not None
        while line := await proc.stderr.readline():
            text = line.decode(errors="replace").strip()
            if text:
                self._stderr.append(text)
                log.debug("camera %s ffmpeg: %s", self.camera, text)

    def _parse_list(self, csv: Path, floor: float) -> int:
        """Add the segments of one list file; returns how many were new."""
        try:
            text = csv.read_text(errors="replace")
        except OSError:
            return 0
        fresh = 0
        for line in text.splitlines():
            parts = line.rsplit(",", 2)
            if len(parts) != 3 or parts[0] in self.segments:
                continue
            try:
                start, end = float(parts[1]), float(parts[2])
            except ValueError:
                continue
            path = self.directory / parts[0]
            if start < _EPOCH_MIN or end < _EPOCH_MIN:
                # The first segment of a run: its first packet has no time stamp, so its
                # times are broken; it is not used (a second or two after a (re)start).
                self.segments[parts[0]] = Segment(path, 0.0, 0.0)  # pruned at once
                continue
            if path.is_file() and end > start:
                self.segments[parts[0]] = Segment(path, start, end)
                fresh += 1
        return fresh

    def _scan_run(self, spawned: float) -> int:
        return self._parse_list(self.directory / f"{self._run_id}.csv", spawned)

    def _load_existing(self) -> None:
        """Segments of earlier runs still on disk (a restart keeps the pre-alarm video)."""
        for csv in sorted(self.directory.glob("*.csv")):
            self._parse_list(csv, 0.0)
        self._prune()

    def _prune(self, now: float | None = None) -> None:
        """Delete segments past the buffer (not those a clip holds), and leftovers."""
        t = now if now is not None else time.time()
        cutoff = t - self.cfg.buffer_s()
        for name, seg in sorted(self.segments.items(), key=lambda kv: kv[1].start):
            if seg.end < cutoff and not self.held(seg):
                self._delete(name)
        limit = self.cfg.max_buffer_mb * 1024 * 1024
        total = self.bytes()
        if total > limit:
            for name, seg in sorted(self.segments.items(), key=lambda kv: kv[1].start):
                if total <= limit:
                    break
                if not self.held(seg):
                    total -= seg.size
                    self._delete(name)
        # Files no list names (ffmpeg killed mid-segment) and lists of finished runs.
        known = set(self.segments)
        with contextlib.suppress(OSError):
            for p in self.directory.iterdir():
                try:
                    old = p.stat().st_mtime < cutoff - 60
                except OSError:
                    continue
                if p.suffix == ".ts" and p.name not in known and old:
                    p.unlink(missing_ok=True)
                elif p.suffix == ".csv" and p.stem != self._run_id and old:
                    prefix = p.stem + "-"
                    if not any(n.startswith(prefix) for n in known):
                        p.unlink(missing_ok=True)

    def _delete(self, name: str) -> None:
        seg = self.segments.pop(name, None)
        if seg is not None:
            seg.path.unlink(missing_ok=True)

    def drop_unheld(self) -> int:
        """Disk full: delete every segment no clip holds; returns bytes freed."""
        freed = 0
        for name, seg in list(self.segments.items()):
            if not self.held(seg):
                freed += seg.size
                self._delete(name)
        return freed


@dataclass
class ClipResult:
    """What one clip job produced (for tests and the bench)."""

    clip_id: str
    event_id: str
    camera: str
    start: float
    end: float
    path: Path | None
    covered: tuple[float, float] | None
    gaps: list[wire.ClipGap]
    error: str | None
    ready_after_s: float
    """Seconds from alarm + post_s until the clip was on disk and queued."""
    content_type: str | None = None
    size: int = 0


@dataclass
class _Stats:
    made: int = 0
    missing: int = 0
    with_gaps: int = 0
    ready: deque[float] = field(default_factory=lambda: deque(maxlen=100))


class ClipRecorder:
    """The buffers of one edge and the clips of its alarms."""

    def __init__(
        self,
        cfg: EdgeConfig,
        outbox: Outbox,
        cameras: dict[str, CameraWatcher],
        select: Callable[[Event], list[CameraWatcher]],
        directory: Path,
    ) -> None:
        self._cfg = cfg
        self.cfg = cfg.clips
        self._outbox = outbox
        self._select = select
        self.directory = directory
        self.ffmpeg = find_ffmpeg(cfg.clips.ffmpeg)
        self.buffers: dict[str, CameraBuffer] = {
            cam_id: CameraBuffer(
                cfg.clips,
                w,
                directory / "buffer" / cam_id,
                self.ffmpeg,
                is_key_point(cfg, w.cfg),
            )
            for cam_id, w in cameras.items()
            if clips_on(cfg, w.cfg)
        }
        self._kinds = set(cfg.clips.kinds)
        self._tasks: set[asyncio.Task[None]] = set()
        self.results: deque[ClipResult] = deque(maxlen=1000)
        """The latest clips made (for tests, the bench and a look at a running edge)."""
        self.stats = _Stats()
        self.listeners: list[Callable[[ClipResult], None]] = []

    @property
    def active(self) -> bool:
        return bool(self.buffers)

    def on_event(self, event: Event) -> None:
        """EventSink listener: the alarm is on disk; start the clip jobs, return at once."""
        if not self.buffers or event.restore or event.kind not in self._kinds:
            return
        t = event.ts.timestamp()
        for watcher in self._select(event):
            buf = self.buffers.get(watcher.cfg.id)
            if buf is None:
                continue
            held = buf.hold(t - self.cfg.pre_s - self.cfg.segment_s, t + self.cfg.post_s + 1)
            task = asyncio.get_running_loop().create_task(
                self._job(event, buf, held), name=f"clip-{event.id}-{buf.camera}"
            )
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def idle(self) -> None:
        """Wait until every clip started so far is made (tests, bench)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def _job(self, event: Event, buf: CameraBuffer, held: _Hold) -> None:
        try:
            result = await self._clip(event, buf)
        except asyncio.CancelledError:
            raise
        except Exception:  # the boundary of one clip: never touches the alarm or other clips
            log.exception("clip of %s from %s failed", event.id, buf.camera)
            return
        finally:
            buf.release(held)
        self.results.append(result)
        for listener in self.listeners:
            listener(result)

    async def _clip(self, event: Event, buf: CameraBuffer) -> ClipResult:
        t = event.ts.timestamp()
        start, end = t - self.cfg.pre_s, t + self.cfg.post_s
        # Wait for the segment that covers the end, and no longer than the grace after it.
        deadline = end + self.cfg.ready_grace_s
        while True:
            now = time.time()
            if buf.newest_end() >= end - 0.05 or now >= deadline:
                break
            if now >= end and buf.state != "recording":
                break  # the camera is down: nothing more is coming
            buf.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(buf.changed.wait(), min(1.0, max(0.05, deadline - now)))
        segs = buf.covering(start, end)
        gaps = _gaps(segs, start, end, buf.error or buf.state)
        clip_id = new_id()
        ident = f"{event.id}-{buf.camera}"
        day = iso(t).strftime("%Y-%m-%d")
        info = wire.ClipInfo(
            clip_id=clip_id,
            start=iso(start),
            end=iso(end),
            covered_start=iso(segs[0].start) if segs else None,
            covered_end=iso(segs[-1].end) if segs else None,
            gaps=gaps[:16],
            key_point=buf.key_point,
        )
        path: Path | None = None
        error: str | None = None
        data = b""
        ctype: wire.ContentType | None = None
        if not segs:
            error = f"no video from {buf.camera}: {buf.error or buf.state}"[:300]
        else:
            try:
                path, ctype = await self._assemble(segs, self.directory / day, ident)
                data = await asyncio.to_thread(path.read_bytes)
            except ClipError as exc:
                error = str(exc)[:300]
                path = None
            else:
                if len(data) > self.cfg.max_clip_mb * 1024 * 1024:
                    error = f"clip of {len(data)} bytes exceeds clips.max_clip_mb"
                    path.unlink(missing_ok=True)
                    path, data, ctype = None, b"", None
        await self._ship(event, buf.camera, clip_id, info, path, ctype, data, error)
        ready = time.time() - end
        covered = (segs[0].start, segs[-1].end) if segs else None
        if error:
            self.stats.missing += 1
            log.warning("clip of %s from %s: %s", event.id, buf.camera, error)
        else:
            self.stats.made += 1
            self.stats.ready.append(ready)
            if gaps:
                self.stats.with_gaps += 1
            log.info(
                "clip of %s from %s: %.1f s, %d bytes, %d gap(s), ready %.2f s after post",
                event.id,
                buf.camera,
                (covered[1] - covered[0]) if covered else 0.0,
                len(data),
                len(gaps),
                ready,
            )
        return ClipResult(
            clip_id,
            event.id,
            buf.camera,
            start,
            end,
            path,
            covered,
            gaps,
            error,
            ready,
            ctype,
            len(data),
        )

    async def _assemble(
        self, segs: list[Segment], day_dir: Path, ident: str
    ) -> tuple[Path, wire.ContentType]:
        """Join the segments without re-encoding: MP4 (faststart), else Matroska."""
        assert self.ffmpeg is not None
        await asyncio.to_thread(day_dir.mkdir, parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=day_dir, prefix=".tmp-") as tmp:
            listing = Path(tmp) / "list.txt"
            listing.write_text(
                "ffconcat version 1.0\n" + "".join(f"file '{_quote(str(s.path))}'\n" for s in segs)
            )
            last = ""
            for ext, ctype, extra in (
                ("mp4", "video/mp4", ["-movflags", "+faststart", "-f", "mp4"]),
                ("mkv", "video/x-matroska", ["-f", "matroska"]),
            ):
                out = Path(tmp) / f"clip.{ext}"
                proc = await asyncio.create_subprocess_exec(
                    self.ffmpeg,
                    "-nostdin",
                    "-hide_banner",
                    "-loglevel",
                    "error",
                    "-f",
                    "concat",
                    "-safe",
                    "0",
                    "-i",
                    str(listing),
                    "-map",
                    "0",
                    "-c",
                    "copy",
                    *extra,
                    "-y",
                    str(out),
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.DEVNULL,
                    stderr=asyncio.subprocess.PIPE,
                )
                _, err = await proc.communicate()
                if proc.returncode == 0 and out.is_file() and out.stat().st_size > 0:
                    final = day_dir / f"{ident}.{ext}"
                    await asyncio.to_thread(_durable_move, out, final)
                    return final, ctype  # type: ignore[return-value]
                lines = err.decode(errors="replace").strip().splitlines()
                last = lines[-1] if lines else f"exit status {proc.returncode}"
            raise ClipError(f"ffmpeg could not join the segments: {last}")

    async def _ship(
        self,
        event: Event,
        camera: str,
        clip_id: str,
        info: wire.ClipInfo,
        path: Path | None,
        ctype: wire.ContentType | None,
        data: bytes,
        error: str | None,
    ) -> None:
        manifest = {
            "clip_id": clip_id,
            "event_id": event.id,
            "kind": event.kind,
            "camera": camera,
            "content_type": ctype,
            "path": str(path) if path else None,
            "error": error,
            "info": json.loads(info.model_dump_json()),
            "queued": False,
        }
        mpath = (
            path
            or self.directory
            / iso(info.start.timestamp()).strftime("%Y-%m-%d")
            / f"{event.id}-{camera}.none"
        ).with_suffix(".json")
        await asyncio.to_thread(write_durably, mpath, json.dumps(manifest).encode())
        await self.queue(manifest, data)
        manifest["queued"] = True
        await asyncio.to_thread(write_durably, mpath, json.dumps(manifest).encode())

    async def queue(self, manifest: dict[str, object], data: bytes) -> None:
        """Put a clip (or its missing record) in the outbox: later chunks first, chunk 0 (the
        clip's evidence record) last."""
        campus, edge = self._cfg.campus.id, self._cfg.edge.id
        info = wire.ClipInfo.model_validate(manifest["info"])
        clip_id = str(manifest["clip_id"])
        event_id = str(manifest["event_id"])
        camera = str(manifest["camera"])
        error = manifest.get("error")
        topic = topics.evidence_topic(campus)
        path = manifest.get("path")
        if error or not data:
            header = wire.EvidenceHeader(
                id=clip_id,
                campus=campus,
                edge=edge,
                event_id=event_id,
                camera=camera,
                taken_at=info.start,
                error=str(error or "empty clip")[:300],
                clip=info,
            )
            chunks = [(header, b"")]
        else:
            ctype = manifest["content_type"]
            assert ctype in wire.VIDEO_TYPES
            n = -(-len(data) // wire.CHUNK_BYTES)
            chunks = wire.clip_chunks(
                clip_id=clip_id,
                chunk_ids=[new_id() for _ in range(max(0, n - 1))],
                campus=campus,
                edge=edge,
                event_id=event_id,
                camera=camera,
                content_type=ctype,  # type: ignore[arg-type]
                data=data,
                info=info,
            )
        for header, piece in chunks[1:]:
            await self._outbox.add(
                topic, wire.encode(header, piece), PRIORITY_CLIP, receipt_key=header.id
            )
        first, piece = chunks[0]
        await self._outbox.add_evidence(
            EvidenceRecord(
                id=clip_id,
                event_id=event_id,
                camera=camera,
                shot=0,
                taken_at=info.start.isoformat(),
                path=str(path) if path else None,
                size=len(data),
                error=first.error,
            ),
            topic,
            wire.encode(first, piece),
            priority=PRIORITY_CLIP,
        )

    async def recover(self) -> int:
        """Queue clips whose manifest says they never reached the outbox (a crash)."""
        n = 0
        for mpath in sorted(self.directory.glob("*/*.json")):
            try:
                manifest = json.loads(mpath.read_text())
                if manifest.get("queued"):
                    continue
                path = manifest.get("path")
                data = await asyncio.to_thread(Path(path).read_bytes) if path else b""
                await self.queue(manifest, data)
                manifest["queued"] = True
                await asyncio.to_thread(write_durably, mpath, json.dumps(manifest).encode())
                n += 1
            except Exception:
                log.exception("could not queue the clip of %s again", mpath)
        return n

    def points(self, camera: str) -> dict[str, str | int | float | bool | None]:
        buf = self.buffers.get(camera)
        return buf.points() if buf is not None else {}

    async def run(self) -> None:
        """The buffers, one task per camera; clip jobs are cancelled with it at shutdown."""
        if self.buffers and self.ffmpeg is None:
            log.error(
                "clips: ffmpeg (%s) not found: no pre-/post-alarm video; install it "
                "(apt-get install ffmpeg, scripts/setup.sh)",
                self.cfg.ffmpeg,
            )
        if self.buffers and self.cfg.pre_s < RECOMMENDED_PRE_S:
            log.warning(
                "clips.pre_s is %g s: issue 13 / GB practice asks for at least %g s",
                self.cfg.pre_s,
                RECOMMENDED_PRE_S,
            )
        self.directory.mkdir(parents=True, exist_ok=True)
        await self.recover()
        tasks = [
            asyncio.create_task(b.run(), name=f"clip-buffer-{cam}")
            for cam, b in self.buffers.items()
        ]
        try:
            await asyncio.gather(*tasks)
        finally:
            await cancel_and_wait([*tasks, *self._tasks])


class ClipError(RuntimeError):
    pass


def _quote(path: str) -> str:
    return path.replace("'", "'\\''")


def _durable_move(src: Path, dst: Path) -> None:
    with open(src, "rb") as f:
        os.fsync(f.fileno())
    os.replace(src, dst)
    fd = os.open(dst.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _gaps(segs: list[Segment], start: float, end: float, why: str) -> list[wire.ClipGap]:
    """The stretches of ``[start, end]`` no segment covers."""
    gaps: list[wire.ClipGap] = []
    cursor = start
    for s in segs:
        if s.start - cursor > GAP_TOLERANCE_S:
            gaps.append(wire.ClipGap(start=iso(cursor), end=iso(s.start), reason=why[:120]))
        cursor = max(cursor, s.end)
    if end - cursor > GAP_TOLERANCE_S:
        gaps.append(wire.ClipGap(start=iso(cursor), end=iso(end), reason=why[:120]))
    return gaps
