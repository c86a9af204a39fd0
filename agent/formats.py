"""Northbound formats: topics and payloads for what reaches the broker.

Only the contract's ``json`` format exists today; a format is a small object so that others
(Sparkplug B, cloud presets) can be added beside it without touching the publisher.
"""

from __future__ import annotations

import json
import time

from agent.buffer import StoredBatch

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


class JsonFormat:
    """The contract's format: ``<prefix>/<device>/data`` with the batch as one JSON object."""

    def __init__(self, agent_id: str, topic_prefix: str) -> None:
        self.agent_id = agent_id
        self.prefix = topic_prefix
        self._head = b'{"agent":' + _dumps(agent_id).encode() + b',"device":'

    def data_topic(self, stream: str) -> str:
        """A buffered stream is a device (``press-1`` → ``.../press-1/data``) or a device's
        side stream (``press-1/event`` → ``.../press-1/event``). Names cannot hold ``/``, so the
        two never clash, and each stream has its own ``seq``."""
        device, _, kind = stream.partition("/")
        return f"{self.prefix}/{device}/{kind or 'data'}"

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
