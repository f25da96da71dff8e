"""MQTT out: drains the outbox in priority order, removes a row only after its PUBACK.

The edge keeps a persistent session (clean_session=False, a stable client id) so status messages
the gateway sends while the link is down arrive after reconnect. Its retained state topic says
online on connect; the broker publishes the last will (offline) if the edge vanishes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

import aiomqtt

from contract import topics
from contract.aio import Service, cancel_requested, run_together
from contract.config import MqttConfig
from contract.models import EdgeState, utcnow
from contract.mqtt import NODELAY, Backoff, tls_params
from edge.outbox import Outbox, OutboxItem

log = logging.getLogger(__name__)

MessageHandler = Callable[[str, bytes], Awaitable[None]]

RECEIPT_TIMEOUT = 10.0
"""An event the gateway has not confirmed this long after its PUBACK is sent again (the gateway
deduplicates by id). Long enough for a busy gateway, short for an alarm lost in a broker crash."""

PROBE_S = 1.0
"""While a new connection has no receipt yet, its first event is sent again this often."""
GATE_S = 30.0
"""After this long without a receipt on a connection, events go out without waiting for one."""
BATCH = 32
"""Messages in flight at once: enough to keep a burst moving, small enough that an alarm queued
behind a burst of telemetry waits at most one batch's round trip."""


