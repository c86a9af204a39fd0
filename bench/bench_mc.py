"""MC protocol: requests per cycle against the planner's optimum, and CPU per 1,000 points against
the Modbus driver and a bare MC client, all in one run.

Requests: for a few tag layouts (the press of ``simulators.mc_press``; 1,000 tags of a line
controller, in blocks, scattered words and bits; 200 words scattered over five devices) the
driver polls the press simulator and the requests the simulator counts per cycle are set beside
the plan's count, the optimum (brute force for the press; for the larger layouts, the plan's
count where they are the case ``tests/test_mc_planner.py`` proves the plan optimal for: every
tag one or two points, no range cut by a cap), the plan without random reads and one request
per tag.

CPU: 1,000 uint16 points read per cycle, one poll at a time, for the same time each:

- raw MC: the plan's request frames prebuilt, written on an asyncio stream, each answer read by
  its length field, not parsed (the baseline: event loop and kernel, nothing else);
- MC driver: ``McDriver.poll()`` (2 batch reads of D0..D999: frames, answers parsed, 1,000
  readings);
- Modbus driver: ``ModbusDriver.poll()`` on 1,000 holding registers (8 reads of 125);
- raw Modbus: the same 8 MBAP requests prebuilt, answers read by length.

The devices answer from child processes (the press simulator; the Modbus benchmark's minimal
responder), so ``time.process_time()`` over the run is the client's alone. Machines are shared
and noisy: read the ratios, measured in the same run.

    python -m bench.bench_mc [--seconds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import struct
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from bench.children import child, connected_poll, holding_device
from drivers.mc.config import McDevice
from drivers.mc.devices import DEVICES
from drivers.mc.driver import McDriver
from drivers.mc.frame import batch_read, header_size
from drivers.mc.planner import plan, random_points
from drivers.modbus.driver import ModbusDriver
from simulators.mc_press import PRESS, McPressSimulator
from tests.brokers import free_port
from tests.test_mc_planner import optimum

POINTS = 1000
Step = Callable[[], Awaitable[Any]]

# -- requests per cycle ---------------------------------------------------------------------------


def _tag(name: str, address: str, type_: str = "uint16", **keys: Any) -> dict[str, Any]:
    return {"name": name, "address": address, "type": type_, **keys}


def line_controller() -> list[dict[str, Any]]:
    """1,000 tags as a line controller's program lays them out: recipe and counter blocks in D,
    link registers in W, a file-register log in ZR, scattered status words, bits in M, X, Y."""
    tags: list[dict[str, Any]] = []
    for block in range(4):  # four stations' blocks of 150 words, int16 and float32
        base = 1000 * block
        tags += [_tag(f"s{block}_w{i}", f"D{base + i}", "int16") for i in range(100)]
        tags += [_tag(f"s{block}_f{i}", f"D{base + 100 + 2 * i}", "float32") for i in range(25)]
    tags += [_tag(f"w{i}", f"W{0x100 + i:X}") for i in range(50)]
    tags += [_tag(f"zr{i}", f"ZR{20000 + 2 * i}", "int32") for i in range(50)]
    tags += [_tag(f"far{i}", f"D{5000 + 69 * i}") for i in range(100)]  # scattered, < D12288
    tags += [_tag(f"sd{i}", f"SD{200 + 40 * i}") for i in range(20)]
    tags += [_tag(f"m{i}", f"M{i}", "bool") for i in range(200)]
    tags += [_tag(f"x{i}", f"X{i:X}", "bool") for i in range(64)]
    tags += [_tag(f"y{i}", f"Y{0x100 + i:X}", "bool") for i in range(16)]
    return tags[:POINTS]


def scattered() -> list[dict[str, Any]]:
    """200 words, each too far from the next to share a batch read, over five devices."""
    devices = ("D", "W", "R", "ZR", "SD")
    out = []
    for i in range(200):
        device = devices[i % 5]
        number = 40 * (i // 5) + (0x20 if device == "W" else 0)
        text = f"{number:X}" if DEVICES[device].base == 16 else str(number)
        out.append(_tag(f"t{i}", f"{device}{text}"))
    return out


LAYOUTS: dict[str, Callable[[], list[dict[str, Any]]]] = {
    "press (14 tags)": lambda: [p.tag() for p in PRESS],
    "line controller (1,000 tags)": line_controller,
    "scattered words (200 tags)": scattered,
}


def proven_optimum(dev: McDevice, planned: int) -> int | None:
    """The plan's count when it is the optimum by what tests/test_mc_planner.py proves against
    the brute force (every tag one or two random-read points, no range cut by a cap); else
    None."""
    if any(random_points(t.width) > 2 for t in dev.tags if not t.where.kind.bits):
        return None
    gap = dev.max_gap
    capped = plan(dev.tags, max_gap=gap, random_reads=False)
    uncapped = plan(dev.tags, max_gap=gap, max_words=10**9, max_bits=10**9, random_reads=False)
    return planned if len(capped) == len(uncapped) else None


def mc_device(port: int, tags: list[dict[str, Any]], **keys: Any) -> McDevice:
    return McDevice.model_validate(
        {
            "name": "bench",
            "driver": "mc",
            "connection": {"host": "127.0.0.1", "port": port, "timeout": 3.0},
            "tags": tags,
            **keys,
        }
    )


async def requests_per_cycle(
    cycles: int = 20,
) -> list[tuple[str, float, int, int | None, int, int]]:
    """Per layout: measured requests/cycle, plan, optimum (small layouts), no random, per tag."""
    rows = []
    async with McPressSimulator(free_port(), update_interval=None) as sim:
        for name, layout in LAYOUTS.items():
            tags = layout()
            dev = mc_device(sim.port, tags)
            drv = McDriver(dev)
            await drv.connect()
            before = sum(sim.requests.values())
            for _ in range(cycles):
                readings = await drv.poll()
                bad = [r for r in readings if r.quality != "good"]
                assert len(readings) == len(tags) and not bad, bad[:3]
            await drv.close()
            measured = (sum(sim.requests.values()) - before) / cycles
            best = optimum(dev) if len(tags) <= 16 else proven_optimum(dev, len(drv.requests))
            batch_only = len(McDriver(mc_device(sim.port, tags, random_reads=False)).requests)
            rows.append((name, measured, len(drv.requests), best, batch_only, len(tags)))
    return rows


# -- CPU per 1,000 points -------------------------------------------------------------------------


def words_tags() -> list[dict[str, Any]]:
    return [_tag(f"d{i}", f"D{i}") for i in range(POINTS)]


@contextlib.asynccontextmanager
async def mc_driver(port: int) -> AsyncIterator[Step]:
    drv = McDriver(mc_device(port, words_tags()))
    assert len(drv.requests) == 2
    async with connected_poll(drv) as step:
        yield step


@contextlib.asynccontextmanager
async def raw_mc(port: int) -> AsyncIterator[Step]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    d = DEVICES["D"]
    frames = [batch_read("binary", d, n, c, bits=False) for n, c in ((0, 960), (960, 40))]
    size = header_size("binary")

    async def step() -> None:
        for frame in frames:
            writer.write(frame)
            header = await reader.readexactly(size)
            await reader.readexactly(int.from_bytes(header[7:9], "little"))

    try:
        yield step
    finally:
        writer.close()


@contextlib.asynccontextmanager
async def modbus_driver(port: int) -> AsyncIterator[Step]:
    drv = ModbusDriver(holding_device(port, POINTS))
    assert len(drv.requests) == 8
    async with connected_poll(drv) as step:
        yield step


@contextlib.asynccontextmanager
async def raw_modbus(port: int) -> AsyncIterator[Step]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    requests = [(a, min(125, POINTS - a)) for a in range(0, POINTS, 125)]
    tid = 0

    async def step() -> None:
        nonlocal tid
        for address, count in requests:
            tid = (tid + 1) & 0xFFFF
            writer.write(struct.pack(">HHHBBHH", tid, 0, 6, 1, 3, address, count))
            await reader.readexactly(9 + 2 * count)

    try:
        yield step
    finally:
        writer.close()


async def cpu_per_1000(
    client: Callable[[int], contextlib.AbstractAsyncContextManager[Step]],
    port: int,
    seconds: float,
) -> tuple[float, float]:
    """(polls/s, CPU seconds per 1,000 points)."""
    loop = asyncio.get_running_loop()
    async with client(port) as step:
        until = loop.time() + 0.3
        while loop.time() < until:  # warm up
            await step()
        polls = 0
        cpu0, t0 = time.process_time(), loop.time()
        while loop.time() < t0 + seconds:
            await step()
            polls += 1
        wall, cpu = loop.time() - t0, time.process_time() - cpu0
    return polls / wall, cpu / (polls * POINTS / 1000)


async def cpu_figures(seconds: float) -> dict[str, tuple[float, float]]:
    mc_port, mb_port = free_port(), free_port()
    mc_args = ["-m", "simulators.mc_press", "--port", str(mc_port), "--update-interval", "0"]
    mb_args = ["-m", "bench.bench_modbus_requests", "--serve", str(mb_port)]
    figures: dict[str, tuple[float, float]] = {}
    with child(mc_args, mc_port), child(mb_args, mb_port):
        figures["raw MC"] = await cpu_per_1000(raw_mc, mc_port, seconds)
        figures["MC driver"] = await cpu_per_1000(mc_driver, mc_port, seconds)
        figures["Modbus driver"] = await cpu_per_1000(modbus_driver, mb_port, seconds)
        figures["raw Modbus"] = await cpu_per_1000(raw_modbus, mb_port, seconds)
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_mc", description=__doc__)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args(argv)
    rows = asyncio.run(requests_per_cycle())
    print("MC requests per cycle (the simulator counts them), against the plan and its optimum:")
    for name, measured, planned, best, batch_only, tags in rows:
        opt = f"{best}" if best is not None else "n/a"
        print(
            f"  {name:<30} measured {measured:5.1f}  plan {planned:3d}  optimum {opt}  "
            f"without random reads {batch_only:3d}  one per tag {tags:4d}"
        )
    figures = asyncio.run(cpu_figures(args.seconds))
    base = figures["raw MC"][1]
    mb = figures["Modbus driver"][1]
    print(f"CPU per {POINTS:,} uint16 points (devices in child processes, localhost):")
    for name, (rate, cpu) in figures.items():
        print(
            f"  {name:<14} {rate:7.0f} polls/s  {cpu * 1e3:7.3f} ms CPU/1,000 points  "
            f"{cpu / base:5.2f} x raw MC  {cpu / mb:5.2f} x Modbus driver"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
