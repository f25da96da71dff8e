"""The campus edge daemon: the supervisor that starts everything in order and stops it cleanly.

    async with Outbox(...) as outbox, ModbusBus() as bus, Uplink(...) as uplink, TaskGroup():
        one poller per device

The outbox opens first and closes last, so nothing a poller produces can be lost on the way down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pydantic import ValidationError

from contract import signing, topics
from contract.aio import cancel_and_wait
from contract.config import (
    BollardControllerConfig,
    ConfigError,
    EdgeConfig,
    ModbusDeviceConfig,
)
from contract.models import (
    MAX_PAYLOAD_BYTES,
    AlarmStatus,
    BollardCommandMessage,
    DrillCommand,
    Event,
    Receipt,
    SelftestRequest,
)
from drivers.modbus.bollard import BollardController
from drivers.modbus.bollard_profile import load_bollard_profile
from drivers.modbus.bus import ModbusBus, ModbusConnection
from drivers.modbus.errors import ProfileError
from drivers.modbus.inputs import ChannelSpec, DIModuleReader, EolParams, check_channel
from drivers.modbus.profile import load_profile
from drivers.onvif import NotifyListener
from edge.bollard_poller import BollardPoller
from edge.cameras import CameraWatcher
from edge.clips import ClipRecorder, clips_dir
from edge.command_auth import CommandGuard
from edge.drills import DrillManager
from edge.events import EventSink
from edge.evidence import EvidenceCollector, evidence_dir
from edge.linkage import Linkage
from edge.outbox import Outbox
from edge.pollers import ModbusPoller
from edge.retention import EdgeRetention
from edge.selftest import SelfTester, SelftestSink
from edge.telemetry import EdgeTelemetry, SampleSource
from edge.uplink import Uplink

if TYPE_CHECKING:
    from edge.console.service import ConsoleService

log = logging.getLogger(__name__)

VERSION = "0.1.0"


@dataclass
class EdgeRuntime:
    """Handles to the running pieces (for the CLI, the console and tests)."""

    cfg: EdgeConfig
    outbox: Outbox
    uplink: Uplink
    sink: EventSink
    pollers: dict[str, ModbusPoller] = field(default_factory=dict)
    bollards: dict[str, BollardPoller] = field(default_factory=dict)
    cameras: dict[str, CameraWatcher] = field(default_factory=dict)
    evidence: EvidenceCollector | None = None
    clips: ClipRecorder | None = None
    """Pre- and post-alarm video (issue 13); None without cameras."""
    retention: EdgeRetention | None = None
    telemetry: EdgeTelemetry | None = None
    notify: NotifyListener | None = None
    drills: DrillManager | None = None
    selftest: SelfTester | None = None
    linkage: Linkage | None = None
    rejected: int = 0
    commands: CommandGuard | None = None
    """Signature, expiry and replay checks of commands from the centre (issue 11)."""
    status_listeners: list[Callable[[AlarmStatus], None]] = field(default_factory=list)
    """Called with each new alarm status from the centre (the guard console)."""
    console_port: int | None = None
    """The guard console's bound port, while it runs (``console.enabled``)."""
    console: ConsoleService | None = None
    metrics_port: int | None = None
    """The Prometheus endpoint's bound port, while it runs (``metrics``)."""


def channel_specs(dev: ModbusDeviceConfig) -> list[ChannelSpec]:
    return [
        ChannelSpec(
            channel=i.channel,
            mode=i.mode,
            active_level=i.active,
            eol=EolParams(scheme=i.eol.scheme) if i.mode == "eol" and i.eol else None,
        )
        for i in dev.inputs
    ]


def check_devices(cfg: EdgeConfig, source: str) -> None:
    """Load every device's profile and check its inputs against it, before anything starts.

    Raises:
        ConfigError: naming the file, the key and what is wrong.
    """
    for i, dev in enumerate(cfg.devices):
        try:
            profile = load_profile(dev.profile)
        except ProfileError as exc:
            raise ConfigError(f"{source}: devices[{i}].profile: {exc}") from None
        if dev.transport not in profile.transports:
            raise ConfigError(
                f"{source}: devices[{i}].transport: {profile.model} speaks "
                f"{', '.join(profile.transports)}, not {dev.transport}"
            )
        for j, (spec, inp) in enumerate(zip(channel_specs(dev), dev.inputs, strict=True)):
            try:
                check_channel(profile, spec)
            except ValueError as exc:
                raise ConfigError(f"{source}: devices[{i}].inputs[{j}] ({inp.id}): {exc}") from None
    for i, ctl in enumerate(cfg.bollards):
        try:
            bprofile = load_bollard_profile(ctl.profile)
        except ProfileError as exc:
            raise ConfigError(f"{source}: bollards[{i}].profile: {exc}") from None
        top = max(b.index for b in ctl.bollards)
        if top >= bprofile.max_bollards:
            raise ConfigError(
                f"{source}: bollards[{i}].bollards: index {top} is past what {bprofile.model} "
                f"maps (0..{bprofile.max_bollards - 1})"
            )


