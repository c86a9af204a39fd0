"""The buffered form of a batch: the contract's payload minus the fields the publisher adds.

A batch is stored as compact JSON ``{"ts": ms, "values": {...}, "quality": {...}}``. The json
format then only splices ``agent``, ``device`` and ``seq`` in front (no decode, no re-encode on the
hot path), and other formats can still decode it. Values the contract cannot carry (NaN and
infinities are not JSON) become bad readings here, once, for every driver.
"""

from __future__ import annotations

import json
import math
from math import isfinite
from typing import Any

from drivers.base import Batch, Quality

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode


def _finite(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list):
        return all(_finite(v) for v in value)
    return True


def encode_batch(batch: Batch) -> bytes:
    """Serialise a batch for the buffer. Bad readings carry no value, only their quality.

    Runs for every reading the agent takes, so a good scalar (nearly all of them) is one type
    check and one dict store; the rest take the general path below it."""
    values: dict[str, Any] = {}
    quality: dict[str, str] = {}
    ts_source: dict[str, int] = {}
    batch_ts = ts_ms(batch.ts)
    good = Quality.GOOD
    for r in batch.readings:
        value = r.value
        kind = type(value)
        if (
            r.quality is good
            and r.source_ts is None
            and (
                kind is int
                or kind is str
                or kind is bool
                or (type(value) is float and isfinite(value))
            )
        ):
            values[r.tag] = value
            continue
        if r.quality is not Quality.BAD and value is not None and not _finite(value):
            quality[r.tag] = "bad: not a number"
            continue
        if r.quality is not Quality.BAD and value is not None:
            values[r.tag] = value
            if r.source_ts is not None and ts_ms(r.source_ts) != batch_ts:
                ts_source[r.tag] = ts_ms(r.source_ts)
        if r.quality is not good:
            quality[r.tag] = f"{r.quality.value}: {r.reason or 'unknown'}"
    doc: dict[str, Any] = {"ts": batch_ts, "values": values}
    if quality:
        doc["quality"] = quality
    if ts_source:
        # Compatible extension: when the device stamped a value itself (OPC UA source
        # timestamp) and that differs from the batch time, tag to ms; absent otherwise.
        doc["ts_source"] = ts_source
    return _dumps(doc).encode()


def decode_body(body: bytes) -> dict[str, Any]:
    """The stored record as a dict, for formats that need the values themselves."""
    doc: dict[str, Any] = json.loads(body)
    return doc


def ts_ms(ts: float) -> int:
    """Seconds since the epoch to the contract's integer milliseconds."""
    return round(ts * 1000)
