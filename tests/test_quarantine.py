"""A batch the format cannot pack is quarantined: kept, counted, logged once, shown, released.

Before, such a row was acknowledged as done (deleted unsent): alarm events vanished in four
formats. The buffer keeps a held row with its id and seq; the publisher never fetches it again
in that process; a restart or a reload that rebuilds the format releases it for another try.
"""

from __future__ import annotations

import io
import json
import logging
import random
import sqlite3
from collections.abc import Sequence
from pathlib import Path

import pytest

from agent.app.status_cli import print_status
from agent.core.buffer import Buffer, StoredBatch
from agent.north.formats import JsonFormat, Packed
from agent.north.formats.base import stream_of
from agent.ops.metrics import Metrics
from agent.ops.status import build_snapshot
from agent.ops.web.i18n import TEXT
from agent.ops.web.page import render_page
from tests.brokers import Mosquitto, Subscriber
from tests.e2e import AgentRig, until
from tests.test_failover import Rig
from tests.test_publisher import _settings


async def _buffer(tmp_path: Path, metrics: Metrics | None = None) -> Buffer:
    buf = Buffer(tmp_path / "data", 2_000_000, metrics)
    await buf.open()
    return buf


async def test_quarantined_rows_are_kept_skipped_counted_and_released(tmp_path: Path) -> None:
    metrics = Metrics()
    buf = await _buffer(tmp_path, metrics)
    for i in range(3):
        await buf.put("d1", 1000 + i, b'{"ts":%d,"values":{"i":%d}}' % (1000 + i, i))
    rows = await buf.fetch(0, 10)
    assert await buf.quarantine([rows[1].id], "json: ValueError: broken") == 1
    assert [r.seq for r in await buf.fetch(0, 10)] == [1, 3]
    stats = buf.stats()
    assert (stats.batches, stats.quarantined) == (3, 1)
    assert stats.quarantine_reason == "json: ValueError: broken"
    assert metrics.registry.get_sample_value("edge_agent_buffer_quarantined_batches") == 1
    await buf.ack([rows[0].id, rows[2].id])
    await buf.close()

    again = await _buffer(tmp_path)  # a restart keeps the held row and its reason
    assert (again.stats().batches, again.stats().quarantined) == (1, 1)
    assert again.stats().quarantine_reason == "json: ValueError: broken"
    assert await again.fetch(0, 10) == []
    assert await again.release_quarantined() == 1
    released = await again.fetch(0, 10)
    assert [(r.device, r.seq, r.body) for r in released] == [(rows[1].device, 2, rows[1].body)]
    assert released[0].id > rows[2].id  # a new row id: a publisher past the old one finds it
    assert again.stats().quarantined == 0
    await again.close()


async def test_a_full_buffer_drops_quarantined_rows_as_the_oldest(tmp_path: Path) -> None:
    """Held rows count against max_size and go first when it is full, like any old batch: a
    broken format can never wedge the buffer."""
    buf = Buffer(tmp_path / "data", 1_000_000)
    await buf.open()
    body = b'{"ts":1,"values":{"x":"' + random.Random(0).randbytes(1000).hex().encode() + b'"}}'
    await buf.put("d1", 1, body)
    first = (await buf.fetch(0, 1))[0]
    await buf.quarantine([first.id], "test")
    while buf.stats().dropped_total == 0:
        await buf.put("d1", 2, body)
    assert buf.stats().quarantined == 0
    assert buf.stats().quarantine_reason is None
    await buf.close()


