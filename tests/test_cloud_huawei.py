"""Huawei Cloud IoTDA: the CONNECT authentication of the documentation (client id example and
the HMAC, checked by openssl), the gateway topics and payloads, and a session against a broker
shaped like IoTDA with a responder playing the platform."""

from __future__ import annotations

import calendar
import json
import subprocess
from pathlib import Path

from agent.core.buffer import StoredBatch
from agent.north.formats.base import Message
from agent.north.formats.huawei import HuaweiFormat, event_time, mqtt_credentials
from tests.e2e import until
from tests.platforms.common import RecordingTarget, press_commands
from tests.platforms.huawei import GATEWAY, IotdaResponder, huawei_broker
from tests.test_failover import Rig, _settings

SECRET = "gw-device-secret"
#: 2018-07-24 17:xx UTC, the hour of the documented client id D39564861q3gDa_0_0_2018072417
WHEN = calendar.timegm((2018, 7, 24, 17, 42, 0)) + 0.5


def test_connect_authentication_as_documented() -> None:
    client_id, user, password = mqtt_credentials(GATEWAY, SECRET, WHEN)
    assert client_id == "D39564861q3gDa_0_0_2018072417"
    assert user == GATEWAY
    # "the device secret encrypted by HMAC-SHA256 with the timestamp as the key"
    done = subprocess.run(
        ["openssl", "dgst", "-sha256", "-hmac", "2018072417", "-hex"],
        input=SECRET.encode(), capture_output=True, check=True,
    )  # fmt: skip
    assert password == done.stdout.decode().split("= ")[-1].strip()


def test_report_status_and_command_payloads() -> None:
    fmt = HuaweiFormat(GATEWAY, {"press-1": "prod_press-1"}, clock=lambda: WHEN)
    body = json.dumps({"ts": 1532454120000, "values": {"t": 1.5}}).encode()
    [packed] = fmt.pack([StoredBatch(1, "press-1", "data", 1, 1532454120000, body, 0.0)])
    assert packed.message is not None
    assert (
        packed.message.topic == f"$oc/devices/{GATEWAY}/sys/gateway/sub_devices/properties/report"
    )
    assert json.loads(packed.message.payload) == {
        "devices": [
            {
                "device_id": "prod_press-1",
                "services": [
                    {
                        "service_id": "edge",
                        "properties": {"t": 1.5},
                        "event_time": "20180724T174200Z",
                    }
                ],
            }
        ]
    }
    assert event_time(0) == "19700101T000000Z"
    [status] = fmt.status_changed("press-1", "down", "timeout", 0)
    doc = json.loads(status.payload)
    assert status.topic == f"$oc/devices/{GATEWAY}/sys/events/up"
    assert doc["services"][0]["event_type"] == "sub_device_update_status"
    assert doc["services"][0]["paras"] == {
        "device_statuses": [{"device_id": "prod_press-1", "status": "OFFLINE"}]
    }
    topic = f"$oc/devices/{GATEWAY}/sys/commands/request_id=42"
    cmd = {"object_device_id": "prod_press-1", "command_name": "write", "paras": {"sp": 3}}
    reaction = fmt.incoming(topic, json.dumps(cmd).encode())
    assert reaction is not None and reaction.command is not None
    assert reaction.command.writes == {"sp": 3}
    reply = fmt.reply(reaction.command, {"id": "42", "ok": False, "error": "no"})
    assert reply is not None
    assert reply.topic == f"$oc/devices/{GATEWAY}/sys/commands/response/request_id=42"
    assert json.loads(reply.payload)["result_code"] == 1


