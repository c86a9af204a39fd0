"""`make demo-mc` works: the press PLC simulator, a broker and the agent, data printed, in the
ASCII code too (``ENCODING=ascii``: the PLC's port and the agent's config switch together)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.demos import run_demo, validate


def test_demo_mc_config_is_valid() -> None:
    out = validate("config/demo-mc.yaml")
    assert out.returncode == 0, out.stderr
    assert "ok (1 devices, 14 tags)" in out.stdout


@pytest.mark.slow
def test_demo_mc_in_ascii_shows_the_press_and_cleans_up(tmp_path: Path) -> None:
    args = ("--encoding", "ascii", "--seconds", "3")
    out = run_demo("simulators.demo_mc", "config/demo-mc.yaml", "../data/demo-mc", tmp_path, *args)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "PLC 127.0.0.1:5007 (3E ascii)" in out.stdout
    first = next(line for line in out.stdout.splitlines() if "press-7/data seq=1 " in line)
    assert "program=PRG-A12" in first and "die_height=412.5" in first, first
    assert "quality=" not in first
    assert "demo stopped" in out.stdout
    assert (tmp_path / "data").is_dir()
