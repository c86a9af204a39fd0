"""The buffer with several destinations: one copy per batch, a share and a cursor each.

A batch leaves the buffer only when every destination that wants it has acknowledged it; each
destination fetches only what it still has to send; drops are counted per destination that had
not sent them; a destination removed from the config lets go of its share; an older database
migrates in place.
"""

from __future__ import annotations

import json
import random
import sqlite3
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.core.buffer import Buffer, Route
from agent.ops.metrics import Metrics

BODY = b'{"ts":1,"values":{"v":1}}'
CLOUD, PLANT = Route("default"), Route("plant", devices=frozenset({"press-1"}))


async def _open(
    path: Path, *routes: Route, size: int = 8_000_000, metrics: Metrics | None = None
) -> Buffer:
    buf = Buffer(path, size, metrics)
    await buf.open()
    await buf.set_routes(routes or (CLOUD, PLANT))
    return buf


def _rows(path: Path) -> list[tuple[str, str, int]]:
    conn = sqlite3.connect(path / "buffer.db")
    try:
        return [(d, k, s) for d, k, s in conn.execute("SELECT device, kind, seq FROM batches")]
    finally:
        conn.close()


async def test_a_batch_leaves_only_when_every_destination_that_wants_it_acked(
    tmp_path: Path,
) -> None:
    buf = await _open(tmp_path)
    assert await buf.put("press-1", 1, BODY) == 1
    assert await buf.put("oven-2", 2, BODY) == 1  # the plant does not take oven-2
    cloud = await buf.fetch(0, 10)
    plant = await buf.fetch(0, 10, output="plant")
    assert [r.device for r in cloud] == ["press-1", "oven-2"]
    assert [r.device for r in plant] == ["press-1"]
    assert plant[0].id == cloud[0].id  # one copy, the same seq for both
    await buf.ack([plant[0].id], "plant")
    assert await buf.fetch(0, 10, output="plant") == []  # sent: not fetched again
    assert buf.stats().batches == 2  # the cloud has not sent it yet
    await buf.ack([r.id for r in cloud])
    assert buf.stats().batches == 0
    assert _rows(tmp_path) == []
    await buf.close()


async def test_each_destination_has_its_own_backlog_and_oldest(tmp_path: Path) -> None:
    buf = await _open(tmp_path)
    for i in range(5):
        await buf.put("press-1", i, BODY)
    rows = await buf.fetch(0, 10)
    await buf.ack([r.id for r in rows])  # the cloud is live; the plant is down
    stats = buf.stats()
    assert stats.outputs is not None
    assert stats.outputs["default"].batches == 0
    assert stats.outputs["default"].oldest_created is None
    assert stats.outputs["plant"].batches == 5
    assert stats.outputs["plant"].oldest_created is not None
    assert stats.batches == 5
    # Acked rows stay acked across a restart: the cloud does not send them again.
    await buf.close()
    again = await _open(tmp_path)
    assert await again.fetch(0, 10) == []
    assert len(await again.fetch(0, 10, output="plant")) == 5
    assert again.output_stats("plant").batches == 5
    await again.close()


async def test_drops_are_counted_per_destination_that_had_not_sent_them(tmp_path: Path) -> None:
    metrics = Metrics()
    buf = await _open(tmp_path, CLOUD, Route("plant"), size=1_000_000, metrics=metrics)
    body = random.Random(0).randbytes(2000)  # no deflating: sized to fill pages
    first = await buf.put("press-1", 0, body)
    [row] = await buf.fetch(0, 1)
    await buf.ack([row.id])  # the cloud sent the first batch, the plant never did
    assert first == 1
    while buf.stats().dropped_total == 0:
        await buf.put("press-1", 1, body)
    dropped = buf.stats().dropped_total
    out = buf.stats().outputs
    assert out is not None
    assert out["plant"].dropped_total == dropped
    assert out["default"].dropped_total == dropped - 1  # it had the first one already
    value = metrics.registry.get_sample_value
    assert value("edge_agent_buffer_dropped_batches_total", {"output": "plant"}) == dropped
    assert value("edge_agent_buffer_dropped_batches_total", {"output": "default"}) == dropped - 1
    await buf.close()
    again = await _open(tmp_path, CLOUD, Route("plant"), size=1_000_000)
    assert again.output_stats("plant").dropped_total == dropped  # survives a restart
    await again.close()


async def test_a_removed_destination_lets_go_of_its_share(tmp_path: Path) -> None:
    buf = await _open(tmp_path)
    await buf.put("press-1", 1, BODY)
    await buf.put("press-1", 2, BODY)
    rows = await buf.fetch(0, 10)
    await buf.ack([rows[0].id])  # the cloud sent the first, the plant nothing
    await buf.set_routes([CLOUD])
    assert buf.stats().batches == 1  # the first was only the plant's now: gone
    assert [r.seq for r in await buf.fetch(0, 10)] == [2]
    # A destination added later (even under the old name) starts from now.
    await buf.set_routes([CLOUD, PLANT])
    assert await buf.fetch(0, 10, output="plant") == []
    await buf.put("press-1", 3, BODY)
    assert [r.seq for r in await buf.fetch(0, 10, output="plant")] == [3]
    await buf.close()


