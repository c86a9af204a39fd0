"""Modbus RTU lines: several unit ids on one pty line at an honest baud rate, polled by the
agent's line task; a dead unit; the inter-frame silence; rtu-over-tcp and tcp-gateway sharing."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from pymodbus.exceptions import ModbusIOException

from agent.ops.metrics import Metrics
from agent.south.lines import LinePoller
from drivers.base import Driver, Quality
from drivers.modbus.config import ModbusDevice
from drivers.modbus.driver import ModbusDriver
from drivers.modbus.errors import NoAnswer
from drivers.modbus.link import ModbusLink
from simulators.modbus_rtu import RtuSimulator
from simulators.modbus_tcp import ModbusSimulator
from tests.brokers import Mosquitto, free_port
from tests.e2e import AgentRig, until, write_config
from tests.sinks import Sink, Status

PRESS_TAGS: list[dict[str, Any]] = [
    {"name": "voltage_l1", "table": "holding", "address": 0, "type": "float32"},
    {"name": "oil_temp", "table": "holding", "address": 14, "type": "int16", "scale": 0.1},
    {"name": "serial_no", "table": "holding", "address": 20, "type": "string", "length": 4},
]


pytestmark = pytest.mark.usefixtures("quiet_pymodbus")


def rtu_device(
    path: str,
    unit: int,
    *,
    interval: float = 0.2,
    timeout: float = 0.15,
    baudrate: int = 19200,
    tags: Sequence[dict[str, Any]] = PRESS_TAGS,
    **extra: Any,
) -> ModbusDevice:
    return ModbusDevice.model_validate(
        {
            "name": f"unit-{unit}",
            "driver": "modbus",
            "poll_interval": interval,
            "connection": {
                "transport": "rtu",
                "port": path,
                "unit_id": unit,
                "timeout": timeout,
                "baudrate": baudrate,
                "parity": "N",
            },
            "tags": list(tags),
            **extra,
        }
    )


@contextlib.asynccontextmanager
async def polling(devices: Sequence[ModbusDevice]) -> AsyncIterator[tuple[LinePoller, Sink]]:
    sink, status = Sink(), Status()
    drivers: list[tuple[ModbusDevice, Driver]] = [(d, ModbusDriver(d)) for d in devices]
    line = drivers[0][1].make_line()
    poller = LinePoller(
        line, drivers, sink, status, Metrics(), backoff_initial=0.5, backoff_max=1.0
    )
    task = asyncio.create_task(poller.run())
    try:
        yield poller, sink
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def good_values(sink: Sink, device: str) -> dict[str, Any] | None:
    for batch in reversed(sink.of(device)):
        if all(r.quality is Quality.GOOD for r in batch.readings):
            return {r.tag: r.value for r in batch.readings}
    return None


async def test_several_unit_ids_on_one_line_read_exact_values() -> None:
    async with RtuSimulator((1, 2, 3), baudrate=19200) as sim:
        for unit in (1, 2, 3):
            sim.set_value(unit, "oil_temp", 600 + unit)
            sim.set_value(unit, "voltage_l1", 229.5 + unit)
        devices = [rtu_device(sim.path, u) for u in (1, 2, 3)]
        async with polling(devices) as (_, sink):
            await sink.until(lambda: all(good_values(sink, f"unit-{u}") for u in (1, 2, 3)))
        for unit in (1, 2, 3):
            assert good_values(sink, f"unit-{unit}") == {
                "voltage_l1": 229.5 + unit,
                "oil_temp": (600 + unit) / 10,
                "serial_no": f"PRS-{unit:04d}",
            }
        # One request each per cycle (the three tags coalesce), each unit asked only for itself.
        assert {u for u, *_ in sim.log} == {1, 2, 3}
        assert set(sim.requests_of(1)) == {(0, 24)}


async def test_a_dead_unit_costs_the_others_at_most_one_timeout_per_attempt() -> None:
    """Unit 9 is on the line but never answers (its answers are swallowed). Its plan has two
    requests; a failed attempt must send only the first (one timeout), attempts back off, and
    the live units keep their cadence."""
    two_requests = [
        *PRESS_TAGS,
        {"name": "ambient", "table": "input", "address": 1, "type": "int16"},
    ]
    async with RtuSimulator((1, 2, 9), baudrate=19200) as sim:
        sim.set_silent(9)
        devices = [
            rtu_device(sim.path, 1),
            rtu_device(sim.path, 2),
            rtu_device(sim.path, 9, timeout=0.15, tags=two_requests),
        ]
        async with polling(devices) as (_, sink):
            loop = asyncio.get_running_loop()
            await sink.until(lambda: len(sink.of("unit-1")) >= 1 and len(sink.of("unit-9")) >= 1)
            start, before = loop.time(), len(sink.of("unit-1"))
            await asyncio.sleep(2.0)
            elapsed, polls = loop.time() - start, len(sink.of("unit-1")) - before
        dead_attempts = len(sink.of("unit-9"))
        assert all(r.reason == "timeout" for b in sink.of("unit-9") for r in b.readings)
    # Unit 9 asked once per attempt (its second request never sent), attempts backed off.
    # (+1: the attempt in progress when polling stopped)
    assert dead_attempts <= sim.requests(9) <= dead_attempts + 1
    assert dead_attempts <= 6, dead_attempts
    # Units 1 and 2 keep (nearly) their 0.2 s cadence: at most one 0.15 s timeout per attempt.
    assert polls >= 0.8 * elapsed / 0.2, (polls, elapsed)


async def test_the_line_leaves_the_inter_frame_silence_before_each_request() -> None:
    """3.5 character times at 9600 baud (3.6 ms), measured at the wire, for every request."""
    async with RtuSimulator((1, 2), baudrate=9600) as sim:
        devices = [rtu_device(sim.path, u, interval=0.05, baudrate=9600) for u in (1, 2)]
        async with polling(devices) as (_, sink):
            await sink.until(lambda: len(sim.gaps) >= 12)
        silence = 3.5 * sim.char_time
    assert min(sim.gaps) >= silence * 0.95, (min(sim.gaps), silence)


async def test_pause_between_requests_is_silence_on_the_wire() -> None:
    tags = [
        {"name": "a", "table": "holding", "address": 0, "type": "uint16"},
        {"name": "b", "table": "holding", "address": 100, "type": "uint16"},
    ]
    async with RtuSimulator((1,), baudrate=19200) as sim:
        device = rtu_device(
            sim.path, 1, interval=0.05, tags=tags, max_gap=0, pause_between_requests="60ms"
        )
        async with polling([device]) as (_, sink):
            await sink.until(lambda: len(sim.gaps) >= 4)
    assert min(sim.gaps) >= 0.057, sim.gaps


async def test_baud_rate_is_honest_a_read_takes_its_bytes_on_the_wire() -> None:
    """60 registers at 9600 baud: 8 request + 125 answer bytes = 133 characters = 139 ms."""
    tags = [{"name": "w", "table": "holding", "address": 0, "type": "int16", "count": 60}]
    async with RtuSimulator((1,), baudrate=9600) as sim:
        driver = ModbusDriver(rtu_device(sim.path, 1, baudrate=9600, timeout=1.0, tags=tags))
        driver.use_line(driver.make_line())
        await driver.connect()
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        (reading,) = await driver.poll()
        took = loop.time() - t0
        assert driver.link is not None
        await driver.link.close()
    assert reading.quality is Quality.GOOD and isinstance(reading.value, list)
    assert 0.139 <= took < 0.25, took


async def test_an_rtu_link_raises_our_exceptions_with_pymodbus_s_as_the_cause() -> None:
    """The driver catches only drivers/modbus/errors.py's classes: on RTU the link translates
    pymodbus's, keeping the original as ``__cause__``."""
    async with RtuSimulator((1, 9), baudrate=19200) as sim:
        sim.set_silent(9)
        link = ModbusLink(rtu_device(sim.path, 1).connection)
        await link.open()
        try:
            answer = await link.execute(
                lambda c: c.read_holding_registers(14, count=1, device_id=1), timeout=0.5
            )
            assert not answer.isError()
            with pytest.raises(NoAnswer) as err:
                await link.execute(
                    lambda c: c.read_holding_registers(14, count=1, device_id=9), timeout=0.15
                )
            assert isinstance(err.value.__cause__, ModbusIOException)
            assert str(err.value) == str(err.value.__cause__)
            assert link.connected  # a silent unit leaves the line open
        finally:
            await link.close()


