"""One poller per bollard controller: readings through the rules, events out, commands in.

The rules (``edge/bollards.py``) are pure; this is where they meet the clock, the controller and
the outbox. A command is written to the controller only when the policy accepts it, and it is
reported done only when the bollard confirms its end position.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from pydantic import ValidationError

from contract import topics
from contract.aio import run_every
from contract.config import BollardConfig, BollardControllerConfig, CampusConfig
from contract.models import BollardCommandMessage, DetailValue, DeviceStatus, EventKind, utcnow
from contract.telemetry import BOLLARD_STATE_CODES, FieldValue, Sample
from drivers.modbus.bollard import BollardController
from drivers.modbus.bollard_model import BollardCommand, BollardReading
from drivers.modbus.errors import ModbusDeviceError
from edge.bollards import (
    BollardSignal,
    BollardState,
    BollardTracker,
    CommandOutcome,
    CommandPolicy,
    CommandRequest,
    CommandResult,
    ConfirmRequest,
    Decision,
    ScheduleWatch,
)
from edge.events import EventSink
from edge.telemetry import PollStats

log = logging.getLogger(__name__)

# Signal kinds of the rules -> event kinds of the contract. The command settlement signals
# become ``bollard_command`` events through CommandOutcome, not directly.
_EVENT_KIND: dict[str, EventKind] = {
    "bollard_state": "bollard_state",
    "bollard_impact": "bollard_impact",
    # Not "trouble" (a supervised loop's wire cut, which goes to the police): these are for the
    # technician and the guard, and a bollard's hydraulics are no business of the police.
    "trouble": "bollard_trouble",
    "schedule_violation": "schedule_violation",
}


class BollardPoller:
    """Polls one controller; owns its bollards' trackers, schedule watches and command policy."""

    def __init__(
        self,
        cfg: BollardControllerConfig,
        campus: CampusConfig,
        controller: BollardController,
        sink: EventSink,
        publish_retained: Callable[[str, bytes], None],
    ) -> None:
        self.cfg = cfg
        self._campus = campus
        self._controller = controller
        self._sink = sink
        self._publish_retained = publish_retained
        self._tz = ZoneInfo(campus.timezone)
        self.bollards: dict[str, BollardConfig] = {b.id: b for b in cfg.bollards}
        self.trackers = {b.id: BollardTracker(cfg.rules) for b in cfg.bollards}
        self.schedules = (
            {b.id: ScheduleWatch(cfg.schedule) for b in cfg.bollards} if cfg.schedule else {}
        )
        self.policy = CommandPolicy(campus.id, cfg.policy)
        self.outcome = CommandOutcome(
            deadline=max(cfg.rules.travel_time + cfg.rules.margin, cfg.rules.stop_time) * 3
        )
        self.online: bool | None = None
        self.polls = 0
        self.last_error: str | None = None
        self.stats = PollStats()
        self._readings: list[BollardReading] | None = None

    async def run(self) -> None:
        await run_every(
            self.cfg.poll_interval, self.poll_once, f"polling bollard controller {self.cfg.id}"
        )

    async def poll_once(self) -> None:
        self.polls += 1
        readings: list[BollardReading] | None
        try:
            readings = await self._controller.read_all()
            self.last_error = None
            self.stats.ok(readings[0].latency_s if readings else None)
        except ModbusDeviceError as exc:
            readings = None
            self.last_error = str(exc) or type(exc).__name__
            self.stats.fail()
        self._readings = readings
        now = time.monotonic()
        local = datetime.now(self._tz)
        was_online = self.online
        self.online = readings is not None
        if was_online is not None and was_online != self.online:
            log.log(
                logging.INFO if self.online else logging.WARNING,
                "bollard controller %s is %s%s",
                self.cfg.id,
                "answering again" if self.online else "offline",
                "" if self.online else f": {self.last_error}",
            )
        changed = was_online != self.online
        for bid, b in self.bollards.items():
            tracker = self.trackers[bid]
            before = tracker.state
            reading = None if readings is None else readings[b.index]
            signals = tracker.update(reading, now)
            if bid in self.schedules:
                signals += self.schedules[bid].update(tracker.state, local, now)
            await self._emit_signals(b, signals)
            await self._emit_results(self.outcome.observe(bid, signals, now))
            changed |= tracker.state != before
        await self._emit_results(self.outcome.expire(now))
        if changed or self.polls % max(1, int(30 / self.cfg.poll_interval)) == 0:
            self.publish_status()

    async def _emit_signals(self, b: BollardConfig, signals: list[BollardSignal]) -> None:
        for s in signals:
            kind = _EVENT_KIND.get(s.kind)
            if kind is None:
                continue  # position_confirmed / command_failed: reported via the outcome
            await self._sink.emit(
                kind,
                device=self.cfg.id,
                point=b.id,
                zone=b.zone or self.cfg.zone,
                location=b.location or self.cfg.location,
                zone_no=b.alarm_zone or b.index + 1,
                restore=s.restore,
                detail=dict(s.detail),
            )

    async def _emit_results(self, results: list[CommandResult]) -> None:
        for r in results:
            b = self.bollards[r.bollard]
            detail: dict[str, DetailValue] = {
                "command_id": r.command_id,
                "bollard": b.index,
                "command": r.command.value,
                "outcome": r.status,
                "reason": r.reason,
                "elapsed_s": r.elapsed_s,
                "position": self.trackers[r.bollard].position,
            }
            log.info(
                "bollard %s command %s %s%s",
                r.bollard,
                r.command.value,
                r.status,
                f": {r.reason}" if r.reason else "",
            )
            await self._emit_command_event(b, detail)

    async def _emit_command_event(self, b: BollardConfig, detail: dict[str, DetailValue]) -> None:
        await self._sink.emit(
            "bollard_command",
            device=self.cfg.id,
            point=b.id,
            zone=b.zone or self.cfg.zone,
            location=b.location or self.cfg.location,
            detail=detail,
        )

    def status(self) -> DeviceStatus:
        points: dict[str, DetailValue] = {}
        if self.online:
            for bid, tracker in self.trackers.items():
                for key, value in tracker.snapshot().items():
                    points[f"{bid}.{key}"] = value
        return DeviceStatus(
            campus=self._campus.id,
            device=self.cfg.id,
            online=bool(self.online),
            ts=utcnow(),
            error=None if self.online else (self.last_error or "no answer yet"),
            points=points,
        )

    def telemetry(self) -> list[Sample]:
        """The controller's link figures, and per bollard its state and measures."""
        fields: dict[str, FieldValue] = {"online": bool(self.online), **self.stats.take()}
        out = [Sample(device=self.cfg.id, kind="bollard_controller", fields=fields)]
        for bid, b in self.bollards.items():
            tracker = self.trackers[bid]
            bf: dict[str, FieldValue] = {"state": BOLLARD_STATE_CODES[tracker.state.value]}
            r = self._readings[b.index] if self._readings else None
            if r is not None:
                if r.pressure_bar is not None:
                    bf["pressure_bar"] = float(r.pressure_bar)
                if r.motor_temp_c is not None:
                    bf["motor_temp_c"] = float(r.motor_temp_c)
                if r.cycles is not None:
                    bf["cycles"] = int(r.cycles)
                if r.fault_code is not None:
                    bf["fault_code"] = int(r.fault_code)
            out.append(Sample(device=self.cfg.id, point=bid, kind="bollard", fields=bf))
        return out

    def publish_status(self) -> None:
        self._publish_retained(
            topics.device_status_topic(self._campus.id, self.cfg.id),
            self.status().model_dump_json().encode(),
        )

    # --- commands ---------------------------------------------------------------------

    async def handle_command(self, msg: BollardCommandMessage) -> Decision | None:
        """Decide on a command from the centre; write it to the controller if accepted."""
        b = next((x for x in self.cfg.bollards if x.index == msg.bollard), None)
        now_dt = datetime.now(UTC)
        base: dict[str, DetailValue] = {
            "command_id": msg.id,
            "bollard": msg.bollard,
            "command": msg.action,
            "user": msg.user,
            "role": msg.role,
            "reason": msg.reason,
        }
        if b is None:
            log.warning("command %s for unknown bollard %s/%d", msg.id, msg.device, msg.bollard)
            return None
        tracker = self.trackers[b.id]
        if msg.step == "request" and msg.action is None:
            await self._emit_command_event(
                b, {**base, "outcome": "refused", "code": "invalid", "reason": "no action"}
            )
            return None
        try:
            if msg.step == "confirm":
                decision = self.policy.confirm(
                    ConfirmRequest(
                        command_id=msg.id,
                        campus=msg.campus,
                        who=msg.user,
                        token=msg.token or "-",
                    ),
                    tracker.view(),
                    now_dt,
                )
            else:
                assert msg.action is not None
                decision = self.policy.decide(
                    CommandRequest(
                        command_id=msg.id,
                        campus=msg.campus,
                        bollard=b.id,
                        command=BollardCommand(msg.action),
                        who=msg.user,
                        role=msg.role,
                        reason=msg.reason,
                        issued_at=msg.issued_at,
                        expires_at=msg.expires_at,
                    ),
                    tracker.view(),
                    now_dt,
                )
        except (ValidationError, ValueError) as exc:
            await self._emit_command_event(
                b, {**base, "outcome": "refused", "code": "invalid", "reason": str(exc)[:200]}
            )
            return None
        req = decision.request
        detail = {
            **base,
            "command": req.command.value if req else msg.action,
            "outcome": decision.outcome,
            "code": decision.code,
            "reason": decision.reason,
            "token": decision.token,
            "confirm_by": decision.confirm_by.isoformat() if decision.confirm_by else None,
        }
        log.info(
            "bollard %s command %s by %s (%s): %s%s",
            b.id,
            detail["command"],
            msg.user,
            msg.role,
            decision.outcome,
            f" - {decision.reason}" if decision.outcome == "refused" else "",
        )
        await self._emit_command_event(b, detail)
        if decision.accepted and req is not None:
            now = time.monotonic()
            self.outcome.accepted(req.command_id, b.id, req.command, now)
            try:
                await self._controller.command(b.index, req.command)
            except ModbusDeviceError as exc:
                failed = self.outcome.send_failed(req.command_id, str(exc))
                await self._emit_results([failed] if failed else [])
                return decision
            superseded = tracker.command_sent(req.command, time.monotonic(), req.command_id)
            await self._emit_results(self.outcome.observe(b.id, superseded, time.monotonic()))
        return decision

    def state_of(self, bollard_id: str) -> BollardState:
        return self.trackers[bollard_id].state
