"""Fleet (issue 17): a real mosquitto, real ``edge-agent run`` processes, pushes signed as the
operator signs them; every refusal, the apply through the reload path, the rollback, the
precedence rule at boot, SIGKILL in the middle of an apply, and the operator's commands."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.app.fleet.push import MAX_YAML_BYTES
from agent.app.fleet.store import FleetStore
from simulators.modbus_tcp import ModbusSimulator
from tests.brokers import Mosquitto, data_seqs, free_port
from tests.e2e import agent_process
from tests.fleet_rig import (
    KEY,
    KEY_ENV,
    cli,
    device,
    gateway_config,
    health,
    push,
    sections,
    state_of,
    states,
    watcher,
)

pytestmark = pytest.mark.usefixtures("quiet_pymodbus")


@pytest.fixture(autouse=True)
def fleet_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """The key in the environment the agents and the CLI inherit."""
    monkeypatch.setenv(KEY_ENV, KEY)


def _send(port: int, topic: str, payload: bytes) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"pusher-{os.getpid()}")
    client.connect("127.0.0.1", port)
    client.loop_start()
    client.publish(topic, payload, qos=1).wait_for_publish(5)
    client.disconnect()
    client.loop_stop()


async def test_hostile_pushes_are_refused_with_positions_and_never_crash(
    tmp_path: Path, broker: Mosquitto
) -> None:
    async with ModbusSimulator(port=free_port(), units=(1,)) as sim:
        cfg = gateway_config(tmp_path / "gw.yaml", "gw-a", broker.port, [device("m1", sim.port)])
        sub = watcher(broker.port, "watch-hostile")
        log = tmp_path / "agent.log"
        with agent_process(cfg, log, "info") as proc:
            await sub.wait_for(
                lambda m: any(h["devices"]["m1"]["state"] == "up" for h in health(m, "gw-a")), 20
            )
            topic = "edge/gw-a/config/set"
            marker = "s3cr3t-VALUE-91"
            good = sections(devices=[device("m1", sim.port)])
            bomb = (
                "a: &a [x, x, x, x, x, x, x, x, x]\n"
                + "".join(
                    f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
                    for p, c in zip("abcdefgh", "bcdefghi", strict=True)
                )
                + "devices: []\n"
            )
            writable = device("m1", sim.port)
            writable["tags"][0]["writable"] = True
            cases = {
                "json": (b"{not json", "1:1: (push): not JSON"),
                "types": (
                    json.dumps({"id": "types", "version": "7", "yaml": 5, "sig": 1}).encode(),
                    "1:1: (push).version: must be a positive integer",
                ),
                "sig": (push(5, good, "sig", key="wrong-key"), "1:1: (push).sig: the signature"),
                "huge": (
                    push(5, "devices: []\n#" + "x" * MAX_YAML_BYTES, "huge"),
                    f"1:1: (push).yaml: the config is larger than {MAX_YAML_BYTES} bytes",
                ),
                "bomb": (push(5, bomb, "bomb"), "(yaml): the document expands to more than"),
                "section": (
                    push(5, sections(devices=[], agent={"id": "x", "data_dir": "/"}), "section"),
                    "3:1: agent: this section cannot be pushed (fleet.allow: devices, profiles)",
                ),
                "badkey": (
                    push(
                        5,
                        sections(devices=[{**device("m1", sim.port), "poll_interval": marker}]),
                        "badkey",
                    ),
                    "2:45: devices.0.poll_interval: invalid duration",
                ),
                "write": (
                    push(5, sections(devices=[writable]), "write"),
                    f"devices.0.tags.0.writable: a push cannot make m1.{writable['tags'][0]['name']} "
                    "writable",
                ),
            }
            for push_id, (payload, expected) in cases.items():
                before = len(states(sub.messages, "gw-a"))
                _send(broker.port, topic, payload)
                msgs = await sub.wait_for(lambda m, b=before: len(states(m, "gw-a")) > b, 20)
                state = states(msgs, "gw-a")[-1]
                assert state["result"] == "refused", (push_id, state)
                assert any(expected in e for e in state["errors"]), (push_id, state["errors"])
                assert proc.poll() is None
            # Not newer: version 1 applies, then 1 again (a replay) is refused.
            _send(broker.port, topic, push(1, good, "v1"))
            msgs = await sub.wait_for(lambda m: state_of(m, "gw-a", "v1") is not None, 20)
            assert state_of(msgs, "gw-a", "v1")["result"] == "applied"  # type: ignore[index]
            _send(broker.port, topic, push(1, good, "replay"))
            msgs = await sub.wait_for(lambda m: state_of(m, "gw-a", "replay") is not None, 20)
            replay = state_of(msgs, "gw-a", "replay")
            assert replay is not None and replay["result"] == "refused"
            assert replay["errors"] == ["1:1: (push).version: version 1 is not newer than 1"]
            # Another gateway's topic is not this one's business.
            _send(broker.port, "edge/gw-other/config/set", push(9, good, "other"))
            _send(broker.port, topic, push(2, good, "v2"))
            msgs = await sub.wait_for(lambda m: state_of(m, "gw-a", "v2") is not None, 20)
            assert state_of(msgs, "gw-a", "other") is None
            assert proc.poll() is None
        sub.stop()
        text = log.read_text()
        assert marker not in text and KEY not in text
        assert "Traceback" not in text
