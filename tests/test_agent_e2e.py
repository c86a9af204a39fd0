"""End to end: simulator → agent → real mosquitto → subscriber, values exact, nothing lost."""

from __future__ import annotations

import asyncio
import itertools
import urllib.request
from decimal import Decimal
from pathlib import Path

import pytest

from simulators.modbus_map import PRESS_POINTS, TYPE_TEST_POINTS
from simulators.modbus_tcp import ModbusSimulator
from tests.brokers import Mosquitto, Subscriber, data_seqs, free_port
from tests.e2e import AgentRig, every_type_tags, until, write_config


@pytest.fixture
async def sim() -> ModbusSimulator:
    simulator = ModbusSimulator(port=free_port(), units=(1, 2, 3), update_interval=None)
    await simulator.start()
    yield simulator  # type: ignore[misc]
    await simulator.stop()


def _expected(sim: ModbusSimulator, unit: int, name: str) -> object:
    """What the agent must publish: the device's value, scaled exactly in decimal."""
    p = next(p for p in TYPE_TEST_POINTS + PRESS_POINTS if p.name == name)
    raw = sim.value(unit, name)
    if p.scale is None:
        return raw
    return float(Decimal(str(raw)) * Decimal(str(p.scale)))


async def test_every_value_arrives_exactly(tmp_path: Path, broker: Mosquitto, sim) -> None:
    sim.set_value(1, "oil_temp", 615)  # times 0.1 must be 61.5, not 61.50000000000001
    sim.set_value(1, "current_l1", 1241)  # times 0.01 must be 12.41
    cfg = write_config(
        tmp_path / "c.yaml",
        broker_port=broker.port,
        modbus_port=sim.port,
        devices=[{"name": "press-1", "poll_interval": "200ms", "tags": every_type_tags()}],
    )
    sub = Subscriber(broker.port, ["edge/test-gw/#"]).start()
    async with AgentRig(cfg):
        msgs = await sub.wait_for(lambda m: len(data_seqs(m, "press-1")) >= 2)
    sub.stop()
    doc = next(m for m in msgs if m.topic == "edge/test-gw/press-1/data").json()
    assert doc["agent"] == "test-gw" and doc["device"] == "press-1" and doc["seq"] == 1
    assert "quality" not in doc, doc.get("quality")
    values = doc["values"]
    assert len(values) == len(TYPE_TEST_POINTS) + len(PRESS_POINTS)
    for name, value in values.items():
        expected = _expected(sim, 1, name)
        assert value == expected and type(value) is type(expected), (name, value, expected)
    assert values["oil_temp"] == 61.5 and values["current_l1"] == 12.41
    assert values["h_float32_abcd"] == 229.8
    assert values["h_string_nul"] == "PUMP-07!"
    status = [m for m in msgs if m.topic == "edge/test-gw/press-1/status"]
    assert status and status[0].json()["state"] == "up"
    # Retained: a consumer that subscribes later still learns the state at once.
    late = Subscriber(broker.port, ["edge/test-gw/press-1/status"], client_id="late").start()
    kept = await late.wait_for(lambda m: any(x.topic.endswith("/status") for x in m))
    late.stop()
    assert [m.retain for m in kept if m.topic.endswith("/status")] == [True]


async def test_seq_is_contiguous_across_a_restart(tmp_path: Path, broker: Mosquitto, sim) -> None:
    cfg = write_config(
        tmp_path / "c.yaml",
        broker_port=broker.port,
        modbus_port=sim.port,
        devices=[
            {"name": "a", "poll_interval": "100ms", "tags": [PRESS_POINTS[0].tag()]},
            {
                "name": "b",
                "poll_interval": "100ms",
                "connection": {"host": "127.0.0.1", "port": sim.port, "unit_id": 2},
                "tags": [PRESS_POINTS[1].tag()],
            },
        ],
    )
    sub = Subscriber(broker.port, ["edge/test-gw/+/data"]).start()
    for run in (1, 2):
        async with AgentRig(cfg):
            await sub.wait_for(lambda m, run=run: len(set(data_seqs(m, "b"))) >= 5 * run)
    sub.stop()
    for device in ("a", "b"):
        seqs = sorted(set(data_seqs(sub.messages, device)))
        assert seqs == list(range(1, seqs[-1] + 1)), (device, seqs)


