"""Value types every config section shares (names, durations, sizes) and its key error.

Part of the driver contract (``drivers.base`` re-exports every name here): the agent's own
sections (mqtt, buffer, processing keys...) use the same types, so a duration or a size means the
same everywhere in the file.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, StringConstraints, WithJsonSchema
from pydantic_core import PydanticCustomError

NAME_PATTERN = r"^[A-Za-z0-9_.-]+$"
#: Agent ids, device names and tag names: safe as one MQTT topic level (no ``/``, ``+``, ``#``).
Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN, min_length=1, max_length=128)]


def key_error(key: str, message: str) -> PydanticCustomError:
    """A model-level error that belongs to one key of the mapping (the config locator's
    ``config_key`` protocol: it reads ``ctx["key"]`` to show the message at that key)."""
    # The message goes in the context, not in the template, so braces in it are never formatted.
    return PydanticCustomError("config_key", "{message}", {"key": key, "message": message})


_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?|\.\d+)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}


def parse_duration(value: Any) -> Any:
    """Turn ``250ms``, ``1s``, ``5m`` or a plain number of seconds into float seconds.

    Anything unparseable is passed through unchanged so pydantic reports it as a type error with
    the offending key, rather than this function raising a bare exception.
    """
    if isinstance(value, bool):  # YAML's yes/true: pydantic would take it as 1 second
        raise ValueError("a duration, not true/false: use seconds or a string like 250ms, 1s, 5m")
    if isinstance(value, int | float):
        try:
            return float(value)
        except OverflowError:  # an int past float's range: a ValueError pydantic can place
            raise ValueError("duration is too long") from None
    if isinstance(value, str):
        m = _DURATION_RE.match(value)
        if m is None:
            raise ValueError(
                f"invalid duration {value!r}: use seconds or a string like 250ms, 1s, 5m"
            )
        return float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    return value


def parse_size(value: Any) -> Any:
    """Turn ``512KB``, ``256MB``, ``1GiB`` or a plain number of bytes into int bytes."""
    if isinstance(value, bool):  # YAML's yes/true: pydantic would take it as 1 byte
        raise ValueError("a size, not true/false: use bytes or a string like 512KB, 256MB, 1GiB")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        m = _SIZE_RE.match(value)
        if m is None:
            raise ValueError(
                f"invalid size {value!r}: use bytes or a string like 512KB, 256MB, 1GiB"
            )
        unit = (m.group(2) or "B").lower()
        return int(float(m.group(1)) * _SIZE_UNITS[unit])
    return value


_DURATION_SCHEMA = {
    "anyOf": [
        {"type": "number", "minimum": 0},
        {"type": "string", "pattern": r"^\s*(\d+(\.\d+)?|\.\d+)\s*(ms|s|m|h|d)?\s*$"},
    ],
    "description": "seconds, or a string such as 250ms, 1s, 5m",
}
_SIZE_SCHEMA = {
    "anyOf": [
        {"type": "integer", "minimum": 0},
        {"type": "string", "pattern": r"^\s*\d+(\.\d+)?\s*([KMGTkmgt][iI]?[bB]|[bB])?\s*$"},
    ],
    "description": "bytes, or a string such as 512KB, 256MB, 1GiB",
}

#: The longest duration any key takes (a year and a day): longer ones are typos, and infinite or
#: astronomically long sleeps overflow the event loop's clock arithmetic.
MAX_DURATION = 366 * 86400.0

#: A duration in seconds (float); YAML may say ``250ms``, ``1s``, ``5m``.
Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    WithJsonSchema(_DURATION_SCHEMA),
    Field(ge=0, le=MAX_DURATION, allow_inf_nan=False),
]
#: A positive duration, for intervals and timeouts.
PositiveDuration = Annotated[
    float,
    BeforeValidator(parse_duration),
    WithJsonSchema(_DURATION_SCHEMA),
    Field(gt=0, le=MAX_DURATION, allow_inf_nan=False),
]
#: A size in bytes (int); YAML may say ``512KB``, ``256MB``, ``1GiB``.
Size = Annotated[int, BeforeValidator(parse_size), WithJsonSchema(_SIZE_SCHEMA), Field(ge=0)]
