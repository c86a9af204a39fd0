"""What the agent's checks cost on an OPC UA write and a method call, against a bare asyncua client.

    python -m bench.bench_opcua_commands [--count 300]

A CNC simulator in a child process (so its CPU is not ours) answers both clients in turn:

- baseline: a bare asyncua ``Client``: ``write_value`` of a Double set-point (no read back),
  ``call_method`` of StartJob with two arguments;
- driver: ``OpcuaDriver.check_write`` + ``write`` (typed by the node's DataType, range-checked,
  read back) and ``check_call`` + ``call`` (arguments checked against the declared inputs).

Printed: milliseconds per operation (median and p95 of ``--count`` in a row) and the driver's
median as a ratio of the baseline's. The driver's write is two requests (write, read back), the
baseline's one: a ratio near 2 is the read back, not the checks. Machines are shared and noisy:
compare ratios, and run it more than once.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable

from asyncua import Client, ua

from drivers.opcua.config import OpcuaDevice
from drivers.opcua.driver import OpcuaDriver
from simulators.opcua_cnc import NAMESPACE

START_JOB = {
    "name": "start_job",
    "object": f"nsu={NAMESPACE};s=Machine",
    "method": f"nsu={NAMESPACE};s=Machine.StartJob",
    "inputs": [{"name": "Job", "type": "String"}, {"name": "Count", "type": "UInt32"}],
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def serve(port: int) -> None:
    from simulators.opcua_cnc import CncSimulator

    sim = CncSimulator(port=port, update_interval=None)
    await sim.start()
    sim.calls = _Discard()  # a long run must not keep every call
    print("ready", flush=True)
    await asyncio.Event().wait()


class _Discard(list):  # type: ignore[type-arg]
    def append(self, item: object) -> None:
        return None


async def timed(count: int, op: Callable[[int], Awaitable[object]]) -> list[float]:
    """Milliseconds of each of ``count`` operations in a row (after 10 to warm up)."""
    for i in range(10):
        await op(i)
    out = []
    for i in range(count):
        t0 = time.perf_counter()
        await op(i)
        out.append((time.perf_counter() - t0) * 1000)
    return out


async def baseline(endpoint: str, count: int) -> tuple[list[float], list[float]]:
    client = Client(endpoint, timeout=10)
    await client.connect()
    try:
        ns = await client.get_namespace_index(NAMESPACE)
        node = client.get_node(ua.NodeId("Setpoints.FeedOverride", ns))
        machine = client.get_node(ua.NodeId("Machine", ns))
        method = ua.NodeId("Machine.StartJob", ns)

        async def write(i: int) -> object:
            return await node.write_value(ua.Variant(float(i % 150), ua.VariantType.Double))

        async def call(i: int) -> object:
            job = ua.Variant(f"JOB-{i}", ua.VariantType.String)
            return await machine.call_method(method, job, ua.Variant(5, ua.VariantType.UInt32))

        return await timed(count, write), await timed(count, call)
    finally:
        with contextlib.suppress(Exception):
            await client.disconnect()


async def driver(endpoint: str, count: int) -> tuple[list[float], list[float]]:
    entry = {
        "name": "bench",
        "driver": "opcua",
        "connection": {"endpoint": endpoint, "timeout": "10s"},
        "tags": [
            {
                "name": "feed",
                "node": f"nsu={NAMESPACE};s=Setpoints.FeedOverride",
                "writable": True,
                "min": 0,
                "max": 150,
            }
        ],
        "methods": [START_JOB],
    }
    drv = OpcuaDriver(OpcuaDevice.model_validate(entry))
    await drv.connect()
    try:

        async def write(i: int) -> object:
            value = i % 150
            drv.check_write("feed", value)
            await drv.write("feed", value)
            return None

        async def call(i: int) -> object:
            args = [f"JOB-{i}", 5]
            drv.check_call("start_job", args)
            return await drv.call("start_job", args)

        return await timed(count, write), await timed(count, call)
    finally:
        await drv.close()


def _line(name: str, ms: list[float], base: list[float] | None) -> str:
    p95 = statistics.quantiles(ms, n=20)[18]
    ratio = f"  x{statistics.median(ms) / statistics.median(base):.2f}" if base else ""
    return f"  {name:<16} median {statistics.median(ms):6.2f} ms  p95 {p95:6.2f} ms{ratio}"


async def main(count: int) -> None:
    port = _free_port()
    child = subprocess.Popen(
        [sys.executable, "-m", "bench.bench_opcua_commands", "--serve", str(port)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        if child.stdout.readline().strip() != "ready":
            raise SystemExit("the simulator did not start")
        endpoint = f"opc.tcp://127.0.0.1:{port}/cnc"
        base_write, base_call = await baseline(endpoint, count)
        drv_write, drv_call = await driver(endpoint, count)
    finally:
        child.terminate()
        child.wait(10)
    print(f"OPC UA commands, {count} in a row each (simulator in a child process):")
    print(_line("asyncua write", base_write, None))
    print(_line("driver write", drv_write, base_write) + "  (write + read back)")
    print(_line("asyncua call", base_call, None))
    print(_line("driver call", drv_call, base_call))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve(args.serve))
    else:
        asyncio.run(main(args.count))
