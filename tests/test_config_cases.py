"""The config error corpus: ``<case>.yaml`` + ``<case>.errors``, see tests/config_cases/README.md.

Kept data-driven so drivers and bug reports add cases without touching code.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from agent.app.config import ConfigErrors, ConfigIssue, load_config
from agent.south.registry import load_drivers

ROOT = Path(__file__).resolve().parent.parent
DIRS = [ROOT / "tests" / "config_cases", *sorted((ROOT / "drivers").glob("*/testcases/errors"))]
CASES = sorted(p for d in DIRS for p in d.glob("*.yaml"))
_EXPECTED = re.compile(r"^(\d+):(\d+): (\S+): (.*)$")
_DRIVER = re.compile(r"\bdriver:\s*['\"]?([A-Za-z0-9_.-]+)")


def _expected(path: Path) -> list[tuple[int, int, str, str]]:
    rows = []
    for n, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = _EXPECTED.match(line)
        assert m is not None, f"{path}:{n}: not 'LINE:COL: key.path: message': {raw!r}"
        rows.append((int(m.group(1)), int(m.group(2)), m.group(3), m.group(4)))
    return rows


def _show(issues: list[ConfigIssue]) -> str:
    return "\n".join(f"{i.line}:{i.col}: {i.path}: {i.message}" for i in issues) or "(valid)"


@pytest.mark.parametrize("case", CASES, ids=[f"{p.parent.parent.name}/{p.stem}" for p in CASES])
def test_case(case: Path) -> None:
    errors_file = case.with_suffix(".errors")
    assert errors_file.exists(), f"{case.name} has no {errors_file.name} beside it"
    expected = _expected(errors_file)
    drivers = load_drivers()
    missing = set(_DRIVER.findall(case.read_text(encoding="utf-8"))) - set(drivers)
    if missing and not any("unknown driver" in e[3] for e in expected):
        pytest.skip(f"driver(s) not installed: {', '.join(sorted(missing))}")
    try:
        load_config(case, drivers)
        issues: list[ConfigIssue] = []
    except ConfigErrors as exc:
        issues = exc.issues
    got = [(i.line, i.col, i.path) for i in issues]
    want = [e[:3] for e in expected]
    assert got == want, f"reported:\n{_show(issues)}"
    for issue, (_, _, _, message) in zip(issues, expected, strict=True):
        assert message in issue.message, f"reported:\n{_show(issues)}"


def test_corpus_is_not_empty() -> None:
    assert len(CASES) >= 15


@pytest.mark.parametrize(
    ("page", "heading"),
    [
        (ROOT / "docs" / "configuration.md", "## When the config is wrong"),
        (ROOT / "docs" / "zh-CN" / "configuration.md", "## 配置有错时"),
    ],
    ids=["en", "zh-CN"],
)
def test_the_configuration_page_names_the_corpus_this_test_reads(page: Path, heading: str) -> None:
    """docs/configuration.md (and its twin) tell an integrator where the corpus is and that a
    case is two files: every folder it names is one this test reads, and it holds cases."""
    text = page.read_text(encoding="utf-8")
    section = text[text.index(f"\n{heading}\n") :]
    named = [ROOT / d for d in re.findall(r"`((?:tests|drivers)/[\w/]+)/`", section)]
    assert named, "the page names the corpus folders"
    for folder in named:
        assert folder in DIRS, folder
        assert any(folder.glob("*.yaml")), folder
