"""The MC protocol 3E frame, binary and ASCII, both ways: what the driver sends and parses, and
what the simulators parse and answer.

A 3E request is a fixed header (subheader ``5000``, network 0, PC ``FF``, module I/O ``03FF``,
station 0, then the length of the rest), the monitoring timer (in 250 ms units: how long the
Ethernet module waits for the CPU), the command and subcommand, and the command's fields. The
answer has subheader ``D000``, the same route, a length, the end code (0 = done) and the data.
Binary frames carry every number little-endian; ASCII frames carry the same fields as upper-case
hexadecimal text, most significant digit first, each word as four characters, device numbers as
six digits (decimal or hexadecimal as the manual's device table says), one character per bit.

The 3E frame has no serial number (4E has), so an answer cannot be matched to its request: the
driver reads one answer per request and, after a timeout or a frame it cannot use, closes the
connection instead of guessing which answer comes next.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal

from drivers.mc.devices import BY_ASCII, BY_CODE, Address, DeviceKind

Encoding = Literal["binary", "ascii"]

BATCH_READ: Final = 0x0401
BATCH_WRITE: Final = 0x1401
RANDOM_READ: Final = 0x0403
SUB_WORDS: Final = 0x0000
SUB_BITS: Final = 0x0001

#: Points per batch read in word units, and in bit units (Q/L/iQ-R CPUs, QnA-compatible 3E).
MAX_WORDS: Final = 960
MAX_BITS: Final = 3584
#: Word plus double-word points per random read (0403).
MAX_RANDOM_POINTS: Final = 192
#: The longest answer after its header: end code and 960 words, in ASCII (a longer length field
#: is a broken frame, refused before its bytes are awaited).
MAX_ANSWER: Final = 4 + 4 * MAX_WORDS

#: The route every frame carries: network 0, PC FF, the CPU's module I/O 03FF, station 0.
_ROUTE_BINARY: Final = b"\x00\xff\xff\x03\x00"
_ROUTE_ASCII: Final = b"00FF03FF00"


class FrameError(Exception):
    """Bytes that are not the frame expected (garbage, a wrong length, a wrong subheader)."""


def header_size(encoding: Encoding) -> int:
    """Bytes of a frame up to and including its length field."""
    return 9 if encoding == "binary" else 18


def body_length(header: bytes, encoding: Encoding, *, answer: bool) -> int:
    """The length field of a header (bytes that follow it); ``FrameError`` when the header is
    not a 3E header of the expected direction."""
    if encoding == "binary":
        want = b"\xd0\x00" if answer else b"\x50\x00"
        if header[:2] != want:
            raise FrameError(f"subheader {header[:2].hex()} is not {want.hex()}")
        return int.from_bytes(header[7:9], "little")
    want = b"D000" if answer else b"5000"
    if header[:4] != want:
        raise FrameError(f"subheader {header[:4]!r} is not {want.decode()}")
    return _hex(header[14:18])


def _hex(text: bytes) -> int:
    """An ASCII hexadecimal field; ``FrameError`` for anything else (``int()`` would take
    ``+1``, ``_1`` or spaces)."""
    if not text or any(c not in b"0123456789ABCDEFabcdef" for c in text):
        raise FrameError(f"not hexadecimal: {text[:16]!r}")
    return int(text, 16)


def _from_hex(text: bytes) -> bytes:
    """ASCII hexadecimal text as the bytes it spells; ``FrameError`` for anything but hex
    digits (``bytes.fromhex`` alone would skip spaces)."""
    try:
        data = bytes.fromhex(text.decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        raise FrameError(f"not hexadecimal: {text[:16]!r}") from None
    if 2 * len(data) != len(text):
        raise FrameError(f"not hexadecimal: {text[:16]!r}")
    return data


class Writer:
    """Fields of one frame in one encoding, appended in order."""

    def __init__(self, encoding: Encoding) -> None:
        self.ascii = encoding == "ascii"
        self.parts: list[bytes] = []

    def u8(self, n: int) -> Writer:
        self.parts.append(b"%02X" % n if self.ascii else bytes([n]))
        return self

    def u16(self, n: int) -> Writer:
        self.parts.append(b"%04X" % n if self.ascii else n.to_bytes(2, "little"))
        return self

    def device(self, kind: DeviceKind, number: int) -> Writer:
        if self.ascii:
            digits = b"%06X" % number if kind.ascii_base == 16 else b"%06d" % number
            self.parts.append(kind.ascii_code + digits)
        else:
            self.parts.append(number.to_bytes(3, "little") + bytes([kind.code]))
        return self

    def words(self, words: Sequence[int]) -> Writer:
        if self.ascii:
            self.parts.append(b"".join(b"%04X" % w for w in words))
        else:
            self.parts.append(b"".join(w.to_bytes(2, "little") for w in words))
        return self

    def dwords(self, dwords: Sequence[int]) -> Writer:
        if self.ascii:
            self.parts.append(b"".join(b"%08X" % d for d in dwords))
        else:
            self.parts.append(b"".join(d.to_bytes(4, "little") for d in dwords))
        return self

    def bits(self, bits: Sequence[bool]) -> Writer:
        if self.ascii:
            self.parts.append(bytes(0x31 if b else 0x30 for b in bits))
        else:
            padded = [bool(b) for b in bits] + [False] * (len(bits) % 2)
            self.parts.append(
                bytes((padded[i] << 4) | padded[i + 1] for i in range(0, len(padded), 2))
            )
        return self

    def bytes(self) -> bytes:
        return b"".join(self.parts)


class Reader:
    """Fields of one frame's body in one encoding, taken in order; ``FrameError`` when the body
    ends early or a field is not what its encoding allows."""

    def __init__(self, data: bytes, encoding: Encoding) -> None:
        self.data = data
        self.ascii = encoding == "ascii"
        self.at = 0

    def _take(self, n: int) -> bytes:
        if self.at + n > len(self.data):
            raise FrameError(f"frame ends after {len(self.data)} bytes, {self.at + n} needed")
        piece = self.data[self.at : self.at + n]
        self.at += n
        return piece

    @property
    def left(self) -> int:
        return len(self.data) - self.at

    def u8(self) -> int:
        return _hex(self._take(2)) if self.ascii else self._take(1)[0]

    def u16(self) -> int:
        return _hex(self._take(4)) if self.ascii else int.from_bytes(self._take(2), "little")

    def device(self) -> Address:
        if self.ascii:
            code, digits = self._take(2), self._take(6)
            kind = BY_ASCII.get(code)
            if kind is None:
                raise FrameError(f"unknown device code {code!r}")
            if kind.ascii_base == 10:
                if not digits.isdigit():
                    raise FrameError(f"not decimal: {digits!r}")
                return Address(kind.name, int(digits))
            return Address(kind.name, _hex(digits))
        raw = self._take(4)
        kind = BY_CODE.get(raw[3])
        if kind is None:
            raise FrameError(f"unknown device code {raw[3]:#04x}")
        return Address(kind.name, int.from_bytes(raw[:3], "little"))

    def words(self, n: int) -> list[int]:
        if self.ascii:
            return list(struct.unpack(f">{n}H", _from_hex(self._take(4 * n))))
        return list(struct.unpack(f"<{n}H", self._take(2 * n)))

    def dwords(self, n: int) -> list[int]:
        if self.ascii:
            return list(struct.unpack(f">{n}I", _from_hex(self._take(8 * n))))
        return list(struct.unpack(f"<{n}I", self._take(4 * n)))

    def bits(self, n: int) -> list[bool]:
        if self.ascii:
            raw = self._take(n)
            if any(c not in b"01" for c in raw):
                raise FrameError(f"not a bit: {raw[:16]!r}")
            return [c == 0x31 for c in raw]
        raw = self._take((n + 1) // 2)
        out: list[bool] = []
        for byte in raw:
            if byte & 0xEE:
                raise FrameError(f"not a pair of bits: {byte:#04x}")
            out += [bool(byte >> 4), bool(byte & 1)]
        return out[:n]

    def end(self) -> None:
        """The body must be used up: extra bytes mean the length field lied."""
        if self.left:
            raise FrameError(f"{self.left} bytes more than the answer holds")


# -- requests (client side) and their parsing (server side) ----------------------------------------


def request(encoding: Encoding, command: int, sub: int, body: Writer, *, timer: int = 4) -> bytes:
    """A whole request frame; ``body`` holds the command's fields in the same encoding."""
    rest = Writer(encoding).u16(timer).u16(command).u16(sub).bytes() + body.bytes()
    if encoding == "binary":
        return b"\x50\x00" + _ROUTE_BINARY + len(rest).to_bytes(2, "little") + rest
    return b"5000" + _ROUTE_ASCII + b"%04X" % len(rest) + rest


