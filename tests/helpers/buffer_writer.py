"""A child process for crash tests: commits batches and prints each acknowledged seq.

The parent SIGKILLs it at a random point; whatever was printed had been acknowledged as durable,
so it must be in the buffer after reopening.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from agent.buffer import Buffer


async def main(data_dir: str, devices: int) -> None:
    buf = Buffer(Path(data_dir), 64 * 1024 * 1024)
    await buf.open()
    print("ready", flush=True)

    async def device(name: str) -> None:
        while True:
            seq = await buf.put(name, 0, b'{"ts":0,"values":{"x":' + b"1" * 200 + b"}}")
            sys.stdout.write(f"{name} {seq}\n")
            sys.stdout.flush()

    await asyncio.gather(*(device(f"d{i}") for i in range(devices)))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
