"""Shared pieces of the end-to-end tests: configs built from the simulator's map, an agent rig."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from agent.config import load_config
from agent.drivers import load_drivers
from agent.runtime import Agent
from simulators.modbus_map import POINTS, PRESS_POINTS, TYPE_TEST_POINTS, Point


def every_type_tags() -> list[dict[str, Any]]:
    """Every type-test point of both register tables and both bit tables, plus the press."""
    return [p.tag() for p in TYPE_TEST_POINTS + PRESS_POINTS]


def write_config(
    path: Path,
    *,
    broker_port: int,
    modbus_port: int,
    devices: list[dict[str, Any]],
    metrics: str | None = None,
    max_inflight: int = 64,
) -> Path:
    """A config in the contract's shape. JSON is valid YAML, which keeps this simple."""
    doc = {
        "agent": {"id": "test-gw", "data_dir": str(path.parent / "data")},
        "mqtt": {
            "host": "127.0.0.1",
            "port": broker_port,
            "reconnect_min": "50ms",
            "reconnect_max": "500ms",
            "keepalive": 5,
            "max_inflight": max_inflight,
        },
        "buffer": {"max_size": "16MB"},
        "metrics": {"listen": metrics},
        "devices": [
            {
                "driver": "modbus",
                "connection": {"host": "127.0.0.1", "port": modbus_port, "timeout": "300ms"},
                **d,
            }
            for d in devices
        ],
    }
    path.write_text(json.dumps(doc, indent=2))
    return path


class AgentRig:
    """An agent running in this test's event loop, built exactly as ``edge-agent run`` builds it."""

    def __init__(self, config_path: Path) -> None:
        self.config = load_config(config_path, load_drivers(), resolve_secrets=True)
        self.agent = Agent(self.config)

    async def __aenter__(self) -> Agent:
        await self.agent.start()
        return self.agent

    async def __aexit__(self, *exc: object) -> None:
        await self.agent.stop()


async def until(predicate: Any, timeout: float = 10.0, step: float = 0.02) -> None:
    """Wait for a condition on in-process state (metrics, pollers)."""
    async with asyncio.timeout(timeout):
        while not predicate():  # noqa: ASYNC110 - polling in-process state that has no event
            await asyncio.sleep(step)


def point(name: str) -> Point:
    return POINTS[name]
