"""The live feed: one queue per open browser tab.

A message is rendered once per language in use (the pages are server-rendered HTML fragments,
so escaping is Jinja's, never the script's) and handed to every tab as one SSE frame.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

log = logging.getLogger(__name__)

QUEUE_LIMIT = 500
"""Frames held for a slow tab; past this the tab is dropped and its page reloads (it gets the
whole state again), rather than the server holding memory for a dead browser."""

Frame = str | None  # None: the stream ends (shutdown, or the tab fell behind)
T = TypeVar("T")


@dataclass(eq=False)
class Subscriber:
    language: str
    scope: frozenset[str] | None = None
    """What this tab may see (e.g. campus ids); None = everything. Checked by ``publish``."""
    queue: asyncio.Queue[Frame] = field(default_factory=lambda: asyncio.Queue(QUEUE_LIMIT + 1))
    dropped: bool = False


class Hub(Generic[T]):
    """``translator(language)`` makes what a render function is given."""

    def __init__(self, translator: Callable[[str], T]) -> None:
        self._translator = translator
        self._subs: set[Subscriber] = set()
        self.closed = False

    def subscribe(self, language: str, scope: frozenset[str] | None = None) -> Subscriber:
        sub = Subscriber(language, scope)
        self._subs.add(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        self._subs.discard(sub)

    @property
    def count(self) -> int:
        return len(self._subs)

    def publish(self, render: Callable[[T], dict[str, Any]], scope: str | None = None) -> None:
        """Send to every tab whose scope includes ``scope`` (None: to every tab)."""
        rendered: dict[str, str] = {}
        for sub in list(self._subs):
            if scope is not None and sub.scope is not None and scope not in sub.scope:
                continue
            frame = rendered.get(sub.language)
            if frame is None:
                frame = f"data: {json.dumps(render(self._translator(sub.language)))}\n\n"
                rendered[sub.language] = frame
            if sub.queue.qsize() >= QUEUE_LIMIT:
                log.warning("a console tab fell behind; it will reload")
                sub.dropped = True
                self._subs.discard(sub)
                sub.queue.put_nowait(None)
                continue
            sub.queue.put_nowait(frame)

    def close(self) -> None:
        self.closed = True
        for sub in list(self._subs):
            sub.queue.put_nowait(None)
        self._subs.clear()
