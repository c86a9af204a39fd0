"""MC protocol pieces on their own: addresses, the 3E frame both ways, values across words.

Fixed frames are the MC protocol reference manual's examples (batch read of D100-D102, batch
write of M100-M102), byte for byte, so the encoder is not only checked against its own decoder.
Properties: every address round-trips through its text; every request and answer round-trips
through its parser in both codes; any bytes at all make the answer parser return an answer or
raise ``FrameError``, nothing else; every value round-trips through its words.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.mc.codec import bytes_to_words, encode, make_decoder, word_count, words_to_bytes
from drivers.mc.devices import DEVICES, Address, format_address, parse_address
from drivers.mc.frame import (
    BATCH_READ,
    BATCH_WRITE,
    RANDOM_READ,
    SUB_BITS,
    SUB_WORDS,
    Encoding,
    FrameError,
    Reader,
    Writer,
    answer,
    batch_read,
    batch_write_bits,
    batch_write_words,
    error_answer,
    header_size,
    parse_answer,
    parse_request,
    random_read,
)

ENCODINGS: tuple[Encoding, ...] = ("binary", "ascii")

# -- the manual's frames --------------------------------------------------------------------------


def test_batch_read_of_d100_as_the_manual_writes_it() -> None:
    binary = batch_read("binary", DEVICES["D"], 100, 3, bits=False, timer=0x10)
    assert binary == bytes.fromhex("500000FFFF03000C00100001040000640000A80300")
    ascii_ = batch_read("ascii", DEVICES["D"], 100, 3, bits=False, timer=0x10)
    assert ascii_ == b"500000FF03FF000018001004010000D*0001000003"


def test_hexadecimal_devices_are_numbered_in_hexadecimal_in_ascii_frames() -> None:
    frame = batch_read("ascii", DEVICES["X"], 0x1F, 3, bits=True, timer=0x10)
    assert frame == b"500000FF03FF000018001004010001X*00001F0003"
    assert batch_read("binary", DEVICES["X"], 0x1F, 3, bits=True)[-6:] == bytes.fromhex(
        "1F00009C0300"
    )


def test_zr_is_decimal_in_addresses_and_hexadecimal_in_ascii_frames() -> None:
    """GX Works numbers ZR in decimal; the MC manual's device table gives it in hexadecimal
    (its numbers run past the six decimal digits of an ASCII frame)."""
    assert parse_address("ZR2000") == Address("ZR", 2000)
    frame = batch_read("ascii", DEVICES["ZR"], 2000, 1, bits=False)
    assert frame.endswith(b"ZR0007D00001")


def test_batch_write_of_bits_packs_two_to_a_byte_first_in_the_high_nibble() -> None:
    frame = batch_write_bits("binary", DEVICES["M"], 100, [True, False, True], timer=0x10)
    assert frame == bytes.fromhex("500000FFFF03000E001000011401006400009003001010")
    ascii_ = batch_write_bits("ascii", DEVICES["M"], 100, [True, False, True], timer=0x10)
    assert ascii_.endswith(b"14010001M*0001000003101")


def test_an_answer_with_words_and_one_with_an_end_code() -> None:
    ok = answer("binary", 0, Writer("binary").words([0x1995, 0x1202, 0x1130]).bytes())
    assert ok == bytes.fromhex("D00000FFFF030008000000951902123011")
    got = parse_answer(ok[:9], ok[9:], "binary")
    assert got.end_code == 0 and got.data.words(3) == [0x1995, 0x1202, 0x1130]
    text = answer("ascii", 0, Writer("ascii").words([0x1995, 0x1202, 0x1130]).bytes())
    assert text == b"D00000FF03FF00001000001995120211 30".replace(b" ", b"")
    bad = error_answer("ascii", 0xC051, BATCH_READ, SUB_WORDS)
    got = parse_answer(bad[:18], bad[18:], "ascii")
    assert got.end_code == 0xC051


# -- addresses ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "device", "number"),
    [
        ("D100", "D", 100),
        ("x1f", "X", 31),
        ("Y20", "Y", 32),
        ("W1A", "W", 26),
        ("B0", "B", 0),
        ("ZR2000", "ZR", 2000),
        ("SM400", "SM", 400),
        ("SD210", "SD", 210),
        ("R32767", "R", 32767),
        ("L7", "L", 7),
    ],
)
def test_addresses_as_gx_works_writes_them(text: str, device: str, number: int) -> None:
    assert parse_address(text) == Address(device, number)


@pytest.mark.parametrize("text", ["Q100", "D", "100", "D1F", "M0x10", "R32768", "D-1", "ZRA"])
def test_addresses_that_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_address(text)


@given(device=st.sampled_from(sorted(DEVICES)), number=st.integers(0, 0xFFFFFF))
def test_every_address_round_trips_through_its_text(device: str, number: int) -> None:
    kind = DEVICES[device]
    number = min(number, kind.last)
    text = format_address(device, number)
    assert parse_address(text) == Address(device, number)
    assert parse_address(text.lower()) == Address(device, number)


@given(st.text(max_size=12))
def test_any_text_parses_or_is_refused_with_a_value_error(text: str) -> None:
    with contextlib.suppress(ValueError):
        assert isinstance(parse_address(text), Address)


# -- frames both ways -----------------------------------------------------------------------------

addresses = st.builds(
    lambda d, n: Address(d, min(n, DEVICES[d].last)),
    st.sampled_from(sorted(DEVICES)),
    st.integers(0, 0xFFFFFF),
)
word_addresses = addresses.filter(lambda a: not a.kind.bits)


@settings(max_examples=200)
@given(
    encoding=st.sampled_from(ENCODINGS),
    where=addresses,
    count=st.integers(1, 960),
    bits=st.booleans(),
    timer=st.integers(1, 0xFFFF),
)
def test_a_batch_read_parses_back(
    encoding: Encoding, where: Address, count: int, bits: bool, timer: int
) -> None:
    frame = batch_read(encoding, where.kind, where.number, count, bits=bits, timer=timer)
    req = parse_request(frame, encoding)
    sub = SUB_BITS if bits else SUB_WORDS
    assert (req.command, req.sub, req.timer) == (BATCH_READ, sub, timer)
    assert req.body.device() == where and req.body.u16() == count
    req.body.end()


@settings(max_examples=200)
@given(
    encoding=st.sampled_from(ENCODINGS),
    words=st.lists(word_addresses, max_size=8),
    dwords=st.lists(word_addresses, max_size=8),
)
def test_a_random_read_parses_back(
    encoding: Encoding, words: list[Address], dwords: list[Address]
) -> None:
    req = parse_request(random_read(encoding, words, dwords), encoding)
    assert (req.command, req.sub) == (RANDOM_READ, SUB_WORDS)
    n_words, n_dwords = req.body.u8(), req.body.u8()
    assert [req.body.device() for _ in range(n_words)] == words
    assert [req.body.device() for _ in range(n_dwords)] == dwords
    req.body.end()


@settings(max_examples=200)
@given(
    encoding=st.sampled_from(ENCODINGS),
    where=word_addresses,
    words=st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=40),
    bits=st.lists(st.booleans(), min_size=1, max_size=41),
)
def test_writes_and_answers_parse_back(
    encoding: Encoding, where: Address, words: list[int], bits: list[bool]
) -> None:
    req = parse_request(batch_write_words(encoding, where.kind, where.number, words), encoding)
    assert (req.command, req.sub) == (BATCH_WRITE, SUB_WORDS)
    assert req.body.device() == where and req.body.words(req.body.u16()) == words
    m = DEVICES["M"]
    req = parse_request(batch_write_bits(encoding, m, 3, bits), encoding)
    assert req.body.device() == Address("M", 3) and req.body.bits(req.body.u16()) == bits
    req.body.end()
    frame = answer(encoding, 0, Writer(encoding).words(words).bits(bits).bytes())
    size = header_size(encoding)
    got = parse_answer(frame[:size], frame[size:], encoding)
    assert got.end_code == 0
    assert got.data.words(len(words)) == words and got.data.bits(len(bits)) == bits
    got.data.end()


@settings(max_examples=500)
@given(encoding=st.sampled_from(ENCODINGS), data=st.binary(max_size=64), n=st.integers(0, 20))
def test_any_bytes_are_an_answer_or_a_frame_error(encoding: Encoding, data: bytes, n: int) -> None:
    """Garbage, truncated and lying frames: the parser says FrameError, never anything else."""
    size = header_size(encoding)
    try:
        got = parse_answer(data[:size], data[size:], encoding)
        got.data.words(n)
        got.data.bits(n)
        got.data.dwords(n)
        got.data.end()
    except FrameError:
        pass


@settings(max_examples=300)
@given(encoding=st.sampled_from(ENCODINGS), data=st.binary(max_size=64))
def test_any_bytes_are_a_request_or_a_frame_error(encoding: Encoding, data: bytes) -> None:
    """What the simulators parse (and the hostile server) never fails any other way."""
    try:
        req = parse_request(data, encoding)
        req.body.device()
        req.body.words(req.body.u16())
    except FrameError:
        pass


def test_ascii_fields_refuse_what_int_would_take() -> None:
    for text in (b" 1F", b"+1F0", b"1_F0", b"g000"):
        with pytest.raises(FrameError):
            Reader(text.ljust(4, b"0"), "ascii").u16()
    with pytest.raises(FrameError):
        Reader(b"0102", "ascii").bits(4)
    with pytest.raises(FrameError):
        Reader(b"\x12", "binary").bits(2)  # a nibble other than 0 or 1


# -- values ---------------------------------------------------------------------------------------


def test_32_bit_values_are_low_word_first() -> None:
    assert encode("int32", 0x12345678) == [0x5678, 0x1234]
    assert make_decoder("uint32")([0x5678, 0x1234]) == 0x12345678
    assert make_decoder("float32")(bytes_to_words(struct.pack("<f", 42.5))) == 42.5
    assert make_decoder("float64")(encode("float64", -1.25)) == -1.25


def test_a_float32_is_what_the_hmi_shows() -> None:
    assert make_decoder("float32")(encode("float32", 229.8)) == 229.8


def test_strings_have_the_first_character_in_the_low_byte_and_end_at_nul() -> None:
    words = encode("string", "PRG-A12", 4)
    assert words[0] == ord("P") | ord("R") << 8
    assert make_decoder("string")(words) == "PRG-A12"
    with pytest.raises(ValueError):
        encode("string", "TOO LONG!", 4)


NUMBERS = {
    "int16": st.integers(-(2**15), 2**15 - 1),
    "uint16": st.integers(0, 2**16 - 1),
    "int32": st.integers(-(2**31), 2**31 - 1),
    "uint32": st.integers(0, 2**32 - 1),
    "float32": st.floats(width=32, allow_nan=False),
    "float64": st.floats(allow_nan=False),
}


@given(data=st.data(), type_=st.sampled_from(sorted(NUMBERS)))
def test_every_number_round_trips_through_its_words(data: st.DataObject, type_: str) -> None:
    value = data.draw(NUMBERS[type_])
    words = encode(type_, value)
    assert len(words) == word_count(type_) and all(0 <= w <= 0xFFFF for w in words)
    back = make_decoder(type_)(words)
    if type_ == "float32":  # the shortest decimal that is the same float32
        assert struct.pack("<f", back) == struct.pack("<f", value)
    else:
        assert back == value


@given(type_=st.sampled_from(sorted(NUMBERS)), raw=st.binary(min_size=8, max_size=8))
def test_any_words_decode_to_a_value(type_: str, raw: bytes) -> None:
    """Whatever a PLC holds decodes (NaN included), never raises."""
    words = bytes_to_words(raw)[: word_count(type_)]
    assert words_to_bytes(words) == raw[: 2 * len(words)]
    make_decoder(type_)(words)


@given(text=st.text(alphabet=st.characters(min_codepoint=1, max_codepoint=127), max_size=16))
def test_ascii_strings_round_trip(text: str) -> None:
    assert make_decoder("string")(encode("string", text, 8)) == text


# -- the TCP client's stream: answers cut by their length field, whatever the segments -----------


class _Transport:
    """What ``_Answers`` writes to, kept for the test."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.sent.append(data)

    def close(self) -> None:
        pass


