"""The DL/T 645 pages hold up against the simulator of the same three meters: the Energy meters
page's worked example publishes the message it shows, and the driver's sample config reads
every tag of its meters."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

from simulators.dlt645_meters import MeterLine, three_meters
from tests.brokers import Mosquitto, Subscriber
from tests.doc_examples import ROOT, code_blocks
from tests.e2e import AgentRig, local_mqtt

ENERGY = ROOT / "docs" / "energy.md"
SAMPLE = ROOT / "drivers" / "dlt645" / "sample.yaml"


def on_the_simulator(text: str, tmp: Path, broker: int, port: str) -> Path:
    """The config with its data in ``tmp``, the local broker, and the simulator's pty for the
    meters' port (the line settings stay as written)."""
    doc: Any = YAML(typ="safe", pure=True).load(text)
    doc["agent"]["data_dir"] = str(tmp / "data")
    doc["mqtt"] = local_mqtt(broker)
    doc["metrics"] = {"listen": None}
    for device in doc["devices"]:
        device["connection"]["port"] = port
        device["poll_interval"] = "200ms"
    path = tmp / "agent.yaml"
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


async def first_values(cfg: Path, broker: int, agent: str, devices: list[str]) -> dict[str, Any]:
    sub = Subscriber(broker, [f"edge/{agent}/+/data"]).start()
    try:
        async with AgentRig(cfg):
            msgs = await sub.wait_for(
                lambda m: all(any(x.topic.endswith(f"/{d}/data") for x in m) for d in devices)
            )
    finally:
        sub.stop()
    return {d: next(m.json() for m in msgs if m.topic == f"edge/{agent}/{d}/data") for d in devices}


async def test_the_worked_example_publishes_what_the_page_shows(
    tmp_path: Path, broker: Mosquitto
) -> None:
    config = next(b for b in code_blocks(ENERGY, ("yaml",)) if b.text.startswith("agent:"))
    shown = json.loads(next(b for b in code_blocks(ENERGY, ("json",))).text)
    async with MeterLine(three_meters()) as line:
        cfg = on_the_simulator(config.text, tmp_path, broker.port, line.path)
        got = await first_values(cfg, broker.port, "energy-gw", ["compressor-meter"])
    message = got["compressor-meter"]
    assert message["values"] == shown["values"]
    assert message["agent"] == shown["agent"] and "quality" not in message


async def test_the_sample_reads_every_tag_of_its_meters(tmp_path: Path, broker: Mosquitto) -> None:
    devices = ["meter-7", "meter-8", "old-meter"]
    async with MeterLine(three_meters()) as line:
        cfg = on_the_simulator(SAMPLE.read_text(encoding="utf-8"), tmp_path, broker.port, line.path)
        got = await first_values(cfg, broker.port, "meters-gw", devices)
    assert all("quality" not in got[d] for d in devices), got
    assert got["meter-7"]["values"]["voltage_a"] == 230.1
    assert got["old-meter"]["values"] == {
        "energy_kwh": 5678.9,
        "voltage_a": 231.0,
        "power_kw": 1.0504,
        "power_factor": 0.95,
    }