async def test_quarantine_is_per_destination(tmp_path: Path) -> None:
    buf = await _open(tmp_path, CLOUD, Route("plant"))
    await buf.put("press-1", 1, BODY, "event")
    [row] = await buf.fetch(0, 1, output="plant")
    assert await buf.quarantine([row.id], "sparkplug: TypeError", "plant") == 1
    assert await buf.fetch(0, 10, output="plant") == []
    assert [r.id for r in await buf.fetch(0, 10)] == [row.id]  # the cloud still sends it
    await buf.ack([row.id])
    stats = buf.stats()
    assert (stats.batches, stats.quarantined) == (1, 1)
    assert stats.outputs is not None and stats.outputs["plant"].quarantined == 1
    assert await buf.release_quarantined() == 1
    [again] = await buf.fetch(0, 10, output="plant")
    assert (again.seq, again.kind, again.body) == (1, "event", BODY)
    assert await buf.fetch(0, 10) == []  # the cloud had sent it: not wanted again
    await buf.ack([again.id], "plant")
    assert buf.stats().batches == 0
    await buf.close()


async def test_an_older_database_migrates_in_place(tmp_path: Path) -> None:
    """One destination, a held column, alarm events under ``<device>/event`` names: the rows keep
    their seqs, events become rows of kind ``event``, held rows stay held for ``default``."""
    data = tmp_path / "data"
    data.mkdir()
    conn = sqlite3.connect(data / "buffer.db")
    conn.executescript(
        """
        CREATE TABLE batches (id INTEGER PRIMARY KEY AUTOINCREMENT, device TEXT NOT NULL,
            kind TEXT NOT NULL, seq INTEGER NOT NULL, ts_ms INTEGER NOT NULL,
            created REAL NOT NULL, body BLOB NOT NULL, held TEXT);
        CREATE TABLE seqs (device TEXT NOT NULL, kind TEXT NOT NULL, last INTEGER NOT NULL,
            PRIMARY KEY (device, kind));
        CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
        INSERT INTO meta VALUES ('initialised', 1);
        INSERT INTO seqs VALUES ('d1', 'data', 7), ('d1/event', 'data', 3);
        INSERT INTO batches (device, kind, seq, ts_ms, created, body, held) VALUES
            ('d1', 'data', 7, 1000, 1.0, '{}', NULL),
            ('d1/event', 'data', 3, 1000, 1.0, '{}', NULL),
            ('d1', 'data', 6, 900, 1.0, '{}', 'json: broken');
        """
    )
    conn.close()
    (data / "seq.json").write_text(json.dumps({"d1": {"data": 10007}, "d1/event": {"data": 10003}}))
    buf = await _open(data, CLOUD)
    rows = await buf.fetch(0, 10)
    assert [(r.device, r.kind, r.seq) for r in rows] == [("d1", "data", 7), ("d1", "event", 3)]
    assert buf.stats().quarantined == 1
    assert await buf.put("d1", 2000, BODY, "event") == 4  # the event counter carried over
    assert await buf.put("d1", 2000, BODY) == 8
    await buf.close()
    again = await _open(data, CLOUD)  # the old seq.json's suffixed names read the same
    assert await again.put("d1", 3000, BODY, "event") == 5
    await again.close()


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["put", "ack-default", "ack-plant", "reopen"]), st.integers(0, 3)
        ),
        min_size=1,
        max_size=30,
    )
)
async def test_any_interleaving_delivers_each_batch_once_per_destination(
    tmp_path_factory: object, steps: list[tuple[str, int]]
) -> None:
    """Whatever order puts, acks and restarts come in, each destination is handed every batch it
    wants until it acks it, never one it acked, and a row goes only when all are done."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp)
        routes = (CLOUD, PLANT)
        buf = await _open(path, *routes)
        acked: dict[str, set[int]] = {"default": set(), "plant": set()}
        wants: dict[int, set[str]] = {}
        for op, n in steps:
            if op == "put":
                device = ["press-1", "oven-2"][n % 2]
                seq = await buf.put(device, 1, BODY)
                row = (await buf.fetch(0, 10_000))[-1]
                assert row.seq == seq
                wants[row.id] = {"default"} | ({"plant"} if device == "press-1" else set())
            elif op == "reopen":
                await buf.close()
                buf = await _open(path, *routes)
            else:
                name = op.removeprefix("ack-")
                rows = await buf.fetch(0, n + 1, output=name)
                await buf.ack([r.id for r in rows], name)
                acked[name] |= {r.id for r in rows}
            for name in ("default", "plant"):
                have = {r.id for r in await buf.fetch(0, 10_000, output=name)}
                assert have == {i for i, w in wants.items() if name in w} - acked[name]
            left = {i for i, w in wants.items() if any(i not in acked[n] for n in w)}
            assert buf.stats().batches == len(left)
        await buf.close()
