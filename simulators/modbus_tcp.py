"""A Modbus TCP press with a power meter, on pymodbus's server, for development and tests.

Each unit id is one machine with its own state: voltages around 230 V with noise, currents and
power that follow a running/stopped cycle, an energy counter and operating hours that only grow,
a 16-bit stroke counter that wraps, a door that opens only while the press stands still, a serial
number; plus a static type-test area (see ``modbus_map`` and ``simulators/README.md``).

Tests drive it through :class:`ModbusSimulator`: read or set a named value, make a unit stop
answering (as a powered-off device behind a gateway does: the request is swallowed), answer an
exception for an address range, delay answers, count requests, stop and restart on the same port.

``framer="rtu"`` serves RTU frames (CRC, no MBAP header) over TCP, as a transparent serial-to-
Ethernet converter in front of an RS-485 line does; ``simulators.modbus_rtu`` serves the same
machines on a pseudo-terminal at an honest baud rate. ``log`` records every request (unit,
function, address, count) and ``connections`` counts TCP connections, so tests can show what an
option changes on the wire.

Command line::

    python -m simulators.modbus_tcp --host 127.0.0.1 --port 5020 --units 1-100 --seed 1
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import logging
import math
import random
import sys
from collections import Counter, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from pymodbus.constants import ExcCodes
from pymodbus.framer import FramerType
from pymodbus.pdu import ModbusPDU
from pymodbus.server import ModbusTcpServer
from pymodbus.server.base import ModbusBaseServer
from pymodbus.simulator import DataType, SimData, SimDevice

from simulators.modbus_map import (
    BENCH_POINTS,
    BITS,
    POINTS,
    PRESS_POINTS,
    REGISTERS,
    TYPE_TEST_POINTS,
    Point,
    PointValue,
    Table,
    bench_config,
    from_registers,
    to_registers,
)
from simulators.service import (
    Service,
    bound_port,
    cancel,
    run_modbus_cli,
    serve_until_signal,
)

log = logging.getLogger(__name__)

#: Function code to the table it addresses (reads and writes).
FUNCTION_TABLES: Final[dict[int, Table]] = {
    1: "coil",
    5: "coil",
    15: "coil",
    2: "discrete",
    3: "holding",
    6: "holding",
    16: "holding",
    22: "holding",
    23: "holding",
    4: "input",
}
_BIT_TABLES: Final = ("coil", "discrete")
STROKES_PER_MINUTE: Final = 24.0


# ------------------------------------------------------------------------------ device memory


class Image:
    """One unit's memory: registers per table, bits packed 16 to a word (bit 0 = lowest).

    Bits are kept packed because that is how pymodbus's device block keeps them, so serving a
    request is one slice copy for every table.
    """

    def __init__(self) -> None:
        self.words: dict[Table, list[int]] = {
            "holding": [0] * REGISTERS,
            "input": [0] * REGISTERS,
            "coil": [0] * (BITS // 16),
            "discrete": [0] * (BITS // 16),
        }

    def get_bit(self, table: Table, address: int) -> bool:
        return bool((self.words[table][address // 16] >> (address % 16)) & 1)

    def set_bit(self, table: Table, address: int, value: bool) -> None:
        words, mask = self.words[table], 1 << (address % 16)
        words[address // 16] = (
            (words[address // 16] | mask) if value else (words[address // 16] & ~mask)
        )

    def read(self, point: Point) -> PointValue:
        if point.table in _BIT_TABLES:
            return self.get_bit(point.table, point.address)
        words = self.words[point.table][point.address : point.address + point.width]
        if point.type == "bool":
            return bool((words[0] >> (point.bit or 0)) & 1)
        return from_registers(point, words)

    def write(self, point: Point, value: PointValue) -> None:
        if point.table in _BIT_TABLES:
            self.set_bit(point.table, point.address, bool(value))
            return
        words = self.words[point.table]
        if point.type == "bool":
            mask = 1 << (point.bit or 0)
            words[point.address] = (
                (words[point.address] | mask) if value else (words[point.address] & ~mask)
            )
            return
        words[point.address : point.address + point.width] = to_registers(point, value)


# ------------------------------------------------------------------------------------ physics


class Press:
    """The behaviour of one machine: a state machine and the meter readings that follow it."""

    def __init__(self, unit: int, seed: int, image: Image) -> None:
        self.rng = random.Random(f"{seed}/{unit}")
        self.image = image
        self.running = True
        self.in_state = 0.0
        self.state_duration = self.rng.uniform(20.0, 60.0)
        self.door_open = False
        self.oil_temp = 45.0
        self.energy_kwh = self.rng.uniform(1000.0, 50000.0)
        self.operating_hours = round(self.rng.uniform(100.0, 20000.0), 2)
        self.total_strokes = self.rng.randrange(100_000, 10_000_000)
        self.stroke_fraction = 0.0
        for p in PRESS_POINTS:
            image.write(p, p.initial)
        image.write(POINTS["serial_no"], f"PRS-{unit:04d}")
        image.write(POINTS["stroke_count"], self.total_strokes % 65536)
        image.write(POINTS["estop_ok"], True)
        self.step(0.0)

    def _set(self, name: str, value: PointValue) -> None:
        self.image.write(POINTS[name], value)

    def step(self, dt: float) -> None:
        """Advance the machine by ``dt`` seconds and write what its meter would show."""
        rng = self.rng
        self.in_state += dt
        if self.in_state >= self.state_duration:
            self.running = not self.running
            self.in_state = 0.0
            self.state_duration = rng.uniform(20.0, 60.0) if self.running else rng.uniform(5, 20)
            self.door_open = not self.running and rng.random() < 0.5
        volts = [round(230.0 + rng.gauss(0.0, 0.6), 1) for _ in range(3)]
        amps = [
            max(0.0, round((12.4 if self.running else 0.35) + rng.gauss(0.0, 0.2), 2))
            for _ in range(3)
        ]
        pf = round((0.92 if self.running else 0.35) + rng.gauss(0.0, 0.005), 3)
        apparent = sum(v * a for v, a in zip(volts, amps, strict=True)) / 1000.0
        power = round(apparent * pf, 3)
        self.energy_kwh += power * dt / 3600.0
        target = 58.0 if self.running else 32.0
        self.oil_temp += (target - self.oil_temp) * (1.0 - math.exp(-dt / 120.0))
        strokes = 0
        if self.running:
            self.operating_hours += dt / 3600.0
            self.stroke_fraction += dt * STROKES_PER_MINUTE / 60.0
            strokes = int(self.stroke_fraction)
            self.stroke_fraction -= strokes
            self.total_strokes += strokes
        for i, (v, a) in enumerate(zip(volts, amps, strict=True), start=1):
            self._set(f"voltage_l{i}", v)
            self._set(f"current_l{i}", round(a * 100))
        self._set("frequency", round((50.0 + rng.gauss(0.0, 0.01)) * 100))
        self._set("power_kw", power)
        self._set("apparent_power_kva", round(apparent, 3))
        self._set("power_factor", round(pf * 1000))
        self._set("energy_kwh", int(self.energy_kwh * 100) & 0xFFFFFFFF)
        self._set("oil_temp", round(self.oil_temp * 10))
        self._set("ambient_temp", round((23.0 + rng.gauss(0.0, 0.1)) * 10))
        count = int(self.image.read(POINTS["stroke_count"]))
        self._set("stroke_count", (count + strokes) % 65536)
        self._set("total_strokes", self.total_strokes)
        self._set("operating_hours", self.operating_hours)
        self._set("state", int(self.running))
        self._set("status_word", int(self.running) | (int(self.door_open) << 3))
        cycle = round(60000 / STROKES_PER_MINUTE + rng.gauss(0.0, 40.0)) if self.running else 0
        self._set("cycle_time_ms", max(0, cycle))
        self._set("running", self.running)
        self._set("door_closed", not self.door_open)


# ------------------------------------------------------------------------------------ server


@dataclass
class _Unit:
    image: Image
    press: Press
    silent: bool = False
    delay: float = 0.0
    exceptions: list[tuple[Table, int, int, int]] = field(default_factory=list)


def parse_units(text: str) -> tuple[int, ...]:
    """``5`` (units 1 to 5), ``3-7``, or a list ``1,2,9``; unit ids 1 to 247."""
    units: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if "-" in part:
            first, last = (int(x) for x in part.split("-", 1))
            units.extend(range(first, last + 1))
        elif "," in text:
            units.append(int(part))
        else:
            units.extend(range(1, int(part) + 1))
    if not units or any(not 1 <= u <= 247 for u in units):
        raise ValueError(f"units {text!r}: give unit ids between 1 and 247")
    return tuple(sorted(set(units)))


class ModbusSimulator(Service):
    """The simulated machines on one TCP port, one per unit id, each with its own state.

    ``update_interval=None`` freezes the physics (values change only through :meth:`step`,
    :meth:`set_value` or client writes), which is what a test comparing values needs.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        units: Iterable[int] = (1, 2),
        seed: int = 0,
        update_interval: float | None = 0.5,
        *,
        framer: str = "socket",
    ) -> None:
        self.host = host
        self.port = port
        self.update_interval = update_interval
        self.framer = FramerType.RTU if framer == "rtu" else FramerType.SOCKET
        #: Every request received: (unit, function code, address, count), oldest first.
        self.log: deque[tuple[int, int, int, int]] = deque(maxlen=100_000)
        #: TCP connections accepted since start.
        self.connections = 0
        self._units: dict[int, _Unit] = {}
        for unit in units:
            image = Image()
            for p in TYPE_TEST_POINTS + BENCH_POINTS:
                image.write(p, p.initial)
            self._units[unit] = _Unit(image, Press(unit, seed, image))
        self._requests: Counter[int] = Counter()
        self._server: ModbusBaseServer | None = None
        self._ticker: asyncio.Task[None] | None = None

    @property
    def units(self) -> tuple[int, ...]:
        return tuple(self._units)

    # ------------------------------------------------------------------------- test controls

    def value(self, unit: int, name: str) -> PointValue:
        """The value a named point holds now, as the device would report it."""
        return self._units[unit].image.read(POINTS[name])

    def set_value(self, unit: int, name: str, value: PointValue) -> None:
        self._units[unit].image.write(POINTS[name], value)

    def registers(self, unit: int, table: Table, address: int, count: int) -> list[int]:
        """Raw memory of ``unit``: registers, or for coil/discrete tables bits as 0/1."""
        image = self._units[unit].image
        if table in _BIT_TABLES:
            return [int(image.get_bit(table, a)) for a in range(address, address + count)]
        return list(image.words[table][address : address + count])

    def set_registers(self, unit: int, table: Table, address: int, values: Sequence[int]) -> None:
        image = self._units[unit].image
        if table in _BIT_TABLES:
            for i, v in enumerate(values):
                image.set_bit(table, address + i, bool(v))
        else:
            image.words[table][address : address + len(values)] = [int(v) for v in values]

    def set_silent(self, unit: int, silent: bool = True) -> None:
        """A silent unit still receives requests but its answers never leave the device."""
        self._units[unit].silent = silent

    def set_delay(self, unit: int, seconds: float) -> None:
        """Answer every request of ``unit`` this much later (a slow gateway or PLC)."""
        self._units[unit].delay = seconds

    def set_exception(self, unit: int, table: Table, first: int, last: int, code: int = 2) -> None:
        """Answer exception ``code`` to any request touching ``first..last`` of ``table``.

        For coils and discrete inputs the check works on whole 16-bit words, which is how
        pymodbus hands bit requests to the device.
        """
        self._units[unit].exceptions.append((table, first, last, code))

    def set_illegal(self, unit: int, start: int, end: int) -> None:
        """Register reads (holding or input) touching ``start..end`` answer exception 2."""
        self.set_exception(unit, "holding", start, end, 2)
        self.set_exception(unit, "input", start, end, 2)

    @property
    def total_requests(self) -> int:
        """Requests received over all units (the benchmark divides it by cycles)."""
        return sum(self._requests.values())

    def clear_exceptions(self, unit: int) -> None:
        self._units[unit].exceptions.clear()

    def requests(self, unit: int) -> int:
        """Requests received for ``unit`` since start, answered or not."""
        return self._requests[unit]

    def step(self, seconds: float) -> None:
        """Advance every machine by ``seconds`` of simulated time."""
        for u in self._units.values():
            u.press.step(seconds)

    # ------------------------------------------------------------------------------ life cycle

    def requests_of(self, unit: int, function: int | None = None) -> list[tuple[int, int]]:
        """(address, count) of every request ``unit`` received, of ``function`` if given."""
        return [
            (address, count)
            for u, fc, address, count in self.log
            if u == unit and (function is None or fc == function)
        ]

    async def start(self) -> None:
        """Listen (on the same port again after a stop, so clients can reconnect)."""
        devices = [self._device(unit) for unit in self._units]
        # Unit ids without a machine get "gateway target device failed to respond", as from a
        # real TCP gateway, rather than a crash report in pymodbus's log. In RTU frames nobody
        # answers for them (``_trace_packet`` drops it: the request times out, as on a line).
        devices.append(self._device(0))
        server = await self._serve(devices)
        self._server = server
        if self.update_interval is not None and self._ticker is None:
            self._ticker = asyncio.create_task(self._tick(self.update_interval))
        log.info("simulator listening on %s:%s, units %s", self.host, self.port, self.units)

    async def _serve(self, devices: list[SimDevice]) -> ModbusBaseServer:
        server = ModbusTcpServer(
            devices,
            framer=self.framer,
            address=(self.host, self.port),
            ignore_missing_devices=self.framer == FramerType.RTU,
            trace_packet=self._trace_packet,
            trace_pdu=self._trace_pdu,
            trace_connect=self._trace_connect,
        )
        await server.serve_forever(background=True)
        if self.port == 0:
            self.port = bound_port(server)
        return server

    def _trace_connect(self, connected: bool) -> None:
        if connected:
            self.connections += 1

    async def stop(self) -> None:
        """Close the listener and every client connection (as a power cut would)."""
        ticker, self._ticker = self._ticker, None
        await cancel(ticker)
        if self._server is not None:
            shutdown: Any = self._server.shutdown  # untyped in pymodbus
            await shutdown()
            self._server = None

    async def _tick(self, interval: float) -> None:
        loop = asyncio.get_running_loop()
        last = loop.time()
        while True:
            await asyncio.sleep(interval)
            now = loop.time()
            self.step(now - last)
            last = now

    # --------------------------------------------------------------------------- pymodbus hooks

    def _device(self, unit: int) -> SimDevice:
        words = REGISTERS
        bits = BITS
        if unit == 0:
            words = bits = 65536  # every address, so that the answer is always exception 11
        return SimDevice(
            id=unit,
            simdata=(
                # values as a list, not count=: pymodbus 3.16 multiplies a bit block by count
                # twice while checking it (count squared booleans, a MemoryError at 65536).
                [SimData(0, values=[False] * bits, datatype=DataType.BITS)],
                [SimData(0, values=[False] * bits, datatype=DataType.BITS)],
                [SimData(0, count=words, values=0, datatype=DataType.REGISTERS)],
                [SimData(0, count=words, values=0, datatype=DataType.REGISTERS)],
            ),
            action=functools.partial(self._access, unit),
        )

    async def _access(
        self,
        unit: int,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        """Called by pymodbus for every request, before it answers from ``registers``.

        Copies the unit's image into pymodbus's block for the addressed range (and a write
        back into the image), so the image stays the one source of truth. For bit tables
        ``address`` is a bit address and ``count`` a number of 16-bit words.
        """
        state = self._units.get(unit)
        if state is None:
            return ExcCodes.GATEWAY_NO_RESPONSE
        if state.delay:
            await asyncio.sleep(state.delay)
        table = FUNCTION_TABLES.get(function_code)
        if table is None:
            return ExcCodes.ILLEGAL_FUNCTION
        bits = table in _BIT_TABLES
        first_word = address // 16 if bits else address
        lo, hi = (
            (first_word * 16, (first_word + count) * 16 - 1)
            if bits
            else (
                address,
                address + count - 1,
            )
        )
        for ex_table, first, last, code in state.exceptions:
            if ex_table == table and lo <= last and hi >= first:
                return ExcCodes(code)
        image = state.image.words[table]
        if set_values is not None:
            if bits:
                for i, v in enumerate(set_values):
                    state.image.set_bit(table, address + i, bool(v))
            else:
                image[address : address + len(set_values)] = [int(v) for v in set_values]
        offset = first_word - start_address
        registers[offset : offset + count] = image[first_word : first_word + count]
        return None

    def _trace_pdu(self, sending: bool, pdu: ModbusPDU) -> ModbusPDU:
        if not sending:
            self._requests[pdu.dev_id] += 1
            self.log.append((pdu.dev_id, pdu.function_code, pdu.address, pdu.count))
        return pdu

    def _trace_packet(self, sending: bool, data: bytes) -> bytes:
        """Swallows the answers of silent units (the unit id is byte 6 of the MBAP header, byte
        0 of an RTU frame)."""
        at = 0 if self.framer == FramerType.RTU else 6
        if sending and len(data) > at:
            state = self._units.get(data[at])
            if state is not None and state.silent:
                return b""
            if state is None and at == 0:  # on a serial line nobody answers for a missing unit
                return b""
        return data


# ------------------------------------------------------------------------------- command line


async def _serve(args: argparse.Namespace) -> None:
    sim = ModbusSimulator(
        args.host,
        args.port,
        units=args.units,
        seed=args.seed,
        update_interval=args.update_interval or None,
    )
    await serve_until_signal(
        sim,
        lambda: print(
            f"modbus simulator on {args.host}:{sim.port}, units {_describe(sim.units)}",
            flush=True,
        ),
    )


def _describe(units: Sequence[int]) -> str:
    if len(units) > 2 and list(units) == list(range(units[0], units[-1] + 1)):
        return f"{units[0]}-{units[-1]}"
    return ",".join(str(u) for u in units)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m simulators.modbus_tcp",
        description="Simulated presses with power meters, one per unit id, on one Modbus TCP port.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5020)
    parser.add_argument(
        "--units",
        type=parse_units,
        default=(1, 2),
        help="N (units 1..N), a range 1-100, or a list 1,2,7 (default 1-2)",
    )
    parser.add_argument("--seed", type=int, default=0, help="same seed, same machine behaviour")
    parser.add_argument(
        "--update-interval",
        type=float,
        default=0.5,
        help="seconds between physics updates; 0 freezes the values",
    )
    parser.add_argument("--log-level", default="warning")
    parser.add_argument("--write-bench-config", metavar="FILE", help="write agent YAML and exit")
    parser.add_argument("--broker-port", type=int, default=1883)
    parser.add_argument("--data-dir", default="./data/bench")
    args = parser.parse_args(argv)
    if args.write_bench_config:
        with open(args.write_bench_config, "w", encoding="utf-8") as out:
            out.write(bench_config(len(args.units), args.port, args.broker_port, args.data_dir))
        return 0
    return run_modbus_cli(_serve(args), args.log_level)


if __name__ == "__main__":
    sys.exit(main())
