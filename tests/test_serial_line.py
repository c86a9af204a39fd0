"""Addressed instruments sharing one serial line, polled by the agent's line task over a pty."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from agent.app.config import load_config
from agent.app.runtime import Agent
from agent.ops.metrics import Metrics
from agent.south.lines import LinePoller
from agent.south.registry import load_drivers
from drivers.base import Driver, Quality
from drivers.serial.config import SerialDevice
from drivers.serial.driver import SerialDriver
from simulators.serial_instruments import OvenBus, OvenSimulator
from tests.sinks import Sink, Status


def oven_device(port: str, address: str, interval: float, timeout: float = 0.3) -> SerialDevice:
    return SerialDevice.model_validate(
        {
            "name": f"oven-{address}",
            "driver": "serial",
            "mode": "poll",
            "poll_interval": interval,
            "connection": {"port": port, "timeout": timeout},
            "framing": {"terminator": r"\r"},
            "requests": [{"send": f"{address}PV?\\r", "match": rf"^{address}PV=(?P<pv>[\d.]+)$"}],
            "tags": [{"name": "temperature", "group": "pv", "type": "float64"}],
        }
    )


@contextlib.asynccontextmanager
async def polling(
    bus: OvenBus, devices: Sequence[SerialDevice], sink: Sink, status: Status, metrics: Metrics
) -> AsyncIterator[LinePoller]:
    drivers: list[tuple[SerialDevice, Driver]] = [(d, SerialDriver(d)) for d in devices]
    line = drivers[0][1].make_line()
    poller = LinePoller(line, drivers, sink, status, metrics, backoff_initial=0.2, backoff_max=0.4)
    task = asyncio.create_task(poller.run())
    try:
        yield poller
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def grid_offsets(times: list[float], interval: float) -> list[float]:
    return [t - times[0] - i * interval for i, t in enumerate(times)]


async def test_three_ovens_on_one_line_keep_their_values_and_cadences() -> None:
    ovens = [
        OvenSimulator(pv=101.5, tau=None, address="01"),
        OvenSimulator(pv=202.5, tau=None, address="02"),
        OvenSimulator(pv=303.5, tau=None, address="03"),
    ]
    intervals = {"01": 0.05, "02": 0.1, "03": 0.15}
    sink, status, metrics = Sink(), Status(), Metrics()
    async with OvenBus(ovens) as bus:
        devices = [oven_device(bus.path, a, i) for a, i in intervals.items()]
        async with polling(bus, devices, sink, status, metrics):
            await sink.until(lambda: len(sink.of("oven-03")) >= 8)
    for address, pv in (("01", 101.5), ("02", 202.5), ("03", 303.5)):
        batches = sink.of(f"oven-{address}")
        assert [(r.tag, r.value) for r in batches[0].readings] == [("temperature", pv)]
        assert all(b.readings[0].value == pv for b in batches)
        requests = bus.requests_to(address)
        offsets = grid_offsets(requests, intervals[address])
        # Each on its own grid despite sharing the line: no drift, no pile-up.
        assert max(abs(o) for o in offsets) < 0.03, (address, offsets)
        overruns = metrics.registry.get_sample_value(
            "edge_agent_poll_overruns_total", {"device": f"oven-{address}"}
        )
        assert overruns == 0
        # One request per batch: no answer was lost to a neighbour's turn.
        assert len(requests) in (len(batches), len(batches) + 1)
    assert status.changes == [(f"oven-{a}", "up", None) for a in ("01", "02", "03")]


async def test_a_dead_unit_costs_the_others_its_timeout_once_per_attempt(
    capsys: pytest.CaptureFixture[str],
) -> None:
    alive = OvenSimulator(pv=55.5, tau=None, address="01")
    dead = OvenSimulator(tau=None, address="02", silent=True)
    sink, status, metrics = Sink(), Status(), Metrics()
    timeout = 0.1
    async with OvenBus([alive, dead]) as bus:
        devices = [
            oven_device(bus.path, "01", 0.05, timeout),
            oven_device(bus.path, "02", 0.05, timeout),
        ]
        async with polling(bus, devices, sink, status, metrics) as poller:
            t0 = time.monotonic()
            await sink.until(lambda: len(sink.of("oven-02")) >= 4)
            elapsed = time.monotonic() - t0
            assert poller.devices[1].state == "down"
    good = sink.of("oven-01")
    assert all(b.readings[0].value == 55.5 for b in good)
    requests = bus.requests_to("01")
    gaps = [b - a for a, b in itertools.pairwise(requests)]
    cost = max(gaps) - 0.05
    # The dead unit holds the line for its timeout, once per attempt (attempts back off): the
    # alive one's poll is that much late then, and on time in between.
    assert cost < timeout + 0.03, gaps
    on_time = [g for g in gaps if abs(g - 0.05) < 0.02]
    assert len(on_time) >= len(gaps) - 2 * len(sink.of("oven-02")), gaps
    dead_attempts = bus.requests_to("02")
    assert len(dead_attempts) == len(sink.of("oven-02"))  # one all-bad batch per attempt
    attempt_gaps = [b - a for a, b in itertools.pairwise(dead_attempts)]
    assert all(g >= 0.2 for g in attempt_gaps), attempt_gaps  # backed off, not every 50 ms
    assert {r.reason for b in sink.of("oven-02") for r in b.readings} == {"timeout"}
    assert status.changes == [("oven-01", "up", None), ("oven-02", "down", "timeout")]
    with capsys.disabled():
        print(
            f"\n[shared line] dead unit (timeout {timeout * 1000:.0f} ms) delays the alive one by "
            f"at most {cost * 1000:.0f} ms per attempt (longest gap {max(gaps) * 1000:.0f} ms, "
            f"interval 50 ms); {len(requests)} polls, {len(on_time)} gaps on time, "
            f"{len(dead_attempts)} attempts in {elapsed:.2f} s"
        )


async def test_a_unit_that_comes_back_rejoins_its_cadence() -> None:
    oven = OvenSimulator(pv=10.0, tau=None, address="07", silent=True)
    sink, status, metrics = Sink(), Status(), Metrics()
    async with OvenBus([oven]) as bus:
        devices = [oven_device(bus.path, "07", 0.05, 0.05)]
        async with polling(bus, devices, sink, status, metrics):
            await sink.until(lambda: len(sink.batches) >= 2)
            oven.silent = False
            await sink.until(
                lambda: sum(b.readings[0].quality is Quality.GOOD for b in sink.batches) >= 5
            )
    assert [c[1] for c in status.changes] == ["down", "up"]
    assert sink.batches[-1].readings[0].value == 10.0
    assert metrics.registry.get_sample_value("edge_agent_device_up", {"device": "oven-07"}) == 1


async def test_an_unplugged_line_takes_its_devices_down_and_back_up(tmp_path: Path) -> None:
    link = tmp_path / "ttyUSB4"
    ovens = [
        OvenSimulator(pv=1.5, tau=None, address="01"),
        OvenSimulator(pv=2.5, tau=None, address="02"),
    ]
    sink, status, metrics = Sink(), Status(), Metrics()
    async with OvenBus(ovens, link=link) as bus:
        devices = [oven_device(str(link), "01", 0.05), oven_device(str(link), "02", 0.05)]
        async with polling(bus, devices, sink, status, metrics):
            await sink.until(lambda: len(status.changes) == 2)
            bus.unplug()
            await sink.until(lambda: len(status.changes) == 4)
            assert {c[1:] for c in status.changes[2:]} == {("down", "port lost")}
            bus.replug()  # a new pty behind the same link: the line reopens it once
            await sink.until(lambda: len(status.changes) == 6)
            await sink.until(
                lambda: [b.readings[0].value for b in sink.batches[-2:]] in ([1.5, 2.5], [2.5, 1.5])
            )
    assert {c[1:] for c in status.changes[4:]} == {("up", None)}


async def test_another_program_on_the_port_is_still_refused() -> None:
    async with OvenBus([OvenSimulator(tau=None, address="01")]) as bus:
        dev = oven_device(bus.path, "01", 0.05)
        first, second = SerialDriver(dev), SerialDriver(dev)
        line = first.make_line()
        first.use_line(line)
        try:
            await first.connect()
            with pytest.raises(Exception) as info:
                await second.connect()  # its own line: the port is locked by the first
            assert getattr(info.value, "reason", None) == "port busy"
        finally:
            await first.close()
            assert line.port is not None  # a driver never closes a shared line
            await line.close()
            await second.close()


def test_the_agent_groups_devices_by_line(tmp_path: Path) -> None:
    config = tmp_path / "agent.yaml"
    config.write_text(
        f"""
