"""Poll loops: one task per device, on a fixed cadence, isolated from every other device.

Why one task per device: a device that times out or refuses connections must not shift anyone
else's schedule (ARCHITECTURE rule 5). Why a fixed cadence computed from the start time rather than
``sleep(interval)`` after each poll: sleeps accumulate the poll's own duration and drift; ticks at
``start + k * interval`` do not. A poll that runs past its next tick is an overrun: it is counted,
the missed ticks are skipped (never run back to back to "catch up"), and it is logged once per
episode, not once per cycle.

A device whose tags have rates of their own (``every``, ``scan_group``: ``drivers.base.rates``)
keeps one such cadence per rate group in its one task and connection: the group whose tick comes
first is polled (``Driver.poll_group``), the fastest first when several are due, so a slow
group's requests follow a fast group's instead of going before them; each group's poll is a
batch of its own. Not concurrently: one connection (or one line) carries one request at a time.
A slow group is polled with the time the next faster tick is due (``poll_group_until``): a
driver that reads it in several requests stops there, the faster group is polled, and the slow
group goes on with its remaining requests (in a batch of their own), so the fast group waits
for one request at most.

Devices that share a line (a serial bus) are polled by ``agent.south.lines.LinePoller``
instead; both pollers drive a :class:`PolledDevice`, which holds what one device's polling
needs whoever schedules it: state changes, metrics, cadence and the batches it emits.

Writes (commands from the cloud) never race a poll: every poll turn (connect and poll) runs
holding the device's ``turn`` lock, and :meth:`PolledDevice.write` takes the same lock, so a write
waits for the poll in progress and the next poll waits for the write. Devices on one line share
one lock (the line's), so a write to one unit id waits for the poll of another on the same
RS-485 line. A lock rather than a queue served by the poll task: the command's own task carries
the write and its reply, the poll task keeps its cadence code unchanged, and asyncio's lock is
fair (first come, first served), so a burst of writes cannot starve polling nor polling writes.
"""

from __future__ import annotations

import asyncio
import logging
import math
import operator
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, Protocol

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    wait_exponential_jitter,
)

from agent.core.commit_by import COMMIT_BY
from agent.ops.metrics import Metrics
from drivers.base import (
    Batch,
    CallResult,
    DeviceBase,
    DeviceError,
    Driver,
    Quality,
    Reading,
    WriteError,
    rate_groups,
)

log = logging.getLogger(__name__)


def device_backoff(initial: float, maximum: float) -> wait_exponential_jitter:
    """The wait between reconnect attempts of one device, alone or on a line: exponential, with
    jitter of the first step's size so a gateway restart does not make every device reconnect in
    the same millisecond."""
    return wait_exponential_jitter(multiplier=initial, max=maximum, jitter=initial)


BatchSink = Callable[[Batch], Awaitable[None]]


class StatusSink(Protocol):
    """Where device state changes go (the publisher's retained status topic)."""

    def device_status(self, device: str, state: str, reason: str | None, ts: float) -> None: ...


class Cadence:
    """Ticks at ``start + k * interval``: drift-free; missed ticks are skipped, not caught up."""

    def __init__(self, interval: float, start: float) -> None:
        self.interval = interval
        self.start = start
        self.tick = 0

    @property
    def due(self) -> float:
        return self.start + self.tick * self.interval

    def resume(self, now: float) -> None:
        """Back after an outage: the tick ``now`` is in (past ticks were not missed, the device
        was down), so the next ``advance`` lands on the first tick after ``now``."""
        self.tick = max(self.tick, math.floor((now - self.start) / self.interval))

    def advance(self, now: float) -> tuple[int, float]:
        """Step past the tick just polled; when ``now`` is already beyond the next one, skip the
        missed ticks and return how many and how long the cycle took (else ``(0, 0.0)``)."""
        self.tick += 1
        due = self.due
        if now <= due:
            return 0, 0.0
        skipped = math.floor((now - self.start) / self.interval) - self.tick + 1
        self.tick += skipped
        return skipped, now - (due - self.interval)


