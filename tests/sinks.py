"""Stand-ins for the pipeline and the publisher's status topic, for tests of the poll loops.

They record what the scheduler hands on, and let a test await a condition on it.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from drivers.base import Batch


class Sink:
    """Collects batches instead of committing them to a buffer."""

    def __init__(self) -> None:
        self.batches: list[Batch] = []
        self.changed = asyncio.Event()

    async def __call__(self, batch: Batch) -> None:
        self.batches.append(batch)
        self.changed.set()

    def of(self, device: str) -> list[Batch]:
        return [b for b in self.batches if b.device == device]

    async def until(self, predicate: Any, timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                self.changed.clear()
                await self.changed.wait()

    async def run_until(self, poller: Any, predicate: Any, timeout: float = 5.0) -> None:
        """Run ``poller`` (a ``DevicePoller`` or ``LinePoller`` feeding this sink) until
        ``predicate`` holds, then stop it."""
        task = asyncio.create_task(poller.run())
        try:
            await self.until(predicate, timeout)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


class Status:
    """Records device state changes as the publisher would publish them."""

    def __init__(self) -> None:
        self.changes: list[tuple[str, str, str | None]] = []

    def device_status(self, device: str, state: str, reason: str | None, ts: float) -> None:
        self.changes.append((device, state, reason))