def tcp_unit(unit: int, port: int, transport: str, **connection: Any) -> ModbusDevice:
    """Device ``unit-N``: unit id N behind one TCP port (``rtu-over-tcp`` or ``tcp-gateway``)."""
    return ModbusDevice.model_validate(
        {
            "name": f"unit-{unit}",
            "driver": "modbus",
            "poll_interval": 0.1,
            "connection": {
                "transport": transport,
                "host": "127.0.0.1",
                "port": port,
                "unit_id": unit,
                **connection,
            },
            "tags": PRESS_TAGS,
        }
    )


async def test_rtu_over_tcp_devices_share_one_connection_and_read_exact_values() -> None:
    async with ModbusSimulator(
        port=free_port(), units=(1, 2), update_interval=None, framer="rtu"
    ) as sim:
        for unit in (1, 2):
            sim.set_value(unit, "oil_temp", 500 + unit)
        # unit 3 is not on the line: nobody answers
        devices = [tcp_unit(u, sim.port, "rtu-over-tcp", timeout=0.5) for u in (1, 2, 3)]
        async with polling(devices) as (poller, sink):
            await sink.until(
                lambda: (
                    all(good_values(sink, f"unit-{u}") for u in (1, 2))
                    and len(sink.of("unit-3")) >= 1
                )
            )
            assert isinstance(poller.line, ModbusLink)
        assert sim.connections == 1
    for unit in (1, 2):
        values = good_values(sink, f"unit-{unit}")
        assert values is not None and values["oil_temp"] == (500 + unit) / 10
    assert {r.reason for b in sink.of("unit-3") for r in b.readings} == {"timeout"}


