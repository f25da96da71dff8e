"""One poller per device: read at a steady interval, report changes, be honest about health.

Availability is the last success (as Home Assistant's DataUpdateCoordinator does it): a device
that fails is offline, never its last value. The poller logs once when a device goes down and
once when it comes back.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime

from contract import topics
from contract.aio import run_every
from contract.config import ModbusDeviceConfig
from contract.models import DetailValue, DeviceStatus, utcnow
from contract.telemetry import LOOP_STATE_CODES, FieldValue, Sample
from drivers.modbus.errors import DeviceTimeout, ModbusDeviceError
from drivers.modbus.inputs import DIModuleReader, ModuleReading
from edge.alarms import InputTracker
from edge.events import EventSink
from edge.outbox import Outbox
from edge.telemetry import PollStats

log = logging.getLogger(__name__)


class ModbusPoller:
    """Polls one DI module and turns its readings into events and a retained status."""

    def __init__(
        self,
        cfg: ModbusDeviceConfig,
        campus: str,
        reader: DIModuleReader,
        sink: EventSink,
        outbox: Outbox,
        saved_states: dict[str, str],
        publish_retained: Callable[[str, bytes], None],
        status_interval: float = 30.0,
    ) -> None:
        self.cfg = cfg
        self._campus = campus
        self._reader = reader
        self._sink = sink
        self._outbox = outbox
        self._status_interval = status_interval
        self._publish_retained = publish_retained
        self.trackers = {
            i.channel: InputTracker(i, saved_states.get(self._key(i.id))) for i in cfg.inputs
        }
        self.online: bool | None = None
        self.failures = 0
        self.polls = 0
        self.last_response: float | None = None
        self.last_latency: float | None = None
        self.last_error: str | None = None
        self.stats = PollStats()
        # Spread the periodic refreshes of many devices over the interval.
        self._last_status = time.monotonic() - random.uniform(0, status_interval)
        self.on_poll: Callable[[ModuleReading], None] | None = None

    def _key(self, point: str) -> str:
        return f"{self.cfg.id}/{point}"

    async def run(self) -> None:
        await run_every(self.cfg.poll_interval, self.poll_once, f"polling {self.cfg.id}")

    async def poll_once(self) -> None:
        self.polls += 1
        try:
            reading = await self._reader.read()
        except ModbusDeviceError as exc:
            await self._failed(exc)
            return
        now = time.monotonic()
        self.stats.ok(reading.latency_s)
        self.last_response = time.time()
        self.last_latency = reading.latency_s
        self.failures = 0
        self.last_error = None
        if self.online is not True:
            await self._went_online()
        changed: dict[str, str] = {}
        for channel, tracker in self.trackers.items():
            ch = reading.channels.get(channel)
            if ch is None:
                continue
            before = tracker.state
            eol = str(ch.eol) if ch.eol is not None else None
            for signal in tracker.update(ch.active, ch.pulses, eol, now):
                await self._sink.emit(
                    signal.kind,
                    device=self.cfg.id,
                    device_cfg=self.cfg,
                    point=tracker.cfg.id,
                    zone=tracker.cfg.zone,
                    location=tracker.cfg.location,
                    zone_no=tracker.cfg.alarm_zone or channel + 1,
                    restore=signal.restore,
                    real_during_drill=tracker.cfg.real_during_drill,
                    detail=signal.detail,
                    point_state=(
                        (self._key(tracker.cfg.id), signal.state) if signal.state else None
                    ),
                )
            if tracker.state != before and tracker.state is not None:
                changed[self._key(tracker.cfg.id)] = tracker.state
        if changed:
            await self._outbox.save_point_states(changed)
            self.publish_status()
        elif time.monotonic() - self._last_status >= self._status_interval:
            self.publish_status()
        if self.on_poll is not None:
            self.on_poll(reading)

    async def _failed(self, exc: ModbusDeviceError) -> None:
        self.stats.fail()
        self.failures += 1
        self.last_error = str(exc) or type(exc).__name__
        # A timeout already means the device was silent for the whole timeout, far longer than
        # a poll interval: declare it offline at once rather than after several more timeouts.
        limit_reached = self.failures >= self.cfg.offline_after or isinstance(exc, DeviceTimeout)
        if self.online is not False and limit_reached:
            self.online = False
            log.warning("device %s is offline: %s", self.cfg.id, self.last_error)
            await self._sink.emit(
                "device_offline",
                device=self.cfg.id,
                device_cfg=self.cfg,
                detail={"error": self.last_error[:200]},
            )
            self.publish_status()

    async def _went_online(self) -> None:
        was_known = self.online is False
        self.online = True
        if was_known:
            log.info("device %s is answering again", self.cfg.id)
            await self._sink.emit("device_online", device=self.cfg.id, device_cfg=self.cfg)
        self.publish_status()

    def status(self) -> DeviceStatus:
        points: dict[str, DetailValue] = {}
        if self.online:
            points = {t.cfg.id: t.state for t in self.trackers.values()}
        return DeviceStatus(
            campus=self._campus,
            device=self.cfg.id,
            online=bool(self.online),
            ts=utcnow(),
            last_response=(
                None
                if self.last_response is None
                else datetime.fromtimestamp(self.last_response, UTC)
            ),
            latency_ms=None if self.last_latency is None else round(self.last_latency * 1e3, 3),
            error=None if self.online else (self.last_error or "no answer yet"),
            points=points,
        )

    def telemetry(self) -> list[Sample]:
        """Online, latency and errors over the window; the state of each supervised loop."""
        fields: dict[str, FieldValue] = {"online": bool(self.online), **self.stats.take()}
        out = [Sample(device=self.cfg.id, kind="di_module", fields=fields)]
        if self.online:
            for t in self.trackers.values():
                if t.cfg.mode == "eol" and t.state in LOOP_STATE_CODES:
                    out.append(
                        Sample(
                            device=self.cfg.id,
                            point=t.cfg.id,
                            kind="input",
                            fields={"loop_state": LOOP_STATE_CODES[t.state]},
                        )
                    )
        return out

    def publish_status(self) -> None:
        """Hand the current status to the uplink (in memory: no disk write on the poll path)."""
        self._last_status = time.monotonic()
        self._publish_retained(
            topics.device_status_topic(self._campus, self.cfg.id),
            self.status().model_dump_json().encode(),
        )
