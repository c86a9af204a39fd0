"""AWS IoT Core: the contract's JSON under a topic prefix, within AWS's limits.

AWS IoT Core authenticates a thing by its X.509 certificate (mutual TLS on port 8883), checks the
client id against the thing's policy, refuses messages over 128 KB and throttles a connection
above 100 publishes per second. Topics may have at most 7 slashes. Retained messages are not
needed: device state goes as plain messages (and again after each connect), the gateway's
offline state as the MQTT will.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from pydantic import Field

from agent.core.buffer import StoredBatch
from agent.core.record import decode_body
from agent.north.formats.base import (
    Issue,
    Message,
    Packed,
    options_of,
    stream_of,
    topic_prefix,
)
from agent.north.formats.jsonfmt import JsonFormat, _dumps
from agent.north.formats.split import split_doc
from drivers.base import Size, StrictModel

if TYPE_CHECKING:  # the config is built in app; a format reads it, never imports app at run time
    from agent.app.config.models import Config

MAX_PAYLOAD = 128 * 1024
MAX_RATE = 100.0
MAX_SLASHES = 7


class AwsOptions(StrictModel):
    """Options of ``format: aws`` (AWS IoT Core). Authentication is the thing's certificate:
    ``mqtt.tls.cert_file`` and ``key_file`` (and Amazon's root CA as ``ca_file``)."""

    max_payload: Size = Field(
        default=MAX_PAYLOAD, ge=1024, description="AWS IoT Core's message size limit (128KB)"
    )


class AwsIotFormat(JsonFormat):
    name = "aws"
    Options = AwsOptions
    retain_supported = False

    @classmethod
    def check(cls, data: Mapping[str, Any], section: Mapping[str, Any]) -> list[Issue]:
        return []  # no json options: the placement rules of JsonFormat do not apply

    @classmethod
    def check_section(cls, section: Any) -> list[tuple[str, str]]:
        """A thing signs in with its certificate; a topic has at most 7 slashes."""
        if section.tls is None or section.tls.cert_file is None:
            return [("format", "format: aws needs tls with cert_file and key_file")]
        if section.topic_prefix and section.topic_prefix.count("/") > 4:
            return [("topic_prefix", "AWS IoT allows 7 slashes per topic: at most 5 prefix levels")]
        return []

    @classmethod
    def from_config(cls, config: Config) -> AwsIotFormat:
        aws = options_of(config.mqtt, cls.section_key(), AwsOptions)
        limit = aws.max_payload if aws else MAX_PAYLOAD
        return cls(config.agent.id, topic_prefix(config), max_payload=limit)

    def __init__(
        self,
        agent_id: str,
        topic_prefix: str,
        max_payload: int = MAX_PAYLOAD,
        max_rate: float = MAX_RATE,
        placement: Mapping[str, Mapping[str, str]] | None = None,
    ) -> None:
        super().__init__(agent_id, topic_prefix, placement=placement)
        self.max_payload: int = max_payload
        self.max_rate = max_rate

    def pack(self, rows: Sequence[StoredBatch]) -> list[Packed]:
        out: list[Packed] = []
        for packed in super().pack(rows):
            msg = packed.message
            if msg is None or len(msg.payload) <= self.max_payload:
                out.append(packed)
                continue
            [row] = packed.rows
            device, _ = stream_of(row)
            doc = {"agent": self.agent_id, "device": device, "seq": row.seq}
            doc.update(decode_body(row.body))
            parts = split_doc(doc, self.max_payload)
            for i, part in enumerate(parts):
                last = i == len(parts) - 1
                piece = Message(msg.topic, _dumps(part).encode(), properties=msg.properties)
                out.append(Packed(piece, (row,) if last else ()))
        return out

    def will(self) -> Message:
        return Message(self.gateway_status_topic, self.gateway_status(False), 1, False)

    def online(self) -> list[Message]:
        return [Message(self.gateway_status_topic, self.gateway_status(True), 1, False)]

    def retained_status(
        self, device: str, state: str, reason: str | None, ts_ms: int
    ) -> Message | None:
        return Message(
            self.device_status_topic(device), self.device_status(state, ts_ms, reason), 1, False
        )

    def side_message(self, topic: str, payload: bytes) -> Message | None:
        return Message(topic, payload, qos=1, retain=False)
