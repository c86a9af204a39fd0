"""Writes from the cloud: every type round-trips command → device → read back → reply; bad
commands get the right error and change nothing; a flood is rate-limited by the device's
``commands`` key, which a reload changes without restarting the device; writes never land in the
middle of a poll; and writes through a real broker and a running agent."""

from __future__ import annotations

import asyncio
import contextlib
import json
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.app.config import load_config
from agent.app.reload import plan_reload
from agent.ops.metrics import Metrics
from agent.south.commands import CommandHandler, TokenBucket
from agent.south.registry import load_drivers
from agent.south.scheduler import DevicePoller
from drivers.modbus.config import ModbusDevice
from drivers.modbus.driver import ModbusDriver
from simulators.modbus_tcp import ModbusSimulator
from tests.brokers import Mosquitto, Subscriber, free_port
from tests.e2e import AgentRig, until, write_config
from tests.sinks import Sink, Status

W = {"writable": True}
TAGS: list[dict[str, Any]] = [
    {"name": "u16", "table": "holding", "address": 100, "type": "uint16", **W},
    {"name": "i16", "table": "holding", "address": 101, "type": "int16", "scale": 0.1, **W},
    {"name": "i32", "table": "holding", "address": 102, "type": "int32", **W},
    {
        "name": "u32",
        "table": "holding",
        "address": 104,
        "type": "uint32",
        "byte_order": "CDAB",
        **W,
    },
    {
        "name": "f32",
        "table": "holding",
        "address": 106,
        "type": "float32",
        "byte_order": "DCBA",
        **W,
    },
    {"name": "f64", "table": "holding", "address": 108, "type": "float64", **W},
    {"name": "i64", "table": "holding", "address": 112, "type": "int64", **W},
    {
        "name": "u64",
        "table": "holding",
        "address": 116,
        "type": "uint64",
        "byte_order": "BADC",
        **W,
    },
    {"name": "txt", "table": "holding", "address": 120, "type": "string", "length": 4, **W},
    {"name": "flag", "table": "holding", "address": 124, "type": "bool", "bit": 5, **W},
    {"name": "lamp", "table": "coil", "address": 0, "type": "bool", **W},
    {"name": "arr", "table": "holding", "address": 130, "type": "int16", "count": 3, **W},
    {
        "name": "setpoint",
        "table": "holding",
        "address": 140,
        "type": "uint16",
        "scale": 0.5,
        "offset": 10,
        "min": 20,
        "max": 80,
        **W,
    },
    {"name": "readonly", "table": "holding", "address": 150, "type": "uint16"},
]
ROUND_TRIPS: list[tuple[str, Any, list[int]]] = [
    ("u16", 65535, [65535]),
    ("i16", -12.3, [(-123) & 0xFFFF]),
    ("i32", -2, [0xFFFF, 0xFFFE]),
    ("u32", 0x12345678, [0x5678, 0x1234]),
    ("f32", 1.5, list(struct.unpack(">HH", struct.pack("<f", 1.5)))),
    ("f64", -2.25, list(struct.unpack(">4H", struct.pack(">d", -2.25)))),
    ("i64", -(2**40), list(struct.unpack(">4H", struct.pack(">q", -(2**40))))),
    (
        "u64",
        2**63 + 5,
        [
            struct.unpack("<H", struct.pack(">H", w))[0]
            for w in struct.unpack(">4H", struct.pack(">Q", 2**63 + 5))
        ],
    ),
    ("txt", "AB-7", [0x4142, 0x2D37, 0, 0]),
    ("flag", True, [0b1000_0000_0001 | 1 << 5]),
    ("lamp", True, [1]),
    ("arr", [1, -1, 300], [1, 0xFFFF, 300]),
    ("setpoint", 25.5, [31]),  # (25.5 - 10) / 0.5
]
ADDRESS = {t["name"]: (t["table"], t["address"]) for t in TAGS}


pytestmark = pytest.mark.usefixtures("quiet_pymodbus")


