"""Several destinations through real brokers: the cloud and the plant's own broker at once.

Two mosquittos, one agent, real Modbus simulators. The plant's broker is reached through a
fault proxy, so a test can kill it, blackhole it (a half-open link) or throttle it while the
cloud stays live; then both must hold every batch with the same seq and the same values.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent.app.runtime import Agent
from simulators.modbus_tcp import ModbusSimulator
from tests.brokers import Mosquitto, Received, Subscriber, free_port
from tests.e2e import AGENT_BIN, AgentRig, buffer_state, local_mqtt, point, until
from tests.faultproxy import FaultProxy

TAGS = [point("voltage_l1").tag(), point("stroke_count").tag()]
PLANT_PREFIX = "acme/plant1/line1"


def _config(path: Path, sim_port: int, cloud_port: int, plant_port: int, **plant: Any) -> Path:
    """press-1 goes to both; oven-2 only to the cloud (the plant takes press-1 alone)."""
    doc = {
        "agent": {"id": "gw", "data_dir": str(path.parent / "data")},
        "mqtt": local_mqtt(cloud_port, max_inflight=16),
        "outputs": [
            {
                "name": "plant",
                **local_mqtt(plant_port, max_inflight=16, keepalive=5),
                "topic_prefix": PLANT_PREFIX,
                "devices": ["press-1"],
                **plant,
            }
        ],
        "metrics": {"listen": None},
        "devices": [
            {
                "name": name,
                "driver": "modbus",
                "poll_interval": "100ms",
                "connection": {"host": "127.0.0.1", "port": sim_port, "unit_id": unit},
                "tags": TAGS,
            }
            for name, unit in (("press-1", 1), ("oven-2", 2))
        ],
    }
    path.write_text(json.dumps(doc))
    return path


def _by_seq(messages: list[Received], suffix: str) -> dict[int, Any]:
    """The data messages of one device by seq (a resent duplicate must be identical)."""
    out: dict[int, Any] = {}
    for m in messages:
        if m.topic.endswith(suffix):
            doc = m.json()
            if doc["seq"] in out:
                assert out[doc["seq"]] == doc, "a resent batch differs from the first copy"
            out[doc["seq"]] = doc
    return out


@dataclass
class Plant:
    cloud: Mosquitto
    plant: Mosquitto
    proxy: FaultProxy
    sim: ModbusSimulator
    config: Path


@asynccontextmanager
async def plant_and_cloud(tmp_path: Path, **plant: Any) -> AsyncIterator[Plant]:
    cloud, broker = Mosquitto(tmp_path / "cloud"), Mosquitto(tmp_path / "plant")
    cloud.start()
    broker.start()
    try:
        async with (
            ModbusSimulator(port=free_port(), units=(1, 2), update_interval=None) as sim,
            FaultProxy(broker.port) as proxy,
        ):
            config = _config(tmp_path / "c.yaml", sim.port, cloud.port, proxy.port, **plant)
            yield Plant(cloud, broker, proxy, sim, config)
    finally:
        cloud.stop()
        broker.stop()


async def test_each_destination_gets_what_it_takes_with_the_same_seqs(tmp_path: Path) -> None:
    async with plant_and_cloud(tmp_path) as rig:
        cloud = Subscriber(rig.cloud.port, ["edge/gw/#"], client_id="cloud").start()
        plant = Subscriber(rig.plant.port, [f"{PLANT_PREFIX}/#"], client_id="plant").start()
        async with AgentRig(rig.config) as agent:
            assert set(agent.destinations) == {"default", "plant"}
            # Generous timeouts: a loaded CI machine, the plant's link through a proxy.
            await plant.wait_for(lambda m: len(_by_seq(m, "/press-1/data")) >= 5, 30)
            await cloud.wait_for(lambda m: len(_by_seq(m, "/press-1/data")) >= 5, 30)
            await cloud.wait_for(lambda m: len(_by_seq(m, "/oven-2/data")) >= 3, 30)
            value = agent.metrics.registry.get_sample_value
            assert value("edge_agent_mqtt_connected", {"output": "plant"}) == 1
            assert value("edge_agent_published_batches_total", {"output": "plant"}) >= 5
            # The plant's broker commands only the plant's devices.
            cmd = {"id": "c1", "write": {"voltage_l1": 1}}
            plant._client.publish(f"{PLANT_PREFIX}/oven-2/cmd", json.dumps(cmd), qos=1)
            replies = await plant.wait_for(lambda m: any(x.topic.endswith("/cmd/reply") for x in m))
            [reply] = [m.json() for m in replies if m.topic.endswith("/cmd/reply")]
            assert reply == {
                "id": "c1",
                "ok": False,
                "error": "device 'oven-2' is not one of destination plant's",
            }
        cloud.stop()
        plant.stop()
    # not one of its devices: nothing of it but the refused command and its reply
    assert not [m for m in plant.messages if "oven-2" in m.topic and "/cmd" not in m.topic]
    # Device status goes to both (the plant only hears of its own device).
    assert any(m.topic == f"{PLANT_PREFIX}/press-1/status" for m in plant.messages)
    assert any(m.topic == "edge/gw/oven-2/status" for m in cloud.messages)
    both = _by_seq(plant.messages, "/press-1/data"), _by_seq(cloud.messages, "/press-1/data")
    common = set(both[0]) & set(both[1])
    assert len(common) >= 5
    for seq in common:  # the same batch: the same seq, ts and values everywhere
        assert both[0][seq] == both[1][seq]
    for seqs in (both[0], both[1], _by_seq(cloud.messages, "/oven-2/data")):
        assert sorted(seqs)[0] == 1  # each destination from the first batch on


async def _live(sub: Subscriber, since: float, ahead: float = 1.5, timeout: float = 6) -> None:
    """The destination keeps receiving fresh batches: one stamped ``ahead`` s after ``since``."""
    await sub.wait_for(
        lambda m: any(
            d["ts"] / 1000 >= since + ahead for d in _by_seq(m, "/press-1/data").values()
        ),
        timeout,
    )


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["killed", "blackholed", "throttled"])
async def test_a_dead_slow_or_throttled_plant_broker_never_holds_the_cloud_back(
    tmp_path: Path, fault: str
) -> None:
    """While the plant's broker is down (or half-open, or slow) the cloud stays live; when it
    returns the plant drains its own backlog; then both hold every press-1 batch, the same seqs
    with the same values."""
    async with plant_and_cloud(tmp_path) as rig:
        cloud = Subscriber(rig.cloud.port, ["edge/gw/#"], client_id="cloud").start()
        plant = Subscriber(rig.plant.port, [f"{PLANT_PREFIX}/#"], client_id="plant").start()
        async with AgentRig(rig.config) as agent:
            await plant.wait_for(lambda m: len(_by_seq(m, "/press-1/data")) >= 3)
            started = time.time()
            if fault == "killed":
                await asyncio.to_thread(rig.plant.stop)
            elif fault == "blackholed":
                rig.proxy.set("blackhole")
            else:
                rig.proxy.set("throttle", "up", rate=300)  # a few batches a second at most
            await _live(cloud, started, ahead=3.0, timeout=8)
            backlog = agent.buffer.output_stats("plant").batches
            assert backlog > 5, "the plant's batches wait in the buffer"
            assert agent.buffer.output_stats("default").batches < 16  # the cloud keeps up
            restored = time.time()
            if fault == "killed":
                await asyncio.to_thread(rig.plant.start)
            else:
                rig.proxy.set("pass")
            await until(lambda: agent.buffer.output_stats("plant").batches < 16, timeout=30)
            await _live(cloud, restored)
            await _live(plant, restored, timeout=15)
        cloud.stop()
        plant.stop()
    got = {
        "cloud": _by_seq(cloud.messages, "/press-1/data"),
        "plant": _by_seq(plant.messages, "/press-1/data"),
    }
    last, waiting = buffer_state(tmp_path / "data")
    for name, seqs in got.items():
        missing = [s for s in range(1, last["press-1"] + 1) if s not in seqs]
        assert set(missing) <= waiting.get("press-1", set()), f"{name} lost batches: {missing}"
    for seq in set(got["cloud"]) & set(got["plant"]):
        assert got["cloud"][seq] == got["plant"][seq]


@pytest.mark.slow
async def test_sigkill_while_the_plant_is_down_loses_nothing_for_either(tmp_path: Path) -> None:
    """``edge-agent run`` killed with SIGKILL while one destination is down: after a restart,
    each destination gets every batch it wants (what was in flight is sent again)."""
    async with plant_and_cloud(tmp_path) as rig:
        cloud = Subscriber(rig.cloud.port, ["edge/gw/#"], client_id="cloud").start()
        plant = Subscriber(rig.plant.port, [f"{PLANT_PREFIX}/#"], client_id="plant").start()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        cmd = [str(AGENT_BIN), "run", "--config", str(rig.config)]
        proc = subprocess.Popen(cmd, env=env, stderr=subprocess.DEVNULL)
        try:
            await plant.wait_for(lambda m: len(_by_seq(m, "/press-1/data")) >= 3, 15)
            await asyncio.to_thread(rig.plant.stop)
            await cloud.wait_for(lambda m: len(_by_seq(m, "/press-1/data")) >= 20, 15)
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            await asyncio.to_thread(rig.plant.start)
            proc = subprocess.Popen(cmd, env=env, stderr=subprocess.DEVNULL)
            await plant.wait_for(lambda m: len(_by_seq(m, "/press-1/data")) >= 25, 20)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(20)
        cloud.stop()
        plant.stop()
    last, waiting = buffer_state(tmp_path / "data")
    for name, sub in (("cloud", cloud), ("plant", plant)):
        seqs = _by_seq(sub.messages, "/press-1/data")
        missing = [s for s in range(1, last["press-1"] + 1) if s not in seqs]
        assert set(missing) <= waiting.get("press-1", set()), f"{name} lost {missing}"


async def test_reload_touches_only_the_destinations_that_changed(tmp_path: Path) -> None:
    """An unchanged destination keeps its session; a changed one gets a new one; an added one
    starts; a removed one stops and lets go of its share of the buffer."""
    async with plant_and_cloud(tmp_path) as rig, AgentRig(rig.config) as agent:
        agent.config_path = rig.config
        await until(lambda: all(d.publisher.connected.is_set() for d in _dests(agent)))
        cloud_session = agent.publisher
        doc = json.loads(rig.config.read_text())
        doc["outputs"][0]["topic_prefix"] = "acme/plant1/line2"
        doc["outputs"].append(
            {"name": "audit", **local_mqtt(rig.cloud.port), "streams": ["events"]}
        )
        rig.config.write_text(json.dumps(doc))
        assert await agent.reload()
        assert agent.publisher is cloud_session  # unchanged: same session, same window
        assert set(agent.destinations) == {"default", "plant", "audit"}
        assert agent.destinations["plant"].config.mqtt.topic_prefix == "acme/plant1/line2"
        await until(lambda: all(d.publisher.connected.is_set() for d in _dests(agent)))
        doc["outputs"] = [doc["outputs"][1]]
        rig.config.write_text(json.dumps(doc))
        assert await agent.reload()
        assert set(agent.destinations) == {"default", "audit"}
        assert agent.publisher is cloud_session
        assert "plant" not in (agent.buffer.stats().outputs or {})
        value = agent.metrics.registry.get_sample_value
        assert value("edge_agent_mqtt_connected", {"output": "plant"}) is None


def _dests(agent: Agent) -> list[Any]:
    return list(agent.destinations.values())


def test_every_format_serves_as_a_second_destination(tmp_path: Path) -> None:
    """Generated from the platform examples (one per registered format, tests/test_platform_
    examples.py keeps them complete): each example's mqtt section, moved into ``outputs:``
    beside a plain json cloud, validates and builds its format for that destination."""
    from ruamel.yaml import YAML

    from agent.app.config import load_config
    from agent.app.outputs import destination_config
    from agent.north.formats import build_format
    from agent.north.formats.registry import available_formats
    from agent.south.registry import load_drivers

    root = Path(__file__).resolve().parent.parent
    seen = set()
    for example in sorted((root / "config" / "examples").glob("*.yaml")):
        doc = YAML(typ="safe").load(example.read_text())
        section = dict(doc["mqtt"])
        section.pop("password_env", None), section.pop("password_file", None)
        section.pop("username", None)
        doc["mqtt"] = {"host": "127.0.0.1"}
        doc["outputs"] = [{"name": "second", **section}]
        doc["agent"]["data_dir"] = str(tmp_path / "data")
        path = tmp_path / example.name
        path.write_text(json.dumps(doc))
        config = load_config(path, load_drivers())
        fmt = build_format(destination_config(config, "second"))
        assert fmt.name == section.get("format", "json")
        seen.add(fmt.name)
    assert seen == set(available_formats()), "a format without an example is not covered"
