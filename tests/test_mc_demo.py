"""`make demo-mc` works: the press PLC simulator, a broker and the agent, data printed, in the
ASCII code too (``ENCODING=ascii``: the PLC's port and the agent's config switch together)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_demo_mc_config_is_valid() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "agent", "validate", "config/demo-mc.yaml"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert "ok (1 devices, 14 tags)" in out.stdout


@pytest.mark.slow
def test_demo_mc_in_ascii_shows_the_press_and_cleans_up(tmp_path: Path) -> None:
    text = (ROOT / "config" / "demo-mc.yaml").read_text()
    (tmp_path / "demo-mc.yaml").write_text(text.replace("../data/demo-mc", str(tmp_path / "d")))
    demo = ["-m", "simulators.demo_mc", "--encoding", "ascii", "--seconds", "3"]
    out = subprocess.run(
        [sys.executable, *demo, "--config", str(tmp_path / "demo-mc.yaml")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "PLC 127.0.0.1:5007 (3E ascii)" in out.stdout
    first = next(line for line in out.stdout.splitlines() if "press-7/data seq=1 " in line)
    assert "program=PRG-A12" in first and "die_height=412.5" in first, first
    assert "quality=" not in first
    assert "demo stopped" in out.stdout
    assert (tmp_path / "d").is_dir()
