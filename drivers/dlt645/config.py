"""The DL/T 645 section of the configuration: the meter's line, edition, address and tags.

Identifiers are resolved here, against the device's edition, so a ``di`` the meter's edition does
not have (a -2007 identifier on a -1997 meter, a name the catalogue lacks, an unlisted identifier
without its ``format``) is a ``validate`` error at the tag's own key, not a tag that is bad forever.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, ValidationError, field_validator, model_validator
from pydantic_core import InitErrorDetails

from drivers.base import (
    DeviceBase,
    PositiveDuration,
    ProfileBase,
    StrictModel,
    TagBase,
    ValueType,
    key_error,
)
from drivers.dlt645.bcd import Format
from drivers.dlt645.catalogue import (
    CATALOGUES,
    DI_DIGITS,
    NAMES,
    Entry,
    Protocol,
    is_identifier,
)
from drivers.dlt645.frame import ANY_ADDRESS, address_bytes


def _edition(value: object) -> object:
    """``protocol: 2007`` unquoted is a YAML number; it means the same as ``"2007"``."""
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


def _address(value: object) -> object:
    if not isinstance(value, str):
        raise ValueError(
            'write the address in quotes ("210220003011"): as a number YAML drops its leading zeros'
        )
    try:
        address_bytes(value)
    except ValueError:
        raise ValueError(
            f"{value!r} is not 12 digits as printed on the meter, nor {ANY_ADDRESS} "
            "(the lone meter of a line)"
        ) from None
    if value != ANY_ADDRESS and "A" in value:
        raise ValueError(f"{value!r}: AA stands for every digit pair or none ({ANY_ADDRESS})")
    return value


Edition = Annotated[Protocol, BeforeValidator(_edition)]
Address = Annotated[str, BeforeValidator(_address)]


def _stop_bits(value: object) -> object:
    if value not in (1, 2):
        raise ValueError("stopbits is 1 or 2")
    return value


class Dlt645Connection(StrictModel):
    """The RS-485 port the meters hang on; the standard's default is 2400 baud, 8E1."""

    port: str = Field(min_length=1, description="device path, e.g. /dev/ttyUSB0")
    baudrate: int = Field(
        default=2400, gt=0, description="bits per second (meters: 1200, 2400, 4800 or 9600)"
    )
    parity: Literal["N", "E", "O"] = Field(default="E", description="N, E or O (the standard: E)")
    stopbits: Annotated[int, BeforeValidator(_stop_bits)] = Field(default=1, description="1 or 2")
    timeout: PositiveDuration = Field(
        default=0.5, description="how long to wait for a meter's answer to each request"
    )
    preamble: int = Field(
        default=4, ge=0, le=8, description="FE wake-up bytes sent before each request"
    )


class Dlt645Tag(TagBase):
    """One data item: an identifier (``00010000``, ``9010``) or a catalogue name."""

    di: str = Field(
        description=(
            "data identifier as the standard writes it (-2007: 8 hex digits DI3..DI0, "
            "-1997: 4, DI1 DI0) or a catalogue name such as active_energy_total"
        )
    )
    format: str | None = Field(
        default=None,
        description="the standard's data format, e.g. XXXXXX.XX (default: the catalogue's)",
    )
    signed: bool | None = Field(
        default=None,
        description="highest bit is the sign (default: the catalogue's, else false)",
    )

    @field_validator("di")
    @classmethod
    def _known(cls, value: str) -> str:
        if is_identifier(value) or value in NAMES:
            return value
        raise ValueError(
            f"{value!r} is neither an identifier (8 hex digits for -2007, 4 for -1997) nor a "
            "catalogue name (see docs/devices/dlt645.md)"
        )

    @field_validator("format")
    @classmethod
    def _parses(cls, value: str | None) -> str | None:
        if value is not None:
            Format.parse(value)
        return value

    def value_type(self) -> ValueType:
        """Decimal values of either edition: always a float."""
        return "float64"

    def resolve(self, protocol: Protocol) -> tuple[str, Format, Entry | None]:
        """The identifier, format and catalogue entry of this tag on a meter of ``protocol``;
        ``ValueError`` (with the key it is about in ``key``) when it has none there."""
        catalogue = CATALOGUES[protocol]
        entry = catalogue.lookup(self.di)
        if entry is None and not is_identifier(self.di):
            raise _TagProblem("di", f"{self.di!r} is not a DL/T 645-{protocol} catalogue name")
        di = entry.di if entry is not None else self.di.upper()
        if len(di) != DI_DIGITS[protocol]:
            raise _TagProblem(
                "di",
                f"{self.di!r} is not a DL/T 645-{protocol} identifier "
                f"({DI_DIGITS[protocol]} hex digits)",
            )
        if self.format is not None:
            base = entry.format if entry is not None else None
            signed = self.signed if self.signed is not None else bool(base and base.signed)
            fmt = Format.parse(self.format, signed=signed)
        elif entry is not None:
            fmt = entry.format
            if self.signed is not None:
                fmt = Format(fmt.digits, fmt.decimals, self.signed, fmt.extra)
        else:
            raise _TagProblem(
                "di",
                f"{di} is not in the DL/T 645-{protocol} catalogue: give its format "
                "(e.g. format: XXXXXX.XX)",
            )
        return di, fmt, entry


class _TagProblem(ValueError):
    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


class Dlt645Device(DeviceBase):
    """A DL/T 645 meter on an RS-485 port; meters on one port share it, polled in turn."""

    driver: Literal["dlt645"]
    protocol: Edition = Field(default="2007", description='edition: "2007" or "1997"')
    address: Address = Field(
        description='12 digits as printed on the meter, or "AAAAAAAAAAAA" for the only meter '
        "of a line"
    )
    connection: Dlt645Connection
    tags: Sequence[Dlt645Tag] = Field(default_factory=list)

    @model_validator(mode="after")
    def _resolve(self) -> Dlt645Device:
        # After the model: ``tags`` comes before ``protocol`` in the field order.
        problems: list[InitErrorDetails] = []
        for i, tag in enumerate(self.tags):
            try:
                tag.resolve(self.protocol)
            except _TagProblem as exc:
                error = key_error(exc.key, str(exc))
                problems.append(InitErrorDetails(type=error, loc=("tags", i), input=tag.di))
        if problems:
            raise ValidationError.from_exception_data("tags", problems)
        return self


class Dlt645Profile(ProfileBase):
    """A meter type: its tag list (edition, address and line stay with the device)."""

    driver: Literal["dlt645"]
    tags: Sequence[Dlt645Tag] = Field(default_factory=list)


def line_settings_of(connection: Any) -> Dlt645Connection | None:
    """The connection of a raw entry, or None when it is malformed (pydantic says why)."""
    try:
        return Dlt645Connection.model_validate(connection)
    except ValidationError:
        return None
