"""The soak: many devices for a long time, the broker flapping, nothing may creep upwards.

An agent with 200 Modbus devices (1 s polls, against the simulator in its own process) runs while
the broker is stopped and started again every few minutes. Every sampling interval the agent's
process reports its RSS, open file descriptors, asyncio task count and buffer size (batches
waiting, bytes on disk); after a warm-up RSS and the batches waiting must stay within 2 % of their
post-warm-up level, file descriptors and tasks must not grow (give or take a reconnect's two).
The bytes on disk are reported, not judged: the WAL breathes between checkpoints, and the bound
itself is proven elsewhere (tests/test_buffer.py). A persistent
subscriber also checks that every seq arrived.

``make soak`` runs the 30-minute version (broker down for 20 s every 4 minutes, a sample a
minute); the test suite runs a 2-minute version (down for 5 s every 30 s, a sample every 5 s).

    .venv/bin/python -m tests.test_soak [--minutes 30] [--devices 200]

The agent runs in a child process (``python -m tests.test_soak child CONFIG SECONDS``) that
builds it exactly as ``edge-agent run`` does and prints one JSON sample per interval, taken while
the broker is up and the publisher connected, so that every sample sees the same phase.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from simulators.modbus_map import PRESS_POINTS
from tests.brokers import Mosquitto, free_port

ROOT = Path(__file__).resolve().parent.parent
GROWTH = 0.02
#: Batches that may wait at a sample (the in-flight window and one poll round of 200 devices).
SETTLED = 300


@dataclass
class Plan:
    seconds: float
    sample_every: float
    flap_every: float
    flap_down: float
    devices: int
    warmup_samples: int


SHORT = Plan(seconds=120, sample_every=5, flap_every=30, flap_down=5, devices=200, warmup_samples=8)
FULL = Plan(
    seconds=1800, sample_every=60, flap_every=240, flap_down=20, devices=200, warmup_samples=5
)


# -- the child: the agent, sampling itself ---------------------------------------------------------


async def _child(config_path: str, every: float) -> None:
    import psutil

    from agent.app.config import load_config
    from agent.app.runtime import Agent
    from agent.ops.logs import setup_logging
    from agent.south.registry import load_drivers

    setup_logging("warning", "text")
    agent = Agent(load_config(Path(config_path), load_drivers(), resolve_secrets=True))
    await agent.start()
    me = psutil.Process()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)

    async def stopped_within(seconds: float) -> bool:
        try:
            await asyncio.wait_for(stop.wait(), seconds)
        except TimeoutError:
            return False
        return True

    try:
        while not await stopped_within(every):
            # Sample in the same phase every time: connected, and the backlog sent.
            while not agent.publisher.connected.is_set():
                if await stopped_within(0.1):
                    return
            for _ in range(50):  # up to 5 s for a backlog to drain (a leak never does)
                if agent.buffer.stats().batches <= SETTLED or await stopped_within(0.1):
                    break
            stats = agent.buffer.stats()
            sample = {
                "t": time.time(),
                "rss": me.memory_info().rss,
                "fds": me.num_fds(),
                "tasks": len(asyncio.all_tasks()),
                "threads": me.num_threads(),
                "buffer_bytes": stats.bytes,
                "buffer_batches": stats.batches,
            }
            print(json.dumps(sample), flush=True)
    finally:
        await agent.stop()


# -- the parent: simulator, broker flapping, subscriber, verdict ----------------------------------


class SeqWatch:
    """A persistent-session subscriber that keeps only the seqs per device (a 30-minute soak
    delivers hundreds of thousands of messages)."""

    def __init__(self, port: int) -> None:
        self.seqs: dict[str, set[int]] = {}
        self.lock = threading.Lock()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id="soak-watch", clean_session=False
        )
        self.client.on_connect = lambda c, *_: c.subscribe("edge/soak-gw/+/data", qos=1)
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(1, 2)
        self.client.connect("127.0.0.1", port, keepalive=5)
        self.client.loop_start()

    def _on_message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        doc = json.loads(msg.payload)
        with self.lock:
            self.seqs.setdefault(doc["device"], set()).add(int(doc["seq"]))

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _config(work: Path, devices: int, modbus_port: int, broker_port: int) -> Path:
    doc = {
        "agent": {"id": "soak-gw", "data_dir": str(work / "data")},
        "mqtt": {
            "host": "127.0.0.1",
            "port": broker_port,
            "reconnect_min": "100ms",
            "reconnect_max": "1s",
            "keepalive": 10,
        },
        "buffer": {"max_size": "64MB"},
        "metrics": {"listen": None},
        "profiles": {
            "meter": {"driver": "modbus", "tags": [p.tag() for p in PRESS_POINTS]},
        },
        "devices": [
            {
                "name": f"m{u:03d}",
                "driver": "modbus",
                "poll_interval": "1s",
                "profile": "meter",
                "connection": {"host": "127.0.0.1", "port": modbus_port, "unit_id": u},
            }
            for u in range(1, devices + 1)
        ],
    }
    path = work / "soak.yaml"
    path.write_text(json.dumps(doc))
    return path


def run_soak(plan: Plan, work: Path, report: Any = print) -> list[dict[str, float]]:
    """Run one soak; returns the samples (the checks are in :func:`verdict`)."""
    broker = Mosquitto(work / "mosquitto")
    broker.start()
    modbus_port = free_port()
    sim = subprocess.Popen(
        [sys.executable, "-m", "simulators.modbus_tcp", "--port", str(modbus_port), "--units",
         f"1-{plan.devices}"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    watch = SeqWatch(broker.port)
    cfg = _config(work, plan.devices, modbus_port, broker.port)
    log = (work / "agent.log").open("wb")
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.test_soak", "child", str(cfg), str(plan.sample_every)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=log, text=True,
    )  # fmt: skip
    samples: list[dict[str, float]] = []
    reader = threading.Thread(target=_read_samples, args=(child, samples, report), daemon=True)
    reader.start()
    try:
        start = time.monotonic()
        next_flap = start + plan.flap_every
        while time.monotonic() - start < plan.seconds:
            if child.poll() is not None:
                raise AssertionError(
                    f"the agent exited: {(work / 'agent.log').read_text()[-2000:]}"
                )
            if time.monotonic() >= next_flap:
                broker.stop()
                time.sleep(plan.flap_down)
                broker.start()
                next_flap += plan.flap_every
                report(f"broker flapped ({plan.flap_down:.0f} s down)")
            time.sleep(0.2)
    finally:
        child.terminate()
        child.wait(30)
        reader.join(5)
        log.close()
        time.sleep(2.0)  # the last messages reach the watch
        watch.stop()
        sim.terminate()
        sim.wait(10)
        broker.stop()
    assert child.returncode == 0, (work / "agent.log").read_text()[-2000:]
    with watch.lock:
        seqs = {d: set(s) for d, s in watch.seqs.items()}
    assert len(seqs) == plan.devices, f"only {len(seqs)} devices published"
    from tests.e2e import Delivery

    delivery = Delivery.read(work / "data")
    lost = {d: len(g) for d in delivery.last if (g := delivery.gaps(d, seqs.get(d, set())))}
    assert not lost, f"seqs lost: {dict(list(lost.items())[:5])}"
    return samples


def _read_samples(
    child: subprocess.Popen[str], samples: list[dict[str, float]], report: Any
) -> None:
    assert child.stdout is not None
    for line in child.stdout:
        try:
            sample = json.loads(line)
        except ValueError:
            continue
        samples.append(sample)
        report(
            f"rss {sample['rss'] / 1e6:.1f} MB  fds {sample['fds']}  tasks {sample['tasks']}  "
            f"threads {sample['threads']}  buffer {sample['buffer_bytes'] / 1e6:.2f} MB "
            f"({sample['buffer_batches']} batches)"
        )


def verdict(samples: list[dict[str, float]], warmup: int) -> list[str]:
    """Problems found: growth beyond 2 % after warm-up (a median of three samples against the
    median of the first three after warm-up, so one noisy sample neither hides nor fakes it)."""
    after = samples[warmup:]
    if len(after) < 6:
        return [f"too few samples after warm-up: {len(after)}"]
    problems = []
    # RSS may grow 2 %; file descriptors and tasks not at all (give or take a reconnect's two);
    # the batches waiting in the buffer 2 % beyond what one poll round and the window hold.
    for key, slack, extra in (
        ("rss", GROWTH, 0),
        ("fds", 0, 2),
        ("tasks", 0, 2),
        ("buffer_batches", GROWTH, SETTLED),
    ):
        base = statistics.median(s[key] for s in after[:3])
        end = statistics.median(s[key] for s in after[-3:])
        allowed = base * (1 + slack) + extra
        if end > allowed:
            problems.append(f"{key} grew from {base:,.0f} to {end:,.0f} (allowed {allowed:,.0f})")
    return problems


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_short_soak_nothing_grows_nothing_lost(tmp_path: Path) -> None:
    samples = run_soak(SHORT, tmp_path, report=lambda _: None)
    problems = verdict(samples, SHORT.warmup_samples)
    rss = [s["rss"] / 1e6 for s in samples]
    print(f"short soak: {len(samples)} samples, RSS {rss[0]:.1f} -> {rss[-1]:.1f} MB")
    assert not problems, problems


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "child":
        asyncio.run(_child(argv[1], float(argv[2])))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=FULL.seconds / 60)
    parser.add_argument("--devices", type=int, default=FULL.devices)
    args = parser.parse_args(argv)
    plan = FULL
    plan.seconds, plan.devices = args.minutes * 60, args.devices
    work = Path(tempfile.mkdtemp(prefix="edge-soak-"))
    print(f"soak: {plan.devices} devices, {args.minutes:g} min, work dir {work}", flush=True)

    def report(text: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} {text}", flush=True)

    samples = run_soak(plan, work, report)
    problems = verdict(samples, plan.warmup_samples)
    for p in problems:
        print("FAIL:", p)
    print("soak passed" if not problems else "soak FAILED", flush=True)
    return 1 if problems else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
