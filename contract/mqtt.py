"""MQTT client settings shared by edge and gateway: TLS from our config, reconnect back-off,
buffered reads."""

from __future__ import annotations

import random
import socket
import ssl

import aiomqtt
from paho.mqtt.enums import MQTTErrorCode

from contract.config import MqttConfig

NODELAY: tuple[tuple[int, int, int], ...] = ((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),)
"""Socket options for every MQTT client: an alarm is one small packet, and with Nagle's
algorithm on it waits for the ACK of whatever small packet went just before it (a PUBACK, a
status), which Linux may delay 40 ms. Measured on the self-test path: 40-48 ms per hop."""


def tls_params(cfg: MqttConfig) -> aiomqtt.TLSParameters | None:
    if cfg.tls is None:
        return None
    return aiomqtt.TLSParameters(
        ca_certs=str(cfg.tls.ca_file) if cfg.tls.ca_file else None,
        certfile=str(cfg.tls.cert_file) if cfg.tls.cert_file else None,
        keyfile=str(cfg.tls.key_file) if cfg.tls.key_file else None,
        cert_reqs=ssl.CERT_REQUIRED,
        tls_version=ssl.PROTOCOL_TLS_CLIENT,
    )


class Backoff:
    """Capped exponential back-off with full jitter (so a hundred edges do not reconnect in step
    after a broker restart)."""

    def __init__(self, first: float = 0.2, cap: float = 10.0) -> None:
        self.first = first
        self.cap = cap
        self._n = 0

    def next(self) -> float:
        delay = min(self.cap, self.first * (2**self._n))
        self._n = min(self._n + 1, 30)
        return random.uniform(delay / 2, delay)

    def reset(self) -> None:
        self._n = 0


READ_SIZE = 65536
"""Bytes asked of the socket at a time by ``buffered_reads``."""


class BufferedReads:
    """Read the broker's stream in 64 KiB pieces instead of paho-mqtt's 3-4 ``recv`` calls per
    packet.

    paho-mqtt 2.x reads each packet with one ``recv(1)`` for its command byte, one per byte of
    its length, and one for its body, and handles one packet per "socket readable" event (its
    ``loop_read`` reads only as many packets as it has messages in flight). At thousands of
    messages a second that is most of a gateway's time: 70 % of the gateway's samples were in
    ``recv`` while a campus flooded it (py-spy, ``tests/test_faults.py`` flood). Here paho's
    ``_sock_recv`` is served from a buffer filled by one large ``recv``, and ``loop_read`` goes
    on while the buffer holds bytes (the socket is not "readable" for bytes already taken from
    it). The buffer is dropped when paho opens a new socket (a reconnect): bytes of one
    connection never reach the next. Exceptions (would block, TLS wants read/write, a closed
    socket) are paho's own, raised by its own ``_sock_recv`` as before.
    """

    def __init__(self, client: aiomqtt.Client) -> None:
        paho = client._client
        self._paho = paho
        self._recv = paho._sock_recv
        self._loop_read = paho.loop_read
        self._buf = b""
        self._pos = 0
        self._sock: object = None
        # Instance attributes shadow paho's methods; aiomqtt looks ``loop_read`` up on every
        # readable event, and paho calls ``self._sock_recv``.
        paho._sock_recv = self.recv  # type: ignore[method-assign]
        paho.loop_read = self.loop_read  # type: ignore[method-assign]

    def recv(self, bufsize: int) -> bytes:
        if self._sock is not self._paho._sock:
            self._sock, self._buf, self._pos = self._paho._sock, b"", 0
        if self._pos >= len(self._buf):
            data = self._recv(max(bufsize, READ_SIZE))
            if len(data) <= bufsize:
                return data  # all of it wanted (or b"": the connection closed)
            self._buf, self._pos = data, 0
        end = self._pos + bufsize
        out = self._buf[self._pos : end]
        self._pos = min(end, len(self._buf))
        return out

    @property
    def buffered(self) -> int:
        """Bytes read from the socket and not yet handed to paho."""
        if self._sock is not self._paho._sock:
            return 0
        return len(self._buf) - self._pos

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        rc = self._loop_read(max_packets)
        while rc == MQTTErrorCode.MQTT_ERR_SUCCESS and self.buffered:
            rc = self._loop_read(max_packets)
        return rc
