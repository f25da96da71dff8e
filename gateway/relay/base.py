"""What every police sink promises the relay worker."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from contract.models import Event

Outcome = Literal["delivered", "rejected", "failed"]


@dataclass(frozen=True, slots=True)
class Delivery:
    outcome: Outcome
    path: str | None = None
    detail: str = ""
    rtt_ms: float | None = None
    retry_after: float | None = None
    """For ``failed``: the receiver asked us to wait this long (HTTP Retry-After)."""


class Sink(Protocol):
    """A way to the police. ``deliver`` must be idempotent for the same ``(event, seq)``."""

    name: str

    def wants(self, event: Event) -> bool:
        """Whether this sink relays this event at all (its kind is mapped and enabled)."""
        ...

    async def deliver(self, event: Event, seq: int | None) -> Delivery: ...
