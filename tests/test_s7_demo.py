"""`make demo-s7` works: its config and the driver's sample validate, and the demo runner brings
up the moulding PLC, a broker and the agent and prints the machine's data."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.demos import run_demo, validate


@pytest.mark.parametrize("config", ["config/demo-s7.yaml", "drivers/s7/sample.yaml"])
def test_the_demo_config_and_the_sample_are_valid(config: str) -> None:
    out = validate(config)
    assert out.returncode == 0, out.stderr
    assert "ok (1 devices" in out.stdout


@pytest.mark.slow
def test_demo_s7_shows_the_machine_data(tmp_path: Path) -> None:
    out = run_demo(
        "simulators.demo_s7", "config/demo-s7.yaml", "../data/demo-s7", tmp_path, "--seconds", "4"
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "edge/demo-s7-gw/mould-3/data seq=1 " in out.stdout
    assert "mould_id=MLD-4711-A" in out.stdout and "operator=Müller" in out.stdout
    assert "quality=" not in out.stdout, out.stdout[-2000:]
