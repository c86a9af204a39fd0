"""End to end: the degrading pump (Modbus TCP) → the agent with processing → real mosquitto.

Features, the machine state (retained) and an alarm event arrive on the broker, as a cloud
consumer sees them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from simulators.degrading_pump import BEARING, DAY, RPM, DegradingPump, PumpModel, bpfo_hz
from tests.brokers import Mosquitto, Received, Subscriber, free_port
from tests.e2e import AgentRig, write_config

TAGS: list[dict[str, Any]] = [
    {"name": "speed", "table": "holding", "address": 1, "type": "uint16"},
    {
        "name": "bearing_temp",
        "table": "holding",
        "address": 2,
        "type": "int16",
        "scale": 0.1,
        "deadband": 0.5,
        "alarms": [{"name": "bearing_hot", "on": "> 45", "off": "< 40", "for": "300ms"}],
    },
    {
        "name": "parts",
        "table": "holding",
        "address": 3,
        "type": "uint16",
        "counter": {"kind": "parts", "rollover": 65535},
    },
    {
        "name": "power",
        "table": "holding",
        "address": 4,
        "type": "float32",
        "window": {"length": "1s", "stats": ["mean", "max", "count"]},
    },
    {"name": "alarm_code", "table": "holding", "address": 8, "type": "uint16"},
    {
        "name": "vibration",  # a Modbus array tag: 1024 registers, read in 9 requests
        "table": "holding",
        "address": 100,
        "type": "int16",
        "count": 1024,
        "scale": 0.001,
        "waveform": {
            "sample_rate": 5120,
            "quantity": "acceleration_g",
            "features": ["rms", "velocity_rms", "iso_zone", "envelope"],
            "bearing": BEARING,
            "shaft_rpm_tag": "speed",
        },
        "alarms": [
            {"name": "bearing_outer_race", "value": "bpfo", "on": "> 0.02", "off": "< 0.01"}
        ],
    },
]
STATE = {
    "rules": [
        {"state": "alarm", "when": "alarm_code != 0"},
        {"state": "running", "when": "speed > 100"},
    ]
}


def _values(messages: list[Received], name: str) -> list[Any]:
    return [
        m.json()["values"][name]
        for m in messages
        if m.topic.endswith("/pump-1/data") and name in m.json()["values"]
    ]


@pytest.mark.slow
async def test_features_state_and_an_alarm_reach_the_broker(
    tmp_path: Path, broker: Mosquitto
) -> None:
    # A worn pump (day 25 of 30), running at a steady time; its bearing runs hot.
    model = PumpModel(onset=10 * DAY, life=30 * DAY, seed=2)
    async with DegradingPump(port=free_port(), time_scale=1.0, model=model) as pump:
        pump.advance(25 * DAY)
        cfg = write_config(
            tmp_path / "c.yaml",
            broker_port=broker.port,
            modbus_port=pump.port,
            devices=[{"name": "pump-1", "poll_interval": "100ms", "tags": TAGS, "state": STATE}],
        )
        sub = Subscriber(broker.port, ["edge/test-gw/#"]).start()
        try:
            async with AgentRig(cfg) as agent:

                def arrived(msgs: list[Received]) -> bool:
                    topics = {m.topic for m in msgs}
                    events = [m for m in msgs if m.topic == "edge/test-gw/pump-1/event"]
                    return (
                        "edge/test-gw/pump-1/state" in topics
                        and len(events) >= 2
                        and len(_values(msgs, "power.mean")) >= 1
                    )

                msgs = await sub.wait_for(arrived, timeout=15)
                registry = agent.metrics.registry
                labels = {"device": "pump-1", "alarm": "bearing_hot"}
                assert registry.get_sample_value("edge_agent_alarm_active", labels) == 1
                held = registry.get_sample_value(
                    "edge_agent_points_held_back_total", {"device": "pump-1"}
                )
                assert held is not None and held > 0
        finally:
            sub.stop()
    events = [m.json() for m in msgs if m.topic == "edge/test-gw/pump-1/event"]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert all(e["agent"] == "test-gw" and e["device"] == "pump-1" for e in events)
    by_alarm = {e["alarm"]: e for e in events}
    assert set(by_alarm) == {"bearing_hot", "bearing_outer_race"}
    hot = by_alarm["bearing_hot"]
    assert hot["event"] == "raise" and hot["tag"] == "bearing_temp" and hot["value"] > 45
    assert all(v > 45 for v in hot["values"])
    bearing = by_alarm["bearing_outer_race"]
    assert bearing["event"] == "raise" and bearing["tag"] == "vibration.bpfo"
    assert bearing["value"] > 0.02
    # the worn bearing's impacts: the envelope peaks at BPFO (within a bin of 5 Hz)
    assert _values(msgs, "vibration.envelope_peak_frequency")[0] == pytest.approx(
        bpfo_hz(RPM), abs=5.0
    )
    assert _values(msgs, "vibration.iso_zone")[0] in "BCD"
    assert _values(msgs, "vibration") == []  # the 1024 samples stay at the edge
    state = next(m for m in msgs if m.topic == "edge/test-gw/pump-1/state")
    assert state.json()["state"] == "running" and "running" in state.json()["runtime"]
    assert _values(msgs, "state")[0] == "running"
    assert _values(msgs, "power.mean")[0] == pytest.approx(model.power_kw, rel=0.01)
    assert _values(msgs, "power.count")[0] >= 1
    assert "power" not in {k for m in msgs if m.topic.endswith("/data") for k in m.json()["values"]}
    assert _values(msgs, "parts.total")[0] == 0  # counting starts with the agent
    temps = _values(msgs, "bearing_temp")
    assert len(temps) < len(_values(msgs, "speed"))  # the deadband held steady values back
