"""Alibaba Cloud IoT Platform's side of a gateway session, on a local mosquitto.

The broker allows the gateway only its own ``/sys`` and ``/ext/session`` topics and its
sub-devices' property-set topics. The responder answers registration (issuing secrets), topology
and login requests (checking each login's signature with the secret it issued), records the
packed property posts and plays property-set services.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from agent.north.formats.alibaba import sign
from tests.brokers import Mosquitto, Received, Subscriber, platform_broker

GW_PK, GW_DN, SUB_PK = "a1X2bEnP82z", "example1", "a1SubPK0001"


def alibaba_broker(workdir: Path, username: str, password: str) -> Mosquitto:
    acl = (
        f"user {username}\n"
        f"topic readwrite /sys/{GW_PK}/{GW_DN}/#\n"
        f"topic readwrite /ext/session/{GW_PK}/{GW_DN}/#\n"
        f"topic read /sys/{SUB_PK}/+/thing/service/property/set\n"
        f"topic write /sys/{SUB_PK}/+/thing/service/property/set_reply\n"
        "\nuser platform\ntopic readwrite #\n"
    )
    return platform_broker(workdir, {username: password, "platform": "platform-secret"}, acl)


class AlibabaResponder(Subscriber):
    def __post_init__(self) -> None:
        super().__post_init__()
        self._client.username_pw_set("platform", "platform-secret")
        self.secrets: dict[str, str] = {}
        self.logins: list[str] = []
        self.bad_signs: list[str] = []

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        super()._on_message(client, userdata, msg)
        try:
            doc = json.loads(msg.payload)
        except ValueError:
            return
        topic: str = msg.topic
        if topic.endswith("/thing/sub/register"):
            data = []
            for item in doc["params"]:
                secret = f"secret-of-{item['deviceName']}"
                self.secrets[item["deviceName"]] = secret
                data.append({**item, "iotId": "x", "deviceSecret": secret})
            self._reply(topic + "_reply", doc["id"], data)
        elif topic.endswith("/thing/topo/add"):
            self._reply(topic + "_reply", doc["id"], [])
        elif topic.endswith("/combine/login"):
            params = doc["params"]
            signed = {k: params[k] for k in ("clientId", "deviceName", "productKey", "timestamp")}
            if params["sign"] == sign(self.secrets[params["deviceName"]], signed):
                self.logins.append(params["deviceName"])
            else:
                self.bad_signs.append(params["deviceName"])
            self._reply(topic + "_reply", doc["id"], {})

    def _reply(self, topic: str, request_id: str, data: Any) -> None:
        body = {"id": request_id, "code": 200, "data": data, "message": "success"}
        self._client.publish(topic, json.dumps(body), qos=1)

    def property_set(self, device_name: str, request_id: str, params: dict[str, Any]) -> None:
        doc = {
            "method": "thing.service.property.set",
            "id": request_id,
            "params": params,
            "version": "1.0.0",
        }
        topic = f"/sys/{SUB_PK}/{device_name}/thing/service/property/set"
        self._client.publish(topic, json.dumps(doc), qos=1)

    def of(self, suffix: str) -> list[Received]:
        return [m for m in list(self.messages) if m.topic.endswith(suffix)]
