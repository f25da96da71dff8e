"""The signed webhook sink: alarms as a versioned JSON document, HTTPS POST, HMAC-signed.

:class:`HttpPoster` is the transport the webhook and CAP sinks share: one httpx client (mutual
TLS when configured), the signature headers, the ``Idempotency-Key`` (the alarm id: the
receiver drops a repeat), and the answer rules: 2xx delivered; 5xx, 408, 429 (``Retry-After``
honoured), timeouts and connection errors retried by the relay queue with capped back-off; any
other 4xx is a refusal that finishes the job as ``police_rejected`` with the status and body.

:class:`WebhookInbox` checks the receiver's status updates (same signature, a replay window).
"""

from __future__ import annotations

import logging
import ssl
import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from types import TracebackType
from typing import Any, Self

import httpx

from contract.config import CampusAccount, HttpSinkConfig, WebhookConfig
from contract.models import Event, utcnow
from drivers.webhook import doc
from gateway.relay.base import Delivery
from gateway.store.repo import Store

log = logging.getLogger(__name__)

LinkFor = Callable[[str, datetime], str | None]
MAX_STATUS_BYTES = 16 * 1024
"""An inbound status update is a few hundred bytes; anything much bigger is refused unread."""


def ssl_context(cfg: HttpSinkConfig) -> ssl.SSLContext | bool:
    """The TLS settings: the system CAs, or ``tls.ca_file``; a client certificate for mTLS."""
    tls = cfg.tls
    if tls is None:
        return True
    ctx = ssl.create_default_context(cafile=str(tls.ca_file) if tls.ca_file else None)
    if tls.cert_file is not None:
        ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file) if tls.key_file else None)
    if tls.insecure:
        ctx.check_hostname = False
    return ctx


class HttpPoster:
    """POSTs signed bodies to one receiver and keeps its health for /healthz."""

    def __init__(self, name: str, cfg: HttpSinkConfig) -> None:
        self.name = name
        self.cfg = cfg
        self.secret = cfg.secret_bytes()
        self._client: httpx.AsyncClient | None = None
        self.ok = True
        self.since = utcnow()
        self.reason = ""
        self.last_status: int | None = None
        self.counts: Counter[str] = Counter()

    async def __aenter__(self) -> Self:
        self._client = httpx.AsyncClient(
            timeout=self.cfg.timeout,
            verify=ssl_context(self.cfg),
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=16),
        )
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def _health(self, ok: bool, reason: str) -> None:
        if ok != self.ok:
            self.ok, self.since = ok, utcnow()
            log.log(
                logging.INFO if ok else logging.ERROR,
                "police sink %s is %s%s",
                self.name,
                "up" if ok else "DOWN",
                f": {reason}" if reason else "",
            )
        self.reason = reason

    async def post(self, body: bytes, content_type: str, key: str) -> Delivery:
        assert self._client is not None, "use the poster as an async context manager"
        headers = {
            "Content-Type": content_type,
            doc.IDEMPOTENCY_HEADER: key,
            "User-Agent": "campusguard-gateway",
            **doc.signed_headers(self.secret, int(time.time()), body),
        }
        started = time.monotonic()
        try:
            resp = await self._client.post(self.cfg.url, content=body, headers=headers)
        except httpx.TimeoutException:
            self.counts["timeouts"] += 1
            self._health(False, f"no answer in {self.cfg.timeout:g} s")
            return Delivery("failed", self.name, f"no answer in {self.cfg.timeout:g} s")
        except httpx.HTTPError as exc:
            self.counts["connection_errors"] += 1
            reason = f"connection failed: {type(exc).__name__}: {exc}"[:300]
            self._health(False, reason)
            return Delivery("failed", self.name, reason)
        rtt = (time.monotonic() - started) * 1000
        self.last_status = resp.status_code
        text = resp.text[:300].strip()
        answer = doc.classify(resp.status_code)
        if answer == "delivered":
            self.counts["delivered"] += 1
            self._health(True, "")
            return Delivery("delivered", self.name, f"HTTP {resp.status_code}", rtt)
        detail = f"HTTP {resp.status_code}" + (f": {text}" if text else "")
        if answer == "rejected":
            self.counts["rejected"] += 1
            self._health(True, "")  # it answered: the path works, the alarm was refused
            return Delivery("rejected", self.name, detail, rtt)
        self.counts["retried"] += 1
        self._health(False, detail)
        wait = doc.retry_after(resp.headers.get("Retry-After"))
        if wait is not None:
            wait = min(wait, self.cfg.max_retry_after)
        return Delivery("failed", self.name, detail, rtt, retry_after=wait)

    def health(self) -> dict[str, Any]:
        return {
            "url": self.cfg.url,
            "ok": self.ok,
            "since": self.since,
            "reason": self.reason,
            "last_status": self.last_status,
            **dict(self.counts),
        }


