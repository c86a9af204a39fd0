"""The json format: the contract's default layout untouched, topic templates for a unified
namespace, and the config that feeds them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.app.config import ConfigErrors, load_config
from agent.core.buffer import StoredBatch
from agent.north.formats import JsonFormat, build_format
from agent.north.formats.jsonfmt import check_template
from agent.south.registry import load_drivers
from tests.brokers import Mosquitto, Subscriber
from tests.test_failover import Rig, _settings


def _row(device: str, seq: int, kind: str = "data") -> StoredBatch:
    return StoredBatch(
        id=seq,
        device=device,
        kind=kind,
        seq=seq,
        ts_ms=5,
        body=b'{"ts":5,"values":{"a":1}}',
        created=0.0,
    )


def test_default_layout_is_the_contract() -> None:
    fmt = JsonFormat("gw", "edge/gw")
    [packed] = fmt.pack([_row("press-1", 7)])
    assert packed.message is not None
    assert packed.message.topic == "edge/gw/press-1/data"
    assert packed.message.payload == (
        b'{"agent":"gw","device":"press-1","seq":7,"ts":5,"values":{"a":1}}'
    )
    assert (packed.message.qos, packed.message.retain) == (1, False)
    assert fmt.pack([_row("press-1/event", 1)])[0].message.topic == "edge/gw/press-1/event"  # type: ignore[union-attr]
    assert fmt.pack([_row("press-1", 1, kind="event")])[0].message.topic == (  # type: ignore[union-attr]
        "edge/gw/press-1/event"
    )
    will = fmt.will()
    assert (will.topic, json.loads(will.payload), will.retain) == (
        "edge/gw/status",
        {"online": False},
        True,
    )


def test_template_places_devices_in_the_plant() -> None:
    placement = {"press-1": {"site": "p1", "area": "a1", "line": "l1"}, "oven": {"site": "p1"}}
    fmt = JsonFormat("gw", "edge/gw", "{site}/{area}/{line}/{device}/data", placement)
    assert fmt.data_topic("press-1") == "p1/a1/l1/press-1/data"
    assert fmt.data_topic("press-1/event") == "p1/a1/l1/press-1/event"
    kinded = JsonFormat("gw", "edge/gw", "{site}/{agent}/{device}/{kind}", placement)
    assert kinded.data_topic("oven/event") == "p1/gw/oven/event"
    # status and commands stay under the prefix: consumers and the contract find them there
    assert fmt.device_status_topic("press-1") == "edge/gw/press-1/status"
    assert fmt.subscriptions() == ("edge/gw/+/cmd",)


@pytest.mark.parametrize(
    ("template", "why"),
    [
        ("{site}/+/{device}/data", "wildcards"),
        ("{site}/#/{device}/data", "wildcards"),
        ("{site}//{device}/data", "empty levels"),
        ("/{device}/data", "empty levels"),
        ("{device}/data/", "empty levels"),
        ("$SYS/{device}/data", "'$'"),
        ("plant/line1/data", "{device}"),
        ("{site}/{device}/values", "{kind} or data"),
        ("{site}/{device!r}/data", "conversion"),
        ("{site}/{device:>5}/data", "format spec"),
        ("{site}/{plant}/{device}/data", "unknown placeholder"),
        ("{site}/{device/data", "invalid topic_template"),
    ],
)
def test_templates_that_could_inject_or_collide_are_refused(template: str, why: str) -> None:
    with pytest.raises(ValueError) as exc:
        check_template(template)
    assert why in str(exc.value)


def _config(tmp_path: Path, mqtt: str, agent: str = "") -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(
        f"agent: {{id: gw, data_dir: {tmp_path}/data{agent}}}\n"
        f"mqtt:\n{mqtt}"
        "devices:\n"
        "  - {name: press-1, driver: modbus, connection: {host: 127.0.0.1, port: 5020},\n"
        "     tags: [{name: t, table: holding, address: 0, type: uint16}]}\n"
        "  - {name: oven, driver: modbus, connection: {host: 127.0.0.1, port: 5021},\n"
        "     tags: [{name: t, table: holding, address: 0, type: uint16}]}\n"
    )
    return path


def test_build_format_from_config_uses_agent_and_device_placement(tmp_path: Path) -> None:
    mqtt = (
        "  json:\n"
        "    topic_template: '{site}/{area}/{line}/{device}/data'\n"
        "    placement: {press-1: {line: l1}, oven: {line: l2, area: bakery}}\n"
    )
    cfg = load_config(_config(tmp_path, mqtt, ", site: s1, area: a1"), load_drivers())
    fmt = build_format(cfg)
    assert isinstance(fmt, JsonFormat)
    assert fmt.data_topic("press-1") == "s1/a1/l1/press-1/data"
    assert fmt.data_topic("oven") == "s1/bakery/l2/oven/data"


def test_template_field_nobody_fills_is_refused(tmp_path: Path) -> None:
    mqtt = "  json:\n    topic_template: '{site}/{line}/{device}/data'\n"
    path = _config(tmp_path, mqtt, ", site: s1")
    with pytest.raises(ConfigErrors) as exc:
        load_config(path, load_drivers())
    [issue] = exc.value.issues
    assert "{line} needs agent.line" in issue.message
    assert "press-1, oven" in issue.message


async def test_templated_topics_reach_the_broker(tmp_path: Path, broker: Mosquitto) -> None:
    sub = Subscriber(broker.port, ["s1/#"]).start()
    fmt = JsonFormat("gw", "edge/gw", "{site}/{device}/data", {"d1": {"site": "s1"}})
    async with Rig(tmp_path, _settings([f"127.0.0.1:{broker.port}"]), fmt) as rig:
        await rig.put("d1", 2)
        msgs = await sub.wait_for(lambda m: len(m) >= 2)
    sub.stop()
    assert [m.topic for m in msgs] == ["s1/d1/data", "s1/d1/data"]
    assert [m.json()["seq"] for m in msgs] == [1, 2]
