"""Campuses (where they are, whom to call, whether their edge is online) and the status of
their devices and edges."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query
from pydantic import BaseModel, Field

from contract.config import CampusAccount
from contract.models import ID_PATTERN
from gateway.api.auth import Principal, allowed, require
from gateway.api.common import IdPath, row_dict, scope
from gateway.api.queries import devices_in, edges_in
from gateway.store.models import EdgeStateRow

if TYPE_CHECKING:
    from gateway.service import GatewayRuntime

_Word = Annotated[str, Field(pattern=ID_PATTERN)]


class GeoOut(BaseModel):
    lat: float
    lon: float


class EdgeOut(BaseModel):
    campus: str
    edge: str
    online: bool
    ts: datetime
    version: str
    reason: str


class CampusOut(BaseModel):
    id: str
    name: str
    address: str
    type: str
    account: str = Field(description="the campus' account at the police ARC")
    geo: GeoOut | None
    contacts: list[dict[str, Any]] = Field(
        default_factory=list, description="whom to call, when the campus config names them"
    )
    online: bool | None = Field(description="an edge of the campus is online (null: never seen)")
    edges: list[EdgeOut]


class DeviceOut(BaseModel):
    campus: str
    device: str
    online: bool
    ts: datetime
    last_response: datetime | None
    latency_ms: float | None
    error: str | None
    points: dict[str, Any]


def campus_out(c: CampusAccount, edges: list[EdgeStateRow]) -> CampusOut:
    mine = [e for e in edges if e.campus == c.id]
    contacts = getattr(c, "contacts", None) or []
    return CampusOut(
        id=c.id,
        name=c.name,
        address=c.address,
        type=c.type,
        account=c.account,
        geo=None if c.geo is None else GeoOut(lat=c.geo.lat, lon=c.geo.lon),
        contacts=[x.model_dump(mode="json") if hasattr(x, "model_dump") else x for x in contacts],
        online=any(e.online for e in mine) if mine else None,
        edges=[EdgeOut.model_validate(row_dict(e)) for e in mine],
    )


def router(rt: GatewayRuntime) -> APIRouter:
    api = APIRouter(tags=["campuses and devices"])
    accounts = {c.id: c for c in rt.cfg.campuses}

    @api.get("/api/campuses", response_model=list[CampusOut])
    async def campuses(
        who: Annotated[Principal, Depends(require("campuses.read"))],
    ) -> list[CampusOut]:
        """The campuses of the user: address, map position, contacts and edge state."""
        wanted = scope(rt, who, None)
        edges = await edges_in(rt.store, wanted)
        return [campus_out(accounts[c], edges) for c in wanted]

    @api.get("/api/campuses/{campus}", response_model=CampusOut)
    async def campus(
        campus: IdPath, who: Annotated[Principal, Depends(require("campuses.read"))]
    ) -> CampusOut:
        allowed(who, campus)
        if campus not in accounts:
            raise HTTPException(404, f"no campus {campus}")
        return campus_out(accounts[campus], await edges_in(rt.store, [campus]))

    @api.get("/api/devices", response_model=list[DeviceOut])
    async def devices(
        who: Annotated[Principal, Depends(require("devices.read"))],
        campus: Annotated[list[_Word] | None, Query(description="repeatable")] = None,
        online: bool | None = None,
    ) -> list[dict[str, Any]]:
        """Device status, offline first."""
        return [row_dict(r) for r in await devices_in(rt.store, scope(rt, who, campus), online)]

    @api.get("/api/edges", response_model=list[EdgeOut])
    async def edges(
        who: Annotated[Principal, Depends(require("devices.read"))],
        campus: Annotated[list[_Word] | None, Query(description="repeatable")] = None,
    ) -> list[dict[str, Any]]:
        return [row_dict(r) for r in await edges_in(rt.store, scope(rt, who, campus))]

    return api
