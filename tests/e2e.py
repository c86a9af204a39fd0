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


# -- helpers of the fault and soak tests -----------------------------------------------------------


def expected_value(sim_value: object, p: Point) -> object:
    """What the agent must publish for a simulator value: scaled exactly, in decimal."""
    if p.scale is None:
        return sim_value
    from decimal import Decimal

    return float(Decimal(str(sim_value)) * Decimal(str(p.scale)))


def buffer_state(data_dir: Path) -> tuple[dict[str, int], dict[str, set[int]]]:
    """After the agent stopped: (last seq handed out, seqs still waiting in the buffer) per device.

    Together with what a subscriber received they prove delivery: every seq from 1 to the last
    either reached the broker or is still in the buffer, waiting.
    """
    import sqlite3

    conn = sqlite3.connect(data_dir / "buffer.db")
    try:
        rows = conn.execute("SELECT device, last FROM seqs WHERE kind = 'data'")
        last = {d: int(n) for d, n in rows}
        waiting: dict[str, set[int]] = {}
        for d, s in conn.execute("SELECT device, seq FROM batches WHERE kind = 'data'"):
            waiting.setdefault(d, set()).add(int(s))
        return last, waiting
    finally:
        conn.close()


def delivery_gaps(received: list[int], last: int, waiting: set[int]) -> list[int]:
    """Seqs from 1 to ``last`` neither received nor still buffered: lost data (should be [])."""
    have = set(received) | waiting
    return [s for s in range(1, last + 1) if s not in have]
