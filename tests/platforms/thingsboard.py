"""ThingsBoard's side of the gateway API, played on a local mosquitto for end-to-end tests.

The broker is shaped like ThingsBoard's MQTT transport: the gateway may only publish to the
``v1/gateway/*`` topics and read its RPC topic; the "platform" user sees everything. The
responder records what the gateway announces and sends, and plays server-side RPC calls.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.brokers import Mosquitto, Subscriber, platform_broker

GATEWAY_USER = "tb-gateway"
GATEWAY_PASSWORD = "tb-basic-secret"

ACL = f"""\
user {GATEWAY_USER}
topic write v1/gateway/connect
topic write v1/gateway/disconnect
topic write v1/gateway/telemetry
topic write v1/gateway/attributes
topic readwrite v1/gateway/rpc

user platform
topic readwrite #
"""


def thingsboard_broker(workdir: Path) -> Mosquitto:
    return platform_broker(
        workdir, {GATEWAY_USER: GATEWAY_PASSWORD, "platform": "platform-secret"}, ACL
    )


class ThingsBoardResponder(Subscriber):
    """Subscribes to everything the gateway sends; ``rpc`` sends a server-side RPC."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self._client.username_pw_set("platform", "platform-secret")

    def rpc(self, device: str, request_id: int, method: str, params: Any) -> None:
        doc = {"device": device, "data": {"id": request_id, "method": method, "params": params}}
        self._client.publish("v1/gateway/rpc", json.dumps(doc), qos=1)

    def of(self, topic: str) -> list[Any]:
        return [m.json() for m in list(self.messages) if m.topic == topic]

    def attributes(self, device: str) -> dict[str, Any]:
        """A device's client attributes as ThingsBoard keeps them: each update merged key by key
        over the earlier ones, so a later update that reuses a key replaces its value."""
        merged: dict[str, Any] = {}
        for doc in self.of("v1/gateway/attributes"):
            merged.update(doc.get(device, {}))
        return merged

    def types(self) -> dict[str, str | None]:
        """Device name to the ``type`` its latest connect message asked for (None: no type, so
        ThingsBoard's default profile)."""
        return {d["device"]: d.get("type") for d in self.of("v1/gateway/connect")}

    def telemetry(self, device: str) -> list[dict[str, Any]]:
        """Every ``{"ts", "values"}`` entry the gateway sent for one device, in order."""
        return [e for doc in self.of("v1/gateway/telemetry") for e in doc.get(device, [])]


def make_responder(port: int) -> ThingsBoardResponder:
    return ThingsBoardResponder(port, ["v1/gateway/#"], client_id="thingsboard")
