"""Profiles as files and the defaults they carry: ``include:``, lookup by name in the profile
directories, a profile's ``defaults:`` merged into its devices (the device's keys win), and every
problem inside a profile file reported at that file's own FILE:LINE:COL."""

from __future__ import annotations

from pathlib import Path
from textwrap import dedent

import pytest

from agent.app.cli import main
from agent.app.config import ConfigErrors, load_config
from agent.app.config.loader import config_schema
from agent.south.registry import load_drivers
from drivers.modbus.config import ModbusDevice

METER = """\
driver: modbus
description: a meter documented 1-based with low word first
defaults:
  byte_order: CDAB
  address_offset: -1
  read_function: 4
  max_registers: 40
  poll_interval: 5s
  processing: {deadband: 0.5, max_silence: 10m}
tags:
  - {name: voltage, table: holding, address: 1, type: float32, unit: V}
  - {name: energy, table: holding, address: 3, type: uint32, scale: 0.01, unit: kWh}
"""


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dedent(text), encoding="utf-8")
    return path


def config(tmp_path: Path, devices: str, *, head: str = "") -> Path:
    return write(
        tmp_path / "edge-agent.yaml",
        "agent: {id: t}\n" + head + "devices:\n" + dedent(devices),
    )


def load(path: Path, *dirs: Path) -> list[ModbusDevice]:
    loaded = load_config(path, load_drivers(), profile_dirs=list(dirs))
    devices = [d for d in loaded.devices if isinstance(d, ModbusDevice)]
    assert len(devices) == len(loaded.devices)
    return devices


def issues(path: Path, *dirs: Path) -> list[str]:
    with pytest.raises(ConfigErrors) as caught:
        load_config(path, load_drivers(), profile_dirs=list(dirs))
    return [str(i) for i in caught.value.issues]


DEVICE = """\
  - name: m1
    driver: modbus
    profile: meter
    connection: {host: 127.0.0.1}
"""


def test_an_included_profile_gives_its_tags_and_defaults(tmp_path: Path) -> None:
    write(tmp_path / "types" / "meter.yaml", METER)
    path = config(tmp_path, DEVICE, head="include: [types/meter.yaml]\n")
    (device,) = load(path)
    assert [t.name for t in device.tags] == ["voltage", "energy"]
    assert (device.byte_order, device.address_offset, device.read_function) == ("CDAB", -1, 4)
    assert (device.max_registers, device.poll_interval) == (40, 5.0)
    processing = getattr(device, "processing", None)
    assert processing is not None and processing.deadband == 0.5


def test_a_device_overrides_a_default_and_merges_a_mapping_key_by_key(tmp_path: Path) -> None:
    write(tmp_path / "meter.yaml", METER)
    path = config(
        tmp_path,
        DEVICE + "    poll_interval: 1s\n    byte_order: ABCD\n    processing: {deadband: 2}\n",
        head="include: [meter.yaml]\n",
    )
    (device,) = load(path)
    assert (device.poll_interval, device.byte_order, device.address_offset) == (1.0, "ABCD", -1)
    processing = getattr(device, "processing", None)
    assert processing is not None
    assert (processing.deadband, processing.max_silence) == (2.0, 600.0)


def test_a_profile_named_by_a_device_comes_from_the_first_directory_holding_it(
    tmp_path: Path,
) -> None:
    site, bundled = tmp_path / "etc", tmp_path / "bundled"
    write(bundled / "meter.yaml", METER)
    path = config(tmp_path, DEVICE)
    (device,) = load(path, site, bundled)
    assert device.byte_order == "CDAB"
    # The site's own copy shadows the bundled one.
    write(site / "meter.yaml", METER.replace("CDAB", "DCBA"))
    (device,) = load(path, site, bundled)
    assert device.byte_order == "DCBA"


def test_a_profile_of_the_config_wins_over_the_directories(tmp_path: Path) -> None:
    write(tmp_path / "dir" / "meter.yaml", METER)
    head = (
        "profiles:\n  meter:\n    driver: modbus\n"
        "    tags: [{name: v, table: input, address: 0, type: uint16}]\n"
    )
    (device,) = load(config(tmp_path, DEVICE, head=head), tmp_path / "dir")
    assert [t.name for t in device.tags] == ["v"]
    assert device.byte_order == "ABCD"


def test_defaults_of_a_profile_written_in_the_config_apply_too(tmp_path: Path) -> None:
    head = (
        "profiles:\n  meter:\n    driver: modbus\n    defaults: {address_offset: -40001}\n"
        "    tags: [{name: v, table: holding, address: 40001, type: uint16}]\n"
    )
    (device,) = load(config(tmp_path, DEVICE, head=head))
    assert device.address_offset == -40001


