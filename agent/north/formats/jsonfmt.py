"""The contract's ``json`` format, with an optional topic template for a unified namespace.

The wire output of the default layout is part of the public contract: payloads are spliced from
the stored record without re-encoding, and topics stay ``<prefix>/<device>/data``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from agent.core.buffer import StoredBatch
from agent.north.config import PLACEMENT_FIELDS
from agent.north.formats.base import (
    Command,
    Format,
    Message,
    Packed,
    Reaction,
    stream_of,
    topic_prefix,
)

if TYPE_CHECKING:  # the config is built in app; a format reads it, never imports app at run time
    from agent.app.config.models import Config

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


class JsonFormat(Format):
    """``<prefix>/<device>/data`` (or the template's topic) with the batch as one JSON object."""

    name = "json"

    @classmethod
    def from_config(cls, config: Config) -> JsonFormat:
        agent, mqtt = config.agent, config.mqtt
        prefix = topic_prefix(config)
        options = mqtt.json_options
        if options is None:
            return cls(agent.id, prefix)
        placement = {}
        for d in config.active_devices():
            own = options.placement.get(d.name)
            fields = {}
            for key in PLACEMENT_FIELDS:
                value = getattr(own, key, None) or getattr(agent, key, None)
                if value is not None:
                    fields[key] = value
            placement[d.name] = fields
        return cls(
            agent.id,
            prefix,
            topic_template=options.topic_template,
            placement=placement,
            user_properties=options.user_properties,
            default_placement={k: v for k in PLACEMENT_FIELDS if (v := getattr(agent, k, None))},
        )

    def __init__(
        self,
        agent_id: str,
        topic_prefix: str,
        topic_template: str | None = None,
        placement: Mapping[str, Mapping[str, str]] | None = None,
        user_properties: bool = True,
        default_placement: Mapping[str, str] | None = None,
    ) -> None:
        self.agent_id = agent_id
        self.prefix = topic_prefix
        self._head = b'{"agent":' + _dumps(agent_id).encode() + b',"device":'
        self._template = topic_template
        # Per device: the fields a template may use (agent, site, area, line, device).
        self._placement = {k: dict(v) for k, v in (placement or {}).items()}
        # A device outside ``placement`` (a reload removed it while its batches were still
        # buffered) takes the gateway's own fields, as it did unless it had its own.
        self._default_placement = dict(default_placement or {})
        self._user_properties = user_properties
        self._topics: dict[str, str] = {}

    def data_topic(self, stream: str) -> str:
        """A buffered stream is a device (``press-1`` → ``.../press-1/data``) or a device's
        side stream (``press-1/event`` → ``.../press-1/event``). Names cannot hold ``/``, so the
        two never clash, and each stream has its own ``seq``."""
        topic = self._topics.get(stream)
        if topic is None:
            device, _, kind = stream.partition("/")
            topic = self._render(device, kind or "data")
            self._topics[stream] = topic
        return topic

    def _render(self, device: str, kind: str) -> str:
        if self._template is None:
            return f"{self.prefix}/{device}/{kind}"
        own = self._placement.get(device, self._default_placement)
        fields = {"agent": self.agent_id, **own, "device": device}
        if "{kind}" in self._template:
            return self._template.format(**fields, kind=kind)
        # A template ending in a literal ``data`` level: side streams replace that level.
        topic = self._template.format(**fields)
        return topic if kind == "data" else f"{topic.rsplit('/', 1)[0]}/{kind}"

    def encode(self, batch: StoredBatch) -> bytes:
        """Splice agent, device and seq in front of the stored record (which starts with ``{``)."""
        return b"".join(
            (
                self._head,
                _dumps(batch.device.partition("/")[0]).encode(),
                b',"seq":',
                str(batch.seq).encode(),
                b",",
                batch.body[1:],
            )
        )

    def pack(self, rows: Sequence[StoredBatch]) -> list[Packed]:
        """One message per batch: the contract's shape. On MQTT v5 the dedupe key rides along
        as user properties so a shared-subscription consumer can drop duplicates unparsed."""
        out = []
        for row in rows:
            device, kind = stream_of(row)
            props: tuple[tuple[str, str], ...] = ()
            if self._user_properties:
                props = (("agent", self.agent_id), ("device", device), ("seq", str(row.seq)))
            msg = Message(
                self.data_topic(device if kind == "data" else f"{device}/{kind}"),
                self.encode(row),
                properties=props,
                content_type="application/json",
            )
            out.append(Packed(msg, (row,)))
        return out

    # Session rules ------------------------------------------------------------------------------

    def will(self) -> Message:
        return Message(self.gateway_status_topic, self.gateway_status(False), 1, True)

    def subscriptions(self) -> Sequence[str]:
        return (self.command_filter,)

    def online(self) -> list[Message]:
        return [Message(self.gateway_status_topic, self.gateway_status(True), 1, True)]

    def offline(self) -> list[Message]:
        return [self.will()]

    def retained_status(
        self, device: str, state: str, reason: str | None, ts_ms: int
    ) -> Message | None:
        return Message(
            self.device_status_topic(device), self.device_status(state, ts_ms, reason), 1, True
        )

    def incoming(self, topic: str, payload: bytes) -> Reaction | None:
        levels = topic.split("/")
        device = levels[-2] if len(levels) >= 2 else ""
        return Reaction(command=Command(device, payload, self.command_reply_topic(device)))

    def reply(self, command: Command, reply: dict[str, object]) -> Message | None:
        if command.reply_topic is None:
            return None
        return Message(command.reply_topic, _dumps(reply).encode(), 1, False)

    # Retained status messages -------------------------------------------------------------------

    @property
    def gateway_status_topic(self) -> str:
        return f"{self.prefix}/status"

    def gateway_status(self, online: bool) -> bytes:
        doc: dict[str, object] = {"online": online}
        if online:
            doc["ts"] = int(time.time() * 1000)
        return _dumps(doc).encode()

    def device_status_topic(self, device: str) -> str:
        return f"{self.prefix}/{device}/status"

    def device_topic(self, device: str, kind: str) -> str:
        """A retained per-device topic beside ``status`` (for example ``state``)."""
        return f"{self.prefix}/{device}/{kind}"

    def device_status(self, state: str, ts_ms: int, reason: str | None) -> bytes:
        """Always carries ``reason`` so consumers need no special case: ``ok`` while up."""
        doc = {"state": state, "ts": ts_ms, "reason": reason or "ok"}
        return _dumps(doc).encode()

    # Commands -----------------------------------------------------------------------------------

    @property
    def command_filter(self) -> str:
        return f"{self.prefix}/+/cmd"

    def command_reply_topic(self, device: str) -> str:
        return f"{self.prefix}/{device}/cmd/reply"
