"""The checks every driver makes on a command's value before it writes, with the same replies.

A command's value arrives as JSON; whatever the protocol, a boolean tag takes ``true`` or
``false``, a text tag a string, a number tag a finite number within the tag's ``min`` and
``max``. The drivers word their refusals alike, so the person who sent the command reads the same
reply from a Modbus meter as from a Siemens or Mitsubishi PLC. ``subject`` names what is written
(``tag 'speed'``, ``tag 'speeds'[2]``).
"""

from __future__ import annotations

import math

from drivers.base.data import WriteError


def json_type(value: object, *, literal_bools: bool = False) -> str:
    """How the sender wrote the value: ``a string``, ``a boolean`` (or ``true``/``false`` with
    ``literal_bools``), ``a list``..."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        if literal_bools:
            return "true" if value else "false"
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "an object"


def take_bool(value: object, subject: str) -> bool:
    """``value`` if it is a JSON boolean; ``WriteError`` otherwise."""
    if not isinstance(value, bool):
        raise WriteError(f"{subject} takes true or false, not {json_type(value)}")
    return value


def take_text(value: object, subject: str, *, literal_bools: bool = False) -> str:
    """``value`` if it is a JSON string; ``WriteError`` otherwise (``literal_bools``: as
    :func:`json_type` words a boolean)."""
    if not isinstance(value, str):
        kind = json_type(value, literal_bools=literal_bools)
        raise WriteError(f"{subject} takes a string, not {kind}")
    return value


def take_ascii(value: object, subject: str, most: int) -> str:
    """``value`` if it is ASCII text of at most ``most`` characters (a register or word string
    holds two a word); ``WriteError`` otherwise."""
    text = take_text(value, subject)
    if not text.isascii():
        raise WriteError(f"{subject} takes ASCII text only")
    if len(text) > most:
        raise WriteError(f"{subject} takes at most {most} characters")
    return text


def take_number(
    value: object,
    subject: str,
    low: float | None = None,
    high: float | None = None,
    *,
    literal_bools: bool = False,
) -> int | float:
    """``value`` if it is a finite JSON number (a boolean is not one) within ``low`` and
    ``high`` (the tag's ``min`` and ``max``, either may be absent); ``WriteError`` otherwise
    (``literal_bools``: as :func:`json_type` words a boolean)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        kind = json_type(value, literal_bools=literal_bools)
        raise WriteError(f"{subject} takes a number, not {kind}")
    if not math.isfinite(value):
        raise WriteError(f"{subject} takes a finite number")
    if low is not None and value < low:
        raise WriteError(f"{value} is below min {low} of {subject}")
    if high is not None and value > high:
        raise WriteError(f"{value} is above max {high} of {subject}")
    return value
