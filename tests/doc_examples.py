"""The documentation's code blocks, and how a YAML example becomes a config the loader can judge.

Shared by the doc tests (tests/test_docs_all.py checks every page; the page tests use the same
classifier). An example is judged by how it is built, the way a reader would paste it:

- a whole file, or the top-level sections of one (``agent:``, ``mqtt:``, ``devices:``...): used as
  it is, with ``agent: {id: doc}`` added when it has no ``agent`` section;
- a list of device entries (as they sit under ``devices:``): put under ``devices:``;
- a list of tags: the tags of a device of the first driver that takes them;
- keys of one device entry (``state:``, ``processing:``...): merged into a device of the first
  driver that takes them; a tag the keys name that the example does not show (a state rule's
  ``alarm_code``) is added as a plain numeric tag of that device, since the reader's device has it.

A YAML block that is deliberately not a config (a Prometheus rule, a docker compose file, a
Kubernetes manifest) says so with a comment on the line right before its fence, giving the reason:
``<!-- not-config: Prometheus alert rules -->``, or with its own first line
``# not-config: Prometheus alert rules``. Nothing is skipped without one of these.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

from agent.app.config import ConfigErrors, config_schema, load_config
from drivers.base import Driver

ROOT = Path(__file__).resolve().parent.parent
NOT_CONFIG = re.compile(r"^\s*(?:<!--\s*not-config:(.*?)-->|# not-config:(.*))\s*$")
AGENT = "agent:\n  id: doc\n"
DEVICE = "doc-device"


def pages() -> list[Path]:
    """Every page an integrator reads: both READMEs and everything under docs/."""
    found = [ROOT / "README.md", ROOT / "README.zh-CN.md", *sorted((ROOT / "docs").rglob("*.md"))]
    return [p for p in found if p.exists()]


@dataclass(frozen=True)
class Block:
    """One fenced code block of a page."""

    page: Path
    line: int  # of the opening fence, 1-based
    lang: str
    text: str  # dedented by the fence's own indentation
    before: str  # the last non-blank line before the fence

    def __str__(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"

    @property
    def not_config(self) -> str | None:
        """The reason given for a YAML block that is not a config, or None."""
        for line in (self.before, self.text.split("\n", 1)[0]):
            match = NOT_CONFIG.match(line)
            if match:
                return (match.group(1) or match.group(2) or "").strip()
        return None


_FENCE = re.compile(r"^( *)(```|~~~)[ \t]*([\w+-]*)[^\n]*\n(.*?)^\1\2[ \t]*$", re.S | re.M)


def code_blocks(page: Path, langs: tuple[str, ...] | None = None) -> list[Block]:
    """The page's fenced blocks (of these languages), with where they are."""
    text = page.read_text(encoding="utf-8")
    found = []
    for m in _FENCE.finditer(text):
        lang = m.group(3).lower()
        if langs is not None and lang not in langs:
            continue
        head = text[: m.start()]
        before = next((ln for ln in reversed(head.splitlines()) if ln.strip()), "")
        indent = len(m.group(1))
        body = "".join(ln[indent:] if ln[:indent].isspace() else ln for ln in _lines(m.group(4)))
        found.append(Block(page, head.count("\n") + 1, lang, body, before))
    return found


def _lines(text: str) -> Iterator[str]:
    yield from text.splitlines(keepends=True)


def without_code(text: str, *, inline: bool = True) -> str:
    """The page without fenced blocks (line count kept) and, with ``inline``, without code spans:
    links and headings inside code are examples, not part of the page."""
    text = _FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)
    return re.sub(r"(`+)(?:(?!\1).)+?\1", "", text) if inline else text


# -- YAML examples as configs --------------------------------------------------------------------


@dataclass(frozen=True)
class Minimal:
    """The least a device of a driver needs, to carry an example's tags or keys."""

    head: str  # the device's keys (besides name and driver), at column 0
    tag: Callable[[str], str]  # a plain numeric tag of that name, as a flow mapping
    tag_list_head: Callable[[list[str]], str] = lambda names: ""  # keys a tag list needs


#: Per registered driver (tests/test_docs_all.py fails for a driver missing here).
MINIMAL: dict[str, Minimal] = {
    "modbus": Minimal(
        "connection: {host: 127.0.0.1}\n",
        lambda n: f"{{name: {n}, table: holding, address: 0, type: uint16}}",
    ),
    "opcua": Minimal(
        'connection: {endpoint: "opc.tcp://127.0.0.1:4840"}\n',
        lambda n: f'{{name: {n}, node: "ns=2;s={n}"}}',
    ),
    "s7": Minimal(
        "connection: {host: 127.0.0.1}\n",
        lambda n: f"{{name: {n}, address: DB1.DBW0, type: INT}}",
    ),
    "dlt645": Minimal(
        'address: "210220003011"\nconnection: {port: /dev/ttyUSB0}\n',
        lambda n: f"{{name: {n}, di: active_energy_total}}",
    ),
    "mc": Minimal(
        "connection: {host: 127.0.0.1, port: 5007}\n",
        lambda n: f"{{name: {n}, address: D0, type: uint16}}",
    ),
    "serial": Minimal(
        "connection: {port: /dev/ttyUSB0}\n",
        lambda n: f"{{name: {n}, type: float64}}",
        # The tags' values come from the named groups of the pattern: one group per tag.
        lambda names: "match: '" + " ".join(rf"(?P<{n}>\S+)" for n in names) + "'\n",
    ),
}

_yaml = YAML(typ="safe", pure=True)


def _parse(text: str) -> Any:
    return _yaml.load(text)


_TOP_KEYS: dict[tuple[str, ...], set[str]] = {}


