"""Generated mutations of valid configs: each one validates or is refused with file:line:col.

The seeds are the configs we ship and document (``config/demo.yaml``, every driver's
``sample.yaml``, the full examples of the README and of the pages under docs/). Mutations work on
the text (a character inserted or deleted, a line duplicated, dropped or re-indented) and on the
structure (a key deleted, renamed or duplicated, a value replaced by one of another type or an
absurd one). The loader runs in process. Whatever comes out must be a ``Config`` or ``ConfigErrors``
whose every line has the contract's shape: never a traceback, never an issue without a position.
"""

from __future__ import annotations

import io
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ruamel.yaml import YAML

from agent.app.config import ConfigErrors, load_config
from agent.south.registry import load_drivers

ROOT = Path(__file__).resolve().parent.parent
DRIVERS = load_drivers()


def _documented_configs() -> list[str]:
    """The yaml blocks of the README and the docs/ pages that are whole files (they start with
    the agent section), each once: docs/configuration.md's annotated example among them."""
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    blocks = [
        b
        for page in pages
        for b in re.findall(r"```yaml\n(.*?)```", page.read_text(encoding="utf-8"), flags=re.S)
        if b.lstrip().startswith("agent:")
    ]
    return list(dict.fromkeys(blocks))


def _annotated_example() -> str:
    """docs/configuration.md's annotated example: the whole file every key is explained on."""
    text = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    found = re.search(r"```yaml\n(.*?)```", text, flags=re.S)
    assert found is not None
    return found.group(1)


def _seeds() -> list[str]:
    files = [ROOT / "config" / "demo.yaml", *sorted(ROOT.glob("drivers/*/sample.yaml"))]
    return [f.read_text() for f in files] + _documented_configs()


SEEDS = _seeds()
_WORK = Path(tempfile.mkdtemp(prefix="edge-config-mutations-"))
_ISSUE = re.compile(r"^(?P<file>.+?):(?P<line>\d+):(?P<col>\d+): (?P<path>\S[^\n]*?): (?P<msg>.+)$")

_TEXT_CHARS = [*list(":- \t{}[]'\"#&*!|>%@,\n0x9."), "é", "\x00", "\ufeff"]
_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["1s", "-5ms", "0", "256MB", "1e400", "..", "a/b", "+", "#", "${X}", "~"]),
)
_VALUES = st.one_of(
    _SCALARS,
    st.lists(_SCALARS, max_size=3),
    st.dictionaries(st.sampled_from(["name", "x", "host", "tags", "type"]), _SCALARS, max_size=2),
)


def _nodes(node: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], Any]]:
    """Every container with its path, so a mutation can pick one."""
    if isinstance(node, dict):
        yield path, node
        for k, v in node.items():
            yield from _nodes(v, (*path, k))
    elif isinstance(node, list):
        yield path, node
        for i, v in enumerate(node):
            yield from _nodes(v, (*path, i))


@st.composite
def text_mutation(draw: st.DrawFn) -> str:
    text: str = draw(st.sampled_from(SEEDS))
    for _ in range(draw(st.integers(1, 3))):
        lines = text.split("\n")
        op = draw(st.sampled_from(["insert", "delete", "dup_line", "drop_line", "indent"]))
        if op in ("insert", "delete"):
            i = draw(st.integers(0, max(0, len(text) - 1)))
            if op == "insert":
                text = text[:i] + draw(st.sampled_from(_TEXT_CHARS)) + text[i:]
            else:
                text = text[:i] + text[i + 1 :]
            continue
        j = draw(st.integers(0, len(lines) - 1))
        if op == "dup_line":
            lines.insert(draw(st.integers(0, len(lines))), lines[j])
        elif op == "drop_line":
            del lines[j]
        else:
            shift = draw(st.sampled_from([-2, -1, 1, 2, 4]))
            lines[j] = lines[j][-shift:] if shift < 0 else " " * shift + lines[j]
        text = "\n".join(lines)
    return text


@st.composite
def structure_mutation(draw: st.DrawFn) -> str:
    yaml = YAML()  # round-trip: keeps comments and layout, as an integrator's file has them
    data = yaml.load(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 3))):
        containers = list(_nodes(data))
        _, node = draw(st.sampled_from(containers))
        if isinstance(node, dict):
            if not node:
                node["x"] = draw(_VALUES)
                continue
            key = draw(st.sampled_from(list(node)))
            op = draw(st.sampled_from(["delete", "replace", "rename", "add"]))
            if op == "delete":
                del node[key]
            elif op == "replace":
                node[key] = draw(_VALUES)
            elif op == "rename":
                typo = str(key)[:-1] + draw(st.sampled_from(["s", "_", "", "1"]))
                if typo not in node:
                    node[typo] = node.pop(key)
            else:
                node[draw(st.sampled_from(["extra", "Name", "tags", "profile", "drivr"]))] = draw(
                    _VALUES
                )
        elif node:
            i = draw(st.integers(0, len(node) - 1))
            op = draw(st.sampled_from(["delete", "replace", "duplicate"]))
            if op == "delete":
                del node[i]
            elif op == "replace":
                node[i] = draw(_VALUES)
            else:
                node.insert(i, node[i])
        else:
            node.append(draw(_VALUES))
    out = io.StringIO()
    yaml.dump(data, out)
    return out.getvalue()


def check(text: str) -> str:
    """Load one mutated file; return "valid" or "refused", fail on anything else."""
    path = _WORK / "mutated.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    n_lines = text.count("\n") + 2
    try:
        load_config(path, DRIVERS)
    except ConfigErrors as exc:
        assert exc.issues, "refused without a single issue"
        for issue in exc.issues:
            line = str(issue)
            m = _ISSUE.match(line)
            assert m is not None and m["file"] == str(path), line
            assert 1 <= int(m["line"]) <= n_lines and int(m["col"]) >= 1, line
            assert "Traceback" not in line
        return "refused"
    return "valid"


def _settings(examples: int) -> settings:
    return settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        database=None,
    )


def test_seeds_are_valid() -> None:
    assert len(SEEDS) >= 4  # demo, two samples, the annotated example
    assert _annotated_example() in SEEDS
    for text in SEEDS:
        assert check(text) == "valid", text[:200]


@_settings(150)
@given(text_mutation())
def test_text_mutations_validate_or_are_refused_with_positions(text: str) -> None:
    check(text)


@_settings(80)
@given(structure_mutation())
def test_structure_mutations_validate_or_are_refused_with_positions(text: str) -> None:
    check(text)


@pytest.mark.slow
@_settings(1000)
@given(st.one_of(text_mutation(), structure_mutation()))
def test_a_thousand_more_mutations(text: str) -> None:
    check(text)


def test_non_finite_and_negative_durations_are_refused_not_raised() -> None:
    """The values a structural mutation most likely trips on, pinned as plain examples."""
    seed = (ROOT / "drivers" / "modbus" / "sample.yaml").read_text()
    assert "poll_interval: 1s" in seed
    for bad in (".nan", "-.inf", "-5", "-1e400", "'1 s s'", "[1]", "{}"):
        text = seed.replace("poll_interval: 1s", f"poll_interval: {bad}", 1)
        assert check(text) == "refused", bad
