"""What the documentation shows must be true: examples validate, the shipped schema is current."""

from __future__ import annotations

import json
import re
from pathlib import Path

from agent.config import config_schema, load_config
from agent.drivers import load_drivers

ROOT = Path(__file__).resolve().parent.parent


def test_readme_annotated_example_is_a_valid_config(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Configuration") :]
    example = re.search(r"```yaml\n(.*?)```", section, re.S)
    assert example is not None
    path = tmp_path / "example.yaml"
    path.write_text(example.group(1))
    config = load_config(path, load_drivers())
    assert [d.name for d in config.devices] == ["press-1"]
    # The profile's tags come first, then the device's own.
    assert [t.name for t in config.devices[0].tags][:2] == ["voltage_l1", "energy"]


def test_sample_configs_are_valid() -> None:
    for path in (ROOT / "config" / "demo.yaml", ROOT / "drivers" / "modbus" / "sample.yaml"):
        load_config(path, load_drivers())


def test_shipped_schema_is_current() -> None:
    shipped = json.loads((ROOT / "config" / "schema.json").read_text())
    assert shipped == config_schema(load_drivers()), "run `make schema` and commit the result"