def _connection(
    bus: ModbusBus, dev: ModbusDeviceConfig | BollardControllerConfig
) -> ModbusConnection:
    if dev.transport == "tcp":
        assert dev.host is not None
        return bus.get_tcp(dev.host, dev.port)
    assert dev.serial is not None
    s = dev.serial
    return bus.get_rtu(
        s.port, baudrate=s.baudrate, parity=s.parity, stopbits=s.stopbits, bytesize=s.bytesize
    )


@contextlib.asynccontextmanager
async def run_edge(cfg: EdgeConfig) -> AsyncIterator[EdgeRuntime]:
    """Start the edge; yields its runtime; stops everything in order on exit."""
    data_dir = cfg.edge.data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    async with Outbox(data_dir / "outbox.db") as outbox:
        sink: EventSink = SelftestSink(cfg, outbox)
        runtime_ref: list[EdgeRuntime] = []
        commands = CommandGuard(cfg.command_signing, data_dir)

        async def on_message(topic: str, payload: bytes) -> None:
            await _handle_down(runtime_ref[0], topic, payload)

        async with contextlib.AsyncExitStack() as stack:
            uplink = await stack.enter_async_context(
                Uplink(cfg.mqtt, cfg.campus.id, cfg.edge.id, outbox, on_message, VERSION)
            )
            # One bus per timeout value: devices on one connection share its timeout.
            buses: dict[float, ModbusBus] = {}
            timeouts = {d.timeout for d in cfg.devices} | {b.timeout for b in cfg.bollards}
            for timeout in sorted(timeouts):
                buses[timeout] = await stack.enter_async_context(ModbusBus(timeout=timeout))
            rt = EdgeRuntime(cfg=cfg, outbox=outbox, uplink=uplink, sink=sink, commands=commands)
            runtime_ref.append(rt)
            # Before any poller runs: alarms after a restart mid-drill are drills at once.
            rt.drills = DrillManager(cfg, sink, outbox)
            await rt.drills.restore()
            await sink.load_latches()
            saved = await outbox.load_point_states()
            for dev in cfg.devices:
                profile = load_profile(dev.profile)
                conn = _connection(buses[dev.timeout], dev)
                unit = dev.unit if dev.unit is not None else profile.default_unit
                reader = DIModuleReader(conn, profile, unit, channel_specs(dev))
                rt.pollers[dev.id] = ModbusPoller(
                    dev,
                    cfg.campus.id,
                    reader,
                    sink,
                    outbox,
                    saved,
                    uplink.set_retained,
                    cfg.edge.status_interval,
                )
            for ctl in cfg.bollards:
                bprofile = load_bollard_profile(ctl.profile)
                controller = BollardController(
                    _connection(buses[ctl.timeout], ctl),
                    bprofile,
                    ctl.unit,
                    bollards=max(b.index for b in ctl.bollards) + 1,
                )
                rt.bollards[ctl.id] = BollardPoller(
                    ctl, cfg.campus, controller, sink, uplink.set_retained
                )
            notify: NotifyListener | None = None
            if cfg.notify is not None and any(c.events == "webhook" for c in cfg.cameras):
                # One listener for every camera that pushes its events (Notify).
                notify = await stack.enter_async_context(
                    NotifyListener(
                        cfg.notify.host,
                        cfg.notify.port,
                        cfg.notify.advertised_url,
                        max_body=cfg.notify.max_body,
                    )
                )
            rt.notify = notify
            for cam in cfg.cameras:
                rt.cameras[cam.id] = CameraWatcher(
                    cam, cfg.campus.id, sink, uplink.set_retained, notify
                )
            rt.evidence = EvidenceCollector(cfg, outbox, rt.cameras, evidence_dir(cfg))
            sink.listeners.append(rt.evidence.on_event)
            runners = [(dev_id, p.run()) for dev_id, p in rt.pollers.items()]
            runners.append(("evidence", rt.evidence.run()))
            if cfg.cameras:
                # Alarm clips: after the alarm is on disk, never in its way.
                rt.clips = ClipRecorder(
                    cfg, outbox, rt.cameras, rt.evidence.cameras_for, clips_dir(cfg)
                )
                if rt.clips.active:
                    sink.listeners.append(rt.clips.on_event)
                    runners.append(("clips", rt.clips.run()))
                    # Clip retention and the disk-full guard (video is what it can free).
                    rt.retention = EdgeRetention(
                        rt.clips, sink, cfg.edge.id, data_dir, _alarm_open(rt)
                    )
                    runners.append(("retention", rt.retention.run()))
            if cfg.linkage:
                # Site reactions: after the alarm is on disk, never in its way.
                rt.linkage = Linkage(cfg, sink, rt.pollers, rt.cameras, rt.bollards)
                sink.listeners.append(rt.linkage.on_event)
                rt.status_listeners.append(rt.linkage.on_status)
                runners.append(("linkage", rt.linkage.run()))
            runners.append(("drills", rt.drills.run()))
            rt.selftest = SelfTester(rt)
            stack.push_async_callback(rt.selftest.aclose)
            if cfg.test_signal.enabled:
                runners.append(("test-signal", rt.selftest.run_periodic()))
            if cfg.telemetry.enabled:
                rt.telemetry = _telemetry(rt)
                runners.append(("telemetry", rt.telemetry.run()))
            runners += [(cam_id, c.run()) for cam_id, c in rt.cameras.items()]
            runners += [(ctl_id, b.run()) for ctl_id, b in rt.bollards.items()]
            tasks = [asyncio.create_task(coro, name=f"poll-{name}") for name, coro in runners]
            try:
                if cfg.console.enabled:
                    # Imported here: an edge without a console never loads the web stack.
                    from edge.console.app import serve_console

                    rt.console_port = await stack.enter_async_context(serve_console(rt))
                if cfg.metrics is not None:
                    from edge.metrics import serve_metrics

                    rt.metrics_port = await stack.enter_async_context(
                        serve_metrics(rt, cfg.metrics.host, cfg.metrics.port)
                    )
                log.info(
                    "edge %s of campus %s running: %d device(s), broker %s:%d",
                    cfg.edge.id,
                    cfg.campus.id,
                    len(rt.pollers) + len(rt.bollards) + len(rt.cameras),
                    cfg.mqtt.host,
                    cfg.mqtt.port,
                )
                yield rt
            finally:
                await cancel_and_wait(tasks)