def _stream(encoding: Encoding) -> Any:
    from drivers.mc.client import _Answers

    stream = _Answers(encoding)
    stream.connection_made(_Transport())  # type: ignore[arg-type]
    return stream


@settings(max_examples=200)
@given(
    encoding=st.sampled_from(ENCODINGS),
    words=st.lists(st.integers(0, 0xFFFF), max_size=30),
    cuts=st.lists(st.integers(1, 200), max_size=8),
)
async def test_an_answer_in_any_segments_is_one_answer(
    encoding: Encoding, words: list[int], cuts: list[int]
) -> None:
    frame = answer(encoding, 0, Writer(encoding).words(words).bytes())
    stream = _stream(encoding)
    pending = asyncio.ensure_future(stream.request(b"request"))
    await asyncio.sleep(0)
    at = 0
    for cut in [*cuts, len(frame)]:
        if at < len(frame):
            stream.data_received(frame[at : at + cut])
            at += cut
    header, rest = await pending
    got = parse_answer(header, rest, encoding)
    assert got.data.words(len(words)) == words
    assert stream.fault is None


@settings(max_examples=200)
@given(encoding=st.sampled_from(ENCODINGS), noise=st.binary(min_size=1, max_size=80))
async def test_bytes_after_an_answer_or_unasked_put_the_stream_out_of_step(
    encoding: Encoding, noise: bytes
) -> None:
    frame = answer(encoding, 0, Writer(encoding).words([1, 2]).bytes())
    stream = _stream(encoding)
    pending = asyncio.ensure_future(stream.request(b"request"))
    await asyncio.sleep(0)
    stream.data_received(frame + noise)  # a doubled answer, or anything after the end
    with pytest.raises(FrameError):
        await pending
    with pytest.raises(FrameError):  # and the next request is refused, not answered by it
        await stream.request(b"next")
    unasked = _stream(encoding)
    unasked.data_received(noise)  # no request waiting
    with pytest.raises(FrameError):
        await unasked.request(b"request")
