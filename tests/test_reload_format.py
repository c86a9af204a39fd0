"""A reload rebuilds the format when what it is built from changed, and only then.

Before, the format was built once at start: a reload that changed ``topic_prefix``, a topic
template or a device's placement restarted the MQTT session with the old format, so data kept
its old topics until a restart, while a device-only change on plain json must not cost a new
session at all.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from agent.app.config import load_config
from agent.app.runtime import Agent
from agent.south.registry import load_drivers
from simulators.modbus_tcp import ModbusSimulator
from tests.brokers import Mosquitto, Subscriber, free_port
from tests.e2e import local_mqtt
from tests.test_reload import device


def _write(path: Path, broker: int, devices: list[dict[str, Any]], **mqtt: Any) -> Path:
    doc = {
        "agent": {"id": "gw", "data_dir": str(path.parent / "data"), "site": "s1"},
        "mqtt": local_mqtt(broker, **mqtt),
        "buffer": {"max_size": "4MB"},
        "metrics": {"listen": None},
        "devices": devices,
    }
    path.write_text(json.dumps(doc))
    return path


@asynccontextmanager
async def _agent(cfg: Path, sub: Subscriber, first_topic: str) -> AsyncIterator[Agent]:
    """An agent started from ``cfg`` (so that ``reload()`` re-reads it), once its first data
    message arrived."""
    agent = Agent(load_config(cfg, load_drivers(), resolve_secrets=True), config_path=cfg)
    await agent.start()
    try:
        await sub.wait_for(lambda m: any(x.topic == first_topic for x in m))
        yield agent
    finally:
        await agent.stop()


async def test_reload_applies_a_new_topic_prefix_and_template(
    tmp_path: Path, broker: Mosquitto
) -> None:
    sub = Subscriber(broker.port, ["#"]).start()
    async with ModbusSimulator(port=free_port(), units=(1,)) as sim:
        cfg = tmp_path / "c.yaml"
        _write(cfg, broker.port, [device("p1", sim.port)], topic_prefix="old/gw")
        async with _agent(cfg, sub, "old/gw/p1/data") as agent:
            _write(cfg, broker.port, [device("p1", sim.port)], topic_prefix="new/gw")
            assert await agent.reload()
            await sub.wait_for(lambda m: any(x.topic == "new/gw/p1/data" for x in m))
            template = {"topic_template": "plant/{site}/{device}/data"}
            _write(
                cfg,
                broker.port,
                [device("p1", sim.port)],
                topic_prefix="new/gw",
                json=template,
            )
            assert await agent.reload()
            await sub.wait_for(lambda m: any(x.topic == "plant/s1/p1/data" for x in m))
    sub.stop()


async def test_a_device_change_on_plain_json_keeps_the_session(
    tmp_path: Path, broker: Mosquitto
) -> None:
    sub = Subscriber(broker.port, ["edge/gw/#"]).start()
    async with ModbusSimulator(port=free_port(), units=(1,)) as sim:
        cfg = tmp_path / "c.yaml"
        _write(cfg, broker.port, [device("p1", sim.port)])
        async with _agent(cfg, sub, "edge/gw/p1/data") as agent:
            fmt, publisher = agent.format, agent.publisher
            _write(cfg, broker.port, [device("p1", sim.port, interval=0.2), device("p2", sim.port)])
            assert await agent.reload()
            await sub.wait_for(lambda m: any(x.topic == "edge/gw/p2/data" for x in m))
            assert agent.format is fmt and agent.publisher is publisher
            assert publisher.sessions == 1
    sub.stop()
