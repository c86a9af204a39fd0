"""Machine state from a device's tags, and the time spent in each state.

The first rule whose conditions all hold names the state, else ``default``; a batch in which
every tag is bad (the device is down) means ``down``. Time in state is accumulated between
batches of this process only, so a gateway switched off for a night adds nothing to any state;
the totals are restored from ``data_dir`` at start.
"""

from __future__ import annotations

import math
from typing import Any

from agent.core.processing.alarms import OPS
from agent.core.processing.config import StateSpec


class MachineState:
    def __init__(self, spec: StateSpec) -> None:
        self.spec = spec
        self._rules = [(rule.state, rule.conditions()) for rule in spec.rules]
        self.tags = {tag for _, conds in self._rules for tag, _, _ in conds}
        self.values: dict[str, float] = {}
        self.current: str | None = None
        self.since: float | None = None
        self.runtime: dict[str, float] = {}
        self._last_ts: float | None = None
        self._last_report: float | None = None

    def decide(self, down: bool) -> str:
        if down:
            return self.spec.down
        for state, conditions in self._rules:
            if all(
                tag in self.values and OPS[op](self.values[tag], threshold)
                for tag, op, threshold in conditions
            ):
                return state
        return self.spec.default

    def update(self, ts: float, down: bool) -> tuple[bool, bool]:
        """Advance to ``ts``: whether the state changed, and whether run time is due to report."""
        if self.current is not None and self._last_ts is not None and ts > self._last_ts:
            self.runtime[self.current] = self.runtime.get(self.current, 0.0) + ts - self._last_ts
        self._last_ts = ts if self._last_ts is None else max(ts, self._last_ts)
        state = self.decide(down)
        changed = state != self.current
        if changed:
            self.current, self.since = state, ts
            self.runtime.setdefault(state, 0.0)
        due = (
            changed or self._last_report is None or ts - self._last_report >= self.spec.report_every
        )
        if due:
            self._last_report = ts
        return changed, due

    def note(self, tag: str, value: Any) -> None:
        if isinstance(value, bool | int | float) and math.isfinite(float(value)):
            self.values[tag] = float(value)

    def forget(self, tag: str) -> None:
        self.values.pop(tag, None)

    def retained(self, ts: float) -> dict[str, Any]:
        """The retained ``<prefix>/<device>/state`` message."""
        return {
            "state": self.current,
            "since": round((self.since or ts) * 1000),
            "ts": round(ts * 1000),
            "runtime": {k: round(v, 3) for k, v in sorted(self.runtime.items())},
        }

    def state(self) -> dict[str, Any]:
        return {
            "runtime": dict(self.runtime),
            "current": self.current,
            "since": self.since,
            "last_ts": self._last_ts,
        }

    def restore(self, saved: dict[str, Any], resume: bool = False) -> None:
        """The run time totals; with ``resume`` (a config reload in the same process) also the
        current state and clock, so the time since the last batch still counts."""
        runtime = saved.get("runtime", {})
        if isinstance(runtime, dict):
            self.runtime = {str(k): float(v) for k, v in runtime.items()}
        if resume:
            self.current, self.since = saved.get("current"), saved.get("since")
            self._last_ts = saved.get("last_ts")
            self._last_report = self._last_ts