async def test_gateway_session_against_an_iotda_shaped_broker(tmp_path: Path) -> None:
    fmt = HuaweiFormat(GATEWAY, {"press-1": "prod_press-1"}, clock=lambda: WHEN)
    client_id, user, password = mqtt_credentials(GATEWAY, SECRET, WHEN)
    broker = huawei_broker(tmp_path / "iotda", user, password)
    broker.start()
    iotda = IotdaResponder(broker.port, ["$oc/devices/#"], client_id="iotda").start()
    target = RecordingTarget()
    settings = _settings([f"127.0.0.1:{broker.port}"], protocol="3.1.1")
    try:
        commands = press_commands(target)
        async with Rig(tmp_path, settings, fmt, commands, SECRET) as rig:
            rig.publisher.device_status("press-1", "up", None, 1.0)  # OFFLINE until it answers
            await rig.put("press-1", 4)
            await until(lambda: rig.buffer.stats().batches == 0, timeout=10)
            iotda.command("9", "prod_press-1", "write", {"sp": 5})
            await iotda.wait_for(lambda m: bool(iotda.of("/commands/response/")))
    finally:
        iotda.stop()
        broker.stop()
    log = (tmp_path / "iotda" / "mosquitto.log").read_text()
    assert "Denied PUBLISH from" not in log and client_id in log
    reports = [json.loads(m.payload) for m in iotda.of("/properties/report")]
    values = [d["services"][0]["properties"]["i"] for r in reports for d in r["devices"]]
    assert values == [0, 1, 2, 3]
    [online] = [json.loads(m.payload) for m in iotda.of("/events/up")]
    assert online["services"][0]["paras"]["device_statuses"][0]["status"] == "ONLINE"
    [response] = iotda.of("/commands/response/request_id=9")
    assert json.loads(response.payload)["result_code"] == 0 and target.written == {"sp": 5}


def test_alarm_events_and_removed_devices_pack() -> None:
    """An alarm event (``values`` is its evidence list) becomes service ``event`` with the
    event's fields; a device a reload removed keeps the id ``<sub_product_id>_<name>`` so its
    buffered batches still go out (before, both were acknowledged unsent)."""
    fmt = HuaweiFormat(GATEWAY, {}, clock=lambda: WHEN, sub_product_id="prod")
    event = {"ts": 1532454120000, "event": "raise", "alarm": "hot", "values": [1.0, 2.0]}
    body = json.dumps(event).encode()
    [packed] = fmt.pack([StoredBatch(1, "gone", "event", 1, 1532454120000, body, 0.0)])
    assert packed.message is not None and packed.rows
    [device] = json.loads(packed.message.payload)["devices"]
    assert device["device_id"] == "prod_gone"
    assert device["services"] == [
        {
            "service_id": "event",
            "properties": {"event": "raise", "alarm": "hot", "values": [1.0, 2.0]},
            "event_time": "20180724T174200Z",
        }
    ]


def test_a_device_is_offline_until_it_answers() -> None:
    """Announced OFFLINE at connect until its first poll answered: a device that does not
    answer must not show ONLINE until its poll times out."""
    fmt = HuaweiFormat(GATEWAY, {"press-1": "prod_press-1"}, clock=lambda: WHEN)

    def statuses(messages: list[Message]) -> list[str]:
        docs = [json.loads(m.payload)["services"][0]["paras"] for m in messages]
        return [s["status"] for d in docs for s in d["device_statuses"]]

    assert statuses(fmt.online()) == ["OFFLINE"]
    assert statuses(fmt.status_changed("press-1", "up", None, 0)) == ["ONLINE"]
    assert statuses(fmt.online()) == ["ONLINE"]  # the next connect says what is known


def test_a_removed_device_is_said_offline_under_the_id_it_had() -> None:
    """A reload's new format does not map a removed device; told it is down, it still says so
    (and again at each connect), or IoTDA would keep it online."""
    fmt = HuaweiFormat(GATEWAY, {}, clock=lambda: WHEN, sub_product_id="prod")
    [msg] = fmt.status_changed("gone", "down", "removed from config", 0)
    paras = json.loads(msg.payload)["services"][0]["paras"]
    assert paras["device_statuses"] == [{"device_id": "prod_gone", "status": "OFFLINE"}]
    [again] = fmt.online()
    assert again.payload.count(b"prod_gone") == 1
    assert fmt.status_changed("gone", "up", None, 0) == []  # not ours to bring back
