"""Time to threshold of one value of a tag (``predict:``): its values aggregated into points
(the median over ``every``, taken only in the ``when`` states), the points kept bounded
(``history``) and saved in the device's state file, and a trend fitted on them
(``agent.core.processing.trend``) each time a point is added.

Why medians over a bucket: a trend over weeks needs one honest level per hour, not every
reading; the median ignores the odd spike and a start-up transient. Why only in some states: a
pump's vibration while idle, or a half load, is not its wear. The figures are published once
``min_points`` points exist and then after every new point: ``<name>.trend`` (units per day,
the fit's slope now), ``<name>.ttt_h`` (hours until the fitted curve reaches the threshold) and
``<name>.ttt_h_low`` (hours until its confidence band does: the earlier time, at the
configured confidence); both only when a crossing is predicted within the horizon.
"""

from __future__ import annotations

import bisect
import math
from array import array
from dataclasses import dataclass
from typing import Any

from agent.core.processing.config import PredictSpec

#: The values of one bucket kept for its median: beyond this, every other one is dropped (the
#: median of a decimated stream is as good, and a fast poll cannot grow memory).
BUCKET_VALUES = 4096
#: No prediction keeps more points than this, whatever its history and every say.
MAX_POINTS = 20_000


@dataclass(frozen=True)
class Figures:
    """What one fit gives: published as readings, and carried by predicted alarms' events."""

    trend: float  # units per day, now
    ttt_h: float | None
    ttt_h_low: float | None
    evidence: dict[str, Any]

    def readings(self) -> dict[str, float]:
        out = {"trend": self.trend}
        if self.ttt_h is not None and self.ttt_h_low is not None:
            out["ttt_h"] = self.ttt_h
            out["ttt_h_low"] = self.ttt_h_low
        return out


class Predictor:
    def __init__(self, spec: PredictSpec, name: str, threshold: float) -> None:
        self.spec = spec
        self.name = name  # the published prefix: bearing_temp, vibration.velocity_rms
        self.threshold = threshold
        # (ts, median) of each point, oldest first, in two arrays of doubles: 16 bytes a point
        # (a year of hourly points: 140 KiB), where a list of tuples would take 88.
        self._ts = array("d")
        self._values = array("d")
        self._bucket: int | None = None  # index of the bucket being filled (ts // every)
        self._bucket_values: list[float] = []
        self._ts_sum = 0.0
        self._ts_n = 0
        self.latest: Figures | None = None

    def add(self, value: float, ts: float) -> bool:
        """Take one value; True when a point was completed (time to fit again)."""
        bucket = int(ts // self.spec.every)
        closed = False
        if self._bucket is not None and bucket != self._bucket and self._bucket_values:
            self._close()
            closed = True
        if self._bucket is None or bucket != self._bucket:
            self._bucket, self._bucket_values, self._ts_sum, self._ts_n = bucket, [], 0.0, 0
        self._bucket_values.append(value)
        self._ts_sum += ts
        self._ts_n += 1
        if len(self._bucket_values) >= BUCKET_VALUES:
            del self._bucket_values[::2]
        return closed

    def _close(self) -> None:
        values = sorted(self._bucket_values)
        n = len(values)
        median = values[n // 2] if n % 2 else (values[n // 2 - 1] + values[n // 2]) / 2
        ts = self._ts_sum / self._ts_n
        if self._ts and ts <= self._ts[-1]:
            return  # the clock went back: keep the history monotonic
        self._ts.append(ts)
        self._values.append(median)
        oldest = ts - self.spec.history
        cap = min(MAX_POINTS, int(self.spec.history // self.spec.every) + 1)
        drop = bisect.bisect_left(self._ts, oldest)
        drop = max(drop, len(self._ts) - cap)
        if drop:
            del self._ts[:drop]
            del self._values[:drop]

    @property
    def points(self) -> list[tuple[float, float]]:
        """(ts, median) of every point kept, oldest first (a copy)."""
        return list(zip(self._ts, self._values, strict=True))

    @property
    def ready(self) -> bool:
        return len(self._ts) >= self.spec.min_points

    def fit(self, points: list[tuple[float, float]]) -> Figures:
        """The trend and the crossing from ``points`` (blocking numpy: run it off the loop)."""
        import numpy as np

        from agent.core.processing.trend import best_fit, crossing, figures

        last = points[-1][0]
        t = np.array([(p[0] - last) / 86400.0 for p in points])
        y = np.array([p[1] for p in points])
        fit = best_fit(t, y)
        spec = self.spec
        cross = crossing(
            fit, self.threshold, spec.horizon / 86400.0, spec.confidence, spec.direction == "up"
        )
        evidence = {
            **figures(fit),
            "threshold": self.threshold,
            "confidence": spec.confidence,
            "level": _round(float(fit.value(np.zeros(1))[0])),
        }
        return Figures(_round(fit.slope()), cross.hours, cross.hours_low, evidence)

    def published(self, figures: Figures, ts: float) -> dict[str, float]:
        """The figures as of ``ts``: the crossing counted from then, not from the last point."""
        self.latest = figures
        late = (ts - self._ts[-1]) / 3600.0 if self._ts else 0.0
        out: dict[str, float] = {}
        for key, value in figures.readings().items():
            if key == "trend":
                out[key] = value
            else:
                out[key] = float(f"{max(value - late, 0.0):.4g}")  # 4 digits: 0.01 h is 36 s
        return out

    # -- persistence ------------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        return {"points": [[round(ts, 3), v] for ts, v in zip(self._ts, self._values, strict=True)]}

    def restore(self, saved: dict[str, Any]) -> None:
        points = saved.get("points")
        if not isinstance(points, list):
            return
        kept: list[tuple[float, float]] = []
        for p in points:
            if (
                isinstance(p, list)
                and len(p) == 2
                and all(isinstance(x, int | float) and math.isfinite(x) for x in p)
                and (not kept or p[0] > kept[-1][0])
            ):
                kept.append((float(p[0]), float(p[1])))
        kept = kept[-MAX_POINTS:]
        self._ts = array("d", (p[0] for p in kept))
        self._values = array("d", (p[1] for p in kept))


def _round(x: float) -> float:
    return float(f"{x:.6g}") if math.isfinite(x) else 0.0
