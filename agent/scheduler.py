"""Poll loops: one task per device, on a fixed cadence, isolated from every other device.

Why one task per device: a device that times out or refuses connections must not shift anyone
else's schedule (ARCHITECTURE rule 5). Why a fixed cadence computed from the start time rather than
``sleep(interval)`` after each poll: sleeps accumulate the poll's own duration and drift; ticks at
``start + k * interval`` do not. A poll that runs past its next tick is an overrun: it is counted,
the missed ticks are skipped (never run back to back to "catch up"), and it is logged once per
episode, not once per cycle.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    wait_exponential_jitter,
)

from agent.metrics import Metrics
from drivers.base import Batch, DeviceBase, DeviceError, Driver, Quality, Reading

log = logging.getLogger(__name__)

BatchSink = Callable[[Batch], Awaitable[None]]


class StatusSink(Protocol):
    """Where device state changes go (the publisher's retained status topic)."""

    def device_status(self, device: str, state: str, reason: str | None, ts: float) -> None: ...


class DevicePoller:
    """Connects one device (with backoff), polls it every ``poll_interval``, hands batches on.

    While the device is unreachable each failed connect attempt yields one batch in which every
    tag is bad with the reason, so a failing device is visible in the data, not silent; attempts
    are spaced by exponential backoff (with jitter, so a gateway restart does not make every
    device reconnect in the same millisecond).
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
    ) -> None:
        self.device = device
        self.driver = driver
        self._sink = sink
        self._status = status
        self._metrics = metrics
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._state: str | None = None  # "up" / "down"; None until the first outcome
        self._connected = False
        self._overrunning = False
        self._tag_names = [t.name for t in device.tags]
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

    def _set_state(self, state: str, reason: str | None) -> None:
        """Log and publish a state change once, not once per cycle."""
        self._m_up.set(1 if state == "up" else 0)
        if state == self._state:
            return
        self._state = state
        extra = {"device": self.device.name, "reason": reason or "ok"}
        if state == "up":
            log.info("device up", extra=extra)
        else:
            log.warning("device down", extra=extra)
        self._status.device_status(self.device.name, state, reason, time.time())

    @property
    def state(self) -> str | None:
        return self._state

    # -- the loop ---------------------------------------------------------------------------------

    async def run(self) -> None:
        """Poll until cancelled. Never raises for device trouble; cancellation closes the driver."""
        try:
            await self._loop()
        finally:
            await self.driver.close()

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self.device.poll_interval
        start = loop.time()
        tick = 0
        while True:
            if not self._connected:
                await self._connect()
                # Resume on the cadence: the next tick that is not in the past.
                tick = max(tick, math.ceil((loop.time() - start) / interval))
                await asyncio.sleep(max(0.0, start + tick * interval - loop.time()))
            await self._poll_once(loop)
            tick += 1
            now = loop.time()
            due = start + tick * interval
            if now > due:
                skipped = math.floor((now - start) / interval) - tick + 1
                tick += skipped
                self._overrun(skipped, now - (due - interval))
            elif self._overrunning:
                self._overrunning = False
                log.info("poll back on schedule", extra={"device": self.device.name})
            await asyncio.sleep(max(0.0, start + tick * interval - loop.time()))

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

    async def _poll_once(self, loop: asyncio.AbstractEventLoop) -> None:
        t0 = loop.time()
        try:
            readings = await self.driver.poll()
        except DeviceError as exc:
            self._connected = False
            await self.driver.close()
            readings = self._all_bad(exc.reason)
            self._set_state("down", exc.reason)
        else:
            self._set_state("up", None)
        self._m_duration.observe(loop.time() - t0)
        await self._emit(readings)

    async def _connect(self) -> None:
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(DeviceError),
            wait=wait_exponential_jitter(
                multiplier=self._backoff_initial,
                max=self._backoff_max,
                jitter=self._backoff_initial,
            ),
            before_sleep=self._connect_failed,
            reraise=True,
        )
        await retrying(self.driver.connect)
        self._connected = True

    async def _connect_failed(self, retry_state: RetryCallState) -> None:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        reason = exc.reason if isinstance(exc, DeviceError) else "connect failed"
        self._set_state("down", reason)
        await self.driver.close()
        await self._emit(self._all_bad(reason))

    def _all_bad(self, reason: str) -> list[Reading]:
        now = time.time()
        return [Reading.bad(tag, now, reason) for tag in self._tag_names]

    async def _emit(self, readings: list[Reading]) -> None:
        ts = max((r.ts for r in readings), default=time.time())
        batch = Batch(device=self.device.name, ts=ts, readings=readings)
        if any(r.quality is not Quality.GOOD for r in readings):
            self._m_errors.inc()
        try:
            await self._sink(batch)
        except Exception:
            # The buffer refused the batch (disk full, I/O error): it logs why; this device's
            # schedule goes on, and the next cycle tries again.
            log.debug("batch not committed", extra={"device": self.device.name}, exc_info=True)
        else:
            self._m_reads.inc()
        self.cycles += 1
        self.last_poll = time.time()
