"""The police dispatcher's actions on an alarm: received, dispatched, on scene, closed.

Each is a step of the alarm's timeline, which goes down to the campus (the guard console shows
it), exactly like a status from the police platform (``gateway.relay.webhook.apply_status``):
a step already taken is acknowledged and changes nothing; a step back is refused (409).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field

from drivers.webhook.doc import STATUS_TO_ALARM_STATE, StatusState
from gateway.api.auth import Principal, authenticator, require

if TYPE_CHECKING:
    from gateway.service import GatewayRuntime

PATH = "dispatch"
"""The ``path`` of the steps the dispatch console adds (the webhook's are ``webhook``)."""

DispatchState = StatusState
"""What the dispatcher marks: the police receiver's own status vocabulary (the webhook's)."""

TO_ALARM_STATE = STATUS_TO_ALARM_STATE
"""What the dispatcher marks -> the alarm state the campus sees (as the webhook maps them)."""

RANK = {"received": 1, "dispatched": 2, "on_scene": 3, "closed": 4}
NOT_FOR_DRILLS = frozenset({"dispatched", "on_scene"})
"""A drill is a test all the way to the police: received and closed, never dispatched."""


def progress(steps: Sequence[Any]) -> int:
    """How far the dispatch of an alarm has come (0 = nobody at the police marked it yet):
    the dispatcher's ``received``; ``dispatched``, ``on_scene`` or ``closed`` by anyone (the
    police platform's webhook, the campus closing it)."""
    level = 0
    for s in steps:
        if s.state == "police_received" and s.path == PATH:
            level = max(level, RANK["received"])
        elif s.state in ("dispatched", "on_scene", "closed"):
            level = max(level, RANK[s.state])
    return level


class DispatchIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    state: DispatchState
    note: str = Field("", max_length=300)


class DispatchOut(BaseModel):
    alarm_id: str
    state: str = Field(description="the alarm state the campus sees")
    changed: bool = Field(description="false: this step was taken already (a repeat)")


def router(rt: GatewayRuntime) -> APIRouter:
    r = APIRouter(tags=["dispatch"])

    @r.post("/api/alarms/{alarm_id}/dispatch", response_model=DispatchOut)
    async def dispatch(
        alarm_id: str,
        body: DispatchIn,
        request: Request,
        who: Annotated[Principal, Depends(require("alarms.dispatch"))],
    ) -> dict[str, Any]:
        """Mark an alarm received / dispatched / on scene / closed (campus-scoped: 404 for an
        alarm of another campus; 409 for a step back, or dispatching a drill)."""
        found = await rt.store.alarm(alarm_id)
        if found is None or not who.may_act_on(found[0].campus):
            raise HTTPException(404, f"no alarm {alarm_id}")
        alarm, steps = found
        auth = authenticator(request)
        state = TO_ALARM_STATE[body.state]
        level = progress(steps)
        if alarm.drill and body.state in NOT_FOR_DRILLS:
            await auth.audit(
                who,
                "alarms.dispatch",
                "refused",
                request,
                campus=alarm.campus,
                target=alarm_id,
                detail=f"{body.state}: a drill",
            )
            raise HTTPException(409, "this alarm is a drill: it is never dispatched")
        if RANK[body.state] < level:
            await auth.audit(
                who,
                "alarms.dispatch",
                "refused",
                request,
                campus=alarm.campus,
                target=alarm_id,
                detail=f"{body.state}: a step back",
            )
            raise HTTPException(409, f"this alarm is past {body.state}: no step back")
        taken = any(
            s.state == state and (s.path == PATH or body.state != "received") for s in steps
        )
        if taken:
            return {"alarm_id": alarm_id, "state": state, "changed": False}
        note = f"by {who.user}" + (f": {body.note.strip()}" if body.note.strip() else "")
        await rt.store.set_alarm_state(alarm_id, state, path=PATH, note=note[:500])
        rt.mqtt.wake_downlink.set()  # the campus sees the step now, not at the next scan
        await auth.audit(
            who,
            "alarms.dispatch",
            "ok",
            request,
            campus=alarm.campus,
            target=alarm_id,
            detail=body.state,
        )
        return {"alarm_id": alarm_id, "state": state, "changed": True}

    return r
