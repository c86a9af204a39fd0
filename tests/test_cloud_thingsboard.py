"""ThingsBoard's gateway MQTT API: the documentation's examples, and an end-to-end run against a
mosquitto shaped like ThingsBoard (its topics only, per-user ACL) with a responder playing the
platform (RPC calls to writes, replies)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from agent.buffer import StoredBatch
from agent.formats.base import Reaction
from agent.formats.thingsboard import ThingsBoardFormat
from tests.e2e import until
from tests.platforms.common import RecordingTarget, WritableTag, press_commands
from tests.platforms.thingsboard import (
    GATEWAY_PASSWORD,
    GATEWAY_USER,
    make_responder,
    thingsboard_broker,
)
from tests.test_failover import Rig, _settings


def _row(i: int, device: str, ts: int, values: dict[str, Any], **doc: Any) -> StoredBatch:
    body = json.dumps({"ts": ts, "values": values, **doc}).encode()
    return StoredBatch(i, device, "data", i, ts, body, 0.0)


def test_telemetry_packs_devices_as_in_the_documentation() -> None:
    """thingsboard.io/docs/reference/gateway-mqtt-api, "Telemetry upload API" (device names
    are agent names, so "Device A" is written Device-A)."""
    fmt = ThingsBoardFormat(["Device-A", "Device-B"])
    rows = [
        _row(1, "Device-A", 1483228800000, {"temperature": 42, "humidity": 80}),
        _row(2, "Device-A", 1483228801000, {"temperature": 43, "humidity": 82}),
        _row(3, "Device-B", 1483228800000, {"temperature": 42, "humidity": 80}),
    ]
    [packed] = fmt.pack(rows)
    assert packed.message is not None
    assert packed.message.topic == "v1/gateway/telemetry"
    assert json.loads(packed.message.payload) == {
        "Device-A": [
            {"ts": 1483228800000, "values": {"temperature": 42, "humidity": 80}},
            {"ts": 1483228801000, "values": {"temperature": 43, "humidity": 82}},
        ],
        "Device-B": [{"ts": 1483228800000, "values": {"temperature": 42, "humidity": 80}}],
    }
    assert [r.id for r in packed.rows] == [1, 2, 3]


def test_connect_and_rpc_reply_as_in_the_documentation() -> None:
    fmt = ThingsBoardFormat(["Device-A"])
    [connect] = fmt.online()
    assert (connect.topic, json.loads(connect.payload)) == (
        "v1/gateway/connect",
        {"device": "Device-A"},
    )
    assert json.loads(ThingsBoardFormat(["d"], device_type="Sensor-A").online()[0].payload) == {
        "device": "d",
        "type": "Sensor-A",
    }
    assert fmt.subscriptions() == ("v1/gateway/rpc",)
    # the documentation's RPC example: a method we do not have gets a failed reply at once
    request = {
        "device": "Device A",
        "data": {"id": 1, "method": "toggle_gpio", "params": {"pin": 1}},
    }
    reaction = fmt.incoming("v1/gateway/rpc", json.dumps(request).encode())
    assert isinstance(reaction, Reaction) and reaction.command is None
    [reply] = reaction.publish
    assert reply.topic == "v1/gateway/rpc"
    doc = json.loads(reply.payload)
    assert (doc["device"], doc["id"], doc["data"]["success"]) == ("Device A", 1, False)
    # a write becomes a command for the write path; its reply has the documented shape
    write = {"device": "Device-A", "data": {"id": 7, "method": "write", "params": {"sp": 2}}}
    reaction = fmt.incoming("v1/gateway/rpc", json.dumps(write).encode())
    assert reaction is not None and reaction.command is not None
    assert (reaction.command.writes, reaction.command.cmd_id) == ({"sp": 2}, "7")
    msg = fmt.reply(reaction.command, {"id": "7", "ok": True})
    assert msg is not None
    assert json.loads(msg.payload) == {"device": "Device-A", "id": 7, "data": {"success": True}}


def test_access_token_is_the_user_name_basic_and_x509_unchanged() -> None:
    fmt = ThingsBoardFormat([])
    assert fmt.credentials(None, "A1_TEST_TOKEN") == ("A1_TEST_TOKEN", None)
    assert fmt.credentials("gw", "secret") == ("gw", "secret")
    assert fmt.credentials(None, None) == (None, None)


def test_messages_split_at_the_size_limit_and_quality_travels() -> None:
    fmt = ThingsBoardFormat(["d"], max_payload=1024)
    rows = [
        _row(i, "d", 1000 + i, {"v": i, "s": "x" * 100}, quality={"t": "bad: timeout"})
        for i in range(1, 41)
    ]
    packs = fmt.pack(rows)
    assert len(packs) > 1
    assert all(p.message is not None and len(p.message.payload) <= 1024 for p in packs)
    assert [r.id for p in packs for r in p.rows] == list(range(1, 41))
    first = json.loads(packs[0].message.payload)  # type: ignore[union-attr]
    assert first["d"][0]["values"]["t.quality"] == "bad: timeout"


async def test_end_to_end_against_a_thingsboard_shaped_broker(tmp_path: Path) -> None:
    broker = thingsboard_broker(tmp_path / "tb")
    broker.start()
    target = RecordingTarget()
    commands = press_commands(target, WritableTag(name="t"), WritableTag(name="sp", writable=True))
    platform = make_responder(broker.port).start()
    settings = _settings([f"127.0.0.1:{broker.port}"], username=GATEWAY_USER, protocol="3.1.1")
    try:
        fmt = ThingsBoardFormat(["press-1"])
        async with Rig(tmp_path, settings, fmt, commands, GATEWAY_PASSWORD) as rig:
            await rig.put("press-1", 5)
            await platform.wait_for(lambda m: len(platform.of("v1/gateway/telemetry")) >= 1)
            await until(lambda: rig.buffer.stats().batches == 0, timeout=5)
            rig.publisher.device_status("press-1", "down", "timeout", 1.0)
            platform.rpc("press-1", 41, "write", {"t": 3})
            platform.rpc("press-1", 42, "reboot", {})
            platform.rpc("press-1", 43, "write", {"sp": 2.5})
            await platform.wait_for(
                lambda m: sum("id" in d for d in platform.of("v1/gateway/rpc")) >= 3
            )
    finally:
        platform.stop()
        broker.stop()
    log = (tmp_path / "tb" / "mosquitto.log").read_text()
    assert "Denied PUBLISH from gw-test" not in log  # only ThingsBoard's topics were used
    assert "u'tb-gateway'" in log
    assert platform.of("v1/gateway/connect") == [{"device": "press-1"}]
    entries = [e for doc in platform.of("v1/gateway/telemetry") for e in doc["press-1"]]
    assert [e["values"]["i"] for e in entries] == [0, 1, 2, 3, 4]
    assert {"press-1": {"state": "down", "reason": "timeout"}} in platform.of(
        "v1/gateway/attributes"
    )
    replies = {d["id"]: d for d in platform.of("v1/gateway/rpc") if "id" in d}
    assert replies[41]["device"] == "press-1"
    assert replies[41]["data"] == {"success": False, "error": "tag 't' is not writable"}
    assert replies[42]["data"]["success"] is False
    assert replies[43]["data"] == {"success": True}
    assert target.written == {"sp": 2.5}
