"""The gateway's clock: synchronisation warnings once per change, and ts never backwards."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from agent.core.buffer import Buffer
from agent.core.clock import ClockWatch, DeviceStamps, adjtimex_synchronized, clock_synchronized
from agent.core.pipeline import Pipeline
from agent.core.record import decode_body
from agent.ops.metrics import Metrics
from drivers.base import Batch, Reading


def test_kernel_answers_through_adjtimex() -> None:
    # Linux always has adjtimex; whether the clock is synchronised depends on the machine.
    assert adjtimex_synchronized() in (True, False)
    assert clock_synchronized() == adjtimex_synchronized()


def test_warns_once_per_change_and_sets_the_gauge(caplog: pytest.LogCaptureFixture) -> None:
    states = iter([False, False, False, True, True, False, None])
    m = Metrics()
    watch = ClockWatch(m.clock_synchronized, probe=lambda: next(states))
    gauge: list[float] = []
    with caplog.at_level(logging.INFO, logger="agent.core.clock"):
        for _ in range(7):
            watch.check()
            gauge.append(m.registry.get_sample_value("edge_agent_clock_synchronized") or 0.0)
    messages = [r.getMessage() for r in caplog.records]
    assert gauge == [0, 0, 0, 1, 1, 0, -1]
    assert [m.split(":")[0] for m in messages] == [
        "system clock is not synchronised",
        "system clock synchronised",
        "system clock is not synchronised",
    ]
    assert watch.synchronized is None


def test_clamp_keeps_each_device_stream_increasing() -> None:
    stamps = DeviceStamps()
    assert stamps.clamp("a", 100.000) == 100.000
    assert stamps.clamp("a", 99.000) == 100.001  # clock stepped back a second
    assert stamps.clamp("a", 100.001) == 100.002  # same millisecond as the last one
    assert stamps.clamp("b", 50.0) == 50.0  # other devices have their own stream
    assert stamps.clamp("a", 101.5) == 101.5  # later than the last: untouched
    assert stamps.clamped("a") == 2 and stamps.clamped("b") == 0 and stamps.clamped() == 2
    m = Metrics()
    m.registry.register(stamps)
    assert (
        'edge_agent_timestamps_clamped_total{device="a"} 2.0'
        in generate_latest(m.registry).decode()
    )


async def test_pipeline_commits_clamped_timestamps(tmp_path: Path) -> None:
    """Every driver's batches pass through the pipeline: the clamp applies to all of them."""
    buffer = Buffer(tmp_path, 2_000_000)
    await buffer.open()
    try:
        pipeline = Pipeline(buffer)
        for ts in (1000.0, 999.5, 999.9, 1000.2):
            await pipeline.submit(Batch("dev", ts, [Reading("t", 1, ts)]))
        rows = await buffer.fetch(0, 10)
        stored = [decode_body(r.body)["ts"] for r in rows]
        assert stored == [1_000_000, 1_000_001, 1_000_002, 1_000_200]
        assert pipeline.stamps.clamped("dev") == 2
    finally:
        await buffer.close()
