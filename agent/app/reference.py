"""The configuration reference page (docs/reference/config.md), generated from the JSON Schema.

Why generated: the schema is built from the pydantic models the loader validates with, so a
page made from it lists exactly the keys, types, defaults and allowed values the agent accepts,
and a test (tests/test_reference_docs.py) fails when the committed page falls behind.

The page has one section per object of the config: the top-level sections (``agent``, ``mqtt``
and each format's options, ``buffer``, ``metrics``), every driver's device and profile entries
with their connection and tags, and, once, the sections several drivers share (processing,
alarms, machine state, command limits...), each row linking to the section it opens. It works on
any schema of this shape, so a new driver, format or section appears without a change here.

``python -m agent.app.reference`` (or ``edge-agent schema --markdown``) prints it for the installed
drivers; ``make reference`` writes it to docs/reference/config.md.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

Schema = dict[str, Any]

#: What a duration or a size looks like in the schema (a number, or a string matching this).
_DURATION_UNITS = "(ms|s|m|h|d)"
_SIZE_UNITS = "[KMGTkmgt]"

INTRO = """\
# Configuration reference

Every key of the config file: its type, default, allowed values and what it does, one section per
part of the file. This page is generated from the config's JSON Schema (`edge-agent schema`,
committed as `config/schema.json`), which is built from the models the agent validates with, so
it lists exactly what `edge-agent validate` accepts. Do not edit it by hand: run
`make reference` (or `edge-agent schema --markdown > docs/reference/config.md`).

