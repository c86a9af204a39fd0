"""ThingsBoard's gateway MQTT API: one connection for all devices behind the agent.

The agent is a ThingsBoard *gateway device*; its devices appear in ThingsBoard by name. Topics
and payloads follow ThingsBoard's "MQTT Gateway API" reference:

* ``v1/gateway/connect`` ``{"device": name[, "type": profile]}`` for every device at each
  connect, so ThingsBoard creates them (in the device profile ``type``, per device) and routes
  their RPC calls to us;
* ``v1/gateway/telemetry`` ``{name: [{"ts", "values"}, ...], ...}``: several batches, of several
  devices, packed into one message up to ``max_payload`` (fewer messages: rate limits). An alarm
  event (rows of kind ``event``) is one key ``event.<alarm>`` whose value is the event
  document, a JSON object a rule chain reads as is;
* ``v1/gateway/attributes`` ``{name: {"state", "reason"}}`` when a device goes up or down, and
  ``{name: {"machine_state", "machine_since", "machine_ts", "machine_runtime"}}`` when its machine
  state changes: disjoint client attributes, so neither overwrites the other. Both are sent again
  after each connect (ThingsBoard keeps no retained messages);
* ``v1/gateway/rpc``: ``{"device", "data": {"id", "method", "params"}}`` in, with method
  ``write`` (params: tag → value) or ``call`` (params: ``{"<method>": [arguments]}``, a method
  of the device) going through the command path; the reply is
  ``{"device", "id", "data": {"success": bool[, "error"][, "status", "outputs"]}}``.

Authentication, as the gateway device's credentials in ThingsBoard say: an access token (from
``password_env``/``password_file`` without ``username``: sent as the MQTT user name, no
password), MQTT Basic (``username`` and a password), or X.509 (the client certificate of
``mqtt.tls``, no password).
"""

from __future__ import annotations

import difflib
import json
import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import AfterValidator, Field, StringConstraints

from agent.core.buffer import StoredBatch
from agent.core.record import decode_body
from agent.core.streams import STATE_DOCUMENT
from agent.north.formats.base import (
    Command,
    Format,
    Issue,
    Message,
    Packed,
    Reaction,
    options_of,
    stream_of,
)
from agent.north.formats.meta import Meta, config_meta
from agent.north.formats.split import chunks
from drivers.base import Name, Size, StrictModel

if TYPE_CHECKING:  # the config is built in app; a format reads it, never imports app at run time
    from agent.app.config.models import Config

log = logging.getLogger(__name__)

CONNECT = "v1/gateway/connect"
TELEMETRY = "v1/gateway/telemetry"
ATTRIBUTES = "v1/gateway/attributes"
RPC = "v1/gateway/rpc"
#: ThingsBoard's MQTT transport refuses larger messages by default (NETTY_MAX_PAYLOAD_SIZE).
DEFAULT_MAX_PAYLOAD = 65536

#: Attribute name prefix of a side document of this kind (``Publisher.retain``): the machine
#: state's keys become ``machine_state``... beside the device status's ``state``/``reason``.
SIDE_PREFIX = {STATE_DOCUMENT: "machine"}

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def _thingsboard_type(value: str) -> str:
    if value != value.strip() or not value.isprintable():
        raise ValueError(
            "a ThingsBoard device profile name has no control characters and no leading or "
            "trailing spaces"
        )
    return value


#: A ThingsBoard device profile name: free text in ThingsBoard (``Power meter``), carried in a JSON
#: payload and never in a topic, so spaces are allowed, unlike in a ``Name``.
ThingsBoardType = Annotated[
    str, StringConstraints(min_length=1, max_length=255), AfterValidator(_thingsboard_type)
]


