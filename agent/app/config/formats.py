"""The MQTT section as the installed formats make it: each format's options section and checks
come from the format (``agent.north.formats.base.Format``), none is named here.

So a format installed from outside the agent (entry point ``edge_agent.formats``) has its
options validated, reported at FILE:LINE:COL and shown by ``edge-agent schema`` exactly like a
bundled one. ``format_section_model`` composes any section model that takes the MQTT keys (the
``mqtt`` section, and any other destination built on ``MqttSection``); ``format_checks`` runs
the chosen format's checks across the file for one such section.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, TypeAlias, TypeVar, cast

from pydantic import BaseModel, Field, create_model
from pydantic.json_schema import SkipJsonSchema

from agent.app.config.yamlpos import DataPath
from agent.north.formats.base import Format, options_field
from agent.north.formats.registry import DEFAULT as DEFAULT_FORMAT
from agent.north.formats.registry import installed_formats

#: Installed formats by name: the class where it is imported, None where only its name is known.
FormatClasses = Mapping[str, type[Format] | None]

#: The section of a format not imported: taken as is (refused as another format's), not shown.
_Foreign: TypeAlias = SkipJsonSchema[Any]

_Section = TypeVar("_Section", bound=BaseModel)


def section_key(name: str, cls: type[Format] | None) -> str:
    """The key of a format's options section; a format not imported is assumed to use its name."""
    return cls.section_key() if cls is not None else name


def format_section_model(base: type[_Section], formats: FormatClasses) -> type[_Section]:
    """``base`` (``MqttSection`` or a model derived from it) with ``format`` narrowed to the
    installed names and one optional field per format's options section.

    A format whose class is not given (``None``: installed, not imported) gets a field that
    takes anything and is not in the schema, so a section for it is refused as belonging to
    another format rather than as an unknown key; a format without ``Options`` gets none. The
    composed model keeps ``base``'s name, so the schema's ``$defs`` do not depend on it, and
    records the classes in ``format_classes`` for ``base``'s validators.
    """
    names = tuple(formats)
    fields: dict[str, Any] = {
        "format": (
            cast(Any, Literal)[names] if names else str,
            Field(default=DEFAULT_FORMAT, description=base.model_fields["format"].description),
        ),
    }
    for name, cls in formats.items():
        key = section_key(name, cls)
        attr = options_field(key)
        alias = key if attr != key else None
        if cls is None:
            fields[attr] = (_Foreign, Field(default=None, alias=alias))
        elif cls.Options is not None:
            required = " (required with it)" if cls.options_required() else ""
            fields[attr] = (
                cls.Options | None,
                Field(
                    default=None, alias=alias, description=f"options of format: {name}{required}"
                ),
            )
    model = create_model(
        base.__name__, __base__=base, __module__=base.__module__, __doc__=base.__doc__, **fields
    )
    # A class attribute the base declares (``MqttSection.format_classes``), not a field.
    setattr(model, "format_classes", dict(formats))  # noqa: B010
    return model


def load_section_formats(data: Any, sections: list[Any]) -> dict[str, type[Format] | None]:
    """Every installed format, imported where one of ``sections`` (parsed MQTT sections of
    ``data``) chooses it or holds a section of its name: a gateway's config imports the dialects
    it speaks (and any whose options it holds, so they are validated too), no other."""
    named: set[str] = set()
    for section in sections:
        if not isinstance(section, dict):
            named.add(DEFAULT_FORMAT)
            continue
        chosen = section.get("format", DEFAULT_FORMAT)
        named.update(k for k in (chosen, *section) if isinstance(k, str))
    return installed_formats(named)


def format_checks(data: Any, path: DataPath, formats: FormatClasses) -> list[tuple[DataPath, str]]:
    """The chosen format's ``check`` for the MQTT-like section at ``path`` of the parsed file:
    (full key path, message) each. Nothing when the section or its format is not valid (the
    model reports that)."""
    section: Any = data
    for key in path:
        if isinstance(section, dict):
            section = section.get(key)
        elif isinstance(section, list) and isinstance(key, int) and 0 <= key < len(section):
            section = section[key]
        else:
            return []
    if section is None and path == ("mqtt",):
        section = {}  # no mqtt section: the defaults, so the default format's checks apply
    if not isinstance(section, dict) or not isinstance(data, dict):
        return []
    name = section.get("format", DEFAULT_FORMAT)
    cls = formats.get(name) if isinstance(name, str) else None
    if cls is None:
        return []
    return [((*path, *rel), message) for rel, message in cls.check(data, section)]
