"""End to end: the moulding machine's S7 PLC -> agent -> real mosquitto -> subscriber, with a
dead PLC beside it and a write through the broker.

The live PLC grants a PDU of 240 bytes, as an S7-1200 does; its values arrive exactly (REAL as
its shortest decimal, strings without their headers, dates as ISO text). The second PLC's port
is closed: it is reported down with its reason, and the live one keeps publishing every cycle.
A command on the live device's ``cmd`` topic writes the barrel set-point, and the reply comes
once the PLC holds it.
"""

from __future__ import annotations

import asyncio
import json
import struct
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from simulators.s7_moulding import MouldingSimulator
from tests.brokers import Mosquitto, Subscriber, data_seqs, free_port
from tests.e2e import AgentRig, local_mqtt

TAGS: list[dict[str, Any]] = [
    {"name": "cycles", "address": "DB1.DBD0", "type": "DINT"},
    {"name": "cycle_time", "address": "DB1.DBD4", "type": "REAL"},
    {"name": "running", "address": "DB1.DBX10.0", "type": "BOOL"},
    {"name": "mould_id", "address": "DB1.DBB12", "type": "STRING", "length": 16},
    {"name": "shift", "address": "DB1.DBB42", "type": "DATE_AND_TIME"},
    {"name": "parts", "address": "DB1.DBB58", "type": "LINT"},
    {"name": "operator", "address": "DB1.DBB66", "type": "WSTRING", "length": 8},
    {"name": "zones", "address": "DB2.DBB0", "type": "REAL", "count": 5},
    {"name": "barrel_sp", "address": "DB3.DBD0", "type": "REAL", "writable": True, "max": 320},
    {"name": "cooling", "address": "MW20", "type": "WORD"},
]


def _config(path: Path, broker_port: int, live: int, dead: int) -> Path:
    def plc(name: str, port: int) -> dict[str, Any]:
        return {
            "name": name,
            "driver": "s7",
            "poll_interval": "100ms",
            "connection": {"host": "127.0.0.1", "port": port, "timeout": "300ms"},
            "tags": TAGS,
        }

    doc = {
        "agent": {"id": "test-gw", "data_dir": str(path.parent / "data")},
        "mqtt": local_mqtt(broker_port),
        "buffer": {"max_size": "16MB"},
        "devices": [plc("mould-3", live), plc("mould-dead", dead)],
    }
    path.write_text(json.dumps(doc))
    return path


async def test_plc_to_broker_with_a_dead_plc_beside_it_and_a_write(
    tmp_path: Path, broker: Mosquitto
) -> None:
    async with MouldingSimulator(free_port(), update_interval=None, pdu=240) as plc:
        plc.step()
        cfg = _config(tmp_path / "c.yaml", broker.port, plc.port, free_port())
        sub = Subscriber(broker.port, ["edge/test-gw/#"], client_id="s7-watch").start()
        try:
            async with AgentRig(cfg) as agent:
                await asyncio.wait_for(agent.publisher.connected.wait(), 10)
                msgs = await sub.wait_for(lambda m: len(data_seqs(m, "mould-3")) >= 5)
                await asyncio.sleep(0.3)  # the command subscription is in place
                sender = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="s7-sender")
                sender.connect("127.0.0.1", broker.port)
                sender.loop_start()
                command = {"id": "sp-1", "write": {"barrel_sp": 245.5}}
                sender.publish("edge/test-gw/mould-3/cmd", json.dumps(command), qos=1)
                msgs = await sub.wait_for(
                    lambda m: any(x.topic.endswith("/cmd/reply") for x in m), timeout=15
                )
                sender.disconnect()
                sender.loop_stop()
        finally:
            sub.stop()
        held = struct.unpack(">f", plc.get(3, 0, 4))[0]
    data = [m.json() for m in msgs if m.topic == "edge/test-gw/mould-3/data"]
    first = data[0]
    assert "quality" not in first, first.get("quality")
    values = first["values"]
    assert values["cycles"] == 1 and 27 < values["cycle_time"] < 29
    assert (values["running"], values["mould_id"], values["parts"]) == (True, "MLD-4711-A", 4)
    assert (values["shift"], values["operator"]) == ("2026-12-07T06:00:00.000", "Müller")
    assert len(values["zones"]) == 5 and values["cooling"] == 150
    assert [d["seq"] for d in data] == list(range(1, len(data) + 1))  # every cycle, in order
    dead = [m.json() for m in msgs if m.topic == "edge/test-gw/mould-dead/status"]
    assert dead and dead[-1]["state"] == "down" and dead[-1]["reason"] == "connection refused"
    reply = next(m.json() for m in msgs if m.topic == "edge/test-gw/mould-3/cmd/reply")
    assert reply == {"id": "sp-1", "ok": True}
    assert held == 245.5
