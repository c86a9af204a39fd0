"""YAML to plain Python data, remembering where every key and value was written.

pydantic reports problems by path (``devices.0.tags.3.type``); people fix files by line. So the
document is composed into ruamel.yaml's node graph (which keeps a mark on every node) and built
into plain dicts and lists here, recording the key mark and the value mark of every path. Building
the data ourselves, rather than letting a constructor do it, is also what lets us report *every*
duplicate key instead of stopping at the first one, and keep YAML merge keys (``<<: *base``)
working alongside that check.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from agent.app.config.errors import ROOT_PATH, YAML_PATH, ConfigErrors, ConfigIssue

#: A location in the data: mapping keys and list indices, outermost first.
DataPath = tuple[str | int, ...]

_MERGE_TAG = "tag:yaml.org,2002:merge"
_TIMESTAMP_TAG = "tag:yaml.org,2002:timestamp"
_NULL_TAG = "tag:yaml.org,2002:null"
# Aliases can multiply a small file into a huge structure ("billion laughs"); no real config comes
# near this many nodes.
_MAX_NODES = 200_000
EMPTY_MESSAGE = "the file is empty: a config needs at least 'agent: {id: ...}'"


class Mark(NamedTuple):
    """A 1-based line and column."""

    line: int
    col: int


@dataclass(frozen=True, slots=True)
class Positions:
    """Where each path's key and value were written. The root has a value mark only."""

    keys: dict[DataPath, Mark] = field(default_factory=dict)
    values: dict[DataPath, Mark] = field(default_factory=dict)

    def value(self, path: DataPath) -> Mark:
        """The value's mark, or the nearest enclosing one: a path pydantic invented (a default it
        filled in) still gets a useful position."""
        for end in range(len(path), -1, -1):
            mark = self.values.get(path[:end])
            if mark is not None:
                return mark
        return Mark(1, 1)

    def key(self, path: DataPath) -> Mark:
        """The key's mark; falls back to the value's for list items, which have no key."""
        return self.keys.get(path) or self.value(path)


@dataclass(frozen=True, slots=True)
class Document:
    """A parsed file: its data and where each part of it was written."""

    data: Any
    positions: Positions
    #: Problems that did not stop parsing (duplicate keys, unreadable values): the data is still
    #: checked so they are reported together with everything else.
    issues: list[ConfigIssue] = field(default_factory=list)


def _mark(node: Node) -> Mark:
    return Mark(node.start_mark.line + 1, node.start_mark.column + 1)


def dotted(path: DataPath) -> str:
    """The path as the contract prints it: ``devices.1.tags.3.type``. A key that is empty (or
    would read as a separator) is quoted, so the path is never blank or ambiguous."""
    if not path:
        return ROOT_PATH
    return ".".join(
        repr(p) if p == "" or (isinstance(p, str) and "." in p) else str(p) for p in path
    )


