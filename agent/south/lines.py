"""Devices that share a line (several instruments on one RS-485 port) polled from one task.

A line carries one request at a time, so its devices cannot each have a task of their own (they
would talk over each other); one task per line serialises them instead, and takes the device whose
tick is earliest next, so devices with different poll intervals each keep their own drift-free
cadence and share the line fairly. A line too busy for its devices' intervals makes them late:
each counts its overruns and skips its missed ticks, as a lone device does, and nothing piles up.
A device with tags at rates of their own has a cadence per rate group, and its turn polls the
group whose tick is earliest, the fastest of those due (``PolledDevice.next_group``); a slow
group may stop for a faster one and go on in a later turn (``Driver.poll_group_until``).

A device that fails (cannot connect, or its poll times out) must not hold the line: its next
attempt is given a time from the backoff strategy (tenacity's exponential wait with jitter), and
the line serves the others meanwhile. An ``AsyncRetrying`` loop would sleep with the line held. So a
dead unit costs the others its poll's timeout once per attempt, attempts spaced ever wider.

Writes to a device on the line take the line's lock (every device's ``turn`` is the same lock),
which each turn holds while it connects and polls: a write goes on the line between two turns,
never inside one (see ``agent.south.scheduler``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Sequence

from tenacity import AsyncRetrying, RetryCallState

from agent.core.commit_by import COMMIT_BY
from agent.ops.metrics import Metrics
from agent.south.scheduler import BatchSink, Cadence, PolledDevice, StatusSink, device_backoff
from drivers.base import DeviceBase, DeviceError, Driver, Line

log = logging.getLogger(__name__)


class _Slot:
    """One device's place on the line: a cadence per rate group (one unless its tags have rates
    of their own), or while it fails, its next attempt."""

    def __init__(self, device: PolledDevice, start: float) -> None:
        self.device = device
        self.cadences = [Cadence(g.every, start) for g in device.groups]
        self.group = 0  # the rate group its next turn polls
        self.retry_at: float | None = None  # set while backed off
        self.attempts = RetryCallState(AsyncRetrying(), None, (), {})
        self.attempts.attempt_number = 0
        self.served = 0  # when it last had the line, in turns: ties go to the longest waiting

    @property
    def due(self) -> float:
        if self.retry_at is not None:
            return self.retry_at
        return min(c.due for c in self.cadences)


class LinePoller:
    """Polls the devices of one line, one at a time, each on its own cadence."""

    def __init__(
        self,
        line: Line,
        devices: Sequence[tuple[DeviceBase, Driver]],
        sink: BatchSink,
        status: StatusSink,
        metrics: Metrics,
        *,
        backoff_initial: float = 1.0,
        backoff_max: float = 60.0,
    ) -> None:
        self.line = line
        self.devices = [PolledDevice(d, drv, sink, status, metrics) for d, drv in devices]
        self.lock = asyncio.Lock()
        for polled in self.devices:
            polled.driver.use_line(line)
            polled.turn = self.lock
        self._wait = device_backoff(backoff_initial, backoff_max)

    async def run(self) -> None:
        """Poll until cancelled; cancellation closes the drivers, then the line."""
        try:
            await self._loop()
        finally:
            for polled in self.devices:
                with contextlib.suppress(Exception):
                    await polled.driver.close()
            await self.line.close()

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        slots = [_Slot(polled, start) for polled in self.devices]
        turns = itertools.count(1)
        while True:
            slot = min(slots, key=lambda s: (s.due, s.served))
            if slot.retry_at is None:
                slot.group = slot.device.next_group(slot.cadences, max(slot.due, loop.time()))
            await asyncio.sleep(max(0.0, slot.due - loop.time()))
            slot.served = next(turns)
            # The batch may wait for the commit window until the line's next turn is due
            # (at once when another device is already waiting for the line).
            nexts = [s.due for s in slots if s is not slot]
            if slot.retry_at is None:
                nexts.append(slot.device.next_start(slot.cadences, slot.group))
            COMMIT_BY.set(min(nexts) if nexts else None)
            began = loop.time()
            async with self.lock:
                ok = await self._turn(slot, loop)
            now = loop.time()
            if not ok:
                slot.attempts.attempt_number += 1
                slot.retry_at = now + self._wait(slot.attempts)
                continue
            if slot.retry_at is not None:  # back: its ticks while down were not missed
                slot.retry_at = None
                slot.attempts.attempt_number = 0
                for cadence in slot.cadences:
                    cadence.resume(began)
            if slot.device.finished:  # else it stays due, and goes on after the faster group
                slot.device.polled(slot.cadences[slot.group], now)

    async def _turn(self, slot: _Slot, loop: asyncio.AbstractEventLoop) -> bool:
        """Connect when needed, then poll the slot's next rate group; False (one all-bad batch
        emitted) when either fails."""
        polled = slot.device
        if not polled.connected:
            try:
                await polled.driver.connect()
            except DeviceError as exc:
                await polled.lost(exc.reason)
                return False
            polled.connected = True
        until = polled.faster_due(slot.cadences, slot.group)
        return await polled.poll_once(loop, slot.group, until)
