"""The format registry (entry points ``edge_agent.formats``) and the stream kinds registry agree
with what the config accepts and with what the seams matrix covers."""

from __future__ import annotations

from importlib.metadata import EntryPoint

import pytest

from agent.app.config.loader import config_schema
from agent.core.streams import STREAM_KINDS, StreamKind
from agent.north.formats import registry
from agent.north.formats.base import Format
from agent.north.formats.registry import FormatConflictError, available_formats, load_format
from tests.platforms.dialects import DIALECTS


def test_config_accepts_exactly_the_registered_formats() -> None:
    """``mqtt.format`` is composed from the registry: every registered format is a choice, with
    its options section beside it; nothing else is."""
    mqtt = config_schema({})["$defs"]["MqttSection"]["properties"]
    assert mqtt["format"]["enum"] == ["json", *sorted(set(available_formats()) - {"json"})]
    for name in available_formats():
        options = load_format(name).Options
        assert (name in mqtt) == (options is not None), name


@pytest.mark.parametrize("name", sorted(available_formats()))
def test_every_entry_point_loads_a_format_of_its_own_name(name: str) -> None:
    cls = load_format(name)
    assert issubclass(cls, Format) and cls.name == name


@pytest.mark.parametrize("name", sorted(available_formats()))
def test_every_registered_format_has_a_dialect_adapter(name: str) -> None:
    """The seams matrix runs a format only through its adapter; a new format without one would
    pass unseen."""
    assert name in DIALECTS, f"tests/platforms/dialects.py has no adapter for format {name!r}"
    assert DIALECTS[name].format == name


def test_two_formats_claiming_one_name_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    group = registry.GROUP
    clash = [
        EntryPoint("json", "agent.north.formats.jsonfmt:JsonFormat", group),
        EntryPoint("json", "someone.else:Json", group),
    ]
    monkeypatch.setattr(registry, "entry_points", lambda group: clash)
    with pytest.raises(FormatConflictError, match="two formats are named 'json'"):
        available_formats()


def test_an_entry_point_that_is_no_format_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    odd = [EntryPoint("odd", "agent.core.streams:StreamKind", registry.GROUP)]
    monkeypatch.setattr(registry, "entry_points", lambda group: odd)
    with pytest.raises(TypeError, match="not a subclass of Format"):
        load_format("odd")


def test_stream_kinds_are_listed_once_with_unique_names() -> None:
    assert len({k.value for k in STREAM_KINDS}) == len(STREAM_KINDS) == len(StreamKind)