class _Builder:
    """One use: turns one composed document into data, collecting issues instead of raising."""

    def __init__(self, file: str, yaml: YAML) -> None:
        self.file = file
        self.constructor = yaml.constructor
        self.positions = Positions()
        self.issues: list[ConfigIssue] = []
        self._active: set[int] = set()
        self._count = 0

    def issue(self, mark: Mark, path: DataPath, message: str) -> None:
        self.issues.append(ConfigIssue(self.file, mark.line, mark.col, dotted(path), message))

    def build(self, node: Node, path: DataPath) -> Any:
        mark = _mark(node)
        if node.tag == _NULL_TAG and node.value == "" and path in self.positions.keys:
            # `agent:` with nothing after it: ruamel marks where the next token starts, often the
            # next key's line; the key itself is where the user has to write the value.
            mark = self.positions.keys[path]
        self.positions.values[path] = mark
        self._count += 1
        if self._count > _MAX_NODES:
            raise _TooLarge(node)
        if id(node) in self._active:
            self.issue(_mark(node), path, "an alias refers to the mapping or list containing it")
            return None
        if isinstance(node, ScalarNode):
            return self._scalar(node, path)
        self._active.add(id(node))
        try:
            if isinstance(node, SequenceNode):
                return [self.build(item, (*path, i)) for i, item in enumerate(node.value)]
            if isinstance(node, MappingNode):
                return self._mapping(node, path)
        finally:
            self._active.discard(id(node))
        self.issue(_mark(node), path, f"unsupported YAML node {node.tag!r}")
        return None

    def _scalar(self, node: ScalarNode, path: DataPath) -> Any:
        if node.tag == _TIMESTAMP_TAG:
            # No config key is a date: keep what was written, so a description or a string tag
            # value that happens to look like a date is not silently turned into one.
            return str(node.value)
        try:
            return self.constructor.construct_object(node, deep=True)
        except YAMLError as exc:
            self.issue(_mark(node), path, f"cannot read this value: {_problem(exc)}")
            return None

    def _key(self, node: Node, path: DataPath) -> str | None:
        if not isinstance(node, ScalarNode):
            self.issue(_mark(node), path, "a key must be a plain scalar, not a mapping or list")
            return None
        # A key is whatever was written: ``1:`` or ``null:`` become "1" and "null", never an int
        # or None, so every key can be named in a dotted path and compared with field names.
        return str(node.value)

    def _mapping(self, node: MappingNode, path: DataPath) -> dict[str, Any]:
        result: dict[str, Any] = {}
        first_line: dict[str, int] = {}
        merges: list[Node] = []
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                merges.append(value_node)
                continue
            key = self._key(key_node, path)
            if key is None:
                continue
            child = (*path, key)
            if key in first_line:
                self.issue(
                    _mark(key_node),
                    child,
                    f"duplicate key {key!r} (first at line {first_line[key]})",
                )
                continue
            first_line[key] = _mark(key_node).line
            self.positions.keys[child] = _mark(key_node)
            result[key] = self.build(value_node, child)
        for source in self._merge_sources(merges, path):
            for key_node, value_node in source.value:
                key = self._key(key_node, path)
                # Explicit keys win over merged ones, and earlier merge sources over later ones:
                # that is YAML's merge rule, and none of it is a duplicate.
                if key is None or key in result:
                    continue
                child = (*path, key)
                self.positions.keys[child] = _mark(key_node)
                result[key] = self.build(value_node, child)
        return result

    def _merge_sources(self, merges: list[Node], path: DataPath) -> list[MappingNode]:
        sources: list[MappingNode] = []
        for merge in merges:
            items = merge.value if isinstance(merge, SequenceNode) else [merge]
            for item in items:
                if isinstance(item, MappingNode):
                    sources.append(item)
                else:
                    self.issue(_mark(item), path, "'<<' merges a mapping or a list of mappings")
        return sources


class _TooLarge(Exception):
    def __init__(self, node: Node) -> None:
        super().__init__()
        self.node = node


def _problem(exc: YAMLError) -> str:
    if isinstance(exc, MarkedYAMLError):
        parts = [p for p in (exc.context, exc.problem) if p]
        if parts:
            return "; ".join(str(p) for p in parts)
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def parse_yaml(text: str, file: str) -> Document:
    """Parse one YAML document.

    Syntax errors stop parsing, so they are raised (as ``ConfigErrors``) alone; duplicate keys and
    unreadable values are collected in ``Document.issues`` and the first occurrence is kept.
    """
    yaml = YAML(typ="safe", pure=True)
    try:
        node = yaml.compose(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
        raise ConfigErrors([ConfigIssue(file, line, col, YAML_PATH, _problem(exc))]) from None
    except YAMLError as exc:
        raise ConfigErrors([ConfigIssue(file, 1, 1, YAML_PATH, _problem(exc))]) from None
    if node is None:
        raise ConfigErrors([ConfigIssue(file, 1, 1, ROOT_PATH, EMPTY_MESSAGE)])
    builder = _Builder(file, yaml)
    try:
        data = builder.build(node, ())
    except _TooLarge as exc:
        mark = _mark(exc.node)
        message = f"the document expands to more than {_MAX_NODES} values (aliases?)"
        raise ConfigErrors([ConfigIssue(file, mark.line, mark.col, YAML_PATH, message)]) from None
    return Document(data, builder.positions, builder.issues)
