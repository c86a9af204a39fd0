"""DL/T 645 frames on the wire: building requests and cutting answers out of a byte stream.

Both editions (-1997 and -2007) share the frame::

    [FE FE FE FE]  68  A0 A1 A2 A3 A4 A5  68  C  L  DATA...  CS  16

``FE`` bytes are the wake-up preamble a master sends before a request (meters may send it before
an answer too); the address is six BCD bytes, lowest first (``210220003011`` goes as
``11 30 00 20 02 21``), ``AA`` standing for any digit pair; ``C`` is the control code (bit 7:
the meter is answering, bit 6: an error answer, bit 5: follow-up frames are to come, bits 4..0:
the function); ``L`` is the data length; every data byte goes with ``0x33`` added (so a frame of
zeros never looks like silence); ``CS`` is the sum of every byte from the first ``68`` to the end
of the data, modulo 256.

A line can carry noise, a half frame after a restart, or two meters answering at once (a scan):
:class:`FrameReader` takes bytes as they come and yields whole frames and, for anything else, the
kind of trouble (``noise``, ``checksum``), never raising, whatever it is fed.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

START = 0x68
END = 0x16
WAKE = 0xFE
#: Added to every data byte on the wire (and taken off on receipt).
OFFSET = 0x33
#: Header (68 A0..A5 68 C L) and trailer (CS 16) around the data.
HEADER, TRAILER = 10, 2
#: The editions allow at most 200 data bytes (-2007); a length byte above is not a frame.
MAX_DATA = 200

#: Control-code bits.
FROM_METER = 0x80
ERROR = 0x40
MORE = 0x20
FUNCTION = 0x1F

#: The address a lone meter answers whatever its own (and what "read address" is sent to).
ANY_ADDRESS = "AAAAAAAAAAAA"
_ADDRESS = re.compile(r"^(?:[0-9]{2}|AA){6}$")


def address_bytes(address: str) -> bytes:
    """The wire form of a 12-character address (digit pairs or ``AA``), lowest byte first."""
    if not _ADDRESS.match(address):
        raise ValueError(f"not a DL/T 645 address: {address!r}")
    pairs = [address[i : i + 2] for i in range(0, 12, 2)]
    return bytes(0xAA if p == "AA" else int(p, 16) for p in reversed(pairs))


def address_text(raw: bytes) -> str:
    """The printed form of a wire address (``11 30 00 20 02 21`` is ``210220003011``)."""
    return "".join(f"{b:02X}" for b in reversed(raw))


def checksum(body: bytes) -> int:
    return sum(body) & 0xFF


@dataclass(frozen=True, slots=True)
class Frame:
    """One frame, its data with the 0x33 offset already taken off."""

    address: bytes
    control: int
    data: bytes

    @property
    def from_meter(self) -> bool:
        return bool(self.control & FROM_METER)

    @property
    def error(self) -> bool:
        return bool(self.control & ERROR)

    @property
    def more(self) -> bool:
        return bool(self.control & MORE)

    @property
    def function(self) -> int:
        return self.control & FUNCTION

    @property
    def meter(self) -> str:
        return address_text(self.address)


def encode(address: bytes, control: int, data: bytes = b"", *, preamble: int = 0) -> bytes:
    """A whole frame, ``preamble`` wake-up bytes first."""
    if len(address) != 6:
        raise ValueError("an address is 6 bytes")
    if len(data) > 255:
        raise ValueError("at most 255 data bytes")
    body = bytes([START, *address, START, control, len(data)])
    body += bytes((b + OFFSET) & 0xFF for b in data)
    return bytes([WAKE] * preamble) + body + bytes([checksum(body), END])


@dataclass(frozen=True, slots=True)
class Trouble:
    """Bytes that were not a frame: ``noise`` (no frame starts there) or ``checksum`` (a frame's
    shape with a wrong sum or end byte: corruption, or two meters answering at once)."""

    kind: str
    sample: bytes


class FrameReader:
    """Cuts frames out of a byte stream; bounded, whatever arrives."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def discard(self) -> bytes:
        """Drop an unfinished frame (a new request starts afresh); return what was dropped."""
        dropped, self._buffer = bytes(self._buffer), bytearray()
        return dropped

    @property
    def pending(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes) -> Iterator[Frame | Trouble]:
        """Frames completed by ``data`` and the trouble met on the way, in order."""
        self._buffer += data
        buf = self._buffer
        while buf:
            start = buf.find(START)
            junk = bytes(buf if start < 0 else buf[:start]).lstrip(bytes([WAKE]))
            if junk:
                yield Trouble("noise", junk[:32])
            if start < 0:
                buf.clear()
                return
            del buf[:start]
            if len(buf) < HEADER:
                return
            length = buf[9]
            if buf[7] != START or length > MAX_DATA:
                # Not a header: this 68 was a data byte of something else. Look further on.
                yield Trouble("noise", bytes(buf[:1]))
                del buf[:1]
                continue
            size = HEADER + length + TRAILER
            if len(buf) < size:
                return
            whole = bytes(buf[:size])
            if whole[-2] != checksum(whole[:-2]) or whole[-1] != END:
                yield Trouble("checksum", whole[:32])
                del buf[:1]  # a frame may start inside what looked like one
                continue
            del buf[:size]
            data = bytes((b - OFFSET) & 0xFF for b in whole[HEADER:-TRAILER])
            yield Frame(address=whole[1:7], control=whole[8], data=data)
