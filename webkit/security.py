"""Failed-login limits and the cross-site checks every state-changing request passes."""

from __future__ import annotations

import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

MAX_FAILURES = 5
FAILURE_WINDOW = 300.0
"""Five wrong passwords for one user name in five minutes and that name's next try waits until
the oldest of them is five minutes old: slow enough to stop guessing, short enough that a guard
who mistypes under stress is back in within minutes."""
MAX_FAILURES_PER_ADDRESS = 20
"""Per address the bound is higher: a booth PC or a police station's NAT is one address for
many people, and one person's typos must not lock out a colleague; guessing across many names
still stops."""


@dataclass
class RateLimiter:
    """Failed logins per key (``user:<name>``, ``addr:<ip>``) on the steady clock."""

    clock: Callable[[], float] = time.monotonic
    _fails: dict[str, deque[float]] = field(default_factory=dict)

    def _recent(self, key: str) -> deque[float]:
        q = self._fails.setdefault(key, deque())
        now = self.clock()
        while q and now - q[0] > FAILURE_WINDOW:
            q.popleft()
        return q

    def blocked(self, *keys: str) -> float:
        """Seconds until a try is allowed again (0: allowed now)."""
        wait = 0.0
        for key in keys:
            q = self._recent(key)
            if not q:
                del self._fails[key]  # names tried once long ago do not pile up
                continue
            limit = MAX_FAILURES_PER_ADDRESS if key.startswith("addr:") else MAX_FAILURES
            if len(q) >= limit:
                wait = max(wait, FAILURE_WINDOW - (self.clock() - q[0]))
        return wait

    def fail(self, *keys: str) -> None:
        for key in keys:
            self._recent(key).append(self.clock())

    def clear(self, key: str) -> None:
        self._fails.pop(key, None)


def same_origin(origin: str | None, referer: str | None, host: str | None) -> bool:
    """A POST must come from a page of this site: its Origin (or, when a browser sends none,
    its Referer) names the host the request was sent to."""
    source = origin if origin and origin != "null" else referer
    if not source or not host:
        return False
    return urlsplit(source).netloc == host


def tokens_match(expected: str, given: str | None) -> bool:
    return given is not None and secrets.compare_digest(expected, given)
