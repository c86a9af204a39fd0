"""The driver contract: the data shapes every driver returns and the class it implements.

This module is the only thing the agent knows about drivers. A third party ships a driver as its own
package and registers it under the entry-point group ``edge_agent.drivers``; the agent never imports
a concrete driver. Everything here depends on the standard library and pydantic only.
"""

from __future__ import annotations

import abc
import enum
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    model_validator,
)

from drivers.processing_models import (
    AlarmSpec,
    CounterSpec,
    DeviceProcessing,
    StateSpec,
    WaveformSpec,
    WindowSpec,
    check_device_processing,
    check_tag_processing,
)

# Value types shared by every config section, re-exported so drivers keep importing the contract.
from drivers.units import NAME_PATTERN as NAME_PATTERN
from drivers.units import Duration as Duration
from drivers.units import Name as Name
from drivers.units import PositiveDuration as PositiveDuration
from drivers.units import Size as Size
from drivers.units import key_error as key_error
from drivers.units import parse_duration as parse_duration
from drivers.units import parse_size as parse_size

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

    name: Name
    unit: str | None = Field(default=None, description="engineering unit, for documentation")
    description: str | None = None
    deadband: float | None = Field(
        default=None, ge=0, description="report by exception: publish only changes beyond this"
    )
    deadband_percent: float | None = Field(
        default=None, gt=0, le=100, description="deadband as a percentage of the last value"
    )
    # Edge processing (drivers/processing_models.py; meaning in agent/processing/).
    max_silence: PositiveDuration | None = Field(
        default=None, description="report by exception: publish anyway after this long"
    )
    window: WindowSpec | None = Field(default=None, description="aggregates over time windows")
    waveform: WaveformSpec | None = Field(default=None, description="waveform features")
    counter: CounterSpec | None = Field(default=None, description="parts or energy counter")
    alarms: list[AlarmSpec] = Field(default_factory=list, description="alarms on this tag")

    @model_validator(mode="after")
    def _check_processing(self) -> TagBase:
        check_tag_processing(self)
        return self


class ProfileBase(StrictModel):
    """A device type: the tag list written once and shared by every device that names it."""

    driver: str
    description: str | None = None
    tags: Sequence[TagBase] = Field(default_factory=list)


class CommandLimits(StrictModel):
    """Commands (writes from the cloud) a device takes: burst at once, then per_second; the
    excess is refused at once with an error reply."""

    # Why per device: a runaway cloud script must not starve the polls of a slow device or of a
    # shared RS-485 line (agent/commands.py keeps the token bucket). Strict types, because
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


class DeviceBase(StrictModel):
    """What every driver's device entry has. Drivers subclass it, narrowing ``driver`` to a
    ``Literal`` and adding ``connection`` and their own keys."""

    name: Name
    driver: str
    poll_interval: PositiveDuration = 1.0
    profile: Name | None = None
    enabled: bool = True
    tags: Sequence[TagBase] = Field(default_factory=list)
    # Edge processing (drivers/processing_models.py; meaning in agent/processing/).
    processing: DeviceProcessing | None = Field(
        default=None, description="processing defaults for every tag of the device"
    )
    state: StateSpec | None = Field(default=None, description="machine state rules")
    commands: CommandLimits = Field(
        default_factory=CommandLimits,
        description="rate limit of commands (writes from the cloud) to this device",
    )

    @model_validator(mode="after")
    def _check_processing(self) -> DeviceBase:
        check_device_processing(self)
        return self


# --------------------------------------------------------------------------------------------------
# Data shapes
# --------------------------------------------------------------------------------------------------


class Quality(enum.StrEnum):
    GOOD = "good"
    UNCERTAIN = "uncertain"
    BAD = "bad"


Value = bool | int | float | str | list[Any]


@dataclass(frozen=True, slots=True)
class Reading:
    """One tag's value from one poll. A tag that could not be read is a bad reading, not absent."""

    tag: str
    value: Value | None
    ts: float  # seconds since the Unix epoch (UTC), taken when the device answered
    quality: Quality = Quality.GOOD
    reason: str | None = None  # why it is not good: "timeout", "exception 2 (illegal data address)"
    #: When the device itself says the value changed (an OPC UA source timestamp), if it says;
    #: the payload carries it under ``ts_source`` where it differs from the batch's ``ts``.
    source_ts: float | None = None

    @classmethod
    def bad(cls, tag: str, ts: float, reason: str) -> Reading:
        return cls(tag=tag, value=None, ts=ts, quality=Quality.BAD, reason=reason)


@dataclass(slots=True)
class Batch:
    """All readings of one device from one poll cycle.

    ``seq`` is given by the buffer when the batch is committed, in the same transaction, so it is
    never reused even across crashes. ``ts`` is when the device answered (the latest answer of the
    cycle), in seconds since the epoch.
    """

    device: str
    ts: float
    readings: list[Reading] = field(default_factory=list)
    seq: int | None = None


class DeviceError(Exception):
    """The device as a whole cannot be reached (connect failed, connection lost, timeout).

    ``reason`` is short and stable ("timeout", "connection refused") because it becomes the bad
    quality reason of every tag and the device status reason; details go in the message.
    """

    def __init__(self, reason: str, detail: str | None = None) -> None:
        super().__init__(detail or reason)
        self.reason = reason


class WriteError(Exception):
    """A write refused or failed; the message is the command reply's ``error`` (short, for the
    person who sent it: "above max 80", "exception 2 (illegal data address)")."""