async def test_tcp_gateway_unit_ids_share_one_connection() -> None:
    async with ModbusSimulator(port=free_port(), units=(1, 2, 3), update_interval=None) as sim:
        devices = [tcp_unit(u, sim.port, "tcp-gateway") for u in (1, 2, 3)]
        async with polling(devices) as (_, sink):
            await sink.until(lambda: all(good_values(sink, f"unit-{u}") for u in (1, 2, 3)))
        assert sim.connections == 1
        assert {u for u, *_ in sim.log} == {1, 2, 3}


async def test_a_write_on_a_line_goes_between_turns_and_is_confirmed() -> None:
    """A command to unit 2 while the line polls units 1 and 2: written with function 6, read
    back, and on the wire never inside another unit's poll."""
    from agent.south.commands import CommandHandler

    tags = [
        *PRESS_TAGS,
        {
            "name": "sp",
            "table": "holding",
            "address": 150,
            "type": "uint16",
            "writable": True,
            "max": 1000,
        },
    ]
    async with RtuSimulator((1, 2), baudrate=19200) as sim:
        devices = [rtu_device(sim.path, u, interval=0.05, tags=tags) for u in (1, 2)]
        async with polling(devices) as (poller, sink):
            await sink.until(lambda: all(good_values(sink, f"unit-{u}") for u in (1, 2)))
            by_name = {p.device.name: p for p in poller.devices}
            handler = CommandHandler({d.name: d for d in devices}, by_name.get)
            replies = [await handler.write("unit-2", f"w{i}", {"sp": 500 + i}) for i in range(3)]
            too_big = await handler.write("unit-2", "x", {"sp": 1001})
        assert replies == [{"id": f"w{i}", "ok": True} for i in range(3)]
        assert too_big["ok"] is False and "above max" in too_big["error"]
        assert sim.registers(2, "holding", 150, 1) == [502]
        assert sim.registers(1, "holding", 150, 1) == [0]
        log = list(sim.log)
    writes = [i for i, (_, fc, _, _) in enumerate(log) if fc == 6]
    assert len(writes) == 3
    for i in writes:  # read back right after, by the same unit
        assert log[i + 1][:2] == (2, 3) and log[i + 1][2:] == (150, 1)


async def test_the_agent_puts_devices_on_one_port_on_one_line_task(
    tmp_path: Path, broker: Mosquitto
) -> None:
    async with RtuSimulator((1, 2), baudrate=19200) as sim:
        conn = {"transport": "rtu", "port": sim.path, "baudrate": 19200, "parity": "N"}
        cfg = write_config(
            tmp_path / "c.yaml",
            broker_port=broker.port,
            modbus_port=1,
            devices=[
                {
                    "name": f"meter-{u}",
                    "poll_interval": "100ms",
                    "connection": {**conn, "unit_id": u, "timeout": "200ms"},
                    "tags": PRESS_TAGS,
                }
                for u in (1, 2)
            ],
        )
        async with AgentRig(cfg) as agent:
            assert len(agent.lines) == 1 and not agent.pollers
            await until(lambda: all(p.state == "up" and p.cycles >= 2 for p in agent.polled))
    assert {u for u, *_ in sim.log} == {1, 2}
