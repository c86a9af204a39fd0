"""Modbus TCP requests: requests/s and CPU time per request, four clients against one baseline.

Every client reads the same 30 holding registers, one request at a time per connection, for the
same time, in this run:

- raw socket: a hand-built MBAP request on an asyncio stream, answer read by length, no parsing
  (the baseline: what the event loop and the kernel cost, nothing else);
- pymodbus: a bare ``AsyncModbusTcpClient`` (what the driver used before the lean client);
- lean: a bare ``MbapClient`` (drivers/modbus/mbap.py, what the driver uses for Modbus TCP);
- driver: ``ModbusDriver.poll()`` (link, lean client, decoding of 30 tags).

Each is measured over one connection and over ``--connections`` connections at once (the
agent's case: many devices on one event loop). CPU time per request is ``time.process_time()``
over the run divided by the requests: the device answering is a child process (a minimal MBAP
responder, or the pymodbus simulator with ``--simulator``), so the figure is the client's alone.
Machines are shared and noisy: read the ratios, measured in the same run.

    python -m bench.bench_modbus_requests [--seconds 3] [--connections 100] [--simulator]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from pymodbus.client import AsyncModbusTcpClient

from bench.children import child, connected_poll, holding_device
from drivers.modbus.driver import ModbusDriver
from drivers.modbus.mbap import MbapClient
from tests.brokers import free_port

REGISTERS = 30
ADDRESS = 1000

Step = Callable[[], Awaitable[Any]]
Client = Callable[[int], contextlib.AbstractAsyncContextManager[Step]]


# -- the device -----------------------------------------------------------------------------------

#: Register ``a`` holds ``a & 0xFFFF``, big-endian, for any read of up to 125 registers.
_MEMORY = b"".join(struct.pack(">H", a & 0xFFFF) for a in range(65536 + 125))
_REQUEST = struct.Struct(">HHHBBHH")


class _Responder(asyncio.Protocol):
    """Answers function 3 from ``_MEMORY``, anything else with exception 1: as cheap as a device
    can be, so that the client, not the device, is what the run measures."""

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        assert self._transport is not None
        buf = self._buffer + data
        while len(buf) >= 12:
            tid, _, length, unit, function, address, count = _REQUEST.unpack_from(buf)
            if len(buf) < 6 + length:
                break
            buf = buf[6 + length :]
            if function == 3 and 0 < count <= 125:
                payload = _MEMORY[2 * address : 2 * (address + count)]
                head = struct.pack(">HHHBBB", tid, 0, 3 + len(payload), unit, 3, len(payload))
                self._transport.write(head + payload)
            else:
                self._transport.write(struct.pack(">HHHBBB", tid, 0, 3, unit, function | 0x80, 1))
        self._buffer = buf


async def _serve(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(_Responder, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


@contextlib.contextmanager
def device(port: int, simulator: bool) -> Any:
    """The device in a child process, ready when it accepts connections."""
    if simulator:
        args = ["-m", "simulators.modbus_tcp", "--port", str(port), "--units", "1"]
        args += ["--update-interval", "0"]
    else:
        args = ["-m", "bench.bench_modbus_requests", "--serve", str(port)]
    with child(args, port):
        yield


# -- the clients ----------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def raw_socket(port: int) -> AsyncIterator[Step]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    tid = 0
    answer = 9 + 2 * REGISTERS

    async def step() -> None:
        nonlocal tid
        tid = (tid + 1) & 0xFFFF
        writer.write(struct.pack(">HHHBBHH", tid, 0, 6, 1, 3, ADDRESS, REGISTERS))
        await reader.readexactly(answer)

    try:
        yield step
    finally:
        writer.close()


@contextlib.asynccontextmanager
async def bare_pymodbus(port: int) -> AsyncIterator[Step]:
    client = AsyncModbusTcpClient("127.0.0.1", port=port, retries=0, reconnect_delay=0)
    await client.connect()

    async def step() -> None:
        await client.read_holding_registers(ADDRESS, count=REGISTERS, device_id=1)

    try:
        yield step
    finally:
        client.close()


@contextlib.asynccontextmanager
async def lean(port: int) -> AsyncIterator[Step]:
    client = MbapClient("127.0.0.1", port, timeout=3.0)
    assert await client.connect()

    def step() -> Awaitable[Any]:
        return client.read_holding_registers(ADDRESS, count=REGISTERS, device_id=1)

    try:
        yield step
    finally:
        client.close()


@contextlib.asynccontextmanager
async def driver(port: int) -> AsyncIterator[Step]:
    drv = ModbusDriver(holding_device(port, REGISTERS, ADDRESS))
    assert len(drv.requests) == 1
    async with connected_poll(drv) as step:
        yield step


CLIENTS: dict[str, Client] = {
    "raw socket": raw_socket,
    "pymodbus": bare_pymodbus,
    "lean": lean,
    "driver": driver,
}


# -- the run --------------------------------------------------------------------------------------


async def measure(
    client: Client, port: int, connections: int, seconds: float
) -> tuple[float, float]:
    """(requests/s, CPU seconds per request) of ``connections`` clients, each sequential."""
    loop = asyncio.get_running_loop()
    async with contextlib.AsyncExitStack() as stack:
        steps = [await stack.enter_async_context(client(port)) for _ in range(connections)]
        counts = [0] * connections

        async def work(i: int, step: Step, until: float) -> None:
            n = 0
            while loop.time() < until:
                await step()
                n += 1
            counts[i] = n

        # Warm up (connections settled, caches filled), then the measured run.
        await asyncio.gather(*(work(i, s, loop.time() + 0.2) for i, s in enumerate(steps)))
        cpu0, t0 = time.process_time(), loop.time()
        await asyncio.gather(*(work(i, s, t0 + seconds) for i, s in enumerate(steps)))
        wall, cpu = loop.time() - t0, time.process_time() - cpu0
    total = sum(counts)
    return total / wall, cpu / total


async def run(
    port: int, connections: int, seconds: float
) -> dict[int, dict[str, tuple[float, float]]]:
    figures: dict[int, dict[str, tuple[float, float]]] = {}
    for n in dict.fromkeys((1, connections)):
        figures[n] = {name: await measure(c, port, n, seconds) for name, c in CLIENTS.items()}
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_modbus_requests")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--connections", type=int, default=100)
    parser.add_argument("--simulator", action="store_true", help="the pymodbus simulator answers")
    parser.add_argument("--serve", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_serve(args.serve))
        return
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    port = free_port()
    with device(port, args.simulator):
        figures = asyncio.run(run(port, args.connections, args.seconds))
    who = "the pymodbus simulator" if args.simulator else "a minimal MBAP responder"
    print(f"Modbus TCP, read {REGISTERS} holding registers, {who} in a child process, localhost")
    for n, rates in figures.items():
        base_rate, base_cpu = rates["raw socket"]
        print(f"{n} connection{'s' if n > 1 else ''}, one request at a time on each:")
        for name, (rate, cpu) in rates.items():
            print(
                f"  {name:<11} {rate:8.0f} requests/s {rate / base_rate:5.2f} x raw socket"
                f"   {cpu * 1e6:6.1f} us CPU/request {cpu / base_cpu:5.2f} x raw socket"
            )


if __name__ == "__main__":
    main()
