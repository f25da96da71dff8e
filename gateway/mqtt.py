"""The gateway's MQTT session: the shared subscription in, alarm status out to the campuses.

Persistent session with a stable client id and manual acknowledgement: a message is PUBACKed
only after ``Ingest.handle`` committed it. Alarm steps are published from the database (rows
marked ``published`` after their PUBACK), so a campus learns every step even across restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Literal

import aiomqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from contract import signing, topics
from contract.aio import Service, cancel_requested, run_together
from contract.config import MqttConfig
from contract.models import AlarmStatus, Receipt
from contract.mqtt import NODELAY, Backoff, tls_params
from gateway.ingest import Ingest
from gateway.store.repo import Store, aware

log = logging.getLogger(__name__)

DOWNLINK_SCAN = 0.5
"""Fallback scan for unpublished alarm steps; normally a step is pushed as soon as it is stored."""


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
        async for message in client.messages:
            payload = message.payload
            data = bytes(payload) if isinstance(payload, bytes | bytearray) else b""
            stored = await self._ingest.handle(str(message.topic), data)
            if message.qos > 0:
                client._client.ack(message.mid, message.qos)
            if stored is not None:
                self._receipts.put_nowait(stored)
                self.wake_downlink.set()  # a new alarm has its "received" step to send

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