class ThingsBoardOptions(StrictModel):
    """Options of ``format: thingsboard`` (ThingsBoard's gateway MQTT API). The gateway's access
    token comes from ``mqtt.password_env`` or ``mqtt.password_file``; with X.509 authentication
    give ``mqtt.tls.cert_file``/``key_file`` instead.

    The type (device profile) ThingsBoard gives a device it creates is the first of
    ``device_types[<device>]``, ``profile_types[<the device's profile>]`` and ``device_type``;
    with none of them the connect message names no type (ThingsBoard's ``default`` profile).
    The names in both maps must be profiles and devices of this file.
    """

    device_type: ThingsBoardType | None = Field(
        default=None,
        description="device profile for devices ThingsBoard creates; its default profile if unset",
    )
    profile_types: dict[Name, ThingsBoardType] = Field(
        default_factory=dict,
        description="per profile of this file: the ThingsBoard device profile of its devices",
    )
    device_types: dict[Name, ThingsBoardType] = Field(
        default_factory=dict,
        description="per device: its ThingsBoard device profile (beats profile_types)",
    )
    max_payload: Size = Field(
        default=DEFAULT_MAX_PAYLOAD,
        ge=1024,
        description="largest telemetry message (ThingsBoard's transport limit, 64KB by default)",
    )

    def type_of(self, device: str, profile: str | None) -> str | None:
        """The ThingsBoard type of one device: its own, else its profile's, else the default."""
        own = self.device_types.get(device)
        if own is not None:
            return own
        if profile is not None and profile in self.profile_types:
            return self.profile_types[profile]
        return self.device_type


def name_issues(data: Mapping[str, Any], section: Mapping[str, Any]) -> list[Issue]:
    """Each name under ``thingsboard.profile_types``/``device_types`` that is not a
    profile/device of the file, at its own key: a typo there would otherwise leave its device in
    the default profile without a word."""
    tb = section.get("thingsboard")
    if not isinstance(tb, dict):
        return []
    raw_devices = data.get("devices")
    devices = [
        d["name"]
        for d in (raw_devices if isinstance(raw_devices, list) else [])
        if isinstance(d, dict) and isinstance(d.get("name"), str)
    ]
    raw_profiles = data.get("profiles")
    profiles = [str(p) for p in raw_profiles] if isinstance(raw_profiles, dict) else []
    issues: list[Issue] = []
    for key, what, known in (
        ("profile_types", "profile", profiles),
        ("device_types", "device", devices),
    ):
        entries = tb.get(key)
        if not isinstance(entries, dict):
            continue
        for name in entries:
            if not isinstance(name, str) or name in known:
                continue  # a key that is no name at all is the model's to report
            listed = ", ".join(sorted(known)) or f"no {what}s are defined"
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            issues.append(
                (("thingsboard", key, name), f"unknown {what} {name!r} ({what}s: {listed}){hint}")
            )
    return issues


