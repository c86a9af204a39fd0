"""The destinations: the ``mqtt`` section (``default``) and each entry of ``outputs:``.

Why each destination gets a config of its own (``destination_config``): a format is built from
the whole config (agent id, topic prefix, its options, the devices it announces: Sparkplug
births, ThingsBoard sub-devices, Alibaba product keys). Giving it the config as that destination
sees it, its own section in the place of ``mqtt`` and only the devices it takes, lets every
format serve as a second destination without knowing that there are several.

Data flows one way: one buffer holds each batch once, marked with the destinations that want it
(``Route``); each destination's publisher drains its own share at its own pace, so a dead, slow
or throttled destination never holds another back.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agent.app.config import Config
from agent.app.config.models import MqttSection
from agent.core.buffer import DEFAULT_OUTPUT, Route
from agent.north.formats import Format, build_format
from agent.north.publisher import Publisher

log = logging.getLogger(__name__)


def destination_sections(config: Config) -> dict[str, MqttSection]:
    """Every destination's section by name, ``default`` (the ``mqtt`` section) first."""
    out: dict[str, MqttSection] = {DEFAULT_OUTPUT: config.mqtt}
    for entry in getattr(config, "outputs", None) or ():
        out[entry.name] = entry
    return out


def route_of(name: str, section: MqttSection) -> Route:
    devices = getattr(section, "devices", None)
    streams = getattr(section, "streams", None)
    return Route(
        name,
        frozenset(devices) if devices is not None else None,
        frozenset(streams) if streams is not None else None,
    )


def destination_config(config: Config, name: str) -> Config:
    """The config as destination ``name`` sees it: its section as ``mqtt``, its devices only."""
    section = destination_sections(config)[name]
    if name == DEFAULT_OUTPUT:
        return config
    route = route_of(name, section)
    devices = [d for d in config.devices if route.devices is None or d.name in route.devices]
    return config.model_copy(update={"mqtt": section, "devices": devices})


@dataclass
class Destination:
    """One destination while the agent runs: its settings, format, session and task."""

    name: str
    route: Route
    config: Config  # as this destination sees it (``destination_config``)
    format: Format
    publisher: Publisher
    task: asyncio.Task[None] | None = field(default=None, repr=False)


def dump_section(section: MqttSection) -> Any:
    """A section as plain data to compare across a reload (the password included, never
    logged)."""
    data = section.model_dump(mode="json")
    secret = getattr(section, "password", None)
    if secret is not None:
        data["__password"] = secret.get_secret_value()
    return data


class Fanout:
    """Device status and machine state go to every destination that takes them (each
    publisher filters by its route); the list is asked for each time, a reload replaces
    publishers."""

    def __init__(self, publishers: Callable[[], list[Publisher]]) -> None:
        self._publishers = publishers

    def device_status(self, device: str, state: str, reason: str | None, ts: float) -> None:
        for publisher in self._publishers():
            publisher.device_status(device, state, reason, ts)

    def retain(self, device: str, kind: str, payload: bytes) -> None:
        for publisher in self._publishers():
            publisher.retain(device, kind, payload)


def build_destination(
    config: Config, name: str, make: Callable[[Config, Route, Format], Publisher]
) -> Destination:
    view = destination_config(config, name)
    route = route_of(name, destination_sections(config)[name])
    fmt = build_format(view)
    return Destination(name, route, view, fmt, make(view, route, fmt))
