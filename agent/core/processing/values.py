"""Small conversions every processing stage shares."""

from __future__ import annotations

import math
from typing import Any

#: What a waveform feature is: a number, or a label (an ISO zone, a dominant band).
FeatureValue = float | str


def number(value: Any) -> float | None:
    """A scalar's value as a float for windows, counters, alarms and state; None otherwise."""
    kind = type(value)
    if kind is float:  # the common case first: this runs for every reading
        return value if math.isfinite(value) else None
    if kind is int or kind is bool:
        return float(value)
    if isinstance(value, int | float):  # subclasses (numpy scalars)
        result = float(value)
        return result if math.isfinite(result) else None
    return None


def tidy(value: Any, digits: int = 9) -> Any:
    """A computed float with the binary noise of its arithmetic removed (``65.13999999999987``
    is ``65.14``): shorter payloads on a metered uplink, and what a person expects to read.
    Waveform features keep 6 significant digits, more than their estimates are worth."""
    if isinstance(value, float) and math.isfinite(value):
        return float(f"{value:.{digits}g}")
    return value
