"""The durable, bounded store-and-forward buffer, as the event loop sees it.

Every SQLite call runs on one worker thread (``store.SqliteStore``, whose docstring says why the
buffer is built the way it is); this facade only queues puts for group commit and awaits futures.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import ParamSpec, TypeVar

from agent.core.buffer.store import (
    MIN_SIZE,
    SEQ_RESERVATION,
    BufferError,
    BufferStats,
    Item,
    SqliteStore,
    StoredBatch,
)
from agent.ops.metrics import Metrics

__all__ = ["MIN_SIZE", "SEQ_RESERVATION", "Buffer", "BufferError", "BufferStats", "StoredBatch"]

_P = ParamSpec("_P")
_T = TypeVar("_T")


class Buffer:
    """The event loop's view of the buffer; see the module docstring for the why.

    ``max_size`` (bytes, at least ``MIN_SIZE``, 1 MB) bounds the database plus its WAL on disk.
    A single body may be at most ``max_body``, about a sixteenth of ``max_size`` (64 KB at 1 MB,
    at most 8 MB): one transaction must fit in the share of ``max_size`` set aside for the WAL.

    ``new_data`` is set after every commit that stored something; a consumer clears it and waits
    on it instead of polling.
    """

    def __init__(self, data_dir: Path, max_size: int, metrics: Metrics | None = None) -> None:
        if max_size < MIN_SIZE:
            raise ValueError(f"buffer max_size must be at least {MIN_SIZE} bytes, not {max_size}")
        self._store = SqliteStore(Path(data_dir), max_size, metrics)
        self._metrics = metrics
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="buffer")
        self._pending: list[tuple[Item, asyncio.Future[int]]] = []
        self._committer: asyncio.Task[None] | None = None
        self._state = "new"  # new -> open -> closing -> closed
        self.new_data = asyncio.Event()

    @property
    def path(self) -> Path:
        return self._store.path

    @property
    def max_size(self) -> int:
        return self._store.max_size

    @property
    def max_body(self) -> int:
        return self._store.max_body

    @property
    def commits(self) -> int:
        """Transactions that stored batches; tests and benchmarks read group commit from it."""
        return self._store.commits

    # -- life cycle -------------------------------------------------------------------------------

    async def open(self) -> None:
        """Create or recover the database (quarantining a corrupt one). Raises ``BufferError``."""
        if self._state != "new":
            raise BufferError(f"buffer is {self._state}")
        await self._run(self._store.open)
        self._state = "open"
        if self._metrics is not None:
            self._metrics.buffer_oldest_age.set_function(self._oldest_age)
        self._publish_stats()

    async def close(self) -> None:
        """Commit what is pending (those callers get their seq), then close. Idempotent."""
        if self._state in ("closing", "closed"):
            return
        self._state = "closing"
        try:
            if self._committer is not None:
                await asyncio.gather(self._committer, return_exceptions=True)
            with contextlib.suppress(Exception):
                await self._run(self._store.close)
        finally:
            self._state = "closed"
            self._executor.shutdown(wait=True)
            self._publish_stats()

    # -- the API ----------------------------------------------------------------------------------

    async def put(self, device: str, ts_ms: int, body: bytes, kind: str = "data") -> int:
        """Commit one batch durably and return its seq; group-committed with concurrent puts.

        Raises ``BufferError`` when it was not committed; then no seq was consumed. A caller
        cancelled before its group started is not committed; one cancelled later may be.
        """
        if self._state != "open":
            raise BufferError(f"buffer is {self._state}")
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._pending.append(((device, kind, ts_ms, bytes(body)), fut))
        if self._committer is None:
            self._committer = asyncio.create_task(self._commit_loop(), name="buffer-commit")
        return await fut

    async def fetch(
        self, after_id: int, limit: int, upto_id: int | None = None
    ) -> list[StoredBatch]:
        """At most ``limit`` batches with ``after_id < id <= upto_id``, ascending id."""
        return await self._run(self._store.fetch, after_id, limit, upto_id)

    async def ack(self, ids: Sequence[int]) -> None:
        """Delete published batches. Idempotent; a failure is logged, the batches are resent."""
        if ids:
            await self._run(self._store.ack, list(ids))
            self._publish_stats()

    async def max_id(self) -> int:
        return await self._run(self._store.max_id)

    async def quarantine(self, ids: Sequence[int], reason: str) -> int:
        """Set batches aside that the format could not pack: kept, counted, never sent as done.
        Raises ``BufferError``; the caller then keeps them where they were (unacknowledged)."""
        n = await self._run(self._store.hold, list(ids), reason)
        self._publish_stats()
        return n

    async def release_quarantined(self) -> int:
        """Make quarantined batches publishable again (a new agent or format may pack them)."""
        n = await self._run(self._store.release)
        if n:
            self.new_data.set()
        self._publish_stats()
        return n

    def stats(self) -> BufferStats:
        s = self._store
        return BufferStats(s.count, s.disk_bytes, s.dropped_total, s.oldest, s.held, s.held_reason)

    # -- internals --------------------------------------------------------------------------------

    async def _commit_loop(self) -> None:
        """Each pass commits everything that queued up while the previous commit ran."""
        try:
            while self._pending:
                group = [(item, fut) for item, fut in self._pending if not fut.done()]
                self._pending = []
                if not group:
                    continue
                try:
                    results = await self._run(self._store.commit_group, [i for i, _ in group])
                except Exception as exc:  # the worker itself failed: nothing was committed
                    results = [BufferError(f"buffer worker failed: {exc}")] * len(group)
                stored = False
                for (_, fut), result in zip(group, results, strict=True):
                    if fut.done():
                        continue
                    if isinstance(result, BufferError):
                        fut.set_exception(result)
                    else:
                        fut.set_result(result)
                        stored = True
                if stored:
                    self.new_data.set()
                self._publish_stats()
        finally:
            self._committer = None
            for _, fut in self._pending:  # only reached when this task was cancelled
                if not fut.done():
                    fut.set_exception(BufferError("buffer commit cancelled"))
            self._pending = []

    async def _run(self, fn: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
        loop = asyncio.get_running_loop()
        try:
            fut = loop.run_in_executor(self._executor, lambda: fn(*args, **kwargs))
        except RuntimeError as exc:  # the executor was shut down by close()
            raise BufferError(f"buffer is {self._state}") from exc
        return await fut

    def _oldest_age(self) -> float:
        oldest = self._store.oldest
        return max(0.0, time.time() - oldest) if oldest is not None else 0.0

    def _publish_stats(self) -> None:
        m = self._metrics
        if m is None:
            return
        m.buffer_batches.set(self._store.count)
        m.buffer_bytes.set(self._store.disk_bytes)
        m.buffer_quarantined.set(self._store.held)
