"""Southbound faults: one device misbehaves in every way a field device does, the others keep time.

A Modbus device behind ``FaultProxy`` goes silent, answers late, resets its connections, sends
truncated and garbage frames and returns exception codes, one fault after another. Meanwhile five
healthy devices poll every second on the same event loop. Proof: the healthy devices' cycle
jitter stays under 50 ms at p99, the faulty device is reported (status down with the reason, bad
quality with the reason, read errors counted) and comes back by itself, nobody's seq has a gap,
and every good value equals the simulator's.
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.app.runtime import Agent
from simulators.modbus_map import PRESS_POINTS, Point
from simulators.modbus_tcp import ModbusSimulator
from tests.brokers import Mosquitto, Received, Subscriber, data_seqs
from tests.e2e import (
    AgentRig,
    delivered_or_buffered,
    expected_value,
    frozen_sim,  # noqa: F401 - the ``sim`` fixture
    modbus_device,
    until,
    write_config,
)
from tests.faultproxy import FaultProxy

HEALTHY = tuple(f"ok{i}" for i in range(1, 6))
POINT_SET: tuple[Point, ...] = PRESS_POINTS


def _statuses(messages: list[Received], device: str) -> list[dict[str, object]]:
    return [m.json() for m in messages if m.topic == f"edge/test-gw/{device}/status"]


def _last_state(sub: Subscriber, device: str) -> tuple[str, str] | None:
    states = _statuses(sub.snapshot(), device)
    return (str(states[-1]["state"]), str(states[-1]["reason"])) if states else None


def _data(messages: list[Received], device: str) -> list[dict[str, object]]:
    return [m.json() for m in messages if m.topic == f"edge/test-gw/{device}/data"]


@pytest.mark.slow
async def test_one_device_in_every_fault_while_the_others_keep_their_cadence(
    tmp_path: Path, broker: Mosquitto, sim: ModbusSimulator
) -> None:
    sub = Subscriber(broker.port, ["edge/test-gw/#"], client_id="device-faults").start()
    async with FaultProxy(sim.port) as proxy:
        devices = [modbus_device(name, sim.port, 1, POINT_SET, "1s") for name in HEALTHY]
        devices.append(
            {
                "name": "bad",
                "poll_interval": "200ms",
                "connection": {
                    "host": "127.0.0.1",
                    "port": proxy.port,
                    "unit_id": 2,
                    "timeout": "300ms",
                },
                "tags": [p.tag() for p in POINT_SET],
            }
        )
        cfg = write_config(
            tmp_path / "c.yaml", broker_port=broker.port, modbus_port=sim.port, devices=devices
        )
        seen_down: list[str] = []

        async def fault(start: Callable[[], None], end: Callable[[], None], down: bool) -> None:
            errors = _errors(agent)
            start()
            if down:
                await until(lambda: (_last_state(sub, "bad") or ("", ""))[0] == "down", 15)
                seen_down.append((_last_state(sub, "bad") or ("", ""))[1])
            await until(lambda: _errors(agent) >= errors + 3, 15)
            end()
            await until(lambda: _last_state(sub, "bad") == ("up", "ok"), 15)
            await until(lambda: _good_batches_since(sub, "bad") >= 2, 15)

        async with AgentRig(cfg) as agent:
            await until(lambda: _last_state(sub, "bad") == ("up", "ok"), 10)
            await fault(lambda: sim.set_silent(2), lambda: sim.set_silent(2, False), True)
            await fault(lambda: sim.set_delay(2, 0.6), lambda: sim.set_delay(2, 0), True)
            await fault(lambda: proxy.set("reset"), lambda: proxy.set("pass"), True)
            await fault(lambda: proxy.set("cut", "down", after=5), lambda: proxy.set("pass"), True)
            await fault(lambda: proxy.set("garbage", "down"), lambda: proxy.set("pass"), True)
            await fault(
                lambda: sim.set_exception(2, "holding", 0, 100, 4),
                lambda: sim.clear_exceptions(2),
                False,
            )
        delivery = await delivered_or_buffered(sub, tmp_path / "data", (*HEALTHY, "bad"))
    sub.stop()
    messages = sub.snapshot()

    # The faulty device was reported with the reason, in the data and in its status.
    assert seen_down[0] == "timeout" and seen_down[1] == "timeout", seen_down
    assert all(seen_down), seen_down
    reasons = {q for doc in _data(messages, "bad") for q in dict(doc.get("quality", {})).values()}  # type: ignore[call-overload]
    assert "bad: timeout" in reasons, reasons
    assert "bad: exception 4 (server device failure)" in reasons, reasons

    # Every good value of every device is the simulator's, and nobody's seq has a gap.
    expected = {p.name: expected_value(sim.value(1, p.name), p) for p in POINT_SET}
    expected_bad = {p.name: expected_value(sim.value(2, p.name), p) for p in POINT_SET}
    for device in (*HEALTHY, "bad"):
        for doc in _data(messages, device):
            if "quality" not in doc:
                assert doc["values"] == (expected_bad if device == "bad" else expected)
        seqs = data_seqs(messages, device)
        assert delivery.gaps(device, seqs) == []

    # The healthy devices kept their cadence: p99 of |interval - 1 s| under 50 ms.
    jitter: list[float] = []
    for device in HEALTHY:
        docs = _data(messages, device)
        assert all("quality" not in d for d in docs), device
        ts = sorted({int(str(d["ts"])) for d in docs})
        jitter += [abs(b - a - 1000) for a, b in itertools.pairwise(ts)]
    jitter.sort()
    p99 = jitter[max(0, int(len(jitter) * 0.99) - 1)]
    print(
        f"healthy devices: {len(jitter)} intervals, jitter p50 {statistics.median(jitter):.0f} ms"
        f" p99 {p99:.0f} ms max {jitter[-1]:.0f} ms; faulty device down reasons: {seen_down}"
    )
    assert len(jitter) >= 40
    assert p99 < 50, jitter[-10:]


def _errors(agent: Agent) -> float:
    value = agent.metrics.registry.get_sample_value(
        "edge_agent_read_errors_total", {"device": "bad"}
    )
    return value or 0.0


def _good_batches_since(sub: Subscriber, device: str) -> int:
    """Good batches after the last bad one."""
    n = 0
    for doc in reversed(_data(sub.snapshot(), device)):
        if "quality" in doc:
            break
        n += 1
    return n