How to read the tables: *required* keys must be written; *optional* ones may be left out (a list
is then empty, a section takes its own defaults, the description says what else applies); *none*
means the key is off or derived from another one (the description says which) unless you set it.
A **duration** is a number of
seconds or a string such as `250ms`, `1s`, `5m`, `2h`, `1d`; a **size** is a number of bytes or a
string such as `512KB`, `256MB`, `1GiB`; a **name** matches `[A-Za-z0-9_.-]+`, so it is safe in
MQTT topics. Unknown keys and duplicate keys are errors.
"""


def config_reference(schema: Schema) -> str:
    """The Markdown page for ``schema`` (as ``edge-agent schema`` prints it)."""
    return _Page(schema).render()


def main() -> int:
    """Print the page for the installed drivers (what ``edge-agent schema`` describes)."""
    from agent.app.config import config_schema
    from agent.south.registry import load_drivers

    sys.stdout.write(config_reference(config_schema(load_drivers())))
    return 0


# -- the walk -------------------------------------------------------------------------------------

SHARED = "Sections shared by several drivers"
SHARED_INTRO = (
    "These sections appear in more than one driver's devices or tags (and so in their profiles); "
    "each is described once, here. *Used in* says where."
)
NAME_PATTERN = "^[A-Za-z0-9_.-]+$"


@dataclass
class _Section:
    """One heading of the page: an object of the config at ``path``."""

    path: str
    node: Schema  # the object's schema (a $defs entry, or an inline object)
    level: int
    heading: str
    anchor: str
    label: str  # the link text of a key that opens this section
    shared: bool = False
    used_in: list[str] = field(default_factory=list)  # anchors of the sections linking here


def _driver_of(model: Schema, name: str) -> str:
    """The driver a device or profile model is for: its ``driver`` key's only allowed value
    (the model's name when the schema does not say)."""
    driver = model.get("properties", {}).get("driver", {})
    if "const" in driver:
        return str(driver["const"])
    if len(driver.get("enum", [])) == 1:
        return str(driver["enum"][0])
    return name


def _ref_name(node: Schema) -> str | None:
    ref = node.get("$ref")
    return ref.rsplit("/", 1)[-1] if isinstance(ref, str) else None


def _without_null(options: list[Schema]) -> list[Schema]:
    return [o for o in options if o.get("type") != "null"]


def _children(node: Schema) -> Iterator[tuple[str, Schema]]:
    """The objects a property's schema opens, with the path suffix each is reached by: ``""``
    (the property is the object), ``"[]"`` (a list of them), ``".<name>"`` (a map of them)."""
    if "$ref" in node or (node.get("type") == "object" and "properties" in node):
        yield "", node
        return
    for key in ("anyOf", "oneOf"):
        for option in _without_null(node.get(key, [])):
            yield from _children(option)
    items = node.get("items")
    if isinstance(items, dict):
        for suffix, child in _children(items):
            yield "[]" + suffix, child
    values = list(node.get("patternProperties", {}).values())
    if isinstance(node.get("additionalProperties"), dict):
        values.append(node["additionalProperties"])
    for value in values:
        for suffix, child in _children(value):
            yield ".<name>" + suffix, child


class _Page:
    """The sections in page order: the top-level keys' objects (devices before profiles, whose
    tags are the devices'), each followed by the objects it opens; then the shared ones."""

    def __init__(self, schema: Schema) -> None:
        self.schema = schema
        self.defs: dict[str, Schema] = schema.get("$defs", {})
        self.top: dict[str, Schema] = schema.get("properties", {})
        self.sections: list[_Section] = []
        self.section_of: dict[str, _Section] = {}  # def name -> its section
        self.uses: dict[str, list[str]] = {}  # shared def name -> anchors of its users
        self.shared_keys: dict[str, str] = {}  # shared def name -> the key it was first met at
        self._slugs: dict[str, int] = {}
        self.shared = self._shared_defs()

    def _variants(self, prop: Schema) -> list[tuple[str, str]]:
        """(driver, def name) when ``prop`` is a list or map of entries that are one of several
        driver models (``devices``, ``profiles``)."""
        found: list[tuple[str, str]] = []
        holders = [prop.get("items"), *prop.get("patternProperties", {}).values()]
        for holder in holders:
            for option in holder.get("oneOf", []) if isinstance(holder, dict) else []:
                name = _ref_name(option)
                if name is not None:
                    found.append((_driver_of(self.defs[name], name), name))
        return found

    def _shared_defs(self) -> set[str]:
        """Definitions reached from more than one part of the file (a top-level key, or a
        driver: its devices and profiles count as one). Each gets one neutral section instead of
        living under the first driver's heading."""
        owners: dict[str, set[str]] = {}

        def visit(node: Schema, owner: str) -> None:
            for _, child in _children(node):
                name = _ref_name(child)
                target = self.defs.get(name, {}) if name is not None else child
                if name is not None:
                    seen = owners.setdefault(name, set())
                    if owner in seen:
                        continue
                    seen.add(owner)
                for prop in target.get("properties", {}).values():
                    visit(prop, owner)

        for key, prop in self.top.items():
            variants = self._variants(prop)
            for driver, name in variants:
                visit({"$ref": f"#/$defs/{name}"}, f"driver:{driver}")
            if not variants:
                visit(prop, key)
        return {name for name, seen in owners.items() if len(seen) > 1}

    def _add(
        self, path: str, node: Schema, level: int, driver: str | None, shared: bool
    ) -> _Section:
        heading = f"`{path}`" + (f" (driver: {driver})" if driver else "")
        base = slug(heading)
        n = self._slugs.get(base, 0)
        self._slugs[base] = n + 1
        anchor = base if n == 0 else f"{base}-{n}"
        label = f"{driver} entry" if level == 2 and driver else _label(path)
        section = _Section(path, node, level, heading, anchor, label, shared)
        self.sections.append(section)
        return section

    def _nested(self, parent: _Section, driver: str | None) -> None:
        """Sections for the objects ``parent``'s keys open, right after it (depth first)."""
        for key, prop in parent.node.get("properties", {}).items():
            for suffix, child in _children(prop):
                name = _ref_name(child)
                target = self.defs.get(name, {}) if name is not None else child
                if "properties" not in target:
                    continue
                if name is not None and name in self.section_of:
                    self.section_of[name].used_in.append(parent.anchor)
                    continue
                if name is not None and name in self.shared and not parent.shared:
                    self.shared_keys.setdefault(name, f"{key}{suffix}")
                    self.uses.setdefault(name, []).append(parent.anchor)
                    continue
                path = f"{parent.path}.{key}{suffix}"
                section = self._add(path, target, 3, driver, parent.shared)
                section.used_in.append(parent.anchor)
                if name is not None:
                    self.section_of[name] = section
                self._nested(section, driver)

    def _build(self) -> None:
        with_variants = sorted(
            ((k, p) for k, p in self.top.items() if self._variants(p)),
            key=lambda kp: "items" not in kp[1],  # lists (devices) before maps (profiles)
        )
        for key, prop in self.top.items():
            if self._variants(prop):
                continue
            for suffix, child in _children(prop):
                name = _ref_name(child)
                target = self.defs.get(name, {}) if name is not None else child
                if "properties" not in target or (name is not None and name in self.section_of):
                    continue
                section = self._add(f"{key}{suffix}", target, 2, None, False)
                if name is not None:
                    self.section_of[name] = section
                self._nested(section, None)
        for key, prop in with_variants:
            path = f"{key}[]" if "items" in prop else f"{key}.<name>"
            for driver, name in self._variants(prop):
                section = self._add(path, self.defs[name], 2, driver, False)
                self.section_of[name] = section
                self._nested(section, driver)
        for name, key in self.shared_keys.items():
            if name in self.section_of:  # met inside an earlier shared section
                continue
            section = self._add(key, self.defs[name], 3, None, True)
            self.section_of[name] = section
            self._nested(section, None)
        for name, anchors in self.uses.items():
            used = self.section_of[name].used_in
            used[:0] = [a for a in anchors if a not in used]

    # -- rendering ------------------------------------------------------------------------------

    def render(self) -> str:
        self._build()
        out = [INTRO, self._top_table()]
        shared_started = False
        for section in self.sections:
            if section.shared and not shared_started:
                shared_started = True
                out.append(f"## {SHARED}\n\n{SHARED_INTRO}\n")
            out.append(self._section(section))
        return "\n".join(out).rstrip("\n") + "\n"

    def _top_table(self) -> str:
        lines = ["## The file\n", "The top-level keys; each opens a section below.\n"]
        lines.extend(self._table(self.schema))
        for key, prop in self.top.items():
            variants = self._variants(prop)
            if not variants:
                continue
            what = "entry of the list" if "items" in prop else "value of the map (one per name)"
            links = ", ".join(
                f"[{driver}](#{self.section_of[name].anchor})" for driver, name in variants
            )
            lines.append(
                f"\nEach {what} `{key}` is one of these, chosen by its `driver` key: {links}."
            )
        return "\n".join(lines) + "\n"

    def _section(self, section: _Section) -> str:
        lines = ["#" * section.level + f" {section.heading}\n"]
        description = section.node.get("description")
        if description:
            lines.append(_prose(description) + "\n")
        used = [a for a in dict.fromkeys(section.used_in) if a != section.anchor]
        if len(used) > 1 or section.shared:
            titles = {s.anchor: s.heading for s in self.sections}
            links = ", ".join(f"[{titles[a]}](#{a})" for a in used)
            lines.append(f"Used in: {links}.\n")
        lines.extend(self._table(section.node))
        return "\n".join(lines) + "\n"

    def _table(self, node: Schema) -> list[str]:
        rows = ["| key | type | default | allowed values | description |", "|---|---|---|---|---|"]
        required = set(node.get("required", []))
        for key, prop in node.get("properties", {}).items():
            described = prop.get("description")
            name = next((n for _, c in _children(prop) if (n := _ref_name(c))), None)
            if not described and name is not None:
                described = _first_sentence(self.defs.get(name, {}).get("description", ""))
            cells = [
                f"`{key}`",
                self._type(prop),
                "required" if key in required else _default(prop),
                _allowed(prop),
                _prose(described or ""),
            ]
            rows.append("| " + " | ".join(_cell(c) for c in cells) + " |")
        return rows

    def _type(self, node: Schema) -> str:
        name = _ref_name(node)
        if name is not None:
            section = self.section_of.get(name)
            return f"[{section.label}](#{section.anchor})" if section is not None else "object"
        options = _without_null(node.get("anyOf", []))
        if _is_duration(node):
            return "duration"
        if _is_size(node):
            return "size"
        if options:
            return " or ".join(dict.fromkeys(self._type(o) for o in options))
        if node.get("oneOf"):
            return " or ".join(dict.fromkeys(self._type(o) for o in node["oneOf"]))
        kind = node.get("type")
        if kind == "array":
            if "prefixItems" in node:
                return f"list [{', '.join(self._type(i) for i in node['prefixItems'])}]"
            items = node.get("items")
            return f"list of {self._type(items)}" if isinstance(items, dict) else "list"
        if kind == "object" or "patternProperties" in node:
            values = [*node.get("patternProperties", {}).values()]
            if isinstance(node.get("additionalProperties"), dict):
                values.append(node["additionalProperties"])
            if values:
                return "map of name to " + " or ".join(dict.fromkeys(self._type(v) for v in values))
            return "object"
        if node.get("format") == "path":
            return "path"
        if kind == "string" and node.get("pattern") == NAME_PATTERN:
            return "name"
        if isinstance(kind, list):
            return " or ".join(str(k) for k in kind)
        if kind is None and "enum" in node:
            kinds = set(map(_json_type, node["enum"]))
            return "number" if kinds == {"integer", "number"} else " or ".join(sorted(kinds))
        if kind is None and "const" in node:
            return _json_type(node["const"])
        return str(kind) if kind else "any"


# -- cells ----------------------------------------------------------------------------------------


def _is_duration(node: Schema) -> bool:
    return any(_DURATION_UNITS in o.get("pattern", "") for o in _flat(node))


def _is_size(node: Schema) -> bool:
    return any(_SIZE_UNITS in o.get("pattern", "") for o in _flat(node))


def _flat(node: Schema) -> list[Schema]:
    """``node``'s non-null alternatives, nested anyOf flattened."""
    options = _without_null(node.get("anyOf", []))
    if not options:
        return [node]
    return [leaf for o in options for leaf in _flat(o)]


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    return "string"


def _literal(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, str):
        return f"`{value}`" if value else '`""`'
    return f"`{json.dumps(value, ensure_ascii=False)}`"


def _default(node: Schema) -> str:
    if "default" not in node:
        return "optional"
    value = node["default"]
    if isinstance(value, list | dict) and not value:
        return "empty"
    return _literal(value)


def _number(value: Any) -> str:
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def _allowed(node: Schema) -> str:
    """Enum or const values, ranges, lengths and patterns, from every non-null alternative."""
    parts: list[str] = []
    for option in _flat(node):
        parts.extend(_constraints(option))
    return "; ".join(dict.fromkeys(parts))


def _constraints(node: Schema) -> list[str]:
    found: list[str] = []
    if "enum" in node:
        found.append(", ".join(_literal(v) for v in node["enum"]))
    if "const" in node:
        found.append(_literal(node["const"]))
    low = (">", node["exclusiveMinimum"]) if "exclusiveMinimum" in node else None
    low = low or ((">=", node["minimum"]) if "minimum" in node else None)
    high = ("<", node["exclusiveMaximum"]) if "exclusiveMaximum" in node else None
    high = high or (("<=", node["maximum"]) if "maximum" in node else None)
    if low and high and low[0] == ">=" and high[0] == "<=":
        found.append(f"{_number(low[1])} to {_number(high[1])}")
    else:
        found.extend(f"{bound[0]} {_number(bound[1])}" for bound in (low, high) if bound)
    pattern = node.get("pattern", "")
    if pattern and pattern != NAME_PATTERN and not _is_duration(node) and not _is_size(node):
        found.append(f"matches `{pattern}`")
    if node.get("pattern") == NAME_PATTERN and node.get("maxLength"):
        found.append(f"at most {node['maxLength']} characters")
    elif "minLength" in node or "maxLength" in node:
        low_len, high_len = node.get("minLength"), node.get("maxLength")
        if high_len is not None and low_len:
            found.append(f"{low_len} to {high_len} characters")
        elif high_len is not None:
            found.append(f"at most {high_len} characters")
        elif low_len:
            found.append("not empty" if low_len == 1 else f"at least {low_len} characters")
    if "minItems" in node and "prefixItems" not in node:
        found.append(f"at least {node['minItems']} item" + ("s" if node["minItems"] != 1 else ""))
    if "maxItems" in node and "prefixItems" not in node:
        found.append(f"at most {node['maxItems']} items")
    items = node.get("items")
    if isinstance(items, dict) and "$ref" not in items and _allowed(items):
        found.extend(_allowed(items).split("; "))
    return found


def _label(path: str) -> str:
    """The link text for a section: the key that opens it (``tags`` for ``devices[].tags[]``)."""
    keys = [k.removesuffix("[]") for k in path.split(".") if k != "<name>"]
    return keys[-1]


def _prose(text: str) -> str:
    """A description as Markdown: reStructuredText ``literals`` become `code`, lines join, and
    ``<`` outside code is escaped (``<agent.id>`` would otherwise vanish as an HTML tag)."""
    text = re.sub(r"``(.+?)``", r"`\1`", text, flags=re.S)
    pieces = re.split(r"(`[^`]*`)", text)
    text = "".join(p if p.startswith("`") else p.replace("<", "&lt;") for p in pieces)
    paragraphs = [" ".join(p.split()) for p in re.split(r"\n\s*\n", text.strip())]
    return "\n\n".join(p for p in paragraphs if p)


def _first_sentence(text: str) -> str:
    prose = _prose(text).split("\n\n")[0]
    match = re.match(r"(.+?\.)(\s|$)", prose)
    return match.group(1) if match else prose


def _cell(text: str) -> str:
    """One table cell: no line breaks, pipes escaped (also inside code spans, as GitHub wants)."""
    return " ".join(text.split()).replace("|", "\\|")


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


if __name__ == "__main__":
    sys.exit(main())
