"""MQTT in: validate, deduplicate, store; then acknowledge.

Messages are acknowledged to the broker by hand (paho ``manual_ack``) only after they are
committed to the database, so a gateway killed mid-way gets them again from its persistent
session. A bad message is rejected, counted and logged, and never stops the service.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence

from pydantic import ValidationError

from contract import evidence as evidence_wire
from contract import telemetry as telemetry_wire
from contract import topics
from contract.config import GatewayTelemetryConfig
from contract.models import MAX_PAYLOAD_BYTES, DeviceStatus, EdgeState, Event, new_id, utcnow
from gateway.evidence import EvidenceVault
from gateway.relay.base import Sink
from gateway.store.repo import ClaimedJob, Store
from gateway.telemetry.sink import TelemetrySink

log = logging.getLogger(__name__)

LOG_EVERY = 10.0
"""A flood of bad messages gives one log line per reason per this many seconds, with a count."""


class Rejects:
    """Counts rejected messages by reason and keeps the log readable under a flood."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self._last_log: dict[str, float] = {}
        self._suppressed: Counter[str] = Counter()

    def __call__(self, reason: str, topic: str, detail: str = "") -> None:
        self.counts[reason] += 1
        now = time.monotonic()
        if now - self._last_log.get(reason, -LOG_EVERY) >= LOG_EVERY:
            more = self._suppressed.pop(reason, 0)
            log.warning(
                "rejected message on %s: %s%s%s",
                topic,
                reason,
                f" ({detail})" if detail else "",
                f"; {more} more like it since the last report" if more else "",
            )
            self._last_log[reason] = now
        else:
            self._suppressed[reason] += 1

    @property
    def total(self) -> int:
        return sum(self.counts.values())


class BatchFailed(Exception):
    """Storing a batch of messages failed; the first ``done`` of them are committed."""

    def __init__(self, done: int) -> None:
        super().__init__(f"batch failed after {done} committed message(s)")
        self.done = done


