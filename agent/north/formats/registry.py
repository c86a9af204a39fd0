"""The format registry: every format, bundled or a third party's, is an entry point of the group
``edge_agent.formats``, as drivers are of ``edge_agent.drivers`` (agent/south/registry.py).

Listing the names imports nothing (a gateway speaks one dialect; Sparkplug's protobuf runtime
or the cloud signers need not be loaded to list them). Two entry points claiming one name would
make ``mqtt.format`` mean different things on different machines, so that is refused.
"""

from __future__ import annotations

from collections.abc import Iterable
from importlib.metadata import EntryPoint, entry_points

from agent.north.formats.base import Format

GROUP = "edge_agent.formats"
#: The format of an MQTT section that names none.
DEFAULT = "json"


class FormatConflictError(RuntimeError):
    """Two installed formats claim the same name."""


def available_formats() -> dict[str, EntryPoint]:
    """Installed formats by their ``mqtt.format`` name (entry points, not yet imported)."""
    found: dict[str, EntryPoint] = {}
    for ep in entry_points(group=GROUP):
        other = found.get(ep.name)
        # The same target seen twice (one distribution on two sys.path entries) is fine.
        if other is not None and other.value != ep.value:
            raise FormatConflictError(
                f"two formats are named {ep.name!r}: {other.value} and {ep.value}"
            )
        found[ep.name] = ep
    return found


def load_format(name: str) -> type[Format]:
    """The class of the format ``name``; KeyError when none is installed under that name,
    TypeError when the entry point is not a ``Format`` named ``name``."""
    ep = available_formats()[name]
    cls = ep.load()
    if not (isinstance(cls, type) and issubclass(cls, Format)):
        raise TypeError(f"format {name!r} ({ep.value}) is not a subclass of Format")
    if cls.name != name:
        raise TypeError(f"format {name!r} ({ep.value}) calls itself {cls.name!r}")
    return cls


def installed_formats(load: Iterable[str] | None = None) -> dict[str, type[Format] | None]:
    """Every installed format's name (by name, ``json`` first), with its class where it is
    imported: the ``load`` names
    (those a config file chose; unknown ones are ignored), or all of them when ``load`` is None
    (``edge-agent schema``). The others stay unimported: their names are enough to say which
    ``mqtt.format`` values exist and that their sections belong to another format."""
    names = available_formats()
    wanted = set(names) if load is None else set(load) & set(names)
    # By name, the default first: the schema and the reference list them in this order.
    ordered = sorted(names, key=lambda n: (n != DEFAULT, n))
    return {name: (load_format(name) if name in wanted else None) for name in ordered}
