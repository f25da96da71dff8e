"""Builds the police sinks beyond DC-09 from the gateway config (webhook, CAP, GB/T 28181)."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

from contract.config import CampusAccount, GatewayConfig
from contract.models import Event
from gateway.relay.base import Sink
from gateway.relay.cap import CapSink, FindOriginal
from gateway.relay.gb28181 import Gb28181Client, Gb28181Sink
from gateway.relay.routing import RoutedSink
from gateway.relay.webhook import HttpPoster, LinkFor, WebhookSink
from gateway.store.repo import Store, aware


async def extra_sinks(
    cfg: GatewayConfig,
    campuses: dict[str, CampusAccount],
    stack: contextlib.AsyncExitStack,
    link: LinkFor | None = None,
    store: Store | None = None,
) -> list[Sink]:
    """The configured webhook / CAP / GB/T 28181 sinks, their connections entered on ``stack``."""
    out: list[Sink] = []
    if cfg.webhook is not None:
        poster = await stack.enter_async_context(HttpPoster("webhook", cfg.webhook))
        out.append(WebhookSink(cfg.webhook, campuses, poster, cfg.gateway.id, link))
    if cfg.cap is not None:
        poster = await stack.enter_async_context(HttpPoster("cap", cfg.cap))
        find = original_finder(store) if store is not None else None
        find_event = store.event if store is not None else None
        out.append(CapSink(cfg.cap, campuses, poster, find, link, find_event))
    if cfg.gb28181 is not None:
        sip = await stack.enter_async_context(Gb28181Client(cfg.gb28181))
        out.append(Gb28181Sink(cfg.gb28181, campuses, sip))
    return out


def original_finder(store: Store) -> FindOriginal:
    """A restore's original alarm: the latest alarm of the same campus, device, point and kind
    that is not later than the restore."""

    async def find(restore: Event) -> Event | None:
        for row in await store.alarms(restore.campus, limit=500):
            ts = aware(row.edge_ts)
            if (
                (row.kind, row.device, row.point) == (restore.kind, restore.device, restore.point)
                and ts is not None
                and ts <= restore.ts
                and row.id != restore.id
            ):
                return Event(
                    id=row.id,
                    campus=row.campus,
                    edge="gateway",
                    seq=0,
                    ts=ts,
                    kind=restore.kind,
                    severity=restore.severity,
                    device=row.device,
                    point=row.point,
                    drill=row.drill,
                )
        return None

    return find


def routed(cfg: GatewayConfig, sinks: Sequence[Sink]) -> list[Sink]:
    """Every sink seen through the ``routing:`` rules."""
    return [RoutedSink(s, cfg.routing) for s in sinks]
