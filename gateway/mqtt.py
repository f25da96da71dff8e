"""The gateway's MQTT session: the shared subscription in, alarm status out to the campuses.

Persistent session with a stable client id and manual acknowledgement: a message is PUBACKed
only after ``Ingest.handle`` committed it. Alarm steps are published from the database (rows
marked ``published`` after their PUBACK), so a campus learns every step even across restarts.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
from typing import Literal

import aiomqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from contract import signing, topics
from contract.aio import Service, cancel_and_wait, cancel_requested, run_together
from contract.config import MqttConfig
from contract.models import AlarmStatus, Receipt
from contract.mqtt import NODELAY, Backoff, tls_params
from gateway.ingest import BatchFailed, Ingest
from gateway.store.repo import Store, aware

log = logging.getLogger(__name__)

DOWNLINK_SCAN = 0.5
"""Fallback scan for unpublished alarm steps; normally a step is pushed as soon as it is stored."""


BATCH_LINGER = 0.05
"""On the telemetry connection, wait this long after a message for more before storing them
together (device status is a 30 s heartbeat: 50 ms more is nothing, one commit per 25 instead
of per message is most of a district's gateway CPU; bench/district.py)."""
BATCH_STREAMING = 1.0
"""Linger only when the previous batch began less than this many seconds ago."""
BATCH_MAX = 500
"""At most this many messages in one batch (one transaction)."""
EVENT_CONCURRENCY = 8
"""Events of different campuses stored at once on the events connection."""
EVENT_WINDOW = 256
"""Messages taken off the events connection's queue ahead of the oldest not yet committed."""
LEAVE_DRAIN = 3.0
"""Shutting down: how long to go on handling what was received before leaving the group."""


def _lane_done(lanes: dict[str, asyncio.Task[None]], campus: str, task: asyncio.Task[None]) -> None:
    if lanes.get(campus) is task:
        del lanes[campus]


def _campus(topic: str) -> str:
    parts = topic.split("/", 3)
    return parts[2] if len(parts) > 2 else ""


def _payload(message: aiomqtt.Message) -> bytes:
    payload = message.payload
    return bytes(payload) if isinstance(payload, bytes | bytearray) else b""


class GatewayMqtt(Service):
    task_name = "gateway-mqtt"

    def __init__(
        self,
        cfg: MqttConfig,
        gateway_id: str,
        share_group: str | None,
        ingest: Ingest,
        store: Store,
        stream: Literal["events", "telemetry"] = "events",
    ) -> None:
        super().__init__()
        self._cfg = cfg
        self._id = gateway_id
        self.stream = stream
        self._share = share_group
        self._ingest = ingest
        self._store = store
        self.connected = asyncio.Event()
        self.wake_downlink = asyncio.Event()
        self._receipts: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        self._live: aiomqtt.Client | None = None
        self._leaving = False
        self._unacked = 0
        """Messages taken off the queue and not yet acknowledged (being handled)."""
        self.signer: Ed25519PrivateKey | None = None
        """Signs every command to a campus (``command_signing``); None = sent unsigned."""

    def _client(self) -> aiomqtt.Client:
        client = aiomqtt.Client(
            hostname=self._cfg.host,
            port=self._cfg.port,
            username=self._cfg.username,
            password=self._cfg.secret(),
            identifier=self.client_id,
            clean_session=False,
            keepalive=self._cfg.keepalive,
            timeout=self._cfg.connect_timeout,
            tls_params=tls_params(self._cfg),
            socket_options=NODELAY,
            tls_insecure=bool(self._cfg.tls and self._cfg.tls.insecure) or None,
            # Never discard (aiomqtt drops what exceeds a bounded queue, and a dropped message
            # is never acknowledged). Memory is bounded by what the campuses send in a burst;
            # ``backlog`` shows it, and the health endpoint reports it.
            max_queued_incoming_messages=0,
        )
        # aiomqtt has no switch for it: paho's manual ack, so a message is acknowledged to
        # the broker only once it is in the database.
        client._client.manual_ack_set(True)
        return client

    @property
    def client_id(self) -> str:
        base = self._cfg.client_id or f"cg-gw-{self._id}"
        return base if self.stream == "events" else f"{base}-telemetry"

    @property
    def backlog(self) -> int:
        """Messages received and waiting to be handled."""
        client = self._live
        queue = getattr(client, "_queue", None) if client is not None else None
        return int(queue.qsize()) if queue is not None else 0

    async def _run(self) -> None:
        backoff = Backoff()
        client = self._client()
        down_logged = False
        while True:
            try:
                async with client:
                    # A session kept from a version that took every stream on one connection
                    # would still deliver telemetry here: drop that filter (harmless if none).
                    if self.stream == "events":
                        await client.unsubscribe(topics.gateway_subscriptions(self._share)[0])
                        # Device status moved to the telemetry connection: drop the filter a
                        # session kept from an older version still has here.
                        await client.unsubscribe(
                            topics.gateway_subscriptions(self._share, "telemetry")[1]
                        )
                    if not self._leaving:
                        for sub in topics.gateway_subscriptions(self._share, self.stream):
                            await client.subscribe(sub, qos=1)
                    backoff.reset()
                    self._live = client
                    self.connected.set()
                    down_logged = False
                    log.info(
                        "gateway connected to broker %s:%d (%s stream)",
                        self._cfg.host,
                        self._cfg.port,
                        self.stream,
                    )
                    if self.stream == "events":
                        await run_together(
                            self._receive(client),
                            self._downlink(client),
                            self._send_receipts(client),
                        )
                    else:
                        await self._receive(client)
            except aiomqtt.MqttError as exc:
                if cancel_requested():
                    # aiomqtt can turn a cancellation during connect into an MqttError.
                    raise asyncio.CancelledError from None
                self.connected.clear()
                if not down_logged:
                    log.warning(
                        "gateway lost the broker %s:%d (%s); reconnecting",
                        self._cfg.host,
                        self._cfg.port,
                        exc,
                    )
                    down_logged = True
                await asyncio.sleep(backoff.next())
            except Exception:
                # The boundary of the connection's life: whatever broke, log it once with its
                # trace and connect again. The outbox / the database still hold everything.
                log.exception("MQTT session failed unexpectedly; reconnecting")
                self.connected.clear()
                await asyncio.sleep(backoff.next())

    async def leave(self, drain_s: float = LEAVE_DRAIN) -> None:
        """Shutting down: unsubscribe this connection's shared subscriptions first, so the
        broker hands new messages to the other gateways of the group instead of queueing them
        in this gateway's session, then let what was already received be handled and
        acknowledged for up to ``drain_s``. Whatever is still unacknowledged then comes again
        to this session when it returns. Never raises. Without a share group there is no one
        to hand over to: the subscriptions stay, so the broker keeps queueing for this session.
        """
        self._leaving = True
        client = self._live
        if client is None or not self.connected.is_set() or not self._share:
            return
        try:
            for sub in topics.gateway_subscriptions(self._share, self.stream):
                await client.unsubscribe(sub, timeout=min(2.0, drain_s))
        except (aiomqtt.MqttError, TimeoutError) as exc:
            log.warning("could not leave the shared subscription (%s stream): %s", self.stream, exc)
            return
        log.info(
            "left the shared subscription (%s stream); handling %d message(s) received",
            self.stream,
            self.backlog + self._unacked,
        )
        deadline = asyncio.get_running_loop().time() + drain_s
        while self.backlog + self._unacked > 0 and self.connected.is_set():
            if asyncio.get_running_loop().time() >= deadline:
                log.warning(
                    "%d message(s) of the %s stream not handled before stopping: they come "
                    "again to this gateway's session",
                    self.backlog + self._unacked,
                    self.stream,
                )
                break
            await asyncio.sleep(0.02)

    async def publish(self, topic: str, payload: bytes) -> None:
        """Publish to a campus (QoS 1, waits for the broker's PUBACK).

        Raises:
            ConnectionError: the gateway has no broker connection now.
        """
        client = self._live
        if client is None or not self.connected.is_set():
            raise ConnectionError("the gateway is not connected to the broker")
        parsed = topics.parse_topic(topic)
        if self.signer is not None and parsed and parsed.kind in signing.SIGNED_KINDS:
            payload = signing.sign(self.signer, parsed.kind, payload)
        try:
            await client.publish(topic, payload, qos=1, timeout=self._cfg.connect_timeout)
        except aiomqtt.MqttError as exc:
            raise ConnectionError(f"publish failed: {exc}") from None

    async def _receive(self, client: aiomqtt.Client) -> None:
        if self.stream == "telemetry":
            await self._receive_batched(client)
        else:
            await self._receive_events(client)

    async def _receive_events(self, client: aiomqtt.Client) -> None:
        """The events connection (alarms, events, edge states, evidence): up to
        ``EVENT_CONCURRENCY`` messages of different campuses are stored at once, each campus'
        messages one after the other in the order received; acknowledged in the order received,
        each only once it and all before it are committed. A burst of alarms from many campuses
        (bench/district.py: 50 at once) no longer waits for each other's database round trips.
        """
        slots = asyncio.Semaphore(EVENT_CONCURRENCY)
        lanes: dict[str, asyncio.Task[None]] = {}
        pending: collections.deque[tuple[aiomqtt.Message, asyncio.Task[None]]] = collections.deque()
        changed = asyncio.Event()

        async def one(message: aiomqtt.Message, after: asyncio.Task[None] | None) -> None:
            if after is not None:
                await asyncio.wait([after])  # the campus' previous message first
            async with slots:
                stored = await self._ingest.handle(str(message.topic), _payload(message))
            if stored is not None:
                self._receipts.put_nowait(stored)
                self.wake_downlink.set()  # a new alarm has its "received" step to send

        async def read() -> None:
            async for message in client.messages:
                while len(pending) >= EVENT_WINDOW:
                    changed.clear()
                    await changed.wait()
                campus = _campus(str(message.topic))
                task = asyncio.create_task(one(message, lanes.get(campus)))
                lanes[campus] = task
                task.add_done_callback(functools.partial(_lane_done, lanes, campus))
                pending.append((message, task))
                self._unacked = len(pending)
                changed.set()

        async def ack() -> None:
            while True:
                while not pending:
                    changed.clear()
                    await changed.wait()
                message, task = pending[0]
                await asyncio.wait([task])
                task.result()  # a store failure: not acknowledged, the session reconnects
                pending.popleft()
                changed.set()
                self._ack(client, [message])
                self._unacked = len(pending)

        try:
            await run_together(read(), ack())
        finally:
            self._unacked = 0
            await cancel_and_wait([t for _, t in pending])

    async def _receive_batched(self, client: aiomqtt.Client) -> None:
        """The telemetry connection (device status, telemetry): while messages stream in, what
        arrives within ``BATCH_LINGER`` of the first (at most ``BATCH_MAX``) is one batch,
        its device statuses written in one transaction, then acknowledged in the order
        received. A message is acknowledged only once committed: a gateway killed mid-batch
        gets the whole batch again (a repeated status changes nothing)."""
        messages = client.messages
        queue: asyncio.Queue[aiomqtt.Message] = client._queue
        loop = asyncio.get_running_loop()
        last = -BATCH_STREAMING
        while True:
            batch = [await anext(messages)]
            self._unacked = 1
            now = loop.time()
            if now - last < BATCH_STREAMING and queue.qsize() < BATCH_MAX:
                # Messages are streaming in: wait a moment for more. A lone message after a
                # quiet spell is stored at once.
                await asyncio.sleep(BATCH_LINGER)
            last = now
            while len(batch) < BATCH_MAX:
                try:
                    batch.append(queue.get_nowait())
                except asyncio.QueueEmpty:
                    break
            self._unacked = len(batch)
            items = [(str(m.topic), _payload(m)) for m in batch]
            try:
                await self._ingest.handle_batch(items)
            except BatchFailed as exc:
                self._ack(client, batch[: exc.done])
                raise
            finally:
                self._unacked = 0
            self._ack(client, batch)

    @staticmethod
    def _ack(client: aiomqtt.Client, messages: list[aiomqtt.Message]) -> None:
        for m in messages:
            if m.qos > 0:
                client._client.ack(m.mid, m.qos)

    async def _send_receipts(self, client: aiomqtt.Client) -> None:
        """Tell each campus which of its events are stored (batched; a lost receipt only
        makes the edge send again, and the repeat is deduplicated)."""
        while True:
            batch = [await self._receipts.get()]
            while not self._receipts.empty() and len(batch) < 500:
                batch.append(self._receipts.get_nowait())
            by_campus: dict[str, list[str]] = {}
            for campus, event_id in batch:
                by_campus.setdefault(campus, []).append(event_id)
            for campus, ids in by_campus.items():
                await client.publish(
                    topics.receipt_topic(campus),
                    Receipt(campus=campus, ids=ids).model_dump_json().encode(),
                    qos=1,
                )

    async def _downlink(self, client: aiomqtt.Client) -> None:
        while True:
            self.wake_downlink.clear()
            steps = await self._store.unpublished_steps()
            if not steps:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake_downlink.wait(), DOWNLINK_SCAN)
                continue
            done: list[int] = []
            for step in steps:
                status = AlarmStatus(
                    alarm_id=step.alarm_id,
                    campus=step.campus,
                    state=step.state,  # type: ignore[arg-type]
                    ts=aware(step.ts),  # type: ignore[arg-type]
                    path=step.path,
                    note=step.note[:500],
                )
                await client.publish(
                    topics.alarm_status_topic(step.campus),
                    status.model_dump_json().encode(),
                    qos=1,
                )
                done.append(step.id)
            await self._store.mark_published(done)
