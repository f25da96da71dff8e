"""Fault-suite building blocks (tests/test_faults.py): a TCP proxy the test cuts, a small tmpfs
the test fills, the gateway and the edge as real processes, and a load driver that presses
buttons, rams bollards and walks people over a camera's line while the faults happen, keeping
what it injected and when, to match against what the police receiver got."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from contract import topics
from contract.models import Event, new_id, utcnow
from simulators.bollard import BollardSimulator
from simulators.camera import CameraSimulator, Notification
from simulators.modbus_io import DIModuleSimulator
from simulators.police import PoliceReceiver, ReceivedMessage
from tests.gwkit import ACCOUNT, CAMPUS, gateway_config
from tests.helpers import env_with_pythonpath, wait_for

ROOT = Path(__file__).resolve().parent.parent

BUTTONS = {0: 1, 1: 2, 2: 3, 3: 4}
"""DI channel -> alarm zone (Contact ID 120, panic)."""
BOLLARDS = {0: 21, 1: 22}
"""Bollard index -> alarm zone (Contact ID 150, vehicle impact)."""
CAMERA_INTRUSION = (130, 0)
"""A line crossing on the camera: camera_intrusion, sent to the police as 130 (zone 0: camera
analytics carry no zone number)."""
CAMERA_PASSWORD = "fault-cam-pw"

SourceKey = tuple[int, int]
"""(Contact ID code, zone): one physical source at the police receiver."""


# ------------------------------------------------------------------ the link: a TCP proxy


class TcpProxy:
    """Forwards TCP connections to ``target_port``; the test cuts and restores the link.

    ``cut("blackhole")`` is a pulled cable: connections stay open but every byte is dropped in
    both directions and new connections are accepted and never answered, so the peers only
    notice by their own timeouts (MQTT keepalive). ``cut("reset")`` is a router that refuses:
    every connection is reset at once. ``restore()`` resets what lived through a blackhole (its
    byte stream has holes) and forwards again. ``delay`` adds latency to every chunk.
    """

    def __init__(self, target_port: int, host: str = "127.0.0.1") -> None:
        self.host = host
        self.target_port = target_port
        self.port = 0
        self.delay = 0.0
        self.mode: str | None = None
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._live: set[asyncio.StreamWriter] = set()
        self._tainted: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._handle, self.host, 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()
        for w in list(self._live):
            w.transport.abort()
        # Aborted transports end every pump; cancelling the handlers instead would make
        # asyncio log each cancellation as an error.
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)
        if self._server is not None:
            await self._server.wait_closed()

    def cut(self, mode: str = "blackhole") -> None:
        if mode not in ("blackhole", "reset"):
            raise ValueError(mode)
        self.mode = mode
        if mode == "reset":
            for w in list(self._live):
                w.transport.abort()
        else:
            self._tainted |= self._live

    def restore(self) -> None:
        self.mode = None
        for w in list(self._tainted):
            w.transport.abort()
        self._tainted.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._live.add(writer)
        upstream: asyncio.StreamWriter | None = None
        try:
            if self.mode == "reset":
                writer.transport.abort()
                return
            if self.mode == "blackhole":
                self._tainted.add(writer)
                while await reader.read(65536):
                    pass
                return
            try:
                up_reader, upstream = await asyncio.open_connection(self.host, self.target_port)
            except OSError:
                writer.transport.abort()
                return
            self._live.add(upstream)
            self.connections += 1
            await asyncio.gather(
                self._pump(reader, upstream), self._pump(up_reader, writer), return_exceptions=True
            )
        finally:
            for w in (writer, upstream):
                if w is not None:
                    self._live.discard(w)
                    self._tainted.discard(w)
                    w.transport.abort()
            self._tasks.discard(task)

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while data := await src.read(65536):
                if self.mode is not None:
                    continue  # the cable is cut: the bytes are gone
                if self.delay:
                    await asyncio.sleep(self.delay)
                dst.write(data)
                await dst.drain()
        finally:
            dst.transport.abort()


# ------------------------------------------------------------------ the disk: a small tmpfs


def can_mount_tmpfs() -> bool:
    return os.geteuid() == 0 and Path("/proc/filesystems").read_text().find("tmpfs") >= 0


class Tmpfs:
    """A small tmpfs at ``path`` (root only), filled and freed by the test."""

    def __init__(self, path: Path, size_mb: int) -> None:
        self.path = path
        self.size_mb = size_mb
        self.mounted = False
        self.ballast = path / "ballast.bin"

    def mount(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={self.size_mb}m", "tmpfs", str(self.path)],
            check=True,
            capture_output=True,
        )
        self.mounted = True

    def umount(self) -> None:
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.path)], check=False, capture_output=True)
            self.mounted = False

    def free_bytes(self) -> int:
        st = os.statvfs(self.path)
        return st.f_bavail * st.f_frsize

    def fill(self) -> int:
        """Write until the file system says no space is left; returns the bytes written."""
        written = 0
        fd = os.open(self.ballast, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            for size in (256 * 1024, 4096, 512):
                chunk = b"\0" * size
                while True:
                    try:
                        n = os.write(fd, chunk)
                    except OSError as exc:
                        if exc.errno != errno.ENOSPC:
                            raise
                        break
                    written += n
                    if n < size:
                        break
        finally:
            os.close(fd)
        return written

    def free(self) -> None:
        self.ballast.unlink(missing_ok=True)

    def usage(self) -> str:
        """The biggest files, for a report."""
        files = sorted((p.stat().st_size, p) for p in self.path.rglob("*") if p.is_file())
        return ", ".join(f"{p.relative_to(self.path)} {size // 1024} KiB" for size, p in files[-4:])


# ------------------------------------------------------------------ real processes


def clockshift_library() -> Path | None:
    """``tests/clockshift.c`` built (once per content) with the system's C compiler; None when
    there is none (``scripts/setup.sh test`` installs gcc)."""
    source = ROOT / "tests" / "clockshift.c"
    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:16]
    lib = Path(tempfile.gettempdir()) / f"campusguard-clockshift-{digest}.so"
    if lib.exists():
        return lib
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return None
    part = lib.with_suffix(f".{os.getpid()}.part")
    subprocess.run(
        [cc, "-O2", "-shared", "-fPIC", "-o", str(part), str(source), "-ldl"],
        check=True,
        capture_output=True,
    )
    part.replace(lib)
    return lib


class WallClock:
    """The wall clock of the processes started with ``env()``: ``jump(seconds)`` shifts it
    from the real one (an NTP step, a reset RTC); the monotonic clock is untouched."""

    def __init__(self, folder: Path, library: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.file = folder / "clock-shift"
        self.library = library
        self.shift = 0.0
        self.jump(0.0)

    def jump(self, to_seconds: float) -> None:
        """Shift the clock to ``to_seconds`` from the real time (seen within 50 ms)."""
        part = self.file.with_suffix(".part")
        part.write_text(f"{to_seconds}\n")
        part.replace(self.file)
        self.shift = to_seconds

    def env(self) -> dict[str, str]:
        return {"LD_PRELOAD": str(self.library), "CG_CLOCK_SHIFT_FILE": str(self.file)}


class Proc:
    """``python -m campusguard.cli <role> --config FILE`` as a real process with a log file."""

    def __init__(
        self, role: str, cfg_file: Path, log: Path, clock: WallClock | None = None
    ) -> None:
        self.role = role
        self.cfg_file = cfg_file
        self.log = log
        self.clock = clock
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            out.write(f"\n===== start {self.starts + 1} =====\n".encode())
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "campusguard.cli", self.role, "--config", str(self.cfg_file)],
            cwd=ROOT,
            env={**env_with_pythonpath(), **(self.clock.env() if self.clock else {})},
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
        )
        self.starts += 1

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def current_text(self) -> str:
        """The log of the current run only."""
        return self.text().rsplit(f"===== start {self.starts} =====", 1)[-1]

    async def wait_ready(self, marker: str, timeout: float = 30.0) -> None:
        await wait_for(
            lambda: self._alive_or_raise() and marker in self.current_text(),
            timeout=timeout,
            what=f"{self.role} ready ({marker!r})",
        )

    def _alive_or_raise(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"{self.role} exited: {self.current_text()[-3000:]}")
        return True

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
            self.proc = None

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def write_yaml(path: Path, cfg: Any) -> Path:
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), allow_unicode=True))
    return path


# ------------------------------------------------------------------ configs


def fault_edge_config(
    data_dir: Path, broker_port: int, di_port: int, bollard_port: int, camera_port: int
) -> dict[str, Any]:
    """A campus with four panic buttons, two bollards and a camera with a line-crossing rule."""
    return {
        "campus": {"id": CAMPUS, "name": "Test school", "geo": {"lat": 39.7, "lon": 116.3}},
        "edge": {"id": "edge-1", "data_dir": str(data_dir), "status_interval": 2},
        "mqtt": {"host": "127.0.0.1", "port": broker_port, "keepalive": 2},
        "zones": [
            {"id": "gate", "name": "South gate", "location": "south gate"},
            {"id": "yard", "name": "Yard"},
        ],
        "devices": [
            {
                "id": "di-1",
                "profile": "adam-6050",
                "host": "127.0.0.1",
                "port": di_port,
                "poll_interval": 0.05,
                "timeout": 0.3,
                "zone": "gate",
                "inputs": [
                    {
                        "channel": ch,
                        "id": f"btn-{ch}",
                        "kind": "panic",
                        "mode": "latch",
                        "latch": False,
                        "alarm_zone": zone,
                    }
                    for ch, zone in BUTTONS.items()
                ],
            }
        ],
        "bollards": [
            {
                "id": "gate-plc",
                "host": "127.0.0.1",
                "port": bollard_port,
                "poll_interval": 0.05,
                "timeout": 0.3,
                "zone": "gate",
                "bollards": [
                    {"index": i, "id": f"b-{i}", "alarm_zone": zone} for i, zone in BOLLARDS.items()
                ],
            }
        ],
        "cameras": [
            {
                "id": "cam-yard",
                "host": "127.0.0.1",
                "port": camera_port,
                "username": "admin",
                "password": CAMERA_PASSWORD,
                "timeout": 3,
                "zone": "yard",
                "report": ["intrusion"],
            }
        ],
    }


def fault_gateway_config(tmp: Path, broker_port: int, police_port: int) -> dict[str, Any]:
    """The gateway with camera intrusions routed to the police as Contact ID 130 (README: "Tamper
    to the police, by configuration", the same for intrusion)."""
    base = gateway_config(tmp, broker_port, police_port)
    data = base.model_dump(mode="json", exclude_none=True)
    # Its HTTP side on a free port: left out, it took the default 8080, and a second rig on
    # the machine (the soak beside a test run) failed to start.
    data["gateway"]["http"] = {"host": "127.0.0.1", "port": 0}
    data["dc09"]["codes"] = {"camera_intrusion": {"cid": 130, "sia": "BA"}}
    data["dc09"]["ack_timeout"] = 0.5
    data["dc09"]["attempts"] = 2
    data["routing"] = [
        {"sinks": ["dc09"], "kinds": ["panic", "bollard_impact", "camera_intrusion"]}
    ]
    return data


# ------------------------------------------------------------------ the load driver


@dataclass(slots=True)
class Injection:
    key: SourceKey
    mono: float
    phase: str
    optional: bool = False
    """Maybe taken by the edge, maybe not (see :attr:`Driver.camera_unknown`): the police may
    or may not get it, and neither is a fault."""


@dataclass
class Driver:
    """Produces alarms continuously, each at a source the police can tell apart (Contact ID code
    and zone), recording what it injected and when.

    A source only fires again once the edge has taken its previous alarm off the device, as a
    real one would be distinguishable: a DI module's latch holds one press until the edge clears
    it (so two presses while the edge is dead are one press), a bollard's impact sensor stays
    tripped until the edge has read it, and an ONVIF camera has no history, so a line crossing
    counts as injected only once the edge has pulled it (one that no live subscription took
    within ``pull_timeout`` is withdrawn and counted in ``camera_unseen``; one whose
    subscription ended before the driver saw the pull is counted in ``camera_unknown`` and may
    or may not reach the police).
    """

    di: DIModuleSimulator
    bollards: BollardSimulator
    camera: CameraSimulator
    interval: float = 0.1
    """Seconds between two steps (each step fires every source that is free)."""
    pull_timeout: float = 3.0
    phase: str = "start"
    injected: list[Injection] = field(default_factory=list)
    camera_unseen: int = 0
    camera_unknown: int = 0
    running: bool = False
    _task: asyncio.Task[None] | None = None
    _last_press: dict[int, float] = field(default_factory=dict)
    _impacts: dict[int, tuple[str, float, int]] = field(default_factory=dict)
    _pending_note: tuple[Notification, float, set[int]] | None = None

    async def __aenter__(self) -> Driver:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.pause()

    def start(self, phase: str) -> None:
        self.phase = phase
        if self._task is None:
            self.running = True
            self._task = asyncio.create_task(self._run(), name="fault-driver")

    async def pause(self) -> None:
        """Stop producing; an impact in progress is finished (cleared once the edge read it)
        by :meth:`settle`."""
        task, self._task = self._task, None
        self.running = False
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def settle(self, timeout: float = 60.0) -> None:
        """Finish what is in progress: impacts cleared after the edge read them, the last
        line crossing pulled or withdrawn, every latch taken by the edge."""

        def done() -> bool:
            self._step_bollards(now=time.monotonic(), inject=False)
            self._step_camera(now=time.monotonic(), inject=False)
            return (
                not self._impacts
                and self._pending_note is None
                and not any(self.di.latched(ch) for ch in BUTTONS)
            )

        await wait_for(done, timeout=timeout, what="the driver's sources to settle")

    async def _run(self) -> None:
        presses: set[asyncio.Task[None]] = set()
        try:
            while True:
                now = time.monotonic()
                for ch, zone in BUTTONS.items():
                    free = not self.di.latched(ch) and not self.di.level(ch)
                    if free and now - self._last_press.get(ch, 0.0) >= 4 * self.interval:
                        self._last_press[ch] = now
                        self.injected.append(Injection((120, zone), now, self.phase))
                        t = asyncio.create_task(self.di.press(ch, 0.01))
                        presses.add(t)
                        t.add_done_callback(presses.discard)
                self._step_bollards(now, inject=True)
                self._step_camera(now, inject=True)
                await asyncio.sleep(self.interval)  # the load's pace
        finally:
            for t in list(presses):
                await asyncio.shield(t)

    def _step_bollards(self, now: float, *, inject: bool) -> None:
        # Reads the edge made since a change: the impact is cleared, and the next one
        # injected, only after it has been read a few times (at 20 polls/s, ~0.3 s).
        seen = self.bollards.requests_seen
        for idx, zone in BOLLARDS.items():
            state = self._impacts.get(idx)
            if state is None:
                if inject and now - self._last_press.get(100 + idx, 0.0) >= 6 * self.interval:
                    self.bollards.inject_impact(idx)
                    self.injected.append(Injection((150, zone), now, self.phase))
                    self._impacts[idx] = ("tripped", now, seen)
            else:
                stage, since, at = state
                if seen - at < 12 or now - since < 0.3:
                    continue
                if stage == "tripped":
                    self.bollards.local_command(idx, "clear_impact")
                    self._impacts[idx] = ("clearing", now, seen)
                else:
                    del self._impacts[idx]
                    self._last_press[100 + idx] = now

    def _step_camera(self, now: float, *, inject: bool) -> None:
        subs = self.camera._subs
        if self._pending_note is not None:
            note, since, holders = self._pending_note
            pulled = any(
                ident in subs and not any(n is note for n in subs[ident].queue) for ident in holders
            )
            if pulled:
                # Counted, not required: a crossing the edge pulls may still be the one the
                # camera resends as "Initialized" on a new subscription (edge restarts), which
                # the edge rightly does not take for a new crossing.
                self.injected.append(Injection(CAMERA_INTRUSION, since, self.phase, True))
                self._pending_note = None
                self._last_press[200] = now
            elif now - since >= self.pull_timeout:
                for sub in subs.values():
                    sub.queue[:] = [n for n in sub.queue if n is not note]
                if any(ident not in subs for ident in holders):
                    # The edge ended that subscription: it may have pulled the note first.
                    self.camera_unknown += 1
                    self.injected.append(Injection(CAMERA_INTRUSION, since, self.phase, True))
                else:
                    self.camera_unseen += 1
                self._pending_note = None
                self._last_press[200] = now
            return
        if inject and now - self._last_press.get(200, 0.0) >= 3 * self.interval:
            note = self.camera.inject("line_crossing", source="line-1")
            holders = {i for i, s in subs.items() if any(n is note for n in s.queue)}
            self._pending_note = (note, now, holders)


# ------------------------------------------------------------------ the tally


@dataclass
class PhaseResult:
    name: str
    injected: int
    delivered: int
    lost: int
    duplicates: int
    suppressed: int
    max_delay: float
    p99_delay: float
    where: str = ""
    """Which sources lost or gained alarms, if any."""

    def line(self) -> str:
        return (
            f"{self.name}: injected {self.injected} / delivered {self.delivered} / lost "
            f"{self.lost} / duplicates {self.duplicates} (retransmissions suppressed by the "
            f"receiver {self.suppressed}) / max delay {self.max_delay:.2f} s "
            f"(p99 {self.p99_delay:.2f} s)" + (f" [{self.where}]" if self.where else "")
        )


def alarm_key(m: ReceivedMessage) -> SourceKey | None:
    """The source of an alarm (not a restore) of the rig's campus at the receiver (other
    campuses' alarms, as in ``bench/soak.py``, are not the driver's)."""
    cid = m.contact_id
    if cid is None or cid.qualifier != 1 or m.account != ACCOUNT:
        return None
    return (cid.code, cid.zone)


def police_alarms(police: PoliceReceiver) -> dict[SourceKey, list[ReceivedMessage]]:
    out: dict[SourceKey, list[ReceivedMessage]] = defaultdict(list)
    for m in police.messages:
        key = alarm_key(m)
        if key is not None:
            out[key].append(m)
    return out


def all_delivered(driver: Driver, police: PoliceReceiver) -> bool:
    want = Counter(i.key for i in driver.injected if not i.optional)
    got = police_alarms(police)
    return all(len(got.get(k, [])) >= n for k, n in want.items())


def tally(
    driver: Driver, police: PoliceReceiver, suppressed_by_phase: dict[str, int]
) -> list[PhaseResult]:
    """Match the k-th injection at a source with the k-th alarm the police got from it."""
    got = police_alarms(police)
    by_key: dict[SourceKey, list[Injection]] = defaultdict(list)
    for inj in driver.injected:
        by_key[inj.key].append(inj)
    phases: dict[str, dict[str, Any]] = {}
    for inj in driver.injected:
        phases.setdefault(
            inj.phase, {"n": 0, "ok": 0, "lost": 0, "dup": 0, "delays": [], "where": []}
        )
    for key, injs in by_key.items():
        msgs = got.get(key, [])
        optional = [i for i in injs if i.optional]
        for k, inj in enumerate(i for i in injs if not i.optional):
            p = phases[inj.phase]
            p["n"] += 1
            if k < len(msgs):
                p["ok"] += 1
                p["delays"].append(msgs[k].received_mono - inj.mono)
            else:
                p["lost"] += 1
                p["where"].append(f"lost {key}")
        extra = max(0, len(msgs) - (len(injs) - len(optional)))
        came = min(extra, len(optional))  # crossings the edge did take after all
        for inj in optional[:came]:
            phases[inj.phase]["n"] += 1
            phases[inj.phase]["ok"] += 1
        if extra > came:
            phases[injs[-1].phase]["dup"] += extra - came
            phases[injs[-1].phase]["where"].append(f"{extra - came} more than injected at {key}")
    results = []
    for name, p in phases.items():
        delays = sorted(p["delays"]) or [0.0]
        results.append(
            PhaseResult(
                name,
                p["n"],
                p["ok"],
                p["lost"],
                p["dup"],
                suppressed_by_phase.get(name, 0),
                delays[-1],
                delays[min(len(delays) - 1, int(0.99 * len(delays)))],
                "; ".join(sorted(set(p["where"]))),
            )
        )
    return results


@dataclass(frozen=True, slots=True)
class OutOfOrder:
    device: str
    edge_seq: int
    after: int
    police_mono: float


def gateway_exactly_once(
    db: Path, police: PoliceReceiver
) -> tuple[int, list[str], list[OutOfOrder]]:
    """Through the gateway's own store: each alarm message of the rig's campus the police
    recorded maps (by its DC-09 sequence number) to one alarm id; returns (alarms, alarm ids
    recorded twice, alarms that reached the police after a later one of the same device).

    Sequence numbers wrap after 9,999 (an hour's soak relays 24,000 alarms): the k-th message
    with number s is the campus' k-th job with number s, in the order the jobs were made."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = con.execute(
            "SELECT j.seq, e.id, e.device, e.point, e.seq FROM relay_jobs j "
            "JOIN events e ON e.id = j.alarm_id WHERE j.sink = 'dc09' AND j.seq IS NOT NULL "
            "AND e.campus = ? ORDER BY j.created_at, j.rowid",
            (CAMPUS,),
        ).fetchall()
    finally:
        con.close()
    by_seq: dict[int, list[tuple[str, str, int]]] = defaultdict(list)
    for r in rows:
        by_seq[int(r[0])].append((str(r[1]), f"{r[2]}/{r[3]}", int(r[4])))
    taken: Counter[int] = Counter()
    seen: Counter[str] = Counter()
    last: dict[str, int] = {}
    out_of_order: list[OutOfOrder] = []
    n = 0
    for m in police.messages:
        if m.account != ACCOUNT or m.contact_id is None or not by_seq.get(m.seq):
            continue
        # Every message of the campus takes its job's place, restores too (they have jobs
        # with numbers of their own): counting alarms only shifted the mapping at each wrap.
        jobs = by_seq[m.seq]
        alarm_id, device, edge_seq = jobs[min(taken[m.seq], len(jobs) - 1)]
        taken[m.seq] += 1
        if alarm_key(m) is None:
            continue
        n += 1
        seen[alarm_id] += 1
        if edge_seq < last.get(device, -1):
            out_of_order.append(OutOfOrder(device, edge_seq, last[device], m.received_mono))
        last[device] = max(edge_seq, last.get(device, -1))
    return n, [a for a, c in seen.items() if c > 1], out_of_order


# ------------------------------------------------------------------ a campus that floods


def flood_payload(campus: str, seq: int, kind: str) -> bytes:
    ev = Event.model_validate(
        {
            "id": new_id(),
            "campus": campus,
            "edge": "edge-flood",
            "seq": seq,
            "ts": utcnow(),
            "kind": kind,
            "severity": "critical" if kind == "panic" else "info",
            "device": "cam-1",
            "point": None,
            "zone_no": 9,
            "text": "flood",
        }
    )
    return ev.model_dump_json().encode()


def flood(port: int, campus: str, kind: str, rate: float, seconds: float) -> int:
    """Publish ``kind`` events as ``campus`` at ``rate`` per second (0: as fast as the broker
    takes them, QoS 1, 100 in flight) for ``seconds``; returns how many were acknowledged. Run
    in a process of its own (``python -m tests.faults flood ...``) so that the test's own
    simulators do not share its CPU time."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"flood-{campus}")
    client.max_inflight_messages_set(100)
    client.max_queued_messages_set(200)
    acked = [0]
    client.on_publish = lambda *a: acked.__setitem__(0, acked[0] + 1)
    client.connect("127.0.0.1", port, keepalive=30)
    client.loop_start()
    topic = topics.event_topic(campus)
    start = time.monotonic()
    seq = 0
    try:
        while (now := time.monotonic()) - start < seconds:
            if rate > 0 and seq >= (now - start) * rate:
                time.sleep(0.001)  # pacing the flood
                continue
            seq += 1
            info = client.publish(topic, flood_payload(campus, seq, kind), qos=1)
            if info.rc == mqtt.MQTT_ERR_QUEUE_SIZE:
                seq -= 1
                time.sleep(0.001)  # the client's queue is full: let it drain
    finally:
        client.loop_stop()
        client.disconnect()
    return acked[0]


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("what", choices=["flood"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--campus", required=True)
    parser.add_argument("--kind", default="camera_motion")
    parser.add_argument("--rate", type=float, default=0.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    a = parser.parse_args()
    print(json.dumps({"acked": flood(a.port, a.campus, a.kind, a.rate, a.seconds)}), flush=True)
