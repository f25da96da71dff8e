"""Buffered reads for paho-mqtt (contract/mqtt.py ``BufferedReads``): every message arrives,
whole and in order, whatever its size and however the bytes fall into 64 KiB reads, over TCP
and TLS (real Mosquitto); bytes of one connection never reach the next one."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import aiomqtt
from paho.mqtt.enums import MQTTErrorCode

from contract import topics
from contract.mqtt import READ_SIZE, BufferedReads
from tests.gwkit import CAMPUS
from tests.helpers import Mosquitto
from tests.test_broker_security import GATEWAY, broker, certs, mqtt_client

__all__ = ["broker", "certs"]  # fixtures used here

SIZES = [0, 1, 2, 126, 127, 128, 16_383, 16_384, 70_000, 200_000, 5]
"""Payload sizes around the MQTT length encoding's byte boundaries and across 64 KiB reads."""


def payload(i: int) -> bytes:
    size = SIZES[i % len(SIZES)] if i % 7 == 0 else 40 + i % 300
    return (i.to_bytes(4, "big") * (size // 4 + 1))[:size]


async def pump(sender: aiomqtt.Client, receiver: aiomqtt.Client, topic: str, n: int) -> None:
    got: list[bytes] = []

    async def collect() -> None:
        async for m in receiver.messages:
            got.append(bytes(m.payload))  # type: ignore[arg-type]
            if len(got) == n:
                return

    task = asyncio.create_task(collect())
    for i in range(n):
        await sender.publish(topic, payload(i), qos=1)
    await asyncio.wait_for(task, 60)
    assert len(got) == n
    bad = [i for i in range(n) if got[i] != payload(i)]
    assert not bad, f"{len(bad)} messages differ, first #{bad[0]} ({len(got[bad[0]])} bytes)"


async def test_every_message_whole_and_in_order(mosquitto: Mosquitto) -> None:
    topic = topics.event_topic(CAMPUS)
    async with (
        aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="rx") as rx,
        aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="tx") as tx,
    ):
        reads = BufferedReads(rx)
        await rx.subscribe(topic, qos=1)
        await pump(tx, rx, topic, 3000)
        assert reads.buffered == 0


async def test_over_tls(broker: Mosquitto, certs: Path) -> None:
    topic = topics.event_topic(CAMPUS)
    async with (
        mqtt_client(broker, certs, f"gateway-{GATEWAY}", "gw") as rx,
        mqtt_client(broker, certs, f"edge-{CAMPUS}", "edge") as tx,
    ):
        BufferedReads(rx)
        await rx.subscribe(topics.gateway_subscriptions(None, "events")[0], qos=1)
        await pump(tx, rx, topic, 1000)


async def test_a_new_connection_starts_clean(mosquitto: Mosquitto) -> None:
    """Reconnected after the broker restarted, the same client reads the new connection's
    messages correctly."""
    topic = topics.event_topic(CAMPUS)
    rx = aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="rx", clean_session=False)
    BufferedReads(rx)
    async with rx, aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="tx") as tx:
        await rx.subscribe(topic, qos=1)
        await pump(tx, rx, topic, 200)
    mosquitto.stop()
    mosquitto.start()
    async with rx, aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="tx") as tx:
        await pump(tx, rx, topic, 200)


class PahoStandIn:
    """The two things of paho's client that ``BufferedReads`` wraps, over a real socket pair
    (to swap the socket at a chosen byte, which a broker cannot be made to do)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock: socket.socket | None = sock
        self.read: list[bytes] = []

    def _sock_recv(self, bufsize: int) -> bytes:
        assert self._sock is not None
        return self._sock.recv(bufsize)

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        try:
            self.read.append(self._sock_recv(3))
        except BlockingIOError:
            return MQTTErrorCode.MQTT_ERR_AGAIN
        return MQTTErrorCode.MQTT_ERR_SUCCESS


class ClientStandIn:
    def __init__(self, paho: PahoStandIn) -> None:
        self._client = paho


def test_bytes_of_an_old_socket_are_dropped() -> None:
    a1, b1 = socket.socketpair()
    a2, b2 = socket.socketpair()
    for s in (b1, b2):
        s.setblocking(False)
    paho = PahoStandIn(b1)
    reads = BufferedReads(ClientStandIn(paho))  # type: ignore[arg-type]
    a1.sendall(b"old-connection-bytes")
    assert paho._sock_recv(3) == b"old"
    assert reads.buffered == len(b"-connection-bytes")
    paho._sock = b2  # paho reconnected: a new socket
    a2.sendall(b"new")
    assert reads.buffered == 0
    assert paho._sock_recv(3) == b"new"
    # loop_read goes on while bytes are buffered: two calls (one per socket read) take all.
    a2.sendall(b"x" * (2 * READ_SIZE))
    calls = 0
    while paho.loop_read() == MQTTErrorCode.MQTT_ERR_SUCCESS:
        calls += 1
        assert reads.buffered == 0
    assert b"".join(paho.read) == b"x" * (2 * READ_SIZE)
    assert calls <= 3
    for s in (a1, b1, a2, b2):
        s.close()
