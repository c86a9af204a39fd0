"""A 9600-baud DL/T 645 line of 8 meters: how much of the line the agent's polling uses.

Eight -2007 meters on one simulated RS-485 line (a pty whose answers come when they would at 9600
baud, 11 bits a character: 8 data bits, even parity, start and stop), each read for four
identifiers, polled by the agent's line task (``agent.south.lines.LinePoller``) with a poll
interval shorter than a cycle, so the line is never idle by schedule. The theoretical minimum
time of a cycle is the time the frames themselves need on the wire (requests with their wake-up
preamble, answers with theirs); bus utilisation is that over the measured time. What is lost is
the driver's and the event loop's turnaround between an answer and the next request.

    python -m bench.bench_dlt645 [--seconds 10] [--baudrate 9600]

The figure depends on the machine's load (the turnaround is CPU time); the line's own time does
not.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import time

from agent.ops.metrics import Metrics
from agent.south.lines import LinePoller
from drivers.base import Batch, Driver
from drivers.dlt645.config import Dlt645Device
from drivers.dlt645.driver import Dlt645Driver
from simulators.dlt645_meters import Meter, MeterLine

METERS = 8
ITEMS = ("active_energy_total", "voltage_a", "current_a", "active_power_total")


class _Count:
    def __init__(self) -> None:
        self.batches = 0
        self.bad = 0

    async def __call__(self, batch: Batch) -> None:
        self.batches += 1
        self.bad += sum(1 for r in batch.readings if r.reason is not None)

    def device_status(self, device: str, state: str, reason: str | None, ts: float) -> None:
        pass


async def measure(seconds: float, baudrate: int) -> None:
    meters = [
        Meter(
            f"2102200030{n:02d}",
            values={"00010000": 1234.5 + n, "02010100": 230.1, "02020100": 5.1, "02030000": 1.2},
        )
        for n in range(1, METERS + 1)
    ]
    async with MeterLine(meters, baudrate=baudrate) as line:
        devices = [
            Dlt645Device.model_validate(
                {
                    "name": f"meter-{n}",
                    "driver": "dlt645",
                    "poll_interval": 0.01,
                    "address": m.address,
                    "connection": {
                        "port": line.path,
                        "baudrate": baudrate,
                        "parity": "N",  # a pty: the simulator times the line itself
                        "timeout": "500ms",
                    },
                    "tags": [{"name": item, "di": item} for item in ITEMS],
                }
            )
            for n, m in enumerate(meters, 1)
        ]
        drivers: list[tuple[Dlt645Device, Driver]] = [(d, Dlt645Driver(d)) for d in devices]
        count = _Count()
        poller = LinePoller(drivers[0][1].make_line(), drivers, count, count, Metrics())
        task = asyncio.create_task(poller.run())
        await asyncio.sleep(1.0)  # warm up: the port open, the first cycle done
        bytes0, requests0, t0 = line.bytes_on_line, line.requests, time.perf_counter()
        await asyncio.sleep(seconds)
        bytes1, requests1, t1 = line.bytes_on_line, line.requests, time.perf_counter()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    elapsed = t1 - t0
    requests = requests1 - requests0
    wire = (bytes1 - bytes0) * 11 / baudrate
    cycles = requests / (METERS * len(ITEMS))
    print(f"{METERS} meters x {len(ITEMS)} items at {baudrate} baud, {elapsed:.1f} s measured")
    print(f"  requests answered:          {requests} ({cycles:.1f} cycles of the line)")
    print(f"  frames' own time on wire:   {wire:.2f} s (theoretical minimum)")
    print(f"  cycle time:                 {elapsed / cycles * 1000:.0f} ms measured, "
          f"{wire / cycles * 1000:.0f} ms minimum")  # fmt: skip
    print(f"  bus utilisation:            {wire / elapsed:.1%} of the theoretical minimum")
    print(f"  bad readings:               {count.bad}")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_dlt645")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--baudrate", type=int, default=9600)
    args = parser.parse_args()
    # The line is kept busier than the poll interval on purpose: its overrun warnings are noise.
    logging.getLogger("agent").setLevel(logging.ERROR)
    asyncio.run(measure(args.seconds, args.baudrate))


if __name__ == "__main__":
    main()
