"""``edge-agent scan dlt645``: which meters a line holds, found by their shortened addresses.

First the address every meter hears, ``AAAAAAAAAAAA``: one clean answer within the whole
timeout is the line's only meter, and the scan is done. Otherwise (silence, several answers, a
garbled one) it searches. A meter answers a request whose address is its own with ``AA``
standing for any byte (the standard's shortened address), so the scan asks for each value 00..99
of the lowest address byte with the five others ``AA``: a clean answer carries the whole address
of the one meter whose last two digits those are; a garbled one (a checksum error) means several
answered at once, and the scan repeats the round one byte further up under that value. Every
valid frame heard, even one arriving late, names a meter by the address it carries, so a slow
meter is not lost.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import Sequence
from typing import TextIO

from drivers.base import DeviceError
from drivers.dlt645.catalogue import Protocol, di_bytes
from drivers.dlt645.frame import Frame, FrameReader, Trouble, encode
from drivers.serial.config import SerialConnection
from drivers.serial.port import SerialPort
from drivers.serial.scanning import line_arguments, line_connection, run_scan

#: What every meter of an edition has: forward active energy, total.
PROBE: dict[Protocol, tuple[int, str]] = {"2007": (0x11, "00010000"), "1997": (0x01, "9010")}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="edge-agent scan dlt645",
        description="List the DL/T 645 meters on an RS-485 line.",
    )
    line_arguments(p, baudrate=2400, parity="E")
    p.add_argument("--protocol", default="2007", choices=["2007", "1997"])
    p.add_argument("--timeout", type=float, default=0.3, help="seconds to wait for each answer")
    return p


class _Listener:
    """What the line said since the last question: meters heard, and whether answers collided."""

    def __init__(self) -> None:
        self.reader = FrameReader()
        self.found: dict[str, None] = {}
        self.event = asyncio.Event()
        self.collided = False
        self.heard = False

    def on_data(self, data: bytes) -> None:
        for event in self.reader.feed(data):
            if isinstance(event, Frame) and event.from_meter:
                self.found.setdefault(event.meter)
                self.heard = True
                self.event.set()
            elif isinstance(event, Trouble) and event.kind == "checksum":
                self.collided = True
                self.event.set()


async def scan(
    conn: SerialConnection, protocol: Protocol, timeout: float, out: TextIO, err: TextIO
) -> list[str]:
    """The addresses of the meters that answered, in the order they were heard."""
    listener = _Listener()
    lost: list[str] = []
    port = await SerialPort.open(conn, listener.on_data, lost.append)
    control, di = PROBE[protocol]
    shown: set[str] = set()

    async def ask(address: bytes, *, whole_timeout: bool = False) -> bool:
        """Whether several meters answered at once (the round must go one byte further)."""
        listener.collided = listener.heard = False
        listener.event.clear()
        port.drain_input()
        listener.reader.discard()
        await port.write(encode(address, control, di_bytes(di), preamble=4))
        if whole_timeout:
            await asyncio.sleep(timeout)
        else:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(listener.event.wait(), timeout)
                # A clean answer may be followed by others: give them a short while more.
                await asyncio.sleep(min(timeout, 0.05))
        for meter in listener.found:
            if meter not in shown:
                shown.add(meter)
                print(f"found {meter}", file=out, flush=True)
        if lost:
            raise DeviceError("port lost", lost[0])
        return listener.collided

    async def round_under(known: bytes) -> None:
        depth = len(known) + 1
        for value in range(100):
            if value % 10 == 0:
                print(f"\rbyte {depth}: {value}/100", end="", file=err, flush=True)
            low = known + bytes([int(f"{value:02d}", 16)])
            if await ask(low + b"\xaa" * (6 - len(low))) and len(low) < 6:
                await round_under(low)
        print(f"\rbyte {depth}: 100/100", file=err, flush=True)

    try:
        # Every meter hears AAAAAAAAAAAA: silence may only mean meters that ignore it, and
        # garbage means several, but one clean answer in a whole timeout is the line's one meter.
        several = await ask(b"\xaa" * 6, whole_timeout=True)
        if several or len(listener.found) != 1:
            await round_under(b"")
    finally:
        port.close()
    return list(listener.found)


def main(argv: Sequence[str], out: TextIO | None = None, err: TextIO | None = None) -> int:
    # The streams of now, not of import time (a test or a caller may have replaced them).
    out = out or sys.stdout
    err = err or sys.stderr
    args = parser().parse_args(list(argv))
    conn = line_connection(args)
    print(
        f"scanning {args.port} at {args.baudrate} baud 8{args.parity}{args.stopbits} for "
        f"DL/T 645-{args.protocol} meters (100 addresses a round)",
        file=out,
        flush=True,
    )
    found = run_scan(scan(conn, args.protocol, args.timeout, out, err), err)
    if found is None:
        return 1
    noun = "meter" if len(found) == 1 else "meters"
    print(f"{len(found)} {noun}: {' '.join(found) or '-'}", file=out)
    return 0 if found else 1
