"""Aggregates over wall-clock-aligned windows: ``1m`` windows end on each minute, whenever the
agent started, so windows of different gateways and devices line up in the cloud."""

from __future__ import annotations

import math
from typing import Any

from agent.core.processing.config import WindowSpec


class Window:
    """One tag's current window. Good numeric readings go in; at the first reading at or past the
    window's end the closed window's stats come out, stamped with that end."""

    __slots__ = ("_count", "_end", "_first", "_last", "_max", "_min", "_sum", "_sumsq", "spec")

    def __init__(self, spec: WindowSpec) -> None:
        self.spec = spec
        self._end: float | None = None
        self._reset()

    def _reset(self) -> None:
        self._count = 0
        self._sum = 0.0
        self._sumsq = 0.0
        self._min = math.inf
        self._max = -math.inf
        self._first: float | None = None
        self._last: float | None = None

    def edge(self, ts: float) -> float:
        """End of the window holding ``ts``: the next multiple of ``length`` since the epoch."""
        length = self.spec.length
        return (math.floor(ts / length) + 1) * length

    def roll(self, ts: float) -> tuple[float, dict[str, Any]] | None:
        """Close the current window when ``ts`` is past its end: ``(end, stats)``; else None.

        A window in which nothing good was read yields only ``count`` 0 (when asked for), so a
        consumer sees the gap instead of a stale mean.
        """
        if self._end is None:
            self._end = self.edge(ts)
            return None
        if ts < self._end:
            return None
        end = self._end
        stats = self.stats()
        self._reset()
        self._end = self.edge(ts)
        return end, stats

    def add(self, value: float) -> None:
        self._count += 1
        self._sum += value
        self._sumsq += value * value
        self._min = min(self._min, value)
        self._max = max(self._max, value)
        if self._first is None:
            self._first = value
        self._last = value

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        n = self._count
        for stat in self.spec.stats:
            if stat == "count":
                out["count"] = n
            elif n == 0:
                continue
            elif stat == "min":
                out["min"] = self._min
            elif stat == "max":
                out["max"] = self._max
            elif stat == "mean":
                out["mean"] = self._sum / n
            elif stat == "sum":
                out["sum"] = self._sum
            elif stat == "first":
                out["first"] = self._first
            elif stat == "last":
                out["last"] = self._last
            elif stat == "stddev":
                mean = self._sum / n
                out["stddev"] = math.sqrt(max(0.0, self._sumsq / n - mean * mean))
        return out
