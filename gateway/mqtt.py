"""The gateway's MQTT session: the shared subscription in, alarm status out to the campuses.

Persistent session with a stable client id and manual acknowledgement: a message is PUBACKed
only after ``Ingest.handle`` committed it. Alarm steps are published from the database (rows
marked ``published`` after their PUBACK), so a campus learns every step even across restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from typing import Literal

import aiomqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from contract import signing, topics
from contract.aio import Service, cancel_requested, run_together
from contract.config import MqttConfig
from contract.models import AlarmStatus, Receipt
from contract.mqtt import NODELAY, Backoff, BufferedReads, tls_params
from gateway.ingest import BatchFailed, Ingest
from gateway.lanes import CampusLanes
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
READ_YIELD = 64
"""The events connection's reader gives up the event loop after this many messages."""
LEAVE_DRAIN = 3.0
"""Shutting down: how long to go on handling what was received before leaving the group."""


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
        """Telemetry connection: messages taken off the queue and not yet acknowledged."""
        self.lanes: CampusLanes | None = None
        """Events connection: each campus in order, campuses side by side."""
        if stream == "events":
            self.lanes = CampusLanes(
                ingest, store, gateway_id, self._stored, on_kept=self._receipts.put_nowait
            )
        self.signer: Ed25519PrivateKey | None = None
        """Signs every command to a campus (``command_signing``); None = sent unsigned."""

    def _stored(self, stored: tuple[str, str]) -> None:
        self._receipts.put_nowait(stored)
        self.wake_downlink.set()  # a new alarm has its "received" step to send

    @property
    def in_hand(self) -> int:
        """Messages taken off the queue and not yet acknowledged."""
        return self.lanes.in_hand if self.lanes is not None else self._unacked

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
        BufferedReads(client)  # every campus' messages come in here: read them in bulk
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
        if self.lanes is not None:
            await run_together(self.lanes.run(), self._connections())
        else:
            await self._connections()

    async def _connections(self) -> None:
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
            self.backlog + self.in_hand,
        )
        deadline = asyncio.get_running_loop().time() + drain_s
        while self.backlog + self.in_hand > 0 and self.connected.is_set():
            if asyncio.get_running_loop().time() >= deadline:
                log.warning(
                    "%d message(s) of the %s stream not handled before stopping: they come "
                    "again to this gateway's session",
                    self.backlog + self.in_hand,
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
        """The events connection (alarms, events, edge states, evidence): campus lanes
        (``gateway/lanes.py``) handle each campus' messages in the order received, campuses side
        by side, and keep a campus that falls behind in the inbox so that the others' alarms are
        not queued behind it. Each message is acknowledged once it is on disk."""
        lanes = self.lanes
        assert lanes is not None
        await lanes.ready.wait()

        async def read() -> None:
            n = 0
            async for message in client.messages:
                n += 1
                if n % READ_YIELD == 0:
                    # Taking a queued message does not give up the event loop: let the relay
                    # and the campuses' handling run between stretches of a flood.
                    await asyncio.sleep(0)
                await lanes.submit(
                    str(message.topic),
                    _payload(message),
                    functools.partial(self._ack, client, [message]),
                )

        await run_together(read(), lanes.connection())

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
