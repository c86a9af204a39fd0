"""From a frame's payload to tag values: checksum, pattern, typed conversion.

Numbers are converted from the text the device printed, in decimal: ``+0012.34`` with scale 0.1
is 1.234, not 1.2340000000000002, because the text already is the exact decimal the display
showed (Modbus's ``make_decoder`` does the same from registers; its input differs, so the idea is
shared, not the code). Conversion failures are per tag: one odd field must not cost the others.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from drivers.base import Value
from drivers.serial.checksums import ChecksumCheck
from drivers.serial.config import SerialTag

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

Converter = Callable[[str], Value]


@dataclass(frozen=True, slots=True)
class Failed:
    """A tag the frame matched but could not give a value ("bad value", "no value")."""

    reason: str


def _number(text: str) -> Decimal:
    try:
        number = Decimal(text.strip())
    except InvalidOperation:
        raise ValueError(f"not a number: {text!r}") from None
    return number


def make_converter(tag: SerialTag) -> Converter:
    """A function from the group's text to the tag's value; raises ``ValueError`` on bad text."""
    if tag.type == "string":
        return lambda text: text
    if tag.type == "bool":
        truths = frozenset(tag.true_values)
        return lambda text: text.strip() in truths
    scaled = "scale" in tag.model_fields_set or "offset" in tag.model_fields_set
    scale = Decimal(repr(tag.scale))
    offset = Decimal(repr(tag.offset))

    if tag.type == "int64":

        def to_int(text: str) -> Value:
            number = int(text.strip())
            if not INT64_MIN <= number <= INT64_MAX:
                raise ValueError(f"{number} does not fit int64")
            return float(number * scale + offset) if scaled else number

        return to_int

    def to_float(text: str) -> Value:
        number = _number(text)
        return float(number * scale + offset) if scaled else float(number)

    return to_float


def frame_text(payload: bytes, checksum: ChecksumCheck | None) -> str | None:
    """The frame body as text (one character per byte, so any byte decodes), or None when the
    checksum is wrong."""
    if checksum is not None:
        body = checksum.split(payload)
        if body is None:
            return None
        payload = body
    return payload.decode("latin-1")


class FrameParser:
    """One pattern and the tags it feeds (the tags whose group the pattern defines)."""

    def __init__(self, pattern: str, tags: Sequence[SerialTag]) -> None:
        self.pattern = re.compile(pattern)
        groups = self.pattern.groupindex
        self.tags: tuple[tuple[str, str, Converter], ...] = tuple(
            (tag.name, tag.source, make_converter(tag)) for tag in tags if tag.source in groups
        )

    @property
    def tag_names(self) -> list[str]:
        return [name for name, _, _ in self.tags]

    def parse(self, text: str) -> dict[str, Value | Failed] | None:
        """Each of this pattern's tags with its value or why not; None when the text does not
        match. The pattern is searched, so anchor it (``^...$``) to match whole frames only."""
        m = self.pattern.search(text)
        if m is None:
            return None
        out: dict[str, Value | Failed] = {}
        for name, group, convert in self.tags:
            field = m.group(group)
            if field is None:
                out[name] = Failed("no value")
                continue
            try:
                out[name] = convert(field)
            except ValueError:
                out[name] = Failed("bad value")
        return out
