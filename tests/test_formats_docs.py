"""The platform pages (docs/platforms/, once README.md's "Sending data to your platform") tell the
truth: every example validates and does what the text says."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from agent.app.config import load_config
from agent.north.formats import JsonFormat, build_format
from agent.north.formats.alibaba import AlibabaFormat
from agent.north.formats.aws import AwsIotFormat
from agent.north.formats.azure import AzureIotFormat
from agent.north.formats.huawei import HuaweiFormat
from agent.north.formats.sparkplug.format import SparkplugFormat
from agent.north.formats.thingsboard import ThingsBoardFormat
from agent.south.registry import load_drivers
from tests.readme import DOCS

PLATFORMS = DOCS / "platforms"
#: The pages in the order README.md's section held them (one example each).
PAGES = [
    PLATFORMS / f"{name}.md"
    for name in ("json", "sparkplug", "thingsboard", "aws", "azure", "alibaba", "huawei", "brokers")
]


def _blocks(page: Path) -> list[str]:
    return re.findall(r"```yaml\n(.*?)```", page.read_text(encoding="utf-8"), re.S)


def _examples() -> list[str]:
    return [block for page in PAGES for block in _blocks(page)]


def _text(name: str) -> str:
    return (PLATFORMS / f"{name}.md").read_text(encoding="utf-8")


def _load(tmp_path: Path, text: str) -> Any:
    path = tmp_path / "example.yaml"
    path.write_text(text, encoding="utf-8")
    return load_config(path, load_drivers())


def test_every_page_starts_with_its_title_and_shows_one_example() -> None:
    for page in PAGES:
        assert page.read_text(encoding="utf-8").startswith("# "), page
        assert len(_blocks(page)) == 1, page  # so _examples()[n] is the n-th page's
    assert "\n## Sending data to your platform\n" in _text("json")


@pytest.mark.parametrize("index", range(len(_examples())))
def test_every_example_validates(tmp_path: Path, index: int) -> None:
    _load(tmp_path, _examples()[index])


def test_unified_namespace_example_topics(tmp_path: Path) -> None:
    fmt = build_format(_load(tmp_path, _examples()[0]))
    assert isinstance(fmt, JsonFormat)
    text = _text("json")
    for device in ("press-1", "oven-2"):
        topic = fmt.data_topic(device)
        assert f"`{topic}`" in text
    assert fmt.data_topic("press-1/event") == "hamburg/press-shop/line1/press-1/event"


def test_sparkplug_example(tmp_path: Path) -> None:
    config = _load(tmp_path, _examples()[1])
    fmt = build_format(config)
    assert isinstance(fmt, SparkplugFormat)
    assert (fmt.group_id, fmt.node_id, fmt.host_id) == ("hamburg", "line1-gw", "scada-1")


def test_thingsboard_example(tmp_path: Path) -> None:
    config = _load(tmp_path, _examples()[2])
    fmt = build_format(config)
    assert isinstance(fmt, ThingsBoardFormat)
    assert (fmt.device_type, fmt.max_payload) == ("Power meter", 65536)
    types = {m["device"]: m.get("type") for m in (json.loads(c.payload) for c in fmt.online())}
    assert types == {
        "press-1": "Hydraulic press",
        "press-2": "Press pilot",
        "meter-1": "Power meter",
    }
    text = " ".join(_text("thingsboard").split())  # as the text says
    assert (
        "press-1 is a `Hydraulic press`, press-2 a `Press pilot` and meter-1 a `Power meter`"
        in text
    )
    assert config.mqtt.username is None and config.mqtt.password_file is not None


def test_aws_example(tmp_path: Path) -> None:
    fmt = build_format(_load(tmp_path, _examples()[3]))
    assert isinstance(fmt, AwsIotFormat)
    assert fmt.data_topic("press-1") == "factory/line1-gw/press-1/data"


def test_azure_example(tmp_path: Path) -> None:
    fmt = build_format(_load(tmp_path, _examples()[4]))
    assert isinstance(fmt, AzureIotFormat)
    assert (fmt.hub, fmt.device_id) == ("contoso.azure-devices.net", "line1-gw")
    assert fmt.will().topic.startswith("devices/line1-gw/messages/events/")


def test_alibaba_example(tmp_path: Path) -> None:
    config = _load(tmp_path, _examples()[5])
    fmt = build_format(config)
    assert isinstance(fmt, AlibabaFormat)
    assert fmt.subs == {"press-1": ("a1SubPrdKey", "press-1")}
    assert (fmt.product_key, fmt.device_name, config.mqtt.port) == ("a1GwPrdKey1", "line1-gw", 1883)


def test_huawei_example(tmp_path: Path) -> None:
    fmt = build_format(_load(tmp_path, _examples()[6]))
    assert isinstance(fmt, HuaweiFormat)
    assert fmt.subs == {"press-1": "6500f1b2c3d4e6_press-1"}


def test_cluster_example(tmp_path: Path) -> None:
    mqtt = _load(tmp_path, _examples()[7]).mqtt
    assert len(mqtt.servers) == 3 and mqtt.protocol == "auto" and mqtt.message_expiry == 3600
