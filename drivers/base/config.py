"""Config models every driver builds on: tags, devices, profiles, and how secrets are referenced.

Only what drivers and the agent share lives here. Edge-processing keys (deadbands, windows,
alarms, machine state...) belong to the agent: its config loader adds them to each driver's tag
and device models (``agent.core.processing.config``), so the YAML is the same while this contract
knows nothing of them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from drivers.base.units import Name, PositiveDuration, key_error

#: The value types a tag may declare (``TagBase.value_type``), named as the Modbus and
#: Sparkplug type names the formats know.
ValueType = Literal[
    "bool", "int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64", "string"
]

# --------------------------------------------------------------------------------------------------
# Secret references: a password is never a key of the file, only where to find it
# --------------------------------------------------------------------------------------------------

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def refuse_inline_password(data: Any) -> Any:
    """Body of a ``mode="before"`` model validator: an inline ``password`` key is refused, so
    configs can be shared and committed; ``password_env`` or ``password_file`` say where it is."""
    if isinstance(data, Mapping) and "password" in data:
        raise key_error(
            "password", "inline passwords are not allowed: use password_env or password_file"
        )
    return data


def check_env_name(value: str | None) -> str | None:
    """Field validator of ``password_env``: it must name an environment variable."""
    if value is not None and not _ENV_NAME.match(value):
        # The value is not echoed: a password pasted here by mistake must not reach a log.
        raise ValueError(
            "not an environment variable name (letters, digits and '_', not starting with a digit)"
        )
    return value


def password_source(password_env: str | None, password_file: object | None) -> str:
    """The key that says where the password is (``password_env`` unless only the file is given);
    both at once are refused, at ``password_file``."""
    if password_env is not None and password_file is not None:
        raise key_error("password_file", "password_env and password_file exclude each other")
    return "password_env" if password_env is not None else "password_file"


class StrictModel(BaseModel):
    """Base of every config model: unknown keys are errors, values are checked on assignment."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class TagBase(StrictModel):
    """What every driver's tag has. Drivers subclass it with their addressing keys."""

    name: Name = Field(description="the tag's name in payloads and topics ([A-Za-z0-9_.-])")
    # Both travel to the platforms that keep tag metadata (JSON's meta topic, Sparkplug births,
    # ThingsBoard attributes): bounded so that one tag cannot outgrow a platform's message.
    unit: str | None = Field(
        default=None,
        max_length=64,
        description="engineering unit (degC, kWh); sent as tag metadata where the format has it",
    )
    description: str | None = Field(
        default=None,
        max_length=1000,
        description="free text, for people; sent as tag metadata where the format has it",
    )
    every: PositiveDuration | None = Field(
        default=None,
        description="read this tag at its own rate instead of the device's poll_interval "
        "(energy totals each minute, voltages each second), in the same connection",
    )
    scan_group: Name | None = Field(
        default=None,
        description="read this tag at the rate of the device's scan group of this name "
        "(scan_groups)",
    )

    @model_validator(mode="after")
    def _one_rate(self) -> Any:
        if self.every is not None and self.scan_group is not None:
            raise key_error("scan_group", "give every or scan_group, not both")
        return self

    def value_type(self) -> ValueType | None:
        """The type of the values this tag's readings carry, as far as the config tells
        (``float64`` for a scaled integer register...); None when only the device knows
        (formats that declare types, Sparkplug's metric datatypes, read it here instead of a
        protocol's own keys). Drivers override it."""
        return None


class WritableTag(TagBase):
    """A tag of a driver that can write: writes from the cloud reach it only when the config
    says ``writable: true``, within ``min``/``max``. Drivers that write subclass it for their
    tags; the agent's command path knows writable tags by this class, nothing else."""

    writable: bool = Field(
        default=False, description="accept writes from the cloud (off unless set)"
    )
    min: float | None = Field(default=None, description="writes below this are refused")
    max: float | None = Field(default=None, description="writes above this are refused")


class ProfileBase(StrictModel):
    """A device type: the tag list written once and shared by every device that names it."""

    driver: str = Field(description="the driver of every device using this profile")
    description: str | None = Field(default=None, description="free text, for people")
    tags: Sequence[TagBase] = Field(default_factory=list)


class CommandLimits(StrictModel):
    """Commands (writes from the cloud) a device takes: burst at once, then per_second; the
    excess is refused at once with an error reply."""

    # Why per device: a runaway cloud script must not starve the polls of a slow device or of a
    # shared RS-485 line (agent/south/commands.py keeps the token bucket). Strict types, because
    # ``burst: true`` or ``per_second: "2"`` are typos, not 1 and 2.
    burst: int = Field(
        default=5, ge=1, strict=True, description="commands taken at once (the bucket's size)"
    )
    per_second: float = Field(
        default=2.0,
        gt=0,
        strict=True,
        allow_inf_nan=False,
        description="commands per second after the burst (the bucket's refill rate)",
    )


class ScanGroup(StrictModel):
    """A named rate within a device: its tags (``scan_group: <name>``) are read every ``every``,
    whatever the device's ``poll_interval``; the rate is written once, not on every tag."""

    name: Name = Field(description="the name tags give as their scan_group")
    every: PositiveDuration = Field(description="how often the group's tags are read")
    description: str | None = Field(default=None, description="free text, for people")


class DeviceBase(StrictModel):
    """What every driver's device entry has. Drivers subclass it, narrowing ``driver`` to a
    ``Literal`` and adding ``connection`` and their own keys."""

    name: Name = Field(description="the device's name in topics and payloads ([A-Za-z0-9_.-])")
    driver: str = Field(description="which driver polls it (modbus, opcua, serial...)")
    poll_interval: PositiveDuration = 1.0
    profile: Name | None = Field(
        default=None, description="a profile whose tags come first, before the device's own"
    )
    enabled: bool = Field(default=True, description="false: validated but not polled")
    tags: Sequence[TagBase] = Field(default_factory=list)
    commands: CommandLimits = Field(
        default_factory=CommandLimits,
        description="rate limit of commands (writes from the cloud) to this device",
    )
    scan_groups: Sequence[ScanGroup] = Field(
        default_factory=list,
        description="named rates within the device; a tag joins one with scan_group: <name>",
    )

    @model_validator(mode="after")
    def _unique_scan_groups(self) -> Any:
        seen: set[str] = set()
        for group in self.scan_groups:
            if group.name in seen:
                raise key_error("scan_groups", f"scan group {group.name!r} is defined twice")
            seen.add(group.name)
        return self

    def scan_rates_refused(self) -> str | None:
        """Why this device cannot read tags at rates of their own (``every``, ``scan_group``),
        or None when it can (the default: the agent polls it). A device the device itself
        drives (a subscription, a stream) overrides it with the reason, which validation shows."""
        return None

    def method_names(self) -> list[str]:
        """The methods commands may call on this device (``{"call": {"<name>": [...]}}``), for
        formats that declare them (Sparkplug's DBIRTH); none unless the driver declares some."""
        return []
