"""Edge configs for tests: a campus whose DI module is the simulator."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from contract.config import EdgeConfig, parse_config
from tests.gwkit import CAMPUS


def edge_config(
    tmp: Path,
    broker_port: int,
    modbus_port: int,
    *,
    mode: str = "latch",
    poll: float = 0.05,
    timeout: float = 0.3,
    inputs: list[dict[str, Any]] | None = None,
    profile: str = "adam-6050",
) -> EdgeConfig:
    return parse_config(
        {
            "campus": {"id": CAMPUS, "name": "Test school", "geo": {"lat": 39.7, "lon": 116.3}},
            "edge": {"id": "edge-1", "data_dir": str(tmp / "edge"), "status_interval": 1},
            "mqtt": {"host": "127.0.0.1", "port": broker_port, "keepalive": 5},
            "zones": [{"id": "gate", "name": "South gate", "location": "south gate"}],
            "devices": [
                {
                    "id": "di-1",
                    "profile": profile,
                    "host": "127.0.0.1",
                    "port": modbus_port,
                    "poll_interval": poll,
                    "timeout": timeout,
                    "zone": "gate",
                    "inputs": inputs
                    or [
                        {
                            "channel": 0,
                            "id": "btn-guard",
                            "kind": "panic",
                            "mode": mode,
                            "alarm_zone": 1,
                        },
                        {
                            "channel": 1,
                            "id": "btn-gate",
                            "kind": "panic",
                            "mode": mode,
                            "alarm_zone": 2,
                        },
                    ],
                }
            ],
        },
        EdgeConfig,
        "test-edge",
    )
