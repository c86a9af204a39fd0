"""The gateway's ``health`` document (INTERFACES.md, "Fleet") and the check after an apply.

Built on the event loop from what the status page already reads (the status board, the buffer's
per-destination backlog, the clock watch), so it costs a few dictionary lookups.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from agent.app.config.models import FleetHealthCheck

if TYPE_CHECKING:
    from agent.app.runtime import Agent

#: How often the check after an apply looks again.
CHECK_STEP = 0.1


@dataclass(frozen=True)
class InForce:
    """The config the gateway runs: a pushed version, or its own file (version 0)."""

    version: int
    hash: str
    source: str  # "fleet" or "file"


def health_doc(agent: Agent, config: InForce) -> dict[str, Any]:
    now = time.time()
    devices: dict[str, dict[str, Any]] = {}
    for polled in agent.polled:
        view = agent.board.devices.get(polled.device.name)
        state = view.state if view is not None else None
        reason = view.reason if view is not None else None
        if state != "up":
            reason = reason or "not polled yet"
        devices[polled.device.name] = {"state": "up" if state == "up" else "down", "reason": reason}
    stats = agent.buffer.stats() if agent.buffer_open else None
    outputs: dict[str, dict[str, Any]] = {}
    for name, dest in agent.destinations.items():
        share = (stats.outputs or {}).get(name) if stats is not None else None
        oldest = share.oldest_created if share is not None else None
        outputs[name] = {
            "connected": dest.publisher.connected.is_set(),
            "backlog": share.batches if share is not None else 0,
            "oldest_ms": int((now - oldest) * 1000) if oldest is not None else 0,
        }
    ok = all(d["state"] == "up" for d in devices.values()) and all(
        o["connected"] for o in outputs.values()
    )
    return {
        "agent": agent.config.agent.id,
        "version": agent.version,
        "uptime_s": round(now - agent.started_at, 1) if agent.started_at else 0.0,
        "config": {"version": config.version, "hash": config.hash, "source": config.source},
        "state": "ok" if ok else "degraded",
        "devices": devices,
        "outputs": outputs,
        "clock_synchronized": agent.clock.synchronized,
        "ts": int(now * 1000),
    }


def change_key(doc: dict[str, Any]) -> Any:
    """What makes a health document worth sending before its interval: a device or a
    destination changing state, another config, the clock (not the backlog's every batch)."""
    return (
        doc["config"],
        {n: d["state"] for n, d in doc["devices"].items()},
        {n: o["connected"] for n, o in doc["outputs"].items()},
        doc["clock_synchronized"],
    )


def was_up(agent: Agent) -> set[str]:
    """Devices up now (before an apply)."""
    return {n for n, v in agent.board.devices.items() if v.state == "up"}


async def check_health(agent: Agent, before: Collection[str], rule: FleetHealthCheck) -> str | None:
    """None when, within ``rule.timeout``, every device of ``before`` the new config still has
    is up again and every destination is connected; else what failed, for the ``rolled_back``
    state. "Up" is asked of the poller running now: a device the apply restarted has a new one,
    which says up only after a poll of the new settings succeeded."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + rule.timeout
    while True:
        problems = _problems(agent, before, rule)
        if not problems:
            return None
        if loop.time() >= deadline:
            return f"health check failed after {rule.timeout:g} s: " + "; ".join(problems)
        await asyncio.sleep(CHECK_STEP)


def _problems(agent: Agent, before: Collection[str], rule: FleetHealthCheck) -> list[str]:
    problems = []
    if rule.devices:
        for polled in agent.polled:
            name = polled.device.name
            if name in before and polled.state != "up":
                view = agent.board.devices.get(name)
                why = view.reason if view is not None and view.state == "down" else None
                problems.append(f"device {name} down ({why or 'not up again'})")
    if rule.destinations:
        for name, dest in agent.destinations.items():
            if not dest.publisher.connected.is_set():
                problems.append(f"destination {name} not connected")
    return problems
