"""The driver class and the shared line: what a driver implements, and what it may declare.

Optional abilities (writes, discovery, raw values, sample parsing, shared lines) are methods
with a default that says "not supported", so the agent asks the driver instead of probing it
with ``getattr``.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from drivers.base.config import DeviceBase, ProfileBase
from drivers.base.data import CallResult, Reading, WriteError
from drivers.base.rates import RateGroup

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


_Device = TypeVar("_Device", bound=DeviceBase)


def own_config(device: DeviceBase, model: type[_Device]) -> _Device:
    """``device`` as the driver's own model: the agent hands drivers the loader's model, a test
    or a caller may hand a plain ``DeviceBase``, which is validated again as ``model``."""
    if isinstance(device, model):
        return device
    return model.model_validate(device.model_dump())


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

    async def poll_group(self, group: RateGroup) -> list[Reading]:
        """Read the tags of one rate group (``drivers.base.rates``): the agent calls it instead
        of ``poll()`` for a device whose tags have rates of their own, once per group tick.

        The default polls every tag and keeps the group's readings: right for any driver, but it
        reads the other groups' tags too. A driver that plans requests overrides it and plans
        each group once in ``__init__`` (``rate_groups(device)``), so a group costs only its
        own requests and a slow group's requests never stand in a fast group's way."""
        wanted = frozenset(group.tags)
        return [r for r in await self.poll() if r.tag in wanted]

    async def poll_group_until(self, group: RateGroup, until: float) -> tuple[list[Reading], bool]:
        """Read one rate group, stopping between two requests once the event loop's clock
        (``loop.time()``) reaches ``until``, when a faster group of the device is due: the
        readings so far, and whether the group is done. Not done, the agent polls the faster
        group and then calls again for the rest, so a slow group keeps a fast one waiting for
        one request at most.

        The default reads the whole group (``poll_group``) and says it is done; a driver that
        sends a group as several requests overrides it."""
        return await self.poll_group(group), True

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

    def try_sample(self, sample: str) -> list[Reading] | None:
        """Optional, for commissioning (``edge-agent validate --sample``): the readings one
        sample frame (as ``sniff`` prints it) would give, without a device; None when the
        driver does not parse samples (the default)."""
        return None

    @classmethod
    def sniffer(cls) -> Callable[..., Coroutine[Any, Any, None]] | None:
        """Optional, for commissioning (``edge-agent sniff PORT``): a coroutine function that
        prints what a line carries, called as ``sniffer(port, out, baudrate=, parity=,
        bytesize=, stopbits=, terminator=, count=, duration=)``; None when the driver has none
        (the default)."""
        return None

    @classmethod
    def discover(cls, argv: Sequence[str]) -> int | None:
        """Optional, for commissioning (``edge-agent discover DRIVER ARGS...``): parse ``argv``
        (the driver's own options), look at a device and print a ready-to-edit YAML device
        entry on stdout; return the exit code (0, 1 runtime failure, 2 usage). None when the
        driver cannot discover devices (the default)."""
        return None

    @classmethod
    def scan(cls, argv: Sequence[str]) -> int | None:
        """Optional, for commissioning (``edge-agent scan DRIVER ARGS...``): parse ``argv`` (the
        driver's own options), ask a line who is on it, with short timeouts and progress on
        stderr, and print each device that answers on stdout; return the exit code (0 some
        answered, 1 none or the line failed, 2 usage). None when the driver cannot scan (the
        default)."""
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

    # -- method calls and the device's own events (OPC UA methods, Alarms & Conditions) ----------

    def check_call(self, method: str, args: Any) -> None:
        """Refuse a call before anything is sent (a method the config does not declare, the
        wrong number or types of arguments, an array too long): raise ``WriteError``."""
        raise WriteError(f"driver {self.name!r} has no methods")

    async def call(self, method: str, args: Any) -> CallResult:
        """Call ``method`` (checked by ``check_call``) with ``args``; the server's status and
        output arguments. ``WriteError`` when refused or failed, ``DeviceError`` when the device
        is lost; called between polls like ``write``."""
        raise WriteError(f"driver {self.name!r} has no methods")

    def take_events(self) -> list[dict[str, Any]]:
        """The events the device reported since the last call (alarm raise/clear documents),
        which the agent buffers on the device's event stream after each poll; [] by default."""
        return []

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