# Per-reading passes of a batch run in C (``map`` with attribute getters), not in Python loops:
# they run for every reading the agent takes.
_tag_of = operator.attrgetter("tag")
_ts_of = operator.attrgetter("ts")
_quality_of = operator.attrgetter("quality")
_ONLY_GOOD = frozenset((Quality.GOOD,))


def all_good(readings: list[Reading]) -> bool:
    """Every reading good (true for none)."""
    return set(map(_quality_of, readings)) <= _ONLY_GOOD


def frames(readings: list[Reading]) -> Iterator[list[Reading]]:
    """The batches one poll's readings make: all in one when no tag repeats (the common case,
    whatever the readings' times), else one per event in time order, each with at most one
    reading per tag, because a payload carries one value per tag (INTERFACES.md)."""
    if len(set(map(_tag_of, readings))) == len(readings):
        if readings:
            yield readings
        return
    batch: list[Reading] = []
    tags: set[str] = set()
    for reading in sorted(readings, key=lambda r: r.ts):
        if reading.tag in tags:
            yield batch
            batch, tags = [], set()
        batch.append(reading)
        tags.add(reading.tag)
    yield batch


class PolledDevice:
    """One device's side of polling: its state (published once per change), its metrics, its
    cadence, and the batches it hands on. While it is unreachable every failed attempt yields one
    batch in which every tag is bad with the reason, so a failing device is visible in the data,
    not silent."""

    def __init__(
        self,
        device: DeviceBase,
        driver: Driver,
        sink: BatchSink,
        status: StatusSink,
        metrics: Metrics,
    ) -> None:
        self.device = device
        self.driver = driver
        self._sink = sink
        self._status = status
        self._state: str | None = None  # "up" / "down"; None until the first outcome
        self.connected = False
        #: Held for each poll turn and each write; devices on one line share their line's.
        self.turn = asyncio.Lock()
        self._overrunning = False
        self._down_reason: str | None = None
        self._tag_names = [t.name for t in device.tags]
        #: The device's rate groups, fastest first (one unless tags have rates of their own).
        self.groups = rate_groups(device)
        #: Whether the last poll read its whole group (False: stopped for a faster group).
        self.finished = True
        self.cycles = 0  # completed poll cycles; tests await progress through it
        self.last_poll: float | None = None  # time.time() of the last completed poll
        name = device.name
        self._m_reads = metrics.reads.labels(name)
        self._m_errors = metrics.read_errors.labels(name)
        self._m_duration = metrics.poll_duration.labels(name)
        self._m_overruns = metrics.poll_overruns.labels(name)
        self._m_up = metrics.device_up.labels(name)
        self._m_up.set(0)

    # -- state ------------------------------------------------------------------------------------

    def set_state(self, state: str, reason: str | None) -> None:
        """Log and publish a state change once, not once per cycle."""
        self._m_up.set(1 if state == "up" else 0)
        if state == self._state:
            return
        self._state = state
        self._down_reason = reason
        extra = {"device": self.device.name, "reason": reason or "ok"}
        if state == "up":
            log.info("device up", extra=extra)
        else:
            log.warning("device down", extra=extra)
        self._status.device_status(self.device.name, state, reason, time.time())

    @property
    def state(self) -> str | None:
        return self._state

    # -- cadence ----------------------------------------------------------------------------------

    def polled(self, cadence: Cadence, now: float) -> None:
        """Move ``cadence`` past the tick just polled, counting an overrun when it ran late."""
        skipped, took = cadence.advance(now)
        if skipped:
            self._overrun(skipped, took)
        elif self._overrunning:
            self._overrunning = False
            log.info("poll back on schedule", extra={"device": self.device.name})

    def _overrun(self, skipped: int, took: float) -> None:
        self._m_overruns.inc()
        if not self._overrunning:
            self._overrunning = True
            log.warning(
                "poll overrun: cycle took longer than poll_interval, skipping missed cycles",
                extra={
                    "device": self.device.name,
                    "took_s": round(took, 3),
                    "poll_interval_s": self.device.poll_interval,
                    "skipped": skipped,
                },
            )

    # -- writes -----------------------------------------------------------------------------------

    def check_write(self, tag: str, value: object) -> None:
        """Refuse a value the driver cannot write (``WriteError``), before anything is sent."""
        self.driver.check_write(tag, value)

    async def write(self, tag: str, value: object) -> None:
        """Write one tag between polls (see the module docstring); ``WriteError`` says why not."""
        async with self.turn:
            if not self.connected:
                raise WriteError(f"device down ({self._down_reason or 'not connected'})")
            try:
                await self.driver.write(tag, value)
            except DeviceError as exc:
                # The next poll finds out whether the device is lost; the reply says it now.
                raise WriteError(f"device down ({exc.reason})") from exc

    def check_call(self, method: str, args: object) -> None:
        """Refuse a method call the driver cannot make (``WriteError``), before anything is sent."""
        self.driver.check_call(method, args)

    async def call(self, method: str, args: object) -> CallResult:
        """Call a method between polls, as a write is made; ``WriteError`` says why not."""
        async with self.turn:
            if not self.connected:
                raise WriteError(f"device down ({self._down_reason or 'not connected'})")
            try:
                return await self.driver.call(method, args)
            except DeviceError as exc:
                raise WriteError(f"device down ({exc.reason})") from exc

    # -- one cycle --------------------------------------------------------------------------------

    def next_group(self, cadences: list[Cadence], now: float) -> int:
        """The index of the rate group to poll next: of the groups due, the fastest (so a slow
        group's requests come after a fast group's, and a slow group stopped for a fast one
        goes on after it); when none is due, the earliest tick."""
        due = [i for i, c in enumerate(cadences) if c.due <= now]
        if due:
            return min(due, key=lambda i: self.groups[i].every)
        return min(range(len(cadences)), key=lambda i: (cadences[i].due, self.groups[i].every))

    def next_start(self, cadences: list[Cadence], group: int) -> float:
        """When this device's next poll is due once ``group`` has been polled now: how long
        its batch may wait for the buffer's commit window (``agent.core.commit_by``)."""
        return min(c.due + c.interval if i == group else c.due for i, c in enumerate(cadences))

    def faster_due(self, cadences: list[Cadence], group: int) -> float | None:
        """When a group faster than ``group`` is due next (None for the fastest): the time
        ``group``'s reads stop at (``Driver.poll_group_until``)."""
        every = self.groups[group].every
        dues = [c.due for c, g in zip(cadences, self.groups, strict=True) if g.every < every]
        return min(dues) if dues else None

    async def poll_once(
        self, loop: asyncio.AbstractEventLoop, group: int = 0, until: float | None = None
    ) -> bool:
        """Poll rate group ``group`` (the whole device when it has one) and emit its batch;
        False when the device was lost (it is then closed and marked down). With ``until``
        the driver may stop the group then for a faster one: ``finished`` says whether it
        did the whole group."""
        t0 = loop.time()
        self.finished = True
        try:
            if len(self.groups) == 1:
                readings = await self.driver.poll()
            elif until is None:
                readings = await self.driver.poll_group(self.groups[group])
            else:
                readings, self.finished = await self.driver.poll_group_until(
                    self.groups[group], until
                )
        except DeviceError as exc:
            self.finished = True
            await self.lost(exc.reason)
            self._m_duration.observe(loop.time() - t0)
            return False
        self.set_state("up", None)
        self._m_duration.observe(loop.time() - t0)
        await self.emit(readings)
        return True

    async def lost(self, reason: str) -> None:
        """A failed connect or a lost device: closed, down, and one all-bad batch."""
        self.connected = False
        await self.driver.close()
        self.set_state("down", reason)
        now = time.time()
        await self.emit([Reading.bad(tag, now, reason) for tag in self._tag_names])

    async def emit(self, readings: list[Reading]) -> None:
        """Hand the poll's batches on; none when the poll returned nothing (no event happened)."""
        for part in frames(readings):
            await self._commit(part)
        events = self.driver.take_events()
        if events:
            await self._commit_events(events)
        self.cycles += 1
        self.last_poll = time.time()

    async def _commit_events(self, events: list[dict[str, Any]]) -> None:
        """The device's own alarms (OPC UA A&C) on its event stream: not a poll's outcome, so
        no read and no error is counted for them."""
        try:
            await self._sink(Batch(self.device.name, time.time(), [], events=events))
        except Exception:
            log.debug("events not committed", extra={"device": self.device.name}, exc_info=True)

    async def _commit(self, readings: list[Reading]) -> None:
        batch = Batch(self.device.name, max(map(_ts_of, readings)), readings)
        if not all_good(readings):
            self._m_errors.inc()
        try:
            await self._sink(batch)
        except Exception:
            # The buffer refused the batch (disk full, I/O error): it logs why; this device's
            # schedule goes on, and the next cycle tries again.
            log.debug("batch not committed", extra={"device": self.device.name}, exc_info=True)
        else:
            self._m_reads.inc()


