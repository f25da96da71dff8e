"""Logging in and out, one's own account and tokens, and (for admins) users and the audit log."""

from __future__ import annotations

import asyncio
import secrets
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from contract.config import Role
from contract.models import ID_PATTERN, new_id
from gateway.api.auth import COOKIE, Principal, authenticator, client_address, require
from gateway.store.accounts import audit_csv
from gateway.store.models import ApiTokenRow, AuditRow, UserRow
from webkit.passwords import hash_password, needs_rehash, verify_password
from webkit.security import same_origin

if TYPE_CHECKING:
    from gateway.service import GatewayRuntime

USER_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$"
UserName = Annotated[str, Field(pattern=USER_PATTERN)]
UserPath = Annotated[str, Path(pattern=USER_PATTERN)]
_Text = r"^[^\x00]*$"  # no NUL: PostgreSQL refuses it in text


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LoginIn(_In):
    user: UserName
    password: Annotated[str, Field(min_length=1, max_length=256)]


class LoginOut(BaseModel):
    user: str
    display: str
    role: str
    campuses: list[str]
    csrf: str = Field(description="send as X-CSRF-Token with every POST/PATCH/DELETE")


class MeOut(BaseModel):
    user: str
    display: str
    role: str
    campuses: list[str]
    via: str
    csrf: str | None
    permissions: list[str]


class PasswordIn(_In):
    old: Annotated[str, Field(min_length=1, max_length=256)]
    new: Annotated[str, Field(min_length=1, max_length=256)]


class UserIn(_In):
    name: UserName
    display: Annotated[str, Field(max_length=128)] = ""
    role: Role
    campuses: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(min_length=1)
    password: Annotated[str, Field(min_length=1, max_length=256)]


class UserPatch(_In):
    display: Annotated[str, Field(max_length=128)] | None = None
    role: Role | None = None
    campuses: list[Annotated[str, Field(min_length=1, max_length=64)]] | None = Field(
        None, min_length=1
    )
    disabled: bool | None = None
    password: Annotated[str, Field(min_length=1, max_length=256)] | None = None


class UserOut(BaseModel):
    name: str
    display: str
    role: str
    campuses: list[str]
    disabled: bool
    locked_until: datetime | None
    created_at: datetime
    last_login_at: datetime | None


class TokenIn(_In):
    label: Annotated[str, Field(max_length=128)] = ""
    user: UserName | None = Field(None, description="admins: make a token for another user")
    days: int | None = Field(365, ge=1, le=3650, description="valid this many days; null: ever")


class TokenOut(BaseModel):
    id: str
    user: str
    label: str
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None


class NewTokenOut(TokenOut):
    token: str = Field(description="the secret: shown this once, stored only as a digest")


class AuditOut(BaseModel):
    id: int
    at: datetime
    user: str
    role: str
    action: str
    outcome: str
    campus: str | None
    target: str
    address: str
    detail: str


def _utc(ts: datetime | None) -> datetime | None:
    return None if ts is None else (ts if ts.tzinfo else ts.replace(tzinfo=UTC))


def user_out(row: UserRow) -> UserOut:
    locked = _utc(row.locked_until)
    return UserOut(
        name=row.name,
        display=row.display,
        role=row.role,
        campuses=list(row.campuses),
        disabled=row.disabled,
        locked_until=locked if locked and locked > datetime.now(UTC) else None,
        created_at=_utc(row.created_at) or datetime.now(UTC),
        last_login_at=_utc(row.last_login_at),
    )


def token_out(row: ApiTokenRow) -> TokenOut:
    return TokenOut(
        id=row.id,
        user=row.user,
        label=row.label,
        created_at=_utc(row.created_at) or datetime.now(UTC),
        expires_at=_utc(row.expires_at),
        last_used_at=_utc(row.last_used_at),
        revoked_at=_utc(row.revoked_at),
    )


def audit_out(row: AuditRow) -> AuditOut:
    return AuditOut(
        id=row.id,
        at=_utc(row.at) or datetime.now(UTC),
        user=row.user,
        role=row.role,
        action=row.action,
        outcome=row.outcome,
        campus=row.campus,
        target=row.target,
        address=row.address,
        detail=row.detail,
    )


