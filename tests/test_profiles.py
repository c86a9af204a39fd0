"""The bundled profiles of real devices, each read through the agent from a simulator generated
from the same file (simulators/profile_sim.py), holding known physical values.

Generated over every file in config/profiles/: a new profile is covered by adding it. What each
one must show: the config loader finds it by name, it validates, every register tag reads GOOD,
and every value is exactly the physical value the simulator encoded (230.1 V reads 230.1, not
230.10000610351562), through the profile's own types, scales, word orders, address offset and
read function. The header names the maker's document and its version.
"""

from __future__ import annotations

import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from agent.app.config import load_config
from agent.app.config.profilefiles import SITE_PROFILES, bundled_profiles, default_profile_dirs
from agent.south.registry import load_drivers
from drivers.base import Quality
from drivers.modbus.config import ModbusDevice
from drivers.modbus.driver import ModbusDriver
from simulators.profile_sim import ProfileSimulator, load_profile, profile_files


def _bundled() -> Path:
    found = bundled_profiles()
    assert found is not None, "config/profiles/ is missing from the source tree"
    return found


BUNDLED = _bundled()
PROFILES = profile_files(BUNDLED)
_HEADER = re.compile(r"^# (Document|Version): \S", re.MULTILINE)


def test_the_catalogue_has_at_least_twelve_devices() -> None:
    assert len(PROFILES) >= 12


def test_a_profile_named_by_a_device_is_found_in_the_site_directory_then_the_bundled_one() -> None:
    assert default_profile_dirs() == [SITE_PROFILES, BUNDLED]


def _config(tmp_path: Path, profile: str, port: int) -> Path:
    path = tmp_path / "edge-agent.yaml"
    path.write_text(
        "agent: {id: profiles}\n"
        "devices:\n"
        "  - name: dut\n"
        "    driver: modbus\n"
        f"    profile: {profile}\n"
        f"    connection: {{host: 127.0.0.1, port: {port}, timeout: 2}}\n",
        encoding="utf-8",
    )
    return path


async def _read(device: Any) -> dict[str, Any]:
    assert isinstance(device, ModbusDevice)
    driver = ModbusDriver(device)
    await driver.connect()
    try:
        readings = await driver.poll()
    finally:
        await driver.close()
    bad = {r.tag: r.reason for r in readings if r.quality is not Quality.GOOD}
    assert not bad, f"not GOOD: {bad}"
    return {r.tag: r.value for r in readings}


@pytest.mark.parametrize("path", PROFILES, ids=[p.stem for p in PROFILES])
async def test_profile_reads_the_physical_values_its_simulator_holds(
    path: Path, tmp_path: Path
) -> None:
    text = path.read_text(encoding="utf-8")
    assert {m.group(1) for m in _HEADER.finditer(text)} == {"Document", "Version"}, (
        f"{path.name}: the header names the maker's document and its version"
    )
    profile = load_profile(path)
    assert all(tag.get("description") for tag in profile["tags"]), "every tag says what it is"
    async with ProfileSimulator(profile) as sim:
        # By name only: the loader finds the file among the bundled profiles.
        config = load_config(
            _config(tmp_path, path.stem, sim.port), load_drivers(), profile_dirs=[BUNDLED]
        )
        device = config.devices[0]
        got = await _read(device)
    want = sim.expected()
    assert set(got) == {t["name"] for t in profile["tags"]}
    assert got == want  # exact: decimal values, no float noise
    for name, value in want.items():
        assert repr(got[name]) == repr(value), name
    # The profile's defaults reached the device (each device could still override them).
    for key, value in (profile.get("defaults") or {}).items():
        if not isinstance(value, str) or key == "byte_order":  # durations are parsed: "1s" is 1.0
            assert getattr(device, key) == value, key


def test_voltages_read_230_1_where_the_register_can_carry_it() -> None:
    """The headline value, checked across the catalogue: the first voltage of every profile whose
    voltage register can hold 230.1 exactly is served (and so must read) as 230.1."""
    shown = 0
    for path in PROFILES:
        profile = load_profile(path)
        units = {tag["name"]: tag.get("unit") for tag in profile["tags"]}
        sim = ProfileSimulator(profile)
        volts = [p for p in sim.points if p.type != "bool" and units[p.name] == "V"]
        if not volts:
            continue
        first = volts[0]
        raw = Decimal("230.1") / first.scale
        if first.type.startswith("float") or raw == raw.to_integral_value():
            assert first.value == Decimal("230.1"), f"{path.name}: {first.name}"
            shown += 1
    assert shown >= 10


async def test_the_comparison_sees_a_wrong_word_order(tmp_path: Path) -> None:
    """The check has teeth: a meter serving its 32-bit values high word first is read wrong by
    the EM24 profile, which says low word first."""
    path = BUNDLED / "carlo-gavazzi-em24.yaml"
    profile = load_profile(path)
    swapped = {**profile, "defaults": {**profile["defaults"], "byte_order": "ABCD"}}
    async with ProfileSimulator(swapped) as sim:
        config = load_config(
            _config(tmp_path, path.stem, sim.port), load_drivers(), profile_dirs=[BUNDLED]
        )
        got = await _read(config.devices[0])
    want = sim.expected()
    assert got["voltage_l1_n"] != want["voltage_l1_n"] == 230.1
    assert got["power_factor_l1"] == want["power_factor_l1"]  # 16-bit: no word order
