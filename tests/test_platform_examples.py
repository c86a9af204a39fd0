"""Every registered format has a platform page (English and Simplified Chinese) and a complete
example config under config/examples/ that an integrator can copy as it is.

Generated from the format registry (entry points ``edge_agent.formats``): a format added
tomorrow fails here until it has its page and its example. Each example is a whole file (agent,
mqtt with the format's section, buffer, metrics, devices) that the real loader accepts, that
builds the format it is named after, and that takes its secrets only from ``password_env`` or
``password_file``. A page shows a shortened config; every config block it shows (in both
languages) must be contained in the example it links to, so the two cannot drift apart.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from agent.app.config import load_config
from agent.north.formats.build import build_format
from agent.north.formats.registry import available_formats, load_format
from agent.south.registry import load_drivers
from tests.doc_examples import ROOT, code_blocks, top_level_keys

DRIVERS = load_drivers()
FORMATS = sorted(available_formats())
PLATFORMS = ROOT / "docs" / "platforms"
ZH_PLATFORMS = ROOT / "docs" / "zh-CN" / "platforms"
EXAMPLES = ROOT / "config" / "examples"
EXAMPLE_FILES = sorted(EXAMPLES.glob("*.yaml"))
#: Pages that belong to no single format (no example file of their own).
GENERAL_PAGES = ("brokers",)
#: Sections a complete example has.
SECTIONS = {"agent", "mqtt", "buffer", "metrics", "devices"}
#: The only keys that may name a secret: they point to where it is, never hold it.
SECRET_WORD = re.compile(r"pass|secret|token|credential", re.I)
SECRET_POINTERS = {"password_env", "password_file", "token_ttl"}

#: Examples that show a format without its options on purpose: plain json is the contract as it
#: is (json-uns.yaml shows its options).
WITHOUT_OPTIONS = {"json"}

_yaml = YAML(typ="safe", pure=True)


def option_keys(name: str) -> set[str]:
    """The keys of the format's section ``mqtt.<name>`` (none when it has no section)."""
    options = load_format(name).Options
    return set() if options is None else set(options.model_fields)


def parse(text: str) -> Any:
    return _yaml.load(text)


def format_of(example: Path) -> str:
    """The format an example is for: its name, or its name's first part (json-uns.yaml)."""
    return example.stem.split("-", 1)[0]


def linked_examples(page: Path) -> list[Path]:
    """The example files a page links to, in the order it names them."""
    text = page.read_text(encoding="utf-8")
    targets = re.findall(r"\]\(([^)#\s]*config/examples/[^)#\s]+\.yaml)\)", text)
    return list(dict.fromkeys((page.parent / t).resolve() for t in targets))


def config_blocks(page: Path) -> list[Any]:
    """The page's YAML blocks that are a config file or its top-level sections, parsed."""
    found = []
    for block in code_blocks(page, ("yaml", "yml")):
        doc = parse(block.text)
        if isinstance(doc, dict) and doc and set(doc) <= top_level_keys(DRIVERS):
            found.append(doc)
    return found


def contained(part: Any, whole: Any) -> bool:
    """``part`` is ``whole`` or a piece of it: a mapping's keys with contained values, a list's
    items each contained in some item of the other list (order free), scalars equal."""
    if isinstance(part, dict):
        return isinstance(whole, dict) and all(
            k in whole and contained(v, whole[k]) for k, v in part.items()
        )
    if isinstance(part, list):
        return isinstance(whole, list) and all(any(contained(p, w) for w in whole) for p in part)
    return bool(part == whole and type(part) is type(whole))


def secret_keys(doc: Any, path: str = "") -> list[str]:
    """Keys anywhere in the document that look like they hold a secret."""
    found = []
    if isinstance(doc, dict):
        for key, value in doc.items():
            where = f"{path}.{key}" if path else str(key)
            if SECRET_WORD.search(str(key)) and key not in SECRET_POINTERS:
                found.append(where)
            found += secret_keys(value, where)
    elif isinstance(doc, list):
        for n, item in enumerate(doc):
            found += secret_keys(item, f"{path}[{n}]")
    return found


# -- every format has its page and its example ----------------------------------------------------


@pytest.mark.parametrize("name", FORMATS)
def test_every_format_has_a_page_in_both_languages(name: str) -> None:
    for page in (PLATFORMS / f"{name}.md", ZH_PLATFORMS / f"{name}.md"):
        assert page.exists(), f"format {name!r} has no page {page.relative_to(ROOT)}"
        text = page.read_text(encoding="utf-8")
        assert text.startswith("# "), f"{page.relative_to(ROOT)} starts with its # title"
        assert f"`format: {name}`" in text or f"format: {name}\n" in text, page


@pytest.mark.parametrize("name", FORMATS)
def test_every_format_has_a_complete_example_its_pages_link_to(name: str) -> None:
    example = EXAMPLES / f"{name}.yaml"
    assert example.exists(), f"format {name!r} has no example {example.relative_to(ROOT)}"
    for page in (PLATFORMS / f"{name}.md", ZH_PLATFORMS / f"{name}.md"):
        assert example in linked_examples(page), f"{page.relative_to(ROOT)} links to {example}"


