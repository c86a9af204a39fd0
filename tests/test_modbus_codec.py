"""The codec against values packed independently with struct, per the contract's byte orders."""

from __future__ import annotations

import math
import struct
from decimal import Decimal, localcontext

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.modbus.codec import (
    TagCodec,
    decode,
    encode,
    make_decoder,
    register_count,
    resolve_byte_order,
    shortest_float32,
)

FMT = {"int16": "h", "uint16": "H", "int32": "i", "uint32": "I", "float32": "f"}
FMT |= {"int64": "q", "uint64": "Q", "float64": "d"}


def wire(type_: str, value: float, order: str) -> list[int]:
    """Registers for ``value``: big-endian bytes rearranged by the letters, written by hand here."""
    big = struct.pack(">" + FMT[type_], value)
    data = bytes(big["ABCDEFGH".index(letter)] for letter in order)
    return [data[i] * 256 + data[i + 1] for i in range(0, len(data), 2)]


CASES = [
    ("int16", -12345, ["AB", "BA"]),
    ("uint16", 54321, ["AB", "BA"]),
    ("int32", -123456789, ["ABCD", "CDAB", "BADC", "DCBA"]),
    ("uint32", 3456789012, ["ABCD", "CDAB", "BADC", "DCBA"]),
    ("float32", 229.8, ["ABCD", "CDAB", "BADC", "DCBA"]),
    ("int64", -1234567890123456789, ["ABCDEFGH", "GHEFCDAB", "BADCFEHG", "HGFEDCBA"]),
    ("uint64", 12345678901234567890, ["ABCDEFGH", "GHEFCDAB", "BADCFEHG", "HGFEDCBA"]),
    ("float64", 1234.5678, ["ABCDEFGH", "GHEFCDAB", "BADCFEHG", "HGFEDCBA"]),
]


@pytest.mark.parametrize(
    ("type_", "value", "order"), [(t, v, o) for t, v, orders in CASES for o in orders]
)
def test_every_type_and_byte_order(type_: str, value: float, order: str) -> None:
    regs = wire(type_, value, order)
    codec = TagCodec(type=type_, count=len(regs), byte_order=order)
    got = decode(codec, regs)
    assert got == value
    assert type(got) is type(value)
    assert encode(codec, value) == regs


def test_known_wire_layouts() -> None:
    # 0x11223344 as the contract spells it: ABCD big-endian, CDAB word-swapped, BADC, DCBA.
    value = 0x11223344
    expected = {
        "ABCD": [0x1122, 0x3344],
        "CDAB": [0x3344, 0x1122],
        "BADC": [0x2211, 0x4433],
        "DCBA": [0x4433, 0x2211],
    }
    for order, regs in expected.items():
        assert decode(TagCodec(type="uint32", count=2, byte_order=order), regs) == value


@pytest.mark.parametrize(
    ("default", "width", "expected"),
    [
        ("CDAB", 4, "GHEFCDAB"),
        ("BADC", 4, "BADCFEHG"),
        ("DCBA", 4, "HGFEDCBA"),
        ("ABCD", 4, "ABCDEFGH"),
        ("BADC", 1, "BA"),
        ("DCBA", 1, "BA"),
        ("CDAB", 1, "AB"),
        ("ABCD", 1, "AB"),
        ("CDAB", 2, "CDAB"),
    ],
)
def test_device_default_maps_to_every_width(default: str, width: int, expected: str) -> None:
    assert resolve_byte_order(default, width) == expected


def test_tag_byte_order_must_fit_the_width() -> None:
    with pytest.raises(ValueError, match="16-bit"):
        resolve_byte_order("ABCD", 1, device_default=False)
    with pytest.raises(ValueError, match="32-bit"):
        resolve_byte_order("ABCDEFGH", 2)
    assert resolve_byte_order("CDAB", 4, device_default=False) == "GHEFCDAB"


