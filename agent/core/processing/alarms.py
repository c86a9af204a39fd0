"""Alarms on one value of a tag: level thresholds with hysteresis and delay, rate of change, and
an anomaly score (z-score against an EWMA mean and variance learnt on the machine itself).

Each alarm is a small state machine: ``on`` must hold for ``for`` seconds to raise, ``off`` (or
``on`` no longer holding) for ``for`` seconds to clear. With ``on: "> 7.1"`` and ``off: "< 6.5"``
a value wandering around 7.1 raises once and does not chatter.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agent.core.processing.config import AlarmSpec, parse_condition
from agent.core.processing.values import tidy

OPS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
}
#: Values kept in an event: those that held the condition during ``for`` (the latest ones).
EVIDENCE = 20


def predicate(text: str) -> Callable[[float], bool]:
    op, threshold = parse_condition(text)
    fn = OPS[op]
    return lambda x: fn(x, threshold)


@dataclass
class Event:
    """An alarm raise or clear, as published on ``<prefix>/<device>/event``."""

    ts: float
    doc: dict[str, Any]


@dataclass
class _Ewma:
    mean: float = 0.0
    var: float = 0.0
    n: int = 0
    started: float | None = None
    last: float | None = None  # ts of the last update

    def update(self, x: float, ts: float, half_life: float) -> None:
        dt = ts - self.last if self.last is not None else 0.0
        self.last = ts
        # dt's worth of forgetting, but never less than a plain average's weight: the first
        # values then give an honest mean and variance instead of one frozen on the first value.
        alpha = max(1.0 - 0.5 ** (max(dt, 0.0) / half_life), 1.0 / (self.n + 1))
        if self.n == 0:
            self.mean, self.var = x, 0.0
        else:
            diff = x - self.mean
            incr = alpha * diff
            self.mean += incr
            self.var = (1 - alpha) * (self.var + diff * incr)
        self.n += 1


@dataclass
class Alarm:
    spec: AlarmSpec
    tag: str
    active: bool = False
    _pending_since: float | None = None
    _evidence: list[float] = field(default_factory=list)
    _previous: tuple[float, float] | None = None  # (ts, value) for rate
    ewma: _Ewma = field(default_factory=_Ewma)
    #: predicted: the fit behind the latest ttt_h_low, carried in events as evidence.
    prediction: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        self._on_text, self._off_text = self.spec.conditions()
        self._on = predicate(self._on_text)
        off = self._off_text
        self._off = predicate(off) if off is not None else (lambda x: not self._on(x))

    @property
    def watched(self) -> str:
        """The published name the alarm watches: ``vibration`` or ``vibration.rms`` (predicted:
        ``vibration.velocity_rms.ttt_h_low``)."""
        name = self.tag if self.spec.value is None else f"{self.tag}.{self.spec.value}"
        return f"{name}.ttt_h_low" if self.spec.mode == "predicted" else name

    def measure(self, value: float, ts: float) -> float | None:
        """What the condition is applied to: the value, its rate, or its z-score (None while
        there is nothing to judge yet: the first value of a rate, an anomaly still learning)."""
        spec = self.spec
        if spec.mode in ("level", "predicted"):  # predicted: ttt_h_low, inf when none
            return value
        if spec.mode == "rate":
            previous, self._previous = self._previous, (ts, value)
            if previous is None or ts <= previous[0]:
                return None
            return (value - previous[1]) / (ts - previous[0]) * spec.per
        stats = self.ewma
        if stats.started is None:
            stats.started = ts
        learning = ts - stats.started < spec.learn or stats.n < 2
        z = None
        if not learning:
            sd = math.sqrt(stats.var)
            z = (value - stats.mean) / sd if sd > 0 else 0.0
        if not self.active:  # a fault must not teach the model that it is normal
            stats.update(value, ts, spec.half_life)
        return z

    def pause(self) -> None:
        """Outside the alarm's states: nothing is judged and a pending delay starts over."""
        self._pending_since = None
        self._evidence.clear()
        self._previous = None

    def update(self, value: float, ts: float, device: str) -> tuple[Event | None, float | None]:
        """Feed one value; an event when the alarm raises or clears, and the measure."""
        x = self.measure(value, ts)
        if x is None:
            return None, None
        holds = self._off(x) if self.active else self._on(x)
        if not holds:
            self._pending_since = None
            self._evidence.clear()
            return None, x
        if self._pending_since is None:
            self._pending_since = ts
        if math.isfinite(x):
            self._evidence.append(tidy(x, 6))
        del self._evidence[:-EVIDENCE]
        if ts - self._pending_since < self.spec.for_:
            return None, x
        self.active = not self.active
        event = Event(ts, self._doc(device, x, value, ts))
        self._pending_since = None
        self._evidence.clear()
        return event, x

    def _doc(self, device: str, x: float, value: float, ts: float) -> dict[str, Any]:
        spec = self.spec
        doc: dict[str, Any] = {
            "ts": round(ts * 1000),
            "event": "raise" if self.active else "clear",
            "alarm": spec.name,
            "tag": self.watched,
            "severity": spec.severity,
            "mode": spec.mode,
            "condition": self._on_text if self.active else (self._off_text or f"not {spec.on}"),
            "value": tidy(value) if math.isfinite(value) else None,
            "since": round((self._pending_since or ts) * 1000),
            "values": list(self._evidence),
        }
        if spec.mode not in ("level", "predicted"):
            doc["measure"] = tidy(x)
        if spec.mode == "predicted" and self.prediction is not None:
            doc["prediction"] = self.prediction
        if spec.mode == "anomaly":
            doc["mean"] = tidy(self.ewma.mean)
            doc["stddev"] = tidy(math.sqrt(self.ewma.var))
        return doc

    def state(self) -> dict[str, Any]:
        e = self.ewma
        return {
            "active": self.active,
            "mean": e.mean,
            "var": e.var,
            "n": e.n,
            "started": e.started,
            "last": e.last,
        }

    def restore(self, saved: dict[str, Any]) -> None:
        self.active = bool(saved.get("active", False))
        self.ewma = _Ewma(
            float(saved.get("mean", 0.0)),
            float(saved.get("var", 0.0)),
            int(saved.get("n", 0)),
            saved.get("started"),
            saved.get("last"),
        )
