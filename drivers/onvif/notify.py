"""Camera events pushed by the camera: WS-BaseNotification ``Subscribe`` and ``Notify`` POSTs.

The alternative to pull points (:mod:`.events`) for cameras that only push, or where long-polls
are unwelcome. Two pieces:

* :class:`NotifyListener`: one small HTTP server per edge, shared by every camera that pushes.
  Each subscription gets its own consumer URL, ``<advertised>/onvif/notify/<camera-id>/<token>``,
  with a fresh random token: a Notify for another camera or for a subscription we gave up is
  refused, and whoever can reach the listener cannot forge events (a panic button!) without
  having seen the URL. A body that is malformed (400), too large (413), or for an unknown
  camera or subscription (404) is answered with that HTTP error, counted by kind in
  :attr:`NotifyListener.rejected` and logged once per kind; the listener keeps serving.
* :class:`NotifySubscriber`: the same outward shape as
  :class:`~.events.PullPointSubscriber` (async context manager, callback or iterator of
  :class:`~.topics.CameraEvent`, :meth:`~.events.EventSubscriber.health`, the same states,
  back-off and Unsubscribe on shutdown). Notify bodies are parsed with the event WSDL's own
  types into the same zeep ``NotificationMessage`` objects PullMessages yields, then go through
  the shared :func:`~.events.message_fields` / :func:`~.topics.map_event` delivery.

Loss detection. A push subscription fails silently: when the camera reboots or drops it, the
camera simply stops sending, and silence looks the same as a quiet campus. The only signal is
the subscription manager, so a failed Renew is treated as loss: the subscription is dropped and
recreated with back-off, exactly like a lost pull point. A loss is therefore noticed at the next
renewal at the latest, which is why the push default term (:data:`NOTIFY_TERM`, two minutes,
renewed at 80 %) is much shorter than the pull-point one: at most about 100 s of deafness.
Pull points notice within one long-poll; prefer them where the camera can be polled.

The camera must be able to reach the advertised URL (routing, NAT, firewall): configure it as
the address the cameras see, not the bind address.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import secrets
import time
from types import TracebackType
from typing import Any, Literal, Protocol, Self

from aiohttp import web
from lxml import etree  # type: ignore[import-untyped]

from .camera import OnvifCamera
from .errors import CameraError
from .events import (
    EventCallback,
    EventSubscriber,
    SubscriberTiming,
    _subscription_address,
    _unsubscribe_at,
)

__all__ = [
    "DEFAULT_MAX_BODY",
    "NOTIFY_PATH",
    "NOTIFY_TERM",
    "NOTIFY_TIMING",
    "NotifyListener",
    "NotifySubscriber",
]

log = logging.getLogger(__name__)

NOTIFY_PATH = "/onvif/notify"
# See the module docstring: silence is only noticed when Renew fails.
NOTIFY_TERM = dt.timedelta(minutes=2)
NOTIFY_TIMING = SubscriberTiming(term=NOTIFY_TERM)
# A Notify carries a handful of messages of a few hundred bytes each; a camera that sends a
# megabyte is broken or is not a camera.
DEFAULT_MAX_BODY = 64 * 1024

_WSNT = "http://docs.oasis-open.org/wsn/b-2"
_ENVELOPES = (
    "http://www.w3.org/2003/05/soap-envelope",
    "http://schemas.xmlsoap.org/soap/envelope/",
)
# Where the library keeps the subscription manager address of a push subscription.
_CONSUMER_XADDR = "http://www.onvif.org/ver10/events/wsdl/NotificationConsumer"

RejectKind = Literal["malformed", "too_large", "unknown_camera", "unknown_subscription", "error"]
_STATUS: dict[RejectKind, int] = {
    "malformed": 400,
    "too_large": 413,
    "unknown_camera": 404,
    "unknown_subscription": 404,
    "error": 500,
}


def _parser() -> Any:
    # No DTDs, no entities, no network: the body comes from the network.
    return etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False)


class NotifyTarget(Protocol):
    """What the listener hands a Notify to (a :class:`NotifySubscriber`)."""

    async def notify(self, token: str, element: Any) -> Literal["ok"] | RejectKind:
        """Deliver a ``wsnt:Notify`` element that came in on ``token``'s URL."""
        ...


