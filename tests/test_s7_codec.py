"""S7 addresses and types: parsing TIA's syntax, bytes to values and back, and what hostile bytes
do to the decoders (a ValueError, never anything else)."""

from __future__ import annotations

import datetime as dt
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.s7.address import MAX_BYTE, parse_address
from drivers.s7.codec import (
    FIXED_SIZE,
    S7_TYPES,
    decode_date_and_time,
    decode_dtl,
    encode,
    make_decoder,
    span,
)
from drivers.s7.config import S7Connection, parse_tsap
from simulators.s7_moulding import date_and_time, dtl, s7_string, s7_wstring

# -- addresses ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "area", "db", "byte", "bit", "width"),
    [
        ("DB10.DBD4", "DB", 10, 4, None, "D"),
        ("DB10.DBX8.0", "DB", 10, 8, 0, "X"),
        ("db1.dbb10", "DB", 1, 10, None, "B"),
        ("DB65535.DBW2", "DB", 65535, 2, None, "W"),
        ("MW20", "M", 0, 20, None, "W"),
        ("MD24", "M", 0, 24, None, "D"),
        ("M0.1", "M", 0, 0, 1, "X"),
        ("I0.1", "I", 0, 0, 1, "X"),
        ("IW64", "I", 0, 64, None, "W"),
        ("Q0.0", "Q", 0, 0, 0, "X"),
        ("qb4", "Q", 0, 4, None, "B"),
    ],
)
def test_addresses_as_tia_writes_them(
    text: str, area: str, db: int, byte: int, bit: int | None, width: str
) -> None:
    a = parse_address(text)
    assert (a.area, a.db, a.byte, a.bit, a.width) == (area, db, byte, bit, width)
    assert str(a) == text.upper()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("DB10", "needs the offset"),
        ("EW4", "German mnemonics"),
        ("A0.0", "(Q0.0)"),
        ("T5", "timers and counters"),
        ("DB1.DBX0.8", "bit 8 does not exist"),
        ("DB0.DBW0", "DB number 0"),
        ("MW2097152", "past the last address"),
        ("DB1.DBQ4", "not an S7 address"),
        ("", "not an S7 address"),
    ],
)
def test_bad_addresses_say_why(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_address(text)


@st.composite
def addresses(draw: st.DrawFn) -> str:
    byte = draw(st.integers(0, MAX_BYTE))
    width = draw(st.sampled_from("XBWD"))
    area = draw(st.sampled_from(["DB", "M", "I", "Q"]))
    if area == "DB":
        db = draw(st.integers(1, 65535))
        tail = f"X{byte}.{draw(st.integers(0, 7))}" if width == "X" else f"{width}{byte}"
        return f"DB{db}.DB{tail}"
    return f"{area}{byte}.{draw(st.integers(0, 7))}" if width == "X" else f"{area}{width}{byte}"


@settings(max_examples=300, deadline=None)
@given(text=addresses(), lower=st.booleans())
def test_every_valid_address_parses_back_to_itself(text: str, lower: bool) -> None:
    assert str(parse_address(text.lower() if lower else text)) == text


@settings(max_examples=300, deadline=None)
@given(text=st.text(alphabet="DBXWMIQEAT0123456789. dbx", max_size=16))
def test_any_text_parses_or_raises_value_error(text: str) -> None:
    try:
        parse_address(text)
    except ValueError as exc:
        assert str(exc)


def test_tsaps_as_tia_shows_them() -> None:
    assert parse_tsap("03.01") == 0x0301
    assert parse_tsap("0x1000") == 0x1000
    assert parse_tsap(258) == 258
    for bad in ("3.1.1", "0x10000", -1, True):
        with pytest.raises(ValueError):
            parse_tsap(bad)
    assert S7Connection(host="h").remote == 0x0201  # OP, rack 0, slot 1
    v = S7Connection.model_validate
    assert v({"host": "h", "connection_type": "pg", "slot": 2}).remote == 0x0102
    assert v({"host": "h", "connection_type": "S7 BASIC", "rack": 1, "slot": 3}).remote == 0x0323
    assert v({"host": "h", "remote_tsap": "10.02"}).remote == 0x1002


# -- values ---------------------------------------------------------------------------------------

INTEGER_RANGES = {
    "BYTE": (0, 255),
    "WORD": (0, 65535),
    "DWORD": (0, 2**32 - 1),
    "INT": (-(2**15), 2**15 - 1),
    "DINT": (-(2**31), 2**31 - 1),
    "LINT": (-(2**63), 2**63 - 1),
    "UINT": (0, 65535),
    "UDINT": (0, 2**32 - 1),
    "ULINT": (0, 2**64 - 1),
}


@settings(max_examples=200, deadline=None)
@given(data=st.data(), type_=st.sampled_from(sorted(INTEGER_RANGES)), count=st.integers(1, 6))
def test_integers_round_trip_big_endian(data: st.DataObject, type_: str, count: int) -> None:
    lo, hi = INTEGER_RANGES[type_]
    values = data.draw(st.lists(st.integers(lo, hi), min_size=count, max_size=count))
    raw = b"".join(encode(type_, None, v) for v in values)
    assert raw[: FIXED_SIZE[type_]] == values[0].to_bytes(FIXED_SIZE[type_], "big", signed=lo < 0)
    assert make_decoder(type_, None, None, None)(raw) == values[0]
    assert make_decoder(type_, None, count, None)(raw) == values
    with pytest.raises(ValueError, match="does not fit"):
        encode(type_, None, hi + 1)


@settings(max_examples=200, deadline=None)
@given(value=st.floats(width=32, allow_nan=False))
def test_real_decodes_to_its_shortest_decimal(value: float) -> None:
    got = make_decoder("REAL", None, None, None)(encode("REAL", None, value))
    assert isinstance(got, float)
    assert struct.pack(">f", got) == struct.pack(">f", value)
    assert len(repr(got)) <= len(repr(value))


def test_real_and_lreal_on_the_wire() -> None:
    assert make_decoder("REAL", None, None, None)(bytes.fromhex("43664ccd")) == 230.3
    assert make_decoder("LREAL", None, None, None)(struct.pack(">d", 0.1)) == 0.1
    reals = make_decoder("REAL", None, 3, None)(struct.pack(">3f", 1.5, -2.25, 229.8))
    assert reals == [1.5, -2.25, 229.8]


def test_bools_are_bits_counted_from_the_address() -> None:
    data = bytes([0b1000_0001, 0b0000_0010])
    assert make_decoder("BOOL", None, None, 0)(data) is True
    assert make_decoder("BOOL", None, None, 1)(data) is False
    assert make_decoder("BOOL", None, 4, 6)(data) == [False, True, False, True]
    assert span("BOOL", None, 4, 6) == 2 and span("BOOL", None, None, 7) == 1


def test_strings_with_their_headers() -> None:
    assert make_decoder("STRING", 16, None, None)(s7_string("MLD-4711-A", 16)) == "MLD-4711-A"
    assert make_decoder("WSTRING", 8, None, None)(s7_wstring("Müller", 8)) == "Müller"
    assert span("STRING", 16, None, None) == 18 and span("WSTRING", 8, None, None) == 20
    assert span("STRING", None, None, None) == 256  # STRING is STRING[254]
    with pytest.raises(ValueError, match="header says 20 of 16"):
        make_decoder("STRING", 16, None, None)(bytes([16, 20]) + b"x" * 16)
    with pytest.raises(ValueError, match="the tag declares 4"):
        make_decoder("STRING", 4, None, None)(bytes([16, 10]) + b"x" * 16)
    # A write sends the actual length and the characters, never the PLC's maximum.
    assert encode("STRING", 16, "AB") == b"\x02AB"
    assert encode("WSTRING", 8, "Ü") == b"\x00\x01\x00\xdc"
    with pytest.raises(ValueError, match="at most 4"):
        encode("STRING", 4, "ABCDE")
    with pytest.raises(ValueError, match="Latin-1"):
        encode("STRING", 16, "水")


@settings(max_examples=100, deadline=None)
@given(
    when=st.datetimes(min_value=dt.datetime(1990, 1, 1), max_value=dt.datetime(2089, 12, 31)),
)
def test_dates_round_trip(when: dt.datetime) -> None:
    ms = when.replace(microsecond=when.microsecond // 1000 * 1000)
    assert decode_date_and_time(date_and_time(ms)) == ms.isoformat(timespec="milliseconds")
    nanos = f".{when.microsecond * 1000:09d}" if when.microsecond else ""
    assert decode_dtl(dtl(when)) == when.replace(microsecond=0).isoformat() + nanos


def test_dates_that_do_not_exist_are_refused() -> None:
    with pytest.raises(ValueError, match="not BCD"):
        decode_date_and_time(bytes.fromhex("2612071a00000000"))
    with pytest.raises(ValueError):
        decode_date_and_time(bytes.fromhex("2613070600000000"))  # month 13
    with pytest.raises(ValueError, match="nanoseconds"):
        decode_dtl(struct.pack(">HBBBBBBI", 2026, 12, 7, 1, 6, 0, 0, 10**9))
    assert decode_dtl(struct.pack(">HBBBBBBI", 2026, 12, 7, 1, 6, 0, 0, 5)) == (
        "2026-12-07T06:00:00.000000005"
    )


def _decoder_cases() -> list[tuple[str, Any, Any]]:
    return [(t, 4 if t in ("STRING", "WSTRING") else None, None) for t in S7_TYPES]


@settings(max_examples=300, deadline=None)
@given(case=st.sampled_from(_decoder_cases()), raw=st.binary(max_size=40), count=st.integers(1, 3))
def test_hostile_bytes_decode_or_raise_value_error(
    case: tuple[str, Any, Any], raw: bytes, count: int
) -> None:
    type_, length, _ = case
    arrays = type_ not in ("STRING", "WSTRING", "DATE_AND_TIME", "DTL")
    need = span(type_, length, count if arrays else None, 0)
    data = (raw * (need // max(1, len(raw)) + 1))[:need] if raw else bytes(need)
    decoder = make_decoder(type_, length, count if arrays else None, 0)
    try:
        value = decoder(data)
    except ValueError:
        return
    values = value if isinstance(value, list) else [value]
    assert all(isinstance(v, bool | int | float | str) for v in values)
    if type_ in ("STRING", "WSTRING", "DATE_AND_TIME", "DTL"):
        assert isinstance(value, str)
    elif type_ == "BOOL":
        assert all(isinstance(v, bool) for v in values)