def make_device(port: int, **extra: Any) -> ModbusDevice:
    return ModbusDevice.model_validate(
        {
            "name": "press-1",
            "driver": "modbus",
            "poll_interval": 0.05,
            "connection": {"host": "127.0.0.1", "port": port, "timeout": 0.5},
            "tags": TAGS,
            **extra,
        }
    )


@contextlib.asynccontextmanager
async def running(
    sim: ModbusSimulator, burst: int | None = None, **extra: Any
) -> AsyncIterator[tuple[CommandHandler, DevicePoller, Sink]]:
    """The device polled, and a handler for it; ``burst`` sets its ``commands`` key (the model's
    default of 5 at once, 2 per second, when None)."""
    if burst is not None:
        extra["commands"] = {"burst": burst}
    dev = make_device(sim.port, **extra)
    sink = Sink()
    poller = DevicePoller(dev, ModbusDriver(dev), sink, Status(), Metrics())
    task = asyncio.create_task(poller.run())
    handler = CommandHandler({dev.name: dev}, lambda name: poller if name == dev.name else None)
    try:
        await sink.until(lambda: poller.cycles >= 1)
        yield handler, poller, sink
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.fixture
async def sim() -> AsyncIterator[ModbusSimulator]:
    async with ModbusSimulator(port=free_port(), units=(1,), update_interval=None) as s:
        s.set_registers(1, "holding", 124, [0b1000_0000_0001])  # other bits of the flag word
        yield s


def memory(sim: ModbusSimulator, name: str, size: int) -> list[int]:
    table, address = ADDRESS[name]
    return sim.registers(1, table, address, size)


def cmd(cmd_id: str, **writes: Any) -> bytes:
    return json.dumps({"id": cmd_id, "write": writes}).encode()


async def test_every_type_round_trips_through_the_device(sim: ModbusSimulator) -> None:
    async with running(sim, burst=100) as (handler, poller, sink):
        for name, value, registers in ROUND_TRIPS:
            reply = await handler.handle("press-1", cmd(f"w-{name}", **{name: value}))
            assert reply == {"id": f"w-{name}", "ok": True}, (name, reply)
            assert memory(sim, name, len(registers)) == registers, name
        # The next poll reads back what was written, decoded as the tag says.
        seen = poller.cycles
        await sink.until(lambda: poller.cycles >= seen + 1)
    writes = [fc for _, fc, _, _ in sim.log if fc in (5, 6, 15, 16)]
    # Coil: 5; one register: 6 (u16, i16, flag, setpoint); wider: 16.
    assert writes.count(5) == 1 and writes.count(6) == 4 and writes.count(16) == 8


async def test_write_function_16_quirk_never_sends_5_or_6(sim: ModbusSimulator) -> None:
    async with running(sim, write_function=16) as (handler, _, _):
        assert (await handler.handle("press-1", cmd("a", u16=7)))["ok"]
        assert (await handler.handle("press-1", cmd("b", lamp=True)))["ok"]
    functions = {fc for _, fc, _, _ in sim.log}
    assert 5 not in functions and 6 not in functions
    assert {15, 16} <= functions
    assert memory(sim, "u16", 1) == [7] and memory(sim, "lamp", 1) == [1]


BAD = [
    (b'{"id": "x", "write": {"nope": 1}}', "unknown tag 'nope'"),
    (b'{"id": "x", "write": {"readonly": 1}}', "tag 'readonly' is not writable"),
    (b'{"id": "x", "write": {"setpoint": 80.5}}', "80.5 is above max 80.0 of tag 'setpoint'"),
    (b'{"id": "x", "write": {"setpoint": 19}}', "19 is below min 20.0 of tag 'setpoint'"),
    (b'{"id": "x", "write": {"u16": "12"}}', "tag 'u16' takes a number, not a string"),
    (b'{"id": "x", "write": {"u16": true}}', "tag 'u16' takes a number, not a boolean"),
    (b'{"id": "x", "write": {"u16": 70000}}', "70000 does not fit tag 'u16' (uint16)"),
    (b'{"id": "x", "write": {"u16": 1.5}}', "tag 'u16': 1.5 is not a whole number of uint16 steps"),
    (b'{"id": "x", "write": {"flag": 1}}', "tag 'flag' takes true or false, not a number"),
    (b'{"id": "x", "write": {"txt": "too long!"}}', "tag 'txt' takes at most 8 characters"),
    (b'{"id": "x", "write": {"arr": [1, 2]}}', "tag 'arr' takes a list of 3 numbers"),
    (b'{"id": "x", "write": {"u16": 5, "setpoint": 99}}', "99 is above max 80.0 of tag 'setpoint'"),
    (b'{"id": "x", "write": {"u16": 5', None),  # malformed JSON
    (b'{"write": {"u16": 5}}', "malformed command: 'id' must be a string"),
    (b'{"id": "x", "write": {"u16": 5}, "also": 1}', "unknown key(s): also"),
]


