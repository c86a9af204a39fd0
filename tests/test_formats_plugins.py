"""A format is a plugin: one installed from outside agent/ (here a test-only entry point of the
group ``edge_agent.formats``) has its options validated with FILE:LINE:COL errors, its own checks
run, its section in ``edge-agent schema`` and its construction used, without a line of agent/
naming it. And a config imports only the formats it uses."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import pytest
from pydantic import Field

from agent.app.cli import main
from agent.app.config import ConfigErrors, ConfigIssue, load_config
from agent.core.buffer import StoredBatch
from agent.north.formats import build_format, registry
from agent.north.formats.base import Format, Issue, Packed, options_of
from agent.south.registry import load_drivers
from drivers.base import Name, StrictModel

if TYPE_CHECKING:
    from agent.app.config.models import Config


class HistorianOptions(StrictModel):
    """Options of the test-only ``format: historian``."""

    archive: Name = Field(description="archive the historian files batches under")
    keep_days: int = Field(default=30, ge=1, description="days the historian keeps")
    tags_of: dict[Name, list[Name]] = Field(default_factory=dict, description="per device")


class HistorianFormat(Format):
    """A third party's format, as a package outside agent/ would ship it."""

    name = "historian"
    Options: ClassVar[type[StrictModel] | None] = HistorianOptions
    password_is_token = True

    @classmethod
    def check_section(cls, section: Any) -> list[tuple[str, str]]:
        if section.qos != 1:
            return [("qos", "the historian needs qos 1")]
        return []

    @classmethod
    def check(cls, data: Mapping[str, Any], section: Mapping[str, Any]) -> list[Issue]:
        devices = {d.get("name") for d in data.get("devices") or [] if isinstance(d, dict)}
        options = section.get("historian")
        names = options.get("tags_of", {}) if isinstance(options, dict) else {}
        return [
            (("historian", "tags_of", n), f"unknown device {n!r}")
            for n in names
            if n not in devices
        ]

    @classmethod
    def from_config(cls, config: Config) -> HistorianFormat:
        options = options_of(config.mqtt, cls.section_key(), HistorianOptions)
        assert options is not None
        return cls(options.archive, options.keep_days)

    def __init__(self, archive: str, keep_days: int) -> None:
        self.archive = archive
        self.keep_days = keep_days

    def pack(self, rows: Sequence[StoredBatch]) -> list[Packed]:
        return [Packed(None, tuple(rows))]

    def device_topic(self, device: str, kind: str) -> str:
        return f"historian/{self.archive}/{device}/{kind}"


_INSTALLED = list(entry_points(group=registry.GROUP))


def _install(monkeypatch: pytest.MonkeyPatch, *extra: EntryPoint) -> None:
    """The installed formats plus ``extra``, as ``importlib.metadata`` would list them."""
    monkeypatch.setattr(registry, "entry_points", lambda group: [*_INSTALLED, *extra])


@pytest.fixture
def historian(monkeypatch: pytest.MonkeyPatch) -> None:
    _install(
        monkeypatch,
        EntryPoint("historian", f"{__name__}:HistorianFormat", registry.GROUP),
    )


def _load(tmp_path: Path, text: str) -> Config:
    path = tmp_path / "agent.yaml"
    path.write_text(text, encoding="utf-8")
    return load_config(path, load_drivers())


def _issues(tmp_path: Path, text: str) -> list[tuple[int, int, str, str]]:
    with pytest.raises(ConfigErrors) as exc:
        _load(tmp_path, text)
    issues: list[ConfigIssue] = exc.value.issues
    for issue in issues:
        assert issue.file == str(tmp_path / "agent.yaml")
    return [(i.line, i.col, i.path, i.message) for i in issues]


DEVICE = (
    "devices:\n"
    "  - {name: press-1, driver: modbus, connection: {host: 127.0.0.1, port: 5020},\n"
    "     tags: [{name: t, table: holding, address: 0, type: uint16}]}\n"
)


