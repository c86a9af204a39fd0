"""The buffer's commit window (``buffer.commit_interval``): batches that arrive close together
share one transaction and one fsync, acknowledgements wait for the next commit (and go in the
same transaction), and no poller waits past its next poll (``COMMIT_BY``, which the pollers set:
docs/performance.md, docs/reliability.md)."""

from __future__ import annotations

import asyncio
import random
import signal
import sqlite3
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from agent.core.buffer import MIN_SIZE, Buffer
from agent.core.buffer.store import PAGE_SIZE
from agent.core.commit_by import COMMIT_BY
from tests.e2e import until

ROOT = Path(__file__).resolve().parent.parent
BODY = b'{"ts":0,"values":{"v":1}}'


async def _open(path: Path, commit_interval: float) -> Buffer:
    buf = Buffer(path, 8 * MIN_SIZE, commit_interval=commit_interval)
    await buf.open()
    return buf


async def _poller(buf: Buffer, device: str, every: float, rounds: int, waits: list[float]) -> None:
    """A device polled every ``every`` seconds, waiting for each commit as a poller does (and
    saying when its next poll is due, as ``DevicePoller`` does)."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    for k in range(rounds):
        t0 = loop.time()
        COMMIT_BY.set(start + (k + 1) * every)
        await buf.put(device, 0, BODY)
        waits.append(loop.time() - t0)
        await asyncio.sleep(max(0.0, start + (k + 1) * every - loop.time()))


async def test_staggered_devices_share_one_commit_per_window(tmp_path: Path) -> None:
    buf = await _open(tmp_path, commit_interval=1.0)
    waits: list[float] = []

    async def staggered(i: int) -> None:
        await asyncio.sleep(i * 0.02)  # spread over the interval, as the scheduler does
        await _poller(buf, f"d{i}", 0.6, 3, waits)

    try:
        await asyncio.gather(*(staggered(i) for i in range(10)))
        # Ten devices spread over 0.2 s of a 0.6 s interval: each round is one commit (two at
        # most, on a loaded machine), each put back before its device's next poll.
        assert buf.commits <= 3 * 2, buf.commits
        assert max(waits) < 0.6, max(waits)
        assert sorted(r.seq for r in await buf.fetch(0, 100) if r.device == "d3") == [1, 2, 3]
    finally:
        await buf.close()


async def test_without_a_window_each_put_commits_at_once(tmp_path: Path) -> None:
    buf = await _open(tmp_path, commit_interval=0.0)
    waits: list[float] = []
    try:
        await asyncio.gather(*(_poller(buf, f"d{i}", 0.1, 3, waits) for i in range(3)))
        assert max(waits) < 0.1, max(waits)
        await buf.ack([r.id for r in await buf.fetch(0, 100)])
        assert buf.stats().batches == 0  # acknowledged at once, no window to wait for
    finally:
        await buf.close()


async def test_a_put_is_back_before_its_pollers_next_poll(tmp_path: Path) -> None:
    buf = await _open(tmp_path, commit_interval=5.0)  # far longer than the poll interval
    waits: list[float] = []
    try:
        await _poller(buf, "fast", 0.1, 6, waits)
        assert 0.04 < max(waits) < 0.1, waits  # it did wait, and never into the next poll
    finally:
        await buf.close()


async def test_slow_commits_shrink_the_window_so_no_poll_is_late(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A card whose fsyncs take 150 ms: with the window alone (four fifths of the 0.5 s left)
    a put would come back after its poller's next tick; the spare kept for recent slow commits
    brings every one back in time."""
    buf = await _open(tmp_path, commit_interval=5.0)
    slow = buf._store.commit_group

    def stalling(*args: Any) -> Any:
        time.sleep(0.15)
        return slow(*args)

    monkeypatch.setattr(buf._store, "commit_group", stalling)
    waits: list[float] = []
    try:
        await _poller(buf, "on-a-slow-card", 0.5, 6, waits)
        assert max(waits[2:]) < 0.5, waits  # after the first slow commits were seen
    finally:
        await buf.close()


async def test_the_first_batch_after_start_is_not_held(tmp_path: Path) -> None:
    """Start-up: the first batch goes out at once (time to the first batch at the broker)."""
    buf = await _open(tmp_path, commit_interval=5.0)
    loop = asyncio.get_running_loop()
    try:
        COMMIT_BY.set(loop.time() + 20.0)
        t0 = loop.time()
        await buf.put("d", 0, BODY)
        assert loop.time() - t0 < 0.2
    finally:
        await buf.close()


async def test_a_put_without_a_poll_deadline_commits_at_once(tmp_path: Path) -> None:
    """A task that set no ``COMMIT_BY`` (a driver's own event, say) is not held."""
    buf = await _open(tmp_path, commit_interval=5.0)
    loop = asyncio.get_running_loop()
    try:
        for _ in range(3):
            t0 = loop.time()
            await buf.put("event-source", 0, BODY)
            assert loop.time() - t0 < 0.1
    finally:
        await buf.close()