async def test_bad_commands_get_the_right_error_and_change_nothing(sim: ModbusSimulator) -> None:
    async with running(sim, burst=100) as (handler, _, _):
        before = sim.registers(1, "holding", 0, 200)
        for payload, error in BAD:
            reply = await handler.handle("press-1", payload)
            assert reply["ok"] is False, payload
            if error is None:
                assert reply["id"] is None and reply["error"].startswith("malformed command")
            else:
                assert reply["error"] == error, payload
        assert (await handler.handle("ghost", cmd("g", u16=1)))["error"] == "unknown device 'ghost'"
        assert sim.registers(1, "holding", 0, 200) == before
    assert not [fc for _, fc, _, _ in sim.log if fc in (5, 6, 15, 16)]


async def test_device_exception_and_device_down_are_reported(sim: ModbusSimulator) -> None:
    sim.set_exception(1, "holding", 100, 100, 2)
    async with running(sim) as (handler, poller, _):
        reply = await handler.handle("press-1", cmd("e", u16=1))
        assert reply == {
            "id": "e",
            "ok": False,
            "error": "tag 'u16': device answered exception 2 (illegal data address)",
        }
        await poller.driver.close()
        poller.connected = False  # as after a lost poll, before the reconnect
        reply = await handler.write("press-1", None, {"i32": 5})
        assert reply["ok"] is False and reply["error"].startswith("tag 'i32': device down")


async def test_a_flood_of_commands_is_rate_limited_per_device(sim: ModbusSimulator) -> None:
    async with running(sim) as (handler, _, _):
        replies = [await handler.write("press-1", f"c{i}", {"u16": i}) for i in range(8)]
    ok = [r for r in replies if r["ok"]]
    limited = [r for r in replies if not r["ok"]]
    assert len(ok) == 5  # the burst
    assert all(r["error"].startswith("rate limited") for r in limited)
    assert memory(sim, "u16", 1) == [4]  # the last accepted one


def test_token_bucket_refills_at_its_rate() -> None:
    now = [0.0]
    bucket = TokenBucket(rate=2.0, burst=2, clock=lambda: now[0])
    assert [bucket.take() for _ in range(3)] == [True, True, False]
    now[0] = 0.5
    assert [bucket.take(), bucket.take()] == [True, False]


def test_a_resized_bucket_still_counts_what_was_taken() -> None:
    """A reload changes the limit: the commands taken lately count against the new burst, so a
    larger one frees only the difference, a smaller one refuses at once, the new rate refills."""
    now = [0.0]
    bucket = TokenBucket(rate=1.0, burst=3, clock=lambda: now[0])
    assert [bucket.take() for _ in range(3)] == [True] * 3
    bucket.resize(rate=1.0, burst=5)  # 3 taken: 2 left
    assert [bucket.take() for _ in range(3)] == [True, True, False]
    now[0] = 1.0  # one refilled at the old rate, then a smaller burst below what was taken
    bucket.resize(rate=10.0, burst=2)
    assert bucket.take() is False
    now[0] = 1.15  # 1.5 tokens at the new rate
    assert [bucket.take(), bucket.take()] == [True, False]
    now[0] = 100.0
    assert [bucket.take() for _ in range(3)] == [True, True, False]  # never past the new burst


