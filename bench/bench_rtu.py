"""Bus utilisation of an RS-485 line: 8 unit ids x 30 registers on a simulated 9600-baud line.

The line (``simulators.modbus_rtu``) carries bytes at the real speed, so what is measured is the
agent's scheduling overhead on a saturated line: every device's poll interval is shorter than the
line can serve, so the line task should keep the wire busy. Printed:

- line busy: the fraction of wall time the wire carried a byte (measured at the simulated wire);
- theoretical maximum: a transaction's characters over its characters plus the two 3.5-character
  silences the standard requires (before the request, before the answer);
- efficiency: busy / theoretical maximum (1.0 = not a character time wasted);
- poll cycle achieved per device against the theoretical minimum (8 transactions back to back).

    python -m bench.bench_rtu [--seconds 10] [--baudrate 9600]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
from typing import Any

from agent.ops.metrics import Metrics
from agent.south.lines import LinePoller
from drivers.base import Batch, Driver
from drivers.modbus.config import ModbusDevice
from drivers.modbus.driver import ModbusDriver
from simulators.modbus_rtu import RtuSimulator

UNITS = 8
REGISTERS = 30


class _Count:
    def __init__(self) -> None:
        self.batches: dict[str, list[float]] = {}

    async def __call__(self, batch: Batch) -> None:
        self.batches.setdefault(batch.device, []).append(batch.ts)

    def device_status(self, device: str, state: str, reason: str | None, ts: float) -> None:
        pass


def _device(path: str, unit: int, baudrate: int) -> ModbusDevice:
    return ModbusDevice.model_validate(
        {
            "name": f"meter-{unit}",
            "driver": "modbus",
            "poll_interval": 0.05,  # faster than the line can go: saturate it
            "connection": {
                "transport": "rtu",
                "port": path,
                "unit_id": unit,
                "baudrate": baudrate,
                "parity": "N",
                "timeout": 0.5,
            },
            "tags": [
                {"name": f"r{i}", "table": "holding", "address": 1000 + i, "type": "uint16"}
                for i in range(REGISTERS)
            ],
        }
    )


async def run(seconds: float, baudrate: int) -> dict[str, Any]:
    logging.getLogger("agent").setLevel(logging.ERROR)  # overruns are the point here
    async with RtuSimulator(range(1, UNITS + 1), baudrate=baudrate) as sim:
        devices = [_device(sim.path, u, baudrate) for u in range(1, UNITS + 1)]
        drivers: list[tuple[ModbusDevice, Driver]] = [(d, ModbusDriver(d)) for d in devices]
        sink = _Count()
        poller = LinePoller(drivers[0][1].make_line(), drivers, sink, sink, Metrics())
        task = asyncio.create_task(poller.run())
        await asyncio.sleep(1.0)  # connected, warmed up
        loop = asyncio.get_running_loop()
        busy0, t0 = sim.busy_seconds, loop.time()
        counts0 = {d: len(v) for d, v in sink.batches.items()}
        await asyncio.sleep(seconds)
        busy, elapsed = sim.busy_seconds - busy0, loop.time() - t0
        polls = {d: len(v) - counts0.get(d, 0) for d, v in sink.batches.items()}
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        char = sim.char_time
    request, answer = 8, 5 + 2 * REGISTERS
    useful = request + answer
    per_transaction = useful + 2 * 3.5
    theoretical = useful / per_transaction
    min_cycle = UNITS * per_transaction * char
    cycle = elapsed / (sum(polls.values()) / len(polls))
    return {
        "busy": busy / elapsed,
        "theoretical": theoretical,
        "efficiency": (busy / elapsed) / theoretical,
        "cycle": cycle,
        "min_cycle": min_cycle,
        "polls": polls,
        "elapsed": elapsed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_rtu")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--baudrate", type=int, default=9600)
    args = parser.parse_args()
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    r = asyncio.run(run(args.seconds, args.baudrate))
    print(
        f"RTU line, {UNITS} unit ids x {REGISTERS} registers, {args.baudrate} baud 8N1, "
        f"{r['elapsed']:.1f} s measured"
    )
    print(f"  line busy            {r['busy']:.1%} of wall time")
    print(f"  theoretical maximum  {r['theoretical']:.1%} (frames + 2 x 3.5 char silences)")
    print(f"  efficiency           {r['efficiency']:.2f} of the theoretical maximum")
    print(
        f"  poll cycle achieved  {r['cycle'] * 1000:.0f} ms per device "
        f"(theoretical minimum {r['min_cycle'] * 1000:.0f} ms, ratio "
        f"{r['cycle'] / r['min_cycle']:.2f})"
    )
    spread = sorted(r["polls"].values())
    print(f"  fairness             polls per device {spread[0]}..{spread[-1]}")


if __name__ == "__main__":
    main()