async def test_a_database_from_before_quarantine_opens_and_gains_the_column(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    conn = sqlite3.connect(data / "buffer.db")
    conn.executescript(
        """
        CREATE TABLE batches (id INTEGER PRIMARY KEY AUTOINCREMENT, device TEXT NOT NULL,
            kind TEXT NOT NULL, seq INTEGER NOT NULL, ts_ms INTEGER NOT NULL,
            created REAL NOT NULL, body BLOB NOT NULL);
        CREATE TABLE seqs (device TEXT NOT NULL, kind TEXT NOT NULL, last INTEGER NOT NULL,
            PRIMARY KEY (device, kind));
        CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
        INSERT INTO meta VALUES ('initialised', 1);
        INSERT INTO seqs VALUES ('d1', 'data', 7);
        INSERT INTO batches (device, kind, seq, ts_ms, created, body)
            VALUES ('d1', 'data', 7, 1000, 1.0, '{"ts":1000,"values":{}}');
        """
    )
    conn.close()
    buf = await _buffer(tmp_path)
    old = await buf.fetch(0, 10)
    assert [r.seq for r in old] == [7]
    assert await buf.put("d1", 2000, b'{"ts":2000,"values":{}}') == 8
    await buf.quarantine([old[0].id], "test")
    assert [r.seq for r in await buf.fetch(0, 10)] == [8]
    await buf.close()


class _NoEvents(JsonFormat):
    """A format with a bug: it cannot pack event rows."""

    broken = True

    def pack(self, rows: Sequence[StoredBatch]) -> list[Packed]:
        if self.broken and any(stream_of(r)[1] == "event" for r in rows):
            raise TypeError("events not understood")
        return super().pack(rows)


async def test_publisher_quarantines_what_the_format_cannot_pack_and_logs_once(
    tmp_path: Path, broker: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    sub = Subscriber(broker.port, ["edge/gw/#"]).start()
    fmt = _NoEvents("gw", "edge/gw")
    caplog.set_level(logging.INFO, logger="agent.north.publisher")
    async with Rig(tmp_path, _settings(broker.port), fmt=fmt) as rig:
        await rig.put("d1", 5)
        for i in range(3):
            await rig.put_doc("d1", {"ts": 2000 + i, "event": "raise", "values": [1, 2]}, "event")
        await rig.put("d1", 5, start=5)
        await sub.wait_for(lambda m: sum(x.topic == "edge/gw/d1/data" for x in m) == 10)
        await until(lambda: rig.buffer.stats().quarantined == 3, timeout=5)
        await until(lambda: rig.buffer.stats().batches == 3, timeout=5)
        stats = rig.buffer.stats()
        assert stats.batches == 3  # kept, not deleted
        assert "TypeError: events not understood" in (stats.quarantine_reason or "")
        counted = rig.metrics.registry.get_sample_value(
            "edge_agent_quarantined_batches_total", {"format": "json"}
        )
        assert counted == 3
        assert not [m for m in sub.messages if m.topic == "edge/gw/d1/event"]
        said = [r for r in caplog.records if "cannot be packed" in r.getMessage()]
        assert len(said) == 1  # one line per reason, not one per batch

        fmt.broken = False  # as a fixed agent would after a restart
        assert await rig.buffer.release_quarantined() == 3
        await sub.wait_for(lambda m: sum(x.topic == "edge/gw/d1/event" for x in m) == 3)
        await until(lambda: rig.buffer.stats().batches == 0, timeout=5)
    events = [m.json() for m in sub.messages if m.topic == "edge/gw/d1/event"]
    assert [e["seq"] for e in events] == [1, 2, 3]
    sub.stop()


async def test_status_cli_and_page_show_quarantined_batches(tmp_path: Path) -> None:
    """What an operator sees: the count and the reason, in both languages of the page."""
    cfg = tmp_path / "c.yaml"
    doc = {
        "agent": {"id": "gw", "data_dir": str(tmp_path / "data")},
        "mqtt": {"host": "127.0.0.1", "port": 1},
        "metrics": {"listen": None},
        "devices": [],
    }
    cfg.write_text(json.dumps(doc))
    async with AgentRig(cfg) as agent:
        await agent.buffer.put("d1", 1, b'{"ts":1,"event":"raise","values":[1]}', "event")
        [row] = await agent.buffer.fetch(0, 1)
        await agent.buffer.quarantine([row.id], "sparkplug: TypeError: broken")
        snap = build_snapshot(agent)
    assert snap["buffer"]["quarantined"] == 1
    out = io.StringIO()
    print_status(snap, out)
    assert "QUARANTINED 1: sparkplug: TypeError: broken" in out.getvalue()
    assert "quarantined (the format cannot pack them): 1" in render_page(snap, "en")
    assert TEXT["zh-CN"]["quarantined"].format(n=1) in render_page(snap, "zh-CN")