def test_problems_inside_a_profile_file_are_reported_at_its_own_lines(tmp_path: Path) -> None:
    bad = write(
        tmp_path / "bad.yaml",
        """\
        driver: modbus
        defaults:
          byte_order: XYZW
          max_regs: 10
        tags:
          - {name: v, table: holding, address: 0, type: float23}
          - {name: v, table: holding, address: 2, type: uint16}
        """,
    )
    path = config(tmp_path, DEVICE.replace("meter", "bad"), head="include: [bad.yaml]\n")
    assert issues(path) == [
        f"{bad}:3:15: defaults.byte_order: Input should be 'ABCD', 'CDAB', 'BADC' or 'DCBA'",
        f"{bad}:4:3: defaults.max_regs: unknown key 'max_regs'; did you mean 'max_registers'?",
        f"{bad}:6:49: tags.0.type: Input should be 'bool', 'int16', 'uint16', 'int32', "
        "'uint32', 'int64', 'uint64', 'float32', 'float64' or 'string'",
        f"{bad}:7:12: tags.1.name: duplicate tag name 'v' (first at line 6)",
    ]


def test_a_default_that_does_not_fit_its_device_is_reported_in_the_profile_once(
    tmp_path: Path,
) -> None:
    meter = write(tmp_path / "meter.yaml", METER.replace("max_registers: 40", "max_registers: 0"))
    two = DEVICE + DEVICE.replace("m1", "m2")
    path = config(tmp_path, two, head="include: [meter.yaml]\n")
    assert issues(path) == [
        f"{meter}:7:18: defaults.max_registers: Input should be greater than or equal to 1"
    ]


def test_an_include_that_cannot_be_used_is_reported_at_the_entry(tmp_path: Path) -> None:
    write(tmp_path / "meter.yaml", METER)
    path = config(
        tmp_path,
        DEVICE,
        head="include: [missing.yaml, meter.yaml, meter.yaml, notes.txt]\n",
    )
    assert [i.split(": ", 1)[1] for i in issues(path)] == [
        f"include.0: cannot read profile file {tmp_path / 'missing.yaml'}: "
        "No such file or directory",
        f"include.2: profile 'meter' is already included from {tmp_path / 'meter.yaml'}",
        "include.3: a profile file is named NAME.yaml, NAME of [A-Za-z0-9_.-]: 'notes.txt'",
    ]


def test_an_empty_or_unparsable_profile_file_is_reported_in_it(tmp_path: Path) -> None:
    empty = write(tmp_path / "dir" / "meter.yaml", "# nothing yet\n")
    found = issues(config(tmp_path, DEVICE), tmp_path / "dir")
    assert found[0] == f"{empty}:1:1: (root): the profile file is empty"
    broken = write(tmp_path / "dir" / "meter.yaml", "driver: modbus\ntags: [\n")
    found = issues(config(tmp_path, DEVICE), tmp_path / "dir")
    assert found[0].startswith(f"{broken}:3:1: (yaml): ")


def test_an_unknown_profile_is_still_reported_at_the_device(tmp_path: Path) -> None:
    found = issues(config(tmp_path, DEVICE), tmp_path / "empty")
    assert found == [
        f"{tmp_path / 'edge-agent.yaml'}:5:12: devices.0.profile: unknown profile 'meter' "
        "(profiles: none are defined)"
    ]


def test_the_schema_has_include_and_each_drivers_profile_defaults() -> None:
    schema = config_schema(load_drivers())
    assert "include" in schema["properties"]
    defaults = schema["$defs"]["ModbusDeviceDefaults"]["properties"]
    for key in ("byte_order", "address_offset", "read_function", "max_registers"):
        assert key in defaults
    assert {"poll_interval", "processing"} <= set(defaults)
    assert not {"name", "driver", "connection", "tags", "profile"} & set(defaults)


def test_validate_names_the_profile_file_a_problem_is_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The command line prints the config as typed, and a profile file's problem at that file,
    so an editor opens the right one."""
    meter = write(tmp_path / "types" / "meter.yaml", METER.replace("CDAB", "CDBA"))
    config(tmp_path, DEVICE + "    poll_interval: never\n", head="include: [types/meter.yaml]\n")
    monkeypatch.chdir(tmp_path)
    assert main(["validate", "./edge-agent.yaml"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"{meter}:4:15: defaults.byte_order: Input should be 'ABCD', 'CDAB', 'BADC' or 'DCBA'",
        "./edge-agent.yaml:8:18: devices.0.poll_interval: invalid duration 'never': use seconds "
        "or a string like 250ms, 1s, 5m",
    ]
