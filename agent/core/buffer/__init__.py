"""The durable, bounded store-and-forward buffer, as the event loop sees it.

Every SQLite call runs on one worker thread (``store.SqliteStore``, whose docstring says why the
buffer is built the way it is); this facade only queues puts for group commit and awaits futures.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import ParamSpec, TypeVar

from agent.core.buffer.store import (
    DEFAULT_OUTPUT,
    MIN_SIZE,
    SEQ_RESERVATION,
    BufferError,
    BufferStats,
    Item,
    OutputBacklog,
    SqliteStore,
    StoredBatch,
)
from agent.core.commit_by import COMMIT_BY
from agent.ops.metrics import Metrics

__all__ = [
    "DEFAULT_OUTPUT",
    "MIN_SIZE",
    "SEQ_RESERVATION",
    "STREAM_OF_KIND",
    "Buffer",
    "BufferError",
    "BufferStats",
    "OutputBacklog",
    "Route",
    "StoredBatch",
    "Wakeup",
]


#: The config's stream names (``outputs[].streams``) of the buffer's row kinds.
STREAM_OF_KIND = {"data": "data", "event": "events"}


@dataclass(frozen=True, slots=True)
class Route:
    """What one destination wants: its devices and streams (``data``, ``events``, ``state``,
    ``status``; None: all of them)."""

    output: str
    devices: frozenset[str] | None = None
    streams: frozenset[str] | None = None

    def wants(self, device: str, kind: str) -> bool:
        """A buffered row of ``device`` of this ``kind`` (``data``, ``event``)."""
        return self.takes(device, STREAM_OF_KIND.get(kind, kind))

    def takes(self, device: str, stream: str) -> bool:
        return (self.devices is None or device in self.devices) and (
            self.streams is None or stream in self.streams
        )


_P = ParamSpec("_P")
_T = TypeVar("_T")


class Wakeup(asyncio.Event):
    """A destination's wake-up, set after every commit that stored a batch it wants.

    Its consumer (the destination's publisher) may ``forward`` it to the one event it waits on
    for every cause (acknowledgements, commands, a lost link) and keep this one as a flag: a
    wait is then one future, where waiting on two events took a task each and
    ``asyncio.wait``, several times per commit."""

    def __init__(self) -> None:
        super().__init__()
        self._forward: asyncio.Event | None = None

    def forward(self, event: asyncio.Event) -> None:
        self._forward = event
        if self.is_set():
            event.set()

    def set(self) -> None:
        super().set()
        if self._forward is not None:
            self._forward.set()


class Buffer:
    """The event loop's view of the buffer; see the module docstring for the why.

    ``max_size`` (bytes, at least ``MIN_SIZE``, 1 MB) bounds the database plus its WAL on disk.
    A single body may be at most ``max_body``, about a sixteenth of ``max_size`` (64 KB at 1 MB,
    at most 8 MB): one transaction must fit in the share of ``max_size`` set aside for the WAL.

    ``new_data`` is set after every commit that stored something; a consumer clears it and waits
    on it instead of polling. With several destinations (``set_routes``) each has its own
    (``wakeup(output)``): one clearing it must not hide a commit from another.
    """

    def __init__(
        self,
        data_dir: Path,
        max_size: int,
        metrics: Metrics | None = None,
        *,
        commit_interval: float = 0.0,
    ) -> None:
        if max_size < MIN_SIZE:
            raise ValueError(f"buffer max_size must be at least {MIN_SIZE} bytes, not {max_size}")
        if commit_interval < 0:
            raise ValueError(f"commit_interval must not be negative, not {commit_interval}")
        self._store = SqliteStore(Path(data_dir), max_size, metrics)
        self._commit_interval = commit_interval
        self._pending_bytes = 0
        self._due = float("inf")  # loop time the group waiting now must be committed by
        self._wake = asyncio.Event()  # the committer's wait ends: an earlier due time, or close
        self._commit_took: deque[float] = deque(maxlen=32)  # seconds, the latest commits
        # Acknowledgements waiting for the next commit, per destination (commit_interval > 0).
        self._acks: dict[str, list[int]] = {}
        self._metrics = metrics
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="buffer")
        self._pending: list[tuple[Item, asyncio.Future[int]]] = []
        self._committer: asyncio.Task[None] | None = None
        self._state = "new"  # new -> open -> closing -> closed
        self._routes: tuple[Route, ...] = (Route(DEFAULT_OUTPUT),)
        self._routes_set = False
        self._masks: dict[str, int] = {DEFAULT_OUTPUT: 1}
        self._want_cache: dict[tuple[str, str], int] = {}
        self._wakeups: dict[str, Wakeup] = {DEFAULT_OUTPUT: Wakeup()}

    @property
    def new_data(self) -> Wakeup:
        """The ``default`` destination's wake-up (see ``wakeup``)."""
        return self._wakeups[DEFAULT_OUTPUT]

    def wakeup(self, output: str) -> Wakeup:
        """Set after every commit that stored a batch ``output`` wants."""
        return self._wakeups.setdefault(output, Wakeup())

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
        if self._routes_set:  # routes given before open: apply them now
            await self.set_routes(self._routes)
        else:  # the destinations the file knows keep their shares until set_routes says
            self._masks = dict(self._store.outputs)
            self._routes = tuple(Route(name) for name in self._masks)
            self._publish_stats()

    async def set_routes(self, routes: Sequence[Route]) -> None:
        """The destinations of the config and what each wants (at start and on a reload).

        The ``default`` destination (the ``mqtt`` section) is always one of them. A batch is
        stored once, marked with every destination that wants it; a destination no longer
        listed lets go of its share (``SqliteStore.set_outputs``). Raises ``BufferError``."""
        routes = tuple(routes)
        self._routes_set = True
        if not any(r.output == DEFAULT_OUTPUT for r in routes):
            routes = (Route(DEFAULT_OUTPUT), *routes)
        old = set(self._masks)
        if self._state == "open":
            self._masks = await self._run(self._store.set_outputs, [r.output for r in routes])
        self._routes = routes
        self._want_cache = {}
        for route in routes:
            self.wakeup(route.output).set()
        m = self._metrics
        if m is not None:
            for name in old - set(self._masks):
                self._wakeups.pop(name, None)
                m.forget_output(name)
            for name in self._masks:
                m.add_output(name)
                m.output_oldest_age.labels(name).set_function(
                    lambda name=name: self._output_age(name)  # type: ignore[misc]
                )
        self._publish_stats()

    def want_of(self, device: str, kind: str) -> int:
        """The destinations (bit mask) that want a batch of ``device`` of this ``kind``."""
        key = (device, kind)
        want = self._want_cache.get(key)
        if want is None:
            want = 0
            for route in self._routes:
                if route.wants(device, kind):
                    want |= self._masks.get(route.output, 0)
            self._want_cache[key] = want
        return want

    async def close(self) -> None:
        """Commit what is pending (those callers get their seq), then close. Idempotent."""
        if self._state in ("closing", "closed"):
            return
        self._state = "closing"
        self._commit_by(float("-inf"))  # what waits in the commit window is committed now
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
        want = self.want_of(device, kind)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[int] = loop.create_future()
        self._pending.append(((device, kind, ts_ms, bytes(body), want), fut))
        self._pending_bytes += len(body)
        self._commit_by(self._put_due(loop.time()))
        return await fut

    def _put_due(self, now: float) -> float:
        """When a put arriving ``now`` must be committed: within ``commit_interval``, and before
        the putting task's next poll is due (``COMMIT_BY``, set by the pollers: the caller
        waits for its commit, durable before it counts, and must not be late for its next
        poll, nor a serial line for its next device). Without that time, or with a group large
        enough to gain nothing from waiting, at once."""
        deadline = COMMIT_BY.get()
        if (
            self._commit_interval <= 0
            or deadline is None
            or self._pending_bytes >= self._store.txn_cap // 2
            or self._store.pressed  # short of room: small commits, small drops, as without
            or self._store.commits == 0  # the first batch after start goes out at once
        ):
            return now
        # Kept free for the commit itself: a fifth of the time left, and twice the slowest of
        # the recent commits (a card whose fsyncs stall shrinks the window by itself, so a
        # slow commit does not make pollers miss their ticks).
        left = deadline - now
        spare = max(left / 5, 2 * max(self._commit_took, default=0.0))
        return now + max(0.0, min(self._commit_interval, left - spare))

    def _commit_by(self, due: float) -> None:
        if due < self._due:
            self._due = due
            self._wake.set()
        self._start_committer()

    async def fetch(
        self,
        after_id: int,
        limit: int,
        upto_id: int | None = None,
        output: str = DEFAULT_OUTPUT,
    ) -> list[StoredBatch]:
        """At most ``limit`` batches ``output`` has still to send with ``after_id < id <=
        upto_id``, ascending id."""
        waiting = self._acks.get(output)
        if waiting and after_id < max(waiting):
            # A fetch from behind (a new session) must not see rows already acknowledged.
            del self._acks[output]
            await self._run(self._store.ack, waiting, output)
            self._publish_stats()
        return await self._run(self._store.fetch, after_id, limit, upto_id, output)

    async def ack(self, ids: Sequence[int], output: str = DEFAULT_OUTPUT) -> None:
        """``output`` sent these batches; each is deleted once every destination that wants it
        has. Idempotent; a failure is logged, the batches are resent.

        With a ``commit_interval`` the deletes wait for the next commit (at most that long) and
        go to disk with it: deleting one row per PUBACK rewrote the same pages once per message,
        the largest share of the buffer's writes at shop-floor rates. A power cut in between
        costs only resends, which consumers dedupe by (agent, device, seq). While the buffer is
        short of room they are applied at once (``SqliteStore.pressed``)."""
        if not ids:
            return
        if self._commit_interval > 0 and self._state == "open" and not self._store.pressed:
            self._acks.setdefault(output, []).extend(ids)
            self._commit_by(asyncio.get_running_loop().time() + self._commit_interval)
            return
        await self._run(self._store.ack, list(ids), output)
        self._publish_stats()

    async def max_id(self) -> int:
        return await self._run(self._store.max_id)

    async def quarantine(
        self, ids: Sequence[int], reason: str, output: str = DEFAULT_OUTPUT
    ) -> int:
        """Set batches aside that ``output``'s format could not pack: kept, counted, never sent
        as done. Raises ``BufferError``; the caller then keeps them where they were
        (unacknowledged)."""
        n = await self._run(self._store.hold, list(ids), reason, output)
        self._publish_stats()
        return n

    async def release_quarantined(self) -> int:
        """Make quarantined batches publishable again (a new agent or format may pack them)."""
        n = await self._run(self._store.release)
        if n:
            for event in self._wakeups.values():
                event.set()
        self._publish_stats()
        return n

    def stats(self) -> BufferStats:
        s = self._store
        return BufferStats(
            s.count,
            s.disk_bytes,
            s.dropped_total,
            s.oldest,
            s.held,
            s.held_reason,
            s.output_stats(),
        )

    def output_stats(self, output: str) -> OutputBacklog:
        """``output``'s share of the buffer (an empty one for a destination not known)."""
        return self._store.output_stats().get(output, OutputBacklog(0, None, 0))

    # -- internals --------------------------------------------------------------------------------

    async def _commit_loop(self) -> None:
        """Each pass commits everything that queued up while the previous commit ran, and with
        a ``commit_interval`` everything that arrived before the first of them was due: one
        transaction (one fsync, one set of rewritten b-tree pages) per window instead of one per
        staggered device, which is what the buffer's disk writes are made of at shop-floor
        rates (docs/performance.md)."""
        loop = asyncio.get_running_loop()
        try:
            while self._pending or self._acks:
                while (wait := self._due - loop.time()) > 0:
                    self._wake.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), wait)
                if self._state == "open":
                    self._due = float("inf")
                group = [(item, fut) for item, fut in self._pending if not fut.done()]
                acks, self._acks = self._acks, {}
                self._pending = []
                self._pending_bytes = 0
                if not group:
                    with contextlib.suppress(Exception):  # the store logs a failed ack itself
                        await self._run(self._ack_all, acks)
                    self._publish_stats()
                    continue
                try:
                    # The acknowledgements go in the same transaction: one write of the pages
                    # both touch.
                    began = loop.time()
                    results = await self._run(self._store.commit_group, [i for i, _ in group], acks)
                    self._commit_took.append(loop.time() - began)
                except Exception as exc:  # the worker itself failed: nothing was committed
                    results = [BufferError(f"buffer worker failed: {exc}")] * len(group)
                stored = 0
                for (item, fut), result in zip(group, results, strict=True):
                    if fut.done():
                        continue
                    if isinstance(result, BufferError):
                        fut.set_exception(result)
                    else:
                        fut.set_result(result)
                        stored |= item[4]
                for name, mask in self._masks.items():
                    if stored & mask:
                        self.wakeup(name).set()
                self._publish_stats()
        finally:
            self._committer = None
            for _, fut in self._pending:  # only reached when this task was cancelled
                if not fut.done():
                    fut.set_exception(BufferError("buffer commit cancelled"))
            self._pending = []

    def _start_committer(self) -> None:
        if self._committer is None:
            self._committer = asyncio.create_task(self._commit_loop(), name="buffer-commit")

    def _ack_all(self, acks: dict[str, list[int]]) -> None:
        """On the worker: the acknowledgements that waited for this commit."""
        for output, ids in acks.items():
            with contextlib.suppress(BufferError):  # a destination a reload removed
                self._store.ack(ids, output)

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

    def _output_age(self, output: str) -> float:
        oldest = self._store.oldest_by.get(self._masks.get(output, 0))
        return max(0.0, time.time() - oldest[1]) if oldest is not None else 0.0

    def _publish_stats(self) -> None:
        m = self._metrics
        if m is None:
            return
        m.buffer_batches.set(self._store.count)
        m.buffer_bytes.set(self._store.disk_bytes)
        m.buffer_quarantined.set(self._store.held)
        for name, mask in self._masks.items():
            m.output_backlog.labels(name).set(self._store.backlog.get(mask, 0))