async def test_silent_device_leaves_others_on_cadence(
    tmp_path: Path, broker: Mosquitto, sim
) -> None:
    sim.set_silent(3)
    cfg = write_config(
        tmp_path / "c.yaml",
        broker_port=broker.port,
        modbus_port=sim.port,
        devices=[
            {"name": "good", "poll_interval": "200ms", "tags": every_type_tags()},
            {
                "name": "dead",
                "poll_interval": "200ms",
                "connection": {
                    "host": "127.0.0.1",
                    "port": sim.port,
                    "unit_id": 3,
                    "timeout": "500ms",
                },
                "tags": every_type_tags(),
            },
        ],
        metrics="127.0.0.1:0",
    )
    sub = Subscriber(broker.port, ["edge/test-gw/#"]).start()
    async with AgentRig(cfg) as agent:
        msgs = await sub.wait_for(
            lambda m: len(data_seqs(m, "good")) >= 15 and len(data_seqs(m, "dead")) >= 2,
            timeout=20,
        )
        url = f"http://127.0.0.1:{agent.metrics_port}/metrics"
        body = await asyncio.to_thread(lambda: urllib.request.urlopen(url).read())
    sub.stop()
    good_ts = [m.json()["ts"] for m in msgs if m.topic.endswith("/good/data")]
    gaps = [b - a for a, b in itertools.pairwise(good_ts)]
    assert all(abs(g - 200) < 50 for g in gaps), gaps
    dead = [m.json() for m in msgs if m.topic.endswith("/dead/data")]
    assert all(d["values"] == {} for d in dead)
    assert set(dead[0]["quality"].values()) == {"bad: timeout"}
    statuses = [m.json() for m in msgs if m.topic.endswith("/dead/status")]
    assert statuses[-1]["state"] == "down" and statuses[-1]["reason"] == "timeout"
    text = body.decode()
    for name in (
        "edge_agent_reads_total",
        "edge_agent_read_errors_total",
        "edge_agent_poll_duration_seconds_bucket",
        "edge_agent_poll_overruns_total",
        "edge_agent_device_up",
        "edge_agent_buffer_batches",
        "edge_agent_buffer_bytes",
        "edge_agent_buffer_dropped_batches_total",
        "edge_agent_published_batches_total",
        "edge_agent_publish_latency_seconds_bucket",
        "edge_agent_mqtt_connected",
    ):
        assert name in text, name
    assert 'edge_agent_device_up{device="dead"} 0.0' in text
    assert 'edge_agent_device_up{device="good"} 1.0' in text


async def test_exception_marks_only_its_tags_bad(tmp_path: Path, broker: Mosquitto, sim) -> None:
    sim.set_exception(1, "input", 0, 10)
    cfg = write_config(
        tmp_path / "c.yaml",
        broker_port=broker.port,
        modbus_port=sim.port,
        devices=[{"name": "p", "poll_interval": "200ms", "tags": [p.tag() for p in PRESS_POINTS]}],
    )
    sub = Subscriber(broker.port, ["edge/test-gw/p/data"]).start()
    async with AgentRig(cfg) as agent:
        msgs = await sub.wait_for(lambda m: len(m) >= 1)
        await until(lambda: agent.pollers[0].state == "up")
    sub.stop()
    doc = msgs[0].json()
    inputs = {p.name for p in PRESS_POINTS if p.table == "input"}
    assert set(doc["quality"]) == inputs
    assert set(doc["quality"].values()) == {"bad: exception 2 (illegal data address)"}
    assert set(doc["values"]) == {p.name for p in PRESS_POINTS} - inputs
