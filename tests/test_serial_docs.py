"""The page "Connecting serial instruments" (docs/devices/serial.md) and its Simplified Chinese
twin tell the truth: the examples validate and yield what the page says, instruments on one port
share a line as the page says, and every key of the driver is on the page."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from agent.app.config import ConfigErrors, load_config
from agent.south.registry import load_drivers
from drivers.base import Quality
from drivers.serial.config import SerialDevice
from drivers.serial.driver import SerialDriver
from tests.readme import DOCS, code_words, driver_keys

DOC = DOCS / "devices" / "serial.md"
ZH = DOCS / "zh-CN" / "devices" / "serial.md"
#: Where each page's worked examples end and the key list begins.
KEYS_HEADING = {DOC: "\n## Every key\n", ZH: "\n## 全部键\n"}
#: Where the line-sharing section of each page begins.
LINE_HEADING = {
    DOC: "\n## The port, and several instruments on one line\n",
    ZH: "\n## 串口，以及一条总线上的多台仪表\n",  # noqa: RUF001 (Chinese punctuation)
}


def _section(page: Path = DOC) -> str:
    """The page's introduction and its three worked examples."""
    text = page.read_text(encoding="utf-8")
    return text[: text.index(KEYS_HEADING[page])]


def _load(blocks: list[str], folder: Path) -> list[SerialDevice]:
    path = folder / "examples.yaml"
    path.write_text("agent:\n  id: doc\ndevices:\n" + "".join(blocks), encoding="utf-8")
    devices = load_config(path, load_drivers()).devices
    assert all(isinstance(d, SerialDevice) for d in devices)
    return [d for d in devices if isinstance(d, SerialDevice)]


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
    devices = _load(blocks, tmp_path_factory.mktemp("doc"))
    return {d.name: SerialDriver(d) for d in devices}


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


@pytest.mark.parametrize("frame", sorted({frame for _, frame, _ in CLAIMS}))
def test_the_chinese_page_shows_the_same_sample_frames(frame: str) -> None:
    assert f"'{frame}'" in _section(ZH)


def test_the_chinese_page_shows_the_same_devices(
    drivers_by_device: dict[str, SerialDriver], tmp_path: Path
) -> None:
    """The twin translates the prose and the comments, never the configuration."""
    blocks = re.findall(r"```yaml\n(.*?)```", _section(ZH), re.S)
    twin = {d.name: d for d in _load(blocks, tmp_path)}
    assert list(twin) == list(drivers_by_device)
    for name, driver in drivers_by_device.items():
        assert twin[name].model_dump() == driver.config.model_dump(), name


@pytest.mark.parametrize("page", [DOC, ZH], ids=["en", "zh-CN"])
def test_instruments_on_one_port_share_a_line_with_one_setting(page: Path, tmp_path: Path) -> None:
    """The multidrop example: two poll-mode units on one port share one line; a different baud
    rate on the second is refused at its key, and so is a streaming device on that port."""
    text = page.read_text(encoding="utf-8")
    section = text[text.index(LINE_HEADING[page]) :]
    (block,) = re.findall(r"```yaml\n(.*?)```", section, re.S)
    first, second = (SerialDriver(d) for d in _load([block], tmp_path))
    assert first.line_key() == second.line_key() == "/dev/ttyUSB2"

    def refused(text: str, needle: str) -> list[str]:
        path = tmp_path / "bad.yaml"
        path.write_text("agent:\n  id: doc\ndevices:\n" + text, encoding="utf-8")
        with pytest.raises(ConfigErrors) as caught:
            load_config(path, load_drivers())
        return [f"{i.path}: {i.message}" for i in caught.value.issues if needle in i.path]

    faster = block.replace("baudrate: 19200", "baudrate: 9600").replace(
        "baudrate: 9600", "baudrate: 19200", 1
    )
    assert refused(faster, "devices.1.connection.baudrate"), "a second baud rate is refused"
    streaming = block + (
        "  - {name: scale, driver: serial, connection: {port: /dev/ttyUSB2, baudrate: 19200,"
        " parity: E}, match: '(?P<w>.*)', tags: [{name: w, type: string}]}\n"
    )
    assert any("cannot share" in x for x in refused(streaming, "devices.2.mode"))


@pytest.mark.parametrize("page", [DOC, ZH], ids=["en", "zh-CN"])
def test_every_key_of_the_driver_is_on_the_page(page: Path) -> None:
    """The page is where an integrator looks a key up: each key the driver adds to the common
    ones (device, tag, connection, framing, checksum, requests) is named on it, and it links to
    the generated reference."""
    text = page.read_text(encoding="utf-8")
    missing = driver_keys(SerialDevice) - code_words(text)
    assert not missing, f"keys of driver serial not on {page.name}: {sorted(missing)}"
    assert "reference/config.md)" in text