def top_level_keys(drivers: Mapping[str, type[Driver]]) -> set[str]:
    """The config file's sections (from its schema, so a new section counts at once)."""
    key = tuple(sorted(drivers))
    if key not in _TOP_KEYS:
        _TOP_KEYS[key] = set(config_schema(drivers)["properties"])
    return _TOP_KEYS[key]


def dedent(block: str) -> str:
    """The block moved left as far as its YAML lines allow (comment lines do not count: a
    fragment often starts with a comment at column 0)."""
    lines = block.splitlines(keepends=True)
    code = [ln for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    cut = min((len(ln) - len(ln.lstrip(" ")) for ln in code), default=0)
    return "".join(ln[cut:] if ln[:cut] == " " * cut else ln.lstrip(" ") for ln in lines)


def config_candidates(block: str, drivers: Mapping[str, type[Driver]]) -> list[str]:
    """Whole configs the example may be, in the order to try (one per driver for a fragment of a
    device); [] when its shape is none of the kinds above."""
    text = dedent(block)
    doc = _parse(text)
    if isinstance(doc, dict) and doc and set(doc) <= top_level_keys(drivers):
        return [text if "agent" in doc else AGENT + text]
    if isinstance(doc, list) and doc and all(isinstance(d, dict) for d in doc):
        if all("driver" in d for d in doc):
            return [AGENT + "devices:\n" + textwrap.indent(text, "  ")]
        if all("name" in d for d in doc):
            names = [str(d["name"]) for d in doc]
            return [_device(d, "", names, tags=text) for d in _drivers_for({}, drivers)]
    if isinstance(doc, dict) and doc:
        keys = set(doc)
        if not keys <= device_keys(drivers):
            return []
        return [_device(d, text, [], tags=None, keys=keys) for d in _drivers_for(doc, drivers)]
    return []


def _drivers_for(doc: dict[str, Any], drivers: Mapping[str, type[Driver]]) -> list[str]:
    named = doc.get("driver")
    return [str(named)] if named else [d for d in drivers if d in MINIMAL]


_DEVICE_KEYS: dict[tuple[str, ...], set[str]] = {}


def device_keys(drivers: Mapping[str, type[Driver]]) -> set[str]:
    """The keys a device entry of any driver takes (from the schema): an example made of such
    keys is part of a device; the loader then judges it as part of each driver's device."""
    key = tuple(sorted(drivers))
    if key not in _DEVICE_KEYS:
        schema = config_schema(drivers)
        refs = schema["properties"]["devices"]["items"].get("oneOf", [])
        models = [schema["$defs"][r["$ref"].rsplit("/", 1)[-1]] for r in refs if "$ref" in r]
        _DEVICE_KEYS[key] = {k for model in models for k in model.get("properties", {})}
    return _DEVICE_KEYS[key]


def _device(
    driver: str,
    keys_text: str,
    tag_names: list[str],
    *,
    tags: str | None,
    keys: Collection[str] = (),
) -> str:
    minimal = MINIMAL[driver]
    head = "".join(
        line for line in minimal.head.splitlines(keepends=True) if line.split(":", 1)[0] not in keys
    )
    if tags is not None:
        head += minimal.tag_list_head(tag_names)
    lines = [f"name: {DEVICE}\n" if "name" not in keys else "", f"driver: {driver}\n", head]
    lines = [ln for ln in lines if ln and not (ln.startswith("driver:") and "driver" in keys)]
    body = "".join(lines) + keys_text
    if tags is not None:
        body += "tags:\n" + textwrap.indent(tags, "  ")
    return AGENT + "devices:\n  - " + textwrap.indent(body, "    ")[4:]


_UNKNOWN_TAG = re.compile(r"unknown tag '([^']+)'")


def load_example(block: str, drivers: Mapping[str, type[Driver]], work: Path) -> Any:
    """The config the example is, loaded as ``edge-agent validate`` does (secrets not read).

    Raises AssertionError with every candidate's problems when none loads, or when the example's
    shape is none the module docstring lists."""
    candidates = config_candidates(block, drivers)
    assert candidates, (
        "not a config, a config's sections, a device list, a tag list or a device's keys; "
        "if it is deliberately not a config, put <!-- not-config: why --> before the block"
    )
    problems: list[str] = []
    for n, base in enumerate(candidates):
        device = _fragment_device(base)
        added: list[str] = []
        while True:
            text = base
            if added and device is not None:
                tag = MINIMAL[device["driver"]].tag
                text += "    tags:\n" + "".join(f"      - {tag(t)}\n" for t in added)
            path = work / f"example{n}.yaml"
            path.write_text(text, encoding="utf-8")
            try:
                return load_config(path, drivers, resolve_secrets=False)
            except ConfigErrors as exc:
                missing = [
                    m.group(1)
                    for i in exc.issues
                    if (m := _UNKNOWN_TAG.search(i.message)) and m.group(1) not in added
                ]
                if device is None or "tags" in device or not missing or len(added) > 50:
                    issues = [f"{i.line}:{i.col}: {i.path}: {i.message}" for i in exc.issues]
                    what = f"part of a {device['driver']} device" if device else "a config file"
                    problems.append(f"as {what}:\n  " + "\n  ".join(issues))
                    break
                added += missing
    raise AssertionError("\n".join(problems))


def _fragment_device(text: str) -> dict[str, Any] | None:
    """The device an example's keys were merged into (None for a file or a device list)."""
    devices = _parse(text).get("devices") or []
    if len(devices) == 1 and devices[0].get("name") == DEVICE and devices[0].get("driver"):
        return dict(devices[0])
    return None