def test_every_example_belongs_to_a_format_and_is_linked() -> None:
    """No orphan: an example is named after a registered format and its page links to it."""
    assert EXAMPLE_FILES
    for example in EXAMPLE_FILES:
        name = format_of(example)
        assert name in FORMATS, f"{example.name}: no format {name!r} is registered"
        for page in (PLATFORMS / f"{name}.md", ZH_PLATFORMS / f"{name}.md"):
            assert example in linked_examples(page), f"{page.relative_to(ROOT)} links to {example}"


def test_every_platform_page_has_a_chinese_twin() -> None:
    english = {p.name for p in PLATFORMS.glob("*.md")}
    assert english == {p.name for p in ZH_PLATFORMS.glob("*.md")}
    assert english == {f"{n}.md" for n in (*FORMATS, *GENERAL_PAGES)}


# -- each example is a whole config the loader accepts --------------------------------------------


@pytest.mark.parametrize("example", EXAMPLE_FILES, ids=lambda p: p.name)
def test_example_validates_and_builds_its_format(example: Path) -> None:
    config = load_config(example, DRIVERS, resolve_secrets=False)
    name = format_of(example)
    assert config.mqtt.format == name
    assert isinstance(build_format(config), load_format(name))
    assert config.devices, "an example has at least one device"


@pytest.mark.parametrize("example", EXAMPLE_FILES, ids=lambda p: p.name)
def test_example_is_complete_and_holds_no_secret(example: Path) -> None:
    text = example.read_text(encoding="utf-8")
    doc = parse(text)
    assert set(doc) >= SECTIONS, f"{example.name} lacks {sorted(SECTIONS - set(doc))}"
    name = format_of(example)
    assert doc["mqtt"].get("format") == name, "the example says its format explicitly"
    if example.stem not in WITHOUT_OPTIONS and option_keys(name) - {"max_payload"}:
        # The format's section (mqtt.<format>), where it has more to set than size limits.
        assert name in doc["mqtt"], f"{example.name}: no mqtt.{name} section"
    assert not secret_keys(doc), secret_keys(doc)
    mqtt = doc["mqtt"]
    tls = mqtt.get("tls") or {}
    # Authenticated the way a real broker or platform wants: a pointer to a secret, or a client
    # certificate (AWS IoT).
    assert {"password_env", "password_file"} & set(mqtt) or "cert_file" in tls, example.name
    assert "replace" in text, f"{example.name}: comments say what to replace"


# -- the pages show pieces of their examples ------------------------------------------------------


@pytest.mark.parametrize(
    "page",
    [d / f"{n}.md" for n in FORMATS for d in (PLATFORMS, ZH_PLATFORMS)],
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_the_page_shows_what_its_example_holds(page: Path) -> None:
    """Every config block on a format's page is contained in one of the examples it links to
    (the example adds TLS, secrets, buffer, metrics and devices around it)."""
    examples = [parse(p.read_text(encoding="utf-8")) for p in linked_examples(page)]
    blocks = config_blocks(page)
    assert examples
    for block in blocks:
        assert any(contained(block, ex) for ex in examples), (
            f"{page.relative_to(ROOT)}: a config block is not contained in "
            f"{[p.name for p in linked_examples(page)]}:\n{block}"
        )


@pytest.mark.parametrize("name", [*FORMATS, *GENERAL_PAGES])
def test_the_chinese_page_shows_the_same_configs(name: str) -> None:
    """The twin's examples are the same configs (only their comments are translated)."""
    english = [parse(b.text) for b in code_blocks(PLATFORMS / f"{name}.md", ("yaml", "yml"))]
    chinese = [parse(b.text) for b in code_blocks(ZH_PLATFORMS / f"{name}.md", ("yaml", "yml"))]
    assert english == chinese


def test_containment_refuses_what_differs() -> None:
    """The check above can fail: a changed value, a missing key or a missing list item."""
    whole = {"mqtt": {"host": "b", "tls": {}}, "devices": [{"name": "a"}, {"name": "b"}]}
    assert contained({"mqtt": {"host": "b"}, "devices": [{"name": "b"}]}, whole)
    assert not contained({"mqtt": {"host": "c"}}, whole)
    assert not contained({"mqtt": {"port": 1883}}, whole)
    assert not contained({"devices": [{"name": "c"}]}, whole)
    assert not contained({"mqtt": {"tls": {"verify": False}}}, whole)
    assert not contained({"x": 1}, {"x": True})  # YAML's 1 and true are different values


def test_secret_keys_are_found() -> None:
    assert secret_keys({"mqtt": {"password": "x", "password_file": "/f"}}) == ["mqtt.password"]
    assert secret_keys({"mqtt": {"azure": {"sas_token": "t"}}}) == ["mqtt.azure.sas_token"]
