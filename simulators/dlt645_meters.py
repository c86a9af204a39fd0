"""DL/T 645 energy meters on one RS-485 line (a pty), written from the standard's text.

Nothing here comes from the driver: the frame, the address rules, the data formats and the error
answers are written out again from DL/T 645-2007 (sections 4 to 7 and annex A) and -1997, so a
misreading of the standard in one is caught by the other.

- A request is ``FE.. 68 A0..A5 68 C L DATA CS 16`` with 0x33 added to each data byte. Every
  meter on the line hears it; a meter answers when the address is its own, ``AA`` bytes
  standing for any digit pair (the standard's shortened address; ``AAAAAAAAAAAA`` reaches every
  meter). Several meters answering at once collide: the line carries the AND of their bytes (a
  driven 0 wins), which no checksum survives, as on a real bus.
- Read data: -2007 ``C=11`` (answer ``91``, ``B1`` with follow-ups, error ``D1`` + ERR), read
  follow-up ``12`` with a sequence byte; -1997 ``C=01`` (``81``/``A1``, error ``C1``), follow-up
  ``02``; -2007 read address ``13`` to ``AAAAAAAAAAAA``.
- Values are held as physical quantities (``230.1`` V) and written in the identifier's format:
  BCD, lowest byte first, the sign in the top bit where the standard gives a direction.
- ``baudrate``: answers come when they would on a real line at that speed (11 bits a character:
  8 data bits, even parity, start and stop bits), the request's own time on the wire counted, so a
  benchmark measures the line, not the pty. ``bytes_on_line`` counts both directions, an
  answer once its last byte is on the line.

Command line (prints the pty's path, runs until Ctrl-C)::

    python -m simulators.dlt645_meters [--link PATH] [--baudrate N]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from simulators.serial_instruments import PtyInstrument
from simulators.service import serve_until_signal

#: The standard's formats of the identifiers the meters hold: digits, decimals, has a direction.
FORMATS_2007: Mapping[str, tuple[int, int, bool]] = {
    **{f"00{k}{t:02X}00": (8, 2, k in ("00", "03", "04")) for k in ("00", "01", "02", "03", "04")
       for t in range(5)},
    **{f"0201{p}00": (4, 1, False) for p in ("01", "02", "03")},
    **{f"0202{p}00": (6, 3, True) for p in ("01", "02", "03")},
    **{f"02{q}{p}00": (6, 4, True) for q in ("03", "04", "05") for p in ("00", "01", "02", "03")},
    **{f"0206{p}00": (4, 3, True) for p in ("00", "01", "02", "03")},
    "02800001": (6, 3, True),
    "02800002": (4, 2, False),
    "02800004": (6, 4, True),
    "02800005": (6, 4, True),
    "02800007": (4, 1, True),
}  # fmt: skip
FORMATS_1997: Mapping[str, tuple[int, int, bool]] = {
    **{f"9{k}{t}": (8, 2, False) for k in ("01", "02", "11", "12") for t in range(5)},
    **{f"B61{p}": (4, 0, False) for p in (1, 2, 3)},
    **{f"B62{p}": (4, 2, False) for p in (1, 2, 3)},
    **{f"B63{p}": (6, 4, False) for p in range(4)},
    **{f"B64{p}": (4, 2, False) for p in range(4)},
    **{f"B65{p}": (4, 3, False) for p in range(4)},
    "A010": (6, 4, False),
}
#: -2007 maximum demand items carry the time of the maximum, YYMMDDhhmm, after the value.
DEMAND_TIME = "2611300815"


def bcd(value: float, digits: int, decimals: int, signed: bool) -> bytes:
    """``value`` in the standard's format: BCD digits lowest byte first, sign in the top bit."""
    counts = round(abs(value) * 10**decimals)
    text = f"{counts:0{digits}d}"[-digits:]
    out = bytearray(int(text[i : i + 2], 16) for i in range(0, digits, 2))[::-1]
    if signed and value < 0:
        out[-1] |= 0x80
    return bytes(out)


@dataclass
class Meter:
    """One meter: its address (as printed), edition and values by identifier."""

    address: str
    protocol: str = "2007"
    values: dict[str, float] = field(default_factory=dict)
    #: Not answering at all (dead, or its line cut).
    silent: bool = False
    #: Largest data part of one answer frame; longer answers go in follow-up frames.
    frame_limit: int = 200
    #: Requests this meter answered, by identifier (tests read the polling off it).
    asked: dict[str, int] = field(default_factory=dict)
    #: -1997 follow-ups carry no sequence number: the next part of each item to send.
    cursor: dict[str, int] = field(default_factory=dict)

    @property
    def wire_address(self) -> bytes:
        return bytes(int(self.address[i : i + 2], 16) for i in range(10, -1, -2))

    def hears(self, address: bytes) -> bool:
        return all(a in (0xAA, m) for a, m in zip(address, self.wire_address, strict=True))

    def data_of(self, di: str) -> bytes | None:
        """The data item's bytes, or None when the meter has no such item."""
        if di not in self.values:
            return None
        if self.protocol == "2007" and di == "01010000":
            return bcd(self.values[di], 6, 4, False) + bytes.fromhex(DEMAND_TIME)[::-1]
        formats = FORMATS_2007 if self.protocol == "2007" else FORMATS_1997
        digits, decimals, signed = formats[di]
        return bcd(self.values[di], digits, decimals, signed)


def frame(address: bytes, control: int, data: bytes) -> bytes:
    body = bytes([0x68, *address, 0x68, control, len(data)]) + bytes(
        (b + 0x33) & 0xFF for b in data
    )
    return body + bytes([sum(body) & 0xFF, 0x16])


