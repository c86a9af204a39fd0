"""The store-and-forward buffer: durable, ordered, bounded, crash-safe."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sqlite3
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from agent.buffer import MIN_SIZE, SEQ_RESERVATION, Buffer, BufferError
from agent.metrics import Metrics

BODY = b'{"ts":0,"values":{"v":1}}'


async def _open(path: Path, size: int = 8 * MIN_SIZE, metrics: Metrics | None = None) -> Buffer:
    buf = Buffer(path, size, metrics)
    await buf.open()
    return buf


def _disk_bytes(path: Path) -> int:
    return sum(
        os.stat(p).st_size for p in (path / "buffer.db", path / "buffer.db-wal") if p.exists()
    )


async def test_order_and_contiguous_seq_per_device(tmp_path: Path) -> None:
    buf = await _open(tmp_path)
    for i in range(10):
        assert await buf.put("a", i, BODY) == i + 1
        assert await buf.put("b", i, BODY) == i + 1
    rows = await buf.fetch(0, 100)
    assert [r.id for r in rows] == sorted(r.id for r in rows)
    assert [r.seq for r in rows if r.device == "a"] == list(range(1, 11))
    assert [r.ts_ms for r in rows if r.device == "b"] == list(range(10))
    assert rows[0].body == BODY and rows[0].kind == "data"
    await buf.close()


async def test_seq_survives_reopen_and_is_never_reused(tmp_path: Path) -> None:
    buf = await _open(tmp_path)
    for _ in range(5):
        await buf.put("a", 0, BODY)
    rows = await buf.fetch(0, 10)
    await buf.ack([r.id for r in rows])
    await buf.ack([r.id for r in rows])  # idempotent
    assert buf.stats().batches == 0
    await buf.close()
    buf = await _open(tmp_path)
    assert await buf.put("a", 0, BODY) == 6
    assert await buf.put("a", 0, BODY, kind="event") == 1
    await buf.close()


async def test_concurrent_puts_are_group_committed(tmp_path: Path) -> None:
    buf = await _open(tmp_path)
    seqs = await asyncio.gather(*(buf.put(f"d{i}", 0, BODY) for i in range(100)))
    assert seqs == [1] * 100
    assert buf.commits <= 3, buf.commits
    assert buf.stats().batches == 100
    await buf.close()


async def test_fetch_window(tmp_path: Path) -> None:
    buf = await _open(tmp_path)
    for _ in range(10):
        await buf.put("a", 0, BODY)
    rows = await buf.fetch(0, 100)
    ids = [r.id for r in rows]
    assert [r.id for r in await buf.fetch(ids[2], 3)] == ids[3:6]
    assert [r.id for r in await buf.fetch(ids[2], 100, upto_id=ids[4])] == ids[3:5]
    assert await buf.max_id() == ids[-1]
    await buf.close()


@pytest.mark.slow
async def test_bound_holds_and_drops_oldest_counted(tmp_path: Path) -> None:
    max_size = MIN_SIZE
    metrics = Metrics()
    buf = await _open(tmp_path, max_size, metrics)
    body = b'{"ts":0,"values":{"v":"' + b"x" * 900 + b'"}}'
    written = 0
    peak = 0
    while written < 20 * max_size:
        await asyncio.gather(*(buf.put(f"d{i}", 0, body) for i in range(8)))
        written += 8 * len(body)
        peak = max(peak, _disk_bytes(tmp_path))
    assert peak <= max_size * 1.05, (peak, max_size)
    stats = buf.stats()
    assert stats.dropped_total > 0
    assert metrics.registry.get_sample_value("edge_agent_buffer_dropped_batches_total") == (
        stats.dropped_total
    )
    rows = await buf.fetch(0, 1_000_000)
    per_device: dict[str, list[int]] = defaultdict(list)
    for r in rows:
        per_device[r.device].append(r.seq)
    # What is left is the newest of each device, contiguous; every gap is a counted drop.
    total_put = 0
    for seqs in per_device.values():
        assert seqs == list(range(seqs[0], seqs[-1] + 1))
        total_put = max(total_put, seqs[-1])
    assert len(rows) + stats.dropped_total == total_put * 8
    assert stats.batches == len(rows)
    await buf.close()
    buf = await _open(tmp_path, max_size)
    assert buf.stats().dropped_total == stats.dropped_total  # persisted
    await buf.close()


async def test_full_disk_refuses_new_batches_and_keeps_old_ones(tmp_path: Path) -> None:
    buf = await _open(tmp_path)
    for _ in range(20):
        await buf.put("a", 0, BODY)
    # Emulate a full disk: SQLite may not grow the file any further.
    conn = buf._conn
    assert conn is not None
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    await buf._run(conn.execute, f"PRAGMA max_page_count={pages}")
    big = b'{"v":"' + b"y" * 60_000 + b'"}'
    with pytest.raises(BufferError):
        await buf.put("a", 0, big)
    assert len(await buf.fetch(0, 100)) == 20
    await buf._run(conn.execute, "PRAGMA max_page_count=1073741823")
    assert await buf.put("a", 0, big) == 21  # the refused batch did not consume a seq
    await buf.close()


async def test_corrupt_file_is_quarantined_and_seq_not_reused(tmp_path: Path) -> None:
    buf = await _open(tmp_path)
    for _ in range(3):
        await buf.put("a", 0, BODY)
    await buf.close()
    (tmp_path / "buffer.db").write_bytes(b"this is not a database" * 100)
    buf = await _open(tmp_path)
    assert list(tmp_path.glob("buffer.db.corrupt-*"))
    assert buf.stats().batches == 0
    seq = await buf.put("a", 0, BODY)
    assert seq > 3 and seq <= 1 + SEQ_RESERVATION + 3
    await buf.close()


async def test_deleted_buffer_resumes_above_reserved_seqs(tmp_path: Path) -> None:
    buf = await _open(tmp_path)
    await buf.put("a", 0, BODY)
    await buf.close()
    (tmp_path / "buffer.db").unlink()
    buf = await _open(tmp_path)
    assert await buf.put("a", 0, BODY) > 1
    await buf.close()


@pytest.mark.slow
def test_sigkill_mid_stream_loses_no_acknowledged_batch(tmp_path: Path) -> None:
    rng = random.Random(7)
    acknowledged: dict[str, int] = {}
    for _round in range(5):
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.helpers.buffer_writer", str(tmp_path), "4"],
            stdout=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).resolve().parent.parent,
        )
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        lines_before_kill = rng.randint(50, 400)
        first: dict[str, int] = {}
        for _ in range(lines_before_kill):
            device, seq = proc.stdout.readline().split()
            first.setdefault(device, int(seq))
            if device in acknowledged:
                assert int(seq) > acknowledged[device]  # never reused after a crash
            acknowledged[device] = int(seq)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        for line in proc.stdout.read().splitlines():  # acknowledged before the kill landed
            if line.strip():
                device, seq = line.split()
                acknowledged[device] = max(acknowledged[device], int(seq))
    conn = sqlite3.connect(tmp_path / "buffer.db")
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    stored: dict[str, set[int]] = defaultdict(set)
    for device, seq in conn.execute("SELECT device, seq FROM batches"):
        stored[device].add(seq)
    conn.close()
    for device, last in acknowledged.items():
        missing = set(range(1, last + 1)) - stored[device]
        assert not missing, (device, sorted(missing)[:10])
