"""Who is at the console: local accounts (argon2id), server-side sessions with an idle
timeout, a rate limit on wrong passwords, and the cross-site checks for every POST."""

from __future__ import annotations

import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from contract.config import ConsoleUser

COOKIE = "cg_console"
CSRF_HEADER = "x-csrf-token"

MAX_FAILURES = 5
FAILURE_WINDOW = 300.0
"""Five wrong passwords for one user name in five minutes and that name's next try waits until
the oldest of them is five minutes old: slow enough to stop guessing, short enough that a guard
who mistypes under stress is back in within minutes."""
MAX_FAILURES_PER_ADDRESS = 20
"""Per address the bound is higher: the booth PC is one address for every guard, and one
guard's typos must not lock the colleague out; guessing across many names still stops."""

_HASHER = PasswordHasher()  # argon2id with the library's current recommended parameters

# Verified against when the user name is unknown, so a wrong name costs the same time as a
# wrong password and the answer time does not tell which names exist.
_DUMMY_HASH = _HASHER.hash(secrets.token_hex(16))


def hash_password(password: str) -> str:
    """An argon2id hash for ``console.users[].password_hash``."""
    return _HASHER.hash(password)


def verify_password(stored_hash: str, password: str) -> bool:
    try:
        return _HASHER.verify(stored_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


@dataclass
class Session:
    token: str
    user: str
    name: str
    role: str
    csrf: str
    last_seen: float


@dataclass
class RateLimiter:
    """Failed logins per key (user name, address) on the steady clock."""

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


class Accounts:
    """The configured users and the live sessions (in memory: a restarted edge asks again)."""

    def __init__(
        self,
        users: list[ConsoleUser],
        session_minutes: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._users = {u.user: u for u in users}
        self._idle = session_minutes * 60.0
        self._clock = clock
        self._sessions: dict[str, Session] = {}
        self.limiter = RateLimiter(clock)

    def login(self, user: str, password: str) -> Session | None:
        account = self._users.get(user)
        ok = verify_password(account.password_hash if account else _DUMMY_HASH, password)
        if account is None or not ok:
            return None
        session = Session(
            token=secrets.token_urlsafe(32),
            user=account.user,
            name=account.name or account.user,
            role=account.role,
            csrf=secrets.token_urlsafe(32),
            last_seen=self._clock(),
        )
        self._sessions[session.token] = session
        return session

    def session(self, token: str | None) -> Session | None:
        """The session of this cookie if it is still alive; using it keeps it alive."""
        if not token:
            return None
        s = self._sessions.get(token)
        if s is None:
            return None
        now = self._clock()
        if now - s.last_seen > self._idle:
            del self._sessions[token]
            return None
        s.last_seen = now
        return s

    def logout(self, token: str | None) -> None:
        if token:
            self._sessions.pop(token, None)

    def expire_all(self) -> None:
        """Treat every session as idle past its limit (tests, and a supervisor's panic button)."""
        for s in self._sessions.values():
            s.last_seen = -1e18


def same_origin(origin: str | None, referer: str | None, host: str | None) -> bool:
    """A POST must come from a page of this console: its Origin (or, when a browser sends
    none, its Referer) names the host the request was sent to."""
    source = origin if origin and origin != "null" else referer
    if not source or not host:
        return False
    return urlsplit(source).netloc == host


def tokens_match(expected: str, given: str | None) -> bool:
    return given is not None and secrets.compare_digest(expected, given)
