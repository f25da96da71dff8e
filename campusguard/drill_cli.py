"""`campusguard drill start|end|list|compliance`: drills through the gateway's HTTP API.

A machine client like any other: a bearer token from ``--token`` or ``CG_API_TOKEN`` (an entry
of ``api_tokens`` in the gateway config; its user is who ran the drill). Exit codes: 0 done,
1 refused (the answer says why), 2 the gateway could not be reached or the input is wrong.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx


def line(d: dict[str, Any]) -> str:
    """One drill on one line."""
    when = d.get("actual_start") or d.get("planned_start")
    end = d.get("actual_end") or d.get("planned_end")
    text = (
        f"{d['id']}  {d['campus']}  {d['kind']:<10} {d['status']:<9}  {when} -> {end}"
        f"  by {d['started_by']}"
    )
    if d.get("ended_by"):
        text += f", ended: {d.get('end_reason') or d['ended_by']}"
    if d.get("status") == "ended":
        text += f", {d.get('alarms', 0)} drill alarm(s)"
    return text


def call(
    method: str,
    url: str,
    path: str,
    token: str | None,
    say: Callable[[str], Any],
    *,
    json: dict[str, Any] | None = None,
    params: dict[str, Any] | None = None,
) -> tuple[int, Any]:
    """Returns (exit code, parsed answer or None)."""
    if not token:
        say("campusguard: a token is needed: --token or CG_API_TOKEN")
        return 2, None
    try:
        r = httpx.request(
            method,
            url.rstrip("/") + path,
            json=json,
            params={k: v for k, v in (params or {}).items() if v is not None},
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        )
    except httpx.HTTPError as exc:
        say(f"campusguard: cannot reach the gateway at {url}: {exc}")
        return 2, None
    if r.status_code >= 400:
        try:
            detail = r.json().get("detail", r.text)
        except ValueError:
            detail = r.text
        say(f"campusguard: refused ({r.status_code}): {detail}")
        return (2 if r.status_code == 422 else 1), None
    if "json" not in r.headers.get("content-type", ""):
        return 0, r.text
    return 0, r.json()
