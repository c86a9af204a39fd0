"""Between the poll loops and the buffer: where batches are shaped before they become durable.

Edge processing (``agent.core.processing``: deadbands, windows, features, machine state, alarms) is
the one stage today: a device's batch may become several (closed windows first), none (a steady
value under report by exception costs nothing), plus alarm events committed on the device's
``event`` stream (rows of kind ``event``). Every format and the buffer see the same processed
batches.
"""

from __future__ import annotations

import json
import logging

from agent.core.buffer import Buffer
from agent.core.clock import DeviceStamps
from agent.core.processing import Output, Processing
from agent.core.processing.alarms import Event
from agent.core.record import encode_batch, ts_ms
from agent.core.streams import EVENT_STREAM
from drivers.base import Batch

log = logging.getLogger(__name__)
_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode


class Pipeline:
    def __init__(self, buffer: Buffer, processing: Processing | None = None) -> None:
        self._buffer = buffer
        self._processing = processing
        self.stamps = DeviceStamps()  # per-device ts never goes backwards (agent/core/clock.py)
        self._failing: set[str] = set()  # devices whose processing raised, logged once

    async def submit(self, batch: Batch) -> None:
        """Commit the batch durably; on return it has its ``seq`` and counts as read.

        With processing, ``seq`` is that of the last batch committed for it on the data stream,
        or stays None when report by exception left nothing to publish.
        """
        batch.ts = self.stamps.clamp(batch.device, batch.ts)
        # The device's own alarms (OPC UA A&C) come in a batch of their own, and are buffered
        # as the agent's alarm events are.
        out = await self._process(batch) if not batch.events else _device_events(batch)
        if out is None:
            batch.seq = await self._buffer.put(batch.device, ts_ms(batch.ts), encode_batch(batch))
            return
        for processed in out.batches:
            batch.seq = await self._buffer.put(
                batch.device, ts_ms(processed.ts), encode_batch(processed)
            )
        for event in out.events:
            # An event is buffered like data (QoS 1, durable, its own seq per device).
            await self._buffer.put(
                batch.device, round(event.ts * 1000), _dumps(event.doc).encode(), EVENT_STREAM
            )

    async def _process(self, batch: Batch) -> Output | None:
        """The processed batch, or None to commit it as read: no processing for the device, or
        processing failed on it (a bug or a value nothing expected), which must not cost the
        reading. Logged once per episode, not once per batch."""
        if self._processing is None:
            return None
        try:
            out = await self._processing.process(batch)
        except Exception:
            if batch.device not in self._failing:
                self._failing.add(batch.device)
                log.exception(
                    "processing failed: publishing the raw batch", extra={"device": batch.device}
                )
            return None
        if batch.device in self._failing:
            self._failing.discard(batch.device)
            log.info("processing back to normal", extra={"device": batch.device})
        return out


def _device_events(batch: Batch) -> Output:
    """The events a device reported itself, as processing's output (no data batch)."""
    return Output(events=[Event(float(doc["ts"]) / 1000, doc) for doc in batch.events])
