"""The page "Connecting Siemens S7 PLCs" (docs/devices/s7.md) and its Simplified Chinese twin tell
the truth: their examples validate (the twin's are the same devices), every key and type of the
driver is on the page, the refusals it quotes are what ``validate`` says, and the reasons its
troubleshooting table names are reasons the driver gives."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from agent.app.config import ConfigErrors, load_config
from agent.south.registry import load_drivers
from drivers.s7.codec import S7_TYPES
from drivers.s7.config import S7Device
from drivers.s7.link import item_reason
from tests.readme import DOCS, code_words, driver_keys

DOC = DOCS / "devices" / "s7.md"
ZH = DOCS / "zh-CN" / "devices" / "s7.md"
ROOT = Path(__file__).resolve().parent.parent
#: Sources whose strings are the driver's reasons and messages.
SOURCES = [ROOT / "drivers" / "s7" / f for f in ("link.py", "driver.py", "config.py", "codec.py")]


def _examples(page: Path, folder: Path) -> dict[str, S7Device]:
    """Every yaml block of the page, each a list of whole device entries, loaded as one config."""
    text = page.read_text(encoding="utf-8")
    blocks = re.findall(r"```yaml\n(.*?)```", text, re.S)
    assert len(blocks) >= 3
    path = folder / "examples.yaml"
    path.write_text("agent:\n  id: doc\ndevices:\n" + "".join(blocks), encoding="utf-8")
    config = load_config(path, load_drivers())
    return {d.name: d for d in config.devices if isinstance(d, S7Device)}


@pytest.fixture(scope="module")
def devices(tmp_path_factory: pytest.TempPathFactory) -> dict[str, S7Device]:
    return _examples(DOC, tmp_path_factory.mktemp("doc"))


def test_the_chinese_page_shows_the_same_devices(
    devices: dict[str, S7Device], tmp_path: Path
) -> None:
    twin = _examples(ZH, tmp_path)
    assert list(twin) == list(devices)
    for name, device in devices.items():
        assert twin[name].model_dump() == device.model_dump(), name
    assert len(re.findall(r"^## ", ZH.read_text(encoding="utf-8"), re.M)) == len(
        re.findall(r"^## ", DOC.read_text(encoding="utf-8"), re.M)
    )


def test_the_examples_cover_rack_slot_tsaps_arrays_and_writes(
    devices: dict[str, S7Device],
) -> None:
    assert devices["mould-3"].connection.remote == 0x0201  # OP, rack 0, slot 1
    assert devices["logo-1"].connection.remote == 0x2000
    assert any(t.count for t in devices["mould-3"].tags)
    assert {t.type for t in devices["mould-4"].tags if t.writable} >= {"REAL", "BOOL", "STRING"}


@pytest.mark.parametrize("page", [DOC, ZH], ids=["en", "zh-CN"])
def test_every_key_and_type_of_the_driver_is_on_the_page(page: Path) -> None:
    text = page.read_text(encoding="utf-8")
    missing = driver_keys(S7Device) - code_words(text)
    assert not missing, f"keys of driver s7 not on {page.name}: {sorted(missing)}"
    assert "reference/config.md)" in text
    assert all(t in text for t in S7_TYPES)
    for name in ("PG", "OP", "S7 basic"):
        assert f"`{name}`" in text


def test_the_refusals_quoted_are_what_validate_says(tmp_path: Path) -> None:
    quoted = re.findall(r"`([A-Z]+ (?:[^`]* )?at [^`]*)`", DOC.read_text(encoding="utf-8"))
    assert len(quoted) >= 2
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "agent: {id: t}\ndevices:\n  - name: m\n    driver: s7\n    connection: {host: h}\n"
        "    tags:\n"
        "      - {name: a, address: DB10.DBX8.0, type: REAL}\n"
        "      - {name: b, address: DB10.DBD4, type: INT}\n",
        encoding="utf-8",
    )
    with pytest.raises(ConfigErrors) as errors:
        load_config(cfg, load_drivers())
    said = " ".join(i.message for i in errors.value.issues)
    for text in quoted:
        assert text in said, text


@pytest.mark.parametrize("page", [DOC, ZH], ids=["en", "zh-CN"])
def test_the_reasons_named_are_reasons_the_driver_gives(page: Path) -> None:
    """Every quoted reason of the quality section and the troubleshooting table is produced by
    the driver's code (its literal text, or the start of a formatted one)."""
    text = page.read_text(encoding="utf-8")
    code = "\n".join(p.read_text(encoding="utf-8") for p in SOURCES)
    reasons = set(
        re.findall(
            r"`((?:item error|PLC error|connection|undecodable|invalid|PLC "
            r"refused|not confirmed|timeout)[^`]*)`",
            text,
        )
    )
    assert len(reasons) >= 6
    for reason in reasons:
        stem = re.split(r" 0x| \.\.\.|: |\(", reason)[0].strip()
        assert stem in code, reason
    # An item's reason is the PLC's return code with its meaning, exactly as the page shows it.
    for code_text, meaning in re.findall(r"item error (0x[0-9a-f]{2}) \(([^)]+)\)", text):
        assert item_reason(int(code_text, 16)) == f"item error {code_text} ({meaning})"
