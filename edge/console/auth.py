"""Who is at the console: local accounts (argon2id), server-side sessions with an idle
timeout, a rate limit on wrong passwords, and the cross-site checks for every POST."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from contract.config import ConsoleUser
from webkit.passwords import hash_password, verify_password
from webkit.security import RateLimiter, same_origin, tokens_match

__all__ = ["Accounts", "RateLimiter", "Session", "hash_password", "same_origin", "tokens_match"]

COOKIE = "cg_console"
CSRF_HEADER = "x-csrf-token"


@dataclass
class Session:
    token: str
    user: str
    name: str
    role: str
    csrf: str
    last_seen: float


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
        ok = verify_password(account.password_hash if account else None, password)
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