def test_bits_count_from_the_least_significant() -> None:
    word = [0xA009]  # bits 0, 3, 13, 15
    got = {b: decode(TagCodec(type="bool", count=1, bit=b), word) for b in range(16)}
    assert [b for b, v in got.items() if v] == [0, 3, 13, 15]
    assert decode(TagCodec(type="bool", count=1, from_bits=True), [True]) is True


@pytest.mark.parametrize(
    ("raw", "text"),
    [
        (b"PUMP-07!", "PUMP-07!"),
        (b"PUMP\x00\x00\x00\x00", "PUMP"),
        (b"Line 1  ", "Line 1"),
        (b"AB \x00 \x00\x00\x00", "AB"),
        (b"\x00\x00\x00\x00", ""),
    ],
)
def test_strings_high_byte_first_padding_removed(raw: bytes, text: str) -> None:
    regs = [raw[i] << 8 | raw[i + 1] for i in range(0, len(raw), 2)]
    assert decode(TagCodec(type="string", count=len(regs)), regs) == text


def test_non_ascii_string_is_replaced_not_raised() -> None:
    assert decode(TagCodec(type="string", count=1), [0xFF41]) == "\ufffdA"


def test_scale_and_offset_add_no_binary_noise() -> None:
    tenth = TagCodec(type="int16", count=1, scale=0.1)
    assert decode(tenth, [615]) == 61.5
    assert decode(TagCodec(type="uint16", count=1, scale=0.01), [23001]) == 230.01
    temp = TagCodec(type="int16", count=1, scale=0.1, offset=-40)
    assert decode(temp, [1015]) == 61.5
    neg = wire("int16", -3, "AB")
    assert decode(TagCodec(type="int16", count=1, scale=0.1), neg) == -0.3
    assert encode(temp, 61.5) == [1015]


def test_unscaled_integers_stay_integers() -> None:
    got = decode(TagCodec(type="uint16", count=1), [615])
    assert got == 615
    assert isinstance(got, int)
    scaled = decode(TagCodec(type="uint16", count=1, scale=2), [615])
    assert scaled == 1230.0


def test_float32_is_its_shortest_decimal() -> None:
    regs = wire("float32", 229.8, "ABCD")
    got = decode(TagCodec(type="float32", count=2), regs)
    assert repr(got) == "229.8"
    assert shortest_float32(struct.unpack(">f", struct.pack(">f", 0.1))[0]) == 0.1
    scaled = decode(TagCodec(type="float32", count=2, scale=0.1), wire("float32", 615.3, "ABCD"))
    assert scaled == 61.53


def test_float32_extremes_decode() -> None:
    flt_max = decode(TagCodec(type="float32", count=2), [0x7F7F, 0xFFFF])
    assert flt_max == 3.4028235e38
    assert decode(TagCodec(type="float32", count=2), [0xFF7F, 0xFFFF]) == -3.4028235e38


def test_non_finite_values_decode_to_floats() -> None:
    nan = decode(TagCodec(type="float32", count=2), [0x7FC0, 0x0000])
    assert isinstance(nan, float)
    assert math.isnan(nan)
    inf = decode(TagCodec(type="float32", count=2, scale=0.5), [0x7F80, 0x0000])
    assert inf == math.inf


def test_make_decoder_skips_scaling_when_not_configured() -> None:
    for type_, regs in (
        ("uint16", [615]),
        ("int32", [0xFFFF, 0xFF9B]),
        ("float32", [0x4365, 0xCCCD]),
    ):
        codec = TagCodec(type=type_, count=len(regs))
        got = make_decoder(codec)(regs)
        assert got == codec.raw(regs)
        assert type(got) is type(codec.raw(regs))  # integers stay integers


TYPES = ["bool", "int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64"]


