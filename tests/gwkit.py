"""Building blocks for gateway and end-to-end tests: configs pointing at real local peers."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiomqtt

from contract import topics
from contract.config import GatewayConfig, parse_config
from contract.models import Event, new_id, utcnow
from gateway.store.db import make_engine, migrate
from gateway.store.repo import Store

CAMPUS = "test-campus"
ACCOUNT = "1234"


def gateway_config(
    tmp: Path,
    broker_port: int,
    police_port: int | None,
    *,
    backup_port: int | None = None,
    transport: str = "tcp",
    key_hex: str | None = None,
    supervision: float = 0,
    share_group: str | None = "cg-gateway",
    http: bool = False,
    db_url: str | None = None,
    **dc09: Any,
) -> GatewayConfig:
    data: dict[str, Any] = {
        "gateway": {
            "id": "gw-test",
            "data_dir": str(tmp / "gw"),
            "share_group": share_group,
            "http": {"host": "127.0.0.1", "port": 0} if http else None,
        },
        "mqtt": {"host": "127.0.0.1", "port": broker_port, "keepalive": 5},
        "database": {"url": db_url or f"sqlite+aiosqlite:///{tmp}/gw/campusguard.db"},
        "campuses": [
            {
                "id": CAMPUS,
                "name": "Test school",
                "account": ACCOUNT,
                "geo": {"lat": 39.7, "lon": 116.3},
            }
        ],
    }
    if police_port is not None:
        data["dc09"] = {
            "primary": {"host": "127.0.0.1", "port": police_port, "transport": transport},
            "ack_timeout": 0.5,
            "attempts": 2,
            "supervision_interval": supervision,
            **dc09,
        }
        if backup_port is not None:
            data["dc09"]["backup"] = {
                "host": "127.0.0.1",
                "port": backup_port,
                "transport": transport,
            }
        if key_hex is not None:
            data["dc09"]["key"] = key_hex
    return parse_config(data, GatewayConfig, "test")


def make_event(**kw: Any) -> Event:
    base: dict[str, Any] = {
        "id": new_id(),
        "campus": CAMPUS,
        "edge": "edge-1",
        "seq": 1,
        "ts": utcnow(),
        "kind": "panic",
        "severity": "critical",
        "device": "di-1",
        "point": "btn-1",
        "zone": "gate",
        "zone_no": 15,
        "location": "south gate",
        "text": "panic button pressed",
    }
    base.update(kw)
    return Event.model_validate(base)


def client(port: int, ident: str | None = None, **kw: Any) -> aiomqtt.Client:
    return aiomqtt.Client("127.0.0.1", port, identifier=ident, **kw)


async def publish_event(c: aiomqtt.Client, event: Event) -> None:
    await c.publish(topics.event_topic(event.campus), event.model_dump_json(), qos=1)


def status_json(payload: Any) -> dict[str, Any]:
    return json.loads(bytes(payload))


@asynccontextmanager
async def store_at(url: str) -> AsyncIterator[Store]:
    """The gateway's store on a fresh, migrated database at ``url``."""
    engine = make_engine(url)
    await migrate(engine)
    try:
        yield Store(engine)
    finally:
        await engine.dispose()
