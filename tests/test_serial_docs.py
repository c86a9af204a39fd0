"""The README's "Connecting serial instruments" tells the truth: examples validate and yield."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from agent.config import load_config
from agent.drivers import load_drivers
from drivers.base import Quality
from drivers.serial.driver import SerialDriver

README = Path(__file__).resolve().parent.parent / "README.md"


def _section() -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index("## Connecting serial instruments")
    return text[start : text.index("\n## ", start + 3)]


#: (device, frame as the doc shows it, what the doc says it yields)
CLAIMS: list[tuple[str, str, dict[str, Any]]] = [
    (
        "scale-1",
        "US,NT,-0001.50 kg",
        {"weight": -1.5, "stable": False, "overload": False, "net": True},
    ),
    ("oven-ctl", "OUT=45", {"heating": 0.45, "temperature": "bad: no match"}),
    ("counter-1", r"\x02C=0123337E\x03", {"parts": 12333}),
    ("counter-1", r"\x02C=01233300\x03", {"parts": "bad: checksum"}),
]


@pytest.fixture(scope="module")
def drivers_by_device(tmp_path_factory: pytest.TempPathFactory) -> dict[str, SerialDriver]:
    text = _section()
    blocks = re.findall(r"```yaml\n(.*?)```", text, re.S)
    assert len(blocks) == 3
    path = tmp_path_factory.mktemp("doc") / "examples.yaml"
    path.write_text("agent:\n  id: doc\ndevices:\n" + "".join(blocks), encoding="utf-8")
    config = load_config(path, load_drivers())
    return {d.name: SerialDriver(d) for d in config.devices}


def test_the_three_examples_are_a_scale_a_controller_and_a_counter(
    drivers_by_device: dict[str, SerialDriver],
) -> None:
    assert list(drivers_by_device) == ["scale-1", "oven-ctl", "counter-1"]
    assert drivers_by_device["oven-ctl"].config.mode == "poll"
    assert drivers_by_device["counter-1"].config.every_frame


@pytest.mark.parametrize(("device", "frame", "claimed"), CLAIMS)
def test_the_sample_frames_yield_what_the_doc_says(
    drivers_by_device: dict[str, SerialDriver], device: str, frame: str, claimed: dict[str, Any]
) -> None:
    assert f"'{frame}'" in _section()
    readings = {r.tag: r for r in drivers_by_device[device].try_sample(frame)}
    for tag, value in claimed.items():
        r = readings[tag]
        assert (r.value if r.quality is Quality.GOOD else f"bad: {r.reason}") == value, tag