agent: {{id: t, data_dir: {tmp_path / "data"}}}
mqtt: {{host: 127.0.0.1}}
metrics: {{listen: null}}
devices:
  - name: oven-1
    driver: serial
    mode: poll
    connection: {{port: /dev/ttyUSB0}}
    requests: [{{send: "01PV?\\r", match: '^01PV=(?P<pv>[\\d.]+)$'}}]
    tags: [{{name: pv, type: float64}}]
  - name: oven-2
    driver: serial
    mode: poll
    connection: {{port: /dev/ttyUSB0}}
    requests: [{{send: "02PV?\\r", match: '^02PV=(?P<pv>[\\d.]+)$'}}]
    tags: [{{name: pv, type: float64}}]
  - name: scale-1
    driver: serial
    connection: {{port: /dev/ttyUSB1}}
    match: '^(?P<w>[\\d.]+)$'
    tags: [{{name: w, type: float64}}]
""",
        encoding="utf-8",
    )
    agent = Agent(load_config(config, load_drivers()))
    assert [p.device.name for p in agent.pollers] == ["scale-1"]
    assert [[d.device.name for d in line.devices] for line in agent.lines] == [["oven-1", "oven-2"]]
    assert agent.lines[0].line.key == "/dev/ttyUSB0"
    assert [p.device.name for p in agent.polled] == ["scale-1", "oven-1", "oven-2"]
    oven = agent.polled[2].driver
    assert isinstance(oven, SerialDriver)
    oven.frame_errors["timeout"] += 4
    assert (
        agent.metrics.registry.get_sample_value(
            "edge_agent_driver_errors_total", {"device": "oven-2", "kind": "timeout"}
        )
        == 4
    )
