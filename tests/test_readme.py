"""The two READMEs, now short front doors to docs/, hold up.

Each shows the two commands CI and the demo rest on, stays short, names every registered driver
and format in its matrix with the page of each, and links to every documentation page. The
walkthrough's shown output is what the agent prints for the walkthrough's own config: the
``validate`` line, the registers ``read`` shows decoding to the values beside them, the messages
carrying those values on the config's topics, the ``status`` screen. The Simplified Chinese README
is a twin: the same code blocks in the same order, the same sections, and a link to the Chinese
page (where one exists) for every page the English one links to.
"""

from __future__ import annotations

import io
import json
import re
import time
import urllib.parse
from contextlib import redirect_stdout
from pathlib import Path

import pytest

from agent.app.cli import main as cli_main
from agent.app.config import Config, load_config
from agent.app.status_cli import print_readings, print_status
from agent.north.formats.registry import available_formats
from agent.south.registry import load_drivers
from drivers.modbus.codec import decode
from drivers.modbus.config import ModbusDevice, ModbusTag
from drivers.modbus.driver import tag_codec
from tests.doc_examples import ROOT, Block, code_blocks
from tests.test_docs_all import links
from tests.test_status_page import snapshot

README = ROOT / "README.md"
ZH = ROOT / "README.zh-CN.md"
READMES = [README, ZH]
DOCS = ROOT / "docs"
ZH_DOCS = DOCS / "zh-CN"
#: The plan's bound: the README is a front door, the pages under docs/ hold the rest.
MAX_LINES = 300
#: Where the walkthrough's config lives on the gateway (the commands name it).
ETC_CONFIG = "/etc/edge-agent/config.yaml"


def _id(path: Path) -> str:
    return path.name


def targets(page: Path) -> set[str]:
    """The repository files the page links to (web addresses and anchors left out)."""
    found = set()
    for link in links(page):
        path = urllib.parse.unquote(link).partition("#")[0]
        if path and not re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", link):
            found.add(str((page.parent / path).resolve().relative_to(ROOT)))
    return found


def english_pages() -> list[str]:
    return sorted(str(p.relative_to(ROOT)) for p in DOCS.rglob("*.md") if ZH_DOCS not in p.parents)


def chinese_twin(page: str) -> str:
    """The Simplified Chinese page of an English page under docs/, or the page itself."""
    if page.startswith("docs/"):
        twin = ZH_DOCS / page.removeprefix("docs/")
        if twin.exists():
            return str(twin.relative_to(ROOT))
    return page


@pytest.mark.parametrize("readme", READMES, ids=_id)
def test_short_and_shows_the_two_commands(readme: Path) -> None:
    """`make demo` and `make test` are the README's promise (CI runs `make test` through
    .ci/run); everything else is a page under docs/."""
    text = readme.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= MAX_LINES
    commands = [
        line.split("#")[0].strip()
        for b in code_blocks(readme, ("sh",))
        for line in b.text.split("\n")
    ]
    assert "make demo" in commands and "make test" in commands
    assert "make test" in (ROOT / ".ci" / "run").read_text(encoding="utf-8")


@pytest.mark.parametrize("readme", READMES, ids=_id)
def test_the_matrix_names_every_driver_and_format_with_its_page(readme: Path) -> None:
    """Generated from the registries: a driver or format added tomorrow fails here until the
    README's matrix has its row, linking its page (and, for a format, its complete example)."""
    text = readme.read_text(encoding="utf-8")
    rows = {m[1]: m[2] for m in re.finditer(r"^\| `([a-z0-9]+)`[^|]*\|(.*)$", text, re.M)}
    devices = {name for name, row in rows.items() if "/devices/" in row}
    platforms = {name for name, row in rows.items() if "/platforms/" in row}
    assert devices == set(load_drivers())
    assert platforms == set(available_formats())
    for name in devices:
        assert f"devices/{name}.md)" in rows[name], name
    for name in platforms:
        assert f"platforms/{name}.md)" in rows[name], name
        assert f"(config/examples/{name}.yaml)" in rows[name], name
        assert (ROOT / "config" / "examples" / f"{name}.yaml").exists()


@pytest.mark.parametrize("readme", READMES, ids=_id)
def test_links_to_every_documentation_page(readme: Path) -> None:
    """Every page under docs/ is reachable from the front door (the Chinese README links the
    Chinese page where there is one), and so is the changelog."""
    wanted = set(english_pages()) | {"CHANGELOG.md"}
    if readme == ZH:
        wanted = {chinese_twin(p) for p in wanted}
    missing = sorted(wanted - targets(readme))
    assert not missing, f"{readme.name} does not link {missing}"


def test_the_chinese_readme_is_a_twin() -> None:
    """Same blocks (configs, commands, output) in the same order, as many sections, and the
    Chinese page for every page the English README links to."""
    en, zh = (README.read_text(encoding="utf-8"), ZH.read_text(encoding="utf-8"))
    assert [(b.lang, b.text) for b in code_blocks(ZH)] == [
        (b.lang, b.text) for b in code_blocks(README)
    ]
    assert len(re.findall(r"^## ", zh, re.M)) == len(re.findall(r"^## ", en, re.M))
    missing = sorted({chinese_twin(t) for t in targets(README)} - targets(ZH) - {"README.zh-CN.md"})
    assert not missing, missing


