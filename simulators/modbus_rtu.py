"""The machines of ``modbus_tcp`` on a simulated RS-485 line: RTU frames on a pseudo-terminal.

pymodbus's serial server runs on one pty; the agent opens another (``path``); between the two
masters a relay plays the wire. It carries bytes at the line's real speed: a character takes
``(start + data + parity + stop bits) / baudrate`` seconds (about 1.04 ms at 9600 baud 8N1, so
960 bytes/s), the line is half duplex (one direction at a time, as RS-485 is), and the bytes
arrive when their last bit would have. So a poll over this line takes as long as on a real one,
and what the benchmark calls line utilisation is measured, not assumed.

Everything the TCP simulator offers works here too: several unit ids on the line, a silent unit
(``set_silent``: its answers never leave it), a unit id nobody has (nothing answers, as on a real
bus), exceptions for part of a unit's map (``set_illegal``), and the request log.

Command line (prints the path to configure as ``connection.port``)::

    python -m simulators.modbus_rtu --units 1-8 --baudrate 9600 --silent 5 --illegal 3:10-19
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
import tty
from collections.abc import Iterable, Sequence

from pymodbus.framer import FramerType
from pymodbus.server import ModbusSerialServer
from pymodbus.server.base import ModbusBaseServer
from pymodbus.simulator import SimDevice

from simulators.modbus_tcp import ModbusSimulator, parse_units
from simulators.service import run_modbus_cli, serve_until_signal

log = logging.getLogger(__name__)


class RtuSimulator(ModbusSimulator):
    """Unit ids on one RS-485 line; the agent opens :attr:`path`."""

    def __init__(
        self,
        units: Iterable[int] = (1, 2),
        *,
        baudrate: int = 9600,
        parity: str = "N",
        stopbits: int = 1,
        bytesize: int = 8,
        seed: int = 0,
        update_interval: float | None = None,
    ) -> None:
        super().__init__(units=units, seed=seed, update_interval=update_interval, framer="rtu")
        self.baudrate = baudrate
        self.parity = parity
        self.stopbits = stopbits
        self.bytesize = bytesize
        self.path = ""
        self._fds: list[int] = []
        self._masters: tuple[int, int] | None = None  # (agent side, device side)
        self._wire_free = 0.0  # loop time the line is next idle
        #: Bytes carried each way and the time the line was busy carrying them.
        self.bytes_to_devices = 0
        self.bytes_to_agent = 0
        self.busy_seconds = 0.0
        #: Silence the agent left before each request: from the last byte it was delivered to
        #: the first byte of its next request (the inter-frame gap, as a line analyser shows it).
        self.gaps: list[float] = []
        self._delivered_at: float | None = None

    @property
    def char_time(self) -> float:
        """Seconds per character on the wire."""
        bits = 1 + self.bytesize + (0 if self.parity == "N" else 1) + self.stopbits
        return bits / self.baudrate

    async def _serve(self, devices: list[SimDevice]) -> ModbusBaseServer:
        agent_master, agent_slave = os.openpty()
        device_master, device_slave = os.openpty()
        for fd in (agent_slave, device_slave):
            tty.setraw(fd)
        for fd in (agent_master, device_master):
            os.set_blocking(fd, False)
        # The slaves stay open here too: a pty whose slave nobody holds reads EIO at the master.
        self._fds = [agent_master, agent_slave, device_master, device_slave]
        self._masters = (agent_master, device_master)
        self.path = os.ttyname(agent_slave)
        server = ModbusSerialServer(
            devices,
            framer=FramerType.RTU,
            port=os.ttyname(device_slave),
            baudrate=self.baudrate,
            parity=self.parity,
            stopbits=self.stopbits,
            bytesize=self.bytesize,
            ignore_missing_devices=True,
            trace_packet=self._trace_packet,
            trace_pdu=self._trace_pdu,
        )
        await server.serve_forever(background=True)
        loop = asyncio.get_running_loop()
        loop.add_reader(agent_master, self._carry, agent_master, device_master, True)
        loop.add_reader(device_master, self._carry, device_master, agent_master, False)
        return server

    def _carry(self, source: int, target: int, to_devices: bool) -> None:
        """Bytes from one end, delivered to the other after their time on the wire."""
        try:
            data = os.read(source, 4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # the agent closed its end: nothing to carry
            return
        if not data:
            return
        loop = asyncio.get_running_loop()
        if to_devices and self._delivered_at is not None:
            self.gaps.append(loop.time() - self._delivered_at)
            self._delivered_at = None
        duration = len(data) * self.char_time
        start = max(loop.time(), self._wire_free)
        self._wire_free = start + duration
        self.busy_seconds += duration
        if to_devices:
            self.bytes_to_devices += len(data)
        else:
            self.bytes_to_agent += len(data)
        loop.call_at(self._wire_free, self._deliver, target, data)

    def _deliver(self, target: int, data: bytes) -> None:
        if target not in self._fds:
            return
        with contextlib.suppress(OSError):
            os.write(target, data)
        if self._masters is not None and target == self._masters[0]:
            self._delivered_at = asyncio.get_running_loop().time()

    async def stop(self) -> None:
        await super().stop()
        loop = asyncio.get_running_loop()
        if self._masters is not None:
            for fd in self._masters:
                loop.remove_reader(fd)
            self._masters = None
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds = []


async def _serve(args: argparse.Namespace) -> None:
    sim = RtuSimulator(
        args.units,
        baudrate=args.baudrate,
        parity=args.parity,
        seed=args.seed,
        update_interval=args.update_interval or None,
    )

    def ready() -> None:
        for unit in args.silent:
            sim.set_silent(unit)
        for unit, first, last in args.illegal:
            sim.set_illegal(unit, first, last)
        print(
            f"modbus rtu simulator on {sim.path} at {args.baudrate} baud 8{args.parity}1, "
            f"units {','.join(str(u) for u in sim.units)}",
            flush=True,
        )

    await serve_until_signal(sim, ready)


def _illegal(text: str) -> tuple[int, int, int]:
    """``3:10-19``: unit 3 answers exception 2 for registers 10 to 19."""
    unit, _, span = text.partition(":")
    first, _, last = span.partition("-")
    return int(unit), int(first), int(last or first)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m simulators.modbus_rtu",
        description="Simulated machines on one RS-485 line (RTU over a pseudo-terminal).",
    )
    parser.add_argument("--units", type=parse_units, default=(1, 2), help="as modbus_tcp's")
    parser.add_argument("--baudrate", type=int, default=9600)
    parser.add_argument("--parity", choices=["N", "E", "O"], default="N")
    parser.add_argument("--silent", type=int, nargs="*", default=[], help="units that never answer")
    parser.add_argument(
        "--illegal",
        type=_illegal,
        nargs="*",
        default=[],
        metavar="UNIT:FIRST-LAST",
        help="registers of a unit that answer exception 2 (illegal data address)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--update-interval", type=float, default=0.5)
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)
    return run_modbus_cli(_serve(args), args.log_level)


if __name__ == "__main__":
    sys.exit(main())
