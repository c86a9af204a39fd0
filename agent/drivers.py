"""The driver registry: every driver is found through the ``edge_agent.drivers`` entry points.

The agent never imports a concrete driver, so a third-party driver installs like any package.
One broken third-party driver must not take the gateway down with it (the other devices still
need polling), so a driver that fails to load is logged and skipped; two drivers claiming one
``driver:`` name, though, would make configs mean different things on different machines, so
that is refused.
"""

from __future__ import annotations

import logging
from importlib.metadata import EntryPoint, entry_points

from drivers.base import DeviceBase, Driver, ProfileBase

log = logging.getLogger(__name__)

GROUP = "edge_agent.drivers"


class DriverConflictError(RuntimeError):
    """Two installed drivers claim the same name."""


def _checked(ep: EntryPoint) -> type[Driver] | None:
    try:
        cls = ep.load()
    except Exception as exc:  # a third party's import error must not stop the agent
        log.error(
            "driver not loaded",
            extra={"entry_point": ep.name, "target": ep.value, "error": repr(exc)},
        )
        return None
    problem = None
    if not (isinstance(cls, type) and issubclass(cls, Driver)):
        problem = "not a subclass of drivers.base.Driver"
    elif not isinstance(getattr(cls, "name", None), str):
        problem = "has no 'name'"
    elif not (isinstance(cls.device_model, type) and issubclass(cls.device_model, DeviceBase)):
        problem = "device_model is not a DeviceBase subclass"
    elif not (isinstance(cls.profile_model, type) and issubclass(cls.profile_model, ProfileBase)):
        problem = "profile_model is not a ProfileBase subclass"
    if problem is not None:
        log.error(
            "driver not loaded",
            extra={"entry_point": ep.name, "target": ep.value, "error": problem},
        )
        return None
    return cls  # type: ignore[no-any-return]


def load_drivers() -> dict[str, type[Driver]]:
    """Installed drivers by their ``driver:`` name; raise ``DriverConflictError`` on a clash."""
    found: dict[str, type[Driver]] = {}
    for ep in entry_points(group=GROUP):
        cls = _checked(ep)
        if cls is None:
            continue
        other = found.get(cls.name)
        # The same class seen twice (one distribution visible on two sys.path entries) is fine.
        if other is not None and other is not cls:
            raise DriverConflictError(
                f"two drivers are named {cls.name!r}: "
                f"{other.__module__}.{other.__qualname__} and {ep.value}"
            )
        found[cls.name] = cls
    return found
