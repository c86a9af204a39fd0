"""JSON values from commands as OPC UA variants: checked against a built-in type, never guessed.

A write's type is the node's DataType (read at each connect), a method argument's the type the
config declares (checked against the server's InputArguments at connect). A value that does not
fit is refused with the reason before anything is sent: a bool is not a number, 3.5 is not an
Int16, 70000 is not an Int16 either, a list is not a scalar, and a list longer than
``max_items`` is not sent at all.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from asyncua import ua

from drivers.base import Value, WriteError
from drivers.base.writes import json_type as base_json_type
from drivers.base.writes import take_bool, take_number, take_text
from drivers.opcua.convert import Unsupported, shortest_float32, to_value

#: Integer types and their ranges.
INT_RANGES: dict[ua.VariantType, tuple[int, int]] = {
    ua.VariantType.SByte: (-(2**7), 2**7 - 1),
    ua.VariantType.Byte: (0, 2**8 - 1),
    ua.VariantType.Int16: (-(2**15), 2**15 - 1),
    ua.VariantType.UInt16: (0, 2**16 - 1),
    ua.VariantType.Int32: (-(2**31), 2**31 - 1),
    ua.VariantType.UInt32: (0, 2**32 - 1),
    ua.VariantType.Int64: (-(2**63), 2**63 - 1),
    ua.VariantType.UInt64: (0, 2**64 - 1),
}
FLOAT32_MAX = 3.4028234663852886e38
#: Types a command can carry as JSON.
WRITABLE = {
    *INT_RANGES,
    ua.VariantType.Boolean,
    ua.VariantType.Float,
    ua.VariantType.Double,
    ua.VariantType.String,
    ua.VariantType.DateTime,
    ua.VariantType.ByteString,
}
#: Elements of an array a tag write takes (the node's ArrayDimensions may say less).
MAX_ITEMS = 1000


@dataclass(frozen=True, slots=True)
class Shape:
    """What a value must be: a built-in type, scalar or 1-D array, within bounds."""

    vtype: ua.VariantType
    array: bool = False
    max_items: int = MAX_ITEMS
    min: float | None = None
    max: float | None = None

    def describe(self) -> str:
        return f"{self.vtype.name}[]" if self.array else self.vtype.name


def json_type(value: object) -> str:
    """How the sender wrote the value: ``a string``, ``true``, ``a list``..."""
    return base_json_type(value, literal_bools=True)


def to_variant(value: object, shape: Shape, what: str) -> ua.Variant:
    """``value`` as a variant of ``shape``; ``WriteError`` saying why it does not fit."""
    if shape.vtype not in WRITABLE:
        raise WriteError(f"{what} is {shape.vtype.name}, which commands cannot write")
    if shape.array:
        if not isinstance(value, list):
            raise WriteError(f"{what} takes a list of {shape.vtype.name}, not {json_type(value)}")
        if len(value) > shape.max_items:
            raise WriteError(f"{what} takes at most {shape.max_items} items, not {len(value)}")
        items = [_scalar(v, shape, f"{what}[{i}]") for i, v in enumerate(value)]
        return ua.Variant(items, shape.vtype, is_array=True)
    return ua.Variant(_scalar(value, shape, what), shape.vtype)


def _scalar(value: object, shape: Shape, what: str) -> Any:
    vtype = shape.vtype
    if vtype == ua.VariantType.Boolean:
        return take_bool(value, what)
    if vtype == ua.VariantType.String:
        return take_text(value, what, literal_bools=True)
    if vtype == ua.VariantType.DateTime:
        return _datetime(value, what)
    if vtype == ua.VariantType.ByteString:
        if not isinstance(value, str):
            raise WriteError(f"{what} takes base64 text, not {json_type(value)}")
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise WriteError(f"{what} takes base64 text") from None
    number = value = take_number(value, what, literal_bools=True)
    bounds = INT_RANGES.get(vtype)
    if bounds is not None:
        if isinstance(value, float):
            if not value.is_integer():
                raise WriteError(f"{what} is {vtype.name}: it takes an integer, not {value}")
            number = int(value)
        if not bounds[0] <= number <= bounds[1]:
            raise WriteError(f"{number} is out of range for {what} ({vtype.name})")
    elif vtype == ua.VariantType.Float:
        if abs(value) > FLOAT32_MAX:
            raise WriteError(f"{value} is out of range for {what} (Float)")
        number = float(value)
    else:
        number = float(value)
    if shape.min is not None and number < shape.min:
        raise WriteError(f"{number} is below min {shape.min:g} of {what}")
    if shape.max is not None and number > shape.max:
        raise WriteError(f"{number} is above max {shape.max:g} of {what}")
    return number


def _datetime(value: object, what: str) -> datetime:
    if not isinstance(value, str):
        raise WriteError(f"{what} takes an ISO 8601 time, not {json_type(value)}")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise WriteError(f"{what} takes an ISO 8601 time such as 2026-11-23T08:00:00Z") from None
    if parsed.tzinfo is None:
        raise WriteError(f"{what} takes a time with its zone (Z or +01:00)")
    return parsed.astimezone(UTC)


def same(sent: ua.Variant, read: ua.Variant | None) -> bool:
    """Whether the value read back is the value written (as the payload would carry both)."""
    if read is None:
        return False
    try:
        return _json(sent) == _json(read)
    except Unsupported:
        return False


def _json(variant: ua.Variant) -> Value:
    value = to_value(variant)
    if variant.VariantType == ua.VariantType.Float:
        if isinstance(value, list):
            return [shortest_float32(float(v)) for v in value]
        return shortest_float32(float(value))
    return value


def outputs(variants: Sequence[ua.Variant]) -> list[Value | None]:
    """A method's output arguments as the reply carries them (a structure as null)."""
    out: list[Value | None] = []
    for v in variants:
        try:
            out.append(to_value(v))
        except Unsupported:
            out.append(None)
    return out
