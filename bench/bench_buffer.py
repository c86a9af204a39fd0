"""Buffer throughput: one put per transaction against group commit, measured in the same run.

    .venv/bin/python bench/bench_buffer.py [--seconds 4] [--dir /path/on/the/target/disk]

(a) baseline: one task awaiting its puts one after another, so every batch is its own transaction
    and its own fsync (what a buffer without group commit costs);
(b) group commit: 100 device tasks putting concurrently, as the scheduler does.

Per mode: batches/s, transactions/s, batches per transaction, bytes written to the disk per batch
(from /proc/self/io: what wears an SD card) and bytes the files occupy per stored batch. The
ratios are what carries over to other machines; absolute figures depend on the disk's fsync
latency, so run it with ``--dir`` on the gateway's own card.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from agent.core.buffer import Buffer

BODY = (
    b'{"ts":1763884800123,"values":{"voltage_l1":229.8,"voltage_l2":230.1,"voltage_l3":229.5,'
    b'"current_l1":12.45,"frequency":50.0,"power_kw":8.02,"energy_kwh":17005.01,'
    b'"oil_temp":61.5,"door_open":false,"serial_no":"PUMP-07!","stroke_count":24515}}'
)
MAX_SIZE = 256_000_000


@dataclass
class Result:
    name: str
    batches: int
    commits: int
    seconds: float
    written: int
    file_bytes: int

    @property
    def rate(self) -> float:
        return self.batches / self.seconds


def _written() -> int:
    """Bytes this process handed to write()/pwrite() so far (Linux)."""
    try:
        with open("/proc/self/io") as f:
            for line in f:
                if line.startswith("wchar:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _file_bytes(data_dir: Path) -> int:
    return sum(
        os.stat(p).st_size
        for p in (data_dir / "buffer.db", data_dir / "buffer.db-wal")
        if p.exists()
    )


async def _run(name: str, data_dir: Path, tasks: int, seconds: float) -> Result:
    buf = Buffer(data_dir, MAX_SIZE)
    await buf.open()
    stop = time.perf_counter() + seconds
    count = 0

    async def device(i: int) -> None:
        nonlocal count
        while time.perf_counter() < stop:
            await buf.put(f"dev{i:03d}", 0, BODY)
            count += 1

    commits0, written0, t0 = buf.commits, _written(), time.perf_counter()
    await asyncio.gather(*(device(i) for i in range(tasks)))
    elapsed = time.perf_counter() - t0
    commits, written = buf.commits - commits0, _written() - written0
    await buf.close()  # checkpoints: what is left is the database alone
    return Result(name, count, commits, elapsed, written, _file_bytes(data_dir))


def _print(r: Result) -> None:
    print(
        f"{r.name:<28} {r.rate:>10.0f} batches/s {r.commits / r.seconds:>9.0f} txn/s "
        f"{r.batches / max(1, r.commits):>7.1f} batches/txn "
        f"{r.written / max(1, r.batches):>8.0f} B written/batch "
        f"{r.file_bytes / max(1, r.batches):>6.0f} B on disk/batch"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="per mode (default 4)")
    parser.add_argument("--dir", type=Path, default=None, help="where to put the databases")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        print(f"body {len(BODY)} bytes, {args.seconds:g} s per mode, in {tmp}")
        single = await _run("(a) one put per transaction", Path(tmp) / "a", 1, args.seconds)
        _print(single)
        group = await _run("(b) group commit, 100 tasks", Path(tmp) / "b", 100, args.seconds)
        _print(group)

    def per_batch(r: Result, value: int) -> float:
        return value / max(1, r.batches)

    written = per_batch(group, group.written) / per_batch(single, single.written)
    on_disk = per_batch(group, group.file_bytes) / per_batch(single, single.file_bytes)
    print(
        f"ratios (b)/(a): throughput x{group.rate / single.rate:.1f}, "
        f"bytes written per batch x{written:.2f}, bytes on disk per batch x{on_disk:.2f}"
    )


if __name__ == "__main__":
    asyncio.run(main())
