"""The one shape every configuration problem takes, whatever layer found it.

YAML syntax, duplicate keys, pydantic validation, cross-references and secrets all end up as
``ConfigIssue`` so the CLI prints them the same way and tests compare them the same way. The string
form ``FILE:LINE:COL: dotted.key.path: message`` is part of the public contract (INTERFACES.md):
editors and CI annotate files by parsing it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

#: Path shown for problems that belong to the YAML text rather than to a key.
YAML_PATH = "(yaml)"
#: Path shown for problems with the document as a whole (e.g. not a mapping).
ROOT_PATH = "(root)"


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    """One problem, at a 1-based line and column of ``file``."""

    file: str
    line: int
    col: int
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}: {self.path}: {self.message}"


class ConfigErrors(Exception):
    """Every problem found in one file (and the profile files it uses), sorted by file and then
    by position so the output reads top to bottom.

    Raised only after all checks ran: fixing a config should take one round trip, not one per
    error.
    """

    def __init__(self, issues: Iterable[ConfigIssue]) -> None:
        unique = dict.fromkeys(issues)  # identical issues from two layers are shown once
        self.issues: list[ConfigIssue] = sorted(unique, key=lambda i: (i.file, i.line, i.col))
        super().__init__("\n".join(str(i) for i in self.issues))
