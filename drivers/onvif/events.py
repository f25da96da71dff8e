"""Camera events over an ONVIF pull-point subscription, as an explicit state machine.

States (:class:`SubscriberState`):

* ``STARTED``: a live subscription, long-polled with PullMessages and renewed in time.
* ``PAUSED``: the subscription was lost or the camera is unreachable; retried with a capped,
  jittered back-off.
* ``FAILED``: the camera refuses (wrong password, subscription cap reached); retried only
  every ``failed_retry_s``, never in a tight loop.
* ``STOPPED``: not started yet, or shut down (the subscription was removed).

Only transitions are logged, not each failed attempt. The topic mapping is the pure
:func:`~.topics.map_event`; this module does the I/O.

:class:`EventSubscriber` is what the pull-point subscriber here and the push (Notify) subscriber
in :mod:`.notify` share: the states, health, back-off, the loop that recreates a lost
subscription, the parsing of a ``wsnt:NotificationMessage`` into a :class:`CameraEvent` and its
delivery. A subclass says how to subscribe, how to wait while the subscription lives, and how
to remove it.

Shutdown removes whatever exists on the camera at that moment, including a subscription whose
creation was still in flight: the create call runs in its own task, shielded from the
cancellation, and shutdown waits for its answer (bounded by ``unsubscribe_timeout_s``) so it
can unsubscribe it.

Topics outside our own mapping are named with ``onvif-parsers`` (the parser set Home Assistant
uses) in the once-per-topic log line, so a site engineer sees "Image Too Bright" or "Storage
Failure" rather than a bare topic. Our tested map stays the only source of the kinds we turn
into events: onvif-parsers matches exact ``tns1:`` topic strings only (a camera that uses
another prefix or a vendor namespace falls through), reads the first ``SimpleItem`` positionally
rather than by name, and returns Home Assistant entity classes (``binary_sensor``/``motion``),
not the alarm semantics (digital input vs motion vs tamper) the edge needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import enum
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

from .camera import OnvifCamera
from .errors import CameraAuthError, CameraError, CameraProtocolError
from .topics import EVENT_KINDS, CameraEvent, EventKind, UnknownTopicLog, map_event, parse_bool

__all__ = [
    "BACKOFF_INITIAL_S",
    "BACKOFF_MAX_S",
    "EVENT_KINDS",
    "FAILED_RETRY_S",
    "PULL_TIMEOUT_S",
    "RENEW_AT_FRACTION",
    "SUBSCRIPTION_TERM",
    "CameraEvent",
    "EventKind",
    "EventSubscriber",
    "PullPointSubscriber",
    "SubscriberHealth",
    "SubscriberState",
    "SubscriberTiming",
    "UnknownTopicLog",
    "describe_topic",
    "map_event",
    "message_fields",
    "parse_bool",
]

log = logging.getLogger(__name__)

# Ten minutes, as Home Assistant asks: long enough that renewals are rare, short enough that a
# subscription we could not remove (crash, power cut) expires soon on a camera with a cap.
SUBSCRIPTION_TERM = dt.timedelta(minutes=10)
# Renew with a fifth of the term left: a couple of long-polls of slack before it lapses.
RENEW_AT_FRACTION = 0.8
# Long-poll length; cameras commonly cap it at 60 s, and an empty answer costs one round trip.
PULL_TIMEOUT_S = 60.0
# Extra time the HTTP request may take beyond the long-poll: cameras answer a little late.
PULL_GRACE_S = 10.0
PULL_MESSAGE_LIMIT = 100
# A camera that ignores Timeout answers empty at once; do not spin on it.
EMPTY_PULL_COOLDOWN_S = 1.0
# Back-off after transport errors or a lost subscription: doubled per failure, jittered.
BACKOFF_INITIAL_S = 1.0
# Capped so a camera that comes back after a power cut is seen within a minute.
BACKOFF_MAX_S = 60.0
# Refused (auth, subscription cap): stale subscriptions expire within a term, so half a term.
FAILED_RETRY_S = 300.0
# Shutdown must not hang on a dead camera; the subscription expires by itself anyway.
UNSUBSCRIBE_TIMEOUT_S = 5.0
EVENT_QUEUE_SIZE = 1000

_PULLPOINT_XADDR = "http://www.onvif.org/ver10/events/wsdl/PullPointSubscription"
# SOAP Fault subcodes cameras answer when their subscription table is full.
_CAP_SUBCODES = frozenset({"TooManySubscriptions", "MaxSubscriptions", "SubscribeCreationFailed"})


class SubscriberState(enum.StrEnum):
    """See the module docstring."""

    STOPPED = "stopped"
    STARTED = "started"
    PAUSED = "paused"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class SubscriberTiming:
    """The timing constants, overridable (tests, slow cameras); defaults as above."""

    term: dt.timedelta = SUBSCRIPTION_TERM
    renew_at_fraction: float = RENEW_AT_FRACTION
    pull_timeout_s: float = PULL_TIMEOUT_S
    pull_grace_s: float = PULL_GRACE_S
    empty_pull_cooldown_s: float = EMPTY_PULL_COOLDOWN_S
    backoff_initial_s: float = BACKOFF_INITIAL_S
    backoff_max_s: float = BACKOFF_MAX_S
    failed_retry_s: float = FAILED_RETRY_S
    unsubscribe_timeout_s: float = UNSUBSCRIBE_TIMEOUT_S


@dataclass(frozen=True, slots=True)
class SubscriberHealth:
    """For health telemetry.

    Attributes:
        state: Current state.
        subscription_alive: A subscription exists on the camera (as far as we know).
        last_event_at: Wall-clock time of the last event delivered.
        last_pull_at: Wall-clock time the camera was last heard from: the last successful
            PullMessages (pull), or the last Notify or Renew (push).
        consecutive_failures: Failures since the last success.
        failures: All failures so far.
        subscriptions_created: CreatePullPointSubscription (or Subscribe) calls that
            succeeded.
        last_error: The last failure, as text.
        events_dropped: Events dropped because the iterator's queue was full.
    """

    state: SubscriberState
    subscription_alive: bool
    last_event_at: float | None
    last_pull_at: float | None
    consecutive_failures: int
    failures: int
    subscriptions_created: int
    last_error: str | None
    events_dropped: int


EventCallback = Callable[[CameraEvent], Awaitable[None] | None]


def _simple_items(container: Any) -> dict[str, str]:
    items = getattr(container, "SimpleItem", None) or ()
    return {
        str(item.Name): "" if item.Value is None else str(item.Value)
        for item in items
        if getattr(item, "Name", None) is not None
    }


def message_fields(
    message: Any,
) -> tuple[str, dict[str, str], dict[str, str], dt.datetime | None, bool]:
    """topic, data, source, utc time, initialized; from a zeep ``wsnt:NotificationMessage``.

    The same zeep objects come out of a PullMessages answer and out of a ``wsnt:Notify`` body
    parsed with the event WSDL's types (see :mod:`.notify`), so both paths share this.

    Raises:
        AttributeError: Not a NotificationMessage.
    """
    topic = str(getattr(message.Topic, "_value_1", "") or "")
    body = getattr(message.Message, "_value_1", None)
    data = _simple_items(getattr(body, "Data", None))
    source = _simple_items(getattr(body, "Source", None))
    utc = getattr(body, "UtcTime", None)
    operation = str(getattr(body, "PropertyOperation", "") or "")
    return (
        topic,
        data,
        source,
        utc if isinstance(utc, dt.datetime) else None,
        (operation == "Initialized"),
    )


_message_fields = message_fields  # the old private name


def _onvif_parsers_topic(topic: str) -> str:
    """onvif-parsers keys its registry on ``tns1:`` topics: map another prefix of the first
    segment to ``tns1:`` (``tt:Device/Trigger/DigitalInput`` -> ``tns1:Device/...``)."""
    first, sep, rest = topic.strip().partition("/")
    return f"tns1:{first.rpartition(':')[2]}{sep}{rest}"


async def describe_topic(topic: str, uid: str, message: Any) -> str | None:
    """What onvif-parsers calls this message (``"Image Too Bright (binary_sensor/problem)
    = True"``), or ``None`` when it has no parser for the topic or its parser fails."""
    import onvif_parsers  # imported late: it imports the onvif library (see _lib)

    for candidate in dict.fromkeys((topic, _onvif_parsers_topic(topic))):
        try:
            entities = await onvif_parsers.parse(candidate, uid, message)
        except onvif_parsers.errors.UnknownTopicError:
            continue
        except Exception:  # a third-party parser on a camera's message: never fatal
            return None
        parts = [
            f"{e.name} ({e.platform}{'/' + e.device_class if e.device_class else ''}) = {e.value}"
            for e in entities
        ]
        return "; ".join(parts) or None
    return None


class EventSubscriber:
    """What the pull-point and the push subscriber share (see the module docstring).

    An async context manager that owns its task. Deliver to ``on_event`` (sync or async), or,
    without it, iterate: ``async for event in subscriber``. Leaving the context cancels the
    task and unsubscribes.

    Subclasses implement :meth:`_subscribe`, :meth:`_until_lost`, :meth:`_unsubscribe` and
    :meth:`_alive`.

    Args:
        camera: A connected :class:`OnvifCamera`.
        on_event: Called for each mapped event; exceptions in it are logged, not fatal.
        timing: Timing constants.
    """

    _task_prefix = "onvif-events"

    def __init__(
        self,
        camera: OnvifCamera,
        on_event: EventCallback | None = None,
        *,
        timing: SubscriberTiming | None = None,
    ) -> None:
        """Configure; nothing happens until entered."""
        self.camera = camera
        self.timing = timing or SubscriberTiming()
        self.unknown_topics = UnknownTopicLog(camera.name)
        self._on_event = on_event
        self._queue: asyncio.Queue[CameraEvent | None] = asyncio.Queue(EVENT_QUEUE_SIZE)
        self._task: asyncio.Task[None] | None = None
        self._state = SubscriberState.STOPPED
        self._renew_at = 0.0
        self._consecutive = 0
        self._failures = 0
        self._created = 0
        self._dropped = 0
        self._last_error: str | None = None
        self._last_event_at: float | None = None
        self._last_pull_at: float | None = None
        self._pending_create: asyncio.Task[Any] | None = None

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Self:
        """Start the task (it subscribes in the background)."""
        self._task = asyncio.create_task(
            self._run(), name=f"{self._task_prefix}-{self.camera.name}"
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop, unsubscribe (bounded), end the iterator."""
        await self.shutdown()

    async def shutdown(self) -> None:
        """Cancel the task and remove the subscription from the camera; idempotent.

        Whatever subscription exists at that moment is removed, also one being created or
        recreated right now (see the module docstring).
        """
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    await self._unsubscribe()  # best effort even when we are cancelled
                    raise  # we are being cancelled too: let it through
        await self._unsubscribe()
        self._transition(SubscriberState.STOPPED, "shut down")
        if self._queue.full():
            self._queue.get_nowait()
        self._queue.put_nowait(None)

    def __aiter__(self) -> Self:
        """Events, when no callback was given."""
        return self

    async def __anext__(self) -> CameraEvent:
        """The next event; ends after shutdown."""
        event = await self._queue.get()
        if event is None:
            self._queue.put_nowait(None)  # keep the iterator ended for later readers
            raise StopAsyncIteration
        return event

    # ------------------------------------------------------------------ health

    @property
    def state(self) -> SubscriberState:
        """Current state."""
        return self._state

    def health(self) -> SubscriberHealth:
        """A snapshot for telemetry."""
        return SubscriberHealth(
            state=self._state,
            subscription_alive=self._alive(),
            last_event_at=self._last_event_at,
            last_pull_at=self._last_pull_at,
            consecutive_failures=self._consecutive,
            failures=self._failures,
            subscriptions_created=self._created,
            last_error=self._last_error,
            events_dropped=self._dropped,
        )

    def _transition(self, state: SubscriberState, reason: str) -> None:
        if state is self._state:
            return
        level = logging.WARNING if state is SubscriberState.FAILED else logging.INFO
        log.log(
            level, "Camera %s events: %s -> %s (%s)", self.camera.name, self._state, state, reason
        )
        self._state = state

    # ------------------------------------------------------------------ for subclasses

    def _alive(self) -> bool:
        raise NotImplementedError

    async def _subscribe(self) -> None:
        """Create the subscription (and count it in ``_created``)."""
        raise NotImplementedError

    async def _until_lost(self) -> None:
        """Keep the subscription alive; return never, raise CameraError when it is lost."""
        raise NotImplementedError

    async def _unsubscribe(self) -> None:
        """Remove whatever subscription exists (best effort, bounded); forget it."""
        raise NotImplementedError

    # ------------------------------------------------------------------ the loop

    async def _run(self) -> None:
        while True:
            try:
                await self._subscribe()
                if self._consecutive == 0:
                    self._transition(SubscriberState.STARTED, "subscribed")
                await self._until_lost()
            except CameraError as exc:
                await self._drop_subscription()
                await asyncio.sleep(self._failed(exc))
            except Exception as exc:  # the boundary: a bug must not end event delivery
                log.exception("Camera %s events: unexpected error", self.camera.name)
                await self._drop_subscription()
                await asyncio.sleep(self._failed(exc))

    def _failed(self, exc: Exception) -> float:
        """Count a failure, change state; return how long to wait before resubscribing."""
        self._consecutive += 1
        self._failures += 1
        self._last_error = str(exc)
        if isinstance(exc, CameraAuthError):
            self._transition(SubscriberState.FAILED, "credentials refused")
            return self.timing.failed_retry_s
        if isinstance(exc, CameraProtocolError) and _CAP_SUBCODES & set(exc.subcodes):
            self._transition(SubscriberState.FAILED, "camera subscription limit reached")
            return self.timing.failed_retry_s
        self._transition(SubscriberState.PAUSED, str(exc))
        return self._backoff()

    def _backoff(self) -> float:
        exponent = min(self._consecutive - 1, 30)
        delay = min(self.timing.backoff_max_s, self.timing.backoff_initial_s * 2.0**exponent)
        return delay * random.uniform(0.5, 1.0)  # jitter: cameras on one switch desynchronize

    def _succeeded(self) -> None:
        self._consecutive = 0
        self._last_pull_at = time.time()
        self._transition(SubscriberState.STARTED, "events flowing")

    def _schedule_renewal(self, answer: Any) -> None:
        term_s = self.timing.term.total_seconds()
        current = getattr(answer, "CurrentTime", None)
        termination = getattr(answer, "TerminationTime", None)
        if isinstance(current, dt.datetime) and isinstance(termination, dt.datetime):
            granted = (termination - current).total_seconds()
            if 0 < granted < term_s:  # the camera may grant less than asked
                term_s = granted
        self._renew_at = time.monotonic() + term_s * self.timing.renew_at_fraction

    async def _create_shielded(self, action: str, create: Callable[[], Awaitable[Any]]) -> Any:
        """Run a subscription-creating call in its own task, shielded from our cancellation.

        If we are cancelled (shutdown) while it is in flight, the task is left in
        ``_pending_create`` for :meth:`_settle_pending` to finish and unsubscribe.
        """
        task = asyncio.create_task(self.camera.call(action, create))
        self._pending_create = task
        try:
            result = await asyncio.shield(task)
        except Exception:
            self._pending_create = None
            raise
        self._pending_create = None
        return result

    async def _settle_pending(self) -> Any:
        """The answer of a create call still in flight at shutdown (bounded), or ``None``."""
        pending, self._pending_create = self._pending_create, None
        if pending is None or pending.cancelled():
            return None
        try:
            async with asyncio.timeout(self.timing.unsubscribe_timeout_s):
                return await pending
        except (CameraError, TimeoutError):
            return None
        except Exception:  # shutdown must finish; the subscription expires by itself
            log.exception("Camera %s: subscription create failed at shutdown", self.camera.name)
            return None

    async def _deliver(self, message: Any) -> None:
        try:
            topic, data, source, utc, initialized = message_fields(message)
        except AttributeError:
            log.debug("Camera %s: malformed notification skipped", self.camera.name)
            return
        event = map_event(topic, data, source)
        if event is None:
            if topic not in self.unknown_topics.seen:
                description = await describe_topic(topic, self.camera.name, message)
                self.unknown_topics.note(topic, description)
            else:
                self.unknown_topics.note(topic)
            return
        event = event.with_message(utc, initialized)
        self._last_event_at = time.time()
        if self._on_event is None:
            if self._queue.full():
                self._queue.get_nowait()
                self._dropped += 1
                if self._dropped == 1:
                    log.warning("Camera %s: event queue full, dropping oldest", self.camera.name)
            self._queue.put_nowait(event)
            return
        try:
            result = self._on_event(event)
            if result is not None:
                await result
        except Exception:  # the consumer's bug must not stop the subscription
            log.exception("Camera %s: event callback failed", self.camera.name)

    async def _drop_subscription(self) -> None:
        """Remove a subscription we are giving up on, so it does not count against a cap."""
        await self._unsubscribe()


class PullPointSubscriber(EventSubscriber):
    """Events from one camera over a pull-point subscription (long-polled PullMessages).

    See :class:`EventSubscriber` for the interface.
    """

    def __init__(
        self,
        camera: OnvifCamera,
        on_event: EventCallback | None = None,
        *,
        timing: SubscriberTiming | None = None,
    ) -> None:
        """Configure; nothing happens until entered."""
        super().__init__(camera, on_event, timing=timing)
        self._pullpoint: Any = None
        self._subscription: Any = None
        self._address: str | None = None

    def _alive(self) -> bool:
        return self._subscription is not None

    async def _subscribe(self) -> None:
        lib = self.camera.lib
        term = self.timing.term

        async def create() -> Any:
            events = await lib.create_events_service()
            return await events.CreatePullPointSubscription(
                {"InitialTerminationTime": lib.get_next_termination_time(term)}
            )

        result = await self._create_shielded("CreatePullPointSubscription", create)
        self._address = _subscription_address(self.camera.name, result)
        lib.xaddrs[_PULLPOINT_XADDR] = lib.rewrite_url(self._address)

        async def services() -> tuple[Any, Any]:
            subscription = await lib.create_subscription_service("PullPointSubscription")
            pullpoint = await lib.create_pullpoint_service()
            return subscription, pullpoint

        self._subscription, self._pullpoint = await self.camera.call("subscribe", services)
        self._created += 1
        self._schedule_renewal(result)
        # Makes the camera resend current states (an input already closed, motion in progress)
        # so a new subscription starts from the truth. Optional on some firmwares.
        try:
            await self.camera.call(
                "SetSynchronizationPoint", self._pullpoint.SetSynchronizationPoint
            )
        except CameraProtocolError as exc:
            log.debug("Camera %s: SetSynchronizationPoint refused: %s", self.camera.name, exc)

    async def _renew(self) -> None:
        lib = self.camera.lib
        subscription = self._subscription

        async def renew() -> Any:
            return await subscription.Renew(lib.get_next_termination_time(self.timing.term))

        self._schedule_renewal(await self.camera.call("Renew", renew))

    async def _until_lost(self) -> None:
        """Long-poll; returns never, raises CameraError when the subscription is lost."""
        timing = self.timing
        while True:
            if time.monotonic() >= self._renew_at:
                await self._renew()
            until_renewal = self._renew_at - time.monotonic()
            wait_s = max(1.0, min(timing.pull_timeout_s, until_renewal))
            pullpoint = self._pullpoint

            async def pull(wait_s: float = wait_s, pullpoint: Any = pullpoint) -> Any:
                return await pullpoint.PullMessages(
                    {
                        "MessageLimit": PULL_MESSAGE_LIMIT,
                        "Timeout": dt.timedelta(seconds=round(wait_s)),
                    }
                )

            started = time.monotonic()
            answer = await self.camera.call("PullMessages", pull, wait_s + timing.pull_grace_s)
            self._succeeded()
            messages = list(getattr(answer, "NotificationMessage", None) or ())
            for message in messages:
                await self._deliver(message)
            if not messages and time.monotonic() - started < wait_s / 2:
                await asyncio.sleep(timing.empty_pull_cooldown_s)

    _pull_until_lost = _until_lost  # the old name

    async def _unsubscribe(self) -> None:
        answer = await self._settle_pending()
        if answer is not None:
            with contextlib.suppress(CameraError):
                self._address = _subscription_address(self.camera.name, answer)
        subscription, self._subscription, self._pullpoint = self._subscription, None, None
        address, self._address = self._address, None
        await _unsubscribe_at(
            self.camera,
            subscription,
            address,
            "PullPointSubscription",
            _PULLPOINT_XADDR,
            self.timing.unsubscribe_timeout_s,
        )


def _subscription_address(camera: str, answer: Any) -> str:
    """The subscription manager address of a CreatePullPointSubscription/Subscribe answer."""
    try:
        return str(answer.SubscriptionReference.Address._value_1)
    except AttributeError:
        raise CameraProtocolError(camera, "subscribe", "no subscription address") from None


async def _unsubscribe_at(
    camera: OnvifCamera,
    subscription: Any,
    address: str | None,
    port_type: str,
    xaddr_key: str,
    bound_s: float,
) -> None:
    """Unsubscribe ``subscription`` (a library service), or, when we only got as far as the
    address, a subscription service made for it. Best effort: errors are logged, not raised."""
    if subscription is None and address is None:
        return
    try:
        if subscription is None:
            lib = camera.lib

            async def service() -> Any:
                lib.xaddrs[xaddr_key] = lib.rewrite_url(address)
                return await lib.create_subscription_service(port_type)

            subscription = await camera.call("subscribe", service, bound_s)
        await camera.call("Unsubscribe", subscription.Unsubscribe, bound_s)
    except (CameraError, RuntimeError) as exc:
        # Best effort: the camera is often why we stop; the subscription expires anyway.
        # (RuntimeError: the camera was closed under us.)
        log.debug("Camera %s: Unsubscribe failed: %s", camera.name, exc)
