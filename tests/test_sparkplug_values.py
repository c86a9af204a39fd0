"""Sparkplug datatypes and value encodings against the specification's own examples."""

from __future__ import annotations

from typing import Any

import pytest

from agent.north.formats.sparkplug import sparkplug_b_pb2
from agent.north.formats.sparkplug.values import choose, fits, get_value, set_value

pb: Any = sparkplug_b_pb2


def _bytes(datatype: int, value: Any) -> bytes:
    m = pb.Payload.Metric()
    set_value(m, datatype, value)
    return bytes(m.bytes_value)


def test_array_encodings_match_the_specification_examples() -> None:
    """Specification 6.4.17 (array types): little-endian packed values in bytes_value."""
    assert _bytes(pb.Int64Array, [-4270929666821191986, -3601064768563266876]) == bytes.fromhex(
        "CE 06 72 AC 18 9C BA C4 C4 BA 9C 18 AC 72 06 CE"
    )
    flags = [False, False, True, True, False, True, False, False, True, True, False, True]
    assert _bytes(pb.BooleanArray, flags) == bytes([0x0C, 0x00, 0x00, 0x00, 0x34, 0xD0])
    assert _bytes(pb.StringArray, ["ABC", "hello"]) == bytes(
        [0x41, 0x42, 0x43, 0x00, 0x68, 0x65, 0x6C, 0x6C, 0x6F, 0x00]
    )


@pytest.mark.parametrize(
    ("declared", "value", "datatype"),
    [
        ("int16", -5, pb.Int16),
        ("uint16", 65535, pb.UInt16),
        ("uint16", 70000, pb.Int64),  # does not fit the declared type: the value's own
        ("float32", 1.5, pb.Float),
        ("float32", 2, pb.Float),
        ("bool", True, pb.Boolean),
        ("string", "PUMP-07", pb.String),
        (None, 3, pb.Int64),
        (None, 3.5, pb.Double),
        (None, [1, 2], pb.Int64Array),
        (None, [1, 2.5], pb.DoubleArray),
        (None, [True], pb.BooleanArray),
        (None, {"a": 1}, pb.String),
        ("int32", None, pb.Int32),  # no value yet: the declared type
    ],
)
def test_datatype_choice(declared: str | None, value: Any, datatype: int) -> None:
    assert choose(declared, value) == datatype


def test_fits_decides_when_a_metric_needs_a_rebirth() -> None:
    assert fits(pb.Int16, -32768) and not fits(pb.Int16, 32768)
    assert fits(pb.UInt32, 0) and not fits(pb.UInt32, -1)
    assert fits(pb.Double, 3) and not fits(pb.Double, True)
    assert not fits(pb.Boolean, 1)
    assert fits(pb.Int64, None)  # a bad reading travels as is_null


@pytest.mark.parametrize(
    ("datatype", "value", "field", "raw"),
    [
        (pb.Int8, -23, "int_value", 0xFFFFFFE9),
        (pb.Int16, -30000, "int_value", (-30000) & 0xFFFFFFFF),
        (pb.Int32, -1, "int_value", 0xFFFFFFFF),
        (pb.Int64, -2, "long_value", 0xFFFFFFFFFFFFFFFE),
        (pb.UInt32, 4000000000, "int_value", 4000000000),
        (pb.UInt64, 2**64 - 1, "long_value", 2**64 - 1),
    ],
)
def test_signed_integers_are_twos_complement_and_read_back(
    datatype: int, value: int, field: str, raw: int
) -> None:
    m = pb.Payload.Metric(datatype=datatype)
    set_value(m, datatype, value)
    assert getattr(m, field) == raw
    assert get_value(m) == value


def test_null_and_unsupported_values() -> None:
    m = pb.Payload.Metric(datatype=pb.Double)
    set_value(m, pb.Double, None)
    assert m.is_null and get_value(m) is None
    m = pb.Payload.Metric(datatype=pb.Bytes, bytes_value=b"x")
    with pytest.raises(ValueError):
        get_value(m)
