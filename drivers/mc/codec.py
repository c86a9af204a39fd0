"""Values across MELSEC words: how a PLC program stores them, and back.

A word device holds 16 bits. Wider values take consecutive words, low word first (``D100`` holds
the low half of a 32-bit value written to ``D100`` by ``DMOV``/``EMOV``), each word little-endian
on the wire. A string is ``length`` words of ASCII, two characters per word, the first character
in the low byte (``$MOV`` stores it so); it ends at the first NUL.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from typing import Final, Literal

from drivers.modbus.codec import shortest_float32

McType = Literal["bool", "int16", "uint16", "int32", "uint32", "float32", "float64", "string"]

#: Words one value of each numeric type spans.
WIDTH: Final[dict[str, int]] = {
    "int16": 1,
    "uint16": 1,
    "int32": 2,
    "uint32": 2,
    "float32": 2,
    "float64": 4,
}
_STRUCT: Final[dict[str, str]] = {
    "int16": "<h",
    "uint16": "<H",
    "int32": "<i",
    "uint32": "<I",
    "float32": "<f",
    "float64": "<d",
}

Value = bool | int | float | str
Decoder = Callable[[Sequence[int]], Value]


def word_count(type_: str, length: int | None = None) -> int:
    """Words one value spans (strings: ``length``; bool on a bit device: one bit)."""
    if type_ == "string":
        return length or 1
    return WIDTH.get(type_, 1)


def words_to_bytes(words: Sequence[int]) -> bytes:
    """The bytes the PLC holds, low byte of each word first."""
    return struct.pack(f"<{len(words)}H", *words)


def bytes_to_words(data: bytes) -> list[int]:
    return list(struct.unpack(f"<{len(data) // 2}H", data[: len(data) // 2 * 2]))


def make_decoder(type_: str) -> Decoder:
    """A function of the value's words (exactly ``word_count`` of them) to its value."""
    if type_ == "string":
        return _decode_string
    if type_ == "bool":
        return lambda words: bool(words[0])
    # Integers by arithmetic on the words (this runs for every tag of every poll: no bytes).
    if type_ == "uint16":
        return lambda words: int(words[0])
    if type_ == "int16":
        return lambda words: words[0] - 0x10000 if words[0] & 0x8000 else int(words[0])
    if type_ == "uint32":
        return lambda words: words[0] | words[1] << 16
    if type_ == "int32":
        return lambda words: (words[0] | words[1] << 16) - (0x100000000 if words[1] & 0x8000 else 0)
    pack, unpack = struct.Struct("<HH").pack, struct.Struct("<f").unpack
    if type_ == "float32":  # what the HMI shows (229.8), not the double's 229.8000030517578
        return lambda words: shortest_float32(unpack(pack(words[0], words[1]))[0])
    unpack64 = struct.Struct(_STRUCT[type_]).unpack
    return lambda words: float(unpack64(words_to_bytes(words))[0])


def _decode_string(words: Sequence[int]) -> Value:
    raw = words_to_bytes(words).split(b"\x00", 1)[0]
    return raw.decode("ascii", errors="replace")


def encode(type_: str, value: Value, length: int | None = None) -> list[int]:
    """The words that hold ``value``. Raises ``ValueError`` (or ``struct.error``, an
    ``Exception``) when it does not fit the type."""
    if type_ == "bool":
        return [1 if value else 0]
    if type_ == "string":
        if not isinstance(value, str):
            raise ValueError("not a string")
        data = value.encode("ascii")
        size = 2 * word_count(type_, length)
        if len(data) > size:
            raise ValueError(f"longer than {size} characters")
        return bytes_to_words(data.ljust(size, b"\x00"))
    if isinstance(value, str):
        raise ValueError("not a number")
    if type_.startswith("float"):
        return bytes_to_words(struct.pack(_STRUCT[type_], float(value)))
    if float(value) != int(value):
        raise ValueError(f"{type_} takes whole numbers")
    return bytes_to_words(struct.pack(_STRUCT[type_], int(value)))
