"""What a tag is, for the platforms that can say it: its value type, unit and description.

Values alone do not tell a dashboard that ``temp`` is in degC, nor a historian what ``t_1`` was.
The config says it once per tag (``unit``, ``description``); each format carries it the way its
platform keeps metadata: Sparkplug as metric properties in births, ThingsBoard as client
attributes, JSON as a retained ``<topic_prefix>/<device>/meta`` message. Formats receive it at
construction, so a reload that changes a unit builds a new format and session (``Format.spec``)
and the platforms are told again.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from agent.core.processing.calculated import calculated_of
from agent.north.formats.base import tag_types
from drivers.base import DeviceBase

if TYPE_CHECKING:  # the config is built in app; a format reads it, never imports app at run time
    from agent.app.config.models import Config

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


@dataclass(frozen=True, slots=True)
class TagMeta:
    """One tag's metadata; None where the config or the driver does not say."""

    type: str | None = None
    unit: str | None = None
    description: str | None = None

    def doc(self) -> dict[str, str]:
        """The keys that are set, for a JSON document."""
        out = {"type": self.type, "unit": self.unit, "description": self.description}
        return {k: v for k, v in out.items() if v is not None}

    @property
    def described(self) -> bool:
        """Whether there is anything beyond the type (a unit or a description)."""
        return self.unit is not None or self.description is not None


#: Per device: tag name to its metadata.
Meta = Mapping[str, Mapping[str, TagMeta]]


def tag_meta(device: DeviceBase) -> dict[str, TagMeta]:
    """Every tag of a device with its type (declared or inferred), unit and description, in the
    config's order, its calculated tags after them; tags only the driver types follow."""
    types = tag_types(device)
    out = {
        t.name: TagMeta(types.get(t.name), t.unit, t.description)
        for t in (*device.tags, *calculated_of(device))
    }
    for name, value_type in types.items():
        out.setdefault(name, TagMeta(value_type))
    return out


def config_meta(config: Config) -> dict[str, dict[str, TagMeta]]:
    """The metadata of every device that runs."""
    return {d.name: tag_meta(d) for d in config.active_devices()}


def meta_document(agent_id: str, device: str, tags: Mapping[str, TagMeta]) -> bytes:
    """The JSON meta message of one device: ``{"agent", "device", "tags": {name: {"type",
    "unit", "description"}}}``, each tag with the keys it has."""
    doc = {"agent": agent_id, "device": device, "tags": {n: m.doc() for n, m in tags.items()}}
    return _dumps(doc).encode()
