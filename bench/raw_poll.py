"""Baseline for the end-to-end benchmark: a bare pymodbus client, no agent.

Sends the same requests as the agent's planner on the same 1 s schedule, one task per device,
and throws the answers away. Whatever the agent costs beyond this is the price of decoding,
buffering durably and publishing.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

from pymodbus.client import AsyncModbusTcpClient

from agent.app.config import load_config
from agent.south.registry import load_drivers
from drivers.modbus.driver import ModbusDriver


async def poll_device(device: Any) -> None:
    plan = ModbusDriver(device).requests  # the same requests the agent sends
    conn = device.connection
    client = AsyncModbusTcpClient(conn.host, port=conn.port, timeout=conn.timeout, retries=0)
    await client.connect()
    readers = {
        "holding": client.read_holding_registers,
        "input": client.read_input_registers,
        "coil": client.read_coils,
        "discrete": client.read_discrete_inputs,
    }
    loop = asyncio.get_running_loop()
    start = loop.time()
    tick = 0
    while True:
        for req in plan:
            await readers[req.table](req.address, count=req.count, device_id=conn.unit_id)
        tick += 1
        await asyncio.sleep(max(0.0, start + tick * device.poll_interval - loop.time()))


async def main(config_path: str) -> None:
    config = load_config(Path(config_path), load_drivers())  # profiles merged, as the agent does
    await asyncio.gather(*(poll_device(d) for d in config.devices))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
