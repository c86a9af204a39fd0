"""The poll loop: fixed cadence, overruns skipped, devices isolated, failures visible."""

from __future__ import annotations

import asyncio
import time

from agent.ops.metrics import Metrics
from agent.south.scheduler import DevicePoller, frames
from drivers.base import DeviceBase, DeviceError, Driver, Quality, Reading, TagBase
from tests.sinks import Sink, Status


class FakeDevice(DeviceBase):
    tags: list[TagBase]


class FakeDriver(Driver):
    """A device whose behaviour the test scripts: poll time, connect failures, lost links."""

    name = "fake"
    device_model = FakeDevice

    def __init__(self, device: DeviceBase, poll_time: float = 0.0, fail_connects: int = 0) -> None:
        super().__init__(device)
        self.poll_time = poll_time
        self.fail_connects = fail_connects
        self.connects = 0
        self.poll_starts: list[float] = []
        self.lose_next = False

    async def connect(self) -> None:
        self.connects += 1
        if self.fail_connects > 0:
            self.fail_connects -= 1
            raise DeviceError("connection refused")

    async def poll(self) -> list[Reading]:
        self.poll_starts.append(asyncio.get_running_loop().time())
        await asyncio.sleep(self.poll_time)
        if self.lose_next:
            self.lose_next = False
            raise DeviceError("connection lost")
        return [Reading(t.name, 1, time.time()) for t in self.device.tags]

    async def close(self) -> None:
        pass


def _device(name: str, interval: float) -> FakeDevice:
    return FakeDevice(
        name=name,
        driver="fake",
        poll_interval=interval,
        tags=[TagBase(name="a"), TagBase(name="b")],
    )


def _poller(
    dev: FakeDevice, drv: FakeDriver, sink: Sink, status: Status, m: Metrics
) -> DevicePoller:
    return DevicePoller(dev, drv, sink, status, m, backoff_initial=0.05, backoff_max=0.1)


async def test_cadence_does_not_drift_with_poll_time() -> None:
    m, sink, status = Metrics(), Sink(), Status()
    dev = _device("d1", 0.05)
    drv = FakeDriver(dev, poll_time=0.02)
    task = asyncio.create_task(_poller(dev, drv, sink, status, m).run())
    await sink.until(lambda: len(sink.batches) >= 12)
    task.cancel()
    starts = drv.poll_starts
    offsets = [s - starts[0] - i * 0.05 for i, s in enumerate(starts)]
    # Sleeping `interval` after each poll would drift by 20 ms per cycle (220 ms by now).
    assert max(abs(o) for o in offsets) < 0.03, offsets
    assert m.registry.get_sample_value("edge_agent_poll_overruns_total", {"device": "d1"}) == 0


async def test_overrun_is_counted_and_missed_cycles_are_skipped() -> None:
    m, sink, status = Metrics(), Sink(), Status()
    dev = _device("slow", 0.05)
    drv = FakeDriver(dev, poll_time=0.12)
    task = asyncio.create_task(_poller(dev, drv, sink, status, m).run())
    await sink.until(lambda: len(sink.batches) >= 4)
    task.cancel()
    gaps = [b - a for a, b in zip(drv.poll_starts, drv.poll_starts[1:], strict=False)]
    # Never back to back to catch up: each next poll waits for a tick on the grid.
    assert all(g >= 0.12 for g in gaps), gaps
    overruns = m.registry.get_sample_value("edge_agent_poll_overruns_total", {"device": "slow"})
    assert overruns is not None and overruns >= 3


async def test_unreachable_device_gives_bad_batches_then_recovers() -> None:
    m, sink, status = Metrics(), Sink(), Status()
    dev = _device("d", 0.05)
    drv = FakeDriver(dev, fail_connects=3)
    task = asyncio.create_task(_poller(dev, drv, sink, status, m).run())
    await sink.until(
        lambda: any(r.quality is Quality.GOOD for b in sink.batches for r in b.readings)
    )
    task.cancel()
    bad = [b for b in sink.batches if b.readings[0].quality is Quality.BAD]
    assert len(bad) == 3  # one per failed attempt, spaced by backoff, not one per tick
    assert all(r.reason == "connection refused" for b in bad for r in b.readings)
    assert [b.readings[0].tag for b in bad] == ["a", "a", "a"]
    # One status change each way, not one per attempt.
    assert status.changes == [("d", "down", "connection refused"), ("d", "up", None)]
    assert m.registry.get_sample_value("edge_agent_device_up", {"device": "d"}) == 1
    assert m.registry.get_sample_value("edge_agent_read_errors_total", {"device": "d"}) == 3


