"""The serial-instrument section of the configuration: port, framing, checksum, patterns, tags.

Patterns are compiled and the tags' groups looked up here, not in the driver, so a typo in a regex
is a ``validate`` error with a file position instead of a device that never yields a value.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Annotated, Literal

from pydantic import AfterValidator, BeforeValidator, Field, WithJsonSchema, model_validator

from drivers.base import (
    DeviceBase,
    PositiveDuration,
    ProfileBase,
    StrictModel,
    TagBase,
    ValueType,
)
from drivers.serial.checksums import ChecksumFormat, ChecksumKind
from drivers.serial.escapes import decode_escapes

TagType = Literal["float64", "int64", "string", "bool"]


def _escaped(value: object) -> object:
    return decode_escapes(value) if isinstance(value, str) else value


def _compiles(pattern: str) -> str:
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"invalid regular expression: {exc}") from None
    return pattern


#: Bytes written as text with backslash escapes (``"\r\n"``, ``'\x02'``), decoded even when YAML
#: left the backslashes alone (single-quoted and plain strings).
EscapedBytes = Annotated[
    bytes,
    BeforeValidator(_escaped),
    WithJsonSchema(
        {"type": "string", "minLength": 1, "description": "bytes; escapes \\r \\n \\xHH work"}
    ),
    Field(min_length=1),
]
#: A Python regular expression, compiled at validation.
Pattern = Annotated[
    str,
    AfterValidator(_compiles),
    WithJsonSchema({"type": "string", "description": "Python regular expression"}),
]


def _stop_bits(value: float) -> float:
    if value not in (1, 1.5, 2):
        raise ValueError("stopbits is 1, 1.5 or 2")
    return value


StopBits = Annotated[float, AfterValidator(_stop_bits), WithJsonSchema({"enum": [1, 1.5, 2]})]


def pattern_groups(pattern: str) -> set[str]:
    """The named groups a (valid) pattern defines."""
    return set(re.compile(pattern).groupindex)


class SerialConnection(StrictModel):
    """The port and line settings, as the instrument's manual lists them."""

    port: str = Field(min_length=1, description="device path, e.g. /dev/ttyUSB0")
    baudrate: int = Field(default=9600, gt=0, description="bits per second")
    parity: Literal["N", "E", "O", "M", "S"] = Field(default="N", description="N, E, O, M, S")
    bytesize: Literal[5, 6, 7, 8] = 8
    stopbits: StopBits = 1
    timeout: PositiveDuration = Field(
        default=1.0,
        description=(
            "poll mode: how long to wait for each answer; stream and length framing: silence "
            "after which an unfinished frame is dropped"
        ),
    )


class Framing(StrictModel):
    """Where a frame ends (and optionally starts): a terminator, start/end markers, or a length."""

    terminator: EscapedBytes | None = Field(default=None, description='end of line, e.g. "\\r\\n"')
    start: EscapedBytes | None = Field(default=None, description='start marker, e.g. "\\x02"')
    end: EscapedBytes | None = Field(default=None, description='end marker after start ("\\x03")')
    length: int | None = Field(
        default=None, ge=1, le=65536, description="fixed frame size in bytes, start marker included"
    )

    @property
    def end_marker(self) -> bytes | None:
        return self.end or self.terminator

    @model_validator(mode="after")
    def _one_way_to_end(self) -> Framing:
        given = [key for key in ("terminator", "end", "length") if getattr(self, key) is not None]
        if len(given) != 1:
            raise ValueError(
                "framing needs exactly one of terminator, end (with start) or length"
                + (f", not {' and '.join(given)}" if given else "")
            )
        if self.end is not None and self.start is None:
            raise ValueError("end needs start (a line ending alone is terminator)")
        if self.length is not None and self.start is not None and self.length <= len(self.start):
            raise ValueError("length counts the start marker and must be longer than it")
        return self


class Checksum(StrictModel):
    """A checksum written after the frame body, just before the end marker (or as the last bytes
    of a fixed-length frame); it covers the body, markers excluded."""

    kind: ChecksumKind = Field(description="xor, sum8, lrc (two's complement of sum8) or crc16")
    format: ChecksumFormat = Field(
        default="hex",
        description="hex: 2 hex digits (crc16: 4), most significant first; binary: raw bytes",
    )


class SerialRequest(StrictModel):
    """Poll mode: what to send, and the pattern the answer (the next frame) must match."""

    send: EscapedBytes = Field(description='bytes to send, e.g. "PV?\\r"')
    match: Pattern = Field(description="regex for the answer; named groups feed the tags")
    timeout: PositiveDuration | None = Field(
        default=None, description="wait for this answer (default: connection.timeout)"
    )


