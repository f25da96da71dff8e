"""`campusguard selftest`: run a self-test through the gateway API and report every hop.

Exit code 0 only when every hop confirmed; 1 when a hop failed (named) or the time ran out;
2 when the gateway could not be asked at all (unreachable, bad token, unknown campus).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx

POLL_S = 0.1


def _fmt(hop: dict[str, Any]) -> str:
    ms = hop.get("ms")
    when = "" if ms is None else f"+{ms:9.1f} ms"
    return f"  {hop['hop']:<15} {when:>13}  {hop.get('at') or ''}"


def run_selftest(
    gateway: str,
    token: str,
    *,
    campus: str,
    device: str,
    mode: str,
    timeout: float,
    say: Callable[[str], Any],
    client: httpx.Client | None = None,
) -> int:
    own = client is None
    http = client or httpx.Client(base_url=gateway.rstrip("/"), timeout=10)
    headers = {"Authorization": f"Bearer {token}"}
    try:
        try:
            r = http.post(
                "/api/selftest",
                json={"campus": campus, "device": device, "mode": mode, "timeout": timeout},
                headers=headers,
            )
        except httpx.HTTPError as exc:
            say(f"cannot reach the gateway at {gateway}: {exc}")
            return 2
        if r.status_code != 202:
            say(f"the gateway refused the self-test: {r.status_code} {r.text}")
            return 2
        test = r.json()
        say(f"self-test {test['id']} of {campus}/{device} ({mode})")
        printed: set[str] = set()
        deadline = time.monotonic() + timeout + 5  # the gateway's own verdict comes first
        while True:
            for hop in test["hops"]:
                if hop["at"] is not None and hop["hop"] not in printed:
                    printed.add(hop["hop"])
                    say(_fmt(hop))
            if test["state"] != "running":
                break
            if time.monotonic() > deadline:
                missing = next(h["hop"] for h in test["hops"] if h["at"] is None)
                say(f"FAILED at {missing}: no answer within {timeout:g} s")
                return 1
            time.sleep(POLL_S)
            try:
                r = http.get(f"/api/selftest/{test['id']}", headers=headers)
                r.raise_for_status()
            except httpx.HTTPError as exc:
                say(f"lost the gateway: {exc}")
                return 1
            test = r.json()
        if test["state"] == "passed":
            last = test["hops"][-1]["ms"]
            say(f"PASSED: every hop confirmed, round trip {last:.1f} ms")
            return 0
        for hop in test["hops"]:
            if hop["at"] is None:
                say(f"  {hop['hop']:<15} {'-':>13}")
        say(f"FAILED at {test['failed_hop']}: {test['detail']}")
        return 1
    finally:
        if own:
            http.close()
