"""Commands to campus devices (bollards): the gateway signs and sends them; the campus edge
decides and reports back. Who asks is the logged-in user or the token's, never the body."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Path, Query
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from contract import topics
from contract.models import ID_PATTERN, BollardCommandMessage, new_id, utcnow
from gateway.api.auth import Principal, require
from gateway.api.common import IdPath, campuses_of, known_campuses, row_dict
from gateway.api.queries import commands_in
from gateway.store.models import CommandRow

if TYPE_CHECKING:
    from gateway.service import GatewayRuntime

log = logging.getLogger(__name__)


class CommandIn(BaseModel):
    """A request to operate a bollard; who asks comes from the login or token, never the body."""

    model_config = ConfigDict(extra="forbid")

    action: Literal["raise", "lower", "stop", "emergency_raise"] | None = None
    step: Literal["request", "confirm"] = "request"
    command_id: str | None = Field(
        None, min_length=26, max_length=26, description="for confirm: the armed command's id"
    )
    token: str | None = Field(None, max_length=128, description="for confirm: from 'armed'")
    reason: str = Field("", max_length=200)
    ttl: float = Field(30.0, gt=0, le=60, description="seconds the command stays valid")


class CommandOut(BaseModel):
    id: str
    campus: str
    device: str
    bollard: int
    action: str | None
    user: str
    role: str
    reason: str
    state: str
    code: str | None
    detail: str
    token: str | None
    issued_at: datetime
    updated_at: datetime


def router(rt: GatewayRuntime) -> APIRouter:
    api = APIRouter(tags=["commands"])

    @api.post(
        "/api/campuses/{campus}/bollards/{device}/{bollard}/commands",
        status_code=202,
        response_model=CommandOut,
    )
    async def bollard_command(
        campus: IdPath,
        device: IdPath,
        bollard: Annotated[int, Path(ge=0, le=255)],
        body: CommandIn,
        who: Annotated[Principal, Depends(require("commands.bollard"))],
    ) -> dict[str, Any]:
        """Send a bollard command to the campus edge, which decides and reports back. An
        attempt on a campus not the user's is refused (403) and kept in that campus' command
        record."""
        if campus not in known_campuses(rt):
            raise HTTPException(404, f"no campus {campus}")
        if body.step == "confirm" and (body.command_id is None or body.token is None):
            raise HTTPException(422, "a confirm needs command_id and token")
        if body.step == "request" and body.action is None:
            raise HTTPException(422, "a request needs an action")
        if body.command_id is not None:
            armed = await rt.store.command(body.command_id)
            if armed is not None and (armed.campus != campus or not who.may_act_on(campus)):
                raise HTTPException(404, f"no command {body.command_id}")
        ts = utcnow()
        row = CommandRow(
            id=body.command_id or new_id(),
            campus=campus,
            device=device,
            bollard=bollard,
            action=body.action,
            user=who.user,
            role=who.role,
            reason=body.reason,
            issued_at=ts,
            state="sent",
            code=None,
            detail="",
            token=None,
            updated_at=ts,
        )
        if not who.may_act_on(campus):
            row.state, row.code = "refused", "campus"
            row.detail = f"{who.user} may not act on campus {campus}"
            await rt.store.record_command(row)
            log.warning("refused command by %s on campus %s: not theirs", who.user, campus)
            raise HTTPException(403, row.detail)
        try:
            msg = BollardCommandMessage(
                id=row.id,
                campus=campus,
                device=device,
                bollard=bollard,
                step=body.step,
                action=body.action,
                token=body.token,
                user=who.user,
                role=who.role,
                reason=body.reason,
                issued_at=ts,
                expires_at=ts + timedelta(seconds=body.ttl),
            )
        except ValidationError as exc:
            raise HTTPException(422, str(exc.errors()[0]["msg"])) from None
        await rt.store.record_command(row)
        try:
            await rt.mqtt.publish(topics.command_topic(campus), msg.model_dump_json().encode())
        except ConnectionError as exc:
            row.state, row.detail, row.updated_at = "failed", str(exc), utcnow()
            await rt.store.record_command(row)
            raise HTTPException(503, f"cannot reach the campus now: {exc}") from None
        return row_dict(row)

    @api.get("/api/commands/{command_id}", response_model=CommandOut)
    async def command(
        command_id: IdPath, who: Annotated[Principal, Depends(require("commands.read"))]
    ) -> dict[str, Any]:
        row = await rt.store.command(command_id)
        if row is None or not who.may_act_on(row.campus):
            raise HTTPException(404, f"no command {command_id}")
        return row_dict(row)

    @api.get("/api/commands", response_model=list[CommandOut])
    async def commands(
        who: Annotated[Principal, Depends(require("commands.read"))],
        campus: Annotated[str | None, Query(pattern=ID_PATTERN)] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> list[dict[str, Any]]:
        """Commands newest first, with who asked, why, and what became of them."""
        return [
            row_dict(r) for r in await commands_in(rt.store, campuses_of(rt, who, campus), limit)
        ]

    return api
