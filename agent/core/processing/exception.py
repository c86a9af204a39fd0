"""Report by exception: publish a value only when it moved beyond a deadband, or when it has been
silent for ``max_silence`` (a heartbeat), so a steady value costs nothing and a dead one is still
visible."""

from __future__ import annotations

from typing import Any


def _moved(last: Any, value: Any, deadband: float, percent: float | None) -> bool:
    if isinstance(value, bool) or isinstance(last, bool):
        return bool(value != last)
    if isinstance(value, int | float) and isinstance(last, int | float):
        band = abs(last) * percent / 100.0 if percent is not None else deadband
        diff = abs(value - last)
        return diff > band if band > 0 else diff != 0
    if isinstance(value, list) and isinstance(last, list) and len(value) == len(last):
        return any(_moved(a, b, deadband, percent) for a, b in zip(last, value, strict=True))
    return bool(value != last)


class Deadband:
    """The filter of one published value (a tag's raw value, or one of its counter outputs).

    The comparison is with the last *published* value, not the last read one: a slow drift of
    many small steps is published once it adds up to more than the deadband.
    """

    __slots__ = ("_last", "_last_ts", "deadband", "max_silence", "percent")

    def __init__(
        self, deadband: float | None, percent: float | None, max_silence: float | None
    ) -> None:
        self.deadband = deadband or 0.0
        self.percent = percent
        self.max_silence = max_silence
        self._last: Any = None
        self._last_ts: float | None = None

    def passes(self, value: Any, ts: float) -> bool:
        """Whether to publish ``value`` read at ``ts``; remembers it when it is published."""
        if (
            self._last_ts is None
            or (self.max_silence is not None and ts - self._last_ts >= self.max_silence)
            or _moved(self._last, value, self.deadband, self.percent)
        ):
            self._last, self._last_ts = value, ts
            return True
        return False

    def forget(self) -> None:
        """After a bad reading: the next good one is published whatever its value."""
        self._last_ts = None
