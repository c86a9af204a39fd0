"""The page "Connecting Modbus devices" (docs/devices/modbus.md) and its Simplified Chinese twin
tell the truth: their examples validate (the twin's are the same devices), devices that should
share a line do, every key of the driver is on the page, every quirk option is in its table, and
the troubleshooting table only names options that exist."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from agent.app.config import load_config
from agent.south.registry import load_drivers
from drivers.modbus.config import ModbusDevice
from drivers.modbus.driver import ModbusDriver
from tests.readme import DOCS, code_words, driver_keys

DOC = DOCS / "devices" / "modbus.md"
ZH = DOCS / "zh-CN" / "devices" / "modbus.md"
QUIRKS = (
    "max_registers",
    "max_bits",
    "max_gap",
    "no_coalescing",
    "address_offset",
    "read_function",
    "write_function",
    "pause_between_requests",
    "close_connection_after_poll",
    "reprobe_interval",
)


def _examples(page: Path, folder: Path) -> dict[str, ModbusDevice]:
    """Every yaml block of the page, each a list of whole device entries, loaded as one config."""
    text = page.read_text(encoding="utf-8")
    blocks = re.findall(r"```yaml\n(.*?)```", text, re.S)
    assert len(blocks) >= 5
    path = folder / "examples.yaml"
    path.write_text("agent:\n  id: doc\ndevices:\n" + "".join(blocks), encoding="utf-8")
    config = load_config(path, load_drivers())
    return {d.name: d for d in config.devices}


@pytest.fixture(scope="module")
def devices(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ModbusDevice]:
    return _examples(DOC, tmp_path_factory.mktemp("doc"))


def test_the_chinese_page_shows_the_same_devices(
    devices: dict[str, ModbusDevice], tmp_path: Path
) -> None:
    """The twin translates the prose and the comments, never the configuration."""
    twin = _examples(ZH, tmp_path)
    assert list(twin) == list(devices)
    for name, device in devices.items():
        assert twin[name].model_dump() == device.model_dump(), name


def test_examples_validate_and_cover_every_transport(devices: dict[str, ModbusDevice]) -> None:
    transports = {d.connection.transport for d in devices.values()}
    assert transports == {"tcp", "rtu", "rtu-over-tcp", "tcp-gateway"}
    assert devices["vib-sensor"].tags[0].count == 1024
    assert any(t.writable for t in devices["oven-1"].tags)


def test_devices_on_one_port_or_gateway_share_a_line(devices: dict[str, ModbusDevice]) -> None:
    keys = {name: ModbusDriver(d).line_key() for name, d in devices.items()}
    assert keys["meter-1"] == keys["meter-2"] is not None
    assert keys["drive-1"] == keys["drive-2"] is not None
    assert keys["press-1"] is None


#: (page, heading of the quirk table, heading after it, heading of the troubleshooting table)
PAGES = [
    (DOC, "## Device quirks", "## Writes from the cloud", "## Troubleshooting"),
    (ZH, "## 设备的怪癖", "## 从云端写入", "## 排错"),
]


@pytest.mark.parametrize(("page", "quirks", "after", "_"), PAGES, ids=["en", "zh-CN"])
def test_every_quirk_is_documented_with_its_symptom(
    page: Path, quirks: str, after: str, _: str
) -> None:
    text = page.read_text(encoding="utf-8")
    table = text[text.index(f"\n{quirks}\n") : text.index(f"\n{after}\n")]
    for quirk in QUIRKS:
        assert quirk in ModbusDevice.model_fields, quirk
        assert f"`{quirk}:" in table, f"{quirk} missing from the quirk table"


@pytest.mark.parametrize(("page", "_", "__", "trouble"), PAGES, ids=["en", "zh-CN"])
def test_troubleshooting_names_only_real_options(page: Path, _: str, __: str, trouble: str) -> None:
    text = page.read_text(encoding="utf-8")
    table = text[text.index(f"\n{trouble}\n") :]
    named = set(re.findall(r"`([a-z_]+): ", table))
    known = set(ModbusDevice.model_fields) | {"transport", "baudrate", "parity", "byte_order"}
    assert named and named <= known, named - known


@pytest.mark.parametrize("page", [DOC, ZH], ids=["en", "zh-CN"])
def test_every_key_of_the_driver_is_on_the_page(page: Path) -> None:
    """The page is where an integrator looks a key up: each key the driver adds to the common
    ones (device, tag, connection) is named on it, and it links to the generated reference."""
    text = page.read_text(encoding="utf-8")
    missing = driver_keys(ModbusDevice) - code_words(text)
    assert not missing, f"keys of driver modbus not on {page.name}: {sorted(missing)}"
    assert "reference/config.md)" in text