def test_a_third_party_format_is_configured_and_built(historian: None, tmp_path: Path) -> None:
    config = _load(
        tmp_path,
        "agent: {id: gw1}\n"
        "mqtt:\n"
        "  format: historian\n"
        "  password_env: HISTORIAN_TOKEN\n"  # a token: no username needed (password_is_token)
        "  historian: {archive: plant, keep_days: 7, tags_of: {press-1: [t]}}\n" + DEVICE,
    )
    fmt = build_format(config)
    assert isinstance(fmt, HistorianFormat)
    assert (fmt.archive, fmt.keep_days) == ("plant", 7)


def test_its_options_are_refused_at_file_line_col(historian: None, tmp_path: Path) -> None:
    issues = _issues(
        tmp_path,
        "agent: {id: gw1}\n"
        "mqtt:\n"
        "  format: historian\n"
        "  historian:\n"
        "    archive: plant/2\n"
        "    keep_days: 0\n"
        "    colour: red\n",
    )
    assert [i[:3] for i in issues] == [
        (5, 14, "mqtt.historian.archive"),
        (6, 16, "mqtt.historian.keep_days"),
        (7, 5, "mqtt.historian.colour"),
    ]
    assert "greater than or equal to 1" in issues[1][3]


def test_its_section_is_required_when_it_has_required_options(
    historian: None, tmp_path: Path
) -> None:
    issues = _issues(tmp_path, "agent: {id: gw1}\nmqtt: {format: historian}\n")
    assert issues == [
        (2, 8, "mqtt.format", "format: historian needs a historian section (archive)")
    ]


def test_its_checks_run_at_their_keys(historian: None, tmp_path: Path) -> None:
    text = (
        "agent: {id: gw1}\n"
        "mqtt:\n"
        "  format: historian\n"
        "  historian:\n"
        "    archive: plant\n"
        "    tags_of: {press-1: [t], press-9: [t]}\n" + DEVICE
    )
    assert _issues(tmp_path, text) == [
        (6, 29, "mqtt.historian.tags_of.press-9", "unknown device 'press-9'")
    ]
    qos0 = text.replace("  format: historian\n", "  format: historian\n  qos: 0\n")
    assert [i[2:] for i in _issues(tmp_path, qos0)] == [
        ("mqtt.qos", "the historian needs qos 1"),
        ("mqtt.historian.tags_of.press-9", "unknown device 'press-9'"),  # same run
    ]


def test_its_section_under_another_format_is_refused(historian: None, tmp_path: Path) -> None:
    issues = _issues(tmp_path, "agent: {id: gw1}\nmqtt:\n  historian: {archive: plant}\n")
    assert issues == [(3, 3, "mqtt.historian", "the historian section needs format: historian")]


def test_it_appears_in_the_schema_and_the_reference(
    historian: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    mqtt = schema["$defs"]["MqttSection"]["properties"]
    assert "historian" in mqtt["format"]["enum"]
    assert mqtt["historian"]["anyOf"][0] == {"$ref": "#/$defs/HistorianOptions"}
    assert mqtt["historian"]["description"] == "options of format: historian (required with it)"
    options = schema["$defs"]["HistorianOptions"]
    assert options["required"] == ["archive"]
    assert options["properties"]["keep_days"]["minimum"] == 1
    assert main(["schema", "--markdown"]) == 0
    page = capsys.readouterr().out
    assert "| `historian` | [historian](#historian) |" in page
    assert "### `historian`" in page and "| `keep_days` | integer | `30` |" in page


def test_a_config_imports_only_the_formats_it_uses(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """An installed format that cannot even be imported does not matter to a config that
    does not use it: its name is listed, its module never loaded."""
    _install(monkeypatch, EntryPoint("broken", "tests.no_such_module:Nothing", registry.GROUP))
    config = _load(tmp_path, "agent: {id: gw1}\nmqtt: {format: json}\n")
    assert config.mqtt.format == "json"
    with pytest.raises(ModuleNotFoundError):
        _load(tmp_path, "agent: {id: gw1}\nmqtt: {format: broken}\n")
