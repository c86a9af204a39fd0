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


def _problem(cls: object) -> str | None:
    """Why ``cls`` cannot serve as a driver, or None. Attributes are read with ``getattr``: a
    third party's class may lack any of them, and that is its problem to report, not a crash."""
    if not (isinstance(cls, type) and issubclass(cls, Driver)):
        return "not a subclass of drivers.base.Driver"
    if not isinstance(getattr(cls, "name", None), str):
        return "has no 'name'"
    device_model = getattr(cls, "device_model", None)
    if not (isinstance(device_model, type) and issubclass(device_model, DeviceBase)):
        return "device_model is not a DeviceBase subclass"
    profile_model = getattr(cls, "profile_model", None)
    if not (isinstance(profile_model, type) and issubclass(profile_model, ProfileBase)):
        return "profile_model is not a ProfileBase subclass"
    return None


def _checked(ep: EntryPoint) -> type[Driver] | None:
    try:
        cls = ep.load()
        problem = _problem(cls)
    except Exception as exc:  # a third party's import error must not stop the agent
        problem = repr(exc)
    if problem is not None:
        # The facts go in the message too: `validate` runs without logging set up, and Python's
        # last-resort handler prints the message alone.
        log.error(
            "driver %r (%s) not loaded: %s",
            ep.name,
            ep.value,
            problem,
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
