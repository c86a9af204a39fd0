"""The driver contract: the data shapes every driver returns and the class it implements.

This package is the only thing the agent knows about drivers. A third party ships a driver as its
own package and registers it under the entry-point group ``edge_agent.drivers``; the agent never
imports a concrete driver. Everything here depends on the standard library and pydantic only.

* ``units``: the value types every config section shares (names, durations, sizes);
* ``config``: tag, device and profile models drivers subclass, and secret references;
* ``data``: readings, batches and the errors a driver raises;
* ``driver``: the ``Driver`` class with its optional abilities, and the shared ``Line``;
* ``rates``: scan rates within a device (``every``, ``scan_group``) as rate groups.
* ``writes``: the checks on a command's value every driver makes before it writes.
"""

from drivers.base.config import (
    CommandLimits,
    DeviceBase,
    ProfileBase,
    ScanGroup,
    StrictModel,
    TagBase,
    ValueType,
    WritableTag,
    check_env_name,
    password_source,
    refuse_inline_password,
)
from drivers.base.data import Batch, CallResult, DeviceError, Quality, Reading, Value, WriteError
from drivers.base.driver import Driver, Line, LineSettings
from drivers.base.rates import RateGroup, rate_groups
from drivers.base.units import (
    NAME_PATTERN,
    Duration,
    Name,
    PositiveDuration,
    Size,
    key_error,
    parse_duration,
    parse_size,
)

__all__ = [
    "NAME_PATTERN",
    "Batch",
    "CallResult",
    "CommandLimits",
    "DeviceBase",
    "DeviceError",
    "Driver",
    "Duration",
    "Line",
    "LineSettings",
    "Name",
    "PositiveDuration",
    "ProfileBase",
    "Quality",
    "RateGroup",
    "Reading",
    "ScanGroup",
    "Size",
    "StrictModel",
    "TagBase",
    "Value",
    "ValueType",
    "WritableTag",
    "WriteError",
    "check_env_name",
    "key_error",
    "parse_duration",
    "parse_size",
    "password_source",
    "rate_groups",
    "refuse_inline_password",
]
