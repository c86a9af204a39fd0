"""The S7 section of the configuration: connection, device options and tags.

Address syntax, address/type agreement (a REAL at a bit address, an INT at a DBD) and ranges are
checked here, so ``edge-agent validate`` reports them at FILE:LINE:COL before anything talks to
a PLC.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from drivers.base import (
    DeviceBase,
    PositiveDuration,
    ProfileBase,
    StrictModel,
    ValueType,
    WritableTag,
    key_error,
)
from drivers.s7.address import MAX_BYTE, WIDTH_BYTES, S7Address, parse_address
from drivers.s7.codec import (
    DATE_TYPES,
    FIXED_SIZE,
    MAX_LENGTH,
    S7_TYPES,
    TEXT_TYPES,
    VALUE_TYPES,
    S7Type,
    element_size,
    span,
)

ConnectionType = Literal["PG", "OP", "S7 basic"]
#: The connection type's byte in the remote TSAP (snap7's CONNTYPE_PG / OP / S7BASIC).
CONNECTION_TYPE_CODES = {"PG": 1, "OP": 2, "S7 basic": 3}
_TSAP = re.compile(r"^(?:0x([0-9A-Fa-f]{1,4})|([0-9A-Fa-f]{2})\.([0-9A-Fa-f]{2}))$")


def parse_tsap(value: Any) -> int:
    """A TSAP as Siemens tools print it (``03.01``), as hex (``0x0301``) or as a number."""
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and (m := _TSAP.match(value.strip())):
        number = int(m.group(1), 16) if m.group(1) else int(m.group(2) + m.group(3), 16)
    else:
        raise ValueError("a TSAP is written 03.01 (as TIA shows it), 0x0301, or a number")
    if not 0 <= number <= 0xFFFF:
        raise ValueError("a TSAP is two bytes: 00.00 .. FF.FF")
    return number


class S7Connection(StrictModel):
    """How the PLC is reached: ISO-on-TCP to its CPU (rack/slot) or to explicit TSAPs.

    ``connection_type`` OP (the default) takes one of the CPU's HMI connection resources, so the
    PG ones stay free for the engineering station; ``remote_tsap`` replaces rack, slot and
    connection type (an S7-200 SMART, a LOGO!, a CP configured with its own TSAP)."""

    host: str = Field(min_length=1, description="IP address or host name of the PLC or its CP")
    port: int = Field(default=102, ge=1, le=65535, description="ISO-on-TCP port (102)")
    rack: int = Field(default=0, ge=0, le=7, description="rack of the CPU (0)")
    slot: int = Field(
        default=1,
        ge=0,
        le=31,
        description="slot of the CPU: 1 for S7-1200/1500 (0 works too), 2 for S7-300",
    )
    connection_type: ConnectionType = Field(
        default="OP",
        description="PG, OP (default: leaves the PG connections to the engineering station) "
        "or S7 basic",
    )
    timeout: PositiveDuration = Field(
        default=2.0, description="how long to wait for the PLC to connect and for each answer"
    )
    local_tsap: int | None = Field(
        default=None, description="local TSAP (01.00 unless the PLC is configured otherwise)"
    )
    remote_tsap: int | None = Field(
        default=None,
        description="remote TSAP, instead of rack/slot/connection_type (03.01 for a CPU slot 1 "
        "with an S7 basic connection; a LOGO! or S7-200 SMART: as configured there)",
    )

    @field_validator("connection_type", mode="before")
    @classmethod
    def _any_case(cls, value: Any) -> Any:
        if isinstance(value, str):
            for name in CONNECTION_TYPE_CODES:
                if value.strip().lower() == name.lower():
                    return name
        return value

    @field_validator("local_tsap", "remote_tsap", mode="before")
    @classmethod
    def _tsap(cls, value: Any) -> Any:
        return None if value is None else parse_tsap(value)

    @model_validator(mode="after")
    def _tsap_or_rack_slot(self) -> S7Connection:
        if self.remote_tsap is not None:
            given = [k for k in ("rack", "slot", "connection_type") if k in self.model_fields_set]
            if given:
                raise key_error(
                    "remote_tsap",
                    f"remote_tsap replaces {', '.join(given)}: give one or the other",
                )
        return self

    @property
    def remote(self) -> int:
        """The remote TSAP sent in the connection request: connection type, rack, slot."""
        if self.remote_tsap is not None:
            return self.remote_tsap
        code = CONNECTION_TYPE_CODES[self.connection_type]
        return (code << 8) | (self.rack << 5) | self.slot


#: Types that may be written from the cloud (dates are the PLC's own business).
WRITABLE_TYPES = frozenset(S7_TYPES) - DATE_TYPES


class S7Tag(WritableTag):
    """One value at an S7 address."""

    address: str = Field(
        description="S7 address: DB10.DBX8.0, DB10.DBB12, DB10.DBW2, DB10.DBD4, M0.1, MB10, "
        "MW20, MD24, I0.1, IB0, IW64, Q0.0, QB4, QW8"
    )
    type: S7Type = Field(
        description="BOOL, BYTE, WORD, DWORD, INT, DINT, LINT, UINT, UDINT, ULINT, REAL, "
        "LREAL, STRING, WSTRING, DATE_AND_TIME or DTL (upper or lower case)"
    )
    length: int | None = Field(
        default=None,
        ge=1,
        le=16382,
        description="STRING[n] / WSTRING[n]: n as declared in the PLC (254 if not given); the "
        "header is read with it",
    )
    count: int | None = Field(
        default=None,
        ge=1,
        le=65536,
        description="array: this many consecutive values (BOOL: consecutive bits; not for "
        "STRING, WSTRING or dates); the value is a list",
    )
    writable: bool = Field(
        default=False,
        description="accept writes from the cloud (DB, M and Q addresses; not dates, not arrays)",
    )

    @field_validator("type", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator("address")
    @classmethod
    def _parse(cls, value: str) -> str:
        parse_address(value)  # ValueError says what is wrong, at the address key
        return value.strip().upper()

    @property
    def location(self) -> S7Address:
        return parse_address(self.address)

    @property
    def bytes(self) -> int:
        """Bytes the tag reads from its start byte."""
        return span(self.type, self.length, self.count, self.location.bit)

    def value_type(self) -> ValueType:
        return VALUE_TYPES[self.type]

    @model_validator(mode="after")
    def _check_combination(self) -> S7Tag:
        where = self.location
        self._check_length()
        if self.count is not None and self.type in TEXT_TYPES | DATE_TYPES:
            raise key_error("count", f"count (arrays) is not for {self.type}")
        self._check_width(where)
        if where.byte + self.bytes - 1 > MAX_BYTE:
            raise key_error("address", f"{self.type} at {where} runs past byte {MAX_BYTE}")
        self._check_write_keys(where)
        return self

    def _check_length(self) -> None:
        if self.type in TEXT_TYPES:
            top = MAX_LENGTH[self.type]
            if self.length is not None and self.length > top:
                raise key_error("length", f"{self.type} holds at most {top} characters")
        elif self.length is not None:
            raise key_error("length", f"length is for STRING and WSTRING, not {self.type}")

    def _check_width(self, where: S7Address) -> None:
        """The address letter must agree with the type, as TIA would show the variable."""
        if self.type == "BOOL":
            if where.width != "X":
                raise key_error(
                    "address", f"BOOL needs a bit address such as {where.bit_form(0)}, not {where}"
                )
            return
        if where.width == "X":
            raise key_error(
                "address",
                f"{self.type} at the bit address {where}: a bit holds BOOL only; "
                f"write the byte address ({where.with_width(_letter(self.type))})",
            )
        size = FIXED_SIZE.get(self.type) if self.type not in TEXT_TYPES else None
        letter_bytes = WIDTH_BYTES[where.width]
        if where.width == "B":
            return  # a byte address is where any wider value starts
        if size != letter_bytes:
            what = {"W": "a word (2 bytes)", "D": "a double word (4 bytes)"}[where.width]
            fit = ", ".join(t for t, n in FIXED_SIZE.items() if n == letter_bytes)
            spans = f"{element_size(self.type, self.length)} bytes"
            raise key_error(
                "address",
                f"{self.type} ({spans}) at {where}: {where.width} is {what}, for {fit}; "
                f"write {where.with_width(_letter(self.type))}",
            )

    def _check_write_keys(self, where: S7Address) -> None:
        if self.writable:
            if where.area == "I":
                raise key_error(
                    "writable", "inputs (I) cannot be writable: the PLC overwrites them each scan"
                )
            if self.type not in WRITABLE_TYPES:
                raise key_error("writable", f"{self.type} tags cannot be writable")
            if self.count is not None:
                raise key_error("writable", "arrays (count) cannot be writable")
        bounded = [key for key in ("min", "max") if getattr(self, key) is not None]
        if bounded and not self.writable:
            raise ValueError(f"{'/'.join(bounded)} only bound writes: this tag is not writable")
        if bounded and self.type in ("BOOL", *TEXT_TYPES):
            raise ValueError(f"{' and '.join(bounded)} not allowed on a {self.type} tag")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} is above max {self.max}")


def _letter(type_: str) -> Literal["B", "W", "D"]:
    """The address letter TIA shows for a type: W for 2 bytes, D for 4, B for the rest."""
    size = FIXED_SIZE.get(type_, 0)
    return "W" if size == 2 else "D" if size == 4 else "B"


class S7Device(DeviceBase):
    """A Siemens S7 PLC (S7-300/400/1200/1500, S7-200 SMART, LOGO!) over ISO-on-TCP."""

    driver: Literal["s7"]
    connection: S7Connection
    max_gap: int = Field(
        default=4,
        ge=0,
        le=256,
        description="unused bytes a read may span to join two tags of one area into one range "
        "(a separate range costs 4 bytes in the answer and 12 in the request)",
    )
    max_items: int = Field(
        default=20,
        ge=1,
        le=78,
        description="items per multi-variable read: 20 (snap7's limit, which every CPU takes); "
        "an S7-1500 takes as many as its PDU holds (78 at 960 bytes), which reads scattered "
        "tags in fewer requests",
    )
    tags: Sequence[S7Tag] = Field(default_factory=list)


class S7Profile(ProfileBase):
    """An S7 machine type: its tag list, shared by every device that names it."""

    driver: Literal["s7"]
    tags: Sequence[S7Tag] = Field(default_factory=list)
