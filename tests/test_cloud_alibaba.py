"""Alibaba Cloud IoT Platform (Alink): the sign-in vector of Alibaba's Link SDK examples, the
documented payload shapes, and a gateway session against a broker shaped like the platform."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from agent.core.buffer import StoredBatch
from agent.north.formats.alibaba import AlibabaFormat, mqtt_credentials, sign
from tests.e2e import until
from tests.platforms.alibaba import (
    GW_DN,
    GW_PK,
    SUB_PK,
    AlibabaResponder,
    alibaba_broker,
)
from tests.platforms.common import RecordingTarget, press_commands
from tests.test_failover import Rig, _settings

#: The device triple and fixed timestamp of Alibaba's Link SDK examples (dev_sign, aiot demos).
SECRET = "ga7XA6KdlEeiPXQPpRbAjOZXwG8ydgSe"
TS = 2524608000000


def test_mqtt_sign_in_as_documented() -> None:
    client_id, user, password = mqtt_credentials(GW_PK, GW_DN, SECRET, TS)
    assert user == "example1&a1X2bEnP82z"  # deviceName + "&" + productKey
    assert client_id == (
        "a1X2bEnP82z.example1|securemode=2,signmethod=hmacsha256,timestamp=2524608000000|"
    )
    # "content": the parameters sorted by name, concatenated without separators
    content = "clientIda1X2bEnP82z.example1deviceNameexample1productKeya1X2bEnP82ztimestamp" + str(
        TS
    )
    done = subprocess.run(
        ["openssl", "dgst", "-sha256", "-hmac", SECRET, "-hex"],
        input=content.encode(), capture_output=True, check=True,
    )  # fmt: skip
    assert password == done.stdout.decode().split("= ")[-1].strip()
    assert sign(SECRET, {"b": "2", "a": "1"}) == sign(SECRET, {"a": "1", "b": "2"})


def _row(i: int, device: str, values: dict[str, object], kind: str = "data") -> StoredBatch:
    body = json.dumps({"ts": 1524448722000, "values": values}).encode()
    return StoredBatch(i, device, kind, i, 1524448722000, body, 0.0)


#: An alarm event as the pipeline buffers it (agent/core/processing/alarms.py): ``values`` is the
#: list of evidence, not a tag map.
EVENT = {"event": "raise", "alarm": "overtemp", "severity": "warning", "values": [81.5, 82.0]}


def _event(i: int, device: str) -> StoredBatch:
    body = json.dumps({"ts": 1524448722000, **EVENT}).encode()
    return StoredBatch(i, device, "event", i, 1524448722000, body, 0.0)


def test_pack_post_has_the_documented_shape() -> None:
    fmt = AlibabaFormat(GW_PK, GW_DN, {"press-1": (SUB_PK, "press-1"), "oven": (SUB_PK, "oven")})
    packs = fmt.pack(
        [
            _row(1, "press-1", {"Power": "on", "WF": 23.6}),
            _row(2, "oven", {"Power": "off"}),
            _row(3, "press-1", {"Power": "off"}),  # the same property again: next post
            _event(4, "oven"),
        ]
    )
    assert [[r.id for r in p.rows] for p in packs] == [[1, 2], [3, 4]]
    first = packs[0].message
    assert (
        first is not None and first.topic == f"/sys/{GW_PK}/{GW_DN}/thing/event/property/pack/post"
    )
    doc = json.loads(first.payload)
    assert doc["method"] == "thing.event.property.pack.post" and doc["version"] == "1.0"
    assert doc["params"]["subDevices"][0] == {
        "identity": {"productKey": SUB_PK, "deviceName": "press-1"},
        "properties": {
            "Power": {"value": "on", "time": 1524448722000},
            "WF": {"value": 23.6, "time": 1524448722000},
        },
        "events": {},
    }
    second = json.loads(packs[1].message.payload)  # type: ignore[union-attr]
    assert second["params"]["subDevices"][1]["events"] == {
        "event": {"value": EVENT, "time": 1524448722000}
    }


def test_property_set_reply_has_the_documented_shape() -> None:
    fmt = AlibabaFormat(GW_PK, GW_DN, {"press-1": (SUB_PK, "press-1")})
    topic = f"/sys/{SUB_PK}/press-1/thing/service/property/set"
    body = {"method": "thing.service.property.set", "id": "1", "params": {"sp": 30.5}}
    reaction = fmt.incoming(topic, json.dumps(body).encode())
    assert reaction is not None and reaction.command is not None
    assert reaction.command.writes == {"sp": 30.5}
    reply = fmt.reply(reaction.command, {"id": "1", "ok": True})
    assert reply is not None and reply.topic == topic + "_reply"
    assert json.loads(reply.payload) == {
        "id": "1", "code": 200, "data": {}, "message": "success", "version": "1.0"
    }  # fmt: skip


async def test_gateway_session_against_an_alibaba_shaped_broker(tmp_path: Path) -> None:
    fmt = AlibabaFormat(GW_PK, GW_DN, {"press-1": (SUB_PK, "press-1")}, clock=lambda: TS / 1000)
    client_id, user, password = mqtt_credentials(GW_PK, GW_DN, SECRET, TS)
    broker = alibaba_broker(tmp_path / "ali", user, password)
    broker.start()
    platform = AlibabaResponder(broker.port, ["/sys/#", "/ext/#"], client_id="platform").start()
    target = RecordingTarget()
    settings = _settings([f"127.0.0.1:{broker.port}"], protocol="3.1.1")
    try:
        commands = press_commands(target)
        async with Rig(tmp_path, settings, fmt, commands, SECRET) as rig:
            rig.publisher.device_status("press-1", "up", None, 1.0)  # only then logged in
            await rig.put("press-1", 3)
            await until(lambda: rig.buffer.stats().batches == 0, timeout=10)
            rig.publisher.device_status("press-1", "down", "timeout", 1.0)
            await platform.wait_for(lambda m: bool(platform.of("/combine/logout")))
            platform.property_set("press-1", "77", {"sp": 12})
            await platform.wait_for(lambda m: bool(platform.of("/property/set_reply")))
    finally:
        platform.stop()
        broker.stop()
    log = (tmp_path / "ali" / "mosquitto.log").read_text()
    assert "Denied PUBLISH from" not in log
    assert client_id in log  # the signed client id was accepted
    assert platform.logins == ["press-1"] and platform.bad_signs == []
    posts = [json.loads(m.payload) for m in platform.of("/thing/event/property/pack/post")]
    values = [sd["properties"]["i"]["value"] for p in posts for sd in p["params"]["subDevices"]]
    assert values == [0, 1, 2]
    [reply] = platform.of("/property/set_reply")
    assert json.loads(reply.payload)["code"] == 200 and target.written == {"sp": 12}


def test_a_removed_device_keeps_its_identity_for_its_buffered_batches() -> None:
    fmt = AlibabaFormat(GW_PK, GW_DN, {}, sub_product_key=SUB_PK)
    [packed] = fmt.pack([_row(1, "gone", {"t": 1})])
    assert packed.message is not None and [r.id for r in packed.rows] == [1]
    [sub] = json.loads(packed.message.payload)["params"]["subDevices"]
    assert sub["identity"] == {"productKey": SUB_PK, "deviceName": "gone"}


def test_only_devices_that_answered_are_logged_in() -> None:
    """The online state on the platform is the login: a device whose first poll has not
    answered (or never will) is registered but not logged in; it is when it answers."""
    subs = {"a": (SUB_PK, "a"), "b": (SUB_PK, "b")}
    fmt = AlibabaFormat(GW_PK, GW_DN, subs, clock=lambda: TS / 1000)
    fmt.online()
    assert fmt.status_changed("a", "up", None, 0) == []  # no secret yet: logged in once registered
    issued = [{"productKey": SUB_PK, "deviceName": n, "deviceSecret": "s"} for n in "ab"]
    reaction = fmt.incoming(
        f"/sys/{GW_PK}/{GW_DN}/thing/sub/register_reply",
        json.dumps({"code": 200, "data": issued}).encode(),
    )
    assert reaction is not None
    logins = [m for m in reaction.publish if m.topic.endswith("/combine/login")]
    assert [json.loads(m.payload)["params"]["deviceName"] for m in logins] == ["a"]
    [late] = fmt.status_changed("b", "up", None, 0)
    assert late.topic.endswith("/combine/login")
    assert json.loads(late.payload)["params"]["deviceName"] == "b"
    # a device that comes and goes is logged out each time it goes (the second time too)
    for _ in range(2):
        [out] = fmt.status_changed("b", "down", "timeout", 0)
        assert out.topic.endswith("/combine/logout")
        [back] = fmt.status_changed("b", "up", None, 0)
        assert back.topic.endswith("/combine/login")
