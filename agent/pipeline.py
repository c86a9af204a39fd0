"""Between the poll loops and the buffer: where batches are shaped before they become durable.

Today the pipeline serialises each batch and commits it; edge processing (deadbands, windows,
features, machine state) plugs in here as stages, so every format and the buffer see the same
processed batches.
"""

from __future__ import annotations

from agent.buffer import Buffer
from agent.record import encode_batch, ts_ms
from drivers.base import Batch


class Pipeline:
    def __init__(self, buffer: Buffer) -> None:
        self._buffer = buffer

    async def submit(self, batch: Batch) -> None:
        """Commit the batch durably; on return it has its ``seq`` and counts as read."""
        batch.seq = await self._buffer.put(batch.device, ts_ms(batch.ts), encode_batch(batch))
