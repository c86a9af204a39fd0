"""The README's sections, for the tests that check each one tells the truth."""

from __future__ import annotations

import re
import typing
from pathlib import Path

from pydantic import BaseModel

README = Path(__file__).resolve().parent.parent / "README.md"
#: The documentation pages (docs/), where the README's sections moved; doc tests read them.
DOCS = README.parent / "docs"


class ReadmeSection:
    """One or more consecutive ``## `` sections of README.md, read like a file (``read_text``) so
    a doc test reads the text the integrator reads."""

    suffix = ".md"

    def __init__(self, *titles: str) -> None:
        self.titles = titles
        self.name = " + ".join(titles)

    def read_text(self, encoding: str = "utf-8") -> str:
        text = README.read_text(encoding=encoding)
        return "".join(_section(text, title) for title in self.titles)

    def __repr__(self) -> str:
        return f"README:{self.name}"


def _section(text: str, title: str) -> str:
    start = text.index(f"\n## {title}\n") + 1
    end = text.find("\n## ", start)
    return text[start : end + 1] if end != -1 else text[start:]


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
