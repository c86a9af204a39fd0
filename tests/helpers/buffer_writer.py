"""A child process for crash tests: commits batches and prints each acknowledged seq.

Usage: ``python -m tests.helpers.buffer_writer DATA_DIR DEVICES MAX_SIZE BODY_BYTES ACK
[COMMIT_INTERVAL POLL]``

The parent SIGKILLs it at a random point. Every ``<device> <seq>`` line was printed after
``put()`` returned, that is after the batch was durable, so it must be found after reopening
unless the buffer dropped it (full) or a simulated publisher deleted it (``ACK`` = 1: the oldest
batches are acknowledged as they come, the way the publisher does after PUBACK). With
``COMMIT_INTERVAL`` the buffer commits in windows (and defers acknowledgements to them), with
``POLL`` each device puts every that many seconds and says when its next put is due, as a
poller does (``COMMIT_BY``).
"""

from __future__ import annotations

import asyncio
import random
import sys
from pathlib import Path

from agent.core.buffer import Buffer
from agent.core.commit_by import COMMIT_BY

TS_MS = 1_700_000_000_000


async def main(
    data_dir: Path,
    devices: int,
    max_size: int,
    body_bytes: int,
    ack: bool,
    commit_interval: float = 0.0,
    poll: float = 0.0,
) -> None:
    buf = Buffer(data_dir, max_size, commit_interval=commit_interval)
    await buf.open()
    print("ready", flush=True)
    body = random.Random(0).randbytes(body_bytes)  # does not deflate: sized to fill pages

    async def device(name: str) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time()
        while True:
            due += poll
            if poll:
                COMMIT_BY.set(due)
            seq = await buf.put(name, TS_MS, body)
            sys.stdout.write(f"{name} {seq}\n")
            sys.stdout.flush()
            if poll:
                await asyncio.sleep(max(0.0, due - loop.time()))

    async def publisher() -> None:
        while True:
            await buf.new_data.wait()
            buf.new_data.clear()
            rows = await buf.fetch(0, 64)
            await buf.ack([r.id for r in rows[: len(rows) // 2]])

    tasks = [device(f"d{i}") for i in range(devices)]
    if ack:
        tasks.append(publisher())
    await asyncio.gather(*tasks)


if __name__ == "__main__":
    asyncio.run(
        main(
            Path(sys.argv[1]),
            int(sys.argv[2]),
            int(sys.argv[3]),
            int(sys.argv[4]),
            sys.argv[5] == "1",
            *(float(a) for a in sys.argv[6:8]),
        )
    )