def batch_read(
    encoding: Encoding, kind: DeviceKind, number: int, count: int, *, bits: bool, timer: int = 4
) -> bytes:
    """0401: ``count`` words (or bits, for a bit device read in bit units) from ``number``."""
    body = Writer(encoding).device(kind, number).u16(count)
    return request(encoding, BATCH_READ, SUB_BITS if bits else SUB_WORDS, body, timer=timer)


def random_read(
    encoding: Encoding,
    words: Sequence[Address],
    dwords: Sequence[Address],
    *,
    timer: int = 4,
) -> bytes:
    """0403: single words and double words of any word devices, in one request."""
    body = Writer(encoding).u8(len(words)).u8(len(dwords))
    for a in (*words, *dwords):
        body.device(a.kind, a.number)
    return request(encoding, RANDOM_READ, SUB_WORDS, body, timer=timer)


def batch_write_words(
    encoding: Encoding, kind: DeviceKind, number: int, words: Sequence[int], *, timer: int = 4
) -> bytes:
    body = Writer(encoding).device(kind, number).u16(len(words)).words(words)
    return request(encoding, BATCH_WRITE, SUB_WORDS, body, timer=timer)


def batch_write_bits(
    encoding: Encoding, kind: DeviceKind, number: int, bits: Sequence[bool], *, timer: int = 4
) -> bytes:
    body = Writer(encoding).device(kind, number).u16(len(bits)).bits(bits)
    return request(encoding, BATCH_WRITE, SUB_BITS, body, timer=timer)


