"""The README's sections, for the tests that check each one tells the truth."""

from __future__ import annotations

from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


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
