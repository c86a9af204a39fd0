"""Frame checksums as ASCII instruments write them, and where they sit in a frame.

Instruments append a checksum to the frame body, just before the end marker (or as the last bytes
of a fixed-length frame). Most write it as hex digits (two for 8-bit sums, four for CRC-16), some
as raw bytes. The sums are plain functions so tests can check them against published vectors; the
:class:`ChecksumCheck` splits a payload into body and checksum once the kind and format are known.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

ChecksumKind = Literal["xor", "sum8", "lrc", "crc16"]
ChecksumFormat = Literal["hex", "binary"]


def xor8(data: bytes) -> int:
    """Every byte XORed together (NMEA and many scale protocols)."""
    return functools.reduce(lambda acc, b: acc ^ b, data, 0)


def sum8(data: bytes) -> int:
    """Sum of the bytes modulo 256."""
    return sum(data) & 0xFF


def lrc(data: bytes) -> int:
    """Longitudinal redundancy check: the two's complement of the 8-bit sum (Modbus ASCII), so
    that body plus LRC sums to zero."""
    return (-sum(data)) & 0xFF


def crc16_modbus(data: bytes) -> int:
    """CRC-16/MODBUS (reflected polynomial 0xA001, initial value 0xFFFF), the CRC-16 serial
    instruments use most."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


FUNCTIONS: dict[str, Callable[[bytes], int]] = {
    "xor": xor8,
    "sum8": sum8,
    "lrc": lrc,
    "crc16": crc16_modbus,
}


@dataclass(frozen=True, slots=True)
class ChecksumCheck:
    """How one device's frames carry their checksum.

    ``hex``: upper- or lower-case hex digits, most significant first (2 digits for 8-bit kinds,
    4 for crc16). ``binary``: the raw value; crc16 low byte first, as Modbus RTU sends it.
    """

    kind: ChecksumKind
    format: ChecksumFormat = "hex"

    @property
    def width(self) -> int:
        """Bytes the checksum occupies at the end of the payload."""
        bits = 16 if self.kind == "crc16" else 8
        return bits // 4 if self.format == "hex" else bits // 8

    def compute(self, body: bytes) -> int:
        return FUNCTIONS[self.kind](body)

    def render(self, body: bytes) -> bytes:
        """The checksum as it is written after ``body`` (simulators and tests build frames so)."""
        value = self.compute(body)
        if self.format == "hex":
            return f"{value:0{self.width}X}".encode("ascii")
        return value.to_bytes(self.width, "little")

    def split(self, payload: bytes) -> bytes | None:
        """The body when the payload's trailing checksum is right, else None."""
        if len(payload) < self.width:
            return None
        body, written = payload[: -self.width], payload[-self.width :]
        if self.format == "hex":
            try:
                value = int(written.decode("ascii"), 16)
            except (UnicodeDecodeError, ValueError):
                return None
            if not all(chr(c) in "0123456789abcdefABCDEF" for c in written):
                return None
        else:
            value = int.from_bytes(written, "little")
        return body if value == self.compute(body) else None
