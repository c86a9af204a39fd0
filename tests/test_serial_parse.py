"""Checksums (published vectors), escapes, typed conversion and the serial config rules."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from drivers.serial.checksums import ChecksumCheck, crc16_modbus, lrc, sum8, xor8
from drivers.serial.config import SerialDevice, SerialTag
from drivers.serial.escapes import decode_escapes, printable
from drivers.serial.parse import Failed, FrameParser, frame_text, make_converter

CHECK = b"123456789"  # the check string of the CRC catalogue


def test_crc16_modbus_check_value() -> None:
    assert crc16_modbus(CHECK) == 0x4B37


def test_crc16_modbus_of_a_real_request() -> None:
    # Modbus RTU "read 2 holding registers at 0 from unit 1": 01 03 00 00 00 02, then C4 0B.
    assert crc16_modbus(bytes.fromhex("010300000002")).to_bytes(2, "little") == b"\xc4\x0b"


def test_lrc_of_the_modbus_ascii_example() -> None:
    # ":010300000001FB": the LRC of 01 03 00 00 00 01 is FB.
    assert lrc(bytes.fromhex("010300000001")) == 0xFB


def test_sum8_and_xor_of_the_check_string() -> None:
    assert sum8(CHECK) == 0xDD  # 477 mod 256
    assert xor8(CHECK) == 0x31


def test_nmea_sentence_checksum() -> None:
    # NMEA 0183: XOR of everything between '$' and '*'.
    assert xor8(b"GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,") == 0x47


@given(st.binary(max_size=64), st.sampled_from(["xor", "sum8", "lrc", "crc16"]), st.booleans())
def test_rendered_checksum_splits_back_to_the_body(body: bytes, kind: str, hex_: bool) -> None:
    check = ChecksumCheck(kind, "hex" if hex_ else "binary")  # type: ignore[arg-type]
    assert check.split(body + check.render(body)) == body


def test_hex_checksum_accepts_lower_case_and_refuses_a_wrong_one() -> None:
    check = ChecksumCheck("xor")
    assert check.split(b"AB" + f"{0x41 ^ 0x42:02x}".encode()) == b"AB"
    assert check.split(b"AB04") is None
    assert check.split(b"ABzz") is None
    assert check.split(b"A") is None
    assert ChecksumCheck("crc16").width == 4
    assert ChecksumCheck("crc16", "binary").width == 2


def test_escapes_decode_and_print_back() -> None:
    assert decode_escapes(r"PV?\r") == b"PV?\r"
    assert decode_escapes("\\x02A\\x03") == b"\x02A\x03"
    assert decode_escapes("already\r") == b"already\r"
    assert decode_escapes(r"a\\b") == b"a\\b"
    assert printable(b"\x02ST,GS\r\n\\\xff") == "\\x02ST,GS\\r\\n\\\\\\xff"
    with pytest.raises(ValueError, match="unknown escape"):
        decode_escapes(r"\q")
    with pytest.raises(ValueError, match="single byte"):
        decode_escapes("€")


@given(st.binary(max_size=64))
def test_printable_round_trips_through_decode(data: bytes) -> None:
    assert decode_escapes(printable(data)) == data


def tag(**fields: Any) -> SerialTag:
    return SerialTag.model_validate({"name": "t", **fields})


def test_float_scale_and_offset_are_exact_decimal() -> None:
    assert make_converter(tag(type="float64"))("+0012.34") == 12.34
    assert make_converter(tag(type="float64", scale=0.1))(" 615 ") == 61.5
    assert make_converter(tag(type="float64", scale=0.1, offset=-40))("0.3") == -39.97
    with pytest.raises(ValueError):
        make_converter(tag(type="float64"))("12,5")


def test_int_stays_int_unless_scaled() -> None:
    value = make_converter(tag(type="int64"))("+0042")
    assert value == 42 and type(value) is int
    assert make_converter(tag(type="int64", scale=0.01))("1234") == 12.34
    with pytest.raises(ValueError):
        make_converter(tag(type="int64"))(str(2**63))


def test_bool_with_one_or_several_true_values() -> None:
    assert make_converter(tag(type="bool", true_value="ST"))("ST") is True
    assert make_converter(tag(type="bool", true_value="ST"))("US") is False
    several = make_converter(tag(type="bool", true_value=["ON", "1"]))
    assert (several("1"), several("ON"), several("OFF")) == (True, True, False)


def test_frame_parser_values_and_per_tag_failures() -> None:
    tags = [
        tag(name="weight", type="float64"),
        tag(name="stable", type="bool", true_value="ST"),
        tag(name="unit", type="string", group="u"),
        tag(name="other", type="int64"),  # not in this pattern: not this parser's tag
    ]
    parser = FrameParser(r"^(?P<stable>ST|US),GS,\s*(?P<weight>[^ ]+)\s*(?P<u>kg|lb)?$", tags)
    assert parser.tag_names == ["weight", "stable", "unit"]
    assert parser.parse("ST,GS,+0012.34 kg") == {"weight": 12.34, "stable": True, "unit": "kg"}
    assert parser.parse("US,GS,+00x2.34") == {
        "weight": Failed("bad value"),
        "stable": False,
        "unit": Failed("no value"),
    }
    assert parser.parse("garbage") is None


def test_frame_text_checks_the_checksum() -> None:
    check = ChecksumCheck("sum8")
    assert frame_text(b"PV=1" + check.render(b"PV=1"), check) == "PV=1"
    assert frame_text(b"PV=100", check) is None
    assert frame_text(b"\xb0C", None) == "\xb0C"


# -- config rules -----------------------------------------------------------------------------


def device(**fields: Any) -> SerialDevice:
    base: dict[str, Any] = {
        "name": "scale-1",
        "driver": "serial",
        "connection": {"port": "/dev/ttyUSB1"},
        "match": r"^(?P<w>\d+)$",
        "tags": [{"name": "w", "type": "int64"}],
    }
    return SerialDevice.model_validate({**base, **fields})


def test_single_quoted_escapes_become_bytes() -> None:
    d = device(framing={"start": r"\x02", "end": r"\x03"})
    assert (d.framing.start, d.framing.end_marker) == (b"\x02", b"\x03")
    assert device().framing.end_marker == b"\r\n"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"match": "(?P<w>"}, "invalid regular expression"),
        ({"match": r"(?P<x>\d+)"}, "no group (?P<w>...)"),
        ({"framing": {"terminator": "\n", "length": 4}}, "exactly one of"),
        ({"framing": {"end": "\x03"}}, "end needs start"),
        ({"framing": {"terminator": r"\q"}}, "unknown escape"),
        ({"framing": {"length": 300}}, "more than max_frame"),
        ({"mode": "poll"}, "poll mode needs requests"),
        ({"match": None}, "stream mode needs match"),
        ({"tags": [{"name": "w", "type": "bool"}]}, "needs true_value"),
        ({"tags": [{"name": "w", "type": "string", "scale": 2}]}, "scale not allowed"),
        ({"connection": {"port": "/dev/x", "stopbits": 3}}, "stopbits is 1, 1.5 or 2"),
    ],
)
def test_config_refuses(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as info:
        device(**fields)
    assert message in str(info.value)


def test_poll_mode_groups_come_from_every_request() -> None:
    d = device(
        mode="poll",
        match=None,
        requests=[
            {"send": r"PV?\r", "match": r"^PV=(?P<pv>\S+)$"},
            {"send": "SV?\r", "match": r"^SV=(?P<sv>\S+)$", "timeout": "200ms"},
        ],
        tags=[{"name": "pv", "type": "float64"}, {"name": "sp", "group": "sv", "type": "float64"}],
    )
    assert [r.send for r in d.requests] == [b"PV?\r", b"SV?\r"]
    assert d.requests[1].timeout == 0.2
