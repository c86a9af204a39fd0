"""The Modbus section of the configuration: connection, device options and tags.

Cross-field rules live here rather than in the driver so that ``edge-agent validate`` reports them
with a file position before anything touches the network.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from drivers.base import (
    DeviceBase,
    Duration,
    PositiveDuration,
    ProfileBase,
    StrictModel,
    ValueType,
    WritableTag,
)
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


Transport = Literal["tcp", "rtu", "rtu-over-tcp", "tcp-gateway"]
#: Transports whose devices share one line (one request at a time) with every device naming the
#: same port or endpoint.
SHARED_TRANSPORTS = ("rtu", "rtu-over-tcp", "tcp-gateway")


def _host_optional_in_schema(schema: dict[str, Any]) -> None:
    """An rtu connection has no host: editors must not ask for one."""
    required = schema.get("required")
    if isinstance(required, list) and "host" in required:
        required.remove("host")


class ModbusConnection(StrictModel):
    """How the device is reached: Modbus TCP, an RS-485 line (RTU), or a gateway.

    ``tcp``: one device (or one unit id) with a TCP connection of its own. ``tcp-gateway``: one
    unit id behind a Modbus TCP gateway; every device naming the same ``host:port`` shares one
    connection, one request at a time (many gateways accept one or two connections only, and the
    RS-485 behind them carries one request at a time anyway). ``rtu-over-tcp``: RTU frames (with
    CRC, no MBAP header) through a transparent serial-to-Ethernet converter; shared the same way.
    ``rtu``: a serial port; every device naming the same ``port`` shares it.
    """

    transport: Transport = Field(
        default="tcp",
        description="tcp (default), rtu (serial port), rtu-over-tcp (transparent converter), "
        "tcp-gateway (unit ids behind one Modbus TCP gateway, sharing one connection)",
    )
    model_config = ConfigDict(
        extra="forbid", frozen=True, json_schema_extra=_host_optional_in_schema
    )

    host: str = Field(
        description="IP address or host name of the device or gateway (not for rtu)",
    )
    port: int | str = Field(
        default=502,
        description="TCP port (502 is the standard), or for rtu the serial port "
        "(/dev/ttyUSB0, /dev/serial/by-id/...)",
    )
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
    baudrate: int = Field(default=9600, gt=0, description="rtu: bits per second")
    parity: Literal["N", "E", "O"] = Field(
        default="E", description="rtu: N, E or O (the Modbus standard says E)"
    )
    stopbits: Literal[1, 2] = Field(default=1, description="rtu: stop bits")
    bytesize: Literal[7, 8] = Field(default=8, description="rtu: data bits (RTU needs 8)")

    @model_validator(mode="before")
    @classmethod
    def _no_host_on_serial(cls, data: Any) -> Any:
        # host is required (pydantic says so at the key) except on a serial port, which has none.
        if isinstance(data, dict) and data.get("transport") == "rtu" and "host" not in data:
            return {**data, "host": ""}
        return data

    @field_validator("port", mode="before")
    @classmethod
    def _check_port(cls, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            if value < 1:
                raise PydanticCustomError(
                    "greater_than_equal", "Input should be greater than or equal to {ge}", {"ge": 1}
                )
            if value > 65535:
                raise PydanticCustomError(
                    "less_than_equal", "Input should be less than or equal to {le}", {"le": 65535}
                )
        return value

    @model_validator(mode="after")
    def _check_transport(self) -> ModbusConnection:
        serial_keys = ("baudrate", "parity", "stopbits", "bytesize")
        if self.transport == "rtu":
            if not isinstance(self.port, str) or not self.port:
                raise ValueError("an rtu connection needs port: the serial device path")
            if self.host:
                raise ValueError("an rtu connection takes no host (it is a serial port)")
            return self
        if isinstance(self.port, str):
            raise ValueError(f"a {self.transport} connection needs port: a TCP port 1..65535")
        extra = [k for k in serial_keys if k in self.model_fields_set]
        if extra:
            raise ValueError(f"{', '.join(extra)}: only for transport rtu")
        return self

    @property
    def shared(self) -> bool:
        return self.transport in SHARED_TRANSPORTS

    @property
    def endpoint(self) -> str:
        """What identifies the line: the serial path, or ``host:port``."""
        if self.transport == "rtu":
            return str(self.port)
        return f"{self.host}:{self.port}"

    @property
    def char_time(self) -> float:
        """Seconds one character takes on an rtu line (start + data + parity + stop bits)."""
        bits = 1 + self.bytesize + (0 if self.parity == "N" else 1) + self.stopbits
        return bits / self.baudrate

    @property
    def frame_silence(self) -> float:
        """The inter-frame silence: 3.5 character times, fixed at 1.75 ms above 19200 baud."""
        if self.transport != "rtu":
            return 0.0
        if self.baudrate > 19200:
            return 0.00175
        return 3.5 * self.char_time


class ModbusTag(WritableTag):
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
    count: int | None = Field(
        default=None,
        ge=1,
        le=65536,
        description="array: this many consecutive values of the type (value is a list; scale "
        "and offset apply to each); arrays longer than one read are split over several",
    )
    writable: bool = Field(
        default=False, description="accept writes from the cloud (holding registers and coils)"
    )

    def value_type(self) -> ValueType:
        """A scaled or offset number is a float64 whatever its register type."""
        scaled = self.scale != 1 or self.offset != 0
        return "float64" if scaled and self.type != "bool" else self.type

    @property
    def element_width(self) -> int:
        """Registers one value (one array element) spans."""
        if self.table in BIT_TABLES:
            return 1
        return register_count(self.type, self.length)

    @property
    def width(self) -> int:
        """Registers (or bits, for coil/discrete) the tag spans, every array element included."""
        return self.element_width * (self.count or 1)

    @model_validator(mode="after")
    def _check_combination(self) -> ModbusTag:
        self._check_write_keys()
        if self.count is not None and self.type in ("bool", "string"):
            raise ValueError(f"count (arrays) is for numeric register tags, not {self.type}")
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

    def _check_write_keys(self) -> None:
        if self.writable and self.table not in ("holding", "coil"):
            raise ValueError(
                f"{self.table} tags cannot be writable: Modbus writes holding registers and coils"
            )
        bounded = [key for key in ("min", "max") if getattr(self, key) is not None]
        if bounded and not self.writable:
            raise ValueError(f"{'/'.join(bounded)} only bound writes: this tag is not writable")
        if bounded and self.type in ("bool", "string"):
            raise ValueError(f"{' and '.join(bounded)} not allowed on a {self.type} tag")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} is above max {self.max}")


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
    # -- quirks: see drivers/modbus/README.md for the symptoms that call for each --------------
    no_coalescing: bool = Field(
        default=False, description="one request per tag (devices that refuse reads across tags)"
    )
    address_offset: int = Field(
        default=0,
        ge=-65535,
        le=65535,
        description="added to every tag address on the wire, so tags keep the addresses their "
        "document prints: -1 for a register map numbered from 1, -40001 for one numbered "
        "40001.. (Modicon)",
    )
    read_function: Literal[3, 4] | None = Field(
        default=None,
        description="read every register tag with this function (4: meters that serve their "
        "holding map only as input registers)",
    )
    write_function: Literal[16] | None = Field(
        default=None,
        description="16: write single registers with function 16 too, coils with 15 (devices "
        "that do not implement 6 and 5)",
    )
    pause_between_requests: Duration = Field(
        default=0.0,
        description="silence before each request (slow devices that miss requests sent right "
        "after an answer)",
    )
    close_connection_after_poll: bool = Field(
        default=False,
        description="tcp: reconnect for every poll (devices that drop idle connections)",
    )
    reprobe_interval: PositiveDuration = Field(
        default=600.0,
        description="how often addresses found invalid (exception 2) are probed again with the "
        "full plan, and the longest wait between probes of one such tag",
    )
    tags: Sequence[ModbusTag] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check_tags_fit(self) -> ModbusDevice:
        for tag in self.tags:
            if tag.table not in BIT_TABLES and tag.element_width > self.max_registers:
                raise ValueError(
                    f"tag {tag.name} spans {tag.element_width} registers, more than "
                    f"max_registers ({self.max_registers}) allows in one read"
                )
            first = tag.address + self.address_offset
            if first < 0 or first + tag.width - 1 > 65535:
                raise ValueError(
                    f"tag {tag.name} at address {tag.address} with address_offset "
                    f"{self.address_offset} falls outside 0..65535 on the wire"
                )
        if self.close_connection_after_poll and self.connection.shared:
            raise ValueError(
                "close_connection_after_poll is for transport tcp; the "
                f"{self.connection.transport} line is shared by its devices"
            )
        return self


class ModbusProfile(ProfileBase):
    """A Modbus device type: its tag list, shared by every device that names it."""

    driver: Literal["modbus"]
    tags: Sequence[ModbusTag] = Field(default_factory=list)
