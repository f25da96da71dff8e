"""``campusguard users``: the gateway's accounts from the command line (the first admin, and
recovery when nobody can log in). Works on the gateway's database directly; every change is in
the audit log as user ``cli``."""

from __future__ import annotations

import asyncio
import re
import secrets
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer

from contract.config import ROLES, ConfigError, GatewayConfig, load_config
from contract.models import new_id
from webkit.passwords import hash_password

if TYPE_CHECKING:
    from gateway.store.accounts import AccountStore

T = TypeVar("T")

users_app = typer.Typer(
    help="Accounts of the central consoles and the API (users, passwords, tokens).",
    no_args_is_help=True,
)

ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="the gateway's YAML config")]
NameArg = Annotated[str, typer.Argument(help="the user name")]
PasswordFile = Annotated[
    Path | None,
    typer.Option(help="read the password from this file (default: asked twice, not echoed)"),
]
ACTOR = "cli"


def _fail(message: str, code: int = 2) -> typer.Exit:
    typer.echo(f"campusguard: {message}", err=True)
    return typer.Exit(code)


def _config(path: Path) -> GatewayConfig:
    try:
        return load_config(path, GatewayConfig)
    except ConfigError as exc:
        raise _fail(str(exc)) from None


def _run(cfg: GatewayConfig, job: Callable[[AccountStore], Awaitable[T]]) -> T:
    from gateway.store.accounts import AccountStore
    from gateway.store.db import make_engine, migrate

    async def main() -> T:
        engine = make_engine(cfg.database.connect_url())
        try:
            await migrate(engine)
            return await job(AccountStore(engine))
        finally:
            await engine.dispose()

    return asyncio.run(main())


def _password(cfg: GatewayConfig, password_file: Path | None) -> str:
    if password_file is not None:
        try:
            password = password_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise _fail(f"cannot read {password_file}: {exc}") from None
    else:
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    least = cfg.accounts.min_password_length
    if len(password) < least:
        raise _fail(f"a password needs at least {least} characters")
    return password


def _campuses(cfg: GatewayConfig, given: str) -> list[str]:
    wanted = [c.strip() for c in given.split(",") if c.strip()]
    if not wanted:
        raise _fail("--campuses: name at least one campus, or *")
    unknown = sorted(set(wanted) - {c.id for c in cfg.campuses} - {"*"})
    if unknown:
        raise _fail(f"--campuses: unknown campuses {unknown} (see campuses: in the config)")
    return wanted


async def _audit(store: AccountStore, action: str, target: str, detail: str = "") -> None:
    await store.audit(ACTOR, ACTOR, action, "ok", target=target, detail=detail)


@users_app.command("add")
def users_add(
    config: ConfigOpt,
    name: NameArg,
    role: Annotated[str, typer.Option(help=f"one of {', '.join(ROLES)}")],
    campuses: Annotated[str, typer.Option(help="campus ids, comma-separated, or * for all")],
    display: Annotated[str, typer.Option(help="the name shown in the consoles")] = "",
    password_file: PasswordFile = None,
) -> None:
    """Add a user (the first admin: ``--role admin --campuses '*'``)."""
    cfg = _config(config)
    if role not in ROLES:
        raise _fail(f"--role must be one of {', '.join(ROLES)}")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}", name):
        raise _fail("a user name is letters, digits and _.@- (at most 64)")
    where = _campuses(cfg, campuses)
    password = _password(cfg, password_file)
    hashed = hash_password(password)

    async def job(store: AccountStore) -> bool:
        row = await store.create_user(name, role, where, hashed, display)
        if row is None:
            return False
        await _audit(store, "user.create", name, f"role={role} campuses={','.join(where)}")
        return True

    if not _run(cfg, job):
        raise _fail(f"user {name} exists", 1)
    typer.echo(f"added {name} ({role}, campuses {','.join(where)})")


