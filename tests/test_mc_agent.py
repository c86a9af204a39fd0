"""Mitsubishi PLCs through the real agent to a real broker: press simulator -> agent ->
mosquitto. Two PLCs (binary over TCP, ASCII over UDP); every value as the PLC holds it; a
command through the broker writes the set-point; one PLC going down and coming back harms
neither the other's schedule nor its sequence."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from simulators.mc_press import PRESS, McPressSimulator
from tests.brokers import Mosquitto, Received, Subscriber, free_port
from tests.e2e import AgentRig, write_config


def _data(messages: list[Received], device: str) -> list[dict[str, Any]]:
    return [m.json() for m in messages if m.topic == f"edge/test-gw/{device}/data"]


def _config(tmp_path: Path, broker: int, binary: int, udp: int) -> Path:
    return write_config(
        tmp_path / "c.yaml",
        broker_port=broker,
        modbus_port=0,
        devices=[
            {
                "name": "press-7",
                "driver": "mc",
                "poll_interval": "100ms",
                "connection": {"host": "127.0.0.1", "port": binary, "timeout": "300ms"},
                "tags": [p.tag() for p in PRESS],
            },
            {
                "name": "press-8",
                "driver": "mc",
                "poll_interval": "100ms",
                "connection": {
                    "host": "127.0.0.1",
                    "port": udp,
                    "encoding": "ascii",
                    "transport": "udp",
                    "timeout": "300ms",
                },
                "tags": [
                    {"name": "strokes", "address": "D100", "type": "uint32"},
                    {"name": "die_height", "address": "D112", "type": "float64"},
                    {"name": "light_curtain", "address": "X1F", "type": "bool"},
                ],
            },
        ],
    )


@pytest.mark.slow
async def test_two_plcs_to_the_broker_a_write_and_one_plc_down_and_back(
    tmp_path: Path, broker: Mosquitto
) -> None:
    async with (
        McPressSimulator(free_port(), update_interval=None) as p7,
        McPressSimulator(
            free_port(), encoding="ascii", transport="udp", update_interval=None
        ) as p8,
    ):
        cfg = _config(tmp_path, broker.port, p7.port, p8.port)
        sub = Subscriber(broker.port, ["edge/test-gw/#"], client_id="mc-e2e").start()
        sender = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="mc-sender")
        try:
            async with AgentRig(cfg) as agent:
                await sub.wait_for(lambda m: all(_data(m, d) for d in ("press-7", "press-8")))
                # A command through the broker, as a cloud sends it.
                await asyncio.wait_for(agent.publisher.connected.wait(), 10)
                await asyncio.sleep(0.3)  # the agent's command subscription is in place
                sender.connect("127.0.0.1", broker.port)
                sender.loop_start()
                for cmd_id, value in (("sp-1", 320), ("sp-2", 501)):
                    payload = {"id": cmd_id, "write": {"tonnage_setpoint": value}}
                    sender.publish("edge/test-gw/press-7/cmd", json.dumps(payload), qos=1)
                await sub.wait_for(lambda m: sum(x.topic.endswith("/cmd/reply") for x in m) >= 2)
                # The UDP PLC goes down, the TCP one keeps its schedule; then it comes back.
                p8.silent = True
                mark = len(sub.messages)
                await sub.wait_for(
                    lambda m: any("quality" in d for d in _data(m[mark:], "press-8")), timeout=10
                )
                down_at = len(sub.messages)
                await asyncio.sleep(1.0)
                during = _data(sub.messages[down_at:], "press-7")
                p8.silent = False
                p8.set("strokes", 120_500)
                await sub.wait_for(
                    lambda m: any(
                        d["values"].get("strokes") == 120_500 for d in _data(m, "press-8")
                    ),
                    timeout=15,
                )
        finally:
            sender.loop_stop()
            sub.stop()
        held = p7.get("tonnage_setpoint")
    msgs = sub.snapshot()
    first7, first8 = _data(msgs, "press-7")[0], _data(msgs, "press-8")[0]
    assert "quality" not in first7 and "quality" not in first8
    assert first7["values"]["program"] == "PRG-A12" and first7["values"]["strokes"] == 120_000
    assert first7["values"]["speed"] == 0.0 and first7["values"]["motor_on"] is True
    assert first8["values"] == {"strokes": 120_000, "die_height": 412.5, "light_curtain": True}
    replies = {
        m.json()["id"]: m.json() for m in msgs if m.topic == "edge/test-gw/press-7/cmd/reply"
    }
    assert replies["sp-1"] == {"id": "sp-1", "ok": True} and held == 320
    assert replies["sp-2"]["ok"] is False and "above max" in replies["sp-2"]["error"]
    # press-7 polled every 100 ms through press-8's outage, without a gap in its sequence.
    assert len(during) >= 6, len(during)
    seqs = [d["seq"] for d in _data(msgs, "press-7")]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    bad = next(d for d in _data(msgs, "press-8") if "quality" in d)
    assert bad["quality"]["strokes"].startswith("bad: "), bad
    states = [m.json()["state"] for m in msgs if m.topic == "edge/test-gw/press-8/status"]
    assert "down" in states and states[-1] == "up", states
