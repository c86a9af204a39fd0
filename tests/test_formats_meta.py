"""A tag's unit and description reach the platforms that carry them: JSON's retained
``<prefix>/<device>/meta``, Sparkplug's ``engUnit``/``description`` metric properties in DBIRTH,
ThingsBoard's client attributes; a reload that changes them builds a new format (and session),
so the platforms are told again. End to end through a real mosquitto for JSON and Sparkplug."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from agent.app.config import load_config
from agent.app.config.models import Config
from agent.north.formats import build_format
from agent.north.formats.meta import TagMeta, config_meta
from agent.north.formats.sparkplug import sparkplug_b_pb2
from agent.north.formats.sparkplug.format import SparkplugFormat
from agent.north.formats.thingsboard import ATTRIBUTES, ThingsBoardFormat
from agent.south.registry import load_drivers
from simulators.modbus_tcp import ModbusSimulator
from tests.brokers import Mosquitto, Subscriber, free_port
from tests.test_failover import Rig, _settings
from tests.test_reload import device
from tests.test_reload_format import _agent, _write

pb: Any = sparkplug_b_pb2

TAGS = (
    "devices:\n"
    "  - name: press-1\n"
    "    driver: modbus\n"
    "    connection: {host: 127.0.0.1, port: 5020}\n"
    "    tags:\n"
    "      - {name: temp, table: holding, address: 0, type: float32, unit: degC,\n"
    '         description: "Oil temperature, sump"}\n'
    "      - {name: count, table: holding, address: 2, type: uint16}\n"
)


SPARKPLUG = "mqtt: {format: sparkplug, sparkplug: {group_id: plant}}\n"


def _config(tmp_path: Path, mqtt: str, tags: str = TAGS) -> Config:
    path = tmp_path / "agent.yaml"
    path.write_text(f"agent: {{id: gw1, data_dir: {tmp_path / 'data'}}}\n{mqtt}{tags}")
    return load_config(path, load_drivers())


def test_every_tag_has_its_type_and_what_the_config_says(tmp_path: Path) -> None:
    meta = config_meta(_config(tmp_path, ""))
    assert meta == {
        "press-1": {
            "temp": TagMeta("float32", "degC", "Oil temperature, sump"),
            "count": TagMeta("uint16"),
        }
    }


def test_json_sends_a_retained_meta_message_per_device_after_connect(tmp_path: Path) -> None:
    fmt = build_format(_config(tmp_path, ""))
    [meta] = [m for m in fmt.online() if m.topic.endswith("/meta")]
    assert (meta.topic, meta.retain, meta.qos) == ("edge/gw1/press-1/meta", True, 1)
    assert json.loads(meta.payload) == {
        "agent": "gw1",
        "device": "press-1",
        "tags": {
            "temp": {"type": "float32", "unit": "degC", "description": "Oil temperature, sump"},
            "count": {"type": "uint16"},
        },
    }


def test_a_changed_unit_builds_a_new_session_where_births_or_devices_carry_it(
    tmp_path: Path,
) -> None:
    """Reload compares ``spec``: Sparkplug (births) and ThingsBoard (its device list is in the
    spec already) get a new format and session, whose connect sends the new metadata."""
    for mqtt in (SPARKPLUG, "mqtt: {format: thingsboard}\n"):
        old = build_format(_config(tmp_path, mqtt))
        same = build_format(_config(tmp_path, mqtt))
        new = build_format(_config(tmp_path, mqtt, TAGS.replace("degC", "degF")))
        assert old.spec == same.spec and old.spec != new.spec, mqtt


def test_json_keeps_its_session_and_refreshes_the_meta_messages(tmp_path: Path) -> None:
    """On plain json a reload keeps the session (the same ``spec``); ``refresh`` hands the new
    metadata over and says what changed: the changed device's meta, an empty retained message
    (deleting the broker's copy) for a device removed, nothing for one unchanged."""
    two = TAGS + (
        "  - name: oven\n    driver: modbus\n    connection: {host: 127.0.0.1, port: 5021}\n"
        "    tags: [{name: t, table: holding, address: 0, type: uint16, unit: K}]\n"
    )
    old = build_format(_config(tmp_path, "", two))
    new = build_format(_config(tmp_path, "", TAGS.replace("degC", "degF")))
    assert old.spec == new.spec
    out = old.refresh(new)
    assert [(m.topic, m.retain) for m in out] == [
        ("edge/gw1/oven/meta", True),
        ("edge/gw1/press-1/meta", True),
    ]
    assert out[0].payload == b""
    assert json.loads(out[1].payload)["tags"]["temp"]["unit"] == "degF"
    assert old.refresh(new) == []  # nothing changed since
    # after every connect (the reload may have come while disconnected): the delete again
    meta = [(m.topic, m.payload == b"") for m in old.online() if m.topic.endswith("/meta")]
    assert meta == [("edge/gw1/oven/meta", True), ("edge/gw1/press-1/meta", False)]


def _births(fmt: SparkplugFormat) -> dict[str, Any]:
    out = {}
    for m in fmt.online():
        kind = m.topic.split("/")[2]
        out[kind] = pb.Payload.FromString(m.payload)
    return out


def _properties(metric: Any) -> dict[str, Any]:
    props = metric.properties
    return {k: v.string_value or v.int_value for k, v in zip(props.keys, props.values, strict=True)}


def test_sparkplug_births_carry_eng_unit_and_description(tmp_path: Path) -> None:
    fmt = build_format(_config(tmp_path, SPARKPLUG))
    assert isinstance(fmt, SparkplugFormat)
    fmt.connect_sent()
    metrics = {m.name: m for m in _births(fmt)["DBIRTH"].metrics}
    temp = _properties(metrics["temp"])
    assert temp == {"engUnit": "degC", "description": "Oil temperature, sump"}
    assert [v.type for v in metrics["temp"].properties.values] == [pb.String, pb.String]
    assert not metrics["count"].HasField("properties")  # nothing to say: no empty PropertySet


def test_thingsboard_client_attributes_and_their_size_limit(tmp_path: Path) -> None:
    fmt = build_format(_config(tmp_path, "mqtt: {format: thingsboard}\n"))
    [attrs] = [m for m in fmt.online() if m.topic == ATTRIBUTES]
    assert json.loads(attrs.payload) == {
        "press-1": {"temp.unit": "degC", "temp.description": "Oil temperature, sump"}
    }
    long = {f"t{i}": TagMeta("float32", "kWh", "x" * 100) for i in range(200)}
    small = ThingsBoardFormat(["m"], max_payload=1024, meta={"m": long})
    parts = small.meta_attributes()
    assert len(parts) > 20 and all(len(p.payload) <= 1024 for p in parts)
    merged: dict[str, str] = {}
    for p in parts:
        merged.update(json.loads(p.payload)["m"])
    assert len(merged) == 400 and merged["t199.unit"] == "kWh"


async def test_json_meta_is_retained_on_the_broker_and_replaced_on_change(
    tmp_path: Path, broker: Mosquitto
) -> None:
    """The retained message is there for a consumer that subscribes later, and a new format
    (a reload that changed a unit) replaces it."""
    settings = _settings([f"127.0.0.1:{broker.port}"])
    first = build_format(_config(tmp_path, ""))
    sub = Subscriber(broker.port, ["edge/gw1/+/data"], client_id="data").start()
    async with Rig(tmp_path / "a", settings, first) as rig:
        await rig.put("press-1", 1)
        await sub.wait_for(lambda m: len(m) >= 1)  # connected, online() went out before data
    sub.stop()
    late = Subscriber(broker.port, ["edge/gw1/+/meta"], client_id="late").start()
    [kept] = await late.wait_for(lambda m: len(m) >= 1)
    assert kept.retain and kept.topic == "edge/gw1/press-1/meta"
    assert kept.json()["tags"]["temp"]["unit"] == "degC"
    changed = build_format(_config(tmp_path, "", TAGS.replace("degC", "degF")))
    async with Rig(tmp_path / "b", settings, changed):
        msgs = await late.wait_for(lambda m: len(m) >= 2)
    late.stop()
    assert msgs[1].json()["tags"]["temp"]["unit"] == "degF"
    again = Subscriber(broker.port, ["edge/gw1/+/meta"], client_id="again").start()
    [now] = await again.wait_for(lambda m: len(m) >= 1)
    again.stop()
    assert now.retain and now.json()["tags"]["temp"]["unit"] == "degF"


async def test_sparkplug_dbirth_properties_reach_the_broker(
    tmp_path: Path, broker: Mosquitto
) -> None:
    sub = Subscriber(broker.port, ["spBv1.0/plant/#"]).start()
    fmt = build_format(_config(tmp_path, SPARKPLUG))
    async with Rig(tmp_path, _settings([f"127.0.0.1:{broker.port}"]), fmt):
        msgs = await sub.wait_for(lambda m: any("/DBIRTH/" in x.topic for x in m))
    sub.stop()
    dbirth = next(m for m in msgs if m.topic == "spBv1.0/plant/DBIRTH/gw1/press-1")
    metrics = {m.name: m for m in pb.Payload.FromString(dbirth.payload).metrics}
    assert _properties(metrics["temp"]) == {
        "engUnit": "degC",
        "description": "Oil temperature, sump",
    }


async def test_a_reload_that_changes_a_unit_updates_the_meta_in_the_same_session(
    tmp_path: Path, broker: Mosquitto
) -> None:
    """Plain json keeps its session through a reload; the changed device's retained meta is
    replaced at once, and a device the reload removed has its meta deleted."""
    sub = Subscriber(broker.port, ["edge/gw/+/meta"]).start()
    async with ModbusSimulator(port=free_port(), units=(1,)) as sim:
        cfg = tmp_path / "c.yaml"
        p1, p2 = device("p1", sim.port), device("p2", sim.port)
        p1["tags"] = [{**p1["tags"][0], "unit": "degC", "description": "oil"}, *p1["tags"][1:]]
        _write(cfg, broker.port, [p1, p2])
        async with _agent(cfg, sub, "edge/gw/p2/meta") as agent:
            publisher = agent.publisher
            p1["tags"][0]["unit"] = "degF"
            _write(cfg, broker.port, [p1])
            assert await agent.reload()
            msgs = await sub.wait_for(
                lambda m: (
                    any(x.topic == "edge/gw/p2/meta" and not x.payload for x in m)
                    and any(b"degF" in x.payload for x in m)
                )
            )
            assert agent.publisher is publisher and publisher.sessions == 1
    sub.stop()
    latest = {m.topic: m.payload for m in msgs}
    tag = p1["tags"][0]["name"]
    assert json.loads(latest["edge/gw/p1/meta"])["tags"][tag] == {
        "type": p1["tags"][0]["type"],
        "unit": "degF",
        "description": "oil",
    }
    after = Subscriber(broker.port, ["edge/gw/+/meta"], client_id="after").start()
    kept = await after.wait_for(lambda m: len(m) >= 1)
    after.stop()
    assert [m.topic for m in kept] == ["edge/gw/p1/meta"]  # p2's retained copy is gone
