"""HTTP routes of the notifier: the recipients' ack link and each alarm's notification jobs."""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, FastAPI, HTTPException
from fastapi.responses import HTMLResponse

from gateway.api.auth import Principal, require
from gateway.api.common import IdPath
from gateway.store.repo import aware

if TYPE_CHECKING:
    from gateway.service import GatewayRuntime


def add_routes(app: FastAPI, rt: GatewayRuntime) -> None:
    """``GET /api/notify/ack/{token}`` and ``GET /api/notify/{alarm_id}``."""

    @app.get("/api/notify/ack/{token}", response_class=HTMLResponse, tags=["notify"])
    async def notify_ack(token: str) -> HTMLResponse:
        """The link a recipient got: acknowledges the alarm for them (no login: the link's
        random token is the credential)."""
        notifier = rt.notifier
        if notifier is None:
            raise HTTPException(404, "notifications are not configured")
        row = await notifier.acknowledge(token)
        if row is None:
            raise HTTPException(404, "this link is not valid")
        page = (
            "<!doctype html><meta charset=utf-8><title>CampusGuard</title>"
            f"<p>Alarm {html.escape(row.alarm_id)} acknowledged by "
            f"{html.escape(row.recipient)}. Nobody else will be called for it.</p>"
        )
        return HTMLResponse(page)

    @app.get("/api/notify/{alarm_id}", tags=["notify"])
    async def notify_jobs(
        alarm_id: IdPath, who: Annotated[Principal, Depends(require("notify.read"))]
    ) -> list[dict[str, Any]]:
        """Who was told of an alarm, how, and who acknowledged it."""
        notifier = rt.notifier
        if notifier is None:
            raise HTTPException(404, "notifications are not configured")
        found = await rt.store.alarm(alarm_id)
        if found is None or not who.may_act_on(found[0].campus):
            raise HTTPException(404, f"no alarm {alarm_id}")
        return [
            {
                "id": r.id,
                "step": r.step,
                "recipient": r.recipient,
                "state": r.state,
                "via": r.via,
                "channel": r.channel,
                "attempts": r.attempts,
                "created_at": aware(r.created_at),
                "sent_at": aware(r.sent_at) if r.sent_at else None,
                "acked_at": aware(r.acked_at) if r.acked_at else None,
                "escalated": r.escalated,
                "errors": [e for e in r.errors.splitlines() if e],
            }
            for r in await notifier.jobs(alarm_id)
        ]
