"""The serial driver over real pseudo-terminals, against the serial instrument simulators."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from agent.app.config import load_config
from agent.core.buffer import Buffer
from agent.core.pipeline import Pipeline
from agent.ops.metrics import DriverErrors, Metrics
from agent.south.registry import load_drivers
from agent.south.scheduler import DevicePoller
from drivers.base import Batch, DeviceError, Quality, Reading
from drivers.serial.config import SerialDevice
from drivers.serial.driver import SerialDriver
from simulators.serial_instruments import (
    NoisySimulator,
    OvenSimulator,
    PtyInstrument,
    ScaleSimulator,
)

SCALE_MATCH = r"^(?P<stable>ST|US),GS,\s*(?P<weight>[+-]?\d+\.\d+)\s*kg$"
SCALE_TAGS = [
    {"name": "weight", "type": "float64", "unit": "kg"},
    {"name": "stable", "type": "bool", "true_value": "ST"},
]
COUNTER = {
    "framing": {"start": r"\x02", "end": r"\x03"},
    "checksum": {"kind": "xor"},
    "match": r"^C=(?P<count>\d{6})$",
    "tags": [{"name": "parts", "group": "count", "type": "int64"}],
}


def device(port: str, **fields: Any) -> SerialDevice:
    base: dict[str, Any] = {
        "name": "scale-1",
        "driver": "serial",
        "connection": {"port": port, "timeout": 0.3},
        "match": SCALE_MATCH,
        "tags": SCALE_TAGS,
    }
    return SerialDevice.model_validate({**base, **fields})


def values(readings: list[Reading]) -> dict[str, Any]:
    """Tag to value, or to ``bad: reason``."""
    return {r.tag: r.value if r.quality is Quality.GOOD else f"bad: {r.reason}" for r in readings}


async def until(condition: Callable[[], bool], timeout: float = 2.0) -> None:
    """Wait for a condition, not for a guessed time.

    The kernel hands pty bytes to the reader a moment after the simulator wrote them, with no
    in-process event to await, so the condition is re-checked every few milliseconds.
    """
    async with asyncio.timeout(timeout):
        while not condition():  # noqa: ASYNC110 - the kernel, not a task, makes it true
            await asyncio.sleep(0.005)


@pytest.fixture
async def scale() -> AsyncIterator[ScaleSimulator]:
    async with ScaleSimulator(rate=None) as sim:
        yield sim


@pytest.fixture
async def noisy() -> AsyncIterator[NoisySimulator]:
    async with NoisySimulator(rate=None) as sim:
        yield sim


@pytest.fixture
async def driver_for() -> AsyncIterator[Callable[..., Any]]:
    """Connected drivers, closed at the end of the test."""
    made: list[SerialDriver] = []

    async def make(port: str, **fields: Any) -> SerialDriver:
        driver = SerialDriver(device(port, **fields))
        await driver.connect()
        made.append(driver)
        return driver

    yield make
    for driver in made:
        await driver.close()


# -- stream mode --------------------------------------------------------------------------------


async def test_stream_exact_values_latest_per_interval(
    scale: ScaleSimulator, driver_for: Any
) -> None:
    driver = await driver_for(scale.path)
    scale.send(12.34, stable=True)
    await until(lambda: driver.frames_read == 1)
    assert values(await driver.poll()) == {"weight": 12.34, "stable": True}
    # Two frames in one read: the interval's latest value wins.
    scale.write(scale.line(1.5, False) + scale.line(-2.25, False))
    await until(lambda: driver.frames_read == 3)
    readings = await driver.poll()
    assert values(readings) == {"weight": -2.25, "stable": False}
    assert all(r.ts > 0 for r in readings)


async def test_stream_interval_without_a_frame_is_a_timeout(
    scale: ScaleSimulator, driver_for: Any
) -> None:
    driver = await driver_for(scale.path)
    assert values(await driver.poll()) == {"weight": "bad: timeout", "stable": "bad: timeout"}


async def test_stream_no_match_and_frame_too_long(scale: ScaleSimulator, driver_for: Any) -> None:
    driver = await driver_for(scale.path, max_frame=24)
    scale.write(b"hello\r\n")
    await until(lambda: driver.frames_read == 1)
    assert values(await driver.poll()) == {"weight": "bad: no match", "stable": "bad: no match"}
    scale.write(b"ST,GS,+0012.34 kg and a lot more after it\r\n")
    await until(lambda: driver.frame_errors["frame too long"] == 1)
    assert set(values(await driver.poll()).values()) == {"bad: frame too long"}
    scale.send(3.0, stable=True)  # resynchronised on the next frame
    await until(lambda: driver.frames_read == 2)
    assert values(await driver.poll()) == {"weight": 3.0, "stable": True}


async def test_a_good_frame_in_the_interval_outweighs_a_later_bad_one(
    scale: ScaleSimulator, driver_for: Any
) -> None:
    driver = await driver_for(scale.path)
    scale.write(scale.line(7.5, True) + b"garbage\r\n")
    await until(lambda: driver.frames_read == 2)
    assert values(await driver.poll()) == {"weight": 7.5, "stable": True}


async def test_every_frame_returns_every_frame_since_the_last_poll(
    scale: ScaleSimulator, driver_for: Any
) -> None:
    driver = await driver_for(scale.path, every_frame=True)
    scale.write(scale.line(7.5, True) + b"garbage\r\n")
    await until(lambda: driver.frames_read == 2)
    readings = await driver.poll()
    assert [(r.tag, values([r])[r.tag]) for r in readings] == [
        ("weight", 7.5),
        ("stable", True),
        ("weight", "bad: no match"),
        ("stable", "bad: no match"),
    ]
    assert readings[0].ts == readings[1].ts < readings[2].ts == readings[3].ts
    assert await driver.poll() == []  # no event in the interval: nothing, not a timeout


async def test_every_frame_keeps_at_most_max_frames(
    noisy: NoisySimulator, driver_for: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("drivers.serial.driver.MAX_FRAMES", 3)
    driver = await driver_for(noisy.path, **COUNTER, every_frame=True)
    noisy.write(b"".join(noisy.frame(n) for n in range(1, 6)))
    await until(lambda: driver.frames_read == 5)
    assert [r.value for r in await driver.poll()] == [3, 4, 5]  # the newest kept
    assert driver.error_counts() == {"overflow": 2}


async def test_every_frame_through_the_scheduler_gives_a_batch_per_frame(
    noisy: NoisySimulator, tmp_path: Path
) -> None:
    buffer = Buffer(tmp_path / "data", 10_000_000, Metrics())
    await buffer.open()
    pipeline = Pipeline(buffer)
    batches: list[Batch] = []
    committed = asyncio.Event()

    async def sink(batch: Batch) -> None:
        await pipeline.submit(batch)
        batches.append(batch)
        committed.set()

    dev = device(noisy.path, name="counter-1", poll_interval=0.2, every_frame=True, **COUNTER)
    poller = DevicePoller(dev, SerialDriver(dev), sink, _Status(), Metrics())
    task = asyncio.create_task(poller.run())
    try:
        await until(lambda: poller.cycles >= 1)  # connected and polling
        events = 25
        for n in range(1, events + 1):
            await noisy.emit(n)  # a burst of events between two polls
        async with asyncio.timeout(2.0):
            while len(batches) < events:
                committed.clear()
                await committed.wait()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await buffer.close()
    assert [b.readings[0].value for b in batches] == list(range(1, events + 1))
    assert all(len(b.readings) == 1 for b in batches)
    seqs = [b.seq for b in batches]
    assert seqs == list(range(seqs[0], seqs[0] + events))  # contiguous: nothing dropped
    assert len({b.ts for b in batches}) == events


async def test_start_end_framing_with_checksum_split_and_noise(
    noisy: NoisySimulator, driver_for: Any
) -> None:
    driver = await driver_for(noisy.path, **COUNTER)
    await noisy.emit(123, split_at=3)  # a frame split across reads
    await until(lambda: driver.frames_read == 1)
    assert values(await driver.poll()) == {"parts": 123}
    await noisy.emit(124, garbage=b"\xff#?AB")  # noise between frames
    await until(lambda: driver.frames_read == 2)
    assert values(await driver.poll()) == {"parts": 124}
    assert driver.frame_errors["noise"] == 1


async def test_bad_checksum_turns_tags_bad_and_is_logged_once(
    noisy: NoisySimulator, driver_for: Any, caplog: pytest.LogCaptureFixture
) -> None:
    driver = await driver_for(noisy.path, **COUNTER)
    with caplog.at_level(logging.WARNING, logger="drivers.serial.driver"):
        await noisy.emit(5, bad_checksum=True)
        await noisy.emit(6, bad_checksum=True)
        await until(lambda: driver.frames_read == 2)
        assert values(await driver.poll()) == {"parts": "bad: checksum"}
    assert driver.frame_errors["checksum"] == 2
    logged = [r for r in caplog.records if "checksum" in r.getMessage()]
    assert len(logged) == 1
    assert getattr(logged[0], "device", None) == "scale-1"
    assert "\\x02" not in logged[0].getMessage()  # the payload, markers excluded
    assert "C=000006" not in logged[0].getMessage()  # the first one is the sample
    assert "C=000005" in logged[0].getMessage()


async def test_frame_errors_are_exported_by_kind_through_the_registry(
    noisy: NoisySimulator, driver_for: Any
) -> None:
    driver = await driver_for(noisy.path, **COUNTER)
    metrics = Metrics()
    metrics.registry.register(DriverErrors({"counter-1": driver}))
    await noisy.emit(5, bad_checksum=True)
    await noisy.emit(6, bad_checksum=True, garbage=b"#?")
    await until(lambda: driver.frames_read == 2)

    def errors(kind: str) -> float | None:
        return metrics.registry.get_sample_value(
            "edge_agent_driver_errors_total", {"device": "counter-1", "kind": kind}
        )

    assert (errors("checksum"), errors("noise"), errors("timeout")) == (2, 1, None)
    await noisy.emit(7, bad_checksum=True)
    await until(lambda: driver.frames_read == 3)
    assert errors("checksum") == 3  # read at scrape time, not copied once


async def test_fixed_length_framing(driver_for: Any) -> None:
    async with PtyInstrument() as sim:
        driver = await driver_for(
            sim.path,
            framing={"length": 10},
            match=r"^W(?P<weight>[+-]\d{5}\.\d{2})$",
            tags=[{"name": "weight", "type": "float64"}],
        )
        sim.write(b"W+00012.34W-00")
        await until(lambda: driver.frames_read == 1)
        assert values(await driver.poll()) == {"weight": 12.34}
        sim.write(b"001.50")
        await until(lambda: driver.frames_read == 2)
        assert values(await driver.poll()) == {"weight": -1.5}


async def test_fixed_length_with_start_marker_resynchronises(driver_for: Any) -> None:
    async with PtyInstrument() as sim:
        driver = await driver_for(
            sim.path,
            framing={"start": "@", "length": 5},
            match=r"^(?P<n>\d{4})$",
            tags=[{"name": "n", "type": "int64"}],
        )
        sim.write(b"12@0042@77@0099")
        await until(lambda: driver.frames_read == 2)
        assert values(await driver.poll()) == {"n": 99}
        assert driver.frame_errors["noise"] == 2


@pytest.mark.slow
async def test_noisy_line_at_speed_never_yields_a_wrong_value(driver_for: Any) -> None:
    async with NoisySimulator(
        rate=200, garbage_rate=0.3, split_rate=0.3, bad_checksum_rate=0.2, seed=7
    ) as sim:
        driver = await driver_for(sim.path, **COUNTER)
        seen: list[int] = []
        for _ in range(10):
            await sim.wait_sent(sim.frames_sent + 20)
            await until(lambda: driver.frames_read > 0)
            reading = (await driver.poll())[0]
            if reading.quality is Quality.GOOD:
                assert isinstance(reading.value, int)
                seen.append(reading.value)
    assert len(seen) >= 5
    assert seen == sorted(seen) and seen[-1] <= sim.count
    assert driver.frame_errors["checksum"] > 0 and driver.frame_errors["noise"] > 0


# -- poll mode ----------------------------------------------------------------------------------

OVEN: dict[str, Any] = {
    "name": "oven-ctl",
    "mode": "poll",
    "match": None,
    "framing": {"terminator": r"\r"},
    "requests": [
        {"send": r"PV?\r", "match": r"^PV=(?P<pv>-?\d+(\.\d+)?)$"},
        {"send": "SV?\r", "match": r"^SV=(?P<sv>-?\d+(\.\d+)?)$"},
    ],
    "tags": [
        {"name": "temperature", "group": "pv", "type": "float64"},
        {"name": "setpoint", "group": "sv", "type": "float64"},
    ],
}


async def test_poll_mode_asks_and_parses_exact_values(driver_for: Any) -> None:
    async with OvenSimulator(pv=182.5, sv=180.0, tau=None) as oven:
        driver = await driver_for(oven.path, **OVEN)
        assert values(await driver.poll()) == {"temperature": 182.5, "setpoint": 180.0}
        assert bytes(oven.received) == b"PV?\rSV?\r"
        oven.pv = 183.1
        assert values(await driver.poll())["temperature"] == 183.1


async def test_poll_mode_pv_follows_the_set_point(driver_for: Any) -> None:
    async with OvenSimulator(pv=20.0, sv=20.0, tau=0.05) as oven:
        driver = await driver_for(oven.path, **OVEN)
        oven.answer("SV=200")
        await until(lambda: oven.pv > 199.96)
        assert values(await driver.poll()) == {"temperature": 200.0, "setpoint": 200.0}


async def test_poll_mode_one_unanswered_request_times_out_alone(driver_for: Any) -> None:
    requests = [OVEN["requests"][0], {"send": "XX?\r", "match": r"^(?P<sv>.*)$", "timeout": 0.1}]
    async with OvenSimulator(pv=50.0, tau=None) as oven:
        driver = await driver_for(oven.path, **{**OVEN, "requests": requests})
        assert values(await driver.poll()) == {"temperature": 50.0, "setpoint": "bad: timeout"}
        assert driver.frame_errors["timeout"] == 1


async def test_poll_mode_no_answer_at_all_is_a_device_timeout(driver_for: Any) -> None:
    async with OvenSimulator(silent=True) as oven:
        driver = await driver_for(
            oven.path, **{**OVEN, "connection": {"port": oven.path, "timeout": 0.1}}
        )
        with pytest.raises(DeviceError) as info:
            await driver.poll()
        assert info.value.reason == "timeout"


async def test_poll_mode_wrong_answer_is_no_match(driver_for: Any) -> None:
    requests = [{"send": "SV=abc\r", "match": r"^SV=(?P<sv>\d+)$"}, OVEN["requests"][0]]
    async with OvenSimulator(pv=70.0, tau=None) as oven:
        driver = await driver_for(oven.path, **{**OVEN, "requests": requests})
        assert values(await driver.poll()) == {"temperature": 70.0, "setpoint": "bad: no match"}


async def test_poll_mode_checksum_on_answers(driver_for: Any) -> None:
    class ChecksummedOven(OvenSimulator):
        def answer(self, request: str) -> str | None:
            text = super().answer(request)
            return None if text is None else text + f"{sum(text.encode()) & 0xFF:02X}"

    async with ChecksummedOven(pv=99.5, sv=100.0, tau=None) as oven:
        fields = {**OVEN, "checksum": {"kind": "sum8"}}
        driver = await driver_for(oven.path, **fields)
        assert values(await driver.poll()) == {"temperature": 99.5, "setpoint": 100.0}
        assert driver.frame_errors["checksum"] == 0


# -- the port -----------------------------------------------------------------------------------


async def test_missing_port_is_port_not_found(tmp_path: Path) -> None:
    driver = SerialDriver(device(str(tmp_path / "ttyUSB9")))
    with pytest.raises(DeviceError) as info:
        await driver.connect()
    assert info.value.reason == "port not found"
    await driver.close()


async def test_second_device_on_the_same_port_is_refused(
    scale: ScaleSimulator, driver_for: Any
) -> None:
    await driver_for(scale.path)
    other = SerialDriver(device(scale.path))
    with pytest.raises(DeviceError) as info:
        await other.connect()
    assert info.value.reason == "port busy"
    await other.close()


async def test_port_vanishing_and_returning(tmp_path: Path) -> None:
    link = tmp_path / "ttyUSB0"
    async with ScaleSimulator(rate=None, link=link) as scale:
        driver = SerialDriver(device(str(link)))
        try:
            await driver.connect()
            scale.send(1.25, stable=True)
            await until(lambda: driver.frames_read == 1)
            assert values(await driver.poll()) == {"weight": 1.25, "stable": True}

            scale.unplug()
            with pytest.raises(DeviceError) as info:
                await until(lambda: _raises(driver))
                await driver.poll()
            assert info.value.reason == "port lost"
            await driver.close()
            link.unlink()
            with pytest.raises(DeviceError) as missing:
                await driver.connect()
            assert missing.value.reason == "port not found"

            scale.replug()  # a new pty; the link points at it again
            await driver.connect()
            scale.send(2.5, stable=False)
            await until(lambda: driver.frames_read == 2)
            assert values(await driver.poll()) == {"weight": 2.5, "stable": False}
        finally:
            await driver.close()


class _Status:
    def __init__(self) -> None:
        self.changes: list[tuple[str, str | None]] = []

    def device_status(self, device: str, state: str, reason: str | None, ts: float) -> None:
        self.changes.append((state, reason))


async def test_agent_marks_the_device_down_while_unplugged_and_up_when_back(
    tmp_path: Path,
) -> None:
    link = tmp_path / "ttyUSB0"
    batches: list[Batch] = []

    async def sink(batch: Batch) -> None:
        batches.append(batch)

    async with ScaleSimulator(rate=50, stable_s=0.2, unstable_s=0.2, seed=3, link=link) as scale:
        dev = device(str(link), poll_interval=0.05)
        status = _Status()
        poller = DevicePoller(
            dev, SerialDriver(dev), sink, status, Metrics(), backoff_initial=0.05, backoff_max=0.1
        )
        task = asyncio.create_task(poller.run())
        try:
            await until(lambda: status.changes == [("up", None)])
            scale.unplug()
            await until(lambda: len(status.changes) == 2)
            assert status.changes[1] == ("down", "port lost")
            scale.replug()
            await until(lambda: len(status.changes) == 3)
            assert status.changes[2] == ("up", None)
            await until(lambda: batches[-1].readings[0].quality is Quality.GOOD)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    reasons = {r.reason for b in batches for r in b.readings if r.quality is not Quality.GOOD}
    # While the link dangles every tag carries why; nothing else went wrong.
    assert "port lost" in reasons
    assert reasons <= {"port lost", "port not found", "timeout"}


def _raises(driver: SerialDriver) -> bool:
    """Whether the driver has noticed its port is gone (the next poll raises)."""
    port = driver._port
    if port is not None:
        port.read_pending()
    return port is None or port.lost is not None


def test_sample_config_is_valid() -> None:
    root = Path(__file__).resolve().parent.parent
    config = load_config(root / "drivers" / "serial" / "sample.yaml", load_drivers())
    assert [d.name for d in config.devices] == [
        "scale-1",
        "oven-ctl",
        "counter-1",
        "oven-2",
        "oven-3",
    ]