def router(rt: GatewayRuntime) -> APIRouter:
    api = APIRouter(tags=["accounts"])
    min_len = rt.cfg.accounts.min_password_length
    known = {c.id for c in rt.cfg.campuses}

    def check_password(password: str) -> None:
        if len(password) < min_len:
            raise HTTPException(422, f"a password needs at least {min_len} characters")

    def check_campuses(campuses: list[str]) -> None:
        unknown = sorted(set(campuses) - known - {"*"})
        if unknown:
            raise HTTPException(422, f"unknown campuses: {unknown}")

    @api.post("/api/auth/login", response_model=LoginOut)
    async def login(body: LoginIn, request: Request, response: Response) -> LoginOut:
        """Log in to the consoles: sets the session cookie (HttpOnly, SameSite=Strict). Five
        wrong passwords in a row lock the account for 15 minutes; many failures from one
        address slow that address down. Every try is audited."""
        auth = authenticator(request)
        origin, referer = request.headers.get("origin"), request.headers.get("referer")
        if (origin or referer) and not same_origin(origin, referer, request.headers.get("host")):
            raise HTTPException(403, "cross-site login refused")
        addr_key = f"addr:{client_address(request)}"
        wait = auth.limiter.blocked(addr_key)
        if wait > 0:
            await auth.audit(
                None,
                "login",
                "denied",
                request,
                user=body.user,
                detail="too many failed logins from this address",
            )
            raise HTTPException(
                429,
                "too many failed logins from here; try later",
                headers={"Retry-After": str(int(wait) + 1)},
            )
        row = await auth.accounts.user(body.user)
        # argon2 takes tens of milliseconds of CPU: never on the event loop (alarms share it).
        ok = await asyncio.to_thread(
            verify_password, row.password_hash if row else None, body.password
        )
        result = await auth.accounts.login_attempt(body.user, ok if row else None)
        if not result.ok or result.user is None:
            auth.limiter.fail(addr_key)
            await auth.audit(None, "login", "failed", request, user=body.user, detail=result.reason)
            if result.reason == "locked" and result.locked_until is not None:
                left = max(1, int((result.locked_until - datetime.now(UTC)).total_seconds()))
                raise HTTPException(
                    429,
                    "account locked after repeated wrong passwords; try later",
                    headers={"Retry-After": str(left)},
                )
            raise HTTPException(401, "wrong user name or password")
        user = result.user
        if needs_rehash(user.password_hash):
            await auth.accounts.set_hash(
                user.name, await asyncio.to_thread(hash_password, body.password)
            )
        token, csrf = auth.new_session_secrets()
        await auth.accounts.open_session(
            user.name, token, csrf, auth.lifetime, client_address(request)
        )
        response.set_cookie(
            COOKIE,
            token,
            max_age=int(auth.lifetime.total_seconds()),
            httponly=True,
            samesite="strict",
            secure=rt.cfg.accounts.secure_cookie,
            path="/",
        )
        auth.limiter.clear(addr_key)
        who = Principal(user.name, user.role, tuple(user.campuses), "session", csrf)
        await auth.audit(who, "login", "ok", request)
        return LoginOut(
            user=user.name,
            display=user.display,
            role=user.role,
            campuses=list(user.campuses),
            csrf=csrf,
        )

    @api.post("/api/auth/logout", status_code=204)
    async def logout(
        request: Request, who: Annotated[Principal, Depends(require("self"))]
    ) -> Response:
        auth = authenticator(request)
        cookie = request.cookies.get(COOKIE)
        if cookie:
            await auth.accounts.end_session(cookie)
        await auth.audit(who, "logout", "ok", request)
        answer = Response(status_code=204)
        answer.delete_cookie(COOKIE, path="/")
        return answer

    @api.get("/api/auth/me", response_model=MeOut)
    async def me(who: Annotated[Principal, Depends(require("self"))]) -> MeOut:
        from gateway.api.auth import PERMISSIONS

        return MeOut(
            user=who.user,
            display=who.display,
            role=who.role,
            campuses=list(who.campuses),
            via=who.via,
            csrf=who.csrf,
            permissions=sorted(p for p, roles in PERMISSIONS.items() if who.role in roles),
        )

    @api.post("/api/auth/password", status_code=204)
    async def change_password(
        body: PasswordIn, request: Request, who: Annotated[Principal, Depends(require("self"))]
    ) -> Response:
        """Change one's own password (all one's sessions end: log in again)."""
        auth = authenticator(request)
        row = await auth.accounts.user(who.user)
        if row is None or not await asyncio.to_thread(verify_password, row.password_hash, body.old):
            await auth.audit(who, "password.change", "failed", request, detail="old password")
            raise HTTPException(403, "the old password is wrong")
        check_password(body.new)
        await auth.accounts.update_user(
            who.user, password_hash=await asyncio.to_thread(hash_password, body.new)
        )
        await auth.audit(who, "password.change", "ok", request)
        return Response(status_code=204)

    # --- users (admin) --------------------------------------------------------------------

    @api.get("/api/users", response_model=list[UserOut])
    async def users(
        request: Request, who: Annotated[Principal, Depends(require("users.admin"))]
    ) -> list[UserOut]:
        return [user_out(r) for r in await authenticator(request).accounts.users()]

    @api.post("/api/users", response_model=UserOut, status_code=201)
    async def add_user(
        body: UserIn,
        request: Request,
        who: Annotated[Principal, Depends(require("users.admin"))],
    ) -> UserOut:
        check_password(body.password)
        check_campuses(body.campuses)
        auth = authenticator(request)
        row = await auth.accounts.create_user(
            body.name,
            body.role,
            body.campuses,
            await asyncio.to_thread(hash_password, body.password),
            body.display,
        )
        if row is None:
            raise HTTPException(409, f"user {body.name} exists")
        await auth.audit(
            who,
            "user.create",
            "ok",
            request,
            target=body.name,
            detail=f"role={body.role} campuses={','.join(body.campuses)}",
        )
        return user_out(row)

    @api.patch("/api/users/{name}", response_model=UserOut)
    async def change_user(
        name: UserPath,
        body: UserPatch,
        request: Request,
        who: Annotated[Principal, Depends(require("users.admin"))],
    ) -> UserOut:
        """Change a user; a new role, campuses or password, or disabling, ends their sessions
        at once, and a disabled user's tokens stop working at the next request."""
        changes: dict[str, Any] = body.model_dump(exclude_none=True, exclude={"password"})
        if body.campuses is not None:
            check_campuses(body.campuses)
        if body.password is not None:
            check_password(body.password)
            changes["password_hash"] = await asyncio.to_thread(hash_password, body.password)
        if name == who.user and (body.disabled or (body.role and body.role != "admin")):
            raise HTTPException(409, "an admin cannot disable or demote themselves")
        auth = authenticator(request)
        row = await auth.accounts.update_user(name, **changes)
        if row is None:
            raise HTTPException(404, f"no user {name}")
        shown = sorted(k if k != "password_hash" else "password" for k in changes)
        await auth.audit(who, "user.change", "ok", request, target=name, detail=",".join(shown))
        return user_out(row)

    @api.post("/api/users/{name}/unlock", response_model=UserOut)
    async def unlock(
        name: UserPath,
        request: Request,
        who: Annotated[Principal, Depends(require("users.admin"))],
    ) -> UserOut:
        auth = authenticator(request)
        if not await auth.accounts.unlock(name):
            raise HTTPException(404, f"no user {name}")
        await auth.audit(who, "user.unlock", "ok", request, target=name)
        row = await auth.accounts.user(name)
        assert row is not None
        return user_out(row)

    # --- tokens ---------------------------------------------------------------------------

    @api.get("/api/tokens", response_model=list[TokenOut])
    async def tokens(
        request: Request,
        who: Annotated[Principal, Depends(require("self"))],
        user: Annotated[str | None, Query(pattern=USER_PATTERN)] = None,
    ) -> list[TokenOut]:
        """One's own tokens; admins: everyone's, or one user's."""
        if who.role != "admin":
            user = who.user
        return [token_out(r) for r in await authenticator(request).accounts.tokens(user)]

    @api.post("/api/tokens", response_model=NewTokenOut, status_code=201)
    async def add_token(
        body: TokenIn, request: Request, who: Annotated[Principal, Depends(require("self"))]
    ) -> NewTokenOut:
        """A bearer token acting as its user (their role and campuses, as they are at each
        request). The secret is in this answer only."""
        owner = body.user or who.user
        if owner != who.user and who.role != "admin":
            raise HTTPException(403, "only admins make tokens for other users")
        auth = authenticator(request)
        if owner != who.user and await auth.accounts.user(owner) is None:
            raise HTTPException(404, f"no user {owner}")
        secret = "cgt_" + secrets.token_urlsafe(32)
        expires = None if body.days is None else datetime.now(UTC) + timedelta(days=body.days)
        row = await auth.accounts.add_token(new_id(), owner, secret, body.label, expires)
        await auth.audit(
            who, "token.create", "ok", request, target=f"{owner}/{row.id}", detail=body.label
        )
        return NewTokenOut(**token_out(row).model_dump(), token=secret)

    @api.delete("/api/tokens/{token_id}", response_model=TokenOut)
    async def revoke_token(
        token_id: Annotated[str, Path(pattern=ID_PATTERN)],
        request: Request,
        who: Annotated[Principal, Depends(require("self"))],
    ) -> TokenOut:
        """Revoke a token: refused from the next request on, by every gateway."""
        auth = authenticator(request)
        owned = {t.id for t in await auth.accounts.tokens(who.user)}
        if who.role != "admin" and token_id not in owned:
            raise HTTPException(404, "no such token")
        row = await auth.accounts.revoke_token(token_id)
        if row is None:
            raise HTTPException(404, "no such token")
        await auth.audit(who, "token.revoke", "ok", request, target=f"{row.user}/{row.id}")
        return token_out(row)

    # --- audit ----------------------------------------------------------------------------

    async def audit_rows(
        request: Request,
        user: str | None,
        action: str | None,
        outcome: str | None,
        start: datetime | None,
        end: datetime | None,
        q: str | None,
        before: int | None,
        limit: int,
    ) -> list[AuditRow]:
        for ts in (start, end):
            if ts is not None and ts.tzinfo is None:
                raise HTTPException(422, "start and end need a time zone (e.g. +08:00 or Z)")
        return await authenticator(request).accounts.audit_log(
            user=user,
            action=action,
            outcome=outcome,
            start=start,
            end=end,
            search=q,
            before_id=before,
            limit=limit,
        )

    @api.get("/api/audit", response_model=list[AuditOut])
    async def audit(
        request: Request,
        who: Annotated[Principal, Depends(require("audit.read"))],
        user: Annotated[str | None, Query(max_length=64, pattern=_Text)] = None,
        action: Annotated[str | None, Query(max_length=64, pattern=_Text)] = None,
        outcome: Annotated[str | None, Query(pattern="^(ok|denied|failed)$")] = None,
        start: datetime | None = None,
        end: datetime | None = None,
        q: Annotated[
            str | None, Query(max_length=100, pattern=_Text, description="text in target/detail")
        ] = None,
        before: Annotated[int | None, Query(ge=1, description="page: ids below this")] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> list[AuditOut]:
        """The audit log, newest first: logins, actions and refusals."""
        rows = await audit_rows(request, user, action, outcome, start, end, q, before, limit)
        return [audit_out(r) for r in rows]

    @api.get("/api/audit.csv", response_class=Response)
    async def audit_export(
        request: Request,
        who: Annotated[Principal, Depends(require("audit.read"))],
        user: Annotated[str | None, Query(max_length=64, pattern=_Text)] = None,
        action: Annotated[str | None, Query(max_length=64, pattern=_Text)] = None,
        outcome: Annotated[str | None, Query(pattern="^(ok|denied|failed)$")] = None,
        start: datetime | None = None,
        end: datetime | None = None,
        q: Annotated[str | None, Query(max_length=100, pattern=_Text)] = None,
        limit: Annotated[int, Query(ge=1, le=100000)] = 10000,
    ) -> Response:
        rows = await audit_rows(request, user, action, outcome, start, end, q, None, limit)
        auth = authenticator(request)
        await auth.audit(who, "audit.export", "ok", request, detail=f"{len(rows)} rows")
        return Response(
            audit_csv(rows),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": 'attachment; filename="campusguard-audit.csv"'},
        )

    return api
