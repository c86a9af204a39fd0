"""Values in the standard's data formats: packed BCD, lowest byte first, fixed decimals.

The standard writes a format as the digits it shows: ``XXXXXX.XX`` is eight BCD digits (four
bytes) read with two decimals. A format with an odd count (``XXX.X``, 1997's ``XXX``) fills
whole bytes, its top nibble zero: ``XXX.X`` is two bytes, ``0X XX`` read as tenths.
Where the standard says a value has a direction (currents, powers, power factor and the combined
energies of -2007) the highest bit of the highest byte is the sign (1: negative) and the digits
are the magnitude. A nibble above 9 is not a value (meters send ``FF`` bytes for "no data").
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_FORMAT = re.compile(r"^(X+)(?:\.(X+))?$")
#: Powers of ten up to the 16 digits a format may have.
POW10: tuple[int, ...] = tuple(10**i for i in range(17))


class BadValue(ValueError):
    """The bytes are not a value of the format (not BCD, wrong length)."""


@dataclass(frozen=True, slots=True)
class Format:
    """How one data item is written: ``digits`` BCD digits, ``decimals`` of them after the point,
    signed or not; ``extra`` bytes after it belong to the item but are not the value (the time
    of a maximum demand)."""

    digits: int
    decimals: int
    signed: bool = False
    extra: int = 0

    @classmethod
    def parse(cls, text: str, *, signed: bool = False, extra: int = 0) -> Format:
        """``XXXXXX.XX`` as the standard prints it; an odd digit count is padded to whole bytes
        (``XXX.X`` is two bytes, the top nibble zero)."""
        m = _FORMAT.match(text)
        if m is None:
            raise ValueError(f"not a data format like XXXXXX.XX: {text!r}")
        decimals = len(m.group(2) or "")
        digits = len(m.group(1)) + decimals
        if digits > 16:
            raise ValueError(f"{text!r}: at most 16 digits (8 bytes)")
        return cls(digits + digits % 2, decimals, signed, extra)

    @property
    def size(self) -> int:
        """Bytes of the value alone."""
        return self.digits // 2

    @property
    def length(self) -> int:
        """Bytes of the whole data item (value and extra)."""
        return self.size + self.extra

    @property
    def text(self) -> str:
        whole = self.digits - self.decimals
        return "X" * whole + ("." + "X" * self.decimals if self.decimals else "")

    @property
    def limit(self) -> int:
        """One more than the largest magnitude in counts (units of the last decimal)."""
        if self.signed:
            return POW10[self.digits - 1] * 8  # the top nibble keeps 3 bits for digits
        return POW10[self.digits]

    def decode(self, raw: bytes) -> int | float:
        """The value of the item's first ``size`` bytes; ``BadValue`` when they are not one."""
        if len(raw) < self.size:
            raise BadValue(f"{len(raw)} bytes for {self.text} ({self.size} needed)")
        value = raw[: self.size]
        negative = False
        if self.signed and value[-1] & 0x80:
            negative = True
            value = value[:-1] + bytes([value[-1] & 0x7F])
        counts = 0
        for byte in reversed(value):
            high, low = byte >> 4, byte & 0x0F
            if high > 9 or low > 9:
                raise BadValue(f"not BCD: {raw[: self.size].hex(' ')}")
            counts = counts * 100 + high * 10 + low
        if negative:
            counts = -counts
        if self.decimals == 0:
            return counts
        return counts / POW10[self.decimals]

    def encode(self, counts: int) -> bytes:
        """The bytes of a value given in counts (230.1 V in ``XXX.X`` is 2301), for tests and
        writers; ``ValueError`` when it does not fit."""
        magnitude = abs(counts)
        if counts < 0 and not self.signed:
            raise ValueError(f"{self.text} is unsigned")
        if magnitude >= self.limit:
            raise ValueError(f"{counts} does not fit {self.text}")
        digits = f"{magnitude:0{self.digits}d}"
        out = bytearray(int(digits[i : i + 2], 16) for i in range(0, self.digits, 2))
        out.reverse()
        if counts < 0:
            out[-1] |= 0x80
        return bytes(out)