class WebhookInbox:
    """Inbound status updates: signature, replay window, counters."""

    def __init__(self, cfg: WebhookConfig) -> None:
        self.guard = doc.ReplayGuard(cfg.status_secret_bytes(), cfg.status_window)
        self.counts: Counter[str] = Counter()

    def check(self, timestamp: str | None, sig: str | None, body: bytes) -> doc.Verdict:
        verdict = self.guard.check(timestamp, sig, body, time.time())
        self.counts[verdict] += 1
        if verdict != "ok":
            log.warning("refused a police status update: %s", verdict.replace("_", " "))
        return verdict


class WebhookSink:
    name = "webhook"

    def __init__(
        self,
        cfg: WebhookConfig,
        campuses: dict[str, CampusAccount],
        poster: HttpPoster,
        gateway: str,
        link: LinkFor | None = None,
    ) -> None:
        self.cfg = cfg
        self.campuses = campuses
        self.poster = poster
        self.gateway = gateway
        self.link = link
        self.inbox = WebhookInbox(cfg)

    def accepts(self, event: Event) -> bool:
        """Whether it can carry the event at all (routing decides whether it should)."""
        return event.campus in self.campuses and (self.cfg.restores or not event.restore)

    def wants(self, event: Event) -> bool:
        return self.accepts(event) and event.kind in self.cfg.kinds

    def document(self, event: Event) -> dict[str, Any]:
        url = None if self.link is None or event.restore else self.link(event.id, event.ts)
        return doc.alarm_document(
            event, self.campuses[event.campus], gateway=self.gateway, verification_url=url
        )

    async def deliver(self, event: Event, seq: int | None) -> Delivery:
        body = doc.encode(self.document(event))
        return await self.poster.post(body, "application/json", event.id)

    def health(self) -> dict[str, Any]:
        return {**self.poster.health(), "inbound": dict(self.inbox.counts)}


async def apply_status(
    store: Store, inbox: WebhookInbox, timestamp: str | None, sig: str | None, body: bytes
) -> tuple[int, dict[str, Any]]:
    """A status update from the receiver: checked, then a step of the alarm's timeline (which
    goes down to the campus). Returns the HTTP status and the JSON answer. Idempotent: a state
    the alarm already went through is acknowledged and changes nothing."""
    if len(body) > MAX_STATUS_BYTES:
        inbox.counts["oversized"] += 1
        return 413, {"error": f"a status update is at most {MAX_STATUS_BYTES} bytes"}
    verdict = inbox.check(timestamp, sig, body)
    if verdict in ("unsigned", "bad_signature"):
        return 401, {"error": f"{verdict.replace('_', ' ')}: sign it with the shared secret"}
    if verdict != "ok":
        return 403, {
            "error": f"{verdict}: timestamps older than the window or reused signatures are refused"
        }
    try:
        update = doc.parse_status(body)
    except doc.StatusError as exc:
        inbox.counts["invalid"] += 1
        return 400, {"error": str(exc)}
    found = await store.alarm(update.alarm_id)
    if found is None:
        inbox.counts["unknown_alarm"] += 1
        return 404, {"error": f"no alarm {update.alarm_id}"}
    _, steps = found
    state = doc.STATUS_TO_ALARM_STATE[update.state]
    if any(s.state == state for s in steps):
        return 200, {"alarm_id": update.alarm_id, "state": state, "changed": False}
    await store.set_alarm_state(update.alarm_id, state, path="webhook", note=update.note)
    inbox.counts["applied"] += 1
    log.info("police status for alarm %s: %s %s", update.alarm_id, update.state, update.note)
    return 200, {"alarm_id": update.alarm_id, "state": state, "changed": True}
