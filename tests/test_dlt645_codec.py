"""DL/T 645 frames and data formats: the standard's own examples, round trips over every value a
format holds, any cut of a byte stream, and bytes that are no frame at all."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.dlt645.bcd import BadValue, Format
from drivers.dlt645.catalogue import CATALOGUES, di_bytes
from drivers.dlt645.frame import Frame, FrameReader, Trouble, address_bytes, address_text, encode
from simulators.dlt645_meters import FORMATS_1997, FORMATS_2007, bcd


def test_the_textbook_read_request() -> None:
    """The request every DL/T 645-2007 manual prints: read forward active energy (00010000) of
    the lone meter, ``68 AA..AA 68 11 04 33 33 34 33 AE 16``."""
    frame = encode(address_bytes("AAAAAAAAAAAA"), 0x11, di_bytes("00010000"), preamble=4)
    assert frame.hex(" ") == "fe fe fe fe 68 aa aa aa aa aa aa 68 11 04 33 33 34 33 ae 16"


def test_an_address_goes_lowest_byte_first() -> None:
    assert address_bytes("210220003011").hex(" ") == "11 30 00 20 02 21"
    assert address_text(bytes.fromhex("113000200221")) == "210220003011"
    for bad in ("21022000301", "2102200030AB", "21022000301X"):
        with pytest.raises(ValueError):
            address_bytes(bad)


def test_230_1_volts_is_written_as_the_standard_writes_it() -> None:
    """XXX.X, two bytes, lowest first: 230.1 V is ``01 23``; a current of -1.500 A in XXX.XXX
    is ``00 15 80`` (sign in the top bit)."""
    assert Format.parse("XXX.X").encode(2301) == b"\x01\x23"
    assert Format.parse("XXX.X").decode(b"\x01\x23") == 230.1
    assert Format.parse("XXX.XXX", signed=True).decode(b"\x00\x15\x80") == -1.5


@st.composite
def formats_and_counts(draw: st.DrawFn) -> tuple[Format, int]:
    digits = draw(st.integers(1, 16))
    decimals = draw(st.integers(0, digits - 1))  # a digit before the point, as the standard
    text = "X" * (digits - decimals) + ("." + "X" * decimals if decimals else "")
    fmt = Format.parse(text, signed=draw(st.booleans()))
    low = -(fmt.limit - 1) if fmt.signed else 0
    return fmt, draw(st.integers(low, fmt.limit - 1))


@given(formats_and_counts())
def test_every_value_of_a_format_comes_back(case: tuple[Format, int]) -> None:
    fmt, counts = case
    raw = fmt.encode(counts)
    assert len(raw) == fmt.size
    assert fmt.decode(raw) == (counts if fmt.decimals == 0 else counts / 10**fmt.decimals)


@given(st.binary(min_size=0, max_size=9), st.booleans())
def test_any_bytes_are_a_value_or_bad_value(raw: bytes, signed: bool) -> None:
    fmt = Format.parse("XXXXXX.XX", signed=signed)
    try:
        value = fmt.decode(raw)
    except BadValue:
        return
    assert isinstance(value, float) and abs(value) < 1e6


def test_the_simulator_and_the_catalogue_read_the_standard_alike() -> None:
    """Two writings of the standard's formats (the simulator's table, the driver's catalogue)
    agree on every identifier both have: digits, decimals and sign."""
    for protocol, table in (("2007", FORMATS_2007), ("1997", FORMATS_1997)):
        catalogue = CATALOGUES[protocol]  # type: ignore[index]
        shared = [e for e in catalogue.by_name.values() if e.di in table]
        assert len(shared) >= 30 if protocol == "2007" else len(shared) >= 25, protocol
        for entry in shared:
            digits, decimals, signed = table[entry.di]
            fmt = entry.format
            assert (fmt.digits, fmt.decimals, fmt.signed) == (digits, decimals, signed), entry
            assert fmt.decode(bcd(7, digits, decimals, signed)) == 7
            if signed:
                assert fmt.decode(bcd(-7, digits, decimals, signed)) == -7


frames = st.builds(
    Frame,
    address=st.binary(min_size=6, max_size=6),
    control=st.integers(0, 255),
    data=st.binary(max_size=200),
)


@given(st.lists(frames, min_size=1, max_size=4), st.data())
def test_frames_come_back_whatever_the_cuts(sent: list[Frame], data: st.DataObject) -> None:
    wire = b"".join(
        encode(f.address, f.control, f.data, preamble=data.draw(st.integers(0, 4))) for f in sent
    )
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=6)))
    reader = FrameReader()
    got: list[Frame | Trouble] = []
    for a, b in zip([0, *cuts], [*cuts, len(wire)], strict=True):
        got += reader.feed(wire[a:b])
    assert got == sent
    assert reader.pending == 0


@given(st.binary(max_size=600))
def test_any_bytes_never_raise_and_stay_bounded(noise: bytes) -> None:
    reader = FrameReader()
    for event in reader.feed(noise):
        assert isinstance(event, Frame | Trouble)
    assert reader.pending <= 12 + 200


def test_a_corrupted_frame_is_a_checksum_and_the_next_one_still_reads() -> None:
    good = encode(address_bytes("210220003011"), 0x91, di_bytes("02010100") + b"\x01\x23")
    bad = bytearray(good)
    bad[12] ^= 0x10
    events = list(FrameReader().feed(b"\x00\x07" + bytes(bad) + b"\xfe\xfe" + good))
    kinds = [e.kind if isinstance(e, Trouble) else "frame" for e in events]
    assert kinds[0] == "noise" and "checksum" in kinds and kinds[-1] == "frame", kinds
    last = events[-1]
    assert isinstance(last, Frame) and last.meter == "210220003011" and last.from_meter
    assert last.data == di_bytes("02010100") + b"\x01\x23"
