"""Is the gateway's clock worth trusting, and timestamps that never run backwards per device.

Every ``ts`` the agent publishes comes from the gateway's wall clock. A Pi has no battery-backed
clock: until NTP has synchronised it after boot it may say 1970 or last shutdown's time, and a
later NTP step moves it. The agent cannot fix that, but it says so (a log line per change, the
``edge_agent_clock_synchronized`` gauge, the status page), and it guarantees what consumers rely
on: within one device's stream ``ts`` never decreases. A batch stamped at or before its
predecessor is given the predecessor's time plus 1 ms and counted
(``edge_agent_timestamps_clamped_total{device}``).

Synchronisation is read from the kernel with ``adjtimex(2)``, the call ``timedatectl``'s
``NTPSynchronized`` is computed from, so it works whichever NTP client runs (systemd-timesyncd,
chrony, ntpd) and needs no D-Bus: the clock counts as synchronised when the kernel's maximum
error estimate is below 16 s and the clock state is not ``TIME_ERROR``. (``STA_UNSYNC`` alone is
not used: chrony leaves it set when it does not sync the RTC, as systemd's own check notes.)
Where ``adjtimex`` is missing, ``timedatectl show -p NTPSynchronized`` is asked; where both fail
the state is unknown (-1 on the gauge), never guessed.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator

from prometheus_client import Gauge
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

_TIME_ERROR = 5
_MAXERROR_LIMIT_US = 16_000_000  # the kernel's NTP_PHASE_LIMIT: beyond it, nothing is known


class _Timex(ctypes.Structure):
    """The head of ``struct timex``; the tail is padding the kernel may write into."""

    _fields_ = [
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("_rest", ctypes.c_byte * 256),
    ]


def adjtimex_synchronized() -> bool | None:
    """The kernel's view (modes 0: read only), or None where the call is unavailable."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        call = libc.adjtimex
    except (OSError, AttributeError):
        return None
    timex = _Timex()
    state = call(ctypes.byref(timex))
    if state < 0:
        return None
    return bool(state != _TIME_ERROR and timex.maxerror < _MAXERROR_LIMIT_US)


def timedatectl_synchronized() -> bool | None:
    """systemd's answer over D-Bus; None without timedatectl or a running systemd."""
    exe = shutil.which("timedatectl")
    if exe is None:
        return None
    try:
        out = subprocess.run(
            [exe, "show", "-p", "NTPSynchronized", "--value"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    value = out.stdout.strip()
    return {"yes": True, "no": False}.get(value) if out.returncode == 0 else None


def clock_synchronized() -> bool | None:
    found = adjtimex_synchronized()
    return found if found is not None else timedatectl_synchronized()


class ClockWatch:
    """Checks synchronisation now and then, and notices steps of the wall clock.

    ``probe`` is injectable so tests can play an NTP client gaining and losing sync.
    """

    def __init__(
        self,
        gauge: Gauge,
        probe: Callable[[], bool | None] = clock_synchronized,
        interval: float = 30.0,
    ) -> None:
        self._gauge = gauge
        self._probe = probe
        self.interval = interval
        self.synchronized: bool | None = None
        self._checked = False
        self._offset = time.time() - time.monotonic()
        self.steps = 0  # wall-clock steps seen (NTP corrections, someone setting the date)

    def check(self) -> bool | None:
        """Probe once; log when the state changed (and at the first check when it is bad)."""
        state = self._probe()
        self._gauge.set(-1 if state is None else int(state))
        first, self._checked = not self._checked, True
        if first or state != self.synchronized:
            if state is False:
                log.warning(
                    "system clock is not synchronised: timestamps may be wrong "
                    "(check the NTP client: timedatectl timesync-status)"
                )
            elif state is True and not first:
                log.info("system clock synchronised")
            elif state is None and first:
                log.info("cannot tell whether the system clock is synchronised")
        self.synchronized = state
        self._notice_step()
        return state

    def _notice_step(self) -> None:
        offset = time.time() - time.monotonic()
        delta = offset - self._offset
        self._offset = offset
        if abs(delta) >= 1.0:
            self.steps += 1
            log.warning("system clock stepped", extra={"by_s": round(delta, 3)})

    async def run(self) -> None:
        """Check every ``interval`` until cancelled (the probe may spawn timedatectl: a thread)."""
        while True:
            await asyncio.to_thread(self.check)
            await asyncio.sleep(self.interval)


class DeviceStamps(Collector):
    """Per-device high-water mark of batch timestamps, in the contract's milliseconds.

    One instance sits where every batch of every driver passes (the pipeline's ``submit``), so no
    driver has to get this right by itself. Exported as
    ``edge_agent_timestamps_clamped_total{device}``.
    """

    def __init__(self) -> None:
        self._last: dict[str, int] = {}
        self._clamped: dict[str, int] = {}
        self._lock = threading.Lock()  # collect() runs on the HTTP server's thread

    def clamp(self, device: str, ts: float) -> float:
        """``ts``, or just after the device's previous batch when ``ts`` is not later."""
        ms = round(ts * 1000)
        last = self._last.get(device)
        if last is not None and ms <= last:
            ms = last + 1
            with self._lock:
                self._clamped[device] = self._clamped.get(device, 0) + 1
            ts = ms / 1000
        self._last[device] = ms
        return ts

    def clamped(self, device: str | None = None) -> int:
        with self._lock:
            if device is not None:
                return self._clamped.get(device, 0)
            return sum(self._clamped.values())

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "edge_agent_timestamps_clamped",
            "Batches whose timestamp was not after the device's previous one (clock stepped back) "
            "and was set to the previous plus 1 ms",
            labels=["device"],
        )
        with self._lock:
            items = sorted(self._clamped.items())
        for device, count in items:
            family.add_metric([device], count)
        yield family
