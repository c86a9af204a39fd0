"""docs/fleet.md and its Chinese twin: the same blocks, and the walk-through's pushed file passes
the operator's own check."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.app.fleet.operator import check_file
from agent.south.registry import load_drivers
from tests.doc_examples import ROOT, code_blocks

EN = ROOT / "docs" / "fleet.md"
ZH = ROOT / "docs" / "zh-CN" / "fleet.md"


def test_the_chinese_page_is_a_twin() -> None:
    assert [(b.lang, b.text) for b in code_blocks(ZH)] == [
        (b.lang, b.text) for b in code_blocks(EN)
    ]


def test_the_pushed_file_of_the_walkthrough_passes_the_operators_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pushed = next(b for b in code_blocks(EN) if b.lang == "yaml" and b.text.startswith("devices:"))
    file = tmp_path / "devices.yaml"
    file.write_text(pushed.text)
    assert check_file(str(file), load_drivers()) is not None, capsys.readouterr().err
