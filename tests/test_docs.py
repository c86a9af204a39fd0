"""What the documentation shows must be true: examples validate, the shipped schema is current."""

from __future__ import annotations

import json
import re
from pathlib import Path

from agent.app.config import Config, config_schema, load_config
from agent.south.registry import load_drivers
from tests.readme import DOCS

ROOT = Path(__file__).resolve().parent.parent


def _annotated_example(page: Path, tmp_path: Path) -> Config:
    """The first yaml block of a configuration page: the annotated example of a whole file."""
    example = re.search(r"```yaml\n(.*?)```", page.read_text(encoding="utf-8"), re.S)
    assert example is not None
    path = tmp_path / f"{page.parent.name}-example.yaml"
    path.write_text(example.group(1), encoding="utf-8")
    return load_config(path, load_drivers())


def test_the_annotated_example_is_a_valid_config(tmp_path: Path) -> None:
    """docs/configuration.md's annotated example (README "Configuration" until it moved)."""
    config = _annotated_example(DOCS / "configuration.md", tmp_path)
    assert [d.name for d in config.devices] == ["press-1"]
    # The profile's tags come first, then the device's own.
    assert [t.name for t in config.devices[0].tags][:2] == ["voltage_l1", "energy"]


def test_the_chinese_annotated_example_is_the_same_config(tmp_path: Path) -> None:
    """The Simplified Chinese twin translates the comments, never the configuration."""
    en = _annotated_example(DOCS / "configuration.md", tmp_path)
    zh = _annotated_example(DOCS / "zh-CN" / "configuration.md", tmp_path)
    assert zh.model_dump() == en.model_dump()


def test_sample_configs_are_valid() -> None:
    for path in (ROOT / "config" / "demo.yaml", ROOT / "drivers" / "modbus" / "sample.yaml"):
        load_config(path, load_drivers())


def test_shipped_schema_is_current() -> None:
    shipped = json.loads((ROOT / "config" / "schema.json").read_text())
    assert shipped == config_schema(load_drivers()), "run `make schema` and commit the result"
