"""The Modbus section of the configuration: connection, device options and tags.

Cross-field rules live here rather than in the driver so that ``edge-agent validate`` reports them
with a file position before anything touches the network.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from pydantic import Field, model_validator

from drivers.base import DeviceBase, PositiveDuration, ProfileBase, StrictModel, TagBase
from drivers.modbus.codec import register_count, resolve_byte_order

Table = Literal["holding", "input", "coil", "discrete"]
TagType = Literal[
    "bool", "int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64", "string"
]
TagByteOrder = Literal[
    "AB",
    "BA",
    "ABCD",
    "CDAB",
    "BADC",
    "DCBA",
    "ABCDEFGH",
    "GHEFCDAB",
    "BADCFEHG",
    "HGFEDCBA",
]
DeviceByteOrder = Literal["ABCD", "CDAB", "BADC", "DCBA"]

BIT_TABLES = ("coil", "discrete")


class ModbusConnection(StrictModel):
    """Where a Modbus TCP device (or a gateway in front of serial devices) listens."""

    host: str = Field(description="IP address or host name of the device or gateway")
    port: int = Field(default=502, ge=1, le=65535, description="TCP port (502 is the standard)")
    unit_id: int = Field(
        default=1,
        ge=0,
        le=255,
        description="Modbus unit id (slave id); behind a TCP-to-RTU gateway, the serial address",
    )
    timeout: PositiveDuration = Field(
        default=1.0,
        description="how long to wait for each answer; a dead device costs this once per poll",
    )


class ModbusTag(TagBase):
    """One value read from a Modbus table."""

    table: Table = Field(
        description=(
            "holding registers (FC3), input registers (FC4), coils (FC1), discrete inputs (FC2)"
        )
    )
    address: int = Field(
        ge=0, le=65535, description="protocol address, 0-based (40001 in Modicon numbering is 0)"
    )
    type: TagType = Field(description="value type; coils and discrete inputs are bool")
    byte_order: TagByteOrder | None = Field(
        default=None,
        description="wire order of the value's bytes, A most significant; default: the device's",
    )
    scale: float = Field(default=1.0, description="value = raw * scale + offset")
    offset: float = Field(default=0.0, description="value = raw * scale + offset")
    bit: int | None = Field(
        default=None,
        ge=0,
        le=15,
        description="bit of a register for bool tags, 0 = least significant",
    )
    length: int | None = Field(
        default=None, ge=1, le=125, description="string length in registers (two characters each)"
    )

    @property
    def width(self) -> int:
        """Registers (or bits, for coil/discrete) the tag spans."""
        if self.table in BIT_TABLES:
            return 1
        return register_count(self.type, self.length)

    @model_validator(mode="after")
    def _check_combination(self) -> ModbusTag:
        if self.table in BIT_TABLES:
            if self.type != "bool":
                raise ValueError(f"a {self.table} tag must be type bool, not {self.type}")
            extra = [
                key for key in ("bit", "byte_order", "length") if getattr(self, key) is not None
            ]
            extra += [key for key in ("scale", "offset") if key in self.model_fields_set]
            if extra:
                raise ValueError(f"a {self.table} tag takes no {', '.join(extra)}")
            return self
        if self.type == "bool":
            if self.bit is None:
                raise ValueError(f"a bool tag on a {self.table} register needs bit (0..15)")
        elif self.bit is not None:
            raise ValueError(f"bit is only for bool tags, not {self.type}")
        if self.type in ("bool", "string"):
            scaled = [key for key in ("scale", "offset") if key in self.model_fields_set]
            if scaled:
                raise ValueError(f"{' and '.join(scaled)} not allowed on a {self.type} tag")
        if self.type == "string":
            if self.length is None:
                raise ValueError("a string tag needs length (in registers, two characters each)")
        elif self.length is not None:
            raise ValueError(f"length is only for string tags, not {self.type}")
        if self.byte_order is not None and self.type in ("bool", "string"):
            raise ValueError(f"byte_order not allowed on a {self.type} tag")
        if self.byte_order is not None:
            width = register_count(self.type, self.length)
            try:
                resolve_byte_order(self.byte_order, width, device_default=False)
            except ValueError:
                valid = {1: "AB or BA", 2: "ABCD, CDAB, BADC or DCBA"}.get(
                    width, "ABCDEFGH, GHEFCDAB, BADCFEHG, HGFEDCBA (or ABCD, CDAB, BADC, DCBA)"
                )
                raise ValueError(
                    f"byte_order {self.byte_order} does not fit {self.type}: use {valid}"
                ) from None
        last = self.address + self.width - 1
        if last > 65535:
            raise ValueError(
                f"{self.type} at address {self.address} spans {self.width} registers, "
                f"past the last address 65535"
            )
        return self


class ModbusDevice(DeviceBase):
    """A Modbus TCP device: connection, request planning limits and tags."""

    driver: Literal["modbus"]
    connection: ModbusConnection
    byte_order: DeviceByteOrder = Field(
        default="ABCD",
        description="default byte order for values wider than 16 bits (CDAB = word-swapped)",
    )
    max_gap: int = Field(
        default=16,
        ge=0,
        description="unused registers or bits a read may span to join two tags into one request",
    )
    max_registers: int = Field(
        default=125,
        ge=1,
        le=125,
        description="registers per read request (the protocol allows 125)",
    )
    max_bits: int = Field(
        default=2000, ge=1, le=2000, description="coils or discrete inputs per read request"
    )
    tags: Sequence[ModbusTag] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check_tags_fit(self) -> ModbusDevice:
        for tag in self.tags:
            if tag.table not in BIT_TABLES and tag.width > self.max_registers:
                raise ValueError(
                    f"tag {tag.name} spans {tag.width} registers, more than max_registers "
                    f"({self.max_registers}) allows in one read"
                )
        return self


class ModbusProfile(ProfileBase):
    """A Modbus device type: its tag list, shared by every device that names it."""

    driver: Literal["modbus"]
    tags: Sequence[ModbusTag] = Field(default_factory=list)
