"""`make demo` works: the demo runner brings up simulator, broker and agent and prints data."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_demo_config_is_valid() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "agent", "validate", "config/demo.yaml"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert "ok (2 devices" in out.stdout


@pytest.mark.slow
def test_demo_shows_data_arriving_and_cleans_up(tmp_path: Path) -> None:
    cfg = (
        (ROOT / "config" / "demo.yaml").read_text().replace("../data/demo", str(tmp_path / "data"))
    )
    (tmp_path / "demo.yaml").write_text(cfg)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "simulators.demo",
            "--seconds",
            "4",
            "--config",
            str(tmp_path / "demo.yaml"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "edge/demo-gw/press-1/data seq=1 " in out.stdout
    assert "edge/demo-gw/press-2/data seq=" in out.stdout
    assert '"online": true' in out.stdout
    assert "demo stopped" in out.stdout
    assert "agent.app.runtime stopped" in out.stderr  # the agent stopped cleanly on SIGTERM
