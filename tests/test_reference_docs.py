"""The reference pages (docs/reference/) list exactly what the agent has: every config key (the
page is the generator's output for the current schema), every command and option of the CLI,
every metric it exports and every HTTP endpoint it serves, nothing more and nothing less."""

from __future__ import annotations

import re
from pathlib import Path

from agent.config import config_schema
from agent.drivers import load_drivers
from agent.reference import config_reference, slug

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "docs" / "reference"


# -- config.md ------------------------------------------------------------------------------------


def test_config_page_is_the_generators_output_for_the_current_schema() -> None:
    page = (REFERENCE / "config.md").read_text(encoding="utf-8")
    assert page == config_reference(config_schema(load_drivers())), (
        "docs/reference/config.md is out of date: run `make reference` "
        "(edge-agent schema --markdown > docs/reference/config.md) and commit it"
    )


def test_config_page_names_every_key_of_every_section() -> None:
    """Independent of the generator's own walk: every property of every definition of the schema
    is a row of some table, and every link of the page lands on one of its headings."""
    schema = config_schema(load_drivers())
    page = config_reference(schema)
    rows = set(re.findall(r"^\| `([^`]+)` \|", page, re.M))
    objects = [schema, *schema["$defs"].values()]
    keys = {key for obj in objects for key in obj.get("properties", {})}
    assert keys and keys <= rows, sorted(keys - rows)
    anchors = {slug(h) for h in re.findall(r"^#{1,6} (.+)$", page, re.M)}
    links = set(re.findall(r"\]\(#([^)]+)\)", page))
    assert links and links <= anchors, sorted(links - anchors)


def test_config_page_shows_types_defaults_and_allowed_values() -> None:
    page = config_reference(config_schema(load_drivers()))
    mqtt = page[page.index("## `mqtt`\n") :]
    assert "| `port` | integer | `1883` | 1 to 65535 |" in mqtt
    assert "| `keepalive` | duration | `30.0` | >= 0 |" in mqtt
    formats = "`json`, `sparkplug`, `thingsboard`, `aws`, `azure`, `alibaba`, `huawei`"
    assert f"| `format` | string | `json` | {formats} |" in mqtt
    assert "| `id` | name | required |" in page
    assert "| `max_size` | size | `256000000` |" in page
    for driver in ("modbus", "opcua", "serial"):
        assert f"## `devices[]` (driver: {driver})\n" in page
        assert f"### `devices[].tags[]` (driver: {driver})\n" in page
    # A section several drivers share is written once, and says where it is used.
    assert page.count("### `window`\n") == 1
    window = page[page.index("### `window`\n") :]
    assert "Used in: [`devices[].tags[]` (driver: modbus)](#devicestags-driver-modbus)" in window
