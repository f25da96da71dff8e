"""Self-tests: prove one device's alarm path end to end (``campusguard selftest``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException
from pydantic import BaseModel, ConfigDict, Field

from gateway.api.auth import Principal, require
from gateway.api.common import IdPath, known_campuses
from gateway.selftest import describe as selftest_view

if TYPE_CHECKING:
    from gateway.service import GatewayRuntime


class SelftestIn(BaseModel):
    """Prove one device's alarm path end to end (``campusguard selftest``)."""

    model_config = ConfigDict(extra="forbid")

    campus: str = Field(max_length=64)
    device: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
    mode: Literal["synthetic", "pulse"] = "synthetic"
    timeout: float | None = Field(
        None, gt=0, le=600, description="seconds before it fails; default selftest_timeout"
    )


def router(rt: GatewayRuntime) -> APIRouter:
    api = APIRouter(tags=["self-test"])

    @api.post("/api/selftest", status_code=202)
    async def selftest_start(
        body: SelftestIn, who: Annotated[Principal, Depends(require("selftest.run"))]
    ) -> dict[str, Any]:
        """Start a self-test; follow it at ``GET /api/selftest/{id}``."""
        if body.campus not in known_campuses(rt) or not who.may_act_on(body.campus):
            raise HTTPException(404, f"no campus {body.campus}")
        if rt.selftests is None:
            raise HTTPException(503, "self-tests are not running")
        row = await rt.selftests.start(body.campus, body.device, body.mode, who.user, body.timeout)
        return selftest_view(row)

    @api.get("/api/selftest/{selftest_id}")
    async def selftest_get(
        selftest_id: IdPath, who: Annotated[Principal, Depends(require("selftest.read"))]
    ) -> dict[str, Any]:
        if rt.selftests is None:
            raise HTTPException(503, "self-tests are not running")
        row = await rt.selftests.get(selftest_id)
        if row is None or not who.may_act_on(row.campus):
            raise HTTPException(404, f"no self-test {selftest_id}")
        return selftest_view(row)

    return api
