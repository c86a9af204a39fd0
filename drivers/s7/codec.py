"""S7 data types: how many bytes each spans, bytes to values, values to bytes.

S7 stores every number big-endian (Motorola order), so there is no byte-order key: ``struct``
does the work. STRING carries a two-byte header (max length, actual length) before its
single-byte characters; WSTRING a four-byte one (two 16-bit words) before UTF-16 characters;
DATE_AND_TIME is eight BCD bytes; DTL twelve binary bytes ending in nanoseconds. Dates are
published as ISO 8601 text without a zone, as the PLC's clock keeps no zone either.
"""

from __future__ import annotations

import datetime as dt
import struct
from collections.abc import Callable
from typing import Any, Final, Literal

from drivers.base import ValueType
from drivers.modbus.codec import shortest_float32

S7Type = Literal[
    "BOOL",
    "BYTE",
    "WORD",
    "DWORD",
    "INT",
    "DINT",
    "LINT",
    "UINT",
    "UDINT",
    "ULINT",
    "REAL",
    "LREAL",
    "STRING",
    "WSTRING",
    "DATE_AND_TIME",
    "DTL",
]
S7_TYPES: Final[tuple[str, ...]] = S7Type.__args__  # type: ignore[attr-defined]

#: Fixed sizes in bytes (STRING and WSTRING depend on their length; BOOL is one bit).
FIXED_SIZE: Final[dict[str, int]] = {
    "BYTE": 1,
    "WORD": 2,
    "DWORD": 4,
    "INT": 2,
    "DINT": 4,
    "LINT": 8,
    "UINT": 2,
    "UDINT": 4,
    "ULINT": 8,
    "REAL": 4,
    "LREAL": 8,
    "DATE_AND_TIME": 8,
    "DTL": 12,
}
#: ``struct`` formats of the numeric types.
_FORMATS: Final[dict[str, str]] = {
    "BYTE": ">B",
    "WORD": ">H",
    "DWORD": ">I",
    "INT": ">h",
    "DINT": ">i",
    "LINT": ">q",
    "UINT": ">H",
    "UDINT": ">I",
    "ULINT": ">Q",
    "REAL": ">f",
    "LREAL": ">d",
}
INTEGER_TYPES: Final = frozenset(
    {"BYTE", "WORD", "DWORD", "INT", "DINT", "LINT", "UINT", "UDINT", "ULINT"}
)
FLOAT_TYPES: Final = frozenset({"REAL", "LREAL"})
TEXT_TYPES: Final = frozenset({"STRING", "WSTRING"})
DATE_TYPES: Final = frozenset({"DATE_AND_TIME", "DTL"})
#: Published value type of each S7 type (the names the formats know).
VALUE_TYPES: Final[dict[str, ValueType]] = {
    "BOOL": "bool",
    "BYTE": "uint16",
    "WORD": "uint16",
    "DWORD": "uint32",
    "INT": "int16",
    "DINT": "int32",
    "LINT": "int64",
    "UINT": "uint16",
    "UDINT": "uint32",
    "ULINT": "uint64",
    "REAL": "float32",
    "LREAL": "float64",
    "STRING": "string",
    "WSTRING": "string",
    "DATE_AND_TIME": "string",
    "DTL": "string",
}
#: STRING[n] and WSTRING[n] as TIA declares them: n is at most 254 and 16382.
MAX_LENGTH: Final[dict[str, int]] = {"STRING": 254, "WSTRING": 16382}

Decoded = bool | int | float | str
Decoder = Callable[[bytes], Decoded | list[Decoded]]


def element_size(type_: str, length: int | None = None) -> int:
    """Bytes one value spans (0 for BOOL, which is one bit)."""
    if type_ == "BOOL":
        return 0
    if type_ == "STRING":
        return 2 + (length or MAX_LENGTH["STRING"])
    if type_ == "WSTRING":
        return 4 + 2 * (length or MAX_LENGTH["STRING"])
    return FIXED_SIZE[type_]


def span(type_: str, length: int | None, count: int | None, bit: int | None) -> int:
    """Bytes a tag reads, from its start byte: every array element, every bit's byte."""
    n = count or 1
    if type_ == "BOOL":
        return ((bit or 0) + n + 7) // 8
    return element_size(type_, length) * n


def make_decoder(type_: str, length: int | None, count: int | None, bit: int | None) -> Decoder:
    """A function from the tag's bytes (``span`` of them) to its value, or list of values.

    Raises ``ValueError`` on bytes no PLC would send (a STRING longer than its header's maximum,
    a date that does not exist): the reading becomes bad with that reason."""
    n = count or 1
    if type_ == "BOOL":
        first = bit or 0
        if count is None:
            return lambda data: bool(data[first >> 3] >> (first & 7) & 1)
        return lambda data: [
            bool(data[(first + i) >> 3] >> ((first + i) & 7) & 1) for i in range(n)
        ]
    one = _element_decoder(type_, length)
    if count is None:
        return one
    size = element_size(type_, length)
    if type_ in _FORMATS and type_ != "REAL":
        packed = struct.Struct(">" + _FORMATS[type_][1] * n)
        return lambda data: list(packed.unpack_from(data))
    return lambda data: [one(data[i * size : (i + 1) * size]) for i in range(n)]


