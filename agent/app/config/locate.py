"""pydantic errors to ``ConfigIssue``s at the line and column the user has to edit.

pydantic's ``loc`` is a path through the *model*, which is not quite a path through the *file*:
tagged unions add the tag (``('devices', 0, 'modbus', 'connection', 'port')``), dict key errors add
``'[key]'``, and a missing key is by definition not in the file. So the loc is walked against the
data and whatever is not a key or index there is dropped; the error type then decides whether the
key, the value, or the enclosing mapping is the place to point at.
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, Tag
from pydantic_core import ErrorDetails

from agent.app.config.errors import ConfigIssue
from agent.app.config.models import KEY_ERROR
from agent.app.config.yamlpos import DataPath, Document, Mark, Positions, dotted

_PREFIXES = ("Value error, ", "Assertion failed, ")
_INSTANCE_OF = re.compile(r" or instance of \w+")


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a part of the data was written when it is not the config file itself: a profile
    file it includes, or a profile's ``defaults:`` a device inherited. ``path`` is that part's
    path in ``file``; issues inside it are reported there, with that file's own path."""

    file: str
    positions: Positions
    path: DataPath


class Locator:
    """Turns paths in the data into issues at their positions: in the config file, or in the
    file a part of the data came from (``origins``, keyed by the part's path in the data)."""

    def __init__(
        self, file: str, document: Document, origins: Mapping[DataPath, Origin] | None = None
    ) -> None:
        self.file = file
        self.document = document
        self.origins: dict[DataPath, Origin] = dict(origins or {})

    def at_value(self, path: DataPath, message: str) -> ConfigIssue:
        return self._issue(path, message, on_key=False)

    def at_key(self, path: DataPath, message: str) -> ConfigIssue:
        return self._issue(path, message, on_key=True)

    def where(self, path: DataPath) -> str:
        """``line N`` of the config file, or ``FILE line N`` of another, for messages that
        point at a second place."""
        file, positions, inner = self._source(path)
        line = positions.value(inner).line
        return f"line {line}" if file == self.file else f"{file} line {line}"

    def line(self, path: DataPath) -> int:
        """The line of ``path``'s value in whichever file it was written."""
        _, positions, inner = self._source(path)
        return positions.value(inner).line

    def _source(self, path: DataPath) -> tuple[str, Positions, DataPath]:
        for end in range(len(path), 0, -1):
            origin = self.origins.get(path[:end])
            if origin is not None:
                return origin.file, origin.positions, (*origin.path, *path[end:])
        return self.file, self.document.positions, path

    def _issue(
        self, path: DataPath, message: str, *, on_key: bool, missing: str | None = None
    ) -> ConfigIssue:
        file, positions, inner = self._source(path)
        mark: Mark = positions.key(inner) if on_key else positions.value(inner)
        shown = inner if missing is None else (*inner, missing)
        return ConfigIssue(file, mark.line, mark.col, dotted(shown), message)

    def from_pydantic(
        self, errors: Iterable[ErrorDetails], model: type[BaseModel]
    ) -> list[ConfigIssue]:
        return [self._one(error, model) for error in errors]

    def _one(self, error: ErrorDetails, model: type[BaseModel]) -> ConfigIssue:
        loc = tuple(error["loc"])
        path, on_key = walk(self.document.data, loc)
        kind = error["type"]
        message = error["msg"]
        for prefix in _PREFIXES:
            message = message.removeprefix(prefix)
        # Class names mean nothing to someone editing YAML.
        message = _INSTANCE_OF.sub("", message)
        ctx = error.get("ctx") or {}
        if kind == "missing" and loc and isinstance(loc[-1], str):
            # Point at the mapping that lacks the key; name the key in the path so the line reads
            # as what to add where.
            return self._issue(
                path, f"missing required key {loc[-1]!r}", on_key=False, missing=loc[-1]
            )
        if kind == "extra_forbidden" and path:
            key = str(path[-1])
            return self.at_key(
                path, f"unknown key {key!r}{suggest(key, fields_at(model, loc[:-1]))}"
            )
        if kind == KEY_ERROR and isinstance(ctx.get("key"), str):
            key_path = (*path, ctx["key"])
            return self.at_key(key_path, str(ctx.get("message", message)))
        if on_key:
            return self.at_key(path, message)
        return self.at_value(path, message)


def walk(data: Any, loc: tuple[int | str, ...]) -> tuple[DataPath, bool]:
    """The part of ``loc`` that exists in ``data``, and whether the error is about a dict key."""
    path: list[str | int] = []
    current = data
    on_key = False
    for element in loc:
        if _has(current, element):
            current = current[element]
            path.append(element)
        elif element == "[key]":
            on_key = True
        # Anything else is a union tag or a validator's name: not part of the file.
    return tuple(path), on_key


def _has(container: Any, element: int | str) -> bool:
    if isinstance(container, dict):
        return isinstance(element, str) and element in container
    if isinstance(container, list):
        return type(element) is int and 0 <= element < len(container)
    return False


def suggest(word: str, candidates: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` when some candidate is close, else ``""``: most unknown keys
    and names are typos of a valid one."""
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def fields_at(model: type[BaseModel], loc: tuple[int | str, ...]) -> list[str]:
    """The keys allowed at ``loc``: walks the model's types the way pydantic walked the data."""
    tp: Any = model
    for element in loc:
        tp = _descend(tp, element)
        if tp is None:
            return []
    tp = _unwrap(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        models = [m for m in typing.get_args(tp) if _unwrap(m) is not type(None)]
        tp = _unwrap(models[0]) if len(models) == 1 else None
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return [f.alias or name for name, f in tp.model_fields.items() if not f.exclude]
    return []


def _unwrap(tp: Any) -> Any:
    while typing.get_origin(tp) is typing.Annotated:
        tp = typing.get_args(tp)[0]
    return tp


def _tag_of(tp: Any) -> str | None:
    if typing.get_origin(tp) is typing.Annotated:
        for meta in typing.get_args(tp)[1:]:
            if isinstance(meta, Tag):
                return meta.tag
    return None


def _descend(tp: Any, element: int | str) -> Any:
    tp = _unwrap(tp)
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        members = typing.get_args(tp)
        for member in members:
            if _tag_of(member) == element:
                return member
        models = [m for m in members if _unwrap(m) is not type(None)]
        if len(models) == 1:  # Optional[X]: the loc goes straight on into X
            return _descend(models[0], element)
        return None
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        field = tp.model_fields.get(str(element))
        return None if field is None else field.annotation
    args = typing.get_args(tp)
    if isinstance(element, int) and args and origin is not None and not _is_mapping(origin):
        return args[0]
    if isinstance(element, str) and len(args) == 2 and origin is not None and _is_mapping(origin):
        return args[1]
    return None


def _is_mapping(origin: Any) -> bool:
    return isinstance(origin, type) and issubclass(origin, Mapping)
