"""The data shapes every driver returns: readings, batches, and the two errors it may raise."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

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
    #: Events the device reported itself (OPC UA Alarms & Conditions), each the document
    #: published on the device's event stream beside the agent's own alarm events.
    events: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class CallResult:
    """What a method call returned: the server's status code name and the output arguments."""

    status: str
    #: None for an output the payload cannot carry (a structure)
    outputs: list[Value | None] = field(default_factory=list)


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
