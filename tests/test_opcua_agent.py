"""The OPC UA driver inside the real agent, to a real broker: restarts, discover to data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from simulators.opcua_cnc import POINTS, CncSimulator
from tests.brokers import Mosquitto, Received, Subscriber, free_port
from tests.e2e import AgentRig
from tests.test_opcua_support import agent_header, device, edge_agent, write_config


def _data(messages: list[Received], device_name: str = "lathe-3") -> list[dict[str, Any]]:
    return [m.json() for m in messages if m.topic == f"edge/test-gw/{device_name}/data"]


def _speeds(messages: list[Received]) -> list[object]:
    return [d["values"]["speed"] for d in _data(messages) if "speed" in d["values"]]


@pytest.mark.slow
async def test_server_restart_mid_run_resumes_without_agent_restart(
    tmp_path: Path, broker: Mosquitto
) -> None:
    sim = CncSimulator(port=free_port(), update_interval=None)
    await sim.start()
    tags = [{"name": "speed", "node": POINTS["Spindle/Speed"].node_string}]
    cfg = write_config(
        tmp_path, broker.port, [device(sim.endpoint, tags, publishing_interval="200ms")]
    )
    sub = Subscriber(broker.port, ["edge/test-gw/#"]).start()
    try:
        async with AgentRig(cfg):
            await sub.wait_for(lambda m: 1200.0 in _speeds(m))
            await sim.stop()  # the machine restarts
            msgs = await sub.wait_for(
                lambda m: any(d.get("quality", {}).get("speed") for d in _data(m))
            )
            down = next(d for d in _data(msgs) if "quality" in d)
            assert down["quality"]["speed"] == "bad: connection lost"
            await sim.start()  # same port; the agent keeps running
            await sim.set_value("Spindle/Speed", 1500.0)
            msgs = await sub.wait_for(lambda m: 1500.0 in _speeds(m), timeout=20)
    finally:
        sub.stop()
        await sim.stop()
    status = [m.json()["state"] for m in msgs if m.topic == "edge/test-gw/lathe-3/status"]
    assert status[:3] == ["up", "down", "up"], status
    seqs = [d["seq"] for d in _data(msgs)]
    assert seqs == list(range(1, len(seqs) + 1))


@pytest.mark.slow
async def test_discover_output_validates_and_collects(tmp_path: Path, broker: Mosquitto) -> None:
    sim = CncSimulator(port=free_port(), update_interval=None)
    await sim.start()
    try:
        code, out, err = await edge_agent(
            "discover", "opcua", sim.endpoint, "--under", "Machine/Spindle", "--name", "lathe-3"
        )
        assert code == 0, err
        assert '{name: speed, node: "nsu=urn:vendor:cnc;s=Spindle.Speed", unit: "rpm"}' in out
        assert "vibration" in out and "Double[]" in out
        cfg = tmp_path / "agent.yaml"
        cfg.write_text(agent_header(tmp_path, broker.port) + out)
        code, _, err = await edge_agent("validate", str(cfg))
        assert code == 0, err
        sub = Subscriber(broker.port, ["edge/test-gw/#"]).start()
        try:
            async with AgentRig(cfg):
                msgs = await sub.wait_for(lambda m: bool(_data(m)), timeout=15)
        finally:
            sub.stop()
    finally:
        await sim.stop()
    values = _data(msgs)[0]["values"]
    assert values["speed"] == 1200.0 and values["load"] == 42.5
    assert values["vibration"] == [0.0] * 64


async def test_discover_says_why_it_cannot_connect() -> None:
    code, out, err = await edge_agent("discover", "opcua", f"opc.tcp://127.0.0.1:{free_port()}/x")
    assert code == 1 and out == ""
    assert "connection refused" in err and len(err.strip().splitlines()) == 1
    code, _, err = await edge_agent("discover", "modbus", "x")
    assert code == 2 and "cannot discover" in err and "opcua" in err