def _telemetry(rt: EdgeRuntime) -> EdgeTelemetry:
    sources: list[SampleSource] = [p.telemetry for p in rt.pollers.values()]
    sources += [b.telemetry for b in rt.bollards.values()]
    sources += [c.telemetry for c in rt.cameras.values()]

    def extra() -> dict[str, float | int | bool]:
        ev = rt.evidence
        out: dict[str, float | int | bool] = {
            "downlink_rejected": rt.rejected,
            "evidence_taken": ev.taken if ev else 0,
            "evidence_missing": ev.missing if ev else 0,
        }
        if rt.clips is not None and rt.clips.active:
            out["clips_made"] = rt.clips.stats.made
            out["clips_missing"] = rt.clips.stats.missing
            out["clips_with_gaps"] = rt.clips.stats.with_gaps
            out["clip_buffers_recording"] = sum(
                b.state == "recording" for b in rt.clips.buffers.values()
            )
        if rt.retention is not None:
            out["storage_free_mb"] = round(rt.retention.free_mb(), 1)
            out["storage_low"] = rt.retention.low
        return out

    return EdgeTelemetry(rt.cfg, rt.outbox, sources, rt.uplink.connected.is_set, extra)


def _alarm_open(rt: EdgeRuntime) -> Callable[[str], Awaitable[bool]]:
    """Whether an alarm is still open, as far as the edge knows: until the centre reports it
    closed or the guard console closed it."""

    async def is_open(alarm_id: str) -> bool:
        if any(s[0] == "closed" for s in await rt.outbox.alarm_statuses(alarm_id)):
            return False
        if rt.console is not None:
            rec = await rt.console.store.alarm(alarm_id)
            if rec is not None and rec.state == "closed":
                return False
        return True

    return is_open