async def test_a_busy_serial_line_is_not_held_up(tmp_path: Path) -> None:
    """One task polls five devices in turn with no idle time (a saturated line): the next
    device is always due already, so the line sets a deadline in the past (as ``LinePoller``
    does) and no put waits for the window."""
    buf = await _open(tmp_path, commit_interval=1.0)
    loop = asyncio.get_running_loop()
    waits: list[float] = []
    try:
        for _cycle in range(4):
            for unit in range(5):
                COMMIT_BY.set(loop.time())  # the next device on the line is due now
                t0 = loop.time()
                await buf.put(f"rtu{unit}", 0, BODY)
                waits.append(loop.time() - t0)
                await asyncio.sleep(0.01)  # the next device's request and answer on the bus
        assert max(waits) < 0.05, waits
    finally:
        await buf.close()


async def test_close_commits_what_waits_in_the_window(tmp_path: Path) -> None:
    buf = await _open(tmp_path, commit_interval=10.0)
    loop = asyncio.get_running_loop()

    async def slow_poller() -> int:
        COMMIT_BY.set(loop.time() + 20.0)  # its next poll is far: it may wait the whole window
        return await buf.put("d", 0, BODY)

    await buf.put("first", 0, BODY)  # the first batch after start is committed at once
    waiting = asyncio.create_task(slow_poller())
    await asyncio.sleep(0.3)
    assert not waiting.done()  # waiting for the window: nothing committed yet
    t0 = loop.time()
    await buf.close()
    assert await waiting == 1
    assert loop.time() - t0 < 0.5
    conn = sqlite3.connect(tmp_path / "buffer.db")
    try:
        assert conn.execute("SELECT max(seq) FROM batches").fetchone()[0] == 1
    finally:
        conn.close()


async def test_acks_wait_for_the_next_commit_and_a_fetch_from_behind_never_sees_them(
    tmp_path: Path,
) -> None:
    buf = await _open(tmp_path, commit_interval=0.3)
    try:
        for device in ("a", "b", "c"):
            await buf.put(device, 0, BODY)
        rows = await buf.fetch(0, 10)
        await buf.ack([rows[0].id])
        assert buf.stats().batches == 3  # deferred: nothing written yet
        # A new session fetches from the start: the acknowledged row is not sent again.
        assert [r.id for r in await buf.fetch(0, 10)] == [r.id for r in rows[1:]]
        assert buf.stats().batches == 2
        await buf.ack([r.id for r in rows[1:]])
        await until(lambda: buf.stats().batches == 0, timeout=2.0)  # by the window's end
    finally:
        await buf.close()


async def test_acks_waiting_at_close_are_written(tmp_path: Path) -> None:
    buf = await _open(tmp_path, commit_interval=5.0)
    await buf.put("a", 0, BODY)
    await buf.ack([r.id for r in await buf.fetch(0, 10)])
    await buf.close()
    conn = sqlite3.connect(tmp_path / "buffer.db")
    try:
        assert conn.execute("SELECT count(*) FROM batches").fetchone()[0] == 0
    finally:
        conn.close()


async def test_a_new_database_has_small_pages(tmp_path: Path) -> None:
    buf = await _open(tmp_path, commit_interval=0.0)
    await buf.close()
    conn = sqlite3.connect(tmp_path / "buffer.db")
    try:
        assert conn.execute("PRAGMA page_size").fetchone()[0] == PAGE_SIZE == 1024
    finally:
        conn.close()


@pytest.mark.slow
async def test_sigkill_with_a_commit_window_loses_no_committed_batch(tmp_path: Path) -> None:
    """Four pollers every 50 ms with a 1 s commit window and deferred acknowledgements, killed
    at random points ten times: every seq ``put()`` returned is stored or was acknowledged,
    and none is reused."""
    rng = random.Random(20)
    told: dict[str, list[int]] = defaultdict(list)
    for _round in range(10):
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.helpers.buffer_writer",
            str(tmp_path), "4", str(8 * MIN_SIZE), "200", "1", "1.0", "0.05",
            stdout=asyncio.subprocess.PIPE,
            cwd=ROOT,
        )  # fmt: skip
        assert proc.stdout is not None
        assert (await proc.stdout.readline()).strip() == b"ready"
        for _ in range(rng.randint(10, 60)):
            device, seq = (await proc.stdout.readline()).decode().split()
            told[device].append(int(seq))
        proc.send_signal(signal.SIGKILL)
        for line in (await proc.stdout.read()).decode().splitlines():
            device, seq = line.split()
            told[device].append(int(seq))
        await proc.wait()
        for seqs in told.values():
            assert seqs == sorted(set(seqs)), seqs  # never reused across crashes
    conn = sqlite3.connect(tmp_path / "buffer.db")
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        counters = dict(conn.execute("SELECT device, last FROM seqs").fetchall())
        stored: dict[str, list[int]] = defaultdict(list)
        for device, seq in conn.execute("SELECT device, seq FROM batches ORDER BY id"):
            stored[device].append(seq)
    finally:
        conn.close()
    for device, seqs in told.items():
        kept = stored[device]
        assert counters[device] >= seqs[-1]
        if kept:  # the rest was acknowledged, oldest first
            assert kept == list(range(kept[0], counters[device] + 1)), device
            assert not [s for s in seqs if s >= kept[0] and s not in set(kept)]
