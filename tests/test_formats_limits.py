"""Every cloud format keeps each message within its platform's size limit, even for one batch
larger than a message, and acknowledges that batch once, with its last message."""

from __future__ import annotations

import json
from typing import Any

import pytest

from agent.core.buffer import StoredBatch
from agent.north.formats import Format
from agent.north.formats.alibaba import AlibabaFormat
from agent.north.formats.aws import AwsIotFormat
from agent.north.formats.azure import AzureIotFormat
from agent.north.formats.huawei import HuaweiFormat
from agent.north.formats.thingsboard import ThingsBoardFormat

LIMIT = 4096
VALUES = {f"tag{i:04d}": i * 0.5 for i in range(1500)}  # about 25KB as JSON


def _values(fmt: Format, payload: dict[str, Any]) -> dict[str, Any]:
    """The tag values a message carries, whatever the dialect."""
    if isinstance(fmt, ThingsBoardFormat):
        return {k: v for e in payload["press-1"] for k, v in e["values"].items()}
    if isinstance(fmt, AlibabaFormat):
        props = payload["params"]["subDevices"][0]["properties"]
        return {k: v["value"] for k, v in props.items()}
    if isinstance(fmt, HuaweiFormat):
        return dict(payload["devices"][0]["services"][0]["properties"])
    return dict(payload["values"])


FORMATS = [
    ThingsBoardFormat(["press-1"], max_payload=LIMIT),
    AlibabaFormat("pk", "gw", {"press-1": ("sub", "press-1")}, max_payload=LIMIT),
    HuaweiFormat("gw", {"press-1": "p_press-1"}, max_payload=LIMIT),
    AwsIotFormat("gw", "edge/gw", max_payload=LIMIT),
    AzureIotFormat("gw", "hub.azure-devices.net", "gw", max_payload=LIMIT),
]


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.name)
def test_one_batch_larger_than_a_message(fmt: Format) -> None:
    body = json.dumps({"ts": 5, "values": VALUES}).encode()
    small = json.dumps({"ts": 6, "values": {"a": 1}}).encode()
    rows = [
        StoredBatch(1, "press-1", "data", 1, 5, body, 0.0),
        StoredBatch(2, "press-1", "data", 2, 6, small, 0.0),
    ]
    packs = fmt.pack(rows)
    assert all(p.message is not None and len(p.message.payload) <= LIMIT for p in packs)
    acked = [r.id for p in packs for r in p.rows]
    assert acked == [1, 2]
    big = [p for p in packs if not p.rows or p.rows[0].id == 1]
    joined: dict[str, Any] = {}
    for p in big:
        assert p.message is not None
        joined.update(_values(fmt, json.loads(p.message.payload)))
    assert joined == VALUES
