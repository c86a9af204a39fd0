"""Alibaba Cloud IoT Platform (Alink JSON over MQTT), the agent as a gateway with sub-devices.

What the platform documents and this implements:

* Sign-in: client id ``{clientId}|securemode=2,signmethod=hmacsha256,timestamp={ms}|``, user
  name ``{deviceName}&{productKey}``, password the hex HMAC-SHA256, keyed with the device
  secret, of ``clientId{clientId}deviceName{deviceName}productKey{productKey}timestamp{ms}``
  (the parameters sorted by name, concatenated without separators).
* Sub-devices: at each connect the gateway registers them (``thing/sub/register``, dynamic
  registration: the platform returns each one's secret, so no sub-device secret is configured),
  adds them to its topology (``thing/topo/add``) and logs in those that answered
  (``combine/login``), each signed like the gateway's own sign-in. A device that goes down is
  logged out, one that answers (again) logged in: the platform has no retained messages or
  wills, its online state is the login, so a device not known to answer is not logged in.
* Data: ``thing.event.property.pack.post`` from the gateway, several batches of several
  sub-devices per message (``{"value", "time"}`` per property), within the message size limit.
* Writes: ``thing.service.property.set`` on a sub-device's topic goes through the command path;
  the ``set_reply`` carries code 200, or 460 (request parameter error) with the reason.
* Method calls: a service ``thing.service.<method>`` (topic ``.../thing/service/<method>``, its
  ``params`` the method's inputs by name) calls the device's method of that name; the
  ``<method>_reply`` carries code 200 with ``data: {"status", "outputs"}``, or 460 and the reason.
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

MAX_PAYLOAD = 256 * 1024
MAX_RATE = 30.0  # uplink messages per second and device the platform accepts
_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def sign(secret: str, params: Mapping[str, str]) -> str:
    """Alibaba's signature: HMAC-SHA256 hex over the parameters sorted by name, each written as
    name then value, no separators."""
    content = "".join(f"{k}{params[k]}" for k in sorted(params))
    return hmac.new(secret.encode(), content.encode(), hashlib.sha256).hexdigest()


def mqtt_credentials(
    product_key: str,
    device_name: str,
    secret: str,
    timestamp: int,
    client_id: str | None = None,
    secure_mode: int = 2,
) -> tuple[str, str, str]:
    """(MQTT client id, user name, password) of a device signing in with its secret;
    ``secure_mode`` 2 is TLS, 3 plain TCP."""
    cid = client_id or f"{product_key}.{device_name}"
    params = {
        "clientId": cid,
        "deviceName": device_name,
        "productKey": product_key,
        "timestamp": str(timestamp),
    }
    return (
        f"{cid}|securemode={secure_mode},signmethod=hmacsha256,timestamp={timestamp}|",
        f"{device_name}&{product_key}",
        sign(secret, params),
    )


class AlibabaSubDevice(StrictModel):
    """How one of our devices is known on Alibaba Cloud IoT Platform."""

    product_key: Name | None = Field(default=None, description="default alibaba.sub_product_key")
    device_name: Name | None = Field(default=None, description="default: the device's name")


class AlibabaOptions(StrictModel):
    """Options of ``format: alibaba`` (Alibaba Cloud IoT Platform, Alink JSON). The gateway's
    DeviceSecret comes from ``mqtt.password_env``/``password_file``; sub-devices are registered
    dynamically, so their secrets come from the platform."""

    product_key: Name = Field(description="ProductKey of the gateway device")
    device_name: Name | None = Field(
        default=None, description="DeviceName of the gateway; default agent.id"
    )
    sub_product_key: Name = Field(description="ProductKey of the sub-devices (our devices)")
    devices: dict[Name, AlibabaSubDevice] = Field(
        default_factory=dict, description="per device: another product key or device name"
    )
    max_payload: Size = Field(
        default=MAX_PAYLOAD, ge=1024, description="largest message (the platform's 256KB)"
    )


class AlibabaFormat(Format):
    name = "alibaba"
    Options = AlibabaOptions
    password_is_token = True  # the DeviceSecret signs the connection
    retain_supported = False

    @classmethod
    def from_config(cls, config: Config) -> AlibabaFormat:
        agent, mqtt = config.agent, config.mqtt
        ali = options_of(mqtt, cls.section_key(), AlibabaOptions)
        assert ali is not None  # the config requires the section with format: alibaba
        subs = {}
        for d in config.active_devices():
            own = ali.devices.get(d.name)
            pk = (own.product_key if own else None) or ali.sub_product_key
            subs[d.name] = (pk, (own.device_name if own else None) or d.name)
        return cls(
            ali.product_key,
            ali.device_name or agent.id,
            subs,
            max_payload=ali.max_payload,
            tls=mqtt.tls is not None,
            sub_product_key=ali.sub_product_key,
        )

    def __init__(
        self,
        product_key: str,
        device_name: str,
        sub_devices: Mapping[str, tuple[str, str]],
        max_payload: int = MAX_PAYLOAD,
        clock: Callable[[], float] = time.time,
        tls: bool = True,
        sub_product_key: str | None = None,
    ) -> None:
        """``sub_devices``: our device name → (product key, device name) on the platform, for
        the devices registered at each connect. ``sub_product_key``: the product of a device
        outside that map (one a reload removed while its batches were still buffered): its
        batches still go out under ``(sub_product_key, name)``, the identity it had."""
        self._mode = 2 if tls else 3
        self.product_key = product_key
        self.device_name = device_name
        self.subs = dict(sub_devices)
        self._sub_product_key = sub_product_key
        self._ours = {v: k for k, v in self.subs.items()}
        self.max_payload: int = max_payload
        self.max_rate = MAX_RATE
        self._clock = clock
        self._ts = 0
        self._ids = 0
        self._secrets: dict[str, str] = {}
        self._logged_in: set[str] = set()
        # Devices that answered (last status up). Only they are logged in: a device whose
        # first poll has not answered yet, or never will, must not show online on a guess.
        self._up: set[str] = set()
        self._ready = False
        self._sys = f"/sys/{product_key}/{device_name}/"
        self._session = f"/ext/session/{product_key}/{device_name}/"

    # -- sign-in ----------------------------------------------------------------------------------

    def client_id(self, configured: str) -> str:
        self._ts = int(self._clock() * 1000)
        return mqtt_credentials(
            self.product_key, self.device_name, "", self._ts, secure_mode=self._mode
        )[0]

    def credentials(
        self, username: str | None, password: str | None
    ) -> tuple[str | None, str | None]:
        """``password`` is the gateway's device secret (from password_env/password_file)."""
        _cid, user, signed = mqtt_credentials(
            self.product_key, self.device_name, password or "", self._ts
        )
        return user, signed

    # -- session ----------------------------------------------------------------------------------

    def _id(self) -> str:
        self._ids += 1
        return str(self._ids)

    def _request(self, topic: str, method: str, params: Any) -> Message:
        doc = {"id": self._id(), "version": "1.0", "params": params, "method": method}
        return Message(topic, _dumps(doc).encode())

    def subscriptions(self) -> Sequence[str]:
        subs = [f"{self._sys}thing/sub/register_reply", f"{self._sys}thing/topo/add_reply"]
        subs.append(f"{self._session}combine/login_reply")
        subs += [f"/sys/{pk}/{dn}/thing/service/property/set" for pk, dn in self.subs.values()]
        subs += [f"/sys/{pk}/{dn}/thing/service/+" for pk, dn in self.subs.values()]
        return subs

    def online(self) -> list[Message]:
        self._ready = not self.subs
        self._logged_in.clear()
        params = [{"productKey": pk, "deviceName": dn} for pk, dn in self.subs.values()]
        return [self._request(f"{self._sys}thing/sub/register", "thing.sub.register", params)]

    def ready(self) -> bool:
        return self._ready

    def _signed(self, device: str) -> dict[str, str]:
        pk, dn = self.subs[device]
        ts = str(int(self._clock() * 1000))
        cid = f"{pk}.{dn}"
        params = {"clientId": cid, "deviceName": dn, "productKey": pk, "timestamp": ts}
        return {**params, "signMethod": "hmacSha256", "sign": sign(self._secrets[device], params)}

    def _login(self, device: str) -> Message:
        params = {**self._signed(device), "cleanSession": "true"}
        return Message(
            f"{self._session}combine/login",
            _dumps({"id": self._id(), "params": params}).encode(),
        )

    def _logout(self, device: str) -> Message:
        pk, dn = self.subs[device]
        params = {"productKey": pk, "deviceName": dn}
        return Message(
            f"{self._session}combine/logout",
            _dumps({"id": self._id(), "params": params}).encode(),
        )

    def status_changed(
        self, device: str, state: str, reason: str | None, ts_ms: int
    ) -> list[Message]:
        if device not in self.subs:
            return []
        if state == "down":
            self._up.discard(device)
            if device in self._logged_in:
                self._logged_in.discard(device)
                return [self._logout(device)]
            return []
        self._up.add(device)
        if device in self._secrets and device not in self._logged_in:
            # Recorded, or its next down would send no logout and leave it online.
            self._logged_in.add(device)
            return [self._login(device)]
        return []

    def device_topic(self, device: str, kind: str) -> str:
        return f"{device}/{kind}"

    def side_message(self, topic: str, payload: bytes) -> Message | None:
        return None  # the platform has no place for them; machine state is a property instead

    def incoming(self, topic: str, payload: bytes) -> Reaction | None:
        try:
            doc = json.loads(payload)
            if not isinstance(doc, dict):
                raise ValueError("not an object")
        except ValueError as exc:
            log.warning(
                "malformed Alink message ignored", extra={"topic": topic, "error": str(exc)}
            )
            return None
        if topic.endswith("/thing/sub/register_reply"):
            return self._registered(doc)
        if topic.endswith("/thing/topo/add_reply") or topic.endswith("/combine/login_reply"):
            return self._acknowledged(topic, doc)
        if topic.endswith("/thing/service/property/set"):
            return self._property_set(topic, doc)
        levels = topic.split("/")
        if len(levels) == 7 and levels[4:6] == ["thing", "service"]:
            return self._service(levels, doc)
        return None

    def _registered(self, doc: dict[str, Any]) -> Reaction | None:
        if doc.get("code") != 200:
            log.error("sub-device registration refused", extra={"reply": str(doc)[:300]})
            return None
        for item in doc.get("data") or []:
            key = (item.get("productKey"), item.get("deviceName"))
            device = self._ours.get(key)
            if device is not None and isinstance(item.get("deviceSecret"), str):
                self._secrets[device] = item["deviceSecret"]
        known = [d for d in self.subs if d in self._secrets]
        topo = self._request(
            f"{self._sys}thing/topo/add", "thing.topo.add", [self._signed(d) for d in known]
        )
        logins = [self._login(d) for d in known if d in self._up]
        self._logged_in.update(d for d in known if d in self._up)
        self._ready = True  # data of a device the platform refused is answered with an error
        return Reaction(publish=[topo, *logins])

    def _acknowledged(self, topic: str, doc: dict[str, Any]) -> Reaction | None:
        if doc.get("code") != 200:
            log.warning(
                "Alink request refused",
                extra={"topic": topic, "code": doc.get("code"), "message": doc.get("message")},
            )
        return None

    def _property_set(self, topic: str, doc: dict[str, Any]) -> Reaction | None:
        levels = topic.split("/")
        device = self._ours.get((levels[2], levels[3]))
        request_id = doc.get("id")
        params = doc.get("params")
        if device is None:
            return None
        if not isinstance(params, dict) or not params:
            return Reaction(publish=[self._set_reply(device, request_id, 460, "params missing")])
        return Reaction(
            command=Command(device, writes=params, cmd_id=str(request_id), context=request_id)
        )

    def _service(self, levels: list[str], doc: dict[str, Any]) -> Reaction | None:
        """A service call (``thing.service.<method>``): the device's method of that name."""
        method = levels[6]
        device = self._ours.get((levels[2], levels[3]))
        if device is None or method.endswith("_reply"):
            return None  # our own answer, which a broker without no-local hands back
        request_id = doc.get("id")
        params = doc.get("params", {})
        context = (request_id, method)
        if not isinstance(params, dict):
            reply = self._service_reply(device, context, 460, "params must be an object", {})
            return Reaction(publish=[reply])
        return Reaction(
            command=Command(device, call={method: params}, cmd_id=str(request_id), context=context)
        )

    def reply(self, command: Command, reply: dict[str, object]) -> Message | None:
        ok = bool(reply.get("ok"))
        message = "success" if ok else str(reply.get("error"))
        if command.call is not None:
            data: dict[str, Any] = {k: reply[k] for k in ("status", "outputs") if k in reply}
            return self._service_reply(
                command.device, command.context, 200 if ok else 460, message, data
            )
        return self._set_reply(command.device, command.context, 200 if ok else 460, message)

    def _service_reply(
        self, device: str, context: Any, code: int, message: str, data: dict[str, Any]
    ) -> Message:
        request_id, method = context
        pk, dn = self.subs[device]
        doc = {"id": request_id, "code": code, "data": data, "message": message, "version": "1.0"}
        return Message(f"/sys/{pk}/{dn}/thing/service/{method}_reply", _dumps(doc).encode())

    def _set_reply(self, device: str, request_id: Any, code: int, message: str) -> Message:
        pk, dn = self.subs[device]
        doc = {"id": request_id, "code": code, "data": {}, "message": message, "version": "1.0"}
        return Message(f"/sys/{pk}/{dn}/thing/service/property/set_reply", _dumps(doc).encode())

    # -- data -------------------------------------------------------------------------------------

    def pack(self, rows: Sequence[StoredBatch]) -> list[Packed]:
        """One ``pack.post`` carries one batch of each of several sub-devices (a property has
        one value per post); a device's next batch, or the size limit, starts the next post."""
        out: list[Packed] = []
        subs: dict[str, dict[str, Any]] = {}
        taken: list[StoredBatch] = []
        size = 200
        entry: dict[str, Any] | None
        for row in rows:
            device, kind = stream_of(row)
            identity = self._identity(device)  # raises: the publisher quarantines the row
            doc = decode_body(row.body)
            if kind == "data":
                values: dict[str, Any] = dict(doc.get("values", {}))
                stamped = {k: {"value": v, "time": row.ts_ms} for k, v in values.items()}
            else:  # an event: its document (less ts) is the event's output parameters
                params = {k: v for k, v in doc.items() if k != "ts"}
                stamped = {kind: {"value": params, "time": row.ts_ms}}
            piece = len(_dumps(stamped)) + 120
            field = "properties" if kind == "data" else "events"
            if kind == "data" and piece + 200 > self.max_payload:  # larger than a message
                if taken:
                    out.append(self._packed(subs, taken))
                    subs, taken, size = {}, [], 200
                pk, dn = identity
                parts = chunks(stamped, self.max_payload - 400)
                for i, part in enumerate(parts):
                    one = {"identity": {"productKey": pk, "deviceName": dn}, "properties": part}
                    one["events"] = {}
                    out.append(self._packed({device: one}, [row] if i == len(parts) - 1 else []))
                continue
            held = subs.get(device)
            if taken and ((held and held[field]) or size + piece > self.max_payload):
                out.append(self._packed(subs, taken))
                subs, taken, size = {}, [], 200
            entry = subs.get(device)
            if entry is None:
                pk, dn = identity
                entry = {"identity": {"productKey": pk, "deviceName": dn}}
                entry.update(properties={}, events={})
                subs[device] = entry
            entry[field] = stamped
            taken.append(row)
            size += piece
        if taken:
            out.append(self._packed(subs, taken))
        return out

    def _identity(self, device: str) -> tuple[str, str]:
        """(product key, device name) of one of our devices on the platform."""
        known = self.subs.get(device)
        if known is not None:
            return known
        if self._sub_product_key is None:
            raise LookupError(f"no Alibaba sub-device for device {device!r}")
        return self._sub_product_key, device

    def _packed(self, subs: Mapping[str, Any], rows: list[StoredBatch]) -> Packed:
        params = {"properties": {}, "events": {}, "subDevices": list(subs.values())}
        msg = self._request(
            f"{self._sys}thing/event/property/pack/post", "thing.event.property.pack.post", params
        )
        return Packed(msg, tuple(rows))