class ThingsBoardFormat(Format):
    name = "thingsboard"
    Options = ThingsBoardOptions
    password_is_token = True  # an access token is sent as the user name
    retain_supported = False

    @classmethod
    def check(cls, data: Mapping[str, Any], section: Mapping[str, Any]) -> list[Issue]:
        return name_issues(data, section)

    @classmethod
    def from_config(cls, config: Config) -> ThingsBoardFormat:
        tb = options_of(config.mqtt, cls.section_key(), ThingsBoardOptions)
        devices = config.active_devices()
        types = {}
        for d in devices:
            # the device's own type, else its profile's, else thingsboard.device_type
            own = tb.type_of(d.name, d.profile) if tb else None
            if own is not None:
                types[d.name] = own
        return cls(
            [d.name for d in devices],
            device_type=tb.device_type if tb else None,
            max_payload=tb.max_payload if tb else DEFAULT_MAX_PAYLOAD,
            device_types=types,
            meta=config_meta(config),
        )

    def __init__(
        self,
        devices: Sequence[str],
        device_type: str | None = None,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
        device_types: Mapping[str, str] | None = None,
        meta: Meta | None = None,
    ) -> None:
        """``device_type`` is the type of every device ``device_types`` (device → type, already
        resolved from the profile maps by ``build_format``) does not name; ``meta`` (device:
        tag: unit, description) becomes client attributes after each connect."""
        self.devices = list(devices)
        self._meta = {d: dict(tags) for d, tags in (meta or {}).items()}
        self.device_type = device_type
        self.device_types = dict(device_types or {})
        self.max_payload: int = max_payload

    def credentials(
        self, username: str | None, password: str | None
    ) -> tuple[str | None, str | None]:
        """An access token (a secret without a user name) is sent as the user name."""
        if username is None and password is not None:
            return password, None
        return username, password

    def subscriptions(self) -> Sequence[str]:
        return (RPC,)

    def online(self) -> list[Message]:
        connects = [Message(CONNECT, _dumps(self._connect_doc(d)).encode()) for d in self.devices]
        return [*connects, *self.meta_attributes()]

    def meta_attributes(self) -> list[Message]:
        """Client attributes ``<tag>.unit`` and ``<tag>.description`` of each device that has
        any (named like the telemetry's ``<tag>.quality``), within ``max_payload`` per message.
        ThingsBoard merges attributes key by key, so they sit beside the status attributes."""
        out = []
        for device, tags in self._meta.items():
            attrs = {}
            for tag, meta in tags.items():
                if meta.unit is not None:
                    attrs[f"{tag}.unit"] = meta.unit
                if meta.description is not None:
                    attrs[f"{tag}.description"] = meta.description
            if not attrs:
                continue
            # room for {"<device>":...} around each chunk
            room = self.max_payload - len(_dumps(device).encode()) - 3
            for part in chunks(attrs, room):
                out.append(Message(ATTRIBUTES, _dumps({device: part}).encode()))
        return out

    def _connect_doc(self, device: str) -> dict[str, str]:
        """ThingsBoard uses ``type`` only when it creates the device (making a device profile of
        that name if there is none); a device it has keeps its profile."""
        doc = {"device": device}
        kind = self.device_types.get(device, self.device_type)
        if kind is not None:
            doc["type"] = kind
        return doc

    def retained_status(
        self, device: str, state: str, reason: str | None, ts_ms: int
    ) -> Message | None:
        """An attribute update, sent now and again after each connect. ``state`` and ``reason``
        are the names dashboards have used since the first release: kept."""
        attrs = {"state": state, "reason": reason or "ok"}
        return Message(ATTRIBUTES, _dumps({device: attrs}).encode())

    def device_topic(self, device: str, kind: str) -> str:
        """Not a topic here: a key that ``side_message`` turns into an attribute update."""
        return f"{device}/{kind}"

    def side_message(self, topic: str, payload: bytes) -> Message | None:
        """Client attributes ``<prefix>_<key>`` for each key of a side document (the machine
        state: ``machine_state``, ``machine_since``, ``machine_ts``, ``machine_runtime``).

        Flat keys, because ThingsBoard merges attribute updates key by key: the machine state must
        not share a key with the device status (``state``/``reason``, ``retained_status``), or
        whichever came last would replace the other.
        """
        device, _, kind = topic.partition("/")
        prefix = SIDE_PREFIX.get(kind, kind)
        try:
            value = json.loads(payload)
        except ValueError:
            value = payload.decode(errors="replace")
        if isinstance(value, dict):
            attrs = {f"{prefix}_{k}": v for k, v in value.items()}
        else:
            attrs = {prefix: value}
        return Message(ATTRIBUTES, _dumps({device: attrs}).encode())

    # -- data -------------------------------------------------------------------------------------

    @staticmethod
    def entry(row: StoredBatch) -> tuple[str, dict[str, Any]]:
        """(device, {"ts", "values"}) of one buffered row.

        A batch gives its tags, plus a ``<tag>.quality`` key for each tag that is not good. An
        alarm event (``{"event": "raise"|"clear", "alarm", "tag", "severity", "values": [...]}``
        as rows of kind ``event``) gives one key ``event.<alarm>`` whose value is the whole
        document: ThingsBoard stores it as JSON telemetry, and a rule chain reads
        ``msg['event.<alarm>'].event`` and its severity in one message. The alarm's name in the
        key keeps two alarms of the same millisecond apart (ThingsBoard keeps one value per key
        and ts). A row that is not a JSON object raises: the publisher quarantines it.
        """
        device, kind = stream_of(row)
        doc = decode_body(row.body)
        if not isinstance(doc, dict):
            raise TypeError(f"buffered {kind} row is a JSON {type(doc).__name__}, not an object")
        if kind == "data" or isinstance(doc.get("values"), dict):
            values = dict(doc.get("values", {}))
            for tag, quality in doc.get("quality", {}).items():
                values[f"{tag}.quality"] = quality
            if kind != "data":
                values = {f"{kind}.{k}": v for k, v in values.items()}
        else:  # a document of its own: an alarm event
            name = doc.get("alarm")
            values = {f"{kind}.{name}" if isinstance(name, str) and name else kind: doc}
        return device, {"ts": row.ts_ms, "values": values}

    def pack(self, rows: Sequence[StoredBatch]) -> list[Packed]:
        out: list[Packed] = []
        doc: dict[str, list[dict[str, Any]]] = {}
        taken: list[StoredBatch] = []
        size = 2
        for row in rows:
            # An unreadable row raises out of here: acknowledging it (Packed(None, ...)) would
            # delete it unsent, so the publisher quarantines it in the buffer instead.
            device, entry = self.entry(row)
            overhead = len(_dumps(device)) + 40
            if len(_dumps(entry)) + overhead > self.max_payload:
                # One batch larger than a message: its values in several messages with the
                # same ts (ThingsBoard merges them), acknowledged with the last one.
                if taken:
                    out.append(self._packed(doc, taken))
                    doc, taken, size = {}, [], 2
                parts = chunks(entry["values"], self.max_payload - overhead - 40)
                for i, part in enumerate(parts):
                    rows_of = [row] if i == len(parts) - 1 else []
                    out.append(
                        self._packed({device: [{"ts": entry["ts"], "values": part}]}, rows_of)
                    )
                continue
            piece = len(_dumps(entry)) + 1 + (0 if device in doc else len(_dumps(device)) + 3)
            if taken and size + piece > self.max_payload:
                out.append(self._packed(doc, taken))
                doc, taken, size = {}, [], 2
                piece = len(_dumps(entry)) + len(_dumps(device)) + 4
            doc.setdefault(device, []).append(entry)
            taken.append(row)
            size += piece
        if taken:
            out.append(self._packed(doc, taken))
        return out

    def _packed(self, doc: Mapping[str, Any], rows: list[StoredBatch]) -> Packed:
        return Packed(Message(TELEMETRY, _dumps(doc).encode()), tuple(rows))

    # -- RPC --------------------------------------------------------------------------------------

    def incoming(self, topic: str, payload: bytes) -> Reaction | None:
        if topic != RPC:
            return None
        try:
            doc = json.loads(payload)
            device = doc["device"]
            data = doc["data"]
            request_id = data["id"]
            method = data.get("method")
            params = data.get("params")
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("malformed ThingsBoard RPC ignored", extra={"error": str(exc)})
            return None
        if not isinstance(device, str):
            return None
        cmd_id = str(request_id)
        if method == "call":
            if not isinstance(params, dict) or len(params) != 1:
                why = "params must be an object of one method: [arguments]"
                return Reaction(publish=[_reply(device, request_id, False, why)])
            return Reaction(command=Command(device, call=params, cmd_id=cmd_id, context=request_id))
        if method != "write":
            why = f"unknown method {method!r} (use write or call)"
            return Reaction(publish=[_reply(device, request_id, False, why)])
        if not isinstance(params, dict) or not params:
            reply = _reply(device, request_id, False, "params must be an object of tag: value")
            return Reaction(publish=[reply])
        return Reaction(command=Command(device, writes=params, cmd_id=cmd_id, context=request_id))

    def reply(self, command: Command, reply: dict[str, object]) -> Message | None:
        error = reply.get("error")
        return _reply(
            command.device,
            command.context,
            bool(reply.get("ok")),
            str(error) if error else None,
            {k: reply[k] for k in ("status", "outputs") if k in reply},
        )


def _reply(
    device: str,
    request_id: Any,
    ok: bool,
    error: str | None,
    result: Mapping[str, object] | None = None,
) -> Message:
    data: dict[str, Any] = {"success": ok}
    if error is not None:
        data["error"] = error
    data.update(result or {})
    return Message(RPC, _dumps({"device": device, "id": request_id, "data": data}).encode())
