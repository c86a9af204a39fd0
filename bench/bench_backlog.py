"""Backlog drain after a long outage, while live data keeps flowing.

A one-hour outage at 10,000 points/s (200 meters x 50 tags, 1 s polls: 720,000 batches) is not
waited for: the buffer is pre-filled through the real store (``Buffer.put``, group commit, the
agent's own record encoding) with batches time-stamped over the past hour. Then the agent starts
with the same 200 devices live against the simulator and the broker back, and a subscriber
separates the backlog (seqs up to the pre-filled ones) from live data.

Prints the drain rate against the ingest rate (target: at least 10x) and the latency of live data
while the backlog drains (target: under 1 s), both measured in the same run.

    .venv/bin/python -m bench.bench_backlog [--minutes 60] [--seconds 30]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from agent.core.buffer import Buffer
from agent.core.record import encode_batch
from bench.bench_e2e import ROOT, DataWatch, bench_tags, cpu_seconds, write_config
from drivers.base import Batch, Reading
from tests.brokers import Mosquitto, free_port

DEVICES = 200
TAGS = 50


async def prefill(data_dir: Path, minutes: float) -> tuple[int, float]:
    """Store ``minutes`` of 1 s batches per device; returns (batches, seconds it took)."""
    names = [t["name"] for t in bench_tags(TAGS)]
    buf = Buffer(data_dir, 4_000_000_000)
    await buf.open()
    t0 = time.monotonic()
    start = time.time() - minutes * 60
    total = 0
    for second in range(int(minutes * 60)):
        ts = start + second
        readings = [Reading(tag=n, value=229.8 + i, ts=ts) for i, n in enumerate(names)]
        bodies = [
            encode_batch(Batch(device=f"dev-{u:03d}", ts=ts, readings=readings))
            for u in range(1, DEVICES + 1)
        ]
        await asyncio.gather(
            *(
                buf.put(f"dev-{u:03d}", round(ts * 1000), body)
                for u, body in enumerate(bodies, start=1)
            )
        )
        total += DEVICES
    await buf.close()
    return total, time.monotonic() - t0


class Watch(DataWatch):
    """Counts backlog and live messages per second and the live latency."""

    def __init__(self, port: int, backlog_last: int) -> None:
        self.backlog_last = backlog_last
        self.backlog = 0
        self.live = 0
        self.live_latency: list[float] = []
        self.listen(port, "drain-watch")

    def count(self, doc: dict[str, Any], now: float) -> None:
        if doc["seq"] <= self.backlog_last:
            self.backlog += 1
        else:
            self.live += 1
            self.live_latency.append(now - doc["ts"] / 1000)

    def snapshot(self) -> tuple[int, int]:
        with self.lock:
            return self.backlog, self.live


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, default=60.0, help="outage to simulate")
    parser.add_argument("--seconds", type=float, default=30.0, help="drain time measured")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="edge-backlog-"))
    stored, took = asyncio.run(prefill(work / "data", args.minutes))
    per_device = stored // DEVICES
    print(
        f"pre-filled {stored:,} batches ({args.minutes:g} min x {DEVICES} devices x {TAGS} tags"
        f" = {stored * TAGS:,} points) in {took:.0f} s",
        flush=True,
    )
    broker = Mosquitto(work / "mosquitto")
    broker.start()
    modbus_port = free_port()
    sim = subprocess.Popen(
        [sys.executable, "-m", "simulators.modbus_tcp", "--port", str(modbus_port), "--units",
         f"1-{DEVICES}", "--update-interval", "1"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    cfg = work / "bench.yaml"
    write_config(cfg, DEVICES, TAGS, modbus_port, broker.port)
    watch = Watch(broker.port, per_device)
    time.sleep(2.0)
    agent = subprocess.Popen(
        [str(Path(sys.executable).parent / "edge-agent"), "run", "-c", str(cfg), "--log-level",
         "warning"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    ps = psutil.Process(agent.pid)
    try:
        time.sleep(5.0)  # connected, the live stream running beside the backlog
        b0, l0 = watch.snapshot()
        with watch.lock:
            watch.live_latency.clear()
        cpu0, t0 = cpu_seconds(ps), time.monotonic()
        time.sleep(args.seconds)
        b1, l1 = watch.snapshot()
        cpu1, elapsed = cpu_seconds(ps), time.monotonic() - t0
        rss = ps.memory_info().rss / 1e6
    finally:
        agent.terminate()
        agent.wait(30)
        watch.client.disconnect()
        watch.client.loop_stop()
        sim.terminate()
        sim.wait(10)
        broker.stop()
    drain = (b1 - b0) / elapsed * TAGS
    live = (l1 - l0) / elapsed * TAGS
    lat = sorted(watch.live_latency)
    p50 = statistics.median(lat) if lat else float("nan")
    p99 = lat[int(len(lat) * 0.99) - 1] if lat else float("nan")
    remaining = stored - b1
    rows = [
        ("backlog drained, points/s", f"{drain:,.0f}"),
        ("live ingest delivered meanwhile, points/s", f"{live:,.0f}"),
        ("drain rate / ingest rate", f"{drain / max(live, 1):.1f}x"),
        ("live latency while draining, p50 / p99", f"{p50 * 1000:.0f} ms / {p99 * 1000:.0f} ms"),
        ("agent CPU use (one core = 100 %)", f"{(cpu1 - cpu0) / elapsed * 100:.0f} %"),
        ("agent RSS", f"{rss:.0f} MB"),
        (
            "time to drain the whole outage at this rate",
            f"{remaining / max(b1 - b0, 1) * elapsed / 60:.1f} min more "
            f"({b1:,} of {stored:,} sent)",
        ),
    ]
    for name, value in rows:
        print(f"{name:<46}  {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
