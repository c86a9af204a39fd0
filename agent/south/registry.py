"""The driver registry: every driver is found through the ``edge_agent.drivers`` entry points.

The agent never imports a concrete driver, so a third-party driver installs like any package.
One broken third-party driver must not take the gateway down with it (the other devices still
need polling), so a driver that fails to load is logged and skipped; two drivers claiming one
``driver:`` name, though, would make configs mean different things on different machines, so
that is refused.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import ItemsView, Iterable, Iterator, Mapping, ValuesView
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


class Drivers(Mapping[str, type[Driver]]):
    """Installed drivers by their ``driver:`` name, each imported the first time it is asked for.

    Why lazily: a driver's protocol stack is the largest part of the agent's memory (asyncua with
    cryptography is ~26 MB), and a gateway uses one or two of the installed drivers. Listing the
    names (for "unknown driver ... (installed: ...)" messages) imports nothing; a driver that
    fails to import is logged once and from then on is not installed.
    """

    def __init__(self, eps: Iterable[EntryPoint]) -> None:
        self._eps: dict[str, EntryPoint] = {}
        for ep in eps:
            other = self._eps.get(ep.name)
            # The same target seen twice (one distribution on two sys.path entries) is fine.
            if other is not None and other.value != ep.value:
                raise DriverConflictError(
                    f"two drivers are named {ep.name!r}: {other.value} and {ep.value}"
                )
            self._eps[ep.name] = ep
        self._loaded: dict[str, type[Driver]] = {}

    def __getitem__(self, name: str) -> type[Driver]:
        cls = self._loaded.get(name)
        if cls is not None:
            return cls
        ep = self._eps.get(name)
        if ep is None:
            raise KeyError(name)
        cls = _checked(ep)
        if cls is not None and cls.name != name:
            log.error(
                "driver %r (%s) not loaded: its class is named %r; the entry point's name must "
                "be the driver's name",
                name,
                ep.value,
                cls.name,
                extra={"entry_point": name, "target": ep.value},
            )
            cls = None
        if cls is None:
            del self._eps[name]
            raise KeyError(name)
        self._loaded[name] = cls
        return cls

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._eps))

    def load_all(self) -> dict[str, type[Driver]]:
        """Every driver that imports (``schema`` needs them all); broken ones are skipped."""
        found: dict[str, type[Driver]] = {}
        for name in list(self._eps):
            with contextlib.suppress(KeyError):
                found[name] = self[name]
        return found

    def items(self) -> ItemsView[str, type[Driver]]:
        return self.load_all().items()

    def values(self) -> ValuesView[type[Driver]]:
        return self.load_all().values()

    def __len__(self) -> int:
        return len(self._eps)


def load_drivers() -> Drivers:
    """The installed drivers (imported on first use); ``DriverConflictError`` when two entry
    points claim one name."""
    return Drivers(entry_points(group=GROUP))
