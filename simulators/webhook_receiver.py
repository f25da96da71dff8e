"""A simulated police webhook receiver (also takes CAP 1.2 posts): a real HTTP(S) server.

It checks every POST's signature (``X-CG-Timestamp`` / ``X-CG-Signature``, 401 if wrong),
records the alarms and drops repeats by ``Idempotency-Key`` (a repeat is answered 200 again,
as a receiver that already has it would), and has fault knobs: answer ``fail_next`` requests
with 500 (or another status, optionally with ``Retry-After``), refuse with 400, or answer late
(for everything or for bodies that mention a campus). It posts signed status updates back to
the gateway with :meth:`WebhookReceiver.post_status`.

    python -m simulators.webhook_receiver --port 9443 --secret-env CG_WEBHOOK_SECRET
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from types import TracebackType
from typing import Any, Self

import httpx
from aiohttp import web

from drivers.webhook import doc

log = logging.getLogger(__name__)


@dataclass
class Received:
    key: str
    content_type: str
    body: bytes
    headers: dict[str, str]
    at: float = field(default_factory=time.monotonic)

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Counters:
    requests: int = 0
    accepted: int = 0
    duplicates: int = 0
    bad_signatures: int = 0
    faults_answered: int = 0
    in_progress: int = 0
    max_in_progress: int = 0


class WebhookReceiver:
    def __init__(
        self,
        secret: bytes,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        ssl_context: ssl.SSLContext | None = None,
        status_url: str | None = None,
        status_secret: bytes | None = None,
    ) -> None:
        self.secret = secret
        self.host = host
        self.port = port
        self.ssl_context = ssl_context
        self.status_url = status_url
        self.status_secret = status_secret or secret
        self.received: list[Received] = []
        self.keys: set[str] = set()
        self.counters = Counters()
        self.fail_next = 0
        self.fail_status = 500
        self.fail_retry_after: str | None = None
        self.reject_next = 0
        self.reject_status = 400
        self.reject_body = '{"error":"unknown account"}'
        self.delay = 0.0
        self.delay_if: dict[str, float] = {}
        """A body that contains the key (e.g. a campus id) is answered this many seconds late."""
        self.client_certs: list[dict[str, Any]] = []
        self._release = asyncio.Event()
        self._runner: web.AppRunner | None = None

    def release(self) -> None:
        """End every delay now (answers held back by ``delay`` / ``delay_if`` go out)."""
        self.delay, self.delay_if = 0.0, {}
        self._release.set()
        self._release = asyncio.Event()

    @property
    def url(self) -> str:
        scheme = "https" if self.ssl_context else "http"
        return f"{scheme}://{self.host}:{self.port}/alarms"

    async def __aenter__(self) -> Self:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, ssl_context=self.ssl_context)
        await site.start()
        server = site._server
        assert server is not None
        sockets = getattr(server, "sockets", None) or []
        self.port = int(sockets[0].getsockname()[1])
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.counters.requests += 1
        ts = request.headers.get(doc.TIMESTAMP_HEADER, "")
        sig = request.headers.get(doc.SIGNATURE_HEADER, "")
        if not ts.isdigit() or sig != doc.signature(self.secret, int(ts), body):
            self.counters.bad_signatures += 1
            return web.json_response({"error": "bad signature"}, status=401)
        peer = request.transport.get_extra_info("peercert") if request.transport else None
        if peer:
            self.client_certs.append(peer)
        wait = self.delay + max(
            (d for k, d in self.delay_if.items() if k.encode() in body), default=0.0
        )
        if wait:
            c = self.counters
            c.in_progress += 1
            c.max_in_progress = max(c.max_in_progress, c.in_progress)
            try:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._release.wait(), wait)
            finally:
                c.in_progress -= 1
        if self.fail_next > 0:
            self.fail_next -= 1
            self.counters.faults_answered += 1
            headers = {"Retry-After": self.fail_retry_after} if self.fail_retry_after else {}
            return web.json_response(
                {"error": "try again"}, status=self.fail_status, headers=headers
            )
        if self.reject_next > 0:
            self.reject_next -= 1
            self.counters.faults_answered += 1
            return web.Response(
                text=self.reject_body, status=self.reject_status, content_type="application/json"
            )
        key = request.headers.get(doc.IDEMPOTENCY_HEADER, "")
        if key in self.keys:
            self.counters.duplicates += 1
            return web.json_response({"status": "duplicate", "id": key})
        self.keys.add(key)
        self.counters.accepted += 1
        self.received.append(
            Received(key, request.content_type, body, {k: v for k, v in request.headers.items()})
        )
        return web.json_response({"status": "received", "id": key})

    def alarms(self) -> list[Any]:
        """The JSON documents received (once each)."""
        return [r.json() for r in self.received if r.content_type == "application/json"]

    async def post_status(
        self,
        alarm_id: str,
        state: str,
        note: str = "",
        *,
        at: datetime | None = None,
        timestamp: int | None = None,
        signature: str | None = None,
        url: str | None = None,
    ) -> httpx.Response:
        """Post a signed status update to the gateway; ``timestamp`` / ``signature`` override
        what would be sent (to test stale or forged ones)."""
        target = url or self.status_url
        assert target, "status_url is not set"
        body = doc.status_body(alarm_id, state, note, at)
        ts = int(time.time()) if timestamp is None else timestamp
        headers = {
            "Content-Type": "application/json",
            doc.TIMESTAMP_HEADER: str(ts),
            doc.SIGNATURE_HEADER: signature or doc.signature(self.status_secret, ts, body),
        }
        async with httpx.AsyncClient(timeout=5) as client:
            return await client.post(target, content=body, headers=headers)

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:  # noqa: ASYNC109
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise TimeoutError("the webhook receiver did not see what was expected")
            await asyncio.sleep(0.01)


async def _main(args: argparse.Namespace) -> None:
    secret = os.environ.get(args.secret_env, "")
    if len(secret) < 16:
        raise SystemExit(f"set {args.secret_env} to the shared secret (>= 16 characters)")
    async with WebhookReceiver(secret.encode(), args.host, args.port) as rx:
        print(f"webhook receiver on {rx.url}", flush=True)
        while True:
            await asyncio.sleep(5)
            log.info("received %d, duplicates %d", rx.counters.accepted, rx.counters.duplicates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9443)
    parser.add_argument("--secret-env", default="CG_WEBHOOK_SECRET")
    logging.basicConfig(level=logging.INFO)
    asyncio.run(_main(parser.parse_args()))


if __name__ == "__main__":
    main()
