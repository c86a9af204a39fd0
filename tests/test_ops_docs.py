"""The operations docs (README.md, README.zh-CN.md) tell the truth."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest

from agent.config import load_config
from agent.drivers import load_drivers
from agent.status_cli import print_status
from tests.readme import ReadmeSection
from tests.test_ops_dashboards import exported
from tests.test_status_page import snapshot

REPO = Path(__file__).resolve().parent.parent
OPERATIONS = ReadmeSection("Installing on a gateway", "Day-to-day operation")
ZH = REPO / "README.zh-CN.md"


def yaml_blocks(path: Path) -> list[str]:
    return re.findall(r"```yaml\n(.*?)```", path.read_text(encoding="utf-8"), re.S)


#: How a documentation block becomes a whole config: a block is a whole file, the ``devices:``
#: section of one, a list of device entries, or a fragment of a device (checked with the English
#: section's own test, which knows where it goes).
_AGENT = "agent:\n  id: doc\n"


def _as_config(block: str) -> str | None:
    first = next((ln for ln in block.splitlines() if ln.strip() and not ln.startswith("#")), "")
    if first.startswith(("agent:", "mqtt:")):
        return block if "\nagent:" in "\n" + block else _AGENT + block
    if first.startswith("devices:"):
        return _AGENT + block
    if first.startswith("- "):
        return _AGENT + "devices:\n" + block
    return None


@pytest.mark.parametrize("doc", [ZH, REPO / "config/edge-agent.yaml"])
def test_yaml_examples_validate(doc: Path, tmp_path: Path) -> None:
    blocks = yaml_blocks(doc) if doc.suffix == ".md" else [doc.read_text()]
    assert blocks
    checked = 0
    for i, block in enumerate(blocks):
        text = _as_config(block)
        if text is None:
            continue
        path = tmp_path / f"block{i}.yaml"
        path.write_text(text, encoding="utf-8")
        load_config(path, load_drivers())
        checked += 1
    assert checked >= len(blocks) // 2, "most examples are whole configs or device lists"


def test_sections_the_readme_splices() -> None:
    text = OPERATIONS.read_text(encoding="utf-8")
    assert text.startswith("## Installing on a gateway\n")
    assert "\n## Day-to-day operation\n" in text
    zh = ZH.read_text(encoding="utf-8")
    for heading in ("## 在网关上安装", "## 配置", "## 接入设备", "## 日常运维"):
        assert f"\n{heading}\n" in zh


@pytest.mark.parametrize("doc", [OPERATIONS, ZH])
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
