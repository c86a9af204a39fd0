"""Counters derived at the edge: parts from a counter register (which wraps or is reset), energy
from an energy register or from integrated power. Totals survive restarts (``state()`` /
``restore()``), so a consumer sees one monotonic total whatever the register did."""

from __future__ import annotations

from collections import deque
from typing import Any

from agent.core.processing.config import CounterSpec


def increment(previous: float, current: float, rollover: int | None) -> float:
    """What a counter register counted between two readings.

    A decrease is a wrap when the register has a ``rollover`` and counting up across it is the
    shorter way (less than half the range); otherwise the counter was reset to zero and counted
    ``current`` since.
    """
    if current >= previous:
        return current - previous
    if rollover is not None:
        wrapped = rollover + 1 - previous + current
        if wrapped <= (rollover + 1) / 2:
            return wrapped
    return current


class Counter:
    def __init__(self, spec: CounterSpec) -> None:
        self.spec = spec
        self.total = 0.0  # parts, or kWh
        self._previous: float | None = None  # last register value, or last power (kW)
        self._previous_ts: float | None = None
        self._history: deque[tuple[float, float]] = deque()  # (ts, total) for the rate

    def update(self, value: float, ts: float) -> dict[str, Any]:
        """Feed one good reading; the outputs (``total`` and ``rate``, or ``kwh``)."""
        spec = self.spec
        if spec.kind == "power":
            kw = value * spec.scale
            if (
                self._previous is not None
                and self._previous_ts is not None
                and 0 < ts - self._previous_ts <= spec.max_gap
            ):
                self.total += (self._previous + kw) / 2.0 * (ts - self._previous_ts) / 3600.0
            self._previous, self._previous_ts = kw, ts
            return {"kwh": self.total}
        if self._previous is not None:
            self.total += increment(self._previous, value, spec.rollover) * spec.scale
        self._previous, self._previous_ts = value, ts
        if spec.kind == "energy":
            return {"kwh": self.total}
        history = self._history
        history.append((ts, self.total))
        while len(history) > 1 and ts - history[0][0] > spec.rate_window:
            history.popleft()
        t0, total0 = history[0]
        rate = (self.total - total0) / (ts - t0) * spec.rate_per if ts > t0 else 0.0
        return {"total": self.total, "rate": rate}

    def state(self) -> dict[str, Any]:
        return {"total": self.total, "previous": self._previous}

    def restore(self, saved: dict[str, Any]) -> None:
        self.total = float(saved.get("total", 0.0))
        previous = saved.get("previous")
        # The register's last value: the first reading after a restart counts what was made
        # while the agent was away. Power is not integrated across a restart (no timestamps).
        power = self.spec.kind == "power"
        self._previous = float(previous) if previous is not None and not power else None
