"""Shared pieces of the end-to-end tests: configs built from the simulator's map, an agent rig,
the agent as a child process, and the fault tests' proof that nothing was lost."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

from agent.app.config import load_config
from agent.app.runtime import Agent
from agent.south.registry import load_drivers
from simulators.modbus_map import POINTS, PRESS_POINTS, TYPE_TEST_POINTS, Point
from simulators.modbus_tcp import ModbusSimulator
from tests.brokers import Subscriber, data_seqs, free_port

#: The console script of this venv: the agent exactly as an integrator runs it.
AGENT_BIN = Path(sys.executable).parent / "edge-agent"


def every_type_tags() -> list[dict[str, Any]]:
    """Every type-test point of both register tables and both bit tables, plus the press."""
    return [p.tag() for p in TYPE_TEST_POINTS + PRESS_POINTS]


def modbus_device(
    name: str, port: int, unit_id: int, tags: Iterable[Point], poll_interval: str
) -> dict[str, Any]:
    """A device entry for :func:`write_config`: one unit of the simulator on ``port``."""
    return {
        "name": name,
        "poll_interval": poll_interval,
        "connection": {"host": "127.0.0.1", "port": port, "unit_id": unit_id},
        "tags": [p.tag() for p in tags],
    }


def local_mqtt(port: int, **keys: Any) -> dict[str, Any]:
    """The mqtt section of a test config: a local broker, quick reconnects, a short keepalive
    (``keys`` add to it or override it)."""
    return {
        "host": "127.0.0.1",
        "port": port,
        "reconnect_min": "50ms",
        "reconnect_max": "500ms",
        "keepalive": 5,
        **keys,
    }


def write_config(
    path: Path,
    *,
    broker_port: int,
    modbus_port: int,
    devices: list[dict[str, Any]],
    metrics: str | None = None,
    max_inflight: int = 64,
    mqtt: dict[str, Any] | None = None,
) -> Path:
    """A config in the contract's shape. JSON is valid YAML, which keeps this simple.

    ``mqtt`` overrides keys of the mqtt section (a keepalive, credentials...).
    """
    doc = {
        "agent": {"id": "test-gw", "data_dir": str(path.parent / "data")},
        "mqtt": local_mqtt(broker_port, max_inflight=max_inflight, **(mqtt or {})),
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


@pytest.fixture(name="sim")
async def frozen_sim() -> AsyncIterator[ModbusSimulator]:
    """Units 1 and 2 with the physics frozen: every poll must read exactly the simulator's values.

    A fixture named ``sim`` for the modules that import it.
    """
    async with ModbusSimulator(port=free_port(), units=(1, 2), update_interval=None) as simulator:
        yield simulator


def expected_value(sim_value: object, p: Point) -> object:
    """What the agent must publish for a simulator value: scaled exactly, in decimal."""
    if p.scale is None:
        return sim_value
    from decimal import Decimal

    return float(Decimal(str(sim_value)) * Decimal(str(p.scale)))


def buffer_state(data_dir: Path) -> tuple[dict[str, int], dict[str, set[int]]]:
    """After the agent stopped: (last seq handed out, seqs still waiting in the buffer) per device
    (its data stream; its alarm events as ``<device>/event``).

    Together with what a subscriber received they prove delivery: every seq from 1 to the last
    either reached the broker or is still in the buffer, waiting.
    """
    import sqlite3

    def stream(device: str, kind: str) -> str:
        return device if kind == "data" else f"{device}/{kind}"

    conn = sqlite3.connect(data_dir / "buffer.db")
    try:
        rows = conn.execute("SELECT device, kind, last FROM seqs")
        last = {stream(d, k): int(n) for d, k, n in rows}
        waiting: dict[str, set[int]] = {}
        for d, k, s in conn.execute("SELECT device, kind, seq FROM batches"):
            waiting.setdefault(stream(d, k), set()).add(int(s))
        return last, waiting
    finally:
        conn.close()


def delivery_gaps(received: list[int], last: int, waiting: set[int]) -> list[int]:
    """Seqs from 1 to ``last`` neither received nor still buffered: lost data (should be [])."""
    have = set(received) | waiting
    return [s for s in range(1, last + 1) if s not in have]


@dataclass(frozen=True)
class Delivery:
    """The buffer's side of the delivery proof, read once the agent stopped.

    Kept after the wait so that the later assertions judge the very ``last`` and ``waiting`` the
    wait was satisfied against, not a second reading.
    """

    last: dict[str, int]
    """Per device, the last seq handed out."""
    waiting: dict[str, set[int]]
    """Per device, the seqs still in the buffer, not yet acknowledged by the broker."""

    @classmethod
    def read(cls, data_dir: Path) -> Delivery:
        return cls(*buffer_state(data_dir))

    def gaps(self, device: str, received: Iterable[int]) -> list[int]:
        """Seqs of ``device`` neither in ``received`` nor still buffered: lost data."""
        return delivery_gaps(list(received), self.last[device], self.waiting.get(device, set()))


async def delivered_or_buffered(
    sub: Subscriber, data_dir: Path, devices: Iterable[str], timeout: float = 20.0
) -> Delivery:
    """Await until ``sub`` received, per device, every seq from 1 to the last handed out that is
    not still waiting in the buffer. The agent must have stopped: the buffer is read once.

    ``sub`` should hold a persistent session: what the broker queued for it while it reconnected
    arrives late, and the wait is for the last of it. A gap still open after ``timeout`` fails
    the test (``AssertionError``).
    """
    delivery = Delivery.read(data_dir)
    names = tuple(devices)
    await sub.wait_for(
        lambda m: all(not delivery.gaps(d, data_seqs(m, d)) for d in names), timeout=timeout
    )
    return delivery


# -- helpers of the tests that run the agent as a process -----------------------------------------


@contextmanager
def agent_process(
    cfg: Path, log: Path, log_level: str = "warning"
) -> Iterator[subprocess.Popen[bytes]]:
    """``edge-agent run`` in a child process, its output in the file ``log`` (a pipe nobody reads
    would fill and block the agent); killed at the end if it is still running."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(AGENT_BIN), "run", "-c", str(cfg), "--log-level", log_level],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


async def rss_at_marks(
    proc: subprocess.Popen[bytes],
    count: Callable[[], int],
    marks: Sequence[int] = (2000, 4000, 6000, 8000, 10_000),
) -> list[float]:
    """The agent process's RSS in MB each time ``count()`` reaches the next of ``marks``: memory
    over a stream of frames, to prove it stays flat after warm-up. Fails if the agent died."""
    agent = psutil.Process(proc.pid)
    rss: list[float] = []
    for mark in marks:
        await until(lambda m=mark: count() >= m or proc.poll() is not None, 60)
        assert proc.poll() is None, "the agent died"
        rss.append(agent.memory_info().rss / 1e6)
    return rss


def scrape_metric(port: int, name: str) -> float:
    """Sum of a metric over its labels, scraped from the agent's /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name + "{") or line.startswith(name + " ")
    )
