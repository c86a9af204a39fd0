"""ThingsBoard's gateway MQTT API: the documentation's examples, and an end-to-end run against a
mosquitto shaped like ThingsBoard (its topics only, per-user ACL) with a responder playing the
platform (RPC calls to writes, replies)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from agent.app.config import ConfigErrors, load_config
from agent.core.buffer import StoredBatch
from agent.core.processing.alarms import Alarm
from agent.core.processing.config import AlarmSpec, StateSpec
from agent.core.processing.state import MachineState
from agent.north.formats import build_format
from agent.north.formats.base import Reaction
from agent.north.formats.thingsboard import ThingsBoardFormat
from agent.south.registry import load_drivers
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


def _alarm_events() -> list[dict[str, Any]]:
    """A raise and a clear of ``overheat`` on ``oil_temp``, from the real alarm state machine
    (the documents the pipeline buffers on ``press-1/event``)."""
    spec = AlarmSpec.model_validate(
        {"name": "overheat", "on": "> 80", "off": "< 70", "for": 1, "severity": "critical"}
    )
    alarm = Alarm(spec, "oil_temp")
    docs = []
    for i, value in enumerate([75.0, 85.0, 86.5, 87.0, 72.0, 65.0, 64.0, 63.0]):
        event, _ = alarm.update(value, 1_700_000_000.0 + i, "press-1")
        if event is not None:
            docs.append(event.doc)
    assert [d["event"] for d in docs] == ["raise", "clear"]
    return docs


def _event_row(i: int, doc: dict[str, Any]) -> StoredBatch:
    return StoredBatch(i, "press-1", "event", i, doc["ts"], json.dumps(doc).encode(), 0.0)


def _machine_state() -> bytes:
    """The retained machine-state document of a running machine (agent/core/processing/state.py)."""
    state = MachineState(
        StateSpec.model_validate({"rules": [{"state": "running", "when": "spindle > 0"}]})
    )
    state.note("spindle", 1200.0)
    state.update(1_700_000_000.0, down=False)
    state.update(1_700_000_060.0, down=False)
    return json.dumps(state.retained(1_700_000_060.0)).encode()


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


# -- device status and machine state: two sets of attributes -------------------------------------


def test_device_status_and_machine_state_use_disjoint_attributes() -> None:
    fmt = ThingsBoardFormat(["press-1"])
    status = fmt.retained_status("press-1", "down", "timeout", 1000)
    state = fmt.side_message(fmt.device_topic("press-1", "state"), _machine_state())
    assert status is not None and state is not None
    assert status.topic == state.topic == "v1/gateway/attributes"
    status_attrs = json.loads(status.payload)["press-1"]
    state_attrs = json.loads(state.payload)["press-1"]
    assert status_attrs == {"state": "down", "reason": "timeout"}  # as dashboards know them
    assert state_attrs == {
        "machine_state": "running",
        "machine_since": 1_700_000_000_000,
        "machine_ts": 1_700_000_060_000,
        "machine_runtime": {"running": 60.0},
    }
    assert not set(status_attrs) & set(state_attrs)


# -- events ---------------------------------------------------------------------------------------


def test_alarm_events_pack_as_one_json_key_per_alarm() -> None:
    raised, cleared = _alarm_events()
    fmt = ThingsBoardFormat(["press-1"])
    rows = [
        _row(1, "press-1", raised["ts"], {"oil_temp": 86.5}),
        _event_row(2, raised),
        _event_row(3, cleared),
    ]
    [packed] = fmt.pack(rows)
    assert packed.message is not None and [r.id for r in packed.rows] == [1, 2, 3]
    entries = json.loads(packed.message.payload)["press-1"]
    assert entries == [
        {"ts": raised["ts"], "values": {"oil_temp": 86.5}},
        {"ts": raised["ts"], "values": {"event.overheat": raised}},
        {"ts": cleared["ts"], "values": {"event.overheat": cleared}},
    ]
    assert raised["values"] == [85.0, 86.5]  # the evidence list that broke the old packer
    # an event of another shape still arrives, under the stream's name
    other = StoredBatch(4, "press-1", "event", 4, 5, b'{"ts": 5, "event": "note"}', 0.0)
    [note] = fmt.pack([other])
    assert note.message is not None
    assert json.loads(note.message.payload)["press-1"][0]["values"] == {
        "event": {"ts": 5, "event": "note"}
    }


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[1, 2]",
        b'{"ts": 1, "values": [1, 2]}',
        b'{"ts": 1, "values": {"a": 1}, "quality": 3}',
    ],
)
def test_an_unreadable_row_raises_rather_than_being_acknowledged(body: bytes) -> None:
    """Packed(None, row) would acknowledge, that is delete, the row unsent: the exception goes
    to the publisher, which quarantines the row in the buffer."""
    fmt = ThingsBoardFormat(["press-1"])
    row = StoredBatch(9, "press-1", "data", 9, 1, body, 0.0)
    with pytest.raises((ValueError, TypeError, AttributeError)):
        fmt.pack([_row(1, "press-1", 1, {"a": 1}), row])


# -- device types per profile and device -----------------------------------------------------------

TYPED = """\
agent: {id: line1-gw}
mqtt:
  password_env: TB_TOKEN
  format: thingsboard
  thingsboard:
    device_type: default-for-all
    profile_types: {power-meter: Power meter, cnc: CNC}
    device_types: {lathe-2: CNC lathe, meter-9: Spare meter}
