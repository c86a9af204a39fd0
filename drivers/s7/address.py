"""S7 addresses as TIA Portal and STEP 7 write them: ``DB10.DBD4``, ``DB10.DBX8.0``, ``MW20``.

Parsed once, at config load, into where the bytes are (area, DB number, byte, bit) and which
width the address letter names (X bit, B byte, W word, D double word), so the config check can
refuse a REAL at a bit address or an INT at a DBD before anything reaches the PLC.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, Literal

Area = Literal["DB", "M", "I", "Q"]
Width = Literal["X", "B", "W", "D"]

#: The S7comm area codes of the address specification (S7Area in python-snap7).
AREA_CODES: Final[dict[str, int]] = {"I": 0x81, "Q": 0x82, "M": 0x83, "DB": 0x84}
#: Bytes one address letter spans; X is one bit of a byte.
WIDTH_BYTES: Final[dict[str, int]] = {"X": 1, "B": 1, "W": 2, "D": 4}
#: The request carries a 24-bit bit address: bytes 0 .. 2**21 - 1.
MAX_BYTE: Final = (1 << 21) - 1
MAX_DB: Final = 65535

_DB = re.compile(r"^DB(\d+)\.DB(?:X(\d+)\.(\d+)|([BWD])(\d+))$")
_PLAIN = re.compile(r"^([MIQ])(?:(\d+)\.(\d+)|([BWD])(\d+))$")
#: German mnemonics (E inputs, A outputs) and forms we do not read, for a helpful refusal.
_GERMAN = re.compile(r"^[EA](?:\d+\.\d+|[BWD]\d+)$")
_TIMER_COUNTER = re.compile(r"^[TCZ]\d+$")


@dataclass(frozen=True, slots=True)
class S7Address:
    """Where a value starts: ``byte`` (and ``bit`` for X) of ``area`` (DB ``db``)."""

    area: Area
    db: int  # 0 outside data blocks
    byte: int
    bit: int | None
    width: Width

    @property
    def area_code(self) -> int:
        return AREA_CODES[self.area]

    def __str__(self) -> str:
        prefix = f"DB{self.db}.DB" if self.area == "DB" else self.area
        if self.width == "X":
            sep = "X" if self.area == "DB" else ""
            return f"{prefix}{sep}{self.byte}.{self.bit}"
        return f"{prefix}{self.width}{self.byte}"

    def bit_form(self, bit: int) -> str:
        """Bit ``bit`` of the start byte, written out (for hints: ``DB10.DBX4.0``)."""
        if self.area == "DB":
            return f"DB{self.db}.DBX{self.byte}.{bit}"
        return f"{self.area}{self.byte}.{bit}"

    def with_width(self, width: Width) -> str:
        """The same start written with another letter (for hints: ``DB10.DBW4``)."""
        prefix = f"DB{self.db}.DB" if self.area == "DB" else self.area
        return f"{prefix}{width}{self.byte}"


def parse_address(text: str) -> S7Address:
    """``DB10.DBD4`` -> S7Address(DB, 10, 4, None, D); ``ValueError`` saying what is wrong.

    Letters may be upper or lower case; spaces are not allowed (TIA writes none)."""
    raw = text.strip().upper()
    m = _DB.match(raw)
    if m:
        db = int(m.group(1))
        if not 1 <= db <= MAX_DB:
            raise ValueError(f"DB number {db} is outside 1..{MAX_DB}")
        if m.group(2) is not None:
            return _checked("DB", db, int(m.group(2)), int(m.group(3)), "X")
        return _checked("DB", db, int(m.group(5)), None, m.group(4))  # type: ignore[arg-type]
    m = _PLAIN.match(raw)
    if m:
        area = m.group(1)
        if m.group(2) is not None:
            return _checked(area, 0, int(m.group(2)), int(m.group(3)), "X")  # type: ignore[arg-type]
        return _checked(area, 0, int(m.group(5)), None, m.group(4))  # type: ignore[arg-type]
    if _GERMAN.match(raw):
        hint = "I" if raw[0] == "E" else "Q"
        raise ValueError(
            f"{text!r}: German mnemonics are not read; write inputs as I and outputs as Q "
            f"({hint}{raw[1:]})"
        )
    if _TIMER_COUNTER.match(raw):
        raise ValueError(f"{text!r}: timers and counters are not read by this driver")
    if raw.startswith("DB") and "." not in raw:
        raise ValueError(f"{text!r}: a data block address needs the offset, as in DB10.DBW4")
    raise ValueError(
        f"{text!r} is not an S7 address: write DB10.DBX8.0, DB10.DBB12, DB10.DBW2, DB10.DBD4, "
        "M0.1, MB10, MW20, MD24, I0.1, IW64, Q0.0 or QB4"
    )


def _checked(area: Area, db: int, byte: int, bit: int | None, width: Width) -> S7Address:
    if byte > MAX_BYTE:
        raise ValueError(f"byte offset {byte} is past the last address {MAX_BYTE}")
    if bit is not None and bit > 7:
        raise ValueError(f"bit {bit} does not exist: bits of a byte are 0..7")
    return S7Address(area=area, db=db, byte=byte, bit=bit, width=width)
