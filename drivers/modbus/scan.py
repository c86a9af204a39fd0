"""``edge-agent scan modbus``: which unit ids answer on an RS-485 line.

Each unit id in turn is asked for holding register 0 (function 3), with a short timeout. Any
answer proves a device is there, an exception too (many devices have no register 0), so it is
shown with what the device said. The frames are written and read here rather than through
pymodbus: a scan must see an answer for a unit other than the one asked (a late answer) as that
unit's, and pymodbus would take it as the answer to the current request.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import sys
from collections.abc import Sequence
from typing import TextIO

from drivers.base import DeviceError
from drivers.serial.checksums import crc16_modbus
from drivers.serial.config import SerialConnection
from drivers.serial.port import SerialPort
from drivers.serial.scanning import line_arguments, line_connection, run_scan

_UNITS = re.compile(r"^(\d+)(?:-(\d+))?$")
_EXCEPTIONS = {1: "illegal function", 2: "illegal data address", 3: "illegal data value"}


def units(text: str) -> list[int]:
    """``1-247``, ``5`` or ``1-10,20``: the unit ids to ask."""
    found: list[int] = []
    for part in text.split(","):
        m = _UNITS.match(part.strip())
        if m is None:
            raise argparse.ArgumentTypeError(f"not a unit id range like 1-247: {part!r}")
        low, high = int(m.group(1)), int(m.group(2) or m.group(1))
        if not 1 <= low <= high <= 247:
            raise argparse.ArgumentTypeError(f"unit ids are 1 to 247: {part!r}")
        found += range(low, high + 1)
    return list(dict.fromkeys(found))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="edge-agent scan modbus", description="List the Modbus RTU units on a line."
    )
    line_arguments(p, baudrate=None, parity="N")
    p.add_argument("--units", type=units, default="1-247", help="unit ids to ask, e.g. 1-32")
    p.add_argument("--timeout", type=float, default=0.1, help="seconds to wait for each answer")
    return p


def request(unit: int) -> bytes:
    """Read one holding register at address 0."""
    body = bytes([unit, 3, 0, 0, 0, 1])
    crc = crc16_modbus(body)
    return body + bytes([crc & 0xFF, crc >> 8])


class _Listener:
    """Answers heard, by unit id: what each said (a register, or its exception)."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.found: dict[int, str] = {}
        self.event = asyncio.Event()

    def on_data(self, data: bytes) -> None:
        self.buffer += data
        buf = self.buffer
        while len(buf) >= 5:
            unit, function = buf[0], buf[1]
            size = 5 if function == 0x83 else 5 + buf[2] if function == 3 else 0
            if size == 0 or len(buf) < size:
                if size == 0:
                    del buf[:1]  # not the start of an answer to function 3
                    continue
                return
            frame = bytes(buf[:size])
            crc = crc16_modbus(frame[:-2])
            if frame[-2:] != bytes([crc & 0xFF, crc >> 8]):
                del buf[:1]
                continue
            del buf[:size]
            if function == 0x83:
                code = frame[2]
                said = f"exception {code} ({_EXCEPTIONS.get(code, 'device specific')})"
            else:
                said = f"holding register 0 = {int.from_bytes(frame[3:5], 'big')}"
            self.found.setdefault(unit, said)
            self.event.set()


async def scan(
    conn: SerialConnection, ids: list[int], timeout: float, out: TextIO, err: TextIO
) -> dict[int, str]:
    listener = _Listener()
    lost: list[str] = []
    port = await SerialPort.open(conn, listener.on_data, lost.append)
    shown: set[int] = set()
    # RTU frames are told apart by silence: 3.5 characters (11 bits each at most), 1.75 ms
    # above 19200 baud, between an answer and the next request.
    silence = max(3.5 * 11 / conn.baudrate, 0.00175)
    try:
        for n, unit in enumerate(ids):
            if n % 10 == 0:
                print(f"\r{n}/{len(ids)}", end="", file=err, flush=True)
            listener.event.clear()
            listener.buffer.clear()
            await asyncio.sleep(silence)
            port.drain_input()
            await port.write(request(unit))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(listener.event.wait(), timeout)
            if lost:
                raise DeviceError("port lost", lost[0])
            for found, said in listener.found.items():
                if found not in shown:
                    shown.add(found)
                    print(f"unit {found}: {said}", file=out, flush=True)
        print(f"\r{len(ids)}/{len(ids)}", file=err, flush=True)
    finally:
        port.close()
    return listener.found


def main(argv: Sequence[str], out: TextIO | None = None, err: TextIO | None = None) -> int:
    # The streams of now, not of import time (a test or a caller may have replaced them).
    out = out or sys.stdout
    err = err or sys.stderr
    args = parser().parse_args(list(argv))
    ids = args.units if isinstance(args.units, list) else units(args.units)
    conn = line_connection(args)
    print(
        f"scanning {args.port} at {args.baudrate} baud 8{args.parity}{args.stopbits}, "
        f"{len(ids)} unit ids",
        file=out,
        flush=True,
    )
    found = run_scan(scan(conn, ids, args.timeout, out, err), err)
    if found is None:
        return 1
    print(f"{len(found)} answered: {' '.join(str(u) for u in sorted(found)) or '-'}", file=out)
    return 0 if found else 1
