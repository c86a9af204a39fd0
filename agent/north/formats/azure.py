"""Azure IoT Hub: device-to-cloud messages from one device identity, SAS tokens renewed from
the device's key, direct methods to writes.

The agent is one IoT Hub device (its own identity; the machines behind it are named in every
message). What IoT Hub expects over MQTT (Microsoft's "Communicate with an IoT hub using the MQTT
protocol"):

* client id = device id; user name ``{hub}/{device id}/?api-version=2021-04-12``; password a SAS
  token ``SharedAccessSignature sr={hub}/devices/{device id}&sig=...&se=...`` signed with the
  device's symmetric key, so the key itself never leaves the gateway. IoT Hub drops the
  connection when the token expires: the agent reconnects with a fresh one before that.
* telemetry to ``devices/{device id}/messages/events/{property bag}``; the property bag carries
  the dedupe key (agent, device, seq) as application properties and the content type, so routes
  and Stream Analytics can filter without parsing; 256 KB per message.
* no retained messages; the will (sent as a message with the gateway status) is supported.
* direct methods on ``$iothub/methods/POST/{method}/?$rid={id}``, answered on
  ``$iothub/methods/res/{status}/?$rid={id}``: ``write`` with ``{"device", "write": {tag:
  value}}``, ``call`` with ``{"device", "call": {"<method>": [arguments]}}``; the answer's body is
  the agent's reply (``{"id", "ok"[, "error"][, "status", "outputs"]}``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from pydantic import Field

from agent.core.buffer import StoredBatch
from agent.core.record import decode_body
from agent.north.formats.base import (
    Command,
    Issue,
    Message,
    Packed,
    Reaction,
    options_of,
    stream_of,
)
from agent.north.formats.jsonfmt import JsonFormat, _dumps
from agent.north.formats.split import split_doc
from drivers.base import PositiveDuration, Size, StrictModel

if TYPE_CHECKING:  # the config is built in app; a format reads it, never imports app at run time
    from agent.app.config.models import Config

log = logging.getLogger(__name__)

API_VERSION = "2021-04-12"
MAX_PAYLOAD = 256 * 1024
METHODS = "$iothub/methods/POST/"


def sas_token(resource_uri: str, key_b64: str, expiry: int, policy: str | None = None) -> str:
    """Microsoft's SAS token: HMAC-SHA256 (key base64-decoded) over the URL-encoded resource URI,
    a newline and the expiry in epoch seconds."""
    encoded = urllib.parse.quote_plus(resource_uri)
    to_sign = f"{encoded}\n{expiry}".encode()
    digest = hmac.new(base64.b64decode(key_b64), to_sign, hashlib.sha256).digest()
    fields = {"sr": resource_uri, "sig": base64.b64encode(digest), "se": str(expiry)}
    if policy is not None:
        fields["skn"] = policy
    return "SharedAccessSignature " + urllib.parse.urlencode(fields)


class AzureOptions(StrictModel):
    """Options of ``format: azure`` (Azure IoT Hub). The device id is ``mqtt.client_id``; its
    symmetric key comes from ``mqtt.password_env``/``password_file`` (or use X.509 with
    ``mqtt.tls.cert_file``/``key_file``)."""

    hub: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9.-]+$",
        description="IoT Hub host name (NAME.azure-devices.net); default mqtt.host",
    )
    token_ttl: PositiveDuration = Field(
        default=3600.0, description="life of each SAS token; renewed before it expires"
    )
    max_payload: Size = Field(
        default=256 * 1024, ge=1024, description="IoT Hub's message size limit (256KB)"
    )


class AzureIotFormat(JsonFormat):
    name = "azure"
    Options = AzureOptions
    password_is_token = True  # the device's symmetric key signs a SAS token
    retain_supported = False

    @classmethod
    def check(cls, data: Mapping[str, Any], section: Mapping[str, Any]) -> list[Issue]:
        return []  # no json options: the placement rules of JsonFormat do not apply

    @classmethod
    def from_config(cls, config: Config) -> AzureIotFormat:
        agent, mqtt = config.agent, config.mqtt
        az = options_of(mqtt, cls.section_key(), AzureOptions)
        host = (az.hub if az else None) or mqtt.host
        assert host is not None  # the config requires a host (or azure.hub) with format: azure
        return cls(
            agent.id,
            host,
            mqtt.client_id or agent.id,
            token_ttl=az.token_ttl if az else 3600.0,
            max_payload=az.max_payload if az else MAX_PAYLOAD,
        )

    def __init__(
        self,
        agent_id: str,
        hub: str,
        device_id: str,
        token_ttl: float = 3600.0,
        max_payload: int = MAX_PAYLOAD,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(agent_id, f"devices/{device_id}", user_properties=False)
        self.hub = hub
        self.device_id = device_id
        self.max_payload: int = max_payload
        self._ttl = token_ttl
        self._clock = clock
        self._expires: float | None = None
        self._events = f"devices/{device_id}/messages/events/"

    # -- sign-in ----------------------------------------------------------------------------------

    @property
    def username(self) -> str:
        return f"{self.hub}/{self.device_id}/?api-version={API_VERSION}"

    def credentials(
        self, username: str | None, password: str | None
    ) -> tuple[str | None, str | None]:
        """``password`` is the device's symmetric key (base64) from password_env/_file; without
        one the device authenticates by X.509 certificate (mqtt.tls)."""
        if password is None:
            self._expires = None
            return self.username, None
        expiry = int(self._clock() + self._ttl)
        self._expires = float(expiry)
        return self.username, sas_token(f"{self.hub}/devices/{self.device_id}", password, expiry)

    def session_deadline(self) -> float | None:
        """Reconnect with a new token at 90% of its life (IoT Hub would cut the link at expiry)."""
        if self._expires is None:
            return None
        return self._expires - self._ttl * 0.1

    # -- messages ---------------------------------------------------------------------------------

    def events_topic(self, properties: dict[str, str]) -> str:
        return self._events + urllib.parse.urlencode(properties, safe="$")

    def pack(self, rows: Sequence[StoredBatch]) -> list[Packed]:
        out: list[Packed] = []
        for row in rows:
            device, kind = stream_of(row)
            props = {
                "agent": self.agent_id,
                "device": device,
                "seq": str(row.seq),
                "type": kind,
                "$.ct": "application/json",
                "$.ce": "utf-8",
            }
            topic = self.events_topic(props)
            payload = self.encode(row)
            if len(payload) <= self.max_payload:
                out.append(Packed(Message(topic, payload), (row,)))
                continue
            doc = {"agent": self.agent_id, "device": device, "seq": row.seq}
            doc.update(decode_body(row.body))
            parts = split_doc(doc, self.max_payload)
            for i, part in enumerate(parts):
                rows_of = (row,) if i == len(parts) - 1 else ()
                out.append(Packed(Message(topic, _dumps(part).encode()), rows_of))
        return out

    def _status(self, doc: bytes, kind: str, device: str | None = None) -> Message:
        props = {"agent": self.agent_id, "type": kind}
        if device is not None:
            props["device"] = device
        props.update({"$.ct": "application/json", "$.ce": "utf-8"})
        return Message(self.events_topic(props), doc, 1, False)

    def will(self) -> Message:
        return self._status(self.gateway_status(False), "status")

    def online(self) -> list[Message]:
        return [self._status(self.gateway_status(True), "status")]

    def retained_status(
        self, device: str, state: str, reason: str | None, ts_ms: int
    ) -> Message | None:
        return self._status(self.device_status(state, ts_ms, reason), "status", device)

    def device_topic(self, device: str, kind: str) -> str:
        return f"{device}/{kind}"

    def side_message(self, topic: str, payload: bytes) -> Message | None:
        device, _, kind = topic.partition("/")
        return self._status(payload, kind, device)

    # -- direct methods ---------------------------------------------------------------------------

    def subscriptions(self) -> Sequence[str]:
        return (f"{METHODS}#",)

    def incoming(self, topic: str, payload: bytes) -> Reaction | None:
        if not topic.startswith(METHODS):
            return None
        method, _, query = topic[len(METHODS) :].partition("/")
        rid = urllib.parse.parse_qs(query.lstrip("?")).get("$rid", [""])[0]
        if not rid:
            log.warning("direct method without $rid ignored", extra={"topic": topic})
            return None
        if method not in ("write", "call"):
            return Reaction(
                publish=[self._method_reply(rid, 404, {"error": f"no method {method!r}"})]
            )
        try:
            doc = json.loads(payload)
            device = doc["device"]
            body = doc[method]
            if not isinstance(device, str) or not isinstance(body, dict) or not body:
                raise ValueError(
                    f'expected {{"device": name, "{method}": '
                    + ("{tag: value}}" if method == "write" else "{method: [arguments]}}")
                )
        except (ValueError, KeyError, TypeError) as exc:
            return Reaction(publish=[self._method_reply(rid, 400, {"error": str(exc)})])
        if method == "call":
            return Reaction(command=Command(device, call=body, cmd_id=rid, context=rid))
        return Reaction(command=Command(device, writes=body, cmd_id=rid, context=rid))

    def reply(self, command: Command, reply: dict[str, object]) -> Message | None:
        return self._method_reply(str(command.context), 200 if reply.get("ok") else 400, reply)

    @staticmethod
    def _method_reply(rid: str, status: int, body: object) -> Message:
        topic = f"$iothub/methods/res/{status}/?$rid={urllib.parse.quote(rid, safe='')}"
        return Message(topic, _dumps(body).encode(), 1, False)