class MeterLine(PtyInstrument):
    """Meters sharing one pty. ``preamble``: FE bytes each answer starts with."""

    def __init__(
        self,
        meters: list[Meter],
        *,
        baudrate: int | None = None,
        preamble: int = 4,
        link: Path | None = None,
    ) -> None:
        super().__init__(link=link)
        self.meters = meters
        self.baudrate = baudrate
        self.preamble = preamble
        self.bytes_on_line = 0
        self.requests = 0
        self._pending = bytearray()

    def char_time(self) -> float:
        return 11 / self.baudrate if self.baudrate else 0.0

    def on_request_bytes(self, data: bytes) -> None:
        self._pending += data
        while True:
            request = self._take_frame()
            if request is None:
                return
            self._answer(*request)

    def _take_frame(self) -> tuple[bytes, int, bytes, int] | None:
        """The next whole request (address, control, data, bytes it took on the line)."""
        buf = self._pending
        start = buf.find(0x68)
        if start < 0:
            wake = len(buf)
            buf.clear()
            self.bytes_on_line += wake
            return None
        if len(buf) < start + 10:
            return None
        size = 12 + buf[start + 9]
        if len(buf) < start + size:
            return None
        whole = bytes(buf[start : start + size])
        del buf[: start + size]
        self.bytes_on_line += start + size
        if whole[7] != 0x68 or whole[-1] != 0x16 or whole[-2] != sum(whole[:-2]) & 0xFF:
            return None  # a meter ignores a frame it cannot trust
        data = bytes((b - 0x33) & 0xFF for b in whole[10:-2])
        return whole[1:7], whole[8], data, start + size

    def _answer(self, address: bytes, control: int, data: bytes, took: int) -> None:
        self.requests += 1
        answers = [
            a
            for m in self.meters
            if not m.silent and m.hears(address)
            for a in [self._reply(m, address, control, data)]
            if a is not None
        ]
        if not answers:
            return
        wire = max(len(a) for a in answers)
        padded = [a + b"\xff" * (wire - len(a)) for a in answers]
        collided = bytes(_and(column) for column in zip(*padded, strict=True))
        out = b"\xfe" * self.preamble + collided
        delay = (took + len(out)) * self.char_time()
        if delay > 0:
            asyncio.get_running_loop().call_later(delay, self._put, out)
        else:
            self._put(out)

    def _put(self, answer: bytes) -> None:
        """The answer's last byte is on the line now: count it as carried."""
        self.bytes_on_line += len(answer)
        self.send_frame(answer)

    def _reply(self, meter: Meter, address: bytes, control: int, data: bytes) -> bytes | None:
        own = meter.wire_address
        function = control & 0x1F
        if control & 0x80:
            return None  # another meter's answer
        if meter.protocol == "2007":
            if function == 0x13 and address == b"\xaa" * 6:
                return frame(own, 0x93, own)
            if function in (0x11, 0x12) and len(data) >= 4:
                return self._read(meter, function, data[:4], data[4:5], 0x80 | function)
            return None
        if function in (0x01, 0x02) and len(data) >= 2:
            return self._read(meter, function, data[:2], b"", 0x80 | function)
        return None

    def _read(self, meter: Meter, function: int, di: bytes, seq: bytes, answer: int) -> bytes:
        name = di[::-1].hex().upper()
        item = meter.data_of(name)
        if item is None:
            # ERR bit 1: -2007 "no data requested", -1997 "wrong data identifier".
            return frame(meter.wire_address, 0xC0 | function, b"\x02")
        if function == 0x12:
            part = seq[0] if seq else 0
        elif function == 0x02:
            part = meter.cursor.get(name, 0)
        else:
            part = 0
            meter.asked[name] = meter.asked.get(name, 0) + 1
        size = meter.frame_limit
        chunk = item[part * size : (part + 1) * size]
        more = (part + 1) * size < len(item)
        meter.cursor[name] = part + 1 if more else 0
        tail = seq if function == 0x12 else b""
        return frame(meter.wire_address, answer | (0x20 if more else 0), di + chunk + tail)


def _and(column: tuple[int, ...]) -> int:
    out = 0xFF
    for byte in column:
        out &= byte
    return out


def three_meters() -> list[Meter]:
    """The line of the examples: two -2007 meters and a -1997 one, with known values."""
    return [
        Meter(
            "210220003011",
            values={
                "00010000": 12345.67,
                "00010100": 4000.01,
                "00010200": 8345.66,
                "00020000": 12.5,
                "02010100": 230.1,
                "02010200": 229.8,
                "02010300": 231.4,
                "02020100": 5.123,
                "02020200": -1.5,
                "02030000": 3.4567,
                "02060000": 0.987,
                "02800002": 49.98,
                "02800004": 3.21,
                "01010000": 7.5,
            },
        ),
        Meter(
            "210220003012",
            values={
                "00010000": 200.0,
                "02010100": 220.0,
                "02030000": -0.25,
                "02060000": 0.912,
                "02800002": 50.01,
            },
        ),
        Meter(
            "000000001997",
            protocol="1997",
            values={"9010": 5678.9, "B611": 231.0, "B621": 4.56, "B630": 1.0504, "B650": 0.95},
        ),
    ]


async def _serve(args: argparse.Namespace) -> None:
    link = Path(args.link) if args.link else None
    sim = MeterLine(three_meters(), baudrate=args.baudrate, link=link)
    await serve_until_signal(sim, lambda: print(link or sim.path, flush=True))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m simulators.dlt645_meters", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--link", help="keep this symlink pointing at the pty")
    parser.add_argument("--baudrate", type=int, default=None, help="answer at this line speed")
    asyncio.run(_serve(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
