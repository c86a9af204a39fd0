"""Baseline for the destinations benchmark: the agent's own polling, with nothing stored or sent.

The agent is built exactly as ``edge-agent run`` builds it (``Agent(config)``: drivers from the
registry, the staggered pollers, the status board, the pipeline with its clock clamp and the
stored record's encoding), but the pipeline's ``Buffer.put`` hands each batch a seq and throws
it away, and no destination is started. What the agent costs beyond this with one destination
is the price of publishing: the durable commit (group commit, fsync), fetching, packing, the
MQTT client and the acknowledgement.

A run with the only broker blackholed would not do: the batches would still be committed and
the store would grow, which costs more than publishing them. A bare pymodbus poller
(``bench.raw_poll``) would do too little: it neither decodes nor builds readings.

    .venv/bin/python -m bench.agent_poll_only CONFIG
"""

from __future__ import annotations

import asyncio
import gc
import sys
from itertools import count
from pathlib import Path

from agent.app.config import load_config
from agent.app.runtime import Agent
from agent.south.registry import load_drivers


async def main(config_path: str) -> None:
    agent = Agent(load_config(Path(config_path), load_drivers()))
    seqs = count(1)

    async def discard(device: str, ts_ms: int, body: bytes, kind: str = "data") -> int:
        return next(seqs)

    setattr(agent.buffer, "put", discard)  # noqa: B010 (mypy refuses assigning to a method)
    gc.freeze()  # as ``edge-agent run`` does once started
    await asyncio.gather(*(poller.run() for poller in agent.pollers))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