class NotifyListener:
    """The HTTP listener for Notify POSTs, shared by all cameras of an edge.

    Args:
        host: Address to bind.
        port: TCP port; 0 picks a free one (read it back from :attr:`port`).
        advertised_url: Base URL the cameras POST to (``http://10.0.0.5:8089``); default
            ``http://<host>:<port>``, which only works when ``host`` is a concrete address.
        max_body: Largest Notify body accepted, bytes.

    Attributes:
        accepted: Notify POSTs delivered.
        rejected: Refused POSTs by kind (``malformed``, ``too_large``, ``unknown_camera``,
            ``unknown_subscription``, ``error``).
    """

    def __init__(
        self,
        host: str = "0.0.0.0",
        port: int = 8089,
        advertised_url: str | None = None,
        *,
        max_body: int = DEFAULT_MAX_BODY,
    ) -> None:
        """Configure; nothing listens until entered."""
        self.host = host
        self.port = port
        self.max_body = max_body
        self._advertised = advertised_url.rstrip("/") if advertised_url else None
        self._targets: dict[str, NotifyTarget] = {}
        self._runner: web.AppRunner | None = None
        self.accepted = 0
        self.rejected: dict[str, int] = {}

    @property
    def advertised_url(self) -> str:
        """The base URL cameras are given."""
        if self._advertised:
            return self._advertised
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def consumer_url(self, camera_id: str, token: str) -> str:
        """The ConsumerReference for one subscription of one camera."""
        return f"{self.advertised_url}{NOTIFY_PATH}/{camera_id}/{token}"

    def register(self, camera_id: str, target: NotifyTarget) -> None:
        """Route ``/onvif/notify/<camera_id>/...`` to ``target``.

        Raises:
            ValueError: Another target already has that camera id.
        """
        if self._targets.get(camera_id, target) is not target:
            raise ValueError(f"camera {camera_id!r} already has a Notify subscriber")
        self._targets[camera_id] = target

    def unregister(self, camera_id: str, target: NotifyTarget) -> None:
        """Stop routing to ``target`` (if it is still the one registered)."""
        if self._targets.get(camera_id) is target:
            del self._targets[camera_id]

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Self:
        """Bind and serve; fills in :attr:`port` when it was 0."""
        app = web.Application(client_max_size=self.max_body)
        app.router.add_post(NOTIFY_PATH + "/{camera}/{token}", self._handle)
        app.router.add_post(NOTIFY_PATH + "/{camera}", self._handle)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.host, self.port, reuse_address=True)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        for address in runner.addresses:
            self.port = int(address[1])
            break
        log.info(
            "Notify listener on %s:%d, advertised as %s", self.host, self.port, self.advertised_url
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop serving."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    # ------------------------------------------------------------------ requests

    def _reject(self, kind: RejectKind, detail: str) -> web.Response:
        count = self.rejected.get(kind, 0) + 1
        self.rejected[kind] = count
        level = logging.WARNING if count == 1 else logging.DEBUG
        log.log(level, "Notify refused (%s, HTTP %d): %s", kind, _STATUS[kind], detail)
        return web.Response(status=_STATUS[kind], text=kind)

    async def _handle(self, request: web.Request) -> web.Response:
        camera_id = request.match_info["camera"]
        token = request.match_info.get("token", "")
        target = self._targets.get(camera_id)
        if target is None:
            return self._reject("unknown_camera", f"no camera {camera_id!r}")
        if request.content_length is not None and request.content_length > self.max_body:
            return self._reject("too_large", f"{request.content_length} bytes from {camera_id}")
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return self._reject("too_large", f"over {self.max_body} bytes from {camera_id}")
        try:
            root = etree.fromstring(body, parser=_parser())
        except (etree.XMLSyntaxError, ValueError) as exc:
            return self._reject("malformed", f"from {camera_id}: {exc}")
        element = None
        for env in _ENVELOPES:
            element = root.find(f"{{{env}}}Body/{{{_WSNT}}}Notify")
            if element is not None:
                break
        if element is None:
            return self._reject("malformed", f"from {camera_id}: not a SOAP wsnt:Notify")
        try:
            outcome = await target.notify(token, element)
        except Exception:  # the listener's boundary: one bad request must not stop it
            log.exception("Notify from %s: unexpected error", camera_id)
            return self._reject("error", f"from {camera_id}: internal error")
        if outcome != "ok":
            return self._reject(outcome, f"from {camera_id}")
        self.accepted += 1
        return web.Response(status=200)


class NotifySubscriber(EventSubscriber):
    """Events from one camera over a push subscription (Notify POSTs to ``listener``).

    See :class:`~.events.EventSubscriber` for the interface and the module docstring for how
    loss is detected.

    Args:
        camera: A connected :class:`~.camera.OnvifCamera`.
        listener: The edge's running :class:`NotifyListener`.
        camera_id: Our id of the camera: its path on the listener.
        on_event: Called for each mapped event; exceptions in it are logged, not fatal.
        timing: Timing constants (default :data:`NOTIFY_TIMING`; the pull-poll ones unused).

    Attributes:
        notifies: Notify POSTs accepted for this camera.
    """

    _task_prefix = "onvif-notify"

    def __init__(
        self,
        camera: OnvifCamera,
        listener: NotifyListener,
        camera_id: str,
        on_event: EventCallback | None = None,
        *,
        timing: SubscriberTiming | None = None,
    ) -> None:
        """Configure; nothing happens until entered."""
        super().__init__(camera, on_event, timing=timing or NOTIFY_TIMING)
        self.listener = listener
        self.camera_id = camera_id
        self.notifies = 0
        self._token: str | None = None
        self._subscription: Any = None
        self._address: str | None = None
        self._notify_element: Any = None
        self._schema: Any = None

    async def __aenter__(self) -> Self:
        """Register with the listener, then subscribe in the background."""
        self.listener.register(self.camera_id, self)
        try:
            return await super().__aenter__()
        except BaseException:
            self.listener.unregister(self.camera_id, self)
            raise

    async def shutdown(self) -> None:
        """Stop, Unsubscribe (bounded), leave the listener; idempotent."""
        try:
            await super().shutdown()
        finally:
            self.listener.unregister(self.camera_id, self)

    def _alive(self) -> bool:
        return self._subscription is not None

    # ------------------------------------------------------------------ subscription

    async def _subscribe(self) -> None:
        lib = self.camera.lib
        term = self.timing.term
        service = await self.camera.call("Subscribe", lib.create_notification_service)
        client = service.zeep_client
        self._notify_element = client.get_element(f"{{{_WSNT}}}Notify")
        self._schema = client.wsdl.types
        # Accept Notify on the new URL before asking: cameras may push before they answer.
        token = secrets.token_urlsafe(16)
        self._token = token
        consumer = self.listener.consumer_url(self.camera_id, token)

        async def create() -> Any:
            return await service.Subscribe(
                {
                    "InitialTerminationTime": lib.get_next_termination_time(term),
                    "ConsumerReference": {"Address": consumer},
                }
            )

        result = await self._create_shielded("Subscribe", create)
        self._address = _subscription_address(self.camera.name, result)

        async def manager() -> Any:
            lib.xaddrs[_CONSUMER_XADDR] = lib.rewrite_url(self._address)
            return await lib.create_subscription_service("NotificationConsumer")

        self._subscription = await self.camera.call("subscribe", manager)
        self._created += 1
        self._schedule_renewal(result)
        self._succeeded()

    async def _renew(self) -> None:
        lib = self.camera.lib
        subscription = self._subscription

        async def renew() -> Any:
            return await subscription.Renew(lib.get_next_termination_time(self.timing.term))

        self._schedule_renewal(await self.camera.call("Renew", renew))

    async def _until_lost(self) -> None:
        """Renew in time; a failed Renew is the loss (the camera went quiet or rebooted)."""
        while True:
            delay = self._renew_at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await self._renew()
            self._succeeded()

    async def _unsubscribe(self) -> None:
        answer = await self._settle_pending()
        if answer is not None:
            with contextlib.suppress(CameraError):
                self._address = _subscription_address(self.camera.name, answer)
        self._token = None  # from now on a Notify on the old URL is refused
        subscription, self._subscription = self._subscription, None
        address, self._address = self._address, None
        await _unsubscribe_at(
            self.camera,
            subscription,
            address,
            "NotificationConsumer",
            _CONSUMER_XADDR,
            self.timing.unsubscribe_timeout_s,
        )

    # ------------------------------------------------------------------ Notify

    async def notify(self, token: str, element: Any) -> Literal["ok"] | RejectKind:
        """A ``wsnt:Notify`` element from the listener: deliver its messages.

        Returns:
            ``"ok"``, ``"unknown_subscription"`` (a URL we no longer listen on), or
            ``"malformed"`` (not a Notify the event WSDL can read).
        """
        current = self._token
        if current is None or not secrets.compare_digest(token.encode(), current.encode()):
            return "unknown_subscription"
        try:
            parsed = self._notify_element.parse(element, self._schema)
            messages = list(getattr(parsed, "NotificationMessage", None) or ())
        except Exception as exc:  # zeep raises many kinds on a hostile body
            log.debug("Camera %s: Notify not readable: %s", self.camera.name, exc)
            return "malformed"
        self.notifies += 1
        self._last_pull_at = time.time()
        for message in messages:
            await self._deliver(message)
        return "ok"
