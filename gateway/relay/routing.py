"""Which events go to which police sink: the ``routing:`` rules of the gateway config.

Without rules each sink takes what it always took (DC-09: the kinds its code map relays; the
others: their ``kinds``), and so does a sink that no rule names. A sink named by a rule takes
exactly what its rules give it: an event whose kind and campus a rule for that sink matches,
if the sink can carry it at all (DC-09 needs a code for it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from contract.config import RoutingRule
from contract.models import Event
from gateway.relay.base import Delivery, Sink


def rule_matches(rule: RoutingRule, sink: str, event: Event) -> bool:
    return (
        sink in rule.sinks
        and (rule.kinds == "*" or event.kind in rule.kinds)
        and (rule.campuses == "*" or event.campus in rule.campuses)
    )


def routed(rules: Sequence[RoutingRule], sink: str, event: Event) -> bool:
    """Whether the rules send ``event`` to ``sink`` (only meaningful when there are rules)."""
    return any(rule_matches(r, sink, event) for r in rules)


class RoutedSink:
    """A sink seen through the routing rules; everything else is the inner sink's."""

    def __init__(self, inner: Sink, rules: Sequence[RoutingRule]) -> None:
        self.inner = inner
        self.name = inner.name
        self.rules = [r for r in rules if inner.name in r.sinks]

    def wants(self, event: Event) -> bool:
        if not self.rules:
            return self.inner.wants(event)
        accepts = getattr(self.inner, "accepts", None)
        can = accepts(event) if accepts is not None else self.inner.wants(event)
        return bool(can) and routed(self.rules, self.name, event)

    async def deliver(self, event: Event, seq: int | None) -> Delivery:
        return await self.inner.deliver(event, seq)

    def health(self) -> dict[str, object] | None:
        fn = getattr(self.inner, "health", None)
        return None if fn is None else dict(fn())

    def __getattr__(self, attr: str) -> Any:
        # Only called for what RoutedSink itself lacks: the inner sink's extras (inbox, ...).
        return getattr(self.inner, attr)
