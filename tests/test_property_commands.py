"""Hostile downlink commands: malformed JSON, wrong types, huge payloads, unknown devices and tags.

Each one gets an error reply and nothing reaches a device. In process, hypothesis feeds the
agent's own command handler thousands of payloads; end to end, a few hundred of them go through
a real broker to a running agent polling a real simulator, every one is answered on the reply
topic, and the simulator's memory is untouched.
"""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from hypothesis import given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion

from agent.app.config import load_config
from agent.app.runtime import Agent
from agent.south.registry import load_drivers
from simulators.modbus_map import POINTS, PRESS_POINTS
from simulators.modbus_tcp import ModbusSimulator
from tests.brokers import Mosquitto, Subscriber, free_port
from tests.e2e import AgentRig, write_config

_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
_TAGS = st.sampled_from(["voltage_l1", "oil_temp", "running", "nope", "", "a/b", "#", "x" * 300])


@st.composite
def command(draw: st.DrawFn) -> bytes:
    """Payloads from plausible to absurd; none of them may make a device write."""
    kind = draw(st.sampled_from(["bytes", "json", "shaped", "huge"]))
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    if kind == "json":
        return json.dumps(draw(_JSON)).encode()
    if kind == "huge":
        size = draw(st.sampled_from([64 * 1024 + 1, 200_000, 1_000_000]))
        return b'{"id": "h", "write": {"voltage_l1": "' + b"9" * size + b'"}}'
    doc: dict[str, Any] = {}
    if draw(st.booleans()):
        doc["id"] = draw(st.one_of(st.text(max_size=10), st.integers(), st.none(), _JSON))
    if draw(st.booleans()):
        doc["write"] = draw(
            st.one_of(st.dictionaries(_TAGS, _JSON, max_size=3), _JSON, st.just({}))
        )
    if draw(st.integers(0, 5)) == 0:
        doc[draw(st.text(max_size=6))] = draw(_JSON)
    return json.dumps(doc).encode()


def _config(tmp_path: Path, broker_port: int, modbus_port: int) -> Path:
    return write_config(
        tmp_path / "c.yaml",
        broker_port=broker_port,
        modbus_port=modbus_port,
        devices=[
            {"name": "press-1", "poll_interval": "200ms", "tags": [p.tag() for p in PRESS_POINTS]}
        ],
    )


def _check_reply(reply: Any) -> None:
    assert isinstance(reply, dict) and set(reply) == {"id", "ok", "error"}, reply
    assert reply["ok"] is False and isinstance(reply["error"], str) and reply["error"], reply
    assert reply["id"] is None or isinstance(reply["id"], str), reply
    json.dumps(reply)  # the reply itself must be publishable


_HANDLER: dict[str, Any] = {}


def _handler() -> Any:
    """The command handler of an agent built from a config exactly as ``run`` builds it."""
    if not _HANDLER:
        import tempfile

        work = Path(tempfile.mkdtemp(prefix="edge-cmd-"))
        config = load_config(_config(work, 1, 1), load_drivers())
        agent = Agent(config)
        _HANDLER["h"] = agent.publisher._commands
    return _HANDLER["h"]


@settings(max_examples=1000, deadline=None, database=None)
@given(st.sampled_from(["press-1", "nope", "", "press-1/x", "+"]), command())
def test_every_hostile_command_gets_an_error_reply_in_process(device: str, payload: bytes) -> None:
    reply = asyncio.run(_handler().handle(device, payload))
    _check_reply(reply)


async def test_hostile_commands_through_the_broker_are_all_answered_and_reach_no_device(
    tmp_path: Path, broker: Mosquitto
) -> None:
    rng = random.Random(7)
    payloads = [_random_command(rng) for _ in range(120)]
    payloads += [b"", b"{", b"null", b"[]", b'{"id": 1}', b'{"id": "x", "write": {"nope": 1}}']
    payloads += [b'{"id": "w", "write": {"voltage_l1": 1.0}}', b"\xff\xfe" * 1000]
    rng.shuffle(payloads)
    async with ModbusSimulator(port=free_port(), units=(1,), update_interval=None) as sim:
        before = {name: sim.value(1, name) for name in POINTS}
        sub = Subscriber(broker.port, ["edge/test-gw/+/cmd/reply"], client_id="cmd-watch").start()
        try:
            async with AgentRig(_config(tmp_path, broker.port, sim.port)) as agent:
                await asyncio.wait_for(agent.publisher.connected.wait(), 10)
                await asyncio.sleep(0.2)  # the agent's command subscription is in place
                sender = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="cmd-sender")
                sender.connect("127.0.0.1", broker.port)
                sender.loop_start()
                for i, payload in enumerate(payloads):
                    device = "press-1" if i % 4 else rng.choice(["ghost", "press-2", "x.y"])
                    sender.publish(f"edge/test-gw/{device}/cmd", payload, qos=1)
                replies = await sub.wait_for(lambda m: len(m) >= len(payloads), timeout=30)
                sender.disconnect()
                sender.loop_stop()
                reads = agent.metrics.registry.get_sample_value(
                    "edge_agent_reads_total", {"device": "press-1"}
                )
                assert reads and reads > 0  # the device was polled throughout
        finally:
            sub.stop()
        after = {name: sim.value(1, name) for name in POINTS}
    assert len(replies) == len(payloads)
    for r in replies:
        _check_reply(r.json())
    assert after == before  # no command reached the device


def _random_command(rng: random.Random) -> bytes:
    """A plain-random counterpart of ``command()`` for the end-to-end run (fixed seed)."""
    kind = rng.randrange(5)
    if kind == 0:
        return rng.randbytes(rng.randrange(200))
    if kind == 1:
        return (
            b'{"id": "h", "write": {"voltage_l1": "' + b"9" * rng.choice([70_000, 300_000]) + b'"}}'
        )
    doc: dict[str, Any] = {}
    if rng.random() < 0.8:
        doc["id"] = rng.choice(["a", "", 5, None, [1], {"x": 1}, "x" * 1000])
    if rng.random() < 0.8:
        tag = rng.choice(["voltage_l1", "oil_temp", "running", "nope", "", "a/b", "#"])
        doc["write"] = rng.choice(
            [{tag: rng.choice([1, -1.5, "x", None, [1], {}, True])}, [], "x", {}, 3]
        )
    if rng.random() < 0.2:
        doc[rng.choice(["read", "", "ID"])] = 1
    return json.dumps(doc).encode()
