"""Helpers for the doc tests that hold the documentation pages (docs/) to the code: where the
pages are, the keys a page writes as code, the keys a driver adds."""

from __future__ import annotations

import re
import typing
from pathlib import Path

from pydantic import BaseModel

README = Path(__file__).resolve().parent.parent / "README.md"
#: The documentation pages (docs/), where the README's sections moved; doc tests read them.
DOCS = README.parent / "docs"


def code_words(text: str) -> set[str]:
    """Every identifier a page writes as code (inline spans and fenced blocks): the keys it
    names."""
    code = re.findall(r"```.*?```|`[^`\n]+`", text, re.S)
    return {word for chunk in code for word in re.findall(r"[A-Za-z_][A-Za-z0-9_]*", chunk)}


def driver_keys(device_model: type[BaseModel]) -> set[str]:
    """The keys a driver adds to those every device and tag takes: the fields its own models
    (device, tag, connection and whatever else its package defines) declare beyond the bases."""
    package = device_model.__module__.rsplit(".", 1)[0]
    keys: set[str] = set()
    seen: set[type[BaseModel]] = set()

    def models(annotation: object) -> list[type[BaseModel]]:
        found = [annotation] if isinstance(annotation, type) else []
        for arg in typing.get_args(annotation):
            found += models(arg)
        return [m for m in found if isinstance(m, type) and issubclass(m, BaseModel)]

    def walk(model: type[BaseModel]) -> None:
        if model in seen or not model.__module__.startswith(package + "."):
            return
        seen.add(model)
        inherited = {n for base in model.__mro__[1:] for n in getattr(base, "model_fields", {})}
        for name, field in model.model_fields.items():
            if name not in inherited:
                keys.add(field.alias or name)
            for inner in models(field.annotation):
                walk(inner)

    walk(device_model)
    return keys
