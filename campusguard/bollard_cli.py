"""`campusguard bollard send`: a centre-side tool to operate a bollard and follow the outcome.

It speaks the same contract as the gateway (a command on ``down/command``, outcomes as
``bollard_command`` events on ``up/event``), signed the way the gateway signs when given the
command-signing key (``sign``). Until the consoles with accounts exist, whoever can
publish on the broker can use it: the broker's ACL is the gate (see the security work).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import aiomqtt
from pydantic import ValidationError

from contract import topics
from contract.models import BollardCommandMessage, Event, new_id, utcnow

TERMINAL = ("done", "failed", "refused")


async def send_command(
    host: str,
    port: int,
    *,
    campus: str,
    device: str,
    bollard: int,
    action: str,
    user: str,
    role: str,
    reason: str,
    confirm: Callable[[str], bool],
    wait: float,
    say: Callable[[str], Any],
    sign: Callable[[bytes], bytes] | None = None,
) -> int:
    """Returns the exit code: 0 done, 1 refused/failed/no answer.

    ``sign`` adds the signature to a command's JSON (both the request and the confirm).
    """
    now = utcnow()
    msg = BollardCommandMessage(
        id=new_id(),
        campus=campus,
        device=device,
        bollard=bollard,
        action=action,  # type: ignore[arg-type]
        user=user,
        role=role,
        reason=reason,
        issued_at=now,
        expires_at=now + timedelta(seconds=min(wait, 60)),
    )
    try:
        return await _follow(host, port, msg, action, confirm, wait, say, sign or _unsigned)
    except aiomqtt.MqttError as exc:
        say(f"cannot reach the broker at {host}:{port}: {exc}")
        return 1


def _unsigned(payload: bytes) -> bytes:
    return payload


async def _follow(
    host: str,
    port: int,
    msg: BollardCommandMessage,
    action: str,
    confirm: Callable[[str], bool],
    wait: float,
    say: Callable[[str], Any],
    sign: Callable[[bytes], bytes],
) -> int:
    campus, device, bollard = msg.campus, msg.device, msg.bollard
    async with aiomqtt.Client(host, port) as client:
        await client.subscribe(topics.event_topic(campus), qos=1)
        await client.publish(
            topics.command_topic(campus), sign(msg.model_dump_json().encode()), qos=1
        )
        say(f"sent {action} for {device}/{bollard} (command {msg.id})")
        try:
            async with asyncio.timeout(wait):
                async for m in client.messages:
                    try:
                        ev = Event.model_validate_json(bytes(m.payload))  # type: ignore[arg-type]
                    except ValidationError:
                        continue
                    if ev.kind != "bollard_command" or ev.detail.get("command_id") != msg.id:
                        continue
                    outcome = str(ev.detail.get("outcome"))
                    say(f"  {outcome}: {ev.detail.get('reason') or ''}".rstrip(": "))
                    if outcome == "armed":
                        if not confirm(f"Confirm {action} of {device}/{bollard}?"):
                            say("not confirmed; the armed command lapses")
                            return 1
                        ok = utcnow()
                        confirm_msg = msg.model_copy(
                            update={
                                "step": "confirm",
                                "token": ev.detail.get("token"),
                                "issued_at": ok,
                                "expires_at": ok + timedelta(seconds=30),
                            }
                        )
                        await client.publish(
                            topics.command_topic(campus),
                            sign(confirm_msg.model_dump_json().encode()),
                            qos=1,
                        )
                    elif outcome == "done":
                        position, took = ev.detail.get("position"), ev.detail.get("elapsed_s")
                        say(f"  position {position} confirmed after {took} s")
                        return 0
                    elif outcome in TERMINAL:
                        return 1
        except TimeoutError:
            say(f"no outcome within {wait:.0f} s")
        except aiomqtt.MqttError as exc:
            say(f"lost the broker before the outcome: {exc}")
    return 1
