"""The MC section of the configuration: connection, planning limits and tags.

Addresses, types and ranges are checked here, so ``edge-agent validate`` reports a bad address,
a bool on a word device or a value running past the last device number at FILE:LINE:COL before
anything touches the network.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Literal

from pydantic import Field, field_validator, model_validator

from drivers.base import (
    DeviceBase,
    PositiveDuration,
    ProfileBase,
    StrictModel,
    WritableTag,
    key_error,
)
from drivers.base import ValueType as BaseValueType
from drivers.mc.codec import McType, word_count
from drivers.mc.devices import Address, format_address, parse_address
from drivers.mc.frame import MAX_BITS, MAX_RANDOM_POINTS, MAX_WORDS


class McConnection(StrictModel):
    """How the PLC's Ethernet port (built in, or a QJ71E71/RJ71EN71 module) is reached: the
    port and the binary or ASCII code are what its open setting for MC protocol says."""

    host: str = Field(description="IP address or host name of the PLC or its Ethernet module")
    port: int = Field(
        ge=1,
        le=65535,
        description="the port of the open setting for MC protocol (no standard: GX Works's "
        "open setting says it, often 5007, 5000 or 1025)",
    )
    frame: Literal["3E"] = Field(default="3E", description="the MC frame: 3E (QnA compatible)")
    encoding: Literal["binary", "ascii"] = Field(
        default="binary",
        description="binary or ascii: the communication data code of the open setting",
    )
    transport: Literal["tcp", "udp"] = Field(
        default="tcp", description="tcp (default) or udp, as the open setting's protocol"
    )
    timeout: PositiveDuration = Field(
        default=1.0,
        description="how long to wait for each answer; a dead PLC costs this once per poll",
    )

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def timer(self) -> int:
        """The monitoring timer sent in each request (250 ms units): the module gives up on the
        CPU one unit before we give up on the module (1 s: 750 ms), so a slow CPU answers with
        an end code rather than silence. 250 ms at least (0 would mean wait for ever)."""
        return max(1, min(0xFFFF, math.ceil(self.timeout / 0.25) - 1))


class McTag(WritableTag):
    """One value of a MELSEC device: a word device (D, W, R, ZR, SD) holds numbers and strings,
    a bit device (M, X, Y, B, L, SM) holds bools."""

    address: str = Field(
        description="device and number as GX Works writes them: D100, M10, X1F (X, Y, B, W "
        "in hexadecimal), ZR2000, SD210"
    )
    type: McType = Field(
        description="word devices: int16, uint16, int32, uint32, float32, float64, string; "
        "bit devices: bool. 32- and 64-bit values low word first"
    )
    length: int | None = Field(
        default=None,
        ge=1,
        le=MAX_WORDS,
        description="string length in words (two characters each, the first in the low byte)",
    )

    @field_validator("address")
    @classmethod
    def _check_address(cls, value: str) -> str:
        return str(parse_address(value))

    @functools.cached_property
    def where(self) -> Address:
        """The parsed address (parsed once: planning asks for it per tag many times)."""
        return parse_address(self.address)

    @property
    def width(self) -> int:
        """Words (or bits, on a bit device) the value spans."""
        return 1 if self.type == "bool" else word_count(self.type, self.length)

    def value_type(self) -> BaseValueType:
        return self.type

    @model_validator(mode="after")
    def _check_combination(self) -> McTag:
        where = self.where
        kind = where.kind
        if kind.bits and self.type != "bool":
            raise key_error(
                "type", f"{self.address} is a bit device: its tags are type bool, not {self.type}"
            )
        if not kind.bits and self.type == "bool":
            raise key_error(
                "type",
                f"{self.address} is a word device: type bool is for bit devices "
                "(M, X, Y, B, L, SM)",
            )
        if self.type == "string":
            if self.length is None:
                raise ValueError("a string tag needs length (in words, two characters each)")
        elif self.length is not None:
            raise key_error("length", f"length is only for string tags, not {self.type}")
        last = where.number + self.width - 1
        if last > kind.last:
            raise key_error(
                "address",
                f"{self.type} at {self.address} spans {self.width} words, past "
                f"{format_address(kind.name, kind.last)}",
            )
        bounded = [key for key in ("min", "max") if getattr(self, key) is not None]
        if bounded and not self.writable:
            raise key_error(
                bounded[0],
                f"{'/'.join(bounded)} only bound writes: this tag is not writable",
            )
        if bounded and self.type in ("bool", "string"):
            raise key_error(bounded[0], f"{' and '.join(bounded)} not allowed on a {self.type} tag")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} is above max {self.max}")
        return self


class McDevice(DeviceBase):
    """A Mitsubishi PLC (Q, L, iQ-R, iQ-F/FX5) over MC protocol 3E."""

    driver: Literal["mc"]
    connection: McConnection
    max_gap: int = Field(
        default=16,
        ge=0,
        description="unused words or bits a batch read may span to join two tags into one",
    )
    max_words: int = Field(
        default=MAX_WORDS, ge=1, le=MAX_WORDS, description="words per batch read (960 at most)"
    )
    max_bits: int = Field(
        default=MAX_BITS, ge=1, le=MAX_BITS, description="bits per batch read (3584 at most)"
    )
    random_reads: bool = Field(
        default=True,
        description="read scattered word tags with random reads (command 0403) where that "
        "takes fewer requests; false for PLCs that refuse it",
    )
    max_random_points: int = Field(
        default=MAX_RANDOM_POINTS,
        ge=1,
        le=MAX_RANDOM_POINTS,
        description="word plus double-word points per random read (192 at most; FX5: 192)",
    )
    tags: Sequence[McTag] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check_tags_fit(self) -> McDevice:
        for tag in self.tags:
            cap = self.max_bits if tag.type == "bool" else self.max_words
            if tag.width > cap:
                raise ValueError(
                    f"tag {tag.name} spans {tag.width} words, more than max_words "
                    f"({self.max_words}) allows in one read"
                )
        return self


class McProfile(ProfileBase):
    """An MC device type: its tag list, shared by every device that names it."""

    driver: Literal["mc"]
    tags: Sequence[McTag] = Field(default_factory=list)
