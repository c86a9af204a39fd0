"""S7 driver: requests per cycle against the planner's optimum, and CPU per 1,000 points against
the Modbus driver and against a bare python-snap7 client, in one run.

    python -m bench.bench_s7 [--points 1000] [--seconds 5]

Part 1, requests per cycle (the moulding PLC in this process, counting the requests it answers):
for tag layouts a machine's program has (one dense block, tags scattered over a block, several
blocks and areas) and the PDUs PLCs grant (240: S7-300/1200, 480 and 960: S7-1500), the
requests the driver sends per cycle, the plan's count and its lower bound, python-snap7's own
read optimizer (``merge_items`` + ``packetize``, what ``read_multi_vars`` would send) and one read
per tag. ``items`` is the device's ``max_items`` (20 by default; 78 what a PDU of 960 holds).

Part 2, CPU per 1,000 points (servers in child processes, so their CPU is not ours): ``--points``
tags polled back to back for ``--seconds`` each by

- bare snap7: a python-snap7 ``Client`` reading the same byte ranges as the driver's plan
  (``db_read``), no decoding (what any snap7 program pays for the bytes);
- S7 driver: ``S7Driver.poll()`` (the plan, the worker thread, decoding, quality per tag);
- Modbus driver: ``ModbusDriver.poll()`` with as many uint16 tags on the Modbus simulator.

Printed: polls per second, CPU seconds of this process per 1,000 points, and ratios. Machines
are shared and noisy: compare ratios, and run it more than once.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

from snap7.client import Client
from snap7.optimizer import ReadItem, merge_items, packetize, sort_items

from bench.children import child, holding_device
from drivers.modbus.driver import ModbusDriver
from drivers.s7.config import S7Device
from drivers.s7.driver import S7Driver
from simulators.s7_moulding import MouldingSimulator

BENCH_DB = 10
Layout = list[dict[str, Any]]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- layouts ------------------------------------------------------------------------------------


def dense(points: int) -> Layout:
    """One block of INTs back to back (a machine's data block read whole)."""
    return [
        {"name": f"p{i}", "address": f"DB{BENCH_DB}.DBW{2 * i}", "type": "INT"}
        for i in range(points)
    ]


def scattered(points: int) -> Layout:
    """REALs 10 bytes apart (the used members of a large block): nothing joins."""
    return [
        {"name": f"p{i}", "address": f"DB{BENCH_DB}.DBD{10 * i}", "type": "REAL"}
        for i in range(points)
    ]


def mixed(points: int) -> Layout:
    """Runs of tags in blocks, markers, inputs and outputs, with strings and bits."""
    tags: Layout = []
    for i in range(points):
        kind = i % 5
        if kind == 0:
            tags.append({"name": f"p{i}", "address": f"DB{BENCH_DB}.DBD{12 * i}", "type": "DINT"})
        elif kind == 1:
            tags.append({"name": f"p{i}", "address": f"DB{BENCH_DB}.DBX{12 * i}.3", "type": "BOOL"})
        elif kind == 2:
            tags.append(
                {
                    "name": f"p{i}",
                    "address": f"DB{BENCH_DB}.DBB{12 * i + 1}",
                    "type": "STRING",
                    "length": 8,
                }
            )
        elif kind == 3:
            tags.append({"name": f"p{i}", "address": f"MW{2 * (i % 120)}", "type": "WORD"})
        else:
            tags.append({"name": f"p{i}", "address": f"Q{i % 200}.{i % 8}", "type": "BOOL"})
    return tags


LAYOUTS: dict[str, Callable[[int], Layout]] = {
    "dense": dense,
    "scattered": scattered,
    "mixed": mixed,
}


def s7_device(port: int, tags: Layout, max_items: int = 20) -> S7Device:
    return S7Device.model_validate(
        {
            "name": "bench",
            "driver": "s7",
            "connection": {"host": "127.0.0.1", "port": port, "timeout": 5.0},
            "max_items": max_items,
            "tags": tags,
        }
    )


def snap7_packets(driver: S7Driver, pdu: int) -> int:
    """How many exchanges python-snap7's own optimizer (``read_multi_vars``) makes for the tags
    (its default gap of 5 bytes), given each tag as one item."""
    items = []
    for n, t in enumerate(driver.config.tags):
        where = t.location
        items.append(ReadItem(where.area_code, where.db, where.byte, 0, t.bytes, n))
    blocks = merge_items(sort_items(items), max_gap=5, max_block_size=pdu - 18)
    return len(packetize(blocks, pdu))


async def requests_per_cycle(points: int) -> None:
    print(f"requests per cycle, {points} tags")
    print(
        f"  {'layout':<10} {'PDU':>4} {'items':>5} {'wire':>5} {'plan':>5} {'bound':>5} "
        f"{'optimal':>8} {'snap7 opt':>9} {'per tag':>8}"
    )
    for name, layout in LAYOUTS.items():
        tags = layout(points)
        for pdu in (240, 480, 960):
            for max_items in (20, 78) if pdu > 240 else (20,):
                async with MouldingSimulator(
                    _free_port(), update_interval=None, pdu=pdu, extra_dbs={BENCH_DB: 16 * points}
                ) as plc:
                    drv = S7Driver(s7_device(plc.port, tags, max_items))
                    await drv.connect()
                    try:
                        before = plc.exchanges
                        for _ in range(5):
                            await drv.poll()
                        wire = (plc.exchanges - before) / 5
                        plan = drv.describe_plan()
                    finally:
                        await drv.close()
                assert wire == plan["requests"], (name, pdu, wire, plan)
                print(
                    f"  {name:<10} {pdu:>4} {max_items:>5} {wire:>5.0f} {plan['requests']:>5} "
                    f"{plan['lower_bound']:>5} {plan['optimal']!s:>8} "
                    f"{snap7_packets(drv, pdu):>9} {len(tags):>8}"
                )


# -- CPU ----------------------------------------------------------------------------------------


async def timed(
    poll: Callable[[], Awaitable[Any]], points: int, seconds: float
) -> tuple[float, float]:
    """(polls per second, CPU seconds per 1,000 points) of ``poll`` run back to back."""
    await poll()  # warm up
    polls = 0
    cpu0, t0 = time.process_time(), time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        await poll()
        polls += 1
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return polls / wall, cpu / (polls * points) * 1000


async def cpu_per_points(points: int, seconds: float) -> None:
    s7_port, mb_port = _free_port(), _free_port()
    tags = dense(points)
    results: dict[str, tuple[float, float]] = {}
    s7_args = ["-m", "simulators.s7_moulding", "--port", str(s7_port), "--interval", "0"]
    s7_args += ["--db", f"{BENCH_DB}:{4 * points}"]
    with child(s7_args, s7_port):
        drv = S7Driver(s7_device(s7_port, tags))
        await drv.connect()
        ranges = [(i.db, i.start, i.size) for r in drv.plan.requests for i in r.items]
        try:
            results["S7 driver"] = await timed(drv.poll, points, seconds)
        finally:
            await drv.close()
        plan = drv.describe_plan()
        bare = Client()
        bare.connect("127.0.0.1", 0, 1, s7_port)

        async def bare_poll() -> None:
            for db, start, size in ranges:
                bare.db_read(db, start, size)

        try:
            results["bare snap7"] = await timed(bare_poll, points, seconds)
        finally:
            bare.disconnect()
    mb_args = ["-m", "simulators.modbus_tcp", "--port", str(mb_port), "--units", "1"]
    mb_args += ["--update-interval", "0"]
    with child(mb_args, mb_port):
        mb = ModbusDriver(holding_device(mb_port, points, 100))
        await mb.connect()
        try:
            results["Modbus driver"] = await timed(mb.poll, points, seconds)
        finally:
            await mb.close()
        mb_requests = mb.describe_plan()["requests"]
    base = results["bare snap7"][1]
    print(
        f"\nCPU per 1,000 points, {points} tags per poll ({plan['requests']} S7 requests at PDU "
        f"{plan['pdu']}, {mb_requests} Modbus requests), {seconds:g} s each"
    )
    print(f"  {'client':<14} {'polls/s':>8} {'CPU ms/1000 pts':>16} {'vs bare snap7':>14}")
    for name, (rate, cpu) in results.items():
        print(f"  {name:<14} {rate:>8.1f} {cpu * 1000:>16.3f} {cpu / base:>13.2f}x")
    s7, modbus = results["S7 driver"][1], results["Modbus driver"][1]
    print(f"  S7 driver / Modbus driver: {s7 / modbus:.2f}x CPU per point")


async def main(args: argparse.Namespace) -> None:
    await requests_per_cycle(args.points)
    await cpu_per_points(args.points, args.seconds)


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=5.0)
    asyncio.run(main(parser.parse_args()))


if __name__ == "__main__":
    cli()
