"""The operations docs (docs/operations.md, its Simplified Chinese twin, and the Chinese pages as a
whole) tell the truth."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest

from agent.app.status_cli import print_status
from agent.south.registry import load_drivers
from tests.doc_examples import code_blocks, load_example
from tests.test_ops_dashboards import exported
from tests.test_status_page import snapshot

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"
OPERATIONS = DOCS / "operations.md"
ZH = DOCS / "zh-CN" / "operations.md"


class Pages:
    """Every page under a folder, read like one file: the Simplified Chinese pages together are what
    README.zh-CN.md once held, so their examples and metric names are checked as a whole."""

    suffix = ".md"

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def read_text(self, encoding: str = "utf-8") -> str:
        pages = sorted(self.folder.rglob("*.md"))
        assert pages, self.folder
        return "".join(page.read_text(encoding=encoding) for page in pages)

    def __repr__(self) -> str:
        return f"{self.folder.relative_to(REPO)}/**/*.md"


ZH_PAGES = Pages(DOCS / "zh-CN")


@pytest.mark.parametrize("doc", [ZH_PAGES, REPO / "config/edge-agent.yaml"])
def test_yaml_examples_validate(doc: Path, tmp_path: Path) -> None:
    """Every example, completed the way tests/doc_examples.py says (a whole file, a devices
    section, a device list, a tag list, a device's keys), is a config the loader accepts."""
    if isinstance(doc, Pages):  # each page's blocks, less those marked <!-- not-config: why -->
        pages = sorted(doc.folder.rglob("*.md"))
        blocks = [b.text for p in pages for b in code_blocks(p, ("yaml",)) if b.not_config is None]
    else:
        blocks = [doc.read_text()]
    assert blocks
    for block in blocks:
        load_example(block, load_drivers(), tmp_path)


def test_the_operations_page_and_its_twin_have_both_parts() -> None:
    """Installing, then day-to-day operation, in both languages; the Chinese page leads on to the
    Chinese configuration and device pages (what README.zh-CN.md held between those two parts)."""
    text = OPERATIONS.read_text(encoding="utf-8")
    assert text.startswith("# ")
    assert (
        0 < text.index("\n## Installing on a gateway\n") < text.index("\n## Day-to-day operation\n")
    )
    zh = ZH.read_text(encoding="utf-8")
    assert zh.startswith("# ")
    for heading in ("## 在网关上安装", "## 日常运维"):
        assert f"\n{heading}\n" in zh
    assert zh.index("\n## 在网关上安装\n") < zh.index("\n## 日常运维\n")
    for link in (
        "](configuration.md)",
        "](devices/modbus.md)",
        "](devices/serial.md)",
        "](devices/opcua.md)",
    ):
        assert link in zh, link


@pytest.mark.parametrize("doc", [OPERATIONS, DOCS / "processing.md", ZH, ZH_PAGES])
def test_metrics_named_in_the_docs_exist(doc: Path) -> None:
    names = exported()
    for metric in set(re.findall(r"`(edge_agent_[a-z_]+)", doc.read_text(encoding="utf-8"))):
        assert metric in names, metric


@pytest.mark.parametrize("doc", [OPERATIONS, ZH])
def test_status_example_has_the_shape_the_command_prints(doc: Path) -> None:
    text = doc.read_text(encoding="utf-8")
    shown = text[text.index("$ edge-agent status\n") :].split("```")[0].splitlines()[1:]
    out = io.StringIO()
    print_status(snapshot(), out)
    printed = out.getvalue().splitlines()
    assert [line.split(" ")[0] for line in shown[:6]] == [
        line.split(" ")[0] for line in printed[:6]
    ]
    assert shown[7].split() == printed[7].split()  # the device table's header