class Uplink(Service):
    """Owns the MQTT connection of one campus edge."""

    task_name = "uplink"

    def __init__(
        self,
        cfg: MqttConfig,
        campus: str,
        edge_id: str,
        outbox: Outbox,
        on_message: MessageHandler | None = None,
        version: str = "",
    ) -> None:
        super().__init__()
        self._cfg = cfg
        self._campus = campus
        self._edge = edge_id
        self._outbox = outbox
        self._on_message = on_message
        self._version = version
        self.connected = asyncio.Event()
        self.sent = 0
        self.on_state: Callable[[bool], None] | None = None
        self._closing = False
        self._sessions = 0
        """Connections made so far (the first of the process is gated only over a backlog:
        see ``_drain``)."""
        # Retained state (device status): only the newest value matters and it is rebuilt
        # from the devices after a restart, so it lives in memory, not in the fsynced outbox.
        self._retained: dict[str, bytes] = {}
        self._dirty: set[str] = set()
        self._retained_changed = asyncio.Event()

    def _state_payload(self, online: bool, reason: str) -> bytes:
        return (
            EdgeState(
                campus=self._campus,
                edge=self._edge,
                online=online,
                ts=utcnow(),
                version=self._version,
                reason=reason,
            )
            .model_dump_json()
            .encode()
        )

    def _client(self) -> aiomqtt.Client:
        state_topic = topics.edge_state_topic(self._campus)
        return aiomqtt.Client(
            hostname=self._cfg.host,
            port=self._cfg.port,
            username=self._cfg.username,
            password=self._cfg.secret(),
            identifier=self._cfg.client_id or f"cg-edge-{self._campus}-{self._edge}",
            clean_session=False,
            keepalive=self._cfg.keepalive,
            timeout=self._cfg.connect_timeout,
            tls_params=tls_params(self._cfg),
            socket_options=NODELAY,
            tls_insecure=bool(self._cfg.tls and self._cfg.tls.insecure) or None,
            will=aiomqtt.Will(
                state_topic, self._state_payload(False, "connection lost"), qos=1, retain=True
            ),
        )

    def set_retained(self, topic: str, payload: bytes) -> None:
        """Publish ``payload`` retained on ``topic`` as soon as possible, and again after every
        reconnect; a newer value replaces one not yet sent."""
        self._retained[topic] = payload
        self._dirty.add(topic)
        self._retained_changed.set()

    def _set_connected(self, up: bool) -> None:
        if up == self.connected.is_set():
            return
        if up:
            self.connected.set()
            log.info("uplink to %s:%s is up", self._cfg.host, self._cfg.port)
        elif self._closing:
            self.connected.clear()
            log.info("uplink closed (%d message(s) left in the outbox)", self._outbox.depth)
        else:
            self.connected.clear()
            log.warning(
                "uplink to %s:%s is down; events stay queued on disk (%d waiting)",
                self._cfg.host,
                self._cfg.port,
                self._outbox.depth,
            )
        if self.on_state is not None:
            self.on_state(up)

    async def _run(self) -> None:
        backoff = Backoff()
        client = self._client()
        while True:
            try:
                async with client:
                    backoff.reset()
                    await client.publish(
                        topics.edge_state_topic(self._campus),
                        self._state_payload(True, ""),
                        qos=1,
                        retain=True,
                    )
                    for sub in topics.edge_subscriptions(self._campus):
                        await client.subscribe(sub, qos=1)
                    await self._outbox.resend_all_unconfirmed()
                    self._dirty.update(self._retained)  # the broker may have lost them
                    self._retained_changed.set()
                    self._set_connected(True)
                    await run_together(
                        self._drain(client), self._receive(client), self._publish_retained(client)
                    )
            except aiomqtt.MqttError as exc:
                if cancel_requested():
                    # aiomqtt can turn a cancellation during connect into an MqttError.
                    raise asyncio.CancelledError from None
                self._set_connected(False)
                delay = backoff.next()
                log.debug("uplink connect failed (%s); retry in %.2fs", exc, delay)
                await asyncio.sleep(delay)
            except Exception:
                # The boundary of the connection's life: whatever broke, log it with its trace
                # and connect again. Everything not acknowledged is still in the outbox.
                log.exception("uplink session failed unexpectedly; reconnecting")
                self._set_connected(False)
                await asyncio.sleep(backoff.next())
            except asyncio.CancelledError:
                await self._goodbye(client)
                raise

    async def _goodbye(self, client: aiomqtt.Client) -> None:
        """On a clean stop say offline ourselves (the will only fires on a lost connection)."""
        if not self.connected.is_set():
            return
        self._closing = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(
                client.publish(
                    topics.edge_state_topic(self._campus),
                    self._state_payload(False, "shutdown"),
                    qos=1,
                    retain=True,
                ),
                timeout=1.0,
            )
        self._set_connected(False)

    async def _drain(self, client: aiomqtt.Client) -> None:
        """Send the outbox, in order.

        A reconnected link is not trusted with more than one event until a receipt shows that a
        gateway is listening: after a broker restart the broker takes (and acknowledges) what
        is published before the gateways have subscribed again (Mosquitto 2.0 does not restore
        shared subscriptions), and drops it. The events sent then came again only after their
        receipt timeout, after later ones of the same device had reached the police (the
        hour's soak: 137 alarms behind a later one of their device, over three broker
        restarts). So until the first receipt only the oldest event waiting for one is sent,
        again every ``PROBE_S``; messages that need no receipt go as usual. A centre that sends
        no receipt for ``GATE_S`` (none running, or that event refused) does not hold the rest.

        The first connection of the process is held the same way when events of an earlier run
        waited on disk at the start (``Outbox.backlog_at_open``): an edge killed and restarted
        may come back while the gateways are not subscribed yet, as in the slow fault suite's
        "all faults at once" (116 alarms of a backlog behind later ones). A first connection
        without such a backlog is not held: at the edge's start the gateways have long been
        subscribed, and a tool standing in for them (``campusguard bollard send`` watching for
        the outcome) need not answer receipts.
        """
        self._sessions += 1
        proven = self._sessions == 1 and not self._outbox.backlog_at_open
        gate_until = time.monotonic() + GATE_S
        while True:
            self._outbox.changed.clear()
            if not proven and time.monotonic() < gate_until:
                # Everything sent may go again: the probe is the oldest event still waiting.
                items = await self._outbox.peek(BATCH, resend_before=time.monotonic())
                probe = next((i for i, it in enumerate(items) if it.receipt_key is not None), None)
                if probe is not None:
                    key = items[probe].receipt_key
                    assert key is not None
                    items = items[: probe + 1]
                    self._outbox.receipted.clear()
                    await self._send(client, items)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._outbox.receipted.wait(), PROBE_S)
                    # Only the probe's own receipt proves this connection: receipts the
                    # broker kept for the edge from before may arrive first.
                    proven = not await self._outbox.waiting(key)
                    continue
            else:
                proven = True
                items = await self._outbox.peek(
                    BATCH, resend_before=time.monotonic() - RECEIPT_TIMEOUT
                )
            if not items:
                # Woken by new rows, or after a while to resend what was never confirmed.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._outbox.changed.wait(), RECEIPT_TIMEOUT / 4)
                continue
            await self._send(client, items)

    async def _send(self, client: aiomqtt.Client, items: list[OutboxItem]) -> None:
        """Publish in order; each removed (or marked sent) only once its PUBACK is in."""
        results = await asyncio.gather(
            *(self._publish(client, item) for item in items), return_exceptions=True
        )
        acked = [item for item, res in zip(items, results, strict=True) if res is None]
        await self._outbox.published(acked)
        self.sent += len(acked)
        for res in results:
            if isinstance(res, BaseException):
                raise res

    async def _publish_retained(self, client: aiomqtt.Client) -> None:
        while True:
            await self._retained_changed.wait()
            self._retained_changed.clear()
            while self._dirty:
                topics_now = list(self._dirty)[:BATCH]
                sends = []
                for topic in topics_now:
                    self._dirty.discard(topic)
                    sends.append(
                        client.publish(
                            topic,
                            self._retained[topic],
                            qos=1,
                            retain=True,
                            timeout=self._cfg.connect_timeout,
                        )
                    )
                try:
                    await asyncio.gather(*sends)
                except BaseException:
                    self._dirty.update(topics_now)  # try again after the reconnect
                    raise

    async def _publish(self, client: aiomqtt.Client, item: OutboxItem) -> None:
        await client.publish(
            item.topic, item.payload, qos=1, retain=item.retain, timeout=self._cfg.connect_timeout
        )

    async def _receive(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            if self._on_message is None:
                continue
            payload = message.payload
            if not isinstance(payload, bytes | bytearray):
                continue
            try:
                await self._on_message(str(message.topic), bytes(payload))
            except Exception:
                log.exception("handling %s failed", message.topic)
