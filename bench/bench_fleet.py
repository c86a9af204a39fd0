"""``edge-agent fleet list`` over thousands of gateways' retained health (issue 17: 5,000 in
under 5 s).

A mosquitto of its own holds ``--gateways`` retained ``edge/<gw>/health`` documents in the
contract's shape (each with 8 devices and 2 destinations, some of them down or degraded). Three
figures, measured in one run:

1. the **baseline**: a bare paho subscriber to ``edge/+/health`` receiving every retained
   document, no parsing (what the broker and the network cost);
2. ``read_health`` + ``health_table`` in this process (subscribe, parse, table);
3. ``edge-agent fleet list`` as the operator runs it: a new process, start-up and imports
   included, until its table is printed.

Both (2) and (3) include the 0.3 s of quiet after the last retained message by which the command
knows it has them all. Ratios are against the baseline.

    .venv/bin/python -m bench.bench_fleet [--gateways 5000]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from agent.app.fleet.operator import Broker, health_table, read_health
from tests.brokers import Mosquitto

AGENT = Path(sys.executable).parent / "edge-agent"
TARGET_S = 5.0


def health_doc(i: int, now_ms: int) -> dict[str, Any]:
    down = i % 17 == 0
    return {
        "agent": f"gw-{i:05d}",
        "version": "0.1.0",
        "uptime_s": 3600.0 + i,
        "config": {"version": 12, "hash": f"{i:064x}", "source": "fleet"},
        "state": "degraded" if down else "ok",
        "devices": {
            f"press-{d}": {"state": "down", "reason": "timeout"}
            if down and d == 0
            else {"state": "up", "reason": None}
            for d in range(8)
        },
        "outputs": {
            "default": {"connected": True, "backlog": i % 5, "oldest_ms": 120},
            "cloud": {"connected": not down, "backlog": 40 if down else 0, "oldest_ms": 0},
        },
        "clock_synchronized": True,
        "ts": now_ms,
    }


def publish_all(port: int, n: int) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-fleet-pub")
    client.max_inflight_messages_set(1000)
    client.connect("127.0.0.1", port)
    client.loop_start()
    now_ms = int(time.time() * 1000)
    infos = [
        client.publish(
            f"edge/gw-{i:05d}/health", json.dumps(health_doc(i, now_ms)), qos=1, retain=True
        )
        for i in range(n)
    ]
    for info in infos:
        info.wait_for_publish(30)
    client.disconnect()
    client.loop_stop()


def baseline(port: int, n: int) -> float:
    """Seconds until a bare subscriber has every retained document."""
    got = 0
    done = threading.Event()

    def on_message(c: Any, u: Any, msg: mqtt.MQTTMessage) -> None:
        nonlocal got
        got += 1
        if got >= n:
            done.set()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-fleet-base")
    client.on_message = on_message
    t0 = time.perf_counter()
    client.connect("127.0.0.1", port)
    client.loop_start()
    client.subscribe("edge/+/health", qos=1)
    done.wait(60)
    elapsed = time.perf_counter() - t0
    client.disconnect()
    client.loop_stop()
    return elapsed


def in_process(port: int) -> tuple[float, int]:
    args = argparse.Namespace(
        broker=f"127.0.0.1:{port}",
        username=None,
        password_env=None,
        tls=False,
        ca_file=None,
        cert_file=None,
        cert_key=None,
    )
    t0 = time.perf_counter()
    broker = Broker(args)
    try:
        found = read_health(broker, "edge/{gw}", 30.0)
    finally:
        broker.close()
    table = health_table(found, 90.0, None)
    return time.perf_counter() - t0, len(table.splitlines()) - 1


def command(port: int) -> tuple[float, int]:
    t0 = time.perf_counter()
    out = subprocess.run(
        [str(AGENT), "fleet", "list", "--broker", f"127.0.0.1:{port}", "--wait", "30"],
        capture_output=True,
        text=True,
        check=True,
    )
    return time.perf_counter() - t0, len(out.stdout.splitlines()) - 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gateways", type=int, default=5000)
    args = parser.parse_args()
    n = args.gateways
    with tempfile.TemporaryDirectory() as tmp:
        broker = Mosquitto(Path(tmp) / "mosquitto")
        broker.start()
        try:
            t0 = time.perf_counter()
            publish_all(broker.port, n)
            print(f"published {n} retained health documents in {time.perf_counter() - t0:.2f} s")
            base = baseline(broker.port, n)
            inproc, rows_in = in_process(broker.port)
            cli, rows_cli = command(broker.port)
        finally:
            broker.stop()
    assert rows_in == n and rows_cli == n, (rows_in, rows_cli)
    print(f"baseline (bare subscriber, no parsing):  {base:6.2f} s")
    print(f"read_health + table, in process:         {inproc:6.2f} s  ({inproc / base:.1f}x)")
    print(f"edge-agent fleet list (new process):     {cli:6.2f} s  ({cli / base:.1f}x)")
    verdict = "meets" if cli < TARGET_S else "MISSES"
    print(f"{n} gateways listed in {cli:.2f} s: {verdict} the {TARGET_S:g} s target")


if __name__ == "__main__":
    main()
