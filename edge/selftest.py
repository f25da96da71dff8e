"""Self-test and periodic test signals at the edge.

**Self-test** (``SelftestRequest`` on ``down/selftest``): prove one device's alarm path.

* ``synthetic``: raise a ``test`` event from the device (as if it had signalled), through the
  outbox like any event;
* ``pulse``: close the module's configured test output (``test_output``) for ``pulse_ms``; the
  ``kind: test`` input wired to it must come back through the real input path (Modbus read,
  rules, outbox) as a ``test`` event.

Either way the test event carries ``selftest_id``; the gateway gives it an alarm record, the
relay sends it to the police as a test code (Contact ID 601 / SIA RX, never a real alarm, also
during a drill), and when its ``police_received`` status is back here the edge reports a
``selftest`` event with hop ``status_at_edge``. A request that has expired, names a device this
edge does not have, or cannot be pulsed is refused with a ``selftest`` event (hop
``edge_outbox``, ``outcome: refused``, ``code`` and ``reason``).

**Periodic test signal**: a ``test`` event with ``periodic: true`` every
``test_signal.interval`` on a steady clock (Contact ID 602 / SIA RP at the police).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from contract.config import EdgeConfig, InputConfig, ModbusDeviceConfig
from contract.models import AlarmStatus, DetailValue, Event, EventKind, SelftestRequest, utcnow
from edge.events import EventSink

if TYPE_CHECKING:
    from edge.daemon import EdgeRuntime

log = logging.getLogger(__name__)

DO_BASE: dict[str, int] = {
    "adam-6050": 16,  # DO 00017+ch (ADAM-6000 manual)
    "adam-6051": 16,
    "adam-6060": 16,
    "icpdas-et2260": 0,  # DO 00001+ch
    "zlan6042": 16,  # relays 00017+ch
    "zlan6042-res": 16,
}
"""Coil wire address of output 0, by built-in profile (``test_output.address`` overrides)."""

PULSE_ANSWER_S = 2.0
"""After the pulse, how long the test input may take to come back (plus a few polls)."""

REMEMBER = 1000
"""Self-tests remembered (waiting for their status; ids already handled)."""


@dataclass
class _Pulse:
    selftest_id: str
    point: str
    tag: dict[str, DetailValue]
    seen: asyncio.Future[Event] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class SelftestSink(EventSink):
    """The edge's event sink, which also tags the ``test`` event a self-test pulse causes with
    its ``selftest_id`` (the input path does not know it is being tested)."""

    def __init__(self, cfg: EdgeConfig, outbox: Any) -> None:
        super().__init__(cfg, outbox)
        self.pulses: dict[str, _Pulse] = {}  # device -> the pulse in progress

    async def emit(self, kind: EventKind, **kw: Any) -> Event:
        pulse = self.pulses.get(str(kw.get("device"))) if kind == "test" else None
        if (
            pulse is not None
            and not pulse.seen.done()
            and not kw.get("restore")
            and kw.get("point") == pulse.point
        ):
            kw["detail"] = {**(kw.get("detail") or {}), **pulse.tag}
            event = await super().emit(kind, **kw)
            pulse.seen.set_result(event)
            return event
        return await super().emit(kind, **kw)


def test_input(dev: ModbusDeviceConfig) -> InputConfig | None:
    return next((i for i in dev.inputs if i.kind == "test"), None)


class SelfTester:
    """Runs self-tests and the periodic test signal for one edge."""

    __test__ = False  # not a pytest class

    def __init__(self, rt: EdgeRuntime) -> None:
        self.rt = rt
        self.cfg = rt.cfg
        self.sink = rt.sink
        # test event id -> (self-test id, device)
        self._waiting: OrderedDict[str, tuple[str, str]] = OrderedDict()
        self._handled: OrderedDict[str, None] = OrderedDict()
        # police_received statuses of events not (yet) known as self-test events: a pulsed
        # test's status can come back before the pulse has ended and the event is registered.
        self._early: OrderedDict[str, AlarmStatus] = OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()
        self.refused = 0
        self.periodic_sent = 0

    # --- self-test --------------------------------------------------------------------

    def handle(self, req: SelftestRequest) -> None:
        """Take a request from the centre (never blocks the downlink: a pulse takes time)."""
        if req.id in self._handled:
            return  # a repeat (QoS 1 may deliver twice)
        self._handled[req.id] = None
        while len(self._handled) > REMEMBER:
            self._handled.popitem(last=False)
        task = asyncio.create_task(self._run(req), name=f"selftest-{req.id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, req: SelftestRequest) -> None:
        try:
            await self._selftest(req)
        except Exception as exc:
            log.exception("self-test %s failed unexpectedly", req.id)
            with contextlib.suppress(Exception):
                await self._report(req, "edge_outbox", "failed", "error", f"edge error: {exc}")

    async def _selftest(self, req: SelftestRequest) -> None:
        now = utcnow()
        if req.expires_at <= now:
            age = (now - req.expires_at).total_seconds()
            await self._refuse(
                req, "expired", f"the request expired {age:.1f} s ago (at {req.expires_at})"
            )
            return
        devices = {d.id: d for d in self.cfg.devices}
        known = set(devices) | {b.id for b in self.cfg.bollards} | {c.id for c in self.cfg.cameras}
        if req.device not in known:
            await self._refuse(
                req,
                "unknown_device",
                f"this edge has no device {req.device!r} (devices: {', '.join(sorted(known))})",
            )
            return
        tag: dict[str, DetailValue] = {"selftest_id": req.id, "mode": req.mode, "user": req.user}
        dev = devices.get(req.device)
        if req.mode == "synthetic":
            event = await self._synthetic(req, dev, tag)
        else:
            pulsed = await self._pulse(req, dev, tag)
            if pulsed is None:
                return
            event = pulsed
        self._waiting[event.id] = (req.id, req.device)
        while len(self._waiting) > REMEMBER:
            self._waiting.popitem(last=False)
        log.info("self-test %s: test event %s from %s on its way", req.id, event.id, req.device)
        early = self._early.pop(event.id, None)
        if early is not None:
            await self.on_status(early)

    async def _synthetic(
        self, req: SelftestRequest, dev: ModbusDeviceConfig | None, tag: dict[str, DetailValue]
    ) -> Event:
        point: InputConfig | None = None
        if dev is not None:
            point = test_input(dev) or dev.inputs[0]
        return await self.sink.emit(
            "test",
            device=req.device,
            device_cfg=dev,
            point=point.id if point else None,
            zone=point.zone if point else None,
            location=point.location if point else "",
            zone_no=(point.alarm_zone or point.channel + 1) if point else None,
            detail={**tag, "synthetic": True},
        )

    async def _pulse(
        self, req: SelftestRequest, dev: ModbusDeviceConfig | None, tag: dict[str, DetailValue]
    ) -> Event | None:
        if dev is None or dev.test_output is None:
            await self._refuse(
                req, "no_test_output", f"{req.device} has no test_output to pulse (use synthetic)"
            )
            return None
        inp = test_input(dev)
        assert inp is not None  # the config requires it with test_output
        out = dev.test_output
        address = out.address
        if address is None:
            base = DO_BASE.get(dev.profile.strip().lower())
            if base is None:
                await self._refuse(
                    req,
                    "no_test_output",
                    f"profile {dev.profile} has no known output map: set test_output.address",
                )
                return None
            address = base + out.channel
        poller = self.rt.pollers.get(dev.id)
        if poller is None:
            await self._refuse(req, "offline", f"{dev.id} is not polled")
            return None
        sink = self.sink
        if not isinstance(sink, SelftestSink):
            await self._refuse(req, "unsupported", "this edge cannot tag pulsed test events")
            return None
        if dev.id in sink.pulses:
            await self._refuse(req, "busy", f"a self-test pulse on {dev.id} is in progress")
            return None
        pulse = _Pulse(req.id, inp.id, {**tag, "output": out.channel})
        sink.pulses[dev.id] = pulse
        reader = poller._reader

        async def set_output(value: bool) -> None:
            # Between two polls, never between the state and the latch read of one: the input
            # would look like a short press and then a second one.
            async with reader._lock:
                await reader.connection.write_coil(address, value, reader.unit)

        try:
            try:
                await set_output(True)
                await asyncio.sleep(out.pulse_ms / 1000)
            finally:
                with contextlib.suppress(Exception):
                    await set_output(False)
            wait = PULSE_ANSWER_S + 5 * dev.poll_interval
            try:
                return await asyncio.wait_for(asyncio.shield(pulse.seen), wait)
            except TimeoutError:
                await self._report(
                    req,
                    "edge_outbox",
                    "failed",
                    "no_answer",
                    f"test input {inp.id} (channel {inp.channel}) did not answer the pulse of "
                    f"output {out.channel} within {wait:.1f} s",
                )
                return None
        except Exception as exc:
            await self._report(
                req, "edge_outbox", "failed", "output_error", f"pulsing output failed: {exc}"
            )
            return None
        finally:
            sink.pulses.pop(dev.id, None)

    async def _refuse(self, req: SelftestRequest, code: str, reason: str) -> None:
        self.refused += 1
        log.warning("self-test %s of %s refused: %s", req.id, req.device, reason)
        await self._report(req, "edge_outbox", "refused", code, reason)

    async def _report(
        self, req: SelftestRequest, hop: str, outcome: str, code: str, reason: str
    ) -> Event:
        return await self.sink.emit(
            "selftest",
            device=req.device,
            detail={
                "selftest_id": req.id,
                "hop": hop,
                "outcome": outcome,
                "code": code,
                "reason": reason[:300],
            },
        )

    async def on_status(self, msg: AlarmStatus) -> None:
        """The alarm status of a self-test's event came back: report the last hop."""
        if msg.state != "police_received":
            return
        waiting = self._waiting.get(msg.alarm_id)
        if waiting is None:
            self._early[msg.alarm_id] = msg
            while len(self._early) > REMEMBER:
                self._early.popitem(last=False)
            return
        del self._waiting[msg.alarm_id]
        sid, device = waiting
        await self.sink.emit(
            "selftest",
            device=device,
            detail={
                "selftest_id": sid,
                "hop": "status_at_edge",
                "outcome": "passed",
                "event_id": msg.alarm_id,
                "path": msg.path,
            },
        )

    # --- periodic test signal ---------------------------------------------------------

    async def run_periodic(self) -> None:
        """A ``test`` event (``periodic: true``) every interval on the steady clock."""
        t = self.cfg.test_signal
        next_at = time.monotonic() + t.first_after
        while True:
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            try:
                await self.sink.emit(
                    "test",
                    device=self.cfg.edge.id,
                    detail={"periodic": True, "interval_s": t.interval},
                )
                self.periodic_sent += 1
            except Exception:
                log.exception("the periodic test signal could not be queued")
            next_at += t.interval
            if next_at <= time.monotonic():  # the machine slept: no burst of missed ones
                next_at = time.monotonic() + t.interval

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
