"""Registers and bits to tag values, and back.

pymodbus's ``convert_from_registers`` knows word order only; the contract's byte orders (``BADC``,
``DCBA``...) need byte swapping too, so values are rearranged here with :mod:`struct`. Everything a
tag needs (struct format, byte permutation, exact scale arithmetic) is worked out once per tag in
:func:`make_decoder`, because decode runs for every tag on every poll.

Decoding never raises: a device can put any bit pattern in a register, and one odd register must
not cost the other tags of the poll their values. NaN and infinities come out as floats; the agent
turns non-finite values into bad quality.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Literal

TagType = Literal[
    "bool", "int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64", "string"
]

#: Registers each numeric type occupies (strings take ``length``, bools one register or one bit).
WIDTHS: dict[str, int] = {
    "bool": 1,
    "int16": 1,
    "uint16": 1,
    "int32": 2,
    "uint32": 2,
    "float32": 2,
    "int64": 4,
    "uint64": 4,
    "float64": 4,
}
_STRUCT: dict[str, str] = {
    "int16": "h",
    "uint16": "H",
    "int32": "i",
    "uint32": "I",
    "float32": "f",
    "int64": "q",
    "uint64": "Q",
    "float64": "d",
}

BYTE_ORDERS_16 = ("AB", "BA")
BYTE_ORDERS_32 = ("ABCD", "CDAB", "BADC", "DCBA")
BYTE_ORDERS_64 = ("ABCDEFGH", "GHEFCDAB", "BADCFEHG", "HGFEDCBA")
_TO_64 = dict(zip(BYTE_ORDERS_32, BYTE_ORDERS_64, strict=True))
_TO_16 = {"ABCD": "AB", "CDAB": "AB", "BADC": "BA", "DCBA": "BA"}

Raw = int | float | bool | str
Decoded = int | float | bool | str


def register_count(type_: str, length: int | None = None) -> int:
    """Registers a value of this type occupies (a string's ``length``)."""
    if type_ == "string":
        return length or 1
    return WIDTHS[type_]


def resolve_byte_order(order: str, width: int, *, device_default: bool = True) -> str:
    """The byte order for a value of ``width`` registers, from a tag's or device's setting.

    A four-letter device default stands for the same arrangement at 16 and 64 bits (``CDAB`` means
    ``GHEFCDAB``; ``BADC``/``DCBA`` mean ``BA``), so one device-wide setting covers every width.
    A tag's own setting (``device_default=False``) must name 16-bit orders with two letters.
    Raises ``ValueError`` for letters that cannot fit the width (config validation reports it).
    """
    size = width * 2
    if len(order) == size:
        valid = {1: BYTE_ORDERS_16, 2: BYTE_ORDERS_32, 4: BYTE_ORDERS_64}.get(width, ())
        if order in valid:
            return order
    elif len(order) == 4 and order in BYTE_ORDERS_32:
        if width == 4:
            return _TO_64[order]
        if width == 1 and device_default:
            return _TO_16[order]
    raise ValueError(f"byte order {order!r} does not fit a {size * 8}-bit value")


def _permutation(order: str) -> tuple[int, ...]:
    """For each wire position, the index of that byte in the big-endian form (A = 0)."""
    return tuple(ord(letter) - ord("A") for letter in order)


def _word_plan(order: str) -> tuple[bool, bool] | None:
    """(bytes swapped within each word, words reversed) when ``order`` is such an arrangement.

    ``CDAB`` is reversed words, ``BADC`` swapped bytes, ``DCBA`` both; None for anything else.
    """
    size = len(order)
    for swapped in (False, True):
        for reverse in (False, True):
            words = [(2 * i, 2 * i + 1) for i in range(size // 2)]
            if reverse:
                words.reverse()
            letters = "".join(
                "ABCDEFGH"[b] + "ABCDEFGH"[a] if swapped else "ABCDEFGH"[a] + "ABCDEFGH"[b]
                for a, b in words
            )
            if letters == order:
                return swapped, reverse
    return None


def wire_to_big_endian(wire: bytes, order: str) -> bytes:
    """Rearrange bytes as they arrived on the wire into big-endian (``ABCD...``) order."""
    out = bytearray(len(wire))
    for pos, idx in enumerate(_permutation(order)):
        out[idx] = wire[pos]
    return bytes(out)


def big_endian_to_wire(big: bytes, order: str) -> bytes:
    """Inverse of :func:`wire_to_big_endian`."""
    return bytes(big[idx] for idx in _permutation(order))


def registers_to_bytes(registers: Sequence[int]) -> bytes:
    """Registers as wire bytes (each register high byte first, as Modbus sends it)."""
    return b"".join((r & 0xFFFF).to_bytes(2, "big") for r in registers)


def bytes_to_registers(data: bytes) -> list[int]:
    if len(data) % 2:
        data += b"\x00"
    return [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]


def shortest_float32(value: float) -> float:
    """The shortest decimal that round-trips through float32, as a Python float.

    A float32 reading of 229.8 is 229.8000030517578 as a double; consumers expect what the device
    displays. ``repr`` of the double gives 17 digits, so search the shortest precision that maps
    back to the same float32.

    The search starts at 6 digits: a normal float32 is within 2**-24 (6e-8) of any decimal that
    round-trips to it, far less than half a step of the sixth digit (5e-7 at worst), so when
    some decimal of 6 digits or fewer round-trips, rounding to 6 digits finds that very number
    (``g`` drops the trailing zeros). Subnormals have fewer bits, so they search from 1. This
    runs for every float32 tag on every poll: most take one try instead of up to nine.
    """
    if not math.isfinite(value):
        return value
    target = _F32.pack(value)
    first = 6 if abs(value) >= _F32_MIN_NORMAL else 1
    for digits in range(first, 10):
        candidate = float(format(value, _G[digits]))
        try:
            if _F32.pack(candidate) == target:
                return candidate
        except OverflowError:  # near FLT_MAX a short decimal rounds past the float32 range
            continue
    return value


_F32 = struct.Struct(">f")
_F32_MIN_NORMAL = 1.1754943508222875e-38
_G = [f".{digits}g" for digits in range(10)]


@dataclass(frozen=True, slots=True)
class TagCodec:
    """Everything needed to turn one tag's registers into its value, fixed at plan time."""

    type: str
    count: int  # registers (or bits for coil/discrete) the tag spans
    byte_order: str = "ABCD"
    bit: int | None = None
    scale: float = 1.0
    offset: float = 0.0
    from_bits: bool = False  # coil or discrete input
    # Fixed at construction: every contract byte order is "words in order or reversed" times
    # "each word big- or little-endian", so decoding is two struct calls on the hot path.
    _words: struct.Struct | None = field(default=None, init=False, repr=False, compare=False)
    _value: struct.Struct | None = field(default=None, init=False, repr=False, compare=False)
    _reversed: bool = field(default=False, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # A device default such as ABCD applies to 16- and 64-bit values too; fit it once here so
        # decode never meets letters of the wrong length.
        if self.type in _STRUCT and len(self.byte_order) != 2 * self.count:
            try:
                order = resolve_byte_order(self.byte_order, self.count)
            except ValueError:
                order = "ABCDEFGH"[: 2 * self.count]
            object.__setattr__(self, "byte_order", order)
        if self.type in _STRUCT and not self.from_bits:
            fast = _word_plan(self.byte_order)
            if fast is not None:
                swapped, reverse = fast
                words = struct.Struct(f"{'<' if swapped else '>'}{self.count}H")
                object.__setattr__(self, "_words", words)
                object.__setattr__(self, "_value", struct.Struct(">" + _STRUCT[self.type]))
                object.__setattr__(self, "_reversed", reverse)

    @property
    def scaled(self) -> bool:
        return self.scale != 1 or self.offset != 0

    def raw(self, words: Sequence[int] | Sequence[bool]) -> Raw:
        """The unscaled value; never raises on any register content."""
        if self.from_bits:
            return bool(words[0]) if words else False
        regs = [int(w) & 0xFFFF for w in words[: self.count]]
        if len(regs) < self.count:
            regs += [0] * (self.count - len(regs))
        if self.type == "bool":
            return bool((regs[0] >> (self.bit or 0)) & 1)
        if self.type == "string":
            text = registers_to_bytes(regs).decode("ascii", errors="replace")
            return text.rstrip("\x00 ")
        value: int | float
        if self._words is not None and self._value is not None:
            ordered = regs[::-1] if self._reversed else regs
            value = self._value.unpack(self._words.pack(*ordered))[0]
        else:
            big = wire_to_big_endian(registers_to_bytes(regs), self.byte_order)
            value = struct.unpack(">" + _STRUCT[self.type], big)[0]
        if self.type == "float32":
            value = shortest_float32(value)
        return value


def _exact(value: float) -> Decimal:
    """The shortest decimal for a double: what the YAML said (0.1, not 0.1000000000000000055)."""
    return Decimal(repr(value))


def make_decoder(codec: TagCodec) -> Callable[[Sequence[int] | Sequence[bool]], Decoded]:
    """A function from the tag's registers to its engineering value.

    Scale and offset are applied in decimal arithmetic on the shortest representations, so raw 615
    with scale 0.1 gives 61.5 and not 61.50000000000001. Without scale or offset the raw value is
    returned as is (integers stay integers).

    This runs for every tag of every poll, so the common cases get a function of their own: a
    numeric tag whose registers arrived whole is two struct calls (no per-register list), and an
    integer scaled by a short decimal is exact integer arithmetic, ``(raw * S + O) / 10**k``,
    which Python rounds once, correctly: the same float as the decimal route, several times
    faster. Anything unusual (a short answer, a register out of range) takes the general path.
    """
    raw = _fast_raw(codec)
    if not codec.scaled or codec.type in ("bool", "string"):
        return raw
    scale = _exact(codec.scale)
    offset = _exact(codec.offset)

    def slow(value: Raw) -> Decoded:
        if isinstance(value, bool | str):
            return value
        if isinstance(value, float) and not math.isfinite(value):
            return value * codec.scale + codec.offset
        try:
            return float(
                Decimal(repr(value) if isinstance(value, float) else value) * scale + offset
            )
        except (InvalidOperation, OverflowError, ValueError):
            return float(value) * codec.scale + codec.offset

    ratio = _decimal_ratio(scale, offset)
    if ratio is None or codec.type.startswith("float"):
        return lambda words: slow(raw(words))
    times, plus, per = ratio

    def decode(words: Sequence[int] | Sequence[bool]) -> Decoded:
        value = raw(words)
        if value.__class__ is int:
            try:
                return (value * times + plus) / per
            except OverflowError:
                pass
        return slow(value)

    return decode


def _decimal_ratio(scale: Decimal, offset: Decimal) -> tuple[int, int, int] | None:
    """(S, O, D) with scale = S / D and offset = O / D exactly, D a power of ten; None when the
    decimals are too long for that to be cheap, or not finite (the decimal route handles them)."""
    if not (scale.is_finite() and offset.is_finite()):
        return None
    places = max(0, -int(scale.as_tuple().exponent), -int(offset.as_tuple().exponent))
    if places > 18:
        return None
    per = 10**places
    times, plus = scale * per, offset * per
    if times != times.to_integral_value() or plus != plus.to_integral_value():
        return None
    return int(times), int(plus), per


def _fast_raw(codec: TagCodec) -> Callable[[Sequence[int] | Sequence[bool]], Raw]:
    """``codec.raw``, or a faster function with the same results for whole numeric answers."""
    general = codec.raw
    words, value = codec._words, codec._value
    if codec.from_bits or words is None or value is None:
        return general
    pack, unpack, count, backwards = words.pack, value.unpack, codec.count, codec._reversed
    float32 = codec.type == "float32"

    def raw(regs: Sequence[int] | Sequence[bool]) -> Raw:
        if len(regs) != count:
            return general(regs)
        try:
            got: int | float = unpack(pack(*(regs[::-1] if backwards else regs)))[0]
        except struct.error:  # a register outside 0..65535 (only tests and tools pass those)
            return general(regs)
        return shortest_float32(got) if float32 else got

    return raw


def make_array_decoder(
    codec: TagCodec, count: int
) -> Callable[[Sequence[int] | Sequence[bool]], list[Decoded]]:
    """For an array tag (``count`` values of one type, back to back): a function from all its
    registers to the list of values, each decoded (and scaled) as a lone tag of the type."""
    element = make_decoder(codec)
    width = codec.count

    def decode_all(words: Sequence[int] | Sequence[bool]) -> list[Decoded]:
        return [element(words[i * width : (i + 1) * width]) for i in range(count)]

    return decode_all


def decode(codec: TagCodec, words: Sequence[int] | Sequence[bool]) -> Decoded:
    """One-off decode (tests, tools); the driver keeps the function from :func:`make_decoder`."""
    return make_decoder(codec)(words)


def encode(codec: TagCodec, value: Decoded) -> list[int]:
    """Registers that decode to ``value`` (scale and offset inverted). For tests and writes.

    For coil/discrete tags returns ``[0]`` or ``[1]``. A bool on a register returns the register
    with only that bit set, since a write of one bit needs the other bits from the device anyway.
    Raises ``ValueError``/``struct.error`` when the value does not fit the type.
    """
    if codec.from_bits:
        return [1 if value else 0]
    if codec.type == "bool":
        return [(1 << (codec.bit or 0)) if value else 0]
    if codec.type == "string":
        data = str(value).encode("ascii")
        if len(data) > codec.count * 2:
            raise ValueError(f"string of {len(data)} bytes does not fit {codec.count} registers")
        return bytes_to_registers(data.ljust(codec.count * 2, b"\x00"))
    if isinstance(value, str):
        raise ValueError(f"a {codec.type} tag cannot take a string")
    raw: int | float = value
    if codec.scaled:
        exact = (Decimal(repr(float(value))) - _exact(codec.offset)) / _exact(codec.scale)
        raw = float(exact)
    if codec.type.startswith(("int", "uint")):
        rounded = round(raw)
        if isinstance(raw, float) and abs(raw - rounded) > 1e-9 * max(1.0, abs(raw)):
            raise ValueError(f"{value!r} is not a whole number of {codec.type} steps")
        raw = int(rounded)
    big = struct.pack(">" + _STRUCT[codec.type], raw)
    return bytes_to_registers(big_endian_to_wire(big, codec.byte_order))
