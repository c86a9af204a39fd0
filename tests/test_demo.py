"""`make demo` works: the demo runner brings up simulator, broker and agent and prints data."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.demos import run_demo, validate


def test_demo_config_is_valid() -> None:
    out = validate("config/demo.yaml")
    assert out.returncode == 0, out.stderr
    assert "ok (2 devices" in out.stdout


@pytest.mark.slow
def test_demo_shows_data_arriving_and_cleans_up(tmp_path: Path) -> None:
    out = run_demo(
        "simulators.demo", "config/demo.yaml", "../data/demo", tmp_path, "--seconds", "4"
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "edge/demo-gw/press-1/data seq=1 " in out.stdout
    assert "edge/demo-gw/press-2/data seq=" in out.stdout
    assert '"online": true' in out.stdout
    assert "demo stopped" in out.stdout
    assert "agent.app.runtime stopped" in out.stderr  # the agent stopped cleanly on SIGTERM
