"""MQTT client settings shared by edge and gateway: TLS from our config, reconnect back-off."""

from __future__ import annotations

import asyncio
import random
import ssl
from collections.abc import Coroutine
from typing import Any

import aiomqtt

from contract.config import MqttConfig


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


async def run_together(*coros: Coroutine[Any, Any, None]) -> None:
    """Run the loops of one connection until the first of them fails; cancel the rest.

    Not ``asyncio.TaskGroup``: on Python 3.11 a child that fails while the group is exiting
    leaves the parent task with a stray cancellation request (fixed in 3.12), which would make
    the reconnect loop around this stop for good.
    """
    tasks = [asyncio.create_task(c) for c in coros]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for t in done:
        if not t.cancelled() and (exc := t.exception()) is not None:
            raise exc