_DOWN_MODELS: dict[
    str,
    type[Receipt]
    | type[BollardCommandMessage]
    | type[AlarmStatus]
    | type[DrillCommand]
    | type[SelftestRequest],
] = {
    "receipt": Receipt,
    "command": BollardCommandMessage,
    "alarm-status": AlarmStatus,
    "drill": DrillCommand,
    "selftest": SelftestRequest,
}


def _reject(rt: EdgeRuntime, topic: str, why: str) -> None:
    rt.rejected += 1
    log.warning("rejected message on %s: %s", topic, why)


async def _handle_down(rt: EdgeRuntime, topic: str, payload: bytes) -> None:
    """What the centre sends this campus: receipts, bollard commands, alarm status."""
    parsed = topics.parse_topic(topic)
    model = _DOWN_MODELS.get(parsed.kind) if parsed is not None else None
    if parsed is None or parsed.campus != rt.cfg.campus.id or model is None:
        _reject(rt, topic, "not a topic of this campus' downlink")
        return
    if len(payload) > MAX_PAYLOAD_BYTES:
        _reject(rt, topic, f"{len(payload)} bytes")
        return
    signed = parsed.kind in signing.SIGNED_KINDS and rt.commands is not None
    if signed:
        assert rt.commands is not None
        unwrapped = rt.commands.unwrap(topic, parsed.kind, payload)
        if unwrapped is None:
            rt.rejected += 1
            return
        payload = unwrapped
    try:
        msg = model.model_validate_json(payload)
    except ValidationError as exc:
        _reject(rt, topic, exc.errors()[0]["msg"])
        return
    if msg.campus != rt.cfg.campus.id:
        _reject(rt, topic, f"payload is for campus {msg.campus}")
        return
    if signed and isinstance(msg, BollardCommandMessage | DrillCommand | SelftestRequest):
        assert rt.commands is not None
        if not rt.commands.admit(topic, parsed.kind, msg):
            rt.rejected += 1
            return
        # The used id is on disk before the command acts: a crash right after cannot let a
        # replay of it through on restart.
        await rt.commands.persisted()
    if isinstance(msg, Receipt):
        await rt.outbox.confirm(msg.ids)
    elif isinstance(msg, BollardCommandMessage):
        poller = rt.bollards.get(msg.device)
        if poller is None:
            _reject(rt, topic, f"command {msg.id} for {msg.device}: no such bollard controller")
            return
        await poller.handle_command(msg)
    elif isinstance(msg, DrillCommand):
        if rt.drills is None:
            _reject(rt, topic, f"drill {msg.id}: the edge is still starting")
            return
        await rt.drills.handle(msg)
    elif isinstance(msg, SelftestRequest):
        if rt.selftest is None:
            _reject(rt, topic, f"self-test {msg.id}: the edge is still starting")
            return
        rt.selftest.handle(msg)
    else:
        new = await rt.outbox.record_alarm_status(
            msg.alarm_id, msg.state, msg.ts.isoformat(), msg.path, msg.note
        )
        if new:
            log.info(
                "alarm %s: %s%s", msg.alarm_id, msg.state, f" via {msg.path}" if msg.path else ""
            )
            for status_listener in rt.status_listeners:
                status_listener(msg)
            if rt.selftest is not None:
                await rt.selftest.on_status(msg)


async def run_forever(cfg: EdgeConfig) -> None:
    async with run_edge(cfg):
        await asyncio.Event().wait()


def event_listener_queue(rt: EdgeRuntime) -> asyncio.Queue[Event]:
    """A queue that receives every event once it is on disk (console, tests)."""
    q: asyncio.Queue[Event] = asyncio.Queue()
    rt.sink.listeners.append(q.put_nowait)
    return q


def status_listener_queue(rt: EdgeRuntime) -> asyncio.Queue[AlarmStatus]:
    """A queue that receives every new alarm status from the centre once it is on disk (tests).
    Only for as long as someone reads it: the edge itself keeps no such queue (it held every
    status of the edge's life, 54 MiB an hour in the soak)."""
    q: asyncio.Queue[AlarmStatus] = asyncio.Queue()
    rt.status_listeners.append(q.put_nowait)
    return q
