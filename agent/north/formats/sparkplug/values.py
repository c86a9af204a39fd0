"""Sparkplug B datatypes: choosing one per metric, and values to and from the protobuf fields.

The rules come from the specification's chapter 6 (payload datatypes): 8, 16 and 32-bit
integers travel in ``int_value`` (an unsigned 32-bit field, so negative numbers as two's
complement), 64-bit ones in ``long_value``, arrays as little-endian packed ``bytes_value``.
"""

from __future__ import annotations

import json
import struct
from typing import Any

from agent.north.formats.sparkplug import sparkplug_b_pb2

#: The generated module has no type information; its names are checked by the tests.
pb: Any = sparkplug_b_pb2

#: Our tag types (drivers' ``type:``) to Sparkplug datatypes.
TAG_TYPES: dict[str, int] = {
    "bool": pb.Boolean,
    "int16": pb.Int16,
    "uint16": pb.UInt16,
    "int32": pb.Int32,
    "uint32": pb.UInt32,
    "int64": pb.Int64,
    "uint64": pb.UInt64,
    "float32": pb.Float,
    "float64": pb.Double,
    "string": pb.String,
}

_INT32 = {pb.Int8: 8, pb.Int16: 16, pb.Int32: 32}
_UINT32 = {pb.UInt8: 8, pb.UInt16: 16, pb.UInt32: 32}
_INTEGER = {**_INT32, **_UINT32, pb.Int64: 64, pb.UInt64: 64}
_ARRAYS = {pb.Int64Array: "q", pb.DoubleArray: "d"}
_ALL_ARRAYS = {*_ARRAYS, pb.BooleanArray, pb.StringArray}


def infer(value: Any) -> int:
    """The datatype a value calls for when the config declares none."""
    if isinstance(value, bool):
        return int(pb.Boolean)
    if isinstance(value, int):
        return int(pb.Int64) if -(2**63) <= value < 2**63 else int(pb.Double)
    if isinstance(value, float):
        return int(pb.Double)
    if isinstance(value, str):
        return int(pb.String)
    if isinstance(value, list) and value:
        if all(isinstance(v, bool) for v in value):
            return int(pb.BooleanArray)
        if all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            return int(pb.Int64Array)
        if all(isinstance(v, int | float) and not isinstance(v, bool) for v in value):
            return int(pb.DoubleArray)
        if all(isinstance(v, str) for v in value):
            return int(pb.StringArray)
    return int(pb.String)  # anything else travels as its JSON text


def fits(datatype: int, value: Any) -> bool:
    """Whether ``value`` can be carried by a metric born with ``datatype`` (else: rebirth)."""
    if value is None:
        return True
    if datatype == pb.Boolean:
        return isinstance(value, bool)
    if datatype in _INTEGER:
        if not isinstance(value, int) or isinstance(value, bool):
            return False
        bits = _INTEGER[datatype]
        if datatype in (pb.UInt64, *_UINT32):
            return bool(0 <= value < 1 << bits)
        return bool(-(1 << (bits - 1)) <= value < 1 << (bits - 1))
    if datatype in (pb.Float, pb.Double):
        return isinstance(value, int | float) and not isinstance(value, bool)
    if datatype == pb.DateTime:  # milliseconds since the epoch, unsigned
        return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1 << 64
    if datatype == pb.String:
        return True
    if isinstance(value, list) and not value:
        return datatype in _ALL_ARRAYS  # an empty list fits any array type
    return infer(value) == datatype or (
        datatype == pb.DoubleArray and infer(value) == pb.Int64Array
    )


def choose(declared: str | None, value: Any) -> int:
    """The config's type when the value fits it, else the value's own."""
    if declared is not None and declared in TAG_TYPES:
        datatype = TAG_TYPES[declared]
        if fits(datatype, value):
            return int(datatype)
    if value is not None:
        return infer(value)
    return int(TAG_TYPES.get(declared or "", pb.String))


def set_value(metric: Any, datatype: int, value: Any) -> None:
    """Fill the value field of a Metric (or mark it null)."""
    if value is None:
        metric.is_null = True
        return
    if datatype == pb.Boolean:
        metric.boolean_value = bool(value)
    elif datatype in _INT32 or datatype in _UINT32:
        metric.int_value = int(value) & 0xFFFFFFFF
    elif datatype in (pb.Int64, pb.UInt64, pb.DateTime):
        metric.long_value = int(value) & 0xFFFFFFFFFFFFFFFF
    elif datatype == pb.Float:
        metric.float_value = float(value)
    elif datatype == pb.Double:
        metric.double_value = float(value)
    elif datatype in _ARRAYS:
        kind = _ARRAYS[datatype]
        metric.bytes_value = struct.pack(f"<{len(value)}{kind}", *value)
    elif datatype == pb.BooleanArray:
        packed = bytearray(len(value).to_bytes(4, "little"))
        packed += bytes((len(value) + 7) // 8)
        for i, bit in enumerate(value):
            if bit:
                packed[4 + i // 8] |= 0x80 >> (i % 8)
        metric.bytes_value = bytes(packed)
    elif datatype == pb.StringArray:
        metric.bytes_value = b"".join(s.encode() + b"\0" for s in value)
    else:
        metric.string_value = value if isinstance(value, str) else json.dumps(value)


def get_value(metric: Any, datatype: int | None = None) -> Any:
    """The Python value of a received Metric (DCMD/NCMD), honouring signed integers."""
    if metric.HasField("is_null") and metric.is_null:
        return None
    field = metric.WhichOneof("value")
    if field is None:
        return None
    raw = getattr(metric, field)
    dt = datatype if datatype is not None else (metric.datatype or None)
    if field == "int_value" and dt in _INT32:
        bits = _INT32[dt]
        raw &= (1 << bits) - 1
        return raw - (1 << bits) if raw >= 1 << (bits - 1) else raw
    if field == "long_value" and dt == pb.Int64:
        return raw - (1 << 64) if raw >= 1 << 63 else raw
    if field in ("dataset_value", "template_value", "extension_value", "bytes_value"):
        raise ValueError(f"unsupported value type {field}")
    return raw
