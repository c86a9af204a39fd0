"""Huawei Cloud IoTDA: the agent as a gateway reporting for its sub-devices.

From IoTDA's MQTT interface reference:

* Sign-in: client id ``{device_id}_0_0_{YYYYMMDDHH}`` (device id, id type 0, signature type 0,
  UTC hour), user name the device id, password the hex HMAC-SHA256 of the device secret keyed
  with that timestamp.
* Data: ``$oc/devices/{gateway}/sys/gateway/sub_devices/properties/report``,
  ``{"devices": [{"device_id", "services": [{"service_id", "properties", "event_time"}]}]}``,
  several batches of several sub-devices per message.
* Sub-device status: event ``sub_device_update_status`` of service ``$sub_device_manager`` on
  ``$oc/devices/{gateway}/sys/events/up`` (ONLINE/OFFLINE), sent at each connect and on change;
  a device is OFFLINE until it answered.
* Commands: ``$oc/devices/{gateway}/sys/commands/request_id={id}`` with ``object_device_id``,
  ``command_name`` (``write``) and ``paras`` (tag: value), answered on
  ``.../sys/commands/response/request_id={id}`` with ``result_code`` 0 or 1. Any other
  ``command_name`` calls the device's method of that name with ``paras`` as its inputs by name;
  the response's ``paras`` add ``status`` and ``outputs``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from pydantic import Field

from agent.core.buffer import StoredBatch
from agent.core.record import decode_body
from agent.north.formats.base import (
    Command,
    Format,
    Message,
    Packed,
    Reaction,
    options_of,
    stream_of,
)
from agent.north.formats.split import chunks
from drivers.base import Name, Size, StrictModel

if TYPE_CHECKING:  # the config is built in app; a format reads it, never imports app at run time
    from agent.app.config.models import Config

log = logging.getLogger(__name__)

MAX_PAYLOAD = 1024 * 1024
MAX_RATE = 50.0
_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def hour_stamp(epoch: float) -> str:
    return time.strftime("%Y%m%d%H", time.gmtime(epoch))


def event_time(ts_ms: int) -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(ts_ms / 1000))


def mqtt_credentials(device_id: str, secret: str, epoch: float) -> tuple[str, str, str]:
    """(client id, user name, password) as IoTDA's CONNECT authentication wants them."""
    stamp = hour_stamp(epoch)
    password = hmac.new(stamp.encode(), secret.encode(), hashlib.sha256).hexdigest()
    return f"{device_id}_0_0_{stamp}", device_id, password


class HuaweiOptions(StrictModel):
    """Options of ``format: huawei`` (Huawei Cloud IoTDA). The gateway's device secret comes
    from ``mqtt.password_env``/``password_file``."""

    device_id: str = Field(
        pattern=r"^[A-Za-z0-9_-]+$", max_length=128, description="IoTDA device id of the gateway"
    )
    sub_product_id: str = Field(
        pattern=r"^[A-Za-z0-9_-]+$",
        max_length=64,
        description="product id of the sub-devices: their device id is <product id>_<name>",
    )
    devices: dict[Name, str] = Field(
        default_factory=dict, description="per device: its IoTDA device id, when it differs"
    )
    service_id: Name = Field(default="edge", description="service of the product model")
    max_payload: Size = Field(default=1024 * 1024, ge=1024, description="largest message")