@given(
    type_=st.sampled_from([*TYPES, "string"]),
    regs=st.lists(st.integers(0, 0xFFFF), min_size=0, max_size=6),
    scale=st.sampled_from([1.0, 0.1, -0.001, 1e300]),
    offset=st.sampled_from([0.0, -40.0, 1e308]),
    bit=st.integers(0, 15),
)
def test_decode_never_raises(
    type_: str, regs: list[int], scale: float, offset: float, bit: int
) -> None:
    width = {"int32": 2, "uint32": 2, "float32": 2, "int64": 4, "uint64": 4, "float64": 4}
    count = width.get(type_, 1) if type_ != "string" else 3
    order = {1: "BA", 2: "DCBA", 4: "GHEFCDAB"}[count] if type_ != "string" else "ABCD"
    codec = TagCodec(type=type_, count=count, byte_order=order, bit=bit, scale=scale, offset=offset)
    got = decode(codec, regs)
    assert isinstance(got, bool | int | float | str)


@given(st.integers(-(2**31), 2**31 - 1), st.sampled_from(["ABCD", "CDAB", "BADC", "DCBA"]))
def test_int32_round_trips(value: int, order: str) -> None:
    codec = TagCodec(type="int32", count=2, byte_order=order)
    assert decode(codec, encode(codec, value)) == value
    assert encode(codec, value) == wire("int32", value, order)


@given(
    type_=st.sampled_from(TYPES),
    order=st.sampled_from(["ABCD", "CDAB", "BADC", "DCBA"]),
    regs=st.lists(st.integers(0, 0xFFFF), min_size=4, max_size=4),
)
def test_fast_decoders_agree_with_the_general_path(type_: str, order: str, regs: list[int]) -> None:
    """The per-codec fast functions are an optimisation only: same value, same type."""
    codec = TagCodec(type=type_, count=register_count(type_), byte_order=order)
    words = regs[: codec.count]
    fast, general = make_decoder(codec)(words), codec.raw(words)
    assert type(fast) is type(general)
    assert fast == general or (math.isnan(fast) and math.isnan(general))  # type: ignore[arg-type]


@given(
    raw=st.integers(-(2**63), 2**64 - 1),
    scale=st.decimals(
        allow_nan=False, allow_infinity=False, places=6, min_value=-1000, max_value=1000
    ),
    offset=st.decimals(
        allow_nan=False, allow_infinity=False, places=3, min_value=-1e6, max_value=1e6
    ),
)
def test_integer_scaling_is_the_exact_decimal_result(
    raw: int, scale: Decimal, offset: Decimal
) -> None:
    """Integer arithmetic for scale and offset gives the float nearest the exact decimal result,
    as the decimal route does (615 x 0.1 = 61.5, never 61.50000000000001)."""
    scale_f, offset_f = float(scale), float(offset)
    if scale_f == 1 and offset_f == 0:
        return
    codec = TagCodec(type="int64", count=4, scale=scale_f, offset=offset_f)
    big = raw.to_bytes(8, "big", signed=raw < 0)
    words = [int.from_bytes(big[i : i + 2], "big") for i in range(0, 8, 2)]
    with localcontext() as ctx:
        ctx.prec = 60
        exact = Decimal(codec.raw(words)) * Decimal(repr(scale_f)) + Decimal(repr(offset_f))
    assert make_decoder(codec)(words) == float(exact)


@given(bits=st.integers(0, 2**32 - 1))
def test_shortest_float32_is_the_shortest_of_all_precisions(bits: int) -> None:
    """Starting the search at 6 digits finds what a search from 1 digit finds, for any pattern
    (subnormals included)."""
    value = struct.unpack(">f", bits.to_bytes(4, "big"))[0]
    if not math.isfinite(value):
        return
    target = struct.pack(">f", value)
    reference = value
    for digits in range(1, 10):
        candidate = float(f"{value:.{digits}g}")
        try:
            if struct.pack(">f", candidate) == target:
                reference = candidate
                break
        except OverflowError:
            continue
    assert repr(shortest_float32(value)) == repr(reference)
