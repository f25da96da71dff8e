"""Site reactions to alarms (issue 13, part 3): relay outputs, PTZ presets, gate bollards.

Rules live in the edge config (``linkage:``). :class:`Linkage` is an ``EventSink`` listener: it
hears of an alarm only after the alarm is committed to the outbox, starts one task per action and
returns at once, so no reaction can delay the alarm on its way to the police. Each action is
bounded by the rule's ``timeout`` and reports whether it happened as a ``linkage`` event
(``detail``: rule, action, target, ok, error, alarm_id).

* ``outputs``: write the coil of a DO / relay channel on, and off again after ``seconds``; a
  second alarm while the output is on extends the time instead of toggling it.
* ``ptz``: ONVIF PTZ GotoPreset on the camera's connection (:class:`edge.cameras.CameraWatcher`).
* ``bollards``: a :class:`~contract.models.BollardCommandMessage` from user ``linkage`` with the
  rule's role to the bollard's poller, decided by its ``CommandPolicy`` (roles, interlocks) and
  audited as any command. A raise the policy arms is confirmed at once: the rule is the
  deliberate, configured decision; the interlocks still apply.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING

from contract.config import (
    EdgeConfig,
    LinkageBollardConfig,
    LinkageOutputConfig,
    LinkagePtzConfig,
    LinkageRuleConfig,
)
from contract.models import (
    ALARM_KINDS,
    AlarmStatus,
    BollardCommandMessage,
    DetailValue,
    Event,
    new_id,
    utcnow,
)
from edge.selftest import DO_BASE

if TYPE_CHECKING:
    from edge.bollard_poller import BollardPoller
    from edge.cameras import CameraWatcher
    from edge.events import EventSink
    from edge.pollers import ModbusPoller

log = logging.getLogger(__name__)

LINKAGE_USER = "linkage"

REPORT_HOLD_S = 2.0
"""A reaction's report waits until the police have the alarm (its status from the centre) or
this long after the alarm was raised: the reports never compete with the alarm on the uplink,
the broker or the gateway's store. The reactions themselves never wait."""

OUTPUT_HOLD_S = 0.1
"""Relay outputs switch when the police have the alarm, at most this late (target: 200 ms)."""

ACTION_HOLD_S = 0.5
"""PTZ presets and bollard commands start when the police have the alarm, at most this late."""

_POLICE_OUTCOMES = frozenset({"police_received", "police_rejected", "delivery_failed"})
_REMEMBER = 1000


@dataclass
class _Output:
    """One relay output's state: on until ``off_at`` (monotonic)."""

    on: bool = False
    off_at: float = 0.0
    timer: asyncio.Task[None] | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class LinkageError(Exception):
    """An action could not be done (the reason goes into the ``linkage`` event)."""