class HuaweiFormat(Format):
    name = "huawei"
    Options = HuaweiOptions
    password_is_token = True  # the device secret signs the password
    retain_supported = False

    @classmethod
    def from_config(cls, config: Config) -> HuaweiFormat:
        hw = options_of(config.mqtt, cls.section_key(), HuaweiOptions)
        assert hw is not None  # the config requires the section with format: huawei
        ids = {
            d.name: hw.devices.get(d.name) or f"{hw.sub_product_id}_{d.name}"
            for d in config.active_devices()
        }
        return cls(
            hw.device_id,
            ids,
            service_id=hw.service_id,
            max_payload=hw.max_payload,
            sub_product_id=hw.sub_product_id,
        )

    def __init__(
        self,
        device_id: str,
        sub_devices: Mapping[str, str],
        service_id: str = "edge",
        max_payload: int = MAX_PAYLOAD,
        clock: Callable[[], float] = time.time,
        sub_product_id: str | None = None,
    ) -> None:
        """``sub_devices``: our device name → its IoTDA device id. ``sub_product_id``: the
        product of a device outside that map (one a reload removed while its batches were still
        buffered): they still go out under ``<sub_product_id>_<name>``, the id it had."""
        self.device_id = device_id
        self.subs = dict(sub_devices)
        self._sub_product_id = sub_product_id
        self._ours = {v: k for k, v in self.subs.items()}
        self.service_id = service_id
        self.max_payload: int = max_payload
        self.max_rate = MAX_RATE
        self._clock = clock
        self._epoch = 0.0
        # OFFLINE until a device answers (status_changed): a device that does not answer, or not
        # yet, must not show ONLINE on a guess until its first poll times out.
        self._status: dict[str, str] = {d: "OFFLINE" for d in self.subs}
        self._base = f"$oc/devices/{device_id}/sys/"

    def client_id(self, configured: str) -> str:
        self._epoch = self._clock()
        return mqtt_credentials(self.device_id, "", self._epoch)[0]

    def credentials(
        self, username: str | None, password: str | None
    ) -> tuple[str | None, str | None]:
        """``password`` is the gateway's device secret (password_env/password_file)."""
        _cid, user, signed = mqtt_credentials(self.device_id, password or "", self._epoch)
        return user, signed

    def subscriptions(self) -> Sequence[str]:
        return (f"{self._base}commands/#",)

    def _statuses(self, devices: Sequence[str]) -> Message:
        statuses = [{"device_id": self._device_id(d), "status": self._status[d]} for d in devices]
        doc = {
            "object_device_id": self.device_id,
            "services": [
                {
                    "service_id": "$sub_device_manager",
                    "event_type": "sub_device_update_status",
                    "event_time": event_time(int(self._clock() * 1000)),
                    "paras": {"device_statuses": statuses},
                }
            ],
        }
        return Message(f"{self._base}events/up", _dumps(doc).encode())

    def online(self) -> list[Message]:
        return [self._statuses(list(self._status))] if self._status else []

    def status_changed(
        self, device: str, state: str, reason: str | None, ts_ms: int
    ) -> list[Message]:
        if device not in self.subs and (state != "down" or self._sub_product_id is None):
            return []
        # A device outside the map is one a reload removed: OFFLINE under the id it had, now
        # and at each connect, or IoTDA would keep it online for good.
        self._status[device] = "ONLINE" if state == "up" else "OFFLINE"
        return [self._statuses([device])]

    def device_topic(self, device: str, kind: str) -> str:
        return f"{device}/{kind}"

    def side_message(self, topic: str, payload: bytes) -> Message | None:
        return None  # machine state reaches IoTDA as a property of the device's data

    def pack(self, rows: Sequence[StoredBatch]) -> list[Packed]:
        out: list[Packed] = []
        devices: list[dict[str, Any]] = []
        taken: list[StoredBatch] = []
        size = 20
        for row in rows:
            device, kind = stream_of(row)
            device_id = self._device_id(device)  # raises: the publisher quarantines the row
            doc = decode_body(row.body)
            if kind == "data":
                values: dict[str, Any] = dict(doc.get("values", {}))
            else:  # an event: its document (less ts) as the properties of service <kind>
                values = {k: v for k, v in doc.items() if k != "ts"}
            service = {
                "service_id": self.service_id if kind == "data" else kind,
                "properties": values,
                "event_time": event_time(row.ts_ms),
            }
            entry = {"device_id": device_id, "services": [service]}
            piece = len(_dumps(entry)) + 1
            if piece + 20 > self.max_payload:  # one batch larger than a message: split it
                if taken:
                    out.append(self._packed(devices, taken))
                    devices, taken, size = [], [], 20
                parts = chunks(values, self.max_payload - (piece - len(_dumps(values))) - 40)
                for i, part in enumerate(parts):
                    one = {**entry, "services": [{**service, "properties": part}]}
                    out.append(self._packed([one], [row] if i == len(parts) - 1 else []))
                continue
            if taken and size + piece > self.max_payload:
                out.append(self._packed(devices, taken))
                devices, taken, size = [], [], 20
            devices.append(entry)
            taken.append(row)
            size += piece
        if taken:
            out.append(self._packed(devices, taken))
        return out

    def _device_id(self, device: str) -> str:
        known = self.subs.get(device)
        if known is not None:
            return known
        if self._sub_product_id is None:
            raise LookupError(f"no IoTDA sub-device for device {device!r}")
        return f"{self._sub_product_id}_{device}"

    def _packed(self, devices: list[dict[str, Any]], rows: list[StoredBatch]) -> Packed:
        payload = _dumps({"devices": devices}).encode()
        topic = f"{self._base}gateway/sub_devices/properties/report"
        return Packed(Message(topic, payload), tuple(rows))

    def incoming(self, topic: str, payload: bytes) -> Reaction | None:
        prefix = f"{self._base}commands/request_id="
        if not topic.startswith(prefix):
            return None
        request_id = topic[len(prefix) :]
        try:
            doc = json.loads(payload)
            target = doc.get("object_device_id") or self.device_id
            name = doc.get("command_name")
            paras = doc.get("paras")
        except (ValueError, AttributeError) as exc:
            return Reaction(publish=[self._response(request_id, False, f"malformed: {exc}")])
        device = self._ours.get(target)
        if device is None:
            return Reaction(publish=[self._response(request_id, False, f"unknown {target}")])
        if isinstance(name, str) and name and name != "write":
            # Any other command is a call of the device's method of that name, its paras the
            # method's inputs by name (IoTDA commands carry named paras).
            if paras is not None and not isinstance(paras, dict):
                why = "paras must be an object of the method's inputs"
                return Reaction(publish=[self._response(request_id, False, why)])
            return Reaction(
                command=Command(
                    device, call={name: paras or {}}, cmd_id=request_id, context=request_id
                )
            )
        if name != "write" or not isinstance(paras, dict) or not paras:
            why = f"unknown command {name!r} (use write with paras tag: value, or a method)"
            return Reaction(publish=[self._response(request_id, False, why)])
        return Reaction(
            command=Command(device, writes=paras, cmd_id=request_id, context=request_id)
        )

    def reply(self, command: Command, reply: dict[str, object]) -> Message | None:
        ok = bool(reply.get("ok"))
        result: dict[str, object] = {k: reply[k] for k in ("status", "outputs") if k in reply}
        error = None if ok else str(reply.get("error"))
        return self._response(str(command.context), ok, error, result)

    def _response(
        self,
        request_id: str,
        ok: bool,
        error: str | None,
        result: dict[str, object] | None = None,
    ) -> Message:
        paras: dict[str, Any] = {"result": "success" if ok else "failed", **(result or {})}
        if error is not None:
            paras["error"] = error
        doc = {"result_code": 0 if ok else 1, "response_name": "COMMAND_RESPONSE", "paras": paras}
        topic = f"{self._base}commands/response/request_id={request_id}"
        return Message(topic, _dumps(doc).encode())
