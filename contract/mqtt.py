"""MQTT client settings shared by edge and gateway: TLS from our config, reconnect back-off."""

from __future__ import annotations

import random
import socket
import ssl

import aiomqtt

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
