"""The README section "Connecting Modbus devices" (README.md) tells the truth: its
examples validate, devices that should share a line do, every quirk option is in its table, and
the troubleshooting table only names options that exist."""

from __future__ import annotations

import re

import pytest

from agent.config import load_config
from agent.drivers import load_drivers
from drivers.modbus.config import ModbusDevice
from drivers.modbus.driver import ModbusDriver
from tests.readme import ReadmeSection

DOC = ReadmeSection("Connecting Modbus devices")
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


@pytest.fixture(scope="module")
def devices(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ModbusDevice]:
    text = DOC.read_text(encoding="utf-8")
    blocks = re.findall(r"```yaml\n(.*?)```", text, re.S)
    assert len(blocks) >= 5
    path = tmp_path_factory.mktemp("doc") / "examples.yaml"
    path.write_text("agent:\n  id: doc\ndevices:\n" + "".join(blocks), encoding="utf-8")
    config = load_config(path, load_drivers())
    return {d.name: d for d in config.devices}


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


def test_every_quirk_is_documented_with_its_symptom() -> None:
    text = DOC.read_text(encoding="utf-8")
    table = text[text.index("### Device quirks") : text.index("### Writes from the cloud")]
    for quirk in QUIRKS:
        assert quirk in ModbusDevice.model_fields, quirk
        assert f"`{quirk}:" in table, f"{quirk} missing from the quirk table"


def test_troubleshooting_names_only_real_options() -> None:
    text = DOC.read_text(encoding="utf-8")
    table = text[text.index("### Troubleshooting") :]
    named = set(re.findall(r"`([a-z_]+): ", table))
    known = set(ModbusDevice.model_fields) | {"transport", "baudrate", "parity", "byte_order"}
    assert named and named <= known, named - known
