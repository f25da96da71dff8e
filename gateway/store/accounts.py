"""Accounts in the gateway's database: users, console sessions, API tokens, the audit log.

Each public coroutine is one transaction. Secrets never reach the database: passwords as
argon2id hashes (made by the caller), session cookies and API tokens as SHA-256 digests.
"""

from __future__ import annotations

import csv
import hashlib
import io
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from gateway.store.models import ApiTokenRow, AuditRow, SessionRow, UserRow


def _now() -> datetime:
    return datetime.now(UTC)


def _aware(ts: datetime | None) -> datetime | None:
    if ts is None:
        return None
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


def digest(secret: str) -> str:
    """What is stored of a cookie or token: its SHA-256 (they are long random strings, so a
    fast hash is enough; only passwords need argon2)."""
    return hashlib.sha256(secret.encode()).hexdigest()


LOCK_AFTER = 5
"""Wrong passwords in a row before an account is locked for ``LOCK_FOR``."""
LOCK_FOR = timedelta(minutes=15)


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a session or token belongs to, as of this request."""

    user: str
    display: str
    role: str
    campuses: tuple[str, ...]
    csrf: str | None  # sessions only: the token every state-changing request must carry
    via: str  # "session" or "token:<id>"


@dataclass(frozen=True, slots=True)
class LoginResult:
    ok: bool
    user: UserRow | None = None
    locked_until: datetime | None = None
    reason: str = ""  # unknown, password, disabled, locked


class AccountStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self.session = async_sessionmaker(engine, expire_on_commit=False)

    # --- users ------------------------------------------------------------------------------

    async def user(self, name: str) -> UserRow | None:
        async with self.session() as s:
            return await s.get(UserRow, name)

    async def users(self) -> list[UserRow]:
        async with self.session() as s:
            return list((await s.execute(select(UserRow).order_by(UserRow.name))).scalars())

    async def count_users(self) -> int:
        async with self.session() as s:
            return int((await s.execute(select(func.count()).select_from(UserRow))).scalar_one())

    async def create_user(
        self, name: str, role: str, campuses: list[str], password_hash: str, display: str = ""
    ) -> UserRow | None:
        """The new user, or None when the name is taken."""
        ts = _now()
        async with self.session() as s, s.begin():
            if await s.get(UserRow, name) is not None:
                return None
            row = UserRow(
                name=name,
                display=display,
                role=role,
                campuses=list(campuses),
                password_hash=password_hash,
                disabled=False,
                failed_logins=0,
                created_at=ts,
                updated_at=ts,
            )
            s.add(row)
            return row

    async def update_user(self, name: str, **changes: Any) -> UserRow | None:
        """Change role, campuses, display, disabled or password_hash. A change of password,
        role, campuses or a disabling ends the user's sessions at once (and a disabling or a
        password change also revokes their tokens' use until re-enabled: tokens are checked
        against the user on every request)."""
        allowed = {"role", "campuses", "display", "disabled", "password_hash"}
        if not set(changes) <= allowed:
            raise ValueError(f"cannot change {sorted(set(changes) - allowed)}")
        ts = _now()
        async with self.session() as s, s.begin():
            row = await s.get(UserRow, name)
            if row is None:
                return None
            for key, value in changes.items():
                setattr(row, key, value)
            row.updated_at = ts
            if "password_hash" in changes:
                row.failed_logins = 0
                row.locked_until = None
            if changes.keys() & {"password_hash", "role", "campuses", "disabled"}:
                await s.execute(
                    update(SessionRow)
                    .where(SessionRow.user == name, SessionRow.revoked_at.is_(None))
                    .values(revoked_at=ts)
                )
            return row

    async def set_hash(self, name: str, password_hash: str) -> None:
        """Re-hash after a login with outdated argon2 parameters (sessions stay)."""
        async with self.session() as s, s.begin():
            await s.execute(
                update(UserRow).where(UserRow.name == name).values(password_hash=password_hash)
            )

    # --- logins -----------------------------------------------------------------------------

    async def login_attempt(self, name: str, password_ok: bool | None) -> LoginResult:
        """Record one try. ``password_ok`` None = the user does not exist. After ``LOCK_AFTER``
        wrong passwords in a row the account is locked for ``LOCK_FOR`` (in the database, so
        every gateway refuses it); while locked even the right password is refused."""
        ts = _now()
        async with self.session() as s, s.begin():
            row = await s.get(UserRow, name, with_for_update=True)
            if row is None or password_ok is None:
                return LoginResult(False, reason="unknown")
            locked = _aware(row.locked_until)
            if locked is not None and locked > ts:
                return LoginResult(False, row, locked, "locked")
            if not password_ok:
                row.failed_logins += 1
                if row.failed_logins >= LOCK_AFTER:
                    row.locked_until = ts + LOCK_FOR
                    row.failed_logins = 0
                    return LoginResult(False, row, row.locked_until, "locked")
                return LoginResult(False, row, reason="password")
            if row.disabled:
                return LoginResult(False, row, reason="disabled")
            row.failed_logins = 0
            row.locked_until = None
            row.last_login_at = ts
            return LoginResult(True, row)

    async def unlock(self, name: str) -> bool:
        async with self.session() as s, s.begin():
            result = await s.execute(
                update(UserRow)
                .where(UserRow.name == name)
                .values(locked_until=None, failed_logins=0, updated_at=_now())
            )
            return bool(result.rowcount)  # type: ignore[attr-defined]

    # --- sessions ---------------------------------------------------------------------------

    async def open_session(
        self, user: str, token: str, csrf: str, lifetime: timedelta, address: str
    ) -> None:
        ts = _now()
        async with self.session() as s, s.begin():
            s.add(
                SessionRow(
                    token_hash=digest(token),
                    user=user,
                    csrf=csrf,
                    created_at=ts,
                    last_seen=ts,
                    expires_at=ts + lifetime,
                    address=address[:64],
                )
            )
            # Sessions that ended long ago are of no use to anyone.
            await s.execute(
                delete(SessionRow).where(SessionRow.expires_at < ts - timedelta(days=7))
            )

    async def by_session(self, token: str, idle: timedelta) -> Identity | None:
        """The identity of a live session (not revoked, not idle past ``idle``, not past its
        absolute lifetime, user enabled); a use refreshes ``last_seen`` at most once a minute."""
        ts = _now()
        key = digest(token)
        async with self.session() as s:
            found = (
                await s.execute(
                    select(SessionRow, UserRow)
                    .join(UserRow, UserRow.name == SessionRow.user)
                    .where(SessionRow.token_hash == key)
                )
            ).first()
            if found is None:
                return None
            sess, user = found
            last = _aware(sess.last_seen)
            if (
                sess.revoked_at is not None
                or user.disabled
                or (_aware(sess.expires_at) or ts) <= ts
                or last is None
                or ts - last > idle
            ):
                return None
            if ts - last > timedelta(seconds=60):
                await s.execute(
                    update(SessionRow).where(SessionRow.token_hash == key).values(last_seen=ts)
                )
                await s.commit()
            return Identity(
                user.name, user.display, user.role, tuple(user.campuses), sess.csrf, "session"
            )

    async def end_session(self, token: str) -> str | None:
        """Revoke this session; its user, or None if there was none."""
        async with self.session() as s, s.begin():
            row = await s.get(SessionRow, digest(token))
            if row is None or row.revoked_at is not None:
                return None
            row.revoked_at = _now()
            return row.user

    async def end_sessions(self, user: str) -> int:
        async with self.session() as s, s.begin():
            result = await s.execute(
                update(SessionRow)
                .where(SessionRow.user == user, SessionRow.revoked_at.is_(None))
                .values(revoked_at=_now())
            )
            return int(result.rowcount)  # type: ignore[attr-defined]

    # --- API tokens -------------------------------------------------------------------------

    async def add_token(
        self, token_id: str, user: str, secret: str, label: str, expires_at: datetime | None
    ) -> ApiTokenRow:
        row = ApiTokenRow(
            id=token_id,
            token_hash=digest(secret),
            user=user,
            label=label,
            created_at=_now(),
            expires_at=expires_at,
        )
        async with self.session() as s, s.begin():
            s.add(row)
        return row

    async def tokens(self, user: str | None = None) -> list[ApiTokenRow]:
        async with self.session() as s:
            q = select(ApiTokenRow).order_by(ApiTokenRow.created_at)
            if user is not None:
                q = q.where(ApiTokenRow.user == user)
            return list((await s.execute(q)).scalars())

    async def revoke_token(self, token_id: str) -> ApiTokenRow | None:
        async with self.session() as s, s.begin():
            row = await s.get(ApiTokenRow, token_id)
            if row is None:
                return None
            if row.revoked_at is None:
                row.revoked_at = _now()
            return row

    async def by_token(self, secret: str) -> Identity | None:
        """The identity a bearer token acts as (revocation and disabling take effect at the
        next request); a use is recorded at most once a minute."""
        ts = _now()
        async with self.session() as s:
            found = (
                await s.execute(
                    select(ApiTokenRow, UserRow)
                    .join(UserRow, UserRow.name == ApiTokenRow.user)
                    .where(ApiTokenRow.token_hash == digest(secret))
                )
            ).first()
            if found is None:
                return None
            tok, user = found
            expires = _aware(tok.expires_at)
            if tok.revoked_at is not None or user.disabled or (expires and expires <= ts):
                return None
            used = _aware(tok.last_used_at)
            if used is None or ts - used > timedelta(seconds=60):
                await s.execute(
                    update(ApiTokenRow).where(ApiTokenRow.id == tok.id).values(last_used_at=ts)
                )
                await s.commit()
            return Identity(
                user.name, user.display, user.role, tuple(user.campuses), None, f"token:{tok.id}"
            )

    # --- audit ------------------------------------------------------------------------------

    async def audit(
        self,
        user: str,
        role: str,
        action: str,
        outcome: str,
        *,
        campus: str | None = None,
        target: str = "",
        address: str = "",
        detail: str = "",
    ) -> None:
        async with self.session() as s, s.begin():
            s.add(
                AuditRow(
                    at=_now(),
                    user=user[:64],
                    role=role[:32],
                    action=action[:64],
                    outcome=outcome[:16],
                    campus=campus,
                    target=target[:200],
                    address=address[:64],
                    detail=detail[:2000],
                )
            )

    async def audit_log(
        self,
        *,
        user: str | None = None,
        action: str | None = None,
        outcome: str | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
        search: str | None = None,
        before_id: int | None = None,
        limit: int = 100,
    ) -> list[AuditRow]:
        """Newest first; ``before_id`` pages backwards. Filters are bound parameters."""
        async with self.session() as s:
            q = select(AuditRow).order_by(AuditRow.id.desc()).limit(limit)
            if user:
                q = q.where(AuditRow.user == user)
            if action:
                q = q.where(AuditRow.action == action)
            if outcome:
                q = q.where(AuditRow.outcome == outcome)
            if start is not None:
                q = q.where(AuditRow.at >= start)
            if end is not None:
                q = q.where(AuditRow.at < end)
            if before_id is not None:
                q = q.where(AuditRow.id < before_id)
            if search:
                like = f"%{search.replace('%', '').replace('_', '')}%"
                q = q.where(or_(AuditRow.target.like(like), AuditRow.detail.like(like)))
            return list((await s.execute(q)).scalars())


AUDIT_COLUMNS = (
    "id",
    "at",
    "user",
    "role",
    "action",
    "outcome",
    "campus",
    "target",
    "address",
    "detail",
)


def audit_csv(rows: list[AuditRow]) -> str:
    """The audit log as CSV (UTF-8 with a BOM so spreadsheet programs show Chinese right)."""
    out = io.StringIO()
    out.write("\ufeff")
    w = csv.writer(out)
    w.writerow(AUDIT_COLUMNS)
    for r in rows:
        at = _aware(r.at)
        w.writerow(
            [
                r.id,
                at.isoformat() if at else "",
                r.user,
                r.role,
                r.action,
                r.outcome,
                r.campus or "",
                _cell(r.target),
                r.address,
                _cell(r.detail),
            ]
        )
    return out.getvalue()


def _cell(text: str) -> str:
    """A cell a spreadsheet will not run as a formula (CSV injection)."""
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text