profiles:
  power-meter:
    driver: modbus
    tags:
      - {name: voltage_l1, table: holding, address: 0, type: float32}
  cnc:
    driver: modbus
    tags:
      - {name: spindle, table: holding, address: 0, type: uint16}
devices:
  - {name: meter-1, driver: modbus, profile: power-meter, connection: {host: 127.0.0.1, port: 5020}}
  - {name: meter-9, driver: modbus, profile: power-meter, connection: {host: 127.0.0.1, port: 5021}}
  - {name: lathe-1, driver: modbus, profile: cnc, connection: {host: 127.0.0.1, port: 5022}}
  - {name: lathe-2, driver: modbus, profile: cnc, connection: {host: 127.0.0.1, port: 5023}}
  - name: pump-1
    driver: modbus
    connection: {host: 127.0.0.1, port: 5024}
    tags:
      - {name: flow, table: input, address: 0, type: uint16}
"""
#: device beats profile beats device_type
TYPES = {
    "meter-1": "Power meter",
    "meter-9": "Spare meter",
    "lathe-1": "CNC",
    "lathe-2": "CNC lathe",
    "pump-1": "default-for-all",
}


def _typed_format(tmp_path: Path, text: str) -> ThingsBoardFormat:
    path = tmp_path / "agent.yaml"
    path.write_text(text, encoding="utf-8")
    fmt = build_format(load_config(path, load_drivers()))
    assert isinstance(fmt, ThingsBoardFormat)
    return fmt


def test_device_type_per_device_then_profile_then_default(tmp_path: Path) -> None:
    fmt = _typed_format(tmp_path, TYPED)
    docs = [json.loads(m.payload) for m in fmt.online()]
    assert {d["device"]: d["type"] for d in docs} == TYPES
    # without any type the connect message has none, as before
    plain = TYPED.split("  thingsboard:")[0] + "profiles:" + TYPED.split("profiles:")[1]
    docs = [json.loads(m.payload) for m in _typed_format(tmp_path, plain).online()]
    assert all(set(d) == {"device"} for d in docs) and len(docs) == 5
    # a default alone applies to every device
    only_default = plain.replace(
        "format: thingsboard\n", "format: thingsboard\n  thingsboard: {device_type: Meter}\n"
    )
    docs = [json.loads(m.payload) for m in _typed_format(tmp_path, only_default).online()]
    assert {d["type"] for d in docs} == {"Meter"}


def test_type_maps_naming_unknown_profiles_or_devices_are_refused_at_their_key(
    tmp_path: Path,
) -> None:
    bad = TYPED.replace("cnc: CNC}", "cnc: CNC, cnc-x: CNC}").replace(
        "meter-9: Spare meter}", "meter-9: Spare meter, meter-10: Spare meter}"
    )
    path = tmp_path / "agent.yaml"
    path.write_text(bad, encoding="utf-8")
    with pytest.raises(ConfigErrors) as caught:
        load_config(path, load_drivers())
    got = [(i.line, i.col, i.path, i.message) for i in caught.value.issues]
    lines = bad.splitlines()
    assert got == [
        (
            7,
            lines[6].index("cnc-x") + 1,
            "mqtt.thingsboard.profile_types.cnc-x",
            "unknown profile 'cnc-x' (profiles: cnc, power-meter); did you mean 'cnc'?",
        ),
        (
            8,
            lines[7].index("meter-10") + 1,
            "mqtt.thingsboard.device_types.meter-10",
            "unknown device 'meter-10' (devices: lathe-1, lathe-2, meter-1, meter-9, pump-1); "
            "did you mean 'meter-1'?",
        ),
    ]


# -- through a ThingsBoard-shaped broker -----------------------------------------------------------


async def test_status_machine_state_and_alarm_events_all_reach_thingsboard(tmp_path: Path) -> None:
    """Device status and machine state both land as attributes and neither overwrites the
    other, whatever their order; alarm events arrive as telemetry and leave the buffer."""
    broker = thingsboard_broker(tmp_path / "tb")
    broker.start()
    platform = make_responder(broker.port).start()
    settings = _settings([f"127.0.0.1:{broker.port}"], username=GATEWAY_USER, protocol="3.1.1")
    raised, cleared = _alarm_events()
    try:
        async with Rig(
            tmp_path, settings, ThingsBoardFormat(["press-1"]), None, GATEWAY_PASSWORD
        ) as rig:
            rig.publisher.device_status("press-1", "down", "timeout", 1.0)
            rig.publisher.retain("press-1", "state", _machine_state())
            await rig.put_doc("press-1", raised, "event")
            await rig.put_doc("press-1", cleared, "event")
            await platform.wait_for(
                lambda m: (
                    len(platform.telemetry("press-1")) >= 2
                    and "machine_state" in platform.attributes("press-1")
                    and "state" in platform.attributes("press-1")
                )
            )
            await until(lambda: rig.buffer.stats().batches == 0, timeout=5)
            # the status changes after the machine state: the machine state stays
            rig.publisher.device_status("press-1", "up", None, 2.0)
            await platform.wait_for(lambda m: platform.attributes("press-1").get("state") == "up")
    finally:
        platform.stop()
        broker.stop()
    assert "Denied PUBLISH" not in (tmp_path / "tb" / "mosquitto.log").read_text()
    assert platform.attributes("press-1") == {
        "state": "up",
        "reason": "ok",
        "machine_state": "running",
        "machine_since": 1_700_000_000_000,
        "machine_ts": 1_700_000_060_000,
        "machine_runtime": {"running": 60.0},
    }
    assert platform.telemetry("press-1") == [
        {"ts": raised["ts"], "values": {"event.overheat": raised}},
        {"ts": cleared["ts"], "values": {"event.overheat": cleared}},
    ]


async def test_each_device_is_announced_with_its_own_type(tmp_path: Path) -> None:
    broker = thingsboard_broker(tmp_path / "tb")
    broker.start()
    platform = make_responder(broker.port).start()
    settings = _settings([f"127.0.0.1:{broker.port}"], username=GATEWAY_USER, protocol="3.1.1")
    try:
        fmt = _typed_format(tmp_path, TYPED)
        async with Rig(tmp_path, settings, fmt, None, GATEWAY_PASSWORD):
            await platform.wait_for(lambda m: len(platform.types()) == len(TYPES))
    finally:
        platform.stop()
        broker.stop()
    assert platform.types() == TYPES
