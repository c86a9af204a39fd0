"""Pieces of the fleet tests: a gateway's config, pushes signed as the operator signs them, and
a watcher of the retained ``config/state`` and ``health`` topics."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path
from typing import Any

from agent.app.fleet.sign import signature
from simulators.modbus_map import PRESS_POINTS
from tests.brokers import Received, Subscriber
from tests.e2e import AGENT_BIN, local_mqtt, modbus_device

KEY = "fleet-test-key-7f3a9c"
KEY_ENV = "EDGE_AGENT_FLEET_KEY"


def device(name: str, port: int, unit: int = 1, every: str = "200ms") -> dict[str, Any]:
    """A small device of the Modbus simulator on ``port``, as a push or a local file has it."""
    entry = modbus_device(name, port, unit, PRESS_POINTS[:3], every)
    entry["driver"] = "modbus"
    entry["connection"]["timeout"] = "300ms"
    return entry


def gateway_config(
    path: Path,
    gw: str,
    broker_port: int,
    devices: list[dict[str, Any]],
    *,
    timeout: str = "3s",
    interval: str = "1s",
    **fleet: Any,
) -> Path:
    doc = {
        "agent": {"id": gw, "data_dir": str(path.parent / f"data-{gw}")},
        "mqtt": local_mqtt(broker_port),
        "buffer": {"max_size": "4MB"},
        "metrics": {"listen": None},
        "devices": devices,
        "fleet": {
            "enabled": True,
            "key_env": KEY_ENV,
            "health_interval": interval,
            "health_check": {"timeout": timeout},
            **fleet,
        },
    }
    path.write_text(json.dumps(doc, indent=1))
    return path


def push(version: int, text: str, push_id: str = "t", key: str = KEY) -> bytes:
    sig = signature(key.encode(), version, text)
    return json.dumps({"id": push_id, "version": version, "yaml": text, "sig": sig}).encode()


def sections(**data: Any) -> str:
    """A pushed file (JSON is YAML), one key a line so positions are predictable."""
    return (
        "{\n" + ",\n".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in data.items()) + "\n}\n"
    )


def watcher(port: int, name: str) -> Subscriber:
    return Subscriber(
        port, ["edge/+/config/state", "edge/+/health", "edge/+/config/current"], client_id=name
    ).start()


def states(messages: list[Received], gw: str) -> list[dict[str, Any]]:
    return [m.json() for m in messages if m.topic == f"edge/{gw}/config/state" and m.payload]


def health(messages: list[Received], gw: str) -> list[dict[str, Any]]:
    return [m.json() for m in messages if m.topic == f"edge/{gw}/health" and m.payload]


def state_of(messages: list[Received], gw: str, push_id: str) -> dict[str, Any] | None:
    found = [s for s in states(messages, gw) if s.get("id") == push_id]
    return found[-1] if found else None


async def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``edge-agent ARGS``, as the operator runs it (on a thread: the simulators the gateways
    poll run on the test's event loop and must keep answering)."""
    return await asyncio.to_thread(_run, list(args), timeout)


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(AGENT_BIN), *args], capture_output=True, text=True, timeout=timeout, check=False
    )