@users_app.command("passwd")
def users_passwd(config: ConfigOpt, name: NameArg, password_file: PasswordFile = None) -> None:
    """Set a user's password (their sessions end; a lock-out is lifted)."""
    cfg = _config(config)
    hashed = hash_password(_password(cfg, password_file))

    async def job(store: AccountStore) -> bool:
        if await store.update_user(name, password_hash=hashed) is None:
            return False
        await _audit(store, "user.change", name, "password")
        return True

    if not _run(cfg, job):
        raise _fail(f"no user {name}", 1)
    typer.echo(f"password of {name} set")


def _set_disabled(config: Path, name: str, disabled: bool) -> None:
    cfg = _config(config)

    async def job(store: AccountStore) -> bool:
        if await store.update_user(name, disabled=disabled) is None:
            return False
        await _audit(store, "user.change", name, "disabled" if disabled else "enabled")
        return True

    if not _run(cfg, job):
        raise _fail(f"no user {name}", 1)
    typer.echo(f"{name} {'disabled' if disabled else 'enabled'}")


@users_app.command("disable")
def users_disable(config: ConfigOpt, name: NameArg) -> None:
    """Disable a user: their sessions end and their tokens stop working at once."""
    _set_disabled(config, name, True)


@users_app.command("enable")
def users_enable(config: ConfigOpt, name: NameArg) -> None:
    """Enable a disabled user again."""
    _set_disabled(config, name, False)


@users_app.command("unlock")
def users_unlock(config: ConfigOpt, name: NameArg) -> None:
    """Lift the lock-out after repeated wrong passwords."""
    cfg = _config(config)

    async def job(store: AccountStore) -> bool:
        if not await store.unlock(name):
            return False
        await _audit(store, "user.unlock", name)
        return True

    if not _run(cfg, job):
        raise _fail(f"no user {name}", 1)
    typer.echo(f"{name} unlocked")


@users_app.command("list")
def users_list(config: ConfigOpt) -> None:
    """The users: name, role, campuses, state, last login."""
    cfg = _config(config)

    async def job(store: AccountStore) -> list[tuple[str, ...]]:
        now = datetime.now(UTC)
        out: list[tuple[str, ...]] = []
        for u in await store.users():
            locked = u.locked_until
            if locked is not None and locked.tzinfo is None:
                locked = locked.replace(tzinfo=UTC)
            state = "disabled" if u.disabled else "locked" if locked and locked > now else "active"
            last = u.last_login_at
            out.append(
                (
                    u.name,
                    u.role,
                    ",".join(u.campuses),
                    state,
                    f"{last:%Y-%m-%d %H:%M}" if last else "-",
                    u.display,
                )
            )
        return out

    rows = _run(cfg, job)
    head = ("NAME", "ROLE", "CAMPUSES", "STATE", "LAST LOGIN (UTC)", "DISPLAY")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    for r in [head, *rows]:
        typer.echo("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())


@users_app.command("token")
def users_token(
    config: ConfigOpt,
    name: NameArg,
    label: Annotated[str, typer.Option(help="what the token is for (e.g. police bridge)")] = "",
    days: Annotated[
        int, typer.Option(min=0, max=3650, help="valid this many days; 0: no expiry")
    ] = 365,
) -> None:
    """Make a bearer token acting as the user; the secret is printed this once."""
    cfg = _config(config)
    secret = "cgt_" + secrets.token_urlsafe(32)
    expires = None if days == 0 else datetime.now(UTC) + timedelta(days=days)

    async def job(store: AccountStore) -> str | None:
        if await store.user(name) is None:
            return None
        row = await store.add_token(new_id(), name, secret, label[:128], expires)
        await _audit(store, "token.create", f"{name}/{row.id}", label[:128])
        return row.id

    token_id = _run(cfg, job)
    if token_id is None:
        raise _fail(f"no user {name}", 1)
    typer.echo(f"token {token_id} for {name} (shown once; send as 'Authorization: Bearer ...'):")
    typer.echo(secret)
