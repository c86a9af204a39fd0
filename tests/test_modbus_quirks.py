"""Every device quirk, shown by its effect on the wire (the simulator's request log), plus array
tags and the automatic split on exception 2."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from drivers.base import Quality, Reading
from drivers.modbus.config import ModbusDevice
from drivers.modbus.driver import ModbusDriver
from simulators.modbus_tcp import ModbusSimulator
from tests.brokers import free_port

pytestmark = pytest.mark.usefixtures("quiet_pymodbus")


@pytest.fixture
async def sim() -> AsyncIterator[ModbusSimulator]:
    async with ModbusSimulator(port=free_port(), units=(1,), update_interval=None) as s:
        yield s


def device(port: int, tags: list[dict[str, Any]], **extra: Any) -> ModbusDevice:
    return ModbusDevice.model_validate(
        {
            "name": "d",
            "driver": "modbus",
            "connection": {"host": "127.0.0.1", "port": port, "timeout": 0.5},
            "tags": tags,
            **extra,
        }
    )


async def poll_once(dev: ModbusDevice, cycles: int = 1) -> list[Reading]:
    driver = ModbusDriver(dev)
    await driver.connect()
    try:
        readings: list[Reading] = []
        for _ in range(cycles):
            readings = await driver.poll()
        return readings
    finally:
        await driver.close()


def values(readings: list[Reading]) -> dict[str, Any]:
    return {r.tag: r.value if r.quality is Quality.GOOD else r.reason for r in readings}


def u16(name: str, address: int, **extra: Any) -> dict[str, Any]:
    return {"name": name, "table": "holding", "address": address, "type": "uint16", **extra}


SPREAD = [u16("a", 0), u16("b", 5), u16("c", 30), u16("d", 40)]


async def test_default_plan_coalesces_with_max_gap(sim: ModbusSimulator) -> None:
    await poll_once(device(sim.port, SPREAD))
    assert sim.requests_of(1, 3) == [(0, 6), (30, 11)]


async def test_max_gap_zero_splits_at_every_hole(sim: ModbusSimulator) -> None:
    await poll_once(device(sim.port, SPREAD, max_gap=0))
    assert sim.requests_of(1, 3) == [(0, 1), (5, 1), (30, 1), (40, 1)]


async def test_no_coalescing_sends_one_request_per_tag_even_adjacent(sim: ModbusSimulator) -> None:
    tags = [u16("a", 0), u16("b", 1), u16("c", 2)]
    await poll_once(device(sim.port, tags, no_coalescing=True))
    assert sim.requests_of(1, 3) == [(0, 1), (1, 1), (2, 1)]


async def test_max_registers_caps_each_read(sim: ModbusSimulator) -> None:
    tags = [u16(f"t{i}", i) for i in range(0, 40, 2)]
    readings = await poll_once(device(sim.port, tags, max_registers=16))
    assert all(count <= 16 for _, count in sim.requests_of(1, 3))
    assert len(sim.requests_of(1, 3)) == 3
    assert all(r.quality is Quality.GOOD for r in readings)


async def test_max_bits_caps_each_coil_read(sim: ModbusSimulator) -> None:
    tags = [{"name": f"c{i}", "table": "coil", "address": i, "type": "bool"} for i in range(20)]
    await poll_once(device(sim.port, tags, max_bits=8))
    assert sim.requests_of(1, 1) == [(0, 8), (8, 8), (16, 4)]


async def test_address_offset_minus_one_reads_one_lower_on_the_wire(sim: ModbusSimulator) -> None:
    """A manual that says register 15 for what the protocol calls address 14 (1-based)."""
    sim.set_value(1, "oil_temp", 615)
    tags = [{"name": "oil", "table": "holding", "address": 15, "type": "int16", "scale": 0.1}]
    readings = await poll_once(device(sim.port, tags, address_offset=-1))
    assert sim.requests_of(1, 3) == [(14, 1)]
    assert values(readings) == {"oil": 61.5}


async def test_read_function_4_reads_holding_tags_as_input_registers(sim: ModbusSimulator) -> None:
    sim.set_registers(1, "input", 100, [4242])
    readings = await poll_once(device(sim.port, [u16("x", 100)], read_function=4))
    assert sim.requests_of(1, 3) == []
    assert sim.requests_of(1, 4) == [(100, 1)]
    assert values(readings) == {"x": 4242}


async def test_close_connection_after_poll_reconnects_for_every_poll(sim: ModbusSimulator) -> None:
    await poll_once(device(sim.port, [u16("x", 0)]), cycles=3)
    assert sim.connections == 1
    await poll_once(device(sim.port, [u16("x", 0)], close_connection_after_poll=True), cycles=3)
    assert sim.connections == 1 + 3


async def test_close_connection_after_poll_keeps_what_was_learned_and_writes(
    sim: ModbusSimulator,
) -> None:
    sim.set_illegal(1, 5, 5)
    tags = [u16("a", 0), u16("c", 5), u16("w", 9, writable=True)]
    driver = ModbusDriver(device(sim.port, tags, close_connection_after_poll=True))
    await driver.connect()
    await driver.poll()
    learned = len(sim.log)
    await driver.poll()  # no second split: the learned plan survived the reconnect
    assert sim.requests_of(1, 3)[learned:] == [(0, 1), (9, 1)]
    await driver.write("w", 7)  # opens a connection of its own for the write
    assert sim.registers(1, "holding", 9, 1) == [7]
    assert not driver.connected


async def test_array_tag_reads_consecutive_values_scaled_each(sim: ModbusSimulator) -> None:
    sim.set_registers(1, "holding", 100, [10, 20, 65535, 40])
    tags = [
        {"name": "w", "table": "holding", "address": 100, "type": "int16", "count": 4, "scale": 0.5}
    ]
    readings = await poll_once(device(sim.port, tags))
    assert values(readings) == {"w": [5.0, 10.0, -0.5, 20.0]}
    assert sim.requests_of(1, 3) == [(100, 4)]


async def test_array_longer_than_one_read_is_split_and_reassembled(sim: ModbusSimulator) -> None:
    """A 300-sample waveform of float32 (600 registers): five reads of at most 125 registers,
    cut at element boundaries, reassembled in order."""
    import struct

    samples = [i * 0.25 - 10 for i in range(300)]
    regs: list[int] = []
    for x in samples:
        hi, lo = struct.unpack(">HH", struct.pack(">f", x))
        regs += [hi, lo]
    sim.set_registers(1, "holding", 0, regs)
    tags = [{"name": "wave", "table": "holding", "address": 0, "type": "float32", "count": 300}]
    dev = ModbusDevice.model_validate(
        {
            "name": "d",
            "driver": "modbus",
            "connection": {"host": "127.0.0.1", "port": sim.port},
            "tags": tags,
        }
    )
    readings = await poll_once(dev)
    assert values(readings) == {"wave": samples}
    reads = sim.requests_of(1, 3)
    assert reads == [(0, 124), (124, 124), (248, 124), (372, 124), (496, 104)]


async def test_exception_2_splits_learns_and_stops_repeating_the_failing_read(
    sim: ModbusSimulator,
) -> None:
    sim.set_illegal(1, 5, 5)  # address 5 does not exist on this device
    sim.set_registers(1, "holding", 0, [1, 2, 3, 4, 0, 0, 0, 0, 9])
    tags = [u16("a", 0), u16("b", 2), u16("c", 5), u16("d", 8)]
    driver = ModbusDriver(device(sim.port, tags))
    await driver.connect()
    try:
        first = values(await driver.poll())
        learned = len(sim.log)
        second = values(await driver.poll())
        second_reads = sim.requests_of(1, 3)[learned:]
        third = values(await driver.poll())  # the one probe of c (1 cycle later)
        third_reads = sim.requests_of(1, 3)[learned + len(second_reads) :]
        fourth_reads_start = len(sim.log)
        await driver.poll()  # c waits 2 cycles now
        fourth_reads = sim.requests_of(1, 3)[fourth_reads_start:]
    finally:
        await driver.close()
    bad = "exception 2 (illegal data address)"
    expected = {"a": 1, "b": 3, "c": bad, "d": 9}
    assert first == second == third == expected
    # The full read failed once, was split in two halves, the half with c in two again.
    assert sim.requests_of(1, 3)[:learned] == [(0, 9), (0, 3), (5, 4), (5, 1), (8, 1)]
    assert second_reads == [(0, 3), (8, 1)]  # c left out, the rest still coalesced
    assert third_reads == [(0, 3), (8, 1), (5, 1)]
    assert fourth_reads == [(0, 3), (8, 1)]


async def test_exception_2_is_forgotten_after_a_reconnect(sim: ModbusSimulator) -> None:
    sim.set_illegal(1, 5, 5)
    tags = [u16("a", 0), u16("c", 5)]
    driver = ModbusDriver(device(sim.port, tags))
    await driver.connect()
    await driver.poll()
    sim.clear_exceptions(1)  # a firmware update
    await driver.connect()
    try:
        assert all(r.quality is Quality.GOOD for r in await driver.poll())
    finally:
        await driver.close()


async def test_exceptions_and_timeouts_are_counted_for_the_driver_error_metric(
    sim: ModbusSimulator,
) -> None:
    sim.set_exception(1, "holding", 40, 40, 4)
    driver = ModbusDriver(device(sim.port, [u16("a", 0), u16("b", 40)], max_gap=0))
    await driver.connect()
    try:
        await driver.poll()
        await driver.poll()
    finally:
        await driver.close()
    assert driver.error_counts() == {"exception 4": 2}
