"""An S7 PLC that breaks the protocol hundreds of times: the driver only ever raises DeviceError,
never waits past its deadline, counts what went wrong, and never passes a wrong value as good.

``HostileS7Server`` answers reads with items refused, answers cut short, wrong item lengths and
counts, header errors (PUT/GET off), stale answers, lying TPKT lengths, garbage, answers dribbled
slower than the timeout, and silence, mixed with correct answers whose bytes follow from their
address, so every good value can be checked.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from drivers.base import DeviceError, Quality
from drivers.s7.config import S7Device
from drivers.s7.driver import S7Driver
from simulators.hostile_s7 import HostileS7Server
from tests.brokers import Mosquitto, Subscriber, free_port
from tests.e2e import agent_process, local_mqtt, rss_at_marks, scrape_metric

WEIGHTS = {
    "ok": 4.0,
    "item_error": 2.0,
    "truncated": 2.0,
    "wrong_length": 2.0,
    "wrong_count": 1.0,
    "header_error": 1.0,
    "stale": 2.0,
    "bad_tpkt": 0.5,
    "garbage": 0.5,
    "slowloris": 0.1,
    "silent": 0.2,
}
TIMEOUT = 0.1
#: Words far enough apart to be items of their own (one request of four items per poll).
ADDRESSES = {"w0": ("DB1.DBW0", 0), "w40": ("DB1.DBW40", 40), "m9": ("MW9", 9), "q3": ("QW3", 3)}


def expected(byte: int) -> int:
    """A WORD at ``byte`` as the hostile server's correct answers hold it."""
    return (byte & 0xFF) << 8 | (byte + 1) & 0xFF


async def test_hundreds_of_hostile_answers_only_device_errors_and_only_right_values() -> None:
    tags: list[dict[str, Any]] = [
        {"name": name, "address": address, "type": "WORD"}
        for name, (address, _) in ADDRESSES.items()
    ]
    good = bad = device_errors = 0
    reasons: set[str] = set()
    async with HostileS7Server(seed=7, weights=WEIGHTS, slowloris_delay=0.05) as server:
        dev = S7Device.model_validate(
            {
                "name": "hostile",
                "driver": "s7",
                "connection": {"host": "127.0.0.1", "port": server.port, "timeout": TIMEOUT},
                "tags": tags,
            }
        )
        driver = S7Driver(dev)
        try:
            while server.frames < 400:
                started = time.monotonic()
                try:
                    if driver.link is None or not driver.link.connected:
                        await driver.connect()
                    readings = await driver.poll()
                except DeviceError as exc:
                    device_errors += 1
                    reasons.add(exc.reason)
                    await driver.close()
                    readings = []
                # Connect and poll each wait one deadline at most (plus slack for a loaded machine);
                # a slowloris answer without the deadline would take 1.5 s.
                assert time.monotonic() - started < 2 * TIMEOUT + 0.5
                for r in readings:
                    if r.quality is Quality.GOOD:
                        assert r.value == expected(ADDRESSES[r.tag][1]), (r, dict(server.sent))
                        good += 1
                    else:
                        assert r.reason
                        bad += 1
        finally:
            await driver.close()
    counts = driver.error_counts()
    print(
        f"hostile S7: {server.frames} hostile answers {dict(server.sent)}; good {good}, bad {bad}, "
        f"device errors {device_errors} {sorted(reasons)}, counted {dict(counts)}"
    )
    assert good > 300 and bad > 100 and device_errors > 10
    assert reasons <= {"timeout", "connection lost", "invalid answer"}
    assert counts.get("invalid answer", 0) > 50 and counts.get("item error", 0) > 20
    assert server.connections > 5  # reconnected after every lost connection


# -- the agent process --------------------------------------------------------------------------

DEVICES = 8


@pytest.mark.slow
async def test_the_agent_survives_thousands_of_hostile_answers_with_flat_memory_and_threads(
    tmp_path: Path, broker: Mosquitto
) -> None:
    """``edge-agent run`` polls eight PLCs on the hostile server until 2,500 hostile answers:
    it keeps running and stops cleanly on SIGTERM, its memory and its thread count stay flat
    after warm-up (a deadline replaces the PLC's worker thread: none may pile up), no traceback
    is logged, errors are counted, and every good value published is the right one."""
    metrics_port = free_port()
    async with HostileS7Server(seed=11, weights=WEIGHTS, slowloris_delay=0.05) as server:
        tags = [
            {"name": name, "address": address, "type": "WORD"}
            for name, (address, _) in ADDRESSES.items()
        ]
        doc = {
            "agent": {"id": "test-gw", "data_dir": str(tmp_path / "data")},
            "mqtt": local_mqtt(broker.port),
            "buffer": {"max_size": "16MB"},
            "metrics": {"listen": f"127.0.0.1:{metrics_port}"},
            "devices": [
                {
                    "name": f"plc{n}",
                    "driver": "s7",
                    "poll_interval": "20ms",
                    "connection": {"host": "127.0.0.1", "port": server.port, "timeout": "80ms"},
                    "tags": tags,
                }
                for n in range(DEVICES)
            ],
        }
        cfg = tmp_path / "c.yaml"
        cfg.write_text(json.dumps(doc))
        sub = Subscriber(broker.port, ["edge/test-gw/+/data"], client_id="s7-hostile").start()
        try:
            with agent_process(cfg, tmp_path / "agent.log") as proc:
                agent = psutil.Process(proc.pid)
                marks = (500, 1000, 1500, 2000, 2500)
                rss = await rss_at_marks(proc, lambda: server.frames, marks)
                threads = agent.num_threads()
                errors = await asyncio.to_thread(
                    scrape_metric, metrics_port, "edge_agent_driver_errors_total"
                )
                proc.send_signal(signal.SIGTERM)
                await asyncio.to_thread(proc.wait, 20)
        finally:
            sub.stop()
    log = (tmp_path / "agent.log").read_text(errors="replace")
    print(
        f"hostile S7 agent: {server.frames} hostile answers {dict(server.sent)}; RSS at "
        f"{marks}: {', '.join(f'{r:.1f}' for r in rss)} MB; threads {threads}; "
        f"driver errors {errors:.0f}; connections {server.connections}"
    )
    assert proc.returncode == 0, log[-2000:]
    assert "Traceback" not in log, log[-3000:]
    assert rss[-1] - rss[1] < 3.0, rss
    # The loop's threads, one worker per PLC, and a few of the agent's own: not one per abort.
    assert threads < DEVICES + 20, threads
    assert errors > 500
    good = 0
    for m in sub.snapshot():
        body = m.json()
        for name, value in body["values"].items():
            assert value == expected(ADDRESSES[name][1]), (body["device"], name, value)
            good += 1
    assert good > 500