class Ingest:
    def __init__(
        self,
        store: Store,
        campuses: set[str],
        sinks: list[Sink],
        worker_id: str,
        dispatch: Callable[[ClaimedJob], None],
        vault: EvidenceVault | None = None,
        telemetry: TelemetrySink | None = None,
        telemetry_cfg: GatewayTelemetryConfig | None = None,
    ) -> None:
        self.store = store
        self.vault = vault
        self.telemetry = telemetry
        self.telemetry_cfg = telemetry_cfg or GatewayTelemetryConfig()
        self.telemetry_samples = 0
        self.campuses = campuses
        self.sinks = sinks
        self.worker_id = worker_id
        self.dispatch = dispatch
        self.reject = Rejects()
        self.accepted: Counter[str] = Counter()
        self.duplicates = 0
        self.on_drill: Callable[[Event], Awaitable[None]] | None = None
        """Called with every ``drill`` event, repeats too (it is idempotent), before the
        message is acknowledged: a failure leaves it to come again."""
        self.observers: list[Callable[[Event], Awaitable[None]]] = []
        """Called with every new event once it is stored and handed to the relay (self-tests,
        periodic test signals)."""

    async def handle(self, topic: str, payload: bytes) -> tuple[str, str] | None:
        """Process one message. Raises only when the store fails (then it must not be acked).

        Returns ``(campus, event id)`` for an event that is now stored (new or a repeat): the
        campus gets a receipt for it.
        """
        parsed = topics.parse_topic(topic)
        if parsed is not None and parsed.kind == "evidence" and self.vault is not None:
            return await self._evidence(topic, parsed.campus, payload, self.vault)
        if parsed is not None and parsed.kind == "telemetry" and parsed.direction == "up":
            await self._telemetry(topic, parsed.campus, payload)
            return None
        msg = self._parse(topic, parsed, payload)
        if msg is None:
            return None
        if isinstance(msg, Event):
            self.accepted["event"] += 1
            await self._event(msg)
            if msg.kind == "bollard_command":
                await self.store.command_progress(msg)
            if msg.kind == "drill" and self.on_drill is not None:
                await self.on_drill(msg)
            if msg.kind == "guard_action":
                await self._guard_action(msg)
            return msg.campus, msg.id
        if isinstance(msg, EdgeState):
            self.accepted["edge"] += 1
            before = await self.store.upsert_edge_state(msg)
            if before is not None and before != msg.online:
                await self._path_change(msg)
        else:
            self.accepted["device"] += 1
            await self.store.upsert_device_status(msg)
        return None

    async def handle_batch(
        self, items: Sequence[tuple[str, bytes]]
    ) -> list[tuple[str, str] | None]:
        """Process messages that arrived together (the telemetry connection: device status and
        telemetry batches), with every device status of them stored in ONE transaction.

        The result is as if each was handled in turn (``handle``): per device the newest status
        wins, an older one arriving late changes nothing, outages follow every change. Other
        messages are handled one by one as they come. When this returns, every message of the
        batch is committed (and may be acknowledged). On a failure it raises ``BatchFailed``
        with how many leading messages are committed all the same (those may be acknowledged,
        the rest must not be: they come again).
        """
        results: list[tuple[str, str] | None] = [None] * len(items)
        statuses: list[DeviceStatus] = []
        done = 0  # leading messages committed (a status is not, until the batch's write)
        try:
            for i, (topic, payload) in enumerate(items):
                parsed = topics.parse_topic(topic)
                if parsed is not None and parsed.kind == "device":
                    msg = self._parse(topic, parsed, payload)
                    if isinstance(msg, DeviceStatus):
                        statuses.append(msg)
                else:
                    results[i] = await self.handle(topic, payload)
                if not statuses:
                    done = i + 1
            if statuses:
                await self.store.upsert_device_statuses(statuses)
        except Exception as exc:
            raise BatchFailed(done) from exc
        self.accepted["device"] += len(statuses)
        return results

    def _parse(
        self, topic: str, parsed: topics.ParsedTopic | None, payload: bytes
    ) -> Event | EdgeState | DeviceStatus | None:
        """Check an event, edge state or device status message; None (counted, logged) if it
        is not one we take."""
        if len(payload) > MAX_PAYLOAD_BYTES:
            self.reject("oversized", topic, f"{len(payload)} bytes")
            return None
        if parsed is None or parsed.direction != "up":
            self.reject("unknown topic", topic)
            return None
        if parsed.campus not in self.campuses:
            self.reject("unknown campus", topic, parsed.campus)
            return None
        model: type[Event] | type[EdgeState] | type[DeviceStatus]
        if parsed.kind == "event":
            model = Event
        elif parsed.kind == "edge":
            model = EdgeState
        elif parsed.kind == "device":
            model = DeviceStatus
        else:
            self.reject("unknown topic", topic)
            return None
        if not payload:
            return None  # a cleared retained message
        try:
            msg = model.model_validate_json(payload)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            self.reject("invalid payload", topic, f"{where}: {err['msg']}"[:200])
            return None
        if msg.campus != parsed.campus:
            self.reject("campus mismatch", topic, f"payload says {msg.campus}")
            return None
        if isinstance(msg, DeviceStatus) and msg.device != parsed.device:
            self.reject("device mismatch", topic, f"payload says {msg.device}")
            return None
        return msg

    async def _evidence(
        self, topic: str, campus: str, payload: bytes, vault: EvidenceVault
    ) -> tuple[str, str] | None:
        """A snapshot for an alarm: checked, on disk, recorded; then the edge gets a receipt."""
        if campus not in self.campuses:
            self.reject("unknown campus", topic, campus)
            return None
        limit = vault.message_limit  # a picture, or one chunk of a video clip
        if len(payload) > limit + evidence_wire.MAX_HEADER_BYTES + len(evidence_wire.MAGIC) + 1:
            self.reject("oversized", topic, f"{len(payload)} bytes")
            return None
        try:
            header, image = evidence_wire.decode(payload, max_image=limit)
        except evidence_wire.EvidenceError as exc:
            self.reject("invalid evidence", topic, str(exc))
            return None
        if (too_big := vault.refuse(header)) is not None:
            self.reject("oversized", topic, too_big)
            return None
        if header.campus != campus:
            self.reject("campus mismatch", topic, f"payload says {header.campus}")
            return None
        if not await vault.store(self.store, header, image):
            self.duplicates += 1
        self.accepted["evidence"] += 1
        return campus, header.id

    async def _telemetry(self, topic: str, campus: str, payload: bytes) -> None:
        """A batch of device figures: checked, then handed to InfluxDB or the embedded store.
        Telemetry is acknowledged once handed over (the writer spools to disk); a batch the
        sink cannot take now raises, so the message is not acknowledged and comes again."""
        if campus not in self.campuses:
            self.reject("unknown campus", topic, campus)
            return
        if len(payload) > telemetry_wire.MAX_BYTES:
            self.reject("oversized", topic, f"{len(payload)} bytes")
            return
        try:
            batch = telemetry_wire.TelemetryBatch.model_validate_json(payload)
        except ValidationError as exc:
            err = exc.errors()[0]
            loc = [str(p) for p in err["loc"]]
            msg = err["msg"]
            if loc and loc[-1] in ("bool", "int", "float", "function-after[float]"):
                loc, msg = loc[:-1], "a field value must be a number or true/false"
            while loc and loc[-1] in ("bool", "int", "float"):
                loc.pop()
            self.reject("invalid telemetry", topic, f"{'.'.join(loc)}: {msg}"[:200])
            return
        if batch.campus != campus:
            self.reject("campus mismatch", topic, f"payload says {batch.campus}")
            return
        age = (utcnow() - batch.ts).total_seconds()
        if age < -self.telemetry_cfg.max_future_s:
            self.reject("telemetry from the future", topic, f"{-age:.0f} s ahead ({batch.edge})")
            return
        if age > self.telemetry_cfg.max_age_hours * 3600:
            self.reject("telemetry too old", topic, f"{age / 3600:.1f} h old ({batch.edge})")
            return
        if self.telemetry is not None:
            self.telemetry_samples += await self.telemetry.submit(batch)
        self.accepted["telemetry"] += 1

    async def _path_change(self, st: EdgeState) -> None:
        """A campus edge that loses its uplink is a transmission-path fault at the centre."""
        restore = st.online
        log.log(
            logging.INFO if restore else logging.ERROR,
            "campus %s edge %s is %s%s",
            st.campus,
            st.edge,
            "back online" if restore else "OFFLINE",
            f" ({st.reason})" if st.reason else "",
        )
        await self._event(
            Event(
                id=new_id(),
                campus=st.campus,
                edge=st.edge,
                seq=0,
                ts=utcnow(),
                kind="transmission_fault",
                severity="info" if restore else "high",
                device=st.edge,
                restore=restore,
                text=(
                    "campus link restored"
                    if restore
                    else f"campus edge unreachable: {st.reason or 'offline'}"
                ),
                detail={"source": "gateway", "reason": st.reason},
            )
        )

    async def _guard_action(self, event: Event) -> None:
        """The campus guard acknowledged or closed an alarm at the console: the alarm's record
        (and the compliance report's time to acknowledgement) follow. Repeats change nothing."""
        alarm_id = str(event.detail.get("alarm_id") or "")
        action = event.detail.get("action")
        found = await self.store.alarm(alarm_id) if alarm_id else None
        if found is None or found[0].campus != event.campus:
            # Camera tamper and the like are on the guard's board but have no alarm record here.
            log.info(
                "guard action %s: no alarm record %s of campus %s", event.id, alarm_id, event.campus
            )
            return
        alarm = found[0]
        who = str(event.detail.get("user") or "")
        note = str(event.detail.get("note") or "")
        if action == "acknowledged" and alarm.guard_ack_at is None and alarm.closed_at is None:
            await self.store.set_alarm_state(alarm_id, "guard_acknowledged", note=f"{who}: {note}")
        elif action == "closed" and alarm.closed_at is None:
            disposition = str(event.detail.get("disposition") or "")
            await self.store.set_alarm_state(
                alarm_id, "closed", note=f"{who}: {disposition} {note}".strip()[:500]
            )

    async def submit_local(self, event: Event) -> None:
        """An event raised by the gateway itself (a failed police path, a lost campus link)."""
        try:
            await self._event(event)
        except Exception:
            log.exception("storing gateway event %s failed", event.id)

    async def _event(self, event: Event) -> None:
        relay_to = [s.name for s in self.sinks if s.wants(event)]
        new, jobs = await self.store.ingest_event(event, relay_to, self.worker_id)
        if not new:
            self.duplicates += 1
            log.debug("duplicate event %s ignored", event.id)
            # A repeat after the first hand-over to the relay was cut short (the broker
            # connection lost between the commit and the hand-over): its jobs would wait out
            # their lease (30 s). Take them up now; a job already queued here is not doubled.
            if relay_to:
                for job in await self.store.reclaim_jobs(event, self.worker_id):
                    self.dispatch(job)
            return
        for job in jobs:
            self.dispatch(job)
        for observer in self.observers:
            try:
                await observer(event)
            except Exception:
                log.exception("an observer of event %s failed", event.id)