def _element_decoder(type_: str, length: int | None) -> Callable[[bytes], Decoded]:
    if type_ == "REAL":
        real = struct.Struct(">f")
        return lambda data: shortest_float32(real.unpack_from(data)[0])
    if type_ in _FORMATS:
        fmt = struct.Struct(_FORMATS[type_])
        return lambda data: fmt.unpack_from(data)[0]
    if type_ == "STRING":
        declared = length or MAX_LENGTH["STRING"]
        return lambda data: decode_string(data, declared)
    if type_ == "WSTRING":
        declared = length or MAX_LENGTH["STRING"]
        return lambda data: decode_wstring(data, declared)
    if type_ == "DATE_AND_TIME":
        return decode_date_and_time
    if type_ == "DTL":
        return decode_dtl
    raise ValueError(f"unknown S7 type {type_}")


def decode_string(data: bytes, declared: int) -> str:
    """S7 STRING: max length, actual length, then the characters (Latin-1, as WinCC shows them)."""
    if len(data) < 2:
        raise ValueError("STRING shorter than its header")
    top, actual = data[0], data[1]
    if actual > top or actual > declared or 2 + actual > len(data):
        raise ValueError(
            f"STRING header says {actual} of {top} characters; the tag declares {declared}"
        )
    return bytes(data[2 : 2 + actual]).decode("latin-1")


def decode_wstring(data: bytes, declared: int) -> str:
    """S7 WSTRING: max and actual length in 16-bit characters, then UTF-16 big-endian."""
    if len(data) < 4:
        raise ValueError("WSTRING shorter than its header")
    top, actual = struct.unpack_from(">HH", data)
    if actual > top or actual > declared or 4 + 2 * actual > len(data):
        raise ValueError(
            f"WSTRING header says {actual} of {top} characters; the tag declares {declared}"
        )
    return bytes(data[4 : 4 + 2 * actual]).decode("utf-16-be", errors="replace")


def _bcd(byte: int) -> int:
    hi, lo = byte >> 4, byte & 0x0F
    if hi > 9 or lo > 9:
        raise ValueError(f"byte {byte:#04x} is not BCD")
    return hi * 10 + lo


def decode_date_and_time(data: bytes) -> str:
    """DATE_AND_TIME: BCD year (90..99 is 19xx), month, day, hour, minute, second, then three
    BCD digits of milliseconds and the weekday nibble."""
    if len(data) < 8:
        raise ValueError("DATE_AND_TIME shorter than 8 bytes")
    year = _bcd(data[0])
    year += 1900 if year >= 90 else 2000
    ms_last = data[7] >> 4
    if ms_last > 9:
        raise ValueError(f"byte {data[7]:#04x} is not BCD")
    ms = _bcd(data[6]) * 10 + ms_last
    when = dt.datetime(
        year, _bcd(data[1]), _bcd(data[2]), _bcd(data[3]), _bcd(data[4]), _bcd(data[5]), ms * 1000
    )
    return when.isoformat(timespec="milliseconds")


def decode_dtl(data: bytes) -> str:
    """DTL: year (16 bit), month, day, weekday, hour, minute, second, nanoseconds (32 bit)."""
    if len(data) < 12:
        raise ValueError("DTL shorter than 12 bytes")
    year, month, day, _weekday, hour, minute, second, nanos = struct.unpack_from(">HBBBBBBI", data)
    if nanos > 999_999_999:
        raise ValueError(f"DTL nanoseconds {nanos} above 999999999")
    when = dt.datetime(year, month, day, hour, minute, second)
    text = when.isoformat()
    return f"{text}.{nanos:09d}" if nanos else text


# -- encoding (writes) ---------------------------------------------------------------------------


def encode(type_: str, length: int | None, value: Any) -> bytes:
    """The bytes of one value as the PLC stores it; ``ValueError`` when it does not fit.

    BOOL is written as one bit by the driver and never reaches here. STRING and WSTRING give the
    actual-length header and the characters, without the maximum (the PLC's own)."""
    if type_ in INTEGER_TYPES:
        try:
            return struct.pack(_FORMATS[type_], value)
        except struct.error:
            raise ValueError(f"{value} does not fit {type_}") from None
    if type_ in FLOAT_TYPES:
        try:
            return struct.pack(_FORMATS[type_], value)
        except (struct.error, OverflowError):
            raise ValueError(f"{value} does not fit {type_}") from None
    declared = length or MAX_LENGTH["STRING"]
    if type_ == "STRING":
        try:
            chars = str(value).encode("latin-1")
        except UnicodeEncodeError:
            raise ValueError("STRING takes Latin-1 characters only") from None
        if len(chars) > declared:
            raise ValueError(f"STRING[{declared}] takes at most {declared} characters")
        return bytes([len(chars)]) + chars
    if type_ == "WSTRING":
        text = str(value)
        chars = text.encode("utf-16-be")
        if len(chars) // 2 > declared:
            raise ValueError(f"WSTRING[{declared}] takes at most {declared} characters")
        return struct.pack(">H", len(chars) // 2) + chars
    raise ValueError(f"{type_} values cannot be written")


def header_skip(type_: str) -> int:
    """Bytes of a text value's header that a write leaves alone (the maximum length)."""
    return {"STRING": 1, "WSTRING": 2}.get(type_, 0)
