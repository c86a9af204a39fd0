"""From OPC UA data values to readings: the value's JSON form and the status code's quality.

Kept apart from the I/O so the same rules serve subscriptions, polls and ``discover``.
"""

from __future__ import annotations

import base64
import struct
import uuid
from datetime import UTC, datetime
from typing import Any

from asyncua import ua

from drivers.base import Quality, Reading, Value

#: Numeric built-in types whose Python value is already an exact JSON number.
_PLAIN = {
    ua.VariantType.Boolean,
    ua.VariantType.SByte,
    ua.VariantType.Byte,
    ua.VariantType.Int16,
    ua.VariantType.UInt16,
    ua.VariantType.Int32,
    ua.VariantType.UInt32,
    ua.VariantType.Int64,
    ua.VariantType.UInt64,
    ua.VariantType.Double,
    ua.VariantType.String,
}


class Unsupported(Exception):
    """A value the payload cannot carry (a structure, a matrix)."""


def shortest_float32(value: float) -> float:
    """The shortest decimal that is the same float32: ``229.8``, not ``229.8000030517578``."""
    packed = struct.pack("<f", value)
    for digits in range(6, 10):
        candidate = float(f"{value:.{digits}g}")
        if struct.pack("<f", candidate) == packed:
            return candidate
    return value


def _iso(value: datetime) -> str:
    """DateTime as ISO 8601 UTC with milliseconds, the form dashboards parse everywhere."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _scalar(value: Any, vtype: ua.VariantType) -> Value:
    if value is None:
        raise Unsupported("null value")
    if vtype == ua.VariantType.Float:
        return shortest_float32(float(value))
    if vtype in _PLAIN:
        if isinstance(value, bool | int | float | str):
            return value
        raise Unsupported(f"{vtype.name} holding {type(value).__name__}")
    if vtype == ua.VariantType.DateTime:
        return _iso(value)
    if vtype == ua.VariantType.ByteString:
        return base64.b64encode(value).decode("ascii")
    if vtype == ua.VariantType.LocalizedText:
        return str(value.Text or "")
    if vtype == ua.VariantType.QualifiedName:
        return str(value.to_string())
    if vtype in (ua.VariantType.NodeId, ua.VariantType.ExpandedNodeId):
        return str(value.to_string())
    if vtype == ua.VariantType.StatusCode:
        return str(value.name)
    if vtype == ua.VariantType.Guid and isinstance(value, uuid.UUID):
        return str(value)
    raise Unsupported(f"type {vtype.name}")


def to_value(variant: ua.Variant) -> Value:
    """A variant's value as the payload carries it; a 1-D array becomes a list."""
    vtype = variant.VariantType
    value = variant.Value
    if isinstance(value, list):
        if variant.Dimensions and len(variant.Dimensions) > 1:
            raise Unsupported(f"{len(variant.Dimensions)}-dimensional array")
        if any(isinstance(v, list) for v in value):
            raise Unsupported("nested array")
        return [_scalar(v, vtype) for v in value]
    return _scalar(value, vtype)


def status_name(code: ua.StatusCode) -> str:
    """``BadNodeIdUnknown``: stable to alert on, and what the server's manual lists."""
    try:
        return str(code.name)
    except Exception:  # an unknown code from a vendor's range
        return f"0x{int(code.value):08X}"


def quality_of(code: ua.StatusCode | None) -> tuple[Quality, str | None]:
    """Good → good; Uncertain* → uncertain; Bad* → bad; the reason is the code's name."""
    if code is None or code.is_good():
        return Quality.GOOD, None
    if code.is_uncertain():
        return Quality.UNCERTAIN, status_name(code)
    return Quality.BAD, status_name(code)


def epoch(value: datetime | None) -> float | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.timestamp()


def reading(tag: str, data: ua.DataValue, ts: float) -> Reading:
    """One tag's reading from a data value received at ``ts`` (the batch time).

    The server's source timestamp rides along in ``source_ts`` so the payload can keep it where
    it differs from the batch time (a value the machine changed before this publish)."""
    quality, reason = quality_of(data.StatusCode)
    source = epoch(data.SourceTimestamp)
    if quality is Quality.BAD:
        return Reading(tag=tag, value=None, ts=ts, quality=quality, reason=reason, source_ts=source)
    variant = data.Value
    if variant is None or variant.Value is None:
        why = reason or "no value"
        return Reading(tag=tag, value=None, ts=ts, quality=Quality.BAD, reason=why)
    try:
        value = to_value(variant)
    except Unsupported as exc:
        return Reading.bad(tag, ts, f"unsupported: {exc}")
    return Reading(tag=tag, value=value, ts=ts, quality=quality, reason=reason, source_ts=source)
