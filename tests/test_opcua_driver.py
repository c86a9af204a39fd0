"""The OPC UA driver against the CNC simulator over real TCP: types, modes, deadband, problems.

One simulator serves the whole module (asyncua takes a second or two to start); tests that
change values use points no other test reads.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
import pytest_asyncio

from drivers.base import DeviceError, Quality, Reading
from drivers.opcua.config import OpcuaDevice
from drivers.opcua.driver import OpcuaDriver
from simulators.opcua_cnc import POINTS, CncSimulator
from tests.brokers import free_port
from tests.faultproxy import FaultProxy
from tests.test_opcua_support import device, every_type_tags

pytestmark = pytest.mark.asyncio(loop_scope="module")

#: What the payload must carry for each type (JSON-ready, exact).
EXPECTED: dict[str, Any] = {
    "types_boolean": True,
    "types_sbyte": -128,
    "types_byte": 255,
    "types_int16": -32768,
    "types_uint16": 65535,
    "types_int32": -2147483648,
    "types_uint32": 4294967295,
    "types_int64": -9223372036854775808,
    "types_uint64": 18446744073709551615,
    "types_float": 229.8,  # float32, shortest decimal
    "types_double": 0.1,
    "types_string": "Grüße, CNC-7",
    "types_datetime": "2026-11-23T08:00:00.000Z",
    "types_int32array": [1, -2, 3],
    "spindle_vibration": [0.0] * 64,
    "partcount": 0,
    "programname": "O1234 FLANGE",
    "state": "RUNNING",
    "alarm": False,
    "cycleend": "2026-11-23T08:00:00.000Z",
}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def sim() -> AsyncIterator[CncSimulator]:
    simulator = CncSimulator(port=free_port(), update_interval=None)
    await simulator.start()
    yield simulator
    await simulator.stop()


def make_driver(sim: CncSimulator, tags: list[dict[str, Any]], **extra: Any) -> OpcuaDriver:
    return OpcuaDriver(OpcuaDevice.model_validate(device(sim.endpoint, tags, **extra)))


async def collect(driver: OpcuaDriver, until: Any, timeout: float = 5.0) -> list[Reading]:
    """Poll as the agent would (each publishing interval) until ``until(readings)``."""
    got: list[Reading] = []
    interval = driver.config.poll_interval
    async with asyncio.timeout(timeout):
        while not until(got):
            await asyncio.sleep(interval)
            got += await driver.poll()
    return got


@pytest.mark.parametrize("mode", ["poll", "subscribe"])
async def test_every_type_arrives_exactly(sim: CncSimulator, mode: str) -> None:
    extra = {"publishing_interval": "100ms"} if mode == "subscribe" else {"poll_interval": "100ms"}
    driver = make_driver(sim, every_type_tags(), mode=mode, **extra)
    await driver.connect()
    try:
        readings = await collect(driver, lambda got: {r.tag for r in got} >= set(EXPECTED))
    finally:
        await driver.close()
    values = {r.tag: r.value for r in readings}
    assert all(r.quality is Quality.GOOD for r in readings), [r for r in readings if r.reason]
    for name, expected in EXPECTED.items():
        assert values[name] == expected and type(values[name]) is type(expected), name
    assert values["spindle_load"] == 42.5 and values["spindle_speed"] == 1200.0


async def test_poll_mode_reads_every_tag_in_one_request_per_cycle(sim: CncSimulator) -> None:
    tags = every_type_tags()
    driver = make_driver(sim, tags, mode="poll", poll_interval="100ms")
    await driver.connect()
    try:
        sim.read_requests.clear()
        for _ in range(3):
            readings = await driver.poll()
            assert len(readings) == len(tags)
    finally:
        await driver.close()
    ours = [r for r in sim.read_requests if any("Types.Boolean" in n for n in r)]
    assert len(ours) == 3, sim.read_requests
    assert all(len(r) == len(tags) for r in ours)
    assert driver.describe_plan()["requests"] == 1


async def test_subscription_deadband_sends_fewer_and_misses_nothing_beyond_it(
    sim: CncSimulator,
) -> None:
    start = 100.0
    await sim.set_value("Spindle/Temperature", start)
    tags = [
        {
            "name": "temp",
            "node": POINTS["Spindle/Temperature"].node_string,
            "deadband": 5,
            "queue_size": 100,
        }
    ]
    driver = make_driver(sim, tags, publishing_interval="100ms")
    await driver.connect()
    # Wiggles within the deadband around each level, and jumps beyond it. (asyncua's server
    # compares with the previous sample where the specification says the last reported value;
    # a sequence whose wiggles stay within 5 of the level means the same under both.)
    levels = [100.0, 110.0, 95.0, 130.0, 124.0, 60.0]
    wiggle = [1.0, -2.0, 2.5, -1.5, 0.5]
    sent = [v for lv in levels for v in ([lv] if lv != start else []) + [lv + w for w in wiggle]]
    expected = levels
    try:
        await collect(driver, lambda got: len(got) >= 1)  # the initial value: subscribed
        for v in sent:
            await sim.set_value("Spindle/Temperature", v)
        tail = await collect(driver, lambda got: any(r.value == expected[-1] for r in got))
    finally:
        await driver.close()
    received = [start] + [r.value for r in tail]
    assert received == expected
    assert len(received) < len(sent)


async def test_missing_and_unreadable_nodes_are_named_at_start_and_the_rest_work(
    sim: CncSimulator, caplog: pytest.LogCaptureFixture
) -> None:
    tags = [
        {"name": "speed", "node": POINTS["Spindle/Speed"].node_string},
        {"name": "nope", "node": "nsu=urn:vendor:cnc;s=No.Such.Node"},
        {"name": "secret", "node": POINTS["Secret"].node_string},
        {"name": "lost_path", "browse_path": "Machine/Spindle/Torque"},
        {"name": "other_vendor", "node": "nsu=urn:other:plc;i=5"},
        {"name": "vibration", "browse_path": "Machine/Spindle/Vibration"},
    ]
    reasons = {
        "nope": "BadNodeIdUnknown",
        "secret": "BadNotReadable",
        "lost_path": "no 'Torque' under Machine/Spindle",
        "other_vendor": "namespace urn:other:plc not on the server",
    }
    for mode, extra in (("poll", {"poll_interval": "100ms"}), ("subscribe", {})):
        caplog.clear()
        driver = make_driver(sim, tags, mode=mode, **extra)
        with caplog.at_level(logging.WARNING, logger="drivers.opcua.driver"):
            await driver.connect()
        try:
            readings = await collect(
                driver, lambda got: {"speed", "vibration"} <= {r.tag for r in got}
            )
        finally:
            await driver.close()
        by_tag = {r.tag: r for r in readings}
        for name, reason in reasons.items():
            assert by_tag[name].quality is Quality.BAD and by_tag[name].reason == reason, name
            assert any(name in m and reason in m for m in caplog.messages), (name, caplog.text)
        assert by_tag["speed"].quality is Quality.GOOD
        assert by_tag["vibration"].value == [0.0] * 64
        assert len([m for m in caplog.messages if "tag not collected" in m]) == len(reasons)


async def test_source_timestamp_is_kept(sim: CncSimulator) -> None:
    stamped = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
    await sim.set_value("ProgramName", "O7777 SHAFT", source_ts=stamped)
    tags = [{"name": "program", "node": POINTS["ProgramName"].node_string}]
    driver = make_driver(sim, tags, publishing_interval="100ms")
    await driver.connect()
    try:
        (r,) = await collect(driver, lambda got: len(got) >= 1)
    finally:
        await driver.close()
        await sim.set_value("ProgramName", "O1234 FLANGE")
    assert r.value == "O7777 SHAFT"
    assert r.source_ts == stamped.timestamp()
    assert abs(r.ts - time.time()) < 5  # the batch time is when it arrived


async def test_a_half_open_link_is_noticed_by_keepalive_and_recovered(sim: CncSimulator) -> None:
    """No FIN, no RST: the server just stops answering. The keepalive probe notices within about
    one keepalive; once the path is back, a new connect collects again."""
    tags = [{"name": "speed", "node": POINTS["Spindle/Speed"].node_string}]
    async with FaultProxy(sim.port) as proxy:
        endpoint = f"opc.tcp://127.0.0.1:{proxy.port}/cnc"
        entry = device(endpoint, tags, publishing_interval="100ms")
        entry["connection"]["keepalive"] = "300ms"
        driver = OpcuaDriver(OpcuaDevice.model_validate(entry))
        await driver.connect()
        try:
            await collect(driver, lambda got: len(got) >= 1)
            proxy.set("blackhole")
            t0 = time.monotonic()
            with pytest.raises(DeviceError) as info:
                await collect(driver, lambda got: False, timeout=5)
            assert info.value.reason == "connection lost"
            assert time.monotonic() - t0 < 3
            await driver.close()
            proxy.set("pass")
            await driver.connect()
            (r,) = await collect(driver, lambda got: len(got) >= 1)
            assert r.value == 1200.0
        finally:
            await driver.close()