async def test_each_device_has_the_limit_its_config_gives(sim: ModbusSimulator) -> None:
    """Two devices on one simulator, one with ``commands: {burst: 1}``: its second command is
    refused, the other's default burst of 5 is untouched; the reply names the device's limit."""
    strict = make_device(sim.port, commands={"burst": 1, "per_second": 0.5}).model_copy(
        update={"name": "press-2"}
    )
    async with running(sim) as (_, poller, sink):
        strict_poller = DevicePoller(strict, ModbusDriver(strict), sink, Status(), Metrics())
        task = asyncio.create_task(strict_poller.run())
        try:
            await sink.until(lambda: strict_poller.cycles >= 1)
            pollers = {"press-1": poller, "press-2": strict_poller}
            handler = CommandHandler({"press-1": poller.device, "press-2": strict}, pollers.get)
            strict_replies = [await handler.write("press-2", f"s{i}", {"u16": i}) for i in range(2)]
            other_replies = [await handler.write("press-1", f"o{i}", {"u16": i}) for i in range(5)]
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    assert strict_replies[0]["ok"] is True
    assert strict_replies[1] == {
        "id": "s1",
        "ok": False,
        "error": "rate limited: at most 1 command at once and 0.5 per second to device 'press-2'",
    }
    assert all(r["ok"] for r in other_replies)


async def test_writes_never_land_inside_a_poll(sim: ModbusSimulator) -> None:
    """Each poll is three reads (max_gap 0 across distant tags), slowed down by the device; a
    stream of writes meanwhile: on the wire, every write comes between whole polls."""
    sim.set_delay(1, 0.01)
    async with running(sim, max_gap=0) as (handler, _, _):
        await asyncio.gather(
            *(handler.write("press-1", f"w{i}", {"u16": i}) for i in range(4)),
        )
    plan = [(r.address, r.count) for r in ModbusDriver(make_device(sim.port, max_gap=0)).requests]
    assert len(plan) >= 3
    position, after_write, writes = 0, False, 0
    for _, fc, address, count in sim.log:
        if fc == 6:
            assert position == 0, "a write went on the wire in the middle of a poll"
            after_write, writes = True, writes + 1
        elif after_write:  # the write's own read-back
            assert (address, count) == (100, 1)
            after_write = False
        else:
            assert (address, count) == plan[position]
            position = (position + 1) % len(plan)
    assert writes == 4


async def test_a_write_through_the_broker_and_a_running_agent(
    tmp_path: Path, broker: Mosquitto
) -> None:
    async with ModbusSimulator(port=free_port(), units=(1,), update_interval=None) as sim:
        cfg = write_config(
            tmp_path / "c.yaml",
            broker_port=broker.port,
            modbus_port=sim.port,
            devices=[{"name": "press-1", "poll_interval": "200ms", "tags": TAGS}],
        )
        sub = Subscriber(broker.port, ["edge/test-gw/+/cmd/reply"], client_id="w-watch").start()
        try:
            async with AgentRig(cfg) as agent:
                await asyncio.wait_for(agent.publisher.connected.wait(), 10)
                await asyncio.sleep(0.3)  # the agent's command subscription is in place
                sender = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="w-sender")
                sender.connect("127.0.0.1", broker.port)
                sender.loop_start()
                sender.publish("edge/test-gw/press-1/cmd", cmd("sp-1", setpoint=40), qos=1)
                sender.publish("edge/test-gw/press-1/cmd", cmd("sp-2", setpoint=99), qos=1)
                replies = await sub.wait_for(lambda m: len(m) >= 2, timeout=15)
                sender.disconnect()
                sender.loop_stop()
        finally:
            sub.stop()
        assert memory(sim, "setpoint", 1) == [60]
    by_id = {r.json()["id"]: r.json() for r in replies}
    assert by_id["sp-1"] == {"id": "sp-1", "ok": True}
    assert by_id["sp-2"]["ok"] is False and "above max" in by_id["sp-2"]["error"]


