"""End-to-end benchmark: simulated devices → agent → mosquitto → subscriber.

Prints, at each offered rate (1,000, 10,000 and 50,000 points/s by default: 50-tag meters, as
many as the rate needs up to 200, polled as often as needed), points/s delivered, the agent's
CPU-seconds per 1,000 points and RSS, device-answer to subscriber latency, and the requests per
cycle the planner chose against the fewest possible.
Every cost is also quoted as a ratio against a baseline measured in the same run on the same
machine (machines here are shared and noisy, absolute figures drift): a bare pymodbus client
that sends the same requests on the same schedule and does nothing with the answers.

    .venv/bin/python -m bench.bench_e2e [--rates 1000,10000,50000] [--tags 50] [--seconds 15]
    .venv/bin/python -m bench.bench_e2e --profile 10000   # py-spy of the agent at that rate
"""

from __future__ import annotations

import abc
import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import psutil
from paho.mqtt.enums import CallbackAPIVersion

from drivers.modbus.driver import ModbusDriver
from simulators.modbus_map import PRESS_POINTS, TYPE_TEST_POINTS
from tests.brokers import Mosquitto, free_port

ROOT = Path(__file__).resolve().parent.parent


def bench_tags(count: int) -> list[dict[str, Any]]:
    """A realistic meter: the press's points, then type-test registers up to ``count`` tags."""
    regs = [p for p in TYPE_TEST_POINTS if p.table == "holding"]
    points = (list(PRESS_POINTS) + regs)[:count]
    if len(points) < count:
        raise SystemExit(f"the simulator's map has only {len(points)} points")
    return [p.tag() for p in points]


def write_config(
    path: Path,
    devices: int,
    tags: int,
    modbus_port: int,
    broker_port: int,
    poll_interval: float = 1.0,
) -> None:
    doc = {
        "agent": {"id": "bench-gw", "data_dir": str(path.parent / "data")},
        "mqtt": {"host": "127.0.0.1", "port": broker_port, "max_inflight": 256},
        "buffer": {"max_size": "256MB"},
        "metrics": {"listen": None},
        # 100 machines of one type: the tag list is written once, as an integrator would.
        "profiles": {"meter": {"driver": "modbus", "tags": bench_tags(tags)}},
        "devices": [
            {
                "name": f"dev-{u:03d}",
                "driver": "modbus",
                "poll_interval": poll_interval,
                "profile": "meter",
                "connection": {"host": "127.0.0.1", "port": modbus_port, "unit_id": u},
            }
            for u in range(1, devices + 1)
        ],
    }
    path.write_text(json.dumps(doc))


def plan_figures(tags: int) -> tuple[int, int]:
    """(requests the planner chose, fewest requests any plan could use) for one device."""
    device = ModbusDriver.device_model.model_validate(
        {"name": "d", "driver": "modbus", "connection": {"host": "x"}, "tags": bench_tags(tags)}
    )
    chosen = int(ModbusDriver(device).describe_plan()["requests"])
    # Fewest possible: greedy interval cover under the size cap, reading any gap (optimal for
    # covering points with windows of a fixed maximum length).
    fewest = 0
    for table in {t.table for t in device.tags}:
        bits = table in ("coil", "discrete")
        cap = 2000 if bits else 125
        spans = sorted(
            (t.address, t.address + (1 if bits else _width(t.type, t.length)))
            for t in device.tags
            if t.table == table
        )
        start = None
        for lo, hi in spans:
            if start is None or hi - start > cap:
                fewest += 1
                start = lo
    return chosen, fewest


def _width(type_: str, length: int | None) -> int:
    sizes = {"int32": 2, "uint32": 2, "float32": 2, "int64": 4, "uint64": 4, "float64": 4}
    if type_ == "string":
        return length or 1
    return sizes.get(type_, 1)


class DataWatch(abc.ABC):
    """Subscribes to every bench device's data and hands each message, decoded, to ``count``
    (under ``lock``, from paho's thread). Subclasses set their counters before calling
    ``listen``: messages may arrive at once."""

    lock: threading.Lock

    def listen(self, port: int, client_id: str) -> None:
        self.lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.subscribe("edge/bench-gw/+/data", qos=1)
        self.client.loop_start()

    def _on_message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        now = time.time()
        doc = json.loads(msg.payload)
        with self.lock:
            self.count(doc, now)

    @abc.abstractmethod
    def count(self, doc: dict[str, Any], now: float) -> None: ...


class Counter(DataWatch):
    """Counts data messages and points, and the latency from the device's answer."""

    def __init__(self, port: int) -> None:
        self.messages = 0
        self.points = 0
        self.latencies: list[float] = []
        self.listen(port, "bench-counter")

    def count(self, doc: dict[str, Any], now: float) -> None:
        self.messages += 1
        self.points += len(doc["values"]) + len(doc.get("quality", ()))
        self.latencies.append(now - doc["ts"] / 1000)

    def snapshot(self) -> tuple[int, int]:
        with self.lock:
            return self.messages, self.points

    def reset_latency(self) -> None:
        with self.lock:
            self.latencies.clear()


