"""What the protocol benchmarks share: a device in a child process (so its CPU is not counted
with the client's) and the Modbus device of N uint16 holding registers they compare against."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

from drivers.base import Driver
from drivers.modbus.config import ModbusDevice


@contextlib.contextmanager
def child(args: list[str], port: int) -> Iterator[None]:
    """``python ARGS`` as a device, ready when it accepts connections on ``port``; terminated on
    leaving."""
    proc = subprocess.Popen([sys.executable, *args], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"{args} did not start")
            time.sleep(0.05)
        yield
    finally:
        proc.terminate()
        proc.wait(10)


@contextlib.asynccontextmanager
async def connected_poll(driver: Driver) -> AsyncIterator[Callable[[], Awaitable[Any]]]:
    """``driver.poll``, the driver connected while in the block (a benchmark's step)."""
    await driver.connect()
    try:
        yield driver.poll
    finally:
        await driver.close()


def holding_device(port: int, points: int, address: int = 0) -> ModbusDevice:
    """A Modbus TCP device on localhost: ``points`` uint16 holding registers ``r0``, ``r1``...
    from ``address``."""
    return ModbusDevice.model_validate(
        {
            "name": "bench",
            "driver": "modbus",
            "connection": {"host": "127.0.0.1", "port": port, "timeout": 3.0},
            "tags": [
                {"name": f"r{i}", "table": "holding", "address": address + i, "type": "uint16"}
                for i in range(points)
            ],
        }
    )
