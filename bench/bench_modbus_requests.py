"""Modbus TCP requests per second: the agent's driver against a raw-socket baseline.

All three clients read the same 30 holding registers from the same simulator, one request at a
time, for the same time, in this run:

- raw socket: a hand-built MBAP request on an asyncio stream, answer read by length, no parsing;
- pymodbus: a bare ``AsyncModbusTcpClient`` (what the driver is built on);
- driver: ``ModbusDriver.poll()`` (link, silence bookkeeping, decoding of 30 tags).

The simulator is in the same process and shares the CPU, so the figures are a ceiling and the
ratios are what to read.

    python -m bench.bench_modbus_requests [--seconds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import struct
from collections.abc import Awaitable, Callable

from pymodbus.client import AsyncModbusTcpClient

from drivers.modbus.config import ModbusDevice
from drivers.modbus.driver import ModbusDriver
from simulators.modbus_tcp import ModbusSimulator
from tests.brokers import free_port

REGISTERS = 30
ADDRESS = 1000


async def _rate(step: Callable[[], Awaitable[object]], seconds: float) -> float:
    loop = asyncio.get_running_loop()
    for _ in range(50):  # warm up
        await step()
    n, t0 = 0, loop.time()
    while loop.time() - t0 < seconds:
        await step()
        n += 1
    return n / (loop.time() - t0)


async def raw_socket(port: int, seconds: float) -> float:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    tid = 0
    answer = 9 + 2 * REGISTERS

    async def step() -> None:
        nonlocal tid
        tid = (tid + 1) & 0xFFFF
        writer.write(struct.pack(">HHHBBHH", tid, 0, 6, 1, 3, ADDRESS, REGISTERS))
        await reader.readexactly(answer)

    try:
        return await _rate(step, seconds)
    finally:
        writer.close()


async def bare_pymodbus(port: int, seconds: float) -> float:
    client = AsyncModbusTcpClient("127.0.0.1", port=port, retries=0, reconnect_delay=0)
    await client.connect()

    async def step() -> None:
        await client.read_holding_registers(ADDRESS, count=REGISTERS, device_id=1)

    try:
        return await _rate(step, seconds)
    finally:
        client.close()


async def driver(port: int, seconds: float) -> float:
    device = ModbusDevice.model_validate(
        {
            "name": "bench",
            "driver": "modbus",
            "connection": {"host": "127.0.0.1", "port": port},
            "tags": [
                {"name": f"r{i}", "table": "holding", "address": ADDRESS + i, "type": "uint16"}
                for i in range(REGISTERS)
            ],
        }
    )
    drv = ModbusDriver(device)
    assert len(drv.requests) == 1
    await drv.connect()
    try:
        return await _rate(drv.poll, seconds)
    finally:
        await drv.close()


async def run(seconds: float) -> dict[str, float]:
    async with ModbusSimulator(port=free_port(), units=(1,), update_interval=None) as sim:
        return {
            "raw socket": await raw_socket(sim.port, seconds),
            "pymodbus": await bare_pymodbus(sim.port, seconds),
            "driver": await driver(sim.port, seconds),
        }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_modbus_requests")
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    rates = asyncio.run(run(args.seconds))
    base = rates["raw socket"]
    print(f"Modbus TCP, read {REGISTERS} holding registers, one request at a time, localhost")
    for name, rate in rates.items():
        print(f"  {name:<11} {rate:8.0f} requests/s   {rate / base:5.2f} x raw socket")


if __name__ == "__main__":
    main()