@dataclass(frozen=True, slots=True)
class ParsedRequest:
    """A request as a server sees it: command, subcommand, and a reader over its fields."""

    command: int
    sub: int
    timer: int
    body: Reader


def parse_request(frame: bytes, encoding: Encoding) -> ParsedRequest:
    """A whole request frame (header included); ``FrameError`` when it is not one."""
    size = header_size(encoding)
    length = body_length(frame[:size], encoding, answer=False)
    if len(frame) != size + length:
        raise FrameError(f"length field {length}, {len(frame) - size} bytes follow")
    reader = Reader(frame[size:], encoding)
    timer, command, sub = reader.u16(), reader.u16(), reader.u16()
    return ParsedRequest(command, sub, timer, reader)


# -- answers (server side) and their parsing (client side) -----------------------------------------


def answer(encoding: Encoding, end_code: int, data: bytes = b"") -> bytes:
    """A whole answer frame: end code, then the data (in the same encoding)."""
    rest = Writer(encoding).u16(end_code).bytes() + data
    if encoding == "binary":
        return b"\xd0\x00" + _ROUTE_BINARY + len(rest).to_bytes(2, "little") + rest
    return b"D000" + _ROUTE_ASCII + b"%04X" % len(rest) + rest


def error_answer(encoding: Encoding, end_code: int, command: int, sub: int) -> bytes:
    """An answer with an error end code, followed by the error information the manual
    describes (the route of the failed request, its command and subcommand)."""
    info = Writer(encoding).u8(0).u8(0xFF).u16(0x03FF).u8(0).u16(command).u16(sub).bytes()
    return answer(encoding, end_code, info)


@dataclass(frozen=True, slots=True)
class Answer:
    """An answer as the driver sees it: its end code and a reader over its data."""

    end_code: int
    data: Reader


def parse_answer(header: bytes, rest: bytes, encoding: Encoding) -> Answer:
    """An answer from its header (``header_size`` bytes) and the ``rest`` its length field
    announced; ``FrameError`` when it is not one."""
    length = body_length(header, encoding, answer=True)
    if len(rest) != length:
        raise FrameError(f"length field {length}, {len(rest)} bytes follow")
    reader = Reader(rest, encoding)
    return Answer(reader.u16(), reader)