async def test_lost_connection_reconnects() -> None:
    m, sink, status = Metrics(), Sink(), Status()
    dev = _device("d", 0.05)
    drv = FakeDriver(dev)
    task = asyncio.create_task(_poller(dev, drv, sink, status, m).run())
    await sink.until(lambda: len(sink.batches) >= 2)
    drv.lose_next = True
    await sink.until(lambda: drv.connects >= 2 and len(sink.batches) >= 5)
    task.cancel()
    reasons = [b.readings[0].reason for b in sink.batches]
    assert "connection lost" in reasons
    assert [c[1] for c in status.changes] == ["up", "down", "up"]


async def test_a_hanging_device_leaves_others_on_cadence() -> None:
    m, sink, status = Metrics(), Sink(), Status()
    good, stuck = _device("good", 0.05), _device("stuck", 0.05)
    good_drv, stuck_drv = FakeDriver(good), FakeDriver(stuck, poll_time=1.0)
    tasks = [
        asyncio.create_task(_poller(good, good_drv, sink, status, m).run()),
        asyncio.create_task(_poller(stuck, stuck_drv, sink, status, m).run()),
    ]
    await sink.until(lambda: sum(b.device == "good" for b in sink.batches) >= 15)
    for t in tasks:
        t.cancel()
    starts = good_drv.poll_starts
    offsets = [s - starts[0] - i * 0.05 for i, s in enumerate(starts)]
    assert max(abs(o) for o in offsets) < 0.03


def test_readings_of_distinct_tags_stay_one_batch_whatever_their_times() -> None:
    readings = [Reading("a", 1, 10.0), Reading("b", 2, 9.0)]
    assert list(frames(readings)) == [readings]
    assert list(frames([])) == []


def test_repeated_tags_become_one_batch_per_event_in_time_order() -> None:
    readings = [
        Reading("a", 2, 2.0),
        Reading("b", 20, 2.0),
        Reading("a", 1, 1.0),
        Reading("b", 10, 1.0),
        Reading("a", 3, 3.0),
    ]
    assert [[(r.tag, r.value) for r in f] for f in frames(readings)] == [
        [("a", 1), ("b", 10)],
        [("a", 2), ("b", 20)],
        [("a", 3)],
    ]


class EventDriver(FakeDriver):
    """Returns the events queued since the last poll: several per tag, or none."""

    def __init__(self, device: DeviceBase) -> None:
        super().__init__(device)
        self.events: list[Reading] = []

    async def poll(self) -> list[Reading]:
        events, self.events = self.events, []
        return events


async def test_a_poll_with_several_events_emits_a_batch_each_and_none_when_quiet() -> None:
    m, sink, status = Metrics(), Sink(), Status()
    dev = _device("counter", 0.02)
    drv = EventDriver(dev)
    poller = _poller(dev, drv, sink, status, m)
    task = asyncio.create_task(poller.run())
    async with asyncio.timeout(2.0):
        while poller.cycles < 3:  # noqa: ASYNC110 - quiet cycles emit nothing to wait on
            await asyncio.sleep(0.01)
    assert sink.batches == []  # quiet intervals publish nothing
    now = time.time()
    drv.events = [Reading("a", n, now + n / 1000) for n in range(5)]
    await sink.until(lambda: len(sink.batches) == 5)
    task.cancel()
    assert [b.readings[0].value for b in sink.batches] == [0, 1, 2, 3, 4]
    assert [b.ts for b in sink.batches] == sorted({b.ts for b in sink.batches})
    assert m.registry.get_sample_value("edge_agent_reads_total", {"device": "counter"}) == 5
    assert status.changes == [("counter", "up", None)]
