"""Splitting one batch that is larger than a platform's message limit.

The contract's payload is one object per batch; a platform limit (AWS 128KB, Azure 256KB) that
one batch exceeds (thousands of tags, long arrays) splits its ``values`` and ``quality`` over
several messages that each carry the full key (agent, device, seq, ts) plus ``part`` and
``parts``, so a consumer joins them by (agent, device, seq) and ``part``.
"""

from __future__ import annotations

import json
from typing import Any

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def split_doc(doc: dict[str, Any], limit: int) -> list[dict[str, Any]]:
    """``doc`` (a contract payload) as parts whose JSON each fits ``limit`` where possible."""
    if len(_dumps(doc).encode()) <= limit:
        return [doc]
    head = {k: v for k, v in doc.items() if k not in ("values", "quality")}
    base = len(_dumps({**head, "part": 99999, "parts": 99999, "values": {}, "quality": {}}))
    items = [("values", k, v) for k, v in doc.get("values", {}).items()]
    items += [("quality", k, v) for k, v in doc.get("quality", {}).items()]
    parts: list[dict[str, Any]] = []
    current: dict[str, dict[str, Any]] = {"values": {}}
    size = base
    for field, key, value in items:
        piece = len(_dumps({key: value}).encode())
        if size + piece > limit and any(current.values()):
            parts.append(current)
            current, size = {"values": {}}, base
        current.setdefault(field, {})[key] = value
        size += piece
    parts.append(current)
    return [
        {
            **head,
            "part": i,
            "parts": len(parts),
            **{k: v for k, v in p.items() if v or k == "values"},
        }
        for i, p in enumerate(parts, 1)
    ]


def chunks(values: dict[str, Any], limit: int) -> list[dict[str, Any]]:
    """``values`` cut into dicts whose JSON stays within ``limit`` bytes (a single value larger
    than that travels alone: nothing smaller can carry it)."""
    out: list[dict[str, Any]] = [{}]
    size = 2
    for key, value in values.items():
        piece = len(_dumps({key: value}).encode())
        if out[-1] and size + piece > limit:
            out.append({})
            size = 2
        out[-1][key] = value
        size += piece
    return out
