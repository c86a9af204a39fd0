"""OPC UA subscription throughput: 5,000 monitored items, the driver against a bare asyncua client.

    python -m bench.bench_opcua [--items 5000] [--period 0.5] [--seconds 10]

A simulator in a child process (so its CPU is not ours) changes every item each ``--period``.
Two subscribers take turns on the same server, same items, same publishing interval:

- baseline: a bare asyncua ``Client`` subscription with a no-op handler (what any asyncua
  program pays to receive the changes);
- driver: ``OpcuaDriver`` polled every publishing interval, its readings split into batches and
  encoded for the buffer (``frames`` + ``encode_batch``), as the agent does before the commit.

Printed: monitored-item changes per second sustained over the window, CPU seconds of this process
per 1,000 changes, and the driver's figures as ratios of the baseline's. Machines are shared and
noisy: compare ratios, and run it more than once.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

from asyncua import Client, ua

from agent.core.record import encode_batch
from agent.south.scheduler import frames
from drivers.base import Batch
from drivers.opcua.config import OpcuaDevice
from drivers.opcua.driver import OpcuaDriver
from simulators.opcua_cnc import NAMESPACE

PUBLISHING_MS = 250


@dataclass
class Result:
    changes: int
    seconds: float
    cpu: float

    @property
    def rate(self) -> float:
        return self.changes / self.seconds

    @property
    def cpu_per_1000(self) -> float:
        return self.cpu / self.changes * 1000 if self.changes else float("nan")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- the server (child process) -----------------------------------------------------------------


async def serve(port: int, items: int, period: float) -> None:
    from simulators.opcua_cnc import CncSimulator

    sim = CncSimulator(port=port, update_interval=None, extra_points=items)
    await sim.start()
    assert sim._server is not None
    server = sim._server
    ids = [sim._nodes[f"Bulk/P{i:05d}"].nodeid for i in range(items)]
    print("ready", flush=True)
    step = 0
    loop = asyncio.get_running_loop()
    start = loop.time()
    while True:
        step += 1
        variant = ua.Variant(float(step), ua.VariantType.Double)
        for nodeid in ids:
            await server.write_attribute_value(nodeid, ua.DataValue(variant))
        await asyncio.sleep(max(0.0, start + step * period - loop.time()))


# -- the two subscribers ------------------------------------------------------------------------


def _node_ids(items: int) -> list[str]:
    return [f"nsu={NAMESPACE};s=Bulk.P{i:05d}" for i in range(items)]


class _NoOp:
    def __init__(self) -> None:
        self.count = 0

    def datachange_notification(self, node: Any, val: Any, data: Any) -> None:
        self.count += 1


async def baseline(endpoint: str, items: int, seconds: float) -> Result:
    client = Client(endpoint, timeout=30)
    await client.connect()
    try:
        ns = await client.get_namespace_index(NAMESPACE)
        handler = _NoOp()
        sub = await client.create_subscription(PUBLISHING_MS, handler)
        nodes = [client.get_node(ua.NodeId(f"Bulk.P{i:05d}", ns)) for i in range(items)]
        for i in range(0, items, 1000):
            await sub.subscribe_data_change(nodes[i : i + 1000], queuesize=1)
        await asyncio.sleep(2 * PUBLISHING_MS / 1000)  # initial values out of the way
        first, cpu0, t0 = handler.count, time.process_time(), time.perf_counter()
        await asyncio.sleep(seconds)
        return Result(handler.count - first, time.perf_counter() - t0, time.process_time() - cpu0)
    finally:
        with contextlib.suppress(Exception):
            await sub.delete()
        with contextlib.suppress(Exception):
            await client.disconnect()


async def driver(endpoint: str, items: int, seconds: float) -> Result:
    entry = {
        "name": "bench",
        "driver": "opcua",
        "connection": {"endpoint": endpoint, "timeout": "30s"},
        "publishing_interval": PUBLISHING_MS / 1000,
        "tags": [{"name": f"p{i:05d}", "node": n} for i, n in enumerate(_node_ids(items))],
    }
    drv = OpcuaDriver(OpcuaDevice.model_validate(entry))
    await drv.connect()
    interval = drv.config.poll_interval
    try:

        async def poll_for(duration: float) -> int:
            count = 0
            loop = asyncio.get_running_loop()
            end = loop.time() + duration
            while loop.time() < end:
                await asyncio.sleep(interval)
                readings = await drv.poll()
                count += len(readings)
                for part in frames(readings):
                    encode_batch(Batch("bench", max(r.ts for r in part), part))
            return count

        await poll_for(2 * interval)  # initial values out of the way
        cpu0, t0 = time.process_time(), time.perf_counter()
        count = await poll_for(seconds)
        return Result(count, time.perf_counter() - t0, time.process_time() - cpu0)
    finally:
        await drv.close()


def _show(name: str, r: Result) -> None:
    print(
        f"{name:9s} {r.rate:10.0f} changes/s  {r.cpu_per_1000 * 1000:8.2f} ms CPU per 1,000 changes"
        f"  ({r.changes} changes in {r.seconds:.1f} s)"
    )


async def _with_server(args: argparse.Namespace, run: Any) -> Result:
    """Run one subscriber against a fresh simulator process: neither inherits the other's load."""
    port = _free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.bench_opcua",
            "--serve",
            str(port),
            "--items",
            str(args.items),
            "--period",
            str(args.period),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert server.stdout is not None
        line = await asyncio.to_thread(server.stdout.readline)
        if line.strip() != "ready":
            raise SystemExit("the simulator did not start")
        result: Result = await run(f"opc.tcp://127.0.0.1:{port}/cnc", args.items, args.seconds)
        return result
    finally:
        server.terminate()
        server.wait(10)


async def main(args: argparse.Namespace) -> None:
    offered = args.items / args.period
    print(
        f"{args.items} monitored items, all changing every {args.period}s "
        f"({offered:.0f} changes/s offered), publishing every {PUBLISHING_MS} ms"
    )
    base = await _with_server(args, baseline)
    _show("baseline", base)
    ours = await _with_server(args, driver)
    _show("driver", ours)
    print(
        f"ratio     {ours.rate / base.rate:10.2f} x throughput  "
        f"{ours.cpu_per_1000 / base.cpu_per_1000:8.2f} x CPU per change"
    )


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=5000)
    parser.add_argument("--period", type=float, default=2.0, help="seconds between changes")
    parser.add_argument("--seconds", type=float, default=12.0, help="measuring window")
    parser.add_argument("--serve", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve(args.serve, args.items, args.period))
        return
    asyncio.run(main(args))


if __name__ == "__main__":
    cli()
