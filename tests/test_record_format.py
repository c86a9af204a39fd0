"""The stored record and the contract's JSON payload built from it."""

from __future__ import annotations

import json
import logging

from agent.core.buffer import StoredBatch
from agent.core.record import decode_body, encode_batch
from agent.north.formats import JsonFormat
from agent.ops.logs import JsonFormatter, TextFormatter
from agent.south.commands import MAX_COMMAND_BYTES, CommandHandler
from drivers.base import Batch, DeviceBase, Quality, Reading, TagBase


def _batch() -> Batch:
    ts = 1763884800.1234
    return Batch(
        device="press-1",
        ts=ts,
        readings=[
            Reading("voltage_l1", 229.8, ts),
            Reading("door_open", False, ts),
            Reading("serial_no", "PUMP-07!", ts),
            Reading("oil_temp", 61.5, ts, Quality.UNCERTAIN, "stale"),
            Reading.bad("energy", ts, "exception 2 (illegal data address)"),
        ],
    )


def test_payload_matches_contract_exactly() -> None:
    body = encode_batch(_batch())
    row = StoredBatch(
        id=7, device="press-1", kind="data", seq=1042, ts_ms=1763884800123, body=body, created=0.0
    )
    fmt = JsonFormat("line1-gw", "edge/line1-gw")
    assert fmt.data_topic("press-1") == "edge/line1-gw/press-1/data"
    doc = json.loads(fmt.encode(row))
    assert doc == {
        "agent": "line1-gw",
        "device": "press-1",
        "seq": 1042,
        "ts": 1763884800123,
        "values": {
            "voltage_l1": 229.8,
            "door_open": False,
            "serial_no": "PUMP-07!",
            "oil_temp": 61.5,
        },
        "quality": {
            "oil_temp": "uncertain: stale",
            "energy": "bad: exception 2 (illegal data address)",
        },
    }
    assert list(doc)[:4] == ["agent", "device", "seq", "ts"]


def test_quality_absent_when_all_good_and_nan_becomes_bad() -> None:
    good = Batch(
        "d", 1.0, [Reading("a", 1, 1.0), Reading("b", 2.5, 1.0), Reading("c", [1, 2.5], 1.0)]
    )
    doc = decode_body(encode_batch(good))
    assert "quality" not in doc and doc["values"] == {"a": 1, "b": 2.5, "c": [1, 2.5]}
    readings = [Reading("a", float("nan"), 1.0), Reading("b", [1.0, float("inf")], 1.0)]
    readings.append(Reading("c", float("-inf"), 1.0))
    doc = decode_body(encode_batch(Batch("d", 1.0, readings)))
    assert doc["values"] == {}
    assert doc["quality"] == {k: "bad: not a number" for k in "abc"}


def test_status_payloads() -> None:
    fmt = JsonFormat("gw", "edge/gw")
    assert json.loads(fmt.gateway_status(False)) == {"online": False}
    online = json.loads(fmt.gateway_status(True))
    assert online["online"] is True and isinstance(online["ts"], int)
    assert json.loads(fmt.device_status("down", 5, "timeout")) == {
        "state": "down",
        "ts": 5,
        "reason": "timeout",
    }
    assert fmt.device_status_topic("press-1") == "edge/gw/press-1/status"
    assert fmt.command_reply_topic("press-1") == "edge/gw/press-1/cmd/reply"


class _Dev(DeviceBase):
    tags: list[TagBase]


async def test_every_command_gets_an_error_reply_and_nothing_is_written() -> None:
    handler = CommandHandler(
        {"press-1": _Dev(name="press-1", driver="x", tags=[TagBase(name="t")])}
    )
    cases = {
        b"not json": (None, "not JSON"),
        b"[1,2]": (None, "JSON object"),
        b'{"write": {"t": 1}}': (None, "'id' must be a string"),
        b'{"id": 5, "write": {"t": 1}}': (None, "'id' must be a string"),
        b'{"id": "a", "write": {}}': ("a", "'write' must be"),
        b'{"id": "a", "write": {"t": 1}, "x": 1}': ("a", "unknown key"),
        b'{"id": "a", "write": {"nope": 1}}': ("a", "unknown tag 'nope'"),
        b'{"id": "a", "write": {"t": 1}}': ("a", "tag 't' is not writable"),
        b"\xff\xfe": (None, "not JSON"),
        b" " * (MAX_COMMAND_BYTES + 1): (None, "too large"),
    }
    for payload, (cmd_id, error) in cases.items():
        reply = await handler.handle("press-1", payload)
        assert reply["ok"] is False and reply["id"] == cmd_id, payload
        assert error in reply["error"], (payload, reply)
    reply = await handler.handle("other", b'{"id": "a", "write": {"t": 1}}')
    assert "unknown device" in reply["error"]


def test_log_formatters_carry_extras() -> None:
    rec = logging.LogRecord("agent.x", logging.WARNING, __file__, 1, "device down", None, None)
    rec.device = "press-1"
    rec.reason = "connection refused"
    text = TextFormatter().format(rec)
    assert text.endswith('WARNING agent.x device down device=press-1 reason="connection refused"')
    doc = json.loads(JsonFormatter().format(rec))
    assert doc["msg"] == "device down" and doc["device"] == "press-1" and doc["level"] == "warning"