async def test_the_limit_from_yaml_holds_through_the_broker_and_a_reload_changes_it(
    tmp_path: Path, broker: Mosquitto
) -> None:
    """``commands: {burst: 2}`` in the file: of three commands sent through the broker two are
    written. A reload to ``burst: 5`` keeps the device's poll task and frees three more at once
    (the two taken still count), the sixth is refused naming the new limit."""
    slow = 0.001  # per second: nothing refills while the test runs
    path = tmp_path / "c.yaml"
    modbus_port = free_port()

    def config(burst: int) -> Path:
        device = {
            "name": "press-1",
            "poll_interval": "200ms",
            "tags": TAGS,
            "commands": {"burst": burst, "per_second": slow},
        }
        return write_config(
            path, broker_port=broker.port, modbus_port=modbus_port, devices=[device]
        )

    async with ModbusSimulator(port=modbus_port, units=(1,), update_interval=None):
        config(2)
        sub = Subscriber(broker.port, ["edge/test-gw/+/cmd/reply"], client_id="rl-watch").start()
        sender = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="rl-sender")
        sender.connect("127.0.0.1", broker.port)
        sender.loop_start()

        def send(*ids: str) -> None:
            for n, cmd_id in enumerate(ids):
                sender.publish("edge/test-gw/press-1/cmd", cmd(cmd_id, u16=n), qos=1)

        async def replies(*ids: str) -> dict[str, dict[str, Any]]:
            def got(messages: list[Any]) -> dict[str, dict[str, Any]]:
                docs = (m.json() for m in messages)
                return {d["id"]: d for d in docs if d["id"] in ids}

            return got(await sub.wait_for(lambda m: len(got(m)) == len(ids), timeout=15))

        try:
            async with AgentRig(path) as agent:
                await asyncio.wait_for(agent.publisher.connected.wait(), 10)
                # The agent's subscription is in place once a command gets a reply; an unknown
                # tag is refused before the rate limit, so these take nothing from the bucket.
                pinged = 0
                while not sub.snapshot("/cmd/reply"):
                    pinged += 1
                    sender.publish("edge/test-gw/press-1/cmd", cmd(f"ping{pinged}", nope=1))
                    with contextlib.suppress(AssertionError):
                        await sub.wait_for(lambda m: bool(m), timeout=0.2)
                poller = agent.pollers[0]
                send("a1", "a2", "a3")
                first = await replies("a1", "a2", "a3")
                config(5)
                assert await agent.reload(path)
                # The same poller, still polling: a changed limit restarts nothing.
                assert agent.pollers == [poller]
                cycles = poller.cycles
                await until(lambda: poller.cycles > cycles)
                send("b1", "b2", "b3", "b4")
                second = await replies("b1", "b2", "b3", "b4")
        finally:
            sender.disconnect()
            sender.loop_stop()
            sub.stop()
    assert sorted(r["ok"] for r in first.values()) == [False, True, True]
    refused = next(r for r in first.values() if not r["ok"])
    assert refused["error"].startswith("rate limited: at most 2 commands at once and 0.001")
    assert sorted(r["ok"] for r in second.values()) == [False, True, True, True]
    refused = next(r for r in second.values() if not r["ok"])
    assert refused["error"].startswith("rate limited: at most 5 commands at once and 0.001")


def test_a_reload_restarts_a_device_only_when_more_than_its_limit_changed(tmp_path: Path) -> None:
    def load(name: str, **extra: Any) -> Any:
        device = {"name": "press-1", "tags": TAGS, **extra}
        path = write_config(tmp_path / name, broker_port=1883, modbus_port=502, devices=[device])
        return load_config(path, load_drivers())

    before = load("a.yaml")
    retuned = plan_reload(before, load("b.yaml", commands={"per_second": 5}))
    assert (retuned.unchanged, retuned.retuned, retuned.changed) == (["press-1"], ["press-1"], [])
    assert retuned.summary()["retuned"] == "press-1"
    both = plan_reload(before, load("c.yaml", commands={"burst": 9}, poll_interval="2s"))
    assert (both.unchanged, both.retuned, both.changed) == ([], [], ["press-1"])