class SerialTag(TagBase):
    """One value taken from a named group of a frame's pattern."""

    group: str | None = Field(
        default=None, description="named group of the match pattern (default: the tag's name)"
    )
    type: TagType = Field(description="float64, int64, string or bool")
    true_value: str | list[str] | None = Field(
        default=None, description="bool: the text(s) that mean true; anything else is false"
    )
    scale: float = Field(default=1.0, description="value = number * scale + offset")
    offset: float = Field(default=0.0, description="value = number * scale + offset")

    @property
    def source(self) -> str:
        """The regex group this tag reads."""
        return self.group or self.name

    @property
    def true_values(self) -> tuple[str, ...]:
        if self.true_value is None:
            return ()
        if isinstance(self.true_value, str):
            return (self.true_value,)
        return tuple(self.true_value)

    @model_validator(mode="after")
    def _check_combination(self) -> SerialTag:
        if not self.source.isidentifier():
            raise ValueError(f"group {self.source!r} is not a regex group name")
        if self.type == "bool":
            if not self.true_values:
                raise ValueError("a bool tag needs true_value (the text, or a list of texts)")
        elif self.true_value is not None:
            raise ValueError(f"true_value is only for bool tags, not {self.type}")
        if self.type in ("bool", "string"):
            scaled = [key for key in ("scale", "offset") if key in self.model_fields_set]
            if scaled:
                raise ValueError(f"{' and '.join(scaled)} not allowed on a {self.type} tag")
        return self

    def value_type(self) -> ValueType:
        """A scaled or offset number is a float64."""
        scaled = self.scale != 1 or self.offset != 0
        return "float64" if scaled and self.type != "bool" else self.type


class SerialDevice(DeviceBase):
    """An instrument streaming lines on its own port, or answering requests (poll mode), alone
    or with other addressed instruments on one RS-485 port (the agent then polls them in turn).
    """

    driver: Literal["serial"]
    connection: SerialConnection
    framing: Framing = Field(default_factory=lambda: Framing(terminator=b"\r\n"))
    checksum: Checksum | None = None
    max_frame: int = Field(
        default=256, ge=1, le=65536, description="longest payload in bytes; longer is an error"
    )
    mode: Literal["stream", "poll"] = Field(
        default="stream", description="stream: the device talks by itself; poll: ask, then parse"
    )
    match: Pattern | None = Field(default=None, description="stream mode: regex for every frame")
    every_frame: bool = Field(
        default=False, description="stream mode: report each frame's values, not one per interval"
    )
    requests: Sequence[SerialRequest] = Field(default_factory=list)
    tags: Sequence[SerialTag] = Field(default_factory=list)

    def scan_rates_refused(self) -> str | None:
        """Stream mode: the instrument sends when it likes and every frame carries all its
        tags; there is no request to send more or less often per tag."""
        if self.mode == "stream":
            return (
                "stream mode: the instrument sends every tag in each frame by itself, so tags "
                "have no read rate of their own (every and scan_group are for mode: poll)"
            )
        return None

    @property
    def patterns(self) -> list[str]:
        if self.mode == "stream":
            return [self.match] if self.match is not None else []
        return [r.match for r in self.requests]

    @model_validator(mode="after")
    def _check_mode(self) -> SerialDevice:
        if self.mode == "stream":
            if self.match is None:
                raise ValueError("stream mode needs match (the pattern every frame is read with)")
            if self.requests:
                raise ValueError("requests are for mode: poll; stream mode reads frames as sent")
        else:
            if not self.requests:
                raise ValueError("poll mode needs requests (what to send and how to match it)")
            if self.match is not None:
                raise ValueError("in poll mode each request has its own match, not the device")
            if self.every_frame:
                raise ValueError("every_frame is for stream mode")
        length = self.framing.length
        if length is not None and length - len(self.framing.start or b"") > self.max_frame:
            raise ValueError(f"framing length {length} is more than max_frame ({self.max_frame})")
        groups: set[str] = set()
        for pattern in self.patterns:
            groups |= pattern_groups(pattern)
        for tag in self.tags:
            if tag.source not in groups:
                shown = ", ".join(sorted(groups)) or "none"
                raise ValueError(
                    f"tag {tag.name}: no group (?P<{tag.source}>...) in the match pattern"
                    f"{'s' if len(self.patterns) > 1 else ''} (groups: {shown})"
                )
        return self


class SerialProfile(ProfileBase):
    """A serial instrument type: its tag list (patterns and framing stay with the device)."""

    driver: Literal["serial"]
    tags: Sequence[SerialTag] = Field(default_factory=list)