def cpu_seconds(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return float(t.user + t.system)


def measure(
    cmd: list[str],
    warmup: float,
    seconds: float,
    counter: Counter | None,
    profile: Path | None = None,
    others: dict[str, psutil.Process] | None = None,
) -> dict[str, float]:
    """CPU, RSS and points of ``cmd`` over ``seconds`` after ``warmup``; with ``others`` (the
    simulator, the broker), their CPU over the same window too, as ``<name>_cpu``: on a
    small machine the device side can be what limits the rate, and the table should say so."""
    others = others or {}
    # stderr to a file, not a pipe nobody reads during the run (a full pipe would stall the
    # process), so that a process that dies early can say why.
    errors = tempfile.TemporaryFile()  # noqa: SIM115 (closed in the finally below)
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=errors)
    ps = psutil.Process(proc.pid)
    spy: subprocess.Popen[bytes] | None = None
    try:
        time.sleep(warmup)
        if proc.poll() is not None:
            errors.seek(0)
            tail = errors.read().decode(errors="replace")[-2000:]
            raise SystemExit(f"{' '.join(cmd)} exited ({proc.returncode}): {tail}")
        cpu0, m0 = cpu_seconds(ps), counter.snapshot() if counter else (0, 0)
        others0 = {name: cpu_seconds(p) for name, p in others.items()}
        if counter:
            counter.reset_latency()
        t0 = time.monotonic()
        if profile is not None:
            spy = subprocess.Popen(
                [str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(proc.pid),
                 "--duration", str(int(seconds)), "--format", "raw", "--output", str(profile)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
        time.sleep(seconds)
        elapsed = time.monotonic() - t0
        cpu1, m1 = cpu_seconds(ps), counter.snapshot() if counter else (0, 0)
        others1 = {name: cpu_seconds(p) for name, p in others.items()}
        rss = ps.memory_info().rss
    finally:
        if spy is not None:
            spy.wait(30)
        proc.terminate()
        proc.wait(20)
        errors.close()
    return {
        **{f"{name}_cpu": others1[name] - others0[name] for name in others},
        "cpu": cpu1 - cpu0,
        "elapsed": elapsed,
        "messages": m1[0] - m0[0],
        "points": m1[1] - m0[1],
        "rss_mb": rss / 1e6,
    }


def run_rate(
    rate: int,
    args: argparse.Namespace,
    work: Path,
    modbus_port: int,
    broker: Mosquitto,
    sim: psutil.Process,
) -> list[tuple[str, str]]:
    """One offered rate: the bare poller, then the agent, same devices and schedule."""
    devices = max(1, min(200, rate // args.tags))
    interval = devices * args.tags / rate
    cfg = work / f"bench-{rate}.yaml"
    write_config(cfg, devices, args.tags, modbus_port, broker.port, interval)
    shutil.rmtree(work / "data", ignore_errors=True)
    baseline = measure(
        [sys.executable, "-m", "bench.raw_poll", str(cfg)], args.warmup, args.seconds, None
    )
    counter = Counter(broker.port)
    profile = work / f"profile-{rate}.txt" if args.profile == rate else None
    agent = measure(
        [
            str(Path(sys.executable).parent / "edge-agent"),
            "run",
            "-c",
            str(cfg),
            "--log-level",
            "warning",
        ],
        args.warmup,
        args.seconds,
        counter,
        profile,
        others={"simulator": sim, "broker": psutil.Process(broker.proc.pid)} if broker.proc else {},
    )
    counter.client.disconnect()
    counter.client.loop_stop()
    lat = sorted(counter.latencies)
    points_s = agent["points"] / agent["elapsed"]
    cpu_per_k = agent["cpu"] / max(agent["points"], 1) * 1000
    base_points = rate * baseline["elapsed"]
    base_per_k = baseline["cpu"] / base_points * 1000
    p50 = statistics.median(lat) * 1000 if lat else float("nan")
    p99 = lat[int(len(lat) * 0.99) - 1] * 1000 if lat else float("nan")
    if profile is not None:
        print(f"profile of the agent at {rate:,} points/s: {profile}", flush=True)
    return [
        ("offered", f"{rate:,} points/s ({devices} x {args.tags} tags every {interval:g} s)"),
        ("points/s delivered", f"{points_s:,.0f}"),
        ("agent CPU-ms per 1,000 points", f"{cpu_per_k * 1000:.1f}"),
        ("bare pymodbus poller CPU-ms per 1,000 points", f"{base_per_k * 1000:.1f}"),
        ("agent / bare poller CPU ratio", f"{cpu_per_k / base_per_k:.2f}"),
        ("agent CPU use (one core = 100 %)", f"{agent['cpu'] / agent['elapsed'] * 100:.0f} %"),
        ("agent RSS", f"{agent['rss_mb']:.0f} MB"),
        ("latency device answer -> subscriber, p50 / p99", f"{p50:.0f} ms / {p99:.0f} ms"),
        (
            "simulator / mosquitto CPU use",
            f"{agent.get('simulator_cpu', 0) / agent['elapsed'] * 100:.0f} % / "
            f"{agent.get('broker_cpu', 0) / agent['elapsed'] * 100:.0f} %",
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rates", default="1000,10000,50000")
    parser.add_argument("--tags", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--profile", type=int, default=None, help="py-spy the agent at this rate")
    args = parser.parse_args(argv)
    rates = [int(r) for r in args.rates.split(",")]
    if args.profile is not None and args.profile not in rates:
        rates = [args.profile]

    work = Path(tempfile.mkdtemp(prefix="edge-bench-"))
    broker = Mosquitto(work / "mosquitto")
    broker.start()
    modbus_port = free_port()
    sim = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "simulators.modbus_tcp",
            "--port",
            str(modbus_port),
            "--units",
            "1-200",
            "--update-interval",
            "1",
        ],
        cwd=ROOT,
    )
    results: list[list[tuple[str, str]]] = []
    try:
        time.sleep(2.0)
        for rate in rates:
            results.append(run_rate(rate, args, work, modbus_port, broker, psutil.Process(sim.pid)))
            for name, value in results[-1]:
                print(f"  {name:<48}  {value}", flush=True)
    finally:
        sim.terminate()
        sim.wait(10)
        broker.stop()
    chosen, fewest = plan_figures(args.tags)
    print()
    print(f"requests per cycle per device: planner (max_gap 16) / fewest possible: "
          f"{chosen} / {fewest}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
