"""Huawei Cloud IoTDA's side of a gateway session, on a local mosquitto limited to the
gateway's ``$oc/devices/<id>/sys/`` topics."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.brokers import Mosquitto, Received, Subscriber, platform_broker

GATEWAY = "D39564861q3gDa"


def huawei_broker(workdir: Path, username: str, password: str) -> Mosquitto:
    acl = (
        f"user {username}\n"
        f"topic write $oc/devices/{GATEWAY}/sys/gateway/sub_devices/properties/report\n"
        f"topic write $oc/devices/{GATEWAY}/sys/events/up\n"
        f"topic read $oc/devices/{GATEWAY}/sys/commands/#\n"
        f"topic write $oc/devices/{GATEWAY}/sys/commands/response/#\n"
        "\nuser iotda\ntopic readwrite $oc/#\n"
    )
    return platform_broker(workdir, {username: password, "iotda": "iotda-secret"}, acl)


class IotdaResponder(Subscriber):
    def __post_init__(self) -> None:
        super().__post_init__()
        self._client.username_pw_set("iotda", "iotda-secret")

    def command(self, request_id: str, device_id: str, name: str, paras: Any) -> None:
        doc = {"object_device_id": device_id, "command_name": name, "paras": paras}
        topic = f"$oc/devices/{GATEWAY}/sys/commands/request_id={request_id}"
        self._client.publish(topic, json.dumps(doc), qos=1)

    def of(self, suffix: str) -> list[Received]:
        return [m for m in list(self.messages) if suffix in m.topic]
