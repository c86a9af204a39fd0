"""docs/architecture.md tells the truth: the rooms it names exist and the import rules hold.

The rules are read from the code (every module's imports, parsed, not run), so a new module is
held to them without editing this test; an import needed only for type checking (under
``if TYPE_CHECKING:``) is not a dependency at run time and is left out.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "architecture.md"
PACKAGES = ("agent", "drivers", "simulators")
ROOMS = ("app", "south", "core", "north", "ops")
#: (importing room, imported room) pairs the page's third rule forbids.
FORBIDDEN = {
    ("core", "app"),
    ("core", "south"),
    ("core", "north"),
    ("south", "app"),
    ("south", "north"),
    ("north", "app"),
    ("north", "south"),
    ("ops", "app"),
}


def _table_rows() -> list[tuple[str, str]]:
    text = PAGE.read_text()
    section = text.split("## The rooms", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 2 and cells[0].startswith("`"):
            rows.append((cells[0], cells[1]))
    return rows


def test_every_room_the_page_names_exists() -> None:
    rows = _table_rows()
    assert len(rows) >= 10
    for rooms, contents in rows:
        for room in re.findall(r"`([^`]+/)`", rooms):
            assert (ROOT / room).is_dir(), f"docs/architecture.md names {room}, which is missing"
            if room.startswith("agent/"):
                # The files and folders it lists for an agent room are there too.
                for name in re.findall(r"`([\w.]+(?:\.py|/))`", contents):
                    assert (ROOT / room / name).exists(), f"{room}{name} (docs/architecture.md)"


def test_agent_is_laid_out_by_direction() -> None:
    """A newcomer listing agent/ sees the directions as folders and no loose modules."""
    entries = {p.name for p in (ROOT / "agent").iterdir() if p.name != "__pycache__"}
    assert entries == {"__init__.py", "__main__.py", *ROOMS}


def _modules() -> Iterator[tuple[str, Path]]:
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).with_suffix("")
            parts = list(rel.parts)
            if parts[-1] == "__init__":
                parts.pop()
            yield ".".join(parts), path


MODULES = dict(_modules())


def _runtime_imports(module: str, path: Path) -> set[str]:
    """Modules of this project that ``module`` imports when it runs (not only for typing)."""
    tree = ast.parse(path.read_text(), str(path))
    typing_only: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            typing_only.update(id(n) for body in node.body for n in ast.walk(body))
    found: set[str] = set()
    is_package = path.name == "__init__.py"
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = module.split(".")
                parent = parent[: len(parent) - node.level + (1 if is_package else 0)]
                base = ".".join([*parent, base] if base else parent)
            names = [base, *(f"{base}.{a.name}" for a in node.names)]
        for name in names:
            while name and name not in MODULES:
                name = name.rpartition(".")[0]
            if name and name != module:
                found.add(name)
    # Importing a.b.c runs a/__init__ and a/b/__init__ first: an edge to each parent package the
    # importer is not itself inside (that one is already being imported).
    for name in list(found):
        parent = name.rpartition(".")[0]
        while parent and parent in MODULES and not module.startswith(parent + "."):
            if parent != module:
                found.add(parent)
            parent = parent.rpartition(".")[0]
    return found


GRAPH = {m: _runtime_imports(m, p) for m, p in MODULES.items()}


def _room(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "agent" and len(parts) > 1 and parts[1] in ROOMS else None


def test_drivers_and_simulators_never_import_the_agent() -> None:
    bad = [
        (m, i)
        for m, imports in GRAPH.items()
        if m.split(".")[0] in ("drivers", "simulators")
        for i in imports
        if i.split(".")[0] == "agent"
    ]
    assert not bad


@pytest.mark.parametrize("rule", sorted(FORBIDDEN), ids=lambda r: f"{r[0]}-not-{r[1]}")
def test_rooms_import_in_one_direction(rule: tuple[str, str]) -> None:
    source, target = rule
    bad = [
        (m, i)
        for m, imports in GRAPH.items()
        if _room(m) == source
        for i in imports
        if _room(i) == target
    ]
    assert not bad, f"agent/{source} must not import agent/{target}: {bad}"


def test_no_module_imports_itself_back() -> None:
    """No import cycle between modules (Tarjan's strongly connected components)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH.get(v, ()):
            # A package's __init__ importing its own submodules is how packages re-export.
            if w.startswith(v + "."):
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in sorted(GRAPH):
        if module not in index:
            visit(module)
    assert not cycles