# --------------------------------------------------------------------------------------------------
# The driver class
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LineSettings:
    """What one device entry says about the line it shares, for the config check across devices.

    Read from the raw YAML entry (before pydantic) so that a mismatch is reported with the file
    position of the second device's differing key, in the same run as every other config error.
    """

    #: Devices whose entries give the same key share one line (a serial port's path).
    key: str
    #: Dotted key path in the device entry (``connection.baudrate``) to the value, defaults
    #: filled in: every device on the line must give the same values.
    agree: Mapping[str, object] = field(default_factory=dict)
    #: Dotted key path of the setting that keeps this device from sharing its line at all (a
    #: serial instrument in stream mode talks by itself), or None when it can share.
    alone: str | None = None


class Line(abc.ABC):
    """One medium several devices take turns on: a serial port (RS-232/485 multidrop), later an
    RTU-over-TCP endpoint.

    The agent makes one line per ``Driver.line_key()`` (from the first device's driver), hands the
    same object to every driver on that key and polls those devices from one task, one request at
    a time, so a line never needs a lock. The agent closes it when it stops; drivers only open it.
    """

    #: What identifies the medium (a port path); equal to the drivers' ``line_key()``.
    key: str

    @abc.abstractmethod
    async def open(self) -> None:
        """Open the medium unless it is open and healthy (so every driver may call it in
        ``connect()``); raise ``DeviceError`` when it cannot be opened."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release the medium. Must not raise."""


class Driver(abc.ABC):
    """One device's connection and poll logic.

    Life cycle, driven by the agent's scheduler: ``connect()`` (retried with backoff by the agent
    while it raises ``DeviceError``), then ``poll()`` once per cycle, then ``close()``. ``poll()``
    returns a reading for every tag: a tag that failed is a bad reading with a reason. It raises
    ``DeviceError`` only when the device as a whole is lost, after which the agent reconnects.
    Event-like devices may return several readings of one tag (one per event, each with its own
    ``ts``): the agent publishes them as consecutive batches. An empty list means nothing
    happened in the interval and publishes nothing.
    The planning a driver needs (which requests to send) is done once, in ``__init__``.
    """

    #: The ``driver:`` value that selects this driver in the YAML.
    name: ClassVar[str]
    #: pydantic model of a device entry (a ``DeviceBase`` subclass with ``driver: Literal[name]``).
    device_model: ClassVar[type[DeviceBase]]
    #: pydantic model of a profile entry (a ``ProfileBase`` subclass with the driver's tag model).
    profile_model: ClassVar[type[ProfileBase]]

    def __init__(self, device: DeviceBase) -> None:
        self.device = device

    @abc.abstractmethod
    async def connect(self) -> None:
        """Open the connection; raise ``DeviceError`` when the device cannot be reached."""

    @abc.abstractmethod
    async def poll(self) -> list[Reading]:
        """Read every tag once; raise ``DeviceError`` when the connection is lost."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release the connection. Must not raise."""

    def describe_plan(self) -> dict[str, Any]:
        """Facts about the planned requests, for logs and benchmarks (e.g. requests per cycle)."""
        return {}

    def error_counts(self) -> Mapping[str, int]:
        """Errors the driver counts by kind since it was made ("checksum", "timeout"...), which
        the agent exports as ``edge_agent_driver_errors_total{device, kind}``.

        Read from the metrics server's thread at scrape time: return a copy, made without
        running Python code over a dict the event loop may be changing (``dict(counter)``).
        """
        return {}

    def raw_values(self) -> Mapping[str, Any]:
        """Optional, for commissioning (``edge-agent read``): what the last ``poll()`` received
        per tag before decoding (Modbus: the list of registers or bits; serial: the frame). {}
        when the driver does not keep it; the raw column is then left out."""
        return {}

    @classmethod
    def discover(cls, argv: Sequence[str]) -> int | None:
        """Optional, for commissioning (``edge-agent discover DRIVER ARGS...``): parse ``argv``
        (the driver's own options), look at a device and print a ready-to-edit YAML device
        entry on stdout; return the exit code (0, 1 runtime failure, 2 usage). None when the
        driver cannot discover devices (the default)."""
        return None

    # -- writes (commands from the cloud; only tags the config marks writable reach here) --------

    def check_write(self, tag: str, value: Any) -> None:
        """Refuse a value before anything is sent (wrong type, out of range): raise
        ``WriteError``. The agent checks every tag of a command first, so a command with one bad
        value changes nothing."""
        raise WriteError(f"driver {self.name!r} does not support writes")

    async def write(self, tag: str, value: Any) -> None:
        """Write one tag and confirm it (read back); raise ``WriteError`` with the reason when
        refused or not confirmed, ``DeviceError`` when the device is lost. The agent calls it
        between polls, never during one, so the driver needs no lock of its own."""
        raise WriteError(f"driver {self.name!r} does not support writes")

    # -- shared lines (a bus several devices are polled through, one request at a time) ---------

    @classmethod
    def line_settings(cls, entry: Mapping[str, Any]) -> LineSettings | None:
        """For ``validate``: the line a raw device entry names and what must agree on it; None
        when the device owns its connection. Must not raise on malformed entries (pydantic
        reports those): return None instead."""
        return None

    def line_key(self) -> str | None:
        """The line this device shares with others (polled serially, from one task), or None
        when it owns its connection and gets a task of its own."""
        return None

    def make_line(self) -> Line:
        """A new, unopened line for ``line_key()``; asked of one driver per key."""
        raise TypeError(f"driver {self.name!r} does not share lines")

    def use_line(self, line: Line) -> None:
        """Poll through ``line``, shared with the other devices on the key. The driver opens it
        in ``connect()`` when needed and must not close it in ``close()``: the others still use
        it."""
        raise TypeError(f"driver {self.name!r} does not share lines")