class DevicePoller(PolledDevice):
    """Connects one device that owns its connection (with backoff), polls it every
    ``poll_interval`` from a task of its own, hands batches on.

    Connect attempts are spaced by exponential backoff (with jitter, so a gateway restart does not
    make every device reconnect in the same millisecond).
    """

    def __init__(
        self,
        device: DeviceBase,
        driver: Driver,
        sink: BatchSink,
        status: StatusSink,
        metrics: Metrics,
        *,
        backoff_initial: float = 1.0,
        backoff_max: float = 60.0,
        phase: float = 0.0,
    ) -> None:
        super().__init__(device, driver, sink, status, metrics)
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._phase = phase

    async def run(self) -> None:
        """Poll until cancelled. Never raises for device trouble; cancellation closes the driver.

        The cadence starts ``phase`` seconds from now (the device connects at once): a gateway
        with many devices on the same interval spreads their polls over the interval instead of
        polling them all on one tick, so the buffer and the broker see a steady stream rather
        than a burst per second, which is what keeps latency low at high rates."""
        try:
            await self._loop()
        finally:
            await self.driver.close()

    async def _loop(self) -> None:
        """One cadence per rate group (one for most devices), served earliest tick first from
        this one task: the device has one connection, which carries one group's requests at a
        time, and a group's batch is emitted as soon as its own requests are answered."""
        loop = asyncio.get_running_loop()
        start = loop.time() + self._phase
        cadences = [Cadence(g.every, start) for g in self.groups]
        while True:
            if not self.connected:
                await self._connect()
                # Resume on each cadence: its next tick that is not in the past.
                now = loop.time()
                for cadence in cadences:
                    cadence.tick = max(
                        cadence.tick, math.ceil((now - cadence.start) / cadence.interval)
                    )
            group = self.next_group(cadences, loop.time())
            await asyncio.sleep(max(0.0, cadences[group].due - loop.time()))
            COMMIT_BY.set(self.next_start(cadences, group))
            async with self.turn:
                ok = await self.poll_once(loop, group, self.faster_due(cadences, group))
            if self.finished:  # else it stays due, and goes on after the faster group
                self.polled(cadences[group], loop.time())
            if not ok:  # lost: reconnecting starts at the next tick, not at once
                await asyncio.sleep(max(0.0, min(c.due for c in cadences) - loop.time()))

    async def _connect(self) -> None:
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(DeviceError),
            wait=device_backoff(self._backoff_initial, self._backoff_max),
            before_sleep=self._connect_failed,
            reraise=True,
        )
        await retrying(self._connect_once)

    async def _connect_once(self) -> None:
        async with self.turn:
            await self.driver.connect()
            self.connected = True

    async def _connect_failed(self, retry_state: RetryCallState) -> None:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        await self.lost(exc.reason if isinstance(exc, DeviceError) else "connect failed")