# -- the walkthrough -----------------------------------------------------------------------------


def _block(start: str) -> Block:
    found = [b for b in code_blocks(README) if b.text.startswith(start)]
    assert len(found) == 1, f"one block starting with {start!r}: {found}"
    return found[0]


@pytest.fixture
def walkthrough(tmp_path: Path) -> Config:
    """The walkthrough's config: the README's one whole file."""
    path = tmp_path / "config.yaml"
    path.write_text(_block("agent:\n").text, encoding="utf-8")
    return load_config(path, load_drivers())


def test_validate_prints_what_the_walkthrough_shows(tmp_path: Path) -> None:
    shown = _block("$ edge-agent validate").text.splitlines()
    assert shown[0] == f"$ edge-agent validate {ETC_CONFIG}"
    file = tmp_path / "config.yaml"
    file.write_text(_block("agent:\n").text, encoding="utf-8")
    out = io.StringIO()
    with redirect_stdout(out):
        assert cli_main(["validate", str(file)]) == 0
    assert out.getvalue().replace(str(file), ETC_CONFIG).splitlines() == shown[1:]


def _read_block() -> list[str]:
    return _block("$ sudo -u edge-agent edge-agent read").text.splitlines()


def _read_values() -> dict[str, str]:
    """TAG -> VALUE as the README's `read` table shows them."""
    return {row.split()[0]: row.split()[1] for row in _read_block()[3:]}


def test_read_shows_registers_that_decode_to_its_values(walkthrough: Config) -> None:
    """The table `read` prints when it polls the meter itself, for registers decoded the way the
    driver decodes them: the README's RAW words give the values beside them, tag by tag, in the
    device's order."""
    command, polled, *table = _read_block()
    device = walkthrough.devices[0]
    assert isinstance(device, ModbusDevice)
    assert command.split()[-3:] == ["-c", ETC_CONFIG, device.name]
    assert polled == (
        f"{device.name}: polled directly (no agent answers at http://{walkthrough.metrics.listen})"
    )
    rows = []
    for tag, line in zip(device.tags, table[1:], strict=True):
        assert isinstance(tag, ModbusTag)
        words = [int(w, 16) for w in line.split()[3:]]
        value = decode(tag_codec(tag, device.byte_order), words)
        rows.append({"tag": tag.name, "value": value, "quality": "good", "raw": words})
    out = io.StringIO()
    print_readings(rows, out)
    assert out.getvalue().splitlines() == table


def test_the_messages_carry_the_config_topics_and_the_read_values(walkthrough: Config) -> None:
    block = _block("$ sudo systemctl restart edge-agent").text.splitlines()
    assert block[1] == (f"$ mosquitto_sub -h {walkthrough.mqtt.host} -t 'edge/#' -v"), (
        "the broker the config names"
    )
    prefix = f"edge/{walkthrough.agent.id}"
    device = walkthrough.devices[0].name
    messages = dict(line.split(" ", 1) for line in block[2:])
    assert list(messages) == [
        f"{prefix}/status",
        f"{prefix}/{device}/status",
        f"{prefix}/{device}/data",
    ]
    assert json.loads(messages[f"{prefix}/status"])["online"] is True
    assert json.loads(messages[f"{prefix}/{device}/status"])["state"] == "up"
    data = json.loads(messages[f"{prefix}/{device}/data"])
    assert (data["agent"], data["device"], data["seq"]) == (walkthrough.agent.id, device, 1)
    assert {name: json.dumps(v) for name, v in data["values"].items()} == _read_values()


def test_status_prints_what_the_walkthrough_shows(walkthrough: Config) -> None:
    """The screen as `edge-agent status` prints it for this config's agent, broker and device."""
    shown = _block("$ edge-agent status").text.splitlines()[1:]
    now = time.time()
    device = walkthrough.devices[0]
    snap = snapshot(
        agent={
            "id": walkthrough.agent.id,
            "version": "0.1.0",
            "running": True,
            "started": now - 22,
            "uptime_s": 22.0,
            "config": ETC_CONFIG,
            "config_loaded": now - 22,
            "reloads": 0,
        },
        broker={
            "host": walkthrough.mqtt.host,
            "port": walkthrough.mqtt.port,
            "tls": walkthrough.mqtt.tls is not None,
            "connected": True,
            "sessions": 1,
        },
        buffer={
            "open": True,
            "batches": 0,
            "bytes": 115_200,
            "max_size": walkthrough.buffer.max_size,
            "oldest_age_s": 0.0,
            "dropped_total": 0,
        },
        devices=[
            {
                "name": device.name,
                "driver": device.driver,
                "state": "up",
                "reason": None,
                "since": now - 22,
                "poll_interval": 5.0,
                "last_poll": now - 1.8,
                "cycles": 4,
                "last_seq": 4,
                "error_rate": 0.0,
                "timestamps_clamped": 0,
                "values": {},
                "units": {},
            }
        ],
        recent_errors=[],
    )
    snap["now"] = now
    out = io.StringIO()
    print_status(snap, out)
    assert [line.rstrip() for line in out.getvalue().splitlines()] == shown