class Linkage:
    """Runs the configured linkage rules on every alarm the edge raises."""

    def __init__(
        self,
        cfg: EdgeConfig,
        sink: EventSink,
        pollers: dict[str, ModbusPoller],
        cameras: dict[str, CameraWatcher],
        bollards: dict[str, BollardPoller],
    ) -> None:
        self.cfg = cfg
        self._sink = sink
        self._pollers = pollers
        self._cameras = cameras
        self._bollards = bollards
        self._devices = {d.id: d for d in cfg.devices}
        self._tasks: set[asyncio.Task[None]] = set()
        self._outputs: dict[tuple[str, int], _Output] = {}
        self.done = 0
        self.failed = 0
        self.switched_at: dict[tuple[str, int], float] = {}
        """Monotonic time each output was last switched on (the benchmark reads it)."""
        # alarm id -> (set when the police have it, monotonic deadline of the hold)
        self._holds: dict[str, tuple[asyncio.Event, float]] = {}
        # alarm id -> the latest report of that alarm still to be recorded: reports of one
        # alarm are recorded in the order they were made (all wake at the same hold deadline,
        # and "siren off" must never appear before "siren on" in the timeline).
        self._last_report: dict[str, asyncio.Future[None]] = {}

    # --- rules -------------------------------------------------------------------------------

    def rules_for(self, event: Event) -> list[LinkageRuleConfig]:
        if event.kind not in ALARM_KINDS or event.restore:
            return []
        return [
            r
            for r in self.cfg.linkage
            if event.kind in r.kinds
            and (r.zones == "*" or event.zone in r.zones)
            and (r.drills or not event.drill)
        ]

    def on_status(self, status: AlarmStatus) -> None:
        """The centre's news of an alarm: once the police have it, its reports may go up."""
        hold = self._holds.get(status.alarm_id)
        if hold is not None and status.state in _POLICE_OUTCOMES:
            hold[0].set()

    def on_event(self, event: Event) -> None:
        """EventSink listener: the alarm is on disk; start the reactions, return at once."""
        rules = self.rules_for(event)
        if rules and event.id not in self._holds:
            self._holds[event.id] = (asyncio.Event(), time.monotonic() + REPORT_HOLD_S)
            while len(self._holds) > _REMEMBER:
                del self._holds[next(iter(self._holds))]
        for rule in rules:
            for out in rule.outputs:
                self._spawn(
                    self._held(event, OUTPUT_HOLD_S, self._output(rule, out, event)),
                    f"linkage-{rule.id}-out",
                )
            # Reactions start once the police have the alarm - a relay at most OUTPUT_HOLD_S,
            # a camera or a bollard (seconds to move anyway) at most ACTION_HOLD_S after it was
            # raised - so their Modbus, SOAP and command traffic never shares the CPU or the
            # module's connection with the alarm on its way out.
            for ptz in rule.ptz:
                self._spawn(
                    self._held(event, ACTION_HOLD_S, self._ptz(rule, ptz, event)),
                    f"linkage-{rule.id}-ptz",
                )
            for bol in rule.bollards:
                self._spawn(
                    self._held(event, ACTION_HOLD_S, self._bollard(rule, bol, event)),
                    f"linkage-{rule.id}-bollard",
                )

    def _spawn(self, coro: Awaitable[None], name: str) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(_as_coro(coro), name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def idle(self) -> None:
        """Wait until every reaction started so far has finished (tests)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def run(self) -> None:
        """Nothing to poll; at shutdown in-flight reactions are cancelled, outputs switched off."""
        try:
            await asyncio.Event().wait()
        finally:
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
            for (device, address), state in list(self._outputs.items()):
                if state.on:
                    with contextlib.suppress(Exception):
                        async with asyncio.timeout(1.0):
                            await self._write(device, address, False)

    # --- reporting ---------------------------------------------------------------------------

    async def _report(
        self,
        rule: LinkageRuleConfig,
        action: str,
        target: str,
        device: str,
        event: Event,
        error: str | None,
        extra: dict[str, DetailValue] | None = None,
    ) -> None:
        ok = error is None
        if ok:
            self.done += 1
        else:
            self.failed += 1
            log.warning("linkage %s: %s %s failed: %s", rule.id, action, target, error)
        detail: dict[str, DetailValue] = {
            "rule": rule.id,
            "action": action,
            "target": target,
            "ok": ok,
            "error": None if ok else (error or "failed")[:200],
            "alarm_id": event.id,
            **(extra or {}),
        }
        before = self._last_report.get(event.id)
        mine: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._last_report[event.id] = mine
        try:
            await self._wait_police(event, REPORT_HOLD_S)
            if before is not None:
                await asyncio.shield(before)
            try:
                await self._sink.emit("linkage", device=device, zone=event.zone, detail=detail)
            except Exception:  # the report must not take the edge down
                log.exception("linkage %s: could not record the %s report", rule.id, action)
        finally:
            mine.set_result(None)
            if self._last_report.get(event.id) is mine:
                del self._last_report[event.id]

    async def _wait_police(self, event: Event, at_most: float) -> None:
        """Until the police have the alarm, or ``at_most`` seconds after it was raised."""
        hold = self._holds.get(event.id)
        if hold is None or hold[0].is_set():
            return
        left = hold[1] - REPORT_HOLD_S + at_most - time.monotonic()
        if left > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await hold[0].wait()

    async def _held(self, event: Event, at_most: float, action: Awaitable[None]) -> None:
        try:
            await self._wait_police(event, at_most)
        except asyncio.CancelledError:
            if asyncio.iscoroutine(action):
                action.close()
            raise
        await action

    async def _attempt(
        self, rule: LinkageRuleConfig, call: Callable[[], Awaitable[None]]
    ) -> str | None:
        """Run one action bounded by the rule's timeout; the error text, or None."""
        try:
            async with asyncio.timeout(rule.timeout):
                await call()
        except TimeoutError:
            return f"no answer within {rule.timeout:g} s"
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            return str(exc) or type(exc).__name__
        return None

    # --- relay outputs -----------------------------------------------------------------------

    def _address(self, out: LinkageOutputConfig) -> int:
        if out.address is not None:
            return out.address
        dev = self._devices[out.device]
        base = DO_BASE.get(dev.profile.strip().lower())
        if base is None:
            raise LinkageError(f"profile {dev.profile} has no known output map: set address")
        return base + out.channel

    async def _write(self, device: str, address: int, value: bool) -> None:
        poller = self._pollers.get(device)
        if poller is None:
            raise LinkageError(f"{device} is not polled")
        reader = poller._reader
        # Between two polls, never inside one (as the self-test pulse does).
        async with reader._lock:
            await reader.connection.write_coil(address, value, reader.unit)

    async def _output(
        self, rule: LinkageRuleConfig, out: LinkageOutputConfig, event: Event
    ) -> None:
        target = f"{out.device}/DO{out.channel}" + (f" ({out.label})" if out.label else "")
        try:
            address = self._address(out)
        except LinkageError as exc:
            await self._report(rule, "output_on", target, out.device, event, str(exc))
            return
        key = (out.device, address)
        state = self._outputs.setdefault(key, _Output())
        deadline = time.monotonic() + out.seconds
        async with state.lock:
            if state.on:
                # Already sounding: keep it on for the longer of the two.
                state.off_at = max(state.off_at, deadline)
                await self._report(
                    rule, "output_on", target, out.device, event, None, {"extended": True}
                )
                return
            error = await self._attempt(rule, lambda: self._write(out.device, address, True))
            if error is None:
                state.on = True
                state.off_at = deadline
                self.switched_at[key] = time.monotonic()
                state.timer = asyncio.get_running_loop().create_task(
                    self._switch_off(rule, out, target, key, event), name=f"linkage-off-{target}"
                )
                self._tasks.add(state.timer)
                state.timer.add_done_callback(self._tasks.discard)
        await self._report(
            rule, "output_on", target, out.device, event, error, {"seconds": out.seconds}
        )

    async def _switch_off(
        self,
        rule: LinkageRuleConfig,
        out: LinkageOutputConfig,
        target: str,
        key: tuple[str, int],
        event: Event,
    ) -> None:
        state = self._outputs[key]
        while (left := state.off_at - time.monotonic()) > 0:  # noqa: ASYNC110 (extended)
            await asyncio.sleep(left)
        async with state.lock:
            error = await self._attempt(rule, lambda: self._write(key[0], key[1], False))
            state.on = False
            state.timer = None
        await self._report(rule, "output_off", target, out.device, event, error)

    # --- PTZ ---------------------------------------------------------------------------------

    async def _ptz(self, rule: LinkageRuleConfig, ptz: LinkagePtzConfig, event: Event) -> None:
        target = f"{ptz.camera} preset {ptz.preset}"
        watcher = self._cameras.get(ptz.camera)

        async def go() -> None:
            if watcher is None:
                raise LinkageError(f"camera {ptz.camera} is not watched")
            await watcher.goto_preset(ptz.preset, ptz.profile)

        error = await self._attempt(rule, go)
        await self._report(rule, "ptz_preset", target, ptz.camera, event, error)

    # --- bollards ----------------------------------------------------------------------------

    async def _bollard(
        self, rule: LinkageRuleConfig, bol: LinkageBollardConfig, event: Event
    ) -> None:
        target = f"{bol.device}/{bol.bollard}"
        poller = self._bollards.get(bol.device)
        outcome: dict[str, DetailValue] = {}

        async def command() -> None:
            if poller is None:
                raise LinkageError(f"bollard controller {bol.device} is not polled")
            now = utcnow()
            msg = BollardCommandMessage(
                id=new_id(),
                campus=self.cfg.campus.id,
                device=bol.device,
                bollard=bol.bollard,
                action=bol.action,
                user=LINKAGE_USER,
                role=bol.role,
                reason=f"linkage rule {rule.id}: alarm {event.id}",
                issued_at=now,
                expires_at=now + timedelta(seconds=30),
            )
            decision = await poller.handle_command(msg)
            if decision is not None and decision.outcome == "armed":
                # The rule is the confirmation; the interlocks are checked again on confirm.
                confirm = msg.model_copy(
                    update={"step": "confirm", "action": None, "token": decision.token}
                )
                decision = await poller.handle_command(confirm)
            if decision is None:
                raise LinkageError("the bollard controller did not decide")
            outcome["command_id"] = decision.command_id
            outcome["outcome"] = decision.outcome
            if decision.outcome != "accepted":
                raise LinkageError(f"refused ({decision.code}): {decision.reason}")

        error = await self._attempt(rule, command)
        await self._report(rule, f"bollard_{bol.action}", target, bol.device, event, error, outcome)


async def _as_coro(aw: Awaitable[None]) -> None:
    await aw
