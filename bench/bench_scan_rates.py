"""Scan rates within a device: what a slow rate group saves the line, and what it costs the fast
group's timing, against the same meter read whole at the fast rate, in the same run.

    .venv/bin/python -m bench.bench_scan_rates [--seconds 6] [--delays 0.010,0.020]

A meter on the Modbus simulator answers each request after a delay (10 ms, then 20 ms: about
what one read costs on a 9600-baud RS-485 line). Its fast tags (voltages, currents, powers) take 3
requests, its energy registers (totals and tariffs, no_coalescing: spread over the map) 12.
Time is compressed: the fast rate is 200 ms, the slow one 2 s (a second and a minute).

(a) baseline: every tag at the fast rate (15 requests per poll);
(b) rates: the energy registers in a scan group at the slow rate.

For each: requests per second the line carries (the simulator counts them), the fast tags'
readings per second, and how late the fast readings are: the gaps between consecutive fast
readings minus the interval (median and worst), from the readings' own timestamps. At 20 ms
the whole meter no longer fits the fast interval (the baseline overruns and halves its rate),
and the energy group's 240 ms no longer fits beside the fast group's 60 ms: it stops between
two requests when the fast tick comes (``Driver.poll_group_until``) and goes on after it, so
the fast readings stay on time (late by one request at most).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import logging
import statistics
from typing import Any

from agent.ops.metrics import Metrics
from agent.south.scheduler import DevicePoller
from drivers.modbus.config import ModbusDevice
from drivers.modbus.driver import ModbusDriver
from simulators.modbus_tcp import ModbusSimulator
from tests.brokers import free_port
from tests.sinks import Sink, Status

FAST_INTERVAL, SLOW_INTERVAL = 0.2, 2.0


def _device(port: int, rates: bool) -> ModbusDevice:
    fast = [
        {"name": f"f{i}", "table": "holding", "address": 1000 + 40 * (i // 4) + i % 4}
        for i in range(12)  # three blocks of four, 40 registers apart: three requests
    ]
    slow = [
        {"name": f"e{i}", "table": "holding", "address": 200 + 30 * i, "type": "uint32"}
        for i in range(12)  # twelve totals 30 registers apart: twelve requests
    ]
    for tag in fast:
        tag["type"] = "uint16"
    if rates:
        for tag in slow:
            tag["scan_group"] = "energy"
    return ModbusDevice.model_validate(
        {
            "name": "meter",
            "driver": "modbus",
            "poll_interval": FAST_INTERVAL,
            "connection": {"host": "127.0.0.1", "port": port, "timeout": "1s"},
            "max_gap": 8,
            "scan_groups": [{"name": "energy", "every": SLOW_INTERVAL}] if rates else [],
            "tags": fast + slow,
        }
    )


async def _run(rates: bool, seconds: float, delay: float) -> dict[str, Any]:
    async with ModbusSimulator(port=free_port(), units=(1,), update_interval=None) as sim:
        sim.set_delay(1, delay)
        device = _device(sim.port, rates)
        sink = Sink()
        poller = DevicePoller(device, ModbusDriver(device), sink, Status(), Metrics())
        task = asyncio.create_task(poller.run())
        await sink.until(lambda: bool(sink.batches), 5.0)
        first, requests0 = len(sink.batches), sim.total_requests
        await asyncio.sleep(seconds)
        requests = sim.total_requests - requests0
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    fast = [r.ts for b in sink.batches[first:] for r in b.readings if r.tag == "f0"]
    late = [b - a - FAST_INTERVAL for a, b in itertools.pairwise(fast)]
    return {
        "requests/s": requests / seconds,
        "fast readings/s": len(fast) / seconds,
        "late median ms": statistics.median(late) * 1000,
        "late worst ms": max(late) * 1000,
    }


async def main(seconds: float, delays: list[float]) -> None:
    for delay in delays:
        base = await _run(False, seconds, delay)
        rates = await _run(True, seconds, delay)
        print(f"meter: 3 fast requests, 12 energy requests, {delay * 1000:.0f} ms per request")
        print(f"{'':22}{'all at 200 ms':>16}{'energy at 2 s':>16}{'ratio':>8}")
        for key in base:
            ratio = rates[key] / base[key] if base[key] else float("nan")
            print(f"{key:22}{base[key]:16.1f}{rates[key]:16.1f}{ratio:8.2f}")
        print()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--delays", default="0.010,0.020", help="seconds per request, listed")
    args = parser.parse_args()
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)  # its chatter when a run stops
    asyncio.run(main(args.seconds, [float(d) for d in args.delays.split(",")]))
