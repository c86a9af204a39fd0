"""The Modbus driver against the simulator over real TCP on a free port."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from drivers.base import DeviceError, Quality, Reading
from drivers.modbus.config import ModbusDevice
from drivers.modbus.driver import ModbusDriver
from simulators.modbus_map import TYPE_TEST_POINTS
from simulators.modbus_tcp import ModbusSimulator


@pytest.fixture
async def sim() -> AsyncIterator[ModbusSimulator]:
    async with ModbusSimulator(port=0, units=(1, 2), update_interval=None) as s:
        yield s


def device(port: int, tags: list[dict[str, Any]], unit: int = 1, **extra: Any) -> ModbusDevice:
    return ModbusDevice.model_validate(
        {
            "name": "press-1",
            "driver": "modbus",
            "connection": {"host": "127.0.0.1", "port": port, "unit_id": unit, "timeout": 0.3},
            "tags": tags,
            **extra,
        }
    )


def by_tag(readings: list[Reading]) -> dict[str, Reading]:
    return {r.tag: r for r in readings}


async def test_every_type_decodes_to_the_simulators_value(sim: ModbusSimulator) -> None:
    tags = [p.tag() for p in TYPE_TEST_POINTS]
    driver = ModbusDriver(device(sim.port, tags))
    await driver.connect()
    try:
        readings = by_tag(await driver.poll())
    finally:
        await driver.close()
    assert set(readings) == {p.name for p in TYPE_TEST_POINTS}
    for point in TYPE_TEST_POINTS:
        reading = readings[point.name]
        assert reading.quality is Quality.GOOD, (point.name, reading.reason)
        assert reading.value == sim.value(1, point.name), point.name
        assert type(reading.value) is type(sim.value(1, point.name)), point.name
    # A value set on the device is what the next poll reads.
    sim.set_value(1, "h_float32_abcd", 61.5)
    await driver.connect()
    try:
        assert by_tag(await driver.poll())["h_float32_abcd"].value == 61.5
    finally:
        await driver.close()


async def test_plan_is_what_goes_on_the_wire(sim: ModbusSimulator) -> None:
    tags = [p.tag() for p in TYPE_TEST_POINTS]
    driver = ModbusDriver(device(sim.port, tags))
    await driver.connect()
    before = sim.requests(1)
    await driver.poll()
    await driver.close()
    assert sim.requests(1) - before == driver.describe_plan()["requests"]


async def test_exception_makes_only_that_requests_tags_bad(sim: ModbusSimulator) -> None:
    tags = [
        {"name": "volts", "table": "holding", "address": 0, "type": "float32"},
        {"name": "far", "table": "holding", "address": 1000, "type": "int16", "byte_order": "AB"},
        {"name": "ambient", "table": "input", "address": 1, "type": "int16", "scale": 0.1},
    ]
    sim.set_exception(1, "holding", 1000, 1000, 2)
    driver = ModbusDriver(device(sim.port, tags))
    assert driver.describe_plan() == {"requests": 3, "registers": 4, "bits": 0}
    await driver.connect()
    try:
        readings = by_tag(await driver.poll())
    finally:
        await driver.close()
    assert readings["far"].quality is Quality.BAD
    assert readings["far"].reason == "exception 2 (illegal data address)"
    assert readings["volts"].quality is Quality.GOOD
    assert readings["volts"].value == sim.value(1, "voltage_l1")
    assert readings["ambient"].quality is Quality.GOOD


async def test_silent_unit_costs_one_timeout_per_cycle(sim: ModbusSimulator) -> None:
    tags = [
        {"name": "a", "table": "holding", "address": 0, "type": "float32"},
        {"name": "b", "table": "holding", "address": 500, "type": "uint16"},
        {"name": "c", "table": "input", "address": 0, "type": "uint16"},
        {"name": "d", "table": "coil", "address": 0, "type": "bool"},
    ]
    driver = ModbusDriver(device(sim.port, tags, unit=2))
    await driver.connect()
    try:
        assert len(await driver.poll()) == 4
        sim.set_silent(2)
        started = time.monotonic()
        with pytest.raises(DeviceError) as err:
            await driver.poll()
        elapsed = time.monotonic() - started
        assert err.value.reason == "timeout"
        assert 0.25 <= elapsed < 0.6  # one 0.3 s timeout, not four
        # Unit 1 on the same port is unaffected.
        sim.set_silent(2, False)
        assert all(r.quality is Quality.GOOD for r in await driver.poll())
    finally:
        await driver.close()


async def test_device_going_silent_mid_cycle_skips_the_rest(sim: ModbusSimulator) -> None:
    tags = [
        {"name": "a", "table": "holding", "address": 0, "type": "float32"},
        {"name": "b", "table": "input", "address": 0, "type": "uint16"},
        {"name": "c", "table": "coil", "address": 0, "type": "bool"},
    ]
    driver = ModbusDriver(device(sim.port, tags))
    await driver.connect()
    original = driver._read
    calls = 0

    async def silence_after_first(client: Any, req: Any, unit: int) -> Any:
        nonlocal calls
        calls += 1
        response = await original(client, req, unit)
        sim.set_silent(1)  # the device dies right after answering the first request
        return response

    driver._read = silence_after_first  # type: ignore[method-assign]
    try:
        readings = by_tag(await driver.poll())
    finally:
        await driver.close()
    assert calls == 2  # the third request was never sent
    assert readings["a"].quality is Quality.GOOD
    assert readings["b"].reason == "timeout"
    assert readings["c"].reason == "timeout"


async def test_late_answer_is_not_taken_for_the_next_request(sim: ModbusSimulator) -> None:
    tags = [
        {"name": "a", "table": "holding", "address": 1000, "type": "int16", "byte_order": "AB"},
        {"name": "b", "table": "input", "address": 1002, "type": "uint16", "byte_order": "AB"},
    ]
    driver = ModbusDriver(device(sim.port, tags))
    await driver.connect()
    try:
        sim.set_delay(1, 0.4)  # answers arrive after the 0.3 s timeout
        with pytest.raises(DeviceError):
            await driver.poll()
        sim.set_delay(1, 0)
        await asyncio.sleep(0.2)  # the late answer lands now, while nothing is pending
        readings = by_tag(await driver.poll())
    finally:
        await driver.close()
    assert readings["a"].value == sim.value(1, "h_int16_ab")
    assert readings["b"].value == sim.value(1, "i_uint16_ab")


async def test_closed_port_refuses_connect(sim: ModbusSimulator) -> None:
    port = sim.port
    await sim.stop()
    driver = ModbusDriver(
        device(port, [{"name": "a", "table": "coil", "address": 0, "type": "bool"}])
    )
    with pytest.raises(DeviceError) as err:
        await driver.connect()
    assert err.value.reason == "connection refused"
    await driver.close()


async def test_reconnects_after_simulator_restart(sim: ModbusSimulator) -> None:
    tags = [{"name": "strokes", "table": "holding", "address": 15, "type": "uint16"}]
    sim.set_value(1, "stroke_count", 4242)
    driver = ModbusDriver(device(sim.port, tags))
    await driver.connect()
    try:
        assert by_tag(await driver.poll())["strokes"].value == 4242
        await sim.stop()
        with pytest.raises(DeviceError) as err:
            await driver.poll()
        assert err.value.reason in ("connection lost", "timeout")
        await sim.start()
        await driver.connect()
        assert by_tag(await driver.poll())["strokes"].value == 4242
    finally:
        await driver.close()


async def test_poll_before_connect_and_close_twice() -> None:
    driver = ModbusDriver(device(1, [{"name": "a", "table": "coil", "address": 0, "type": "bool"}]))
    with pytest.raises(DeviceError) as err:
        await driver.poll()
    assert err.value.reason == "connection lost"
    await driver.close()
    await driver.close()


async def test_raw_values_are_each_tags_registers_as_last_answered(sim: ModbusSimulator) -> None:
    """What ``edge-agent read`` shows beside each value: the tag's own registers (or bits), cut
    from the last answer; an array spread over several requests comes back whole and in order."""
    sim.set_registers(1, "holding", 200, list(range(1000, 1300)))
    tags = [
        {"name": "wave", "table": "holding", "address": 200, "type": "uint16", "count": 300},
        {"name": "t32", "table": "holding", "address": 10, "type": "uint32"},
        {"name": "c0", "table": "coil", "address": 0, "type": "bool"},
    ]
    driver = ModbusDriver(device(sim.port, tags))
    await driver.connect()
    try:
        assert driver.raw_values() == {}
        readings = by_tag(await driver.poll())
        raw = driver.raw_values()
    finally:
        await driver.close()
    assert raw["wave"] == list(range(1000, 1300))
    assert readings["wave"].value == list(range(1000, 1300))
    assert raw["t32"] == sim.registers(1, "holding", 10, 2)
    assert raw["c0"] == [readings["c0"].value] and isinstance(raw["c0"][0], bool)
