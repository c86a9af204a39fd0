"""The store-and-forward buffer: durable, ordered, bounded, crash-safe."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.core.buffer import MIN_SIZE, SEQ_RESERVATION, Buffer, BufferError
from agent.ops.metrics import Metrics

ROOT = Path(__file__).resolve().parent.parent
BODY = b'{"ts":0,"values":{"v":1}}'
DEFAULT = {"output": "default"}  # the labels of the mqtt section's per-destination series


def _noise(n: int, seed: int = 0) -> bytes:
    """``n`` bytes that do not deflate: bodies sized to fill pages (the store deflates bodies,
    agent.core.buffer.bodies, and ``b"x" * n`` would take a few bytes on disk)."""
    return random.Random(seed).randbytes(n)


async def _open(path: Path, size: int = 8 * MIN_SIZE, metrics: Metrics | None = None) -> Buffer:
    buf = Buffer(path, size, metrics)
    await buf.open()
    return buf


def _disk_bytes(path: Path) -> int:
    total = 0
    for name in ("buffer.db", "buffer.db-wal"):
        with contextlib.suppress(FileNotFoundError):
            total += os.stat(path / name).st_size
    return total


def _stored(path: Path) -> dict[str, list[int]]:
    """seqs per device as a second connection sees them, in id order."""
    conn = sqlite3.connect(path / "buffer.db")
    try:
        out: dict[str, list[int]] = defaultdict(list)
        for device, seq in conn.execute("SELECT device, seq FROM batches ORDER BY id"):
            out[device].append(seq)
        return out
    finally:
        conn.close()


def _integrity(path: Path) -> str:
    conn = sqlite3.connect(path / "buffer.db")
    try:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        conn.close()


async def _set_max_pages(buf: Buffer, pages: int | None) -> int:
    """Emulate a full disk: SQLite may not grow the database past ``pages``."""

    def run() -> int:
        conn = buf._store.conn
        assert conn is not None
        if pages is None:
            return int(conn.execute("PRAGMA max_page_count=4294967294").fetchone()[0])
        current = int(conn.execute("PRAGMA page_count").fetchone()[0])
        conn.execute(f"PRAGMA max_page_count={max(pages, current)}")
        return current

    return await buf._run(run)


def _buffer_warnings(caplog: pytest.LogCaptureFixture, text: str) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name.startswith("agent.core.buffer") and text in r.getMessage()
    ]


# -- order and seq ---------------------------------------------------------------------------------


async def test_per_device_seqs_start_at_1_are_contiguous_and_follow_id_order(
    tmp_path: Path,
) -> None:
    buf = await _open(tmp_path)

    async def device(name: str) -> list[int]:
        return [await buf.put(name, 1000 + i, BODY) for i in range(30)]

    results = await asyncio.gather(*(device(f"d{i}") for i in range(5)))
    assert all(seqs == list(range(1, 31)) for seqs in results)
    rows = await buf.fetch(0, 1000)
    assert [r.id for r in rows] == sorted(r.id for r in rows)
    for i in range(5):
        mine = [r for r in rows if r.device == f"d{i}"]
        assert [r.seq for r in mine] == list(range(1, 31))  # id order is seq order
        assert [r.ts_ms for r in mine] == [1000 + j for j in range(30)]
    assert rows[0].body == BODY and rows[0].kind == "data" and rows[0].created > 0
    # seq counts per (device, kind)
    assert await buf.put("d0", 0, BODY, kind="event") == 1
    assert await buf.put("d0", 0, BODY) == 31
    await buf.close()


async def test_seq_survives_reopen_and_is_never_reused_after_ack(tmp_path: Path) -> None:
    buf = await _open(tmp_path)
    for _ in range(5):
        await buf.put("a", 0, BODY)
    rows = await buf.fetch(0, 10)
    await buf.ack([r.id for r in rows])
    await buf.ack([r.id for r in rows])  # idempotent
    assert buf.stats().batches == 0 and await buf.fetch(0, 10) == []
    await buf.close()
    buf = await _open(tmp_path)
    assert await buf.put("a", 0, BODY) == 6
    assert (await buf.fetch(0, 10))[0].id > rows[-1].id  # ids are never reused either
    await buf.close()


async def test_put_returns_only_once_its_batch_is_committed(tmp_path: Path) -> None:
    buf = await _open(tmp_path)
    for i in range(5):
        seq = await buf.put("a", 0, BODY)
        assert _stored(tmp_path)["a"] == list(range(1, i + 2)), seq  # seen by another connection
    await buf.close()


# -- group commit ----------------------------------------------------------------------------------


async def test_concurrent_puts_share_one_transaction(tmp_path: Path) -> None:
    buf = await _open(tmp_path)
    buf.new_data.clear()
    seqs = await asyncio.gather(*(buf.put(f"d{i}", 0, BODY) for i in range(100)))
    assert seqs == [1] * 100
    assert buf.commits == 1
    assert buf.new_data.is_set()
    assert buf.stats().batches == 100
    await buf.close()


async def test_puts_arriving_during_a_commit_go_into_the_next_one(tmp_path: Path) -> None:
    buf = await _open(tmp_path)
    gate = threading.Event()
    blocker = asyncio.ensure_future(buf._run(gate.wait))  # occupies the worker thread
    first = asyncio.ensure_future(buf.put("a", 0, BODY))
    await asyncio.sleep(0)  # the put queues its batch and starts the committer
    await asyncio.sleep(0)  # the committer takes that group to the (busy) worker
    assert buf._committer is not None and not buf._pending
    later = [asyncio.ensure_future(buf.put(f"d{i}", 0, BODY)) for i in range(50)]
    await asyncio.sleep(0)
    assert len(buf._pending) == 50  # queued while the first commit is under way
    gate.set()
    await blocker
    assert await first == 1
    assert await asyncio.gather(*later) == [1] * 50
    assert buf.commits == 2
    await buf.close()


async def test_a_failed_commit_fails_each_caller_of_its_group_and_consumes_no_seq(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    buf = await _open(tmp_path)
    for _ in range(20):
        await buf.put("a", 0, _noise(3000))  # one page each
    await _set_max_pages(buf, 0)
    big = _noise(100_000, 1)  # more than dropping everything stored would free
    results = await asyncio.gather(
        *(buf.put("a", 0, big) for _ in range(3)), return_exceptions=True
    )
    assert all(isinstance(r, BufferError) for r in results), results
    assert [r.seq for r in await buf.fetch(0, 100)] == list(range(1, 21))  # nothing lost
    assert buf.stats().dropped_total == 0
    assert len(_buffer_warnings(caplog, "commit failed")) == 1  # once per episode, not per put
    await _set_max_pages(buf, None)
    assert await buf.put("a", 0, big) == 21
    await buf.close()


async def test_a_body_too_large_is_refused_alone(tmp_path: Path) -> None:
    buf = await _open(tmp_path, MIN_SIZE)
    huge = b"h" * (buf.max_body + 2 * 4096)  # footprints grow in steps of a page
    results = await asyncio.gather(
        buf.put("a", 0, BODY), buf.put("b", 0, huge), buf.put("c", 0, BODY),
        return_exceptions=True,
    )  # fmt: skip
    assert results[0] == 1 and results[2] == 1
    assert isinstance(results[1], BufferError)
    assert await buf.put("b", 0, b"x" * buf.max_body) == 1
    await buf.close()


# -- fetch, ack, stats -----------------------------------------------------------------------------


async def test_fetch_window_and_max_id(tmp_path: Path) -> None:
    buf = await _open(tmp_path)
    assert await buf.max_id() == 0
    for _ in range(10):
        await buf.put("a", 0, BODY)
    ids = [r.id for r in await buf.fetch(0, 100)]
    assert [r.id for r in await buf.fetch(ids[2], 3)] == ids[3:6]
    assert [r.id for r in await buf.fetch(ids[2], 100, upto_id=ids[4])] == ids[3:5]
    assert await buf.fetch(ids[2], 0) == []
    assert await buf.max_id() == ids[-1]
    await buf.ack(ids[:3])
    assert [r.id for r in await buf.fetch(0, 100)] == ids[3:]
    await buf.close()


async def test_stats_and_metrics_follow_commits_and_acks(tmp_path: Path) -> None:
    metrics = Metrics()
    buf = await _open(tmp_path, metrics=metrics)

    def sample(name: str) -> float | None:
        value: float | None = metrics.registry.get_sample_value(name)
        return value

    for i in range(7):
        await buf.put("a", 0, BODY)
        assert buf.stats().batches == i + 1
    stats = buf.stats()
    assert stats.bytes > 0 and stats.dropped_total == 0 and stats.oldest_created is not None
    assert sample("edge_agent_buffer_batches") == 7
    assert sample("edge_agent_buffer_bytes") == stats.bytes
    age = sample("edge_agent_buffer_oldest_age_seconds")
    assert age is not None and age >= 0
    await buf.ack([r.id for r in await buf.fetch(0, 100)])
    assert buf.stats().batches == 0 and buf.stats().oldest_created is None
    assert sample("edge_agent_buffer_batches") == 0
    assert sample("edge_agent_buffer_oldest_age_seconds") == 0
    await buf.close()


# -- life cycle ------------------------------------------------------------------------------------


async def test_close_commits_pending_puts_then_refuses_new_ones(tmp_path: Path) -> None:
    buf = await _open(tmp_path)
    puts = [asyncio.ensure_future(buf.put(f"d{i}", 0, BODY)) for i in range(20)]
    await asyncio.sleep(0)  # the puts are queued
    await buf.close()
    assert await asyncio.gather(*puts) == [1] * 20
    with pytest.raises(BufferError):
        await buf.put("a", 0, BODY)
    await buf.close()  # idempotent
    wal = tmp_path / "buffer.db-wal"
    assert not wal.exists() or wal.stat().st_size == 0  # checkpointed: one self-contained file
    assert sum(len(s) for s in _stored(tmp_path).values()) == 20


async def test_one_process_per_data_dir(tmp_path: Path) -> None:
    buf = await _open(tmp_path)
    other = Buffer(tmp_path, 8 * MIN_SIZE)
    with pytest.raises(BufferError, match="in use"):
        await other.open()
    await other.close()
    await buf.close()
    again = await _open(tmp_path)
    await again.close()


def test_max_size_below_minimum_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least"):
        Buffer(tmp_path, MIN_SIZE - 1)


# -- bound -----------------------------------------------------------------------------------------


def _profile_small(_rng: random.Random) -> int:
    return 200


def _profile_half_page(_rng: random.Random) -> int:
    return 2100  # one cell per 4 KiB page: half of every page is wasted


def _profile_mixed(rng: random.Random) -> int:
    return rng.choice([50, 900, 2100, 5000, 30_000])  # the big ones spill to overflow pages


@pytest.mark.slow
@pytest.mark.parametrize(
    ("sizes", "devices"),
    [(_profile_small, 100), (_profile_half_page, 8), (_profile_mixed, 20)],
    ids=["small-x100", "half-page-x8", "mixed-x20"],
)
async def test_bound_holds_on_disk_and_drops_oldest_counted(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    sizes: Callable[[random.Random], int],
    devices: int,
) -> None:
    max_size = MIN_SIZE
    metrics = Metrics()
    buf = await _open(tmp_path, max_size, metrics)
    store = buf._store
    peak = 0
    commit_chunk = store._commit_chunk

    def measured(items: list[tuple[str, str, int, bytes]]) -> list[int | BufferError]:
        nonlocal peak
        result = commit_chunk(items)
        peak = max(peak, _disk_bytes(tmp_path))  # right after commit and checkpoint
        return result

    store._commit_chunk = measured  # type: ignore[method-assign]
    stop = threading.Event()

    def sampler() -> None:  # and in between, from another thread
        nonlocal peak
        while not stop.wait(0.0005):
            peak = max(peak, _disk_bytes(tmp_path))

    thread = threading.Thread(target=sampler)
    thread.start()
    rng = random.Random(7)
    last: dict[str, int] = {}
    written = puts = 0
    try:
        while written < 20 * max_size:
            bodies = [_noise(sizes(rng), rng.randrange(1 << 30)) for _ in range(devices)]
            seqs = await asyncio.gather(*(buf.put(f"d{i}", 0, b) for i, b in enumerate(bodies)))
            for i, seq in enumerate(seqs):
                assert seq == last.get(f"d{i}", 0) + 1
                last[f"d{i}"] = seq
            written += sum(map(len, bodies))
            puts += devices
    finally:
        stop.set()
        thread.join()
    assert peak <= max_size * 1.05, (peak, max_size)
    stats = buf.stats()
    rows = await buf.fetch(0, 1_000_000)
    assert stats.batches == len(rows)
    # Oldest first: what is left is the newest ids, and the newest seqs of every device.
    assert [r.id for r in rows] == list(range(puts - len(rows) + 1, puts + 1))
    per_device: dict[str, list[int]] = defaultdict(list)
    for r in rows:
        per_device[r.device].append(r.seq)
    for device, seqs in per_device.items():
        assert seqs == list(range(seqs[0], last[device] + 1))
    # Every gap in seq is a counted drop, and every counted drop a gap.
    gaps = sum(last[d] - len(per_device.get(d, [])) for d in last)
    assert stats.dropped_total == gaps == puts - len(rows) > 0
    assert (
        metrics.registry.get_sample_value("edge_agent_buffer_dropped_batches_total", DEFAULT)
        == gaps
    )
    assert len(_buffer_warnings(caplog, "buffer full: dropped")) == 1  # one per episode
    await buf.close()
    buf = await _open(tmp_path, max_size)
    assert buf.stats().dropped_total == gaps  # persisted
    assert _disk_bytes(tmp_path) <= max_size * 1.05
    assert await buf.put("d0", 0, BODY) == last["d0"] + 1
    await buf.close()


async def test_lowering_max_size_shrinks_the_file_at_open(tmp_path: Path) -> None:
    buf = await _open(tmp_path, 4 * MIN_SIZE)
    for _ in range(100):
        await asyncio.gather(*(buf.put(f"d{i}", 0, _noise(2000)) for i in range(10)))
    assert buf.stats().dropped_total == 0
    await buf.close()
    assert _disk_bytes(tmp_path) > 2 * MIN_SIZE
    metrics = Metrics()
    buf = await _open(tmp_path, MIN_SIZE, metrics)
    assert _disk_bytes(tmp_path) <= MIN_SIZE * 1.05
    rows = await buf.fetch(0, 10_000)
    assert [r.id for r in rows] == list(range(1001 - len(rows), 1001))  # the newest kept
    assert buf.stats().dropped_total == 1000 - len(rows) > 0
    assert metrics.registry.get_sample_value(
        "edge_agent_buffer_dropped_batches_total", DEFAULT
    ) == (1000 - len(rows))
    assert await buf.put("d0", 0, BODY) == 101
    await buf.close()


# -- disk full -------------------------------------------------------------------------------------


async def test_full_disk_drops_oldest_to_make_room(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    metrics = Metrics()
    buf = await _open(tmp_path, metrics=metrics)
    for _ in range(20):
        await buf.put("a", 0, _noise(3000))
    await _set_max_pages(buf, 0)  # the database may not grow any more
    for i in range(5):
        assert await buf.put("b", 0, _noise(3000, 2)) == i + 1
    rows = await buf.fetch(0, 100)
    dropped = buf.stats().dropped_total
    assert dropped > 0
    a_seqs = [r.seq for r in rows if r.device == "a"]
    assert a_seqs == list(range(21 - len(a_seqs), 21))  # the oldest went
    assert len(a_seqs) + dropped == 20
    assert (
        metrics.registry.get_sample_value("edge_agent_buffer_dropped_batches_total", DEFAULT)
        == dropped
    )
    assert _buffer_warnings(caplog, "buffer full: dropped")
    await _set_max_pages(buf, None)
    await buf.close()


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    """A 3 MB tmpfs: a real ENOSPC. Needs root (CI runs as root); skipped elsewhere."""
    mount = shutil.which("mount")
    point = tmp_path / "tiny"
    point.mkdir()
    if mount is None or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(
        [mount, "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(point)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.decode().strip()}")
    try:
        yield point
    finally:
        subprocess.run(["umount", "-l", str(point)], check=False)


async def test_small_disk_bounds_the_buffer_drops_oldest_counted(
    tiny_fs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """max_size far above what the file system holds: the room on disk is the bound."""
    (tiny_fs / "filler").write_bytes(b"f" * 1_000_000)
    data = tiny_fs / "data"
    buf = await _open(data, 64 * MIN_SIZE)
    acknowledged = [await buf.put("a", i, os.urandom(3000)) for i in range(1500)]
    assert acknowledged == list(range(1, 1501))  # never refused
    rows = await buf.fetch(0, 10_000)
    dropped = buf.stats().dropped_total
    assert dropped > 0 and len(rows) + dropped == 1500
    assert [r.seq for r in rows] == acknowledged[dropped:]  # the oldest went
    assert _buffer_warnings(caplog, "disk has less room than buffer.max_size")
    (tiny_fs / "filler").unlink()  # space returns: the bound grows back
    buf._store._stat_at = 0.0  # as one second later: the next commit sees the room
    limit = buf._store.limit
    await buf.put("a", 0, BODY)
    dropped = buf.stats().dropped_total
    rows = await buf.fetch(0, 10_000)
    for i in range(150):  # 600 KB more, within the megabyte that came back
        await buf.put("a", i, os.urandom(3000))
    assert buf._store.limit > limit + 900_000
    assert buf.stats().dropped_total == dropped
    assert buf.stats().batches == len(rows) + 150
    await buf.close()
    assert _integrity(data) == "ok"


async def test_disk_filled_to_the_last_byte_refuses_puts_keeps_committed_and_recovers(
    tiny_fs: Path,
) -> None:
    """Another program takes every byte after the buffer opened: SQLite cannot even write the
    deletes that would make room. Puts fail (the caller's batch is not stored, no seq used),
    nothing committed is lost, and storing resumes when space returns."""
    data = tiny_fs / "data"
    buf = await _open(data, 64 * MIN_SIZE)
    acknowledged = [await buf.put("a", i, os.urandom(3000)) for i in range(100)]
    fd = os.open(tiny_fs / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, b"f" * 65536)
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, b"f")
    finally:
        os.close(fd)
    failures = 0
    for i in range(3000):
        try:
            acknowledged.append(await buf.put("a", i, os.urandom(3000)))
        except BufferError:
            failures += 1
            if failures == 20:  # the next puts retried, and failed too
                break
    assert failures == 20
    assert acknowledged == list(range(1, len(acknowledged) + 1))
    stored = [r.seq for r in await buf.fetch(0, 10_000)]
    assert stored == acknowledged[len(acknowledged) - len(stored) :]  # nothing committed lost
    assert len(stored) + buf.stats().dropped_total == len(acknowledged)
    (tiny_fs / "filler").unlink()  # space returns
    buf._store._stat_at = 0.0
    assert await buf.put("a", 0, BODY) == len(acknowledged) + 1
    await buf.close()
    assert _integrity(data) == "ok"
    assert _stored(data)["a"][-1] == len(acknowledged) + 1


# -- corruption and lost databases -----------------------------------------------------------------


async def test_garbage_file_is_quarantined_and_seqs_are_not_reused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    buf = await _open(tmp_path)
    for _ in range(3):
        await buf.put("a", 0, BODY)
        await buf.put("b", 0, BODY)
    await buf.close()
    (tmp_path / "buffer.db").write_bytes(b"this is not a database" * 1000)
    buf = await _open(tmp_path)
    assert len(list(tmp_path.glob("buffer.db.corrupt-*"))) == 1
    assert [r for r in caplog.records if r.levelno == logging.ERROR and "corrupt" in r.message]
    assert buf.stats().batches == 0
    seq_a = await buf.put("a", 0, BODY)
    assert 3 < seq_a <= 3 + SEQ_RESERVATION + 1
    await buf.close()
    # b was not used since: its counter must still be above what was handed out before.
    buf = await _open(tmp_path)
    assert await buf.put("b", 0, BODY) > 3
    assert await buf.put("a", 0, BODY) == seq_a + 1
    await buf.close()


async def test_damaged_pages_are_quarantined_and_counters_salvaged(tmp_path: Path) -> None:
    buf = await _open(tmp_path)
    for _ in range(300):
        await buf.put("a", 0, _noise(500))
    await buf.close()
    with open(tmp_path / "buffer.db", "r+b") as f:
        f.seek(4096 * 20)  # a page of batches; the seq counters live on the first pages
        f.write(random.Random(1).randbytes(4096))
    (tmp_path / "seq.json").unlink()  # so only the damaged file knows the counters
    buf = await _open(tmp_path)
    assert list(tmp_path.glob("buffer.db.corrupt-*"))
    assert await buf.put("a", 0, BODY) == 301
    await buf.close()


async def test_deleted_database_resumes_above_reserved_seqs(tmp_path: Path) -> None:
    buf = await _open(tmp_path)
    await buf.put("a", 0, BODY)
    await buf.close()
    (tmp_path / "buffer.db").unlink()
    buf = await _open(tmp_path)
    assert await buf.put("a", 0, BODY) == 1 + SEQ_RESERVATION + 1
    await buf.close()


async def test_unreadable_seq_file_is_rewritten_from_the_database(tmp_path: Path) -> None:
    buf = await _open(tmp_path)
    await buf.put("a", 0, BODY)
    await buf.close()
    (tmp_path / "seq.json").write_text("{not json")
    buf = await _open(tmp_path)
    assert await buf.put("a", 0, BODY) == 2
    await buf.close()
    assert '"a"' in (tmp_path / "seq.json").read_text()


async def test_database_older_than_seq_file_jumps_ahead(tmp_path: Path) -> None:
    buf = await _open(tmp_path)
    await buf.put("a", 0, BODY)
    await buf.close()
    # As if buffer.db had been restored from an old backup while numbering went on to 50000.
    (tmp_path / "seq.json").write_text('{"a": {"data": 50000}}')
    buf = await _open(tmp_path)
    assert await buf.put("a", 0, BODY) == 50_001
    await buf.close()


async def test_open_failures_and_use_after_close_raise_buffer_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    bad = Buffer(tmp_path / "file" / "data", MIN_SIZE)
    with pytest.raises(BufferError):
        await bad.open()
    await bad.close()
    buf = await _open(tmp_path / "ok")
    await buf.close()
    with pytest.raises(BufferError):
        await buf.fetch(0, 10)
    with pytest.raises(BufferError):
        await buf.put("a", 0, BODY)


# -- crash safety ----------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    ("max_size", "body", "ack"),
    [(64 * MIN_SIZE, 200, True), (MIN_SIZE, 3000, False)],
    ids=["with-acks", "full-and-dropping"],
)
async def test_sigkill_mid_stream_loses_no_acknowledged_batch(
    tmp_path: Path, max_size: int, body: int, ack: bool
) -> None:
    rng = random.Random(11)
    acknowledged: dict[str, list[int]] = defaultdict(list)
    for _round in range(10):
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.helpers.buffer_writer",
            str(tmp_path), "4", str(max_size), str(body), "1" if ack else "0",
            stdout=asyncio.subprocess.PIPE,
            cwd=ROOT,
        )  # fmt: skip
        assert proc.stdout is not None
        assert (await proc.stdout.readline()).strip() == b"ready"
        for _ in range(rng.randint(20, 400)):
            device, seq = (await proc.stdout.readline()).decode().split()
            acknowledged[device].append(int(seq))
        proc.send_signal(signal.SIGKILL)
        for line in (await proc.stdout.read()).decode().splitlines():  # printed before it died
            device, seq = line.split()
            acknowledged[device].append(int(seq))
        await proc.wait()
        for seqs in acknowledged.values():  # never reused across crashes
            assert seqs == sorted(set(seqs)), seqs
    assert _integrity(tmp_path) == "ok"
    conn = sqlite3.connect(tmp_path / "buffer.db")
    counters = {d: last for d, last in conn.execute("SELECT device, last FROM seqs")}
    dropped_row = conn.execute("SELECT value FROM meta WHERE key = 'dropped'").fetchone()
    conn.close()
    stored = _stored(tmp_path)
    for device, seqs in acknowledged.items():
        kept = stored[device]
        assert kept, device  # the writer's newest batches are never all published or dropped
        # What is left is contiguous up to the last committed seq (older ones were published
        # or dropped, oldest first), and covers every seq the writer was told about.
        assert kept == list(range(kept[0], counters[device] + 1)), device
        assert counters[device] >= seqs[-1]
        missing = [s for s in seqs if s >= kept[0] and s not in set(kept)]
        assert not missing
    if not ack:  # every batch ever committed is either stored or counted as dropped
        dropped = int(dropped_row[0]) if dropped_row else 0
        assert dropped > 0
        assert sum(len(v) for v in stored.values()) + dropped == sum(counters.values())
    buf = await _open(tmp_path, max_size)
    for device in acknowledged:
        assert await buf.put(device, 0, BODY) == counters[device] + 1
    await buf.close()


# -- model-based -----------------------------------------------------------------------------------

_op = st.one_of(
    st.tuples(st.just("put"), st.integers(0, 2), st.integers(0, 6000)),
    st.tuples(st.just("ack"), st.integers(0, 10), st.integers(0, 10)),
    st.tuples(st.just("reopen"), st.just(0), st.just(0)),
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(_op, max_size=25))
def test_behaves_like_a_simple_model(ops: list[tuple[str, int, int]]) -> None:
    async def scenario(path: Path) -> None:
        buf = await _open(path)
        model: dict[int, tuple[str, int]] = {}  # id -> (device, seq), what must be stored
        last: dict[str, int] = {}
        try:
            for op, a, b in ops:
                if op == "put":
                    device = f"d{a}"
                    seq = await buf.put(device, b, b"v" * b)
                    assert seq == last.get(device, 0) + 1
                    last[device] = seq
                    model[await buf.max_id()] = (device, seq)
                elif op == "ack":
                    ids = sorted(model)[a : a + b]
                    await buf.ack(ids)
                    for i in ids:
                        del model[i]
                else:
                    await buf.close()
                    buf = await _open(path)
                rows = await buf.fetch(0, 1000)
                assert {r.id: (r.device, r.seq) for r in rows} == model
                assert [r.id for r in rows] == sorted(model)
                assert buf.stats().batches == len(model)
        finally:
            await buf.close()

    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(scenario(Path(tmp)))


# -- the buffer inside a running agent ---------------------------------------------------------


def _agent_config(
    tmp_path: Path, data_dir: Path, broker_port: int, sim_port: int, size: str
) -> Path:
    from simulators.modbus_map import PRESS_POINTS, TYPE_TEST_POINTS
    from tests.e2e import write_config

    path = write_config(
        tmp_path / "c.yaml",
        broker_port=broker_port,
        modbus_port=sim_port,
        devices=[
            {
                "name": f"d{u}",
                "poll_interval": "20ms",
                "connection": {"host": "127.0.0.1", "port": sim_port, "unit_id": u},
                "tags": [p.tag() for p in PRESS_POINTS + TYPE_TEST_POINTS],
            }
            for u in (1, 2, 3, 4)
        ],
    )
    text = path.read_text().replace(str(tmp_path / "data"), str(data_dir))
    path.write_text(text.replace('"16MB"', f'"{size}"'))
    return path


@pytest.mark.slow
async def test_agent_buffer_stays_within_bound_at_all_times_while_the_broker_is_away(
    tmp_path: Path,
) -> None:
    """Sampled every millisecond from another thread while four devices fill a 1 MB buffer."""
    from simulators.modbus_tcp import ModbusSimulator
    from tests.brokers import free_port
    from tests.e2e import AgentRig, until

    data = tmp_path / "data"
    async with ModbusSimulator(port=free_port(), units=(1, 2, 3, 4)) as sim:
        cfg = _agent_config(tmp_path, data, free_port(), sim.port, "1MB")  # no broker there
        peak = 0
        stop = threading.Event()

        def sampler() -> None:
            nonlocal peak
            while not stop.wait(0.001):
                peak = max(peak, _disk_bytes(data))

        thread = threading.Thread(target=sampler)
        thread.start()
        try:
            async with AgentRig(cfg) as agent:
                buf = agent.buffer
                await until(lambda: buf.stats().dropped_total > 0, timeout=30)
                dropped = buf.stats().dropped_total
                await until(lambda: buf.stats().dropped_total > 3 * dropped + 200, timeout=30)
                cycles = [p.cycles for p in agent.pollers]
                await until(
                    lambda: all(
                        p.cycles > c + 5 for p, c in zip(agent.pollers, cycles, strict=True)
                    )
                )
        finally:
            stop.set()
            thread.join()
    assert 0 < peak <= MIN_SIZE * 1.05, peak
    print(f"agent buffer: peak {peak} bytes on disk for max_size {MIN_SIZE}")


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_agent_on_a_full_disk_keeps_polling_drops_oldest_counted_and_recovers(
    tiny_fs: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A real ENOSPC: the buffer (max_size far above the file system) fills a 3 MB tmpfs while
    the broker is away. The agent keeps polling, makes room by dropping the oldest batches and
    counts them, and when space and the broker return every batch not counted as dropped is
    delivered."""
    from simulators.modbus_tcp import ModbusSimulator
    from tests.brokers import Mosquitto, Subscriber, data_seqs, free_port
    from tests.e2e import AgentRig, buffer_state, until

    (tiny_fs / "filler").write_bytes(b"f" * 1_200_000)
    data = tiny_fs / "data"
    broker = Mosquitto(tmp_path / "mosquitto")
    caplog.set_level(logging.WARNING, logger="agent.core.buffer")
    async with ModbusSimulator(port=free_port(), units=(1, 2, 3, 4)) as sim:
        cfg = _agent_config(tmp_path, data, broker.port, sim.port, "64MB")
        sub: Subscriber | None = None
        try:
            async with AgentRig(cfg) as agent:
                buf = agent.buffer
                await until(lambda: buf.stats().dropped_total > 0, timeout=60)
                assert _buffer_warnings(caplog, "disk has less room than buffer.max_size")
                # The disk is full: polling goes on, every cycle, and the oldest batches make room.
                cycles = [p.cycles for p in agent.pollers]
                await until(
                    lambda: all(
                        p.cycles > c + 20 for p, c in zip(agent.pollers, cycles, strict=True)
                    )
                )
                await until(lambda: buf.stats().dropped_total > 0, timeout=30)
                reads = agent.metrics.registry.get_sample_value
                before = sum(
                    reads("edge_agent_reads_total", {"device": p.device.name}) or 0
                    for p in agent.pollers
                )
                await asyncio.sleep(0.5)
                after = sum(
                    reads("edge_agent_reads_total", {"device": p.device.name}) or 0
                    for p in agent.pollers
                )
                assert after > before  # batches are still committed, in the room drops made
                # Space and the broker return: everything still buffered goes out. The
                # buffer sees the room at its next statvfs (within a second); a drop before
                # that, with the broker back, would take the oldest batches, the ones in
                # flight: delivered, and counted dropped (docs/reliability.md).
                limit = buf._store.limit
                (tiny_fs / "filler").unlink()
                await until(lambda: buf._store.limit > limit + 900_000, timeout=10)
                await asyncio.to_thread(broker.start)
                sub = Subscriber(broker.port, ["edge/test-gw/+/data"], client_id="full").start()
                await until(agent.publisher.connected.is_set, timeout=10)
                # The backlog is sent: nothing older than two seconds waits any more.
                await until(lambda: (buf.stats().oldest_created or 1e18) > time.time() - 2, 90)
                dropped = buf.stats().dropped_total
                metric = reads("edge_agent_buffer_dropped_batches_total", DEFAULT)
            last, waiting = buffer_state(data)
            assert sub is not None
            await sub.wait_for(
                lambda m: all(
                    max(data_seqs(m, d) or [0]) >= last[d] - len(waiting.get(d, ())) for d in last
                ),
                timeout=30,
            )
        finally:
            if sub is not None:
                sub.stop()
            broker.stop()
    assert metric == dropped > 0
    missing = 0
    for device, n in last.items():
        have = set(data_seqs(sub.snapshot(), device)) | waiting.get(device, set())
        lost = [s for s in range(1, n + 1) if s not in have]
        # Drops take the oldest: every missing seq comes before every delivered one.
        assert not lost or max(lost) < min(have - set(lost)), device
        missing += len(lost)
    assert missing == dropped  # every gap is a counted drop, every counted drop a gap
    print(f"full disk: {dropped} oldest batches dropped and counted, the rest delivered")
