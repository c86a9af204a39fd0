"""Side by side with ThingsBoard IoT Gateway: CPU, memory, values delivered and disk writes.

ThingsBoard IoT Gateway (``thingsboard-gateway`` from PyPI, ``TB_VERSION``) is installed into a
venv of its own under the bench's temporary folder (or ``--peer-venv`` names one already there),
configured for the same simulated Modbus meters as the agent (the same registers, read as
uint16, on the same schedule) and a local mosquitto, which also stands in for the ThingsBoard
server's one answer the gateway waits for before it sends anything (its session limits: none).
Both are measured one after the other in the same run, on the same simulator, as is a bare
pymodbus poller that sends the agent's requests and does nothing with the answers
(``bench.raw_poll``): machines here are shared and noisy, so the figures that matter are the
ratios.

Workloads (``--workloads``): 20 meters x 50 registers every 1 s (1,000 points/s, where most
gateways live), 100 x 20 every 1 s, and 20 x 50 every 10 s (near idle). For each: CPU-seconds
per minute, RSS, values delivered per second, bytes written to disk (``write_bytes`` of
``/proc/<pid>/io``) per hour and per published payload byte (write amplification).

Then, agent only: disk writes and fsyncs per hour at 1,000 and 10,000 points/s (fsyncs counted
by ``strace -c`` when it is installed, in a run of their own since tracing costs CPU), the time
from ``run`` to the first batch delivered with 100 devices, and with ``--long MINUTES`` the RSS
of a long run at 1,000 points/s (first and last sample after warm-up).

    .venv/bin/python -m bench.bench_peer [--seconds 60] [--peer-venv DIR] [--no-peer]
        [--workloads 20x50@1,100x20@1,20x50@10] [--long 10]
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import psutil
from paho.mqtt.enums import CallbackAPIVersion

from tests.brokers import Mosquitto, free_port

ROOT = Path(__file__).resolve().parent.parent
TB_VERSION = "3.8.5"
AGENT_ID = "bench-gw"


@dataclass(frozen=True)
class Workload:
    devices: int
    tags: int
    interval: float

    @classmethod
    def parse(cls, text: str) -> Workload:
        shape, _, every = text.partition("@")
        devices, _, tags = shape.partition("x")
        return cls(int(devices), int(tags), float(every or 1))

    @property
    def rate(self) -> float:
        return self.devices * self.tags / self.interval

    def __str__(self) -> str:
        return f"{self.devices} x {self.tags} every {self.interval:g} s ({self.rate:,.0f} points/s)"


# -- configs -----------------------------------------------------------------------------------


def agent_config(path: Path, w: Workload, modbus_port: int, broker_port: int) -> Path:
    """The agent on ``w``: each meter's registers 0..tags-1 as uint16 tags."""
    doc = {
        "agent": {"id": AGENT_ID, "data_dir": str(path.parent / "agent-data")},
        "mqtt": {"host": "127.0.0.1", "port": broker_port},
        "metrics": {"listen": None},
        "profiles": {
            "meter": {
                "driver": "modbus",
                "tags": [
                    {"name": f"r{a}", "table": "holding", "address": a, "type": "uint16"}
                    for a in range(w.tags)
                ],
            }
        },
        "devices": [
            {
                "name": f"dev-{u:03d}",
                "driver": "modbus",
                "poll_interval": w.interval,
                "profile": "meter",
                "connection": {"host": "127.0.0.1", "port": modbus_port, "unit_id": u},
            }
            for u in range(1, w.devices + 1)
        ],
    }
    path.write_text(json.dumps(doc))
    return path


def peer_config(folder: Path, venv: Path, w: Workload, modbus_port: int, broker_port: int) -> Path:
    """ThingsBoard IoT Gateway on ``w``: its own shipped configs, pointed at the local broker
    and the simulator, statistics, remote configuration and rate limits off, logs at WARNING
    (the agent runs at warning too). Returns the config folder (``TB_GW_CONFIG_DIR``)."""
    shipped = next(venv.glob("lib/python3*/site-packages/thingsboard_gateway/config"))
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "logs").mkdir(parents=True)
    gw = json.loads((shipped / "tb_gateway.json").read_text())
    tb = gw["thingsboard"]
    tb.update(host="127.0.0.1", port=broker_port, remoteConfiguration=False, remoteShell=False)
    tb["statistics"]["enable"] = False
    tb["security"] = {"type": "accessToken", "accessToken": "bench"}
    for key in list(tb):
        if key.lower().endswith("ratelimits"):
            tb[key] = "0:0,"  # no limit: the bench measures cost, not a cloud's quota
    gw["storage"]["type"] = "memory"  # its default; the agent's buffer is durable (SQLite)
    gw["connectors"] = [{"type": "modbus", "name": "Modbus", "configuration": "modbus.json"}]
    (folder / "tb_gateway.json").write_text(json.dumps(gw, indent=1))
    slaves = [
        {
            "host": "127.0.0.1",
            "port": modbus_port,
            "type": "tcp",
            "method": "socket",
            "unitId": u,
            "deviceName": f"dev-{u:03d}",
            "deviceType": "meter",
            "timeout": 35,
            "byteOrder": "BIG",
            "wordOrder": "BIG",
            "retries": 0,
            "pollPeriod": int(w.interval * 1000),
            "connectAttemptTimeMs": 5000,
            "connectAttemptCount": 5,
            "waitAfterFailedAttemptsMs": 300000,
            "timeseries": [
                {
                    "tag": f"r{a}",
                    "type": "16uint",
                    "functionCode": 3,
                    "objectsCount": 1,
                    "address": a,
                }
                for a in range(w.tags)
            ],
            "attributes": [],
            "attributeUpdates": [],
            "rpc": [],
        }
        for u in range(1, w.devices + 1)
    ]
    (folder / "modbus.json").write_text(json.dumps({"master": {"slaves": slaves}}))
    logs = json.loads((shipped / "logs.json").read_text())
    for logger in logs.get("loggers", {}).values():
        logger["level"] = "WARNING"
    if "root" in logs:
        logs["root"]["level"] = "WARNING"
    (folder / "logs.json").write_text(json.dumps(logs, indent=1))
    return folder


def install_peer(work: Path) -> Path:
    venv = work / "tb-venv"
    print(f"installing thingsboard-gateway {TB_VERSION} into {venv} ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", f"thingsboard-gateway=={TB_VERSION}"],
        check=True,
    )
    return venv


# -- what arrives at the broker ------------------------------------------------------------------


@dataclass
class Arrivals:
    """Values and payload bytes of one side's data messages, counted on paho's thread."""

    topic: str
    values_of: Callable[[Any], int]
    values: int = 0
    payload: int = 0
    first_at: float | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, payload: bytes | bytearray) -> None:
        n = self.values_of(json.loads(payload))
        with self.lock:
            self.values += n
            self.payload += len(payload)
            if self.first_at is None:
                self.first_at = time.monotonic()

    def snapshot(self) -> tuple[int, int]:
        with self.lock:
            return self.values, self.payload


def _agent_values(doc: Any) -> int:
    return len(doc.get("values", ()))


def _peer_values(doc: Any) -> int:
    # v1/gateway/telemetry: {"<device>": [{"ts": ..., "values": {...}}, ...], ...}
    return sum(len(e.get("values", e)) for entries in doc.values() for e in entries)


class Watch:
    """One subscriber for both sides, and the ThingsBoard server's answer to the gateway's
    ``getSessionLimits`` call (no limits), without which it never starts sending."""

    def __init__(self, port: int) -> None:
        self.sides: dict[str, Arrivals] = {}
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-peer-watch")
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        for topic in (f"edge/{AGENT_ID}/+/data", "v1/gateway/telemetry"):
            self.client.subscribe(topic, qos=1)
        self.client.subscribe("v1/devices/me/rpc/request/+", qos=1)
        self.client.loop_start()

    def expect(self, side: Arrivals) -> Arrivals:
        self.sides = {side.topic: side}
        return side

    def _on_message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.topic.startswith("v1/devices/me/rpc/request/"):
            request = json.loads(msg.payload)
            if request.get("method") == "getSessionLimits":
                reply = {"maxPayloadSize": 65536, "maxInflightMessages": 100, "rateLimits": {}}
                rid = msg.topic.rsplit("/", 1)[1]
                client.publish(f"v1/devices/me/rpc/response/{rid}", json.dumps(reply), qos=1)
            return
        for pattern, side in self.sides.items():
            if mqtt.topic_matches_sub(pattern, msg.topic):
                side.add(msg.payload)

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


# -- one process, measured ----------------------------------------------------------------------


@dataclass
class Figures:
    cpu_s: float = 0.0  # over the window
    seconds: float = 0.0
    rss_mb: float = 0.0
    written: int = 0  # write_bytes over the window
    values: int = 0
    payload: int = 0
    startup_s: float | None = None  # spawn to the first data message
    fsyncs: int | None = None

    @property
    def cpu_per_min(self) -> float:
        return self.cpu_s / self.seconds * 60

    @property
    def values_s(self) -> float:
        return self.values / self.seconds

    @property
    def mb_per_hour(self) -> float:
        return self.written / self.seconds * 3600 / 1e6

    @property
    def amplification(self) -> float:
        return self.written / self.payload if self.payload else float("nan")


def _tree(proc: psutil.Process) -> list[psutil.Process]:
    return [proc, *proc.children(recursive=True)]


def _cpu(procs: list[psutil.Process]) -> float:
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system
    return total


def _written(procs: list[psutil.Process]) -> int:
    total = 0
    for p in procs:
        try:
            total += p.io_counters().write_bytes
        except psutil.NoSuchProcess:
            continue
    return total


def _rss(procs: list[psutil.Process]) -> int:
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total


def measure(
    cmd: list[str],
    warmup: float,
    seconds: float,
    arrivals: Arrivals | None,
    *,
    cwd: Path = ROOT,
    env: dict[str, str] | None = None,
    fsyncs: bool = False,
) -> Figures:
    """Run ``cmd``, wait ``warmup``, measure over ``seconds``; with ``fsyncs``, count its
    fsync/fdatasync calls with strace (which costs CPU: then the CPU figure is not reported)."""
    errors = tempfile.TemporaryFile()  # noqa: SIM115 (closed in the finally below)
    t_spawn = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=errors)
    ps = psutil.Process(proc.pid)
    strace: subprocess.Popen[bytes] | None = None
    trace = Path(tempfile.mkstemp(prefix="strace-")[1])
    try:
        time.sleep(warmup)
        if proc.poll() is not None:
            errors.seek(0)
            tail = errors.read().decode(errors="replace")[-2000:]
            raise SystemExit(f"{' '.join(cmd)} exited ({proc.returncode}): {tail}")
        procs = _tree(ps)
        if fsyncs:
            strace = subprocess.Popen(
                ["strace", "-f", "-c", "-e", "trace=fsync,fdatasync", "-o", str(trace),
                 "-p", str(proc.pid)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            time.sleep(1.0)  # attached to every thread
        cpu0, w0 = _cpu(procs), _written(procs)
        v0, p0 = arrivals.snapshot() if arrivals else (0, 0)
        t0 = time.monotonic()
        time.sleep(seconds)
        elapsed = time.monotonic() - t0
        cpu1, w1 = _cpu(procs), _written(procs)
        v1, p1 = arrivals.snapshot() if arrivals else (0, 0)
        rss = _rss(procs)
    finally:
        if strace is not None:
            strace.terminate()
            strace.wait(20)
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(20)
        errors.close()
    first = arrivals.first_at if arrivals else None
    figures = Figures(
        cpu_s=cpu1 - cpu0,
        seconds=elapsed,
        rss_mb=rss / 1e6,
        written=w1 - w0,
        values=v1 - v0,
        payload=p1 - p0,
        startup_s=None if first is None else first - t_spawn,
    )
    if strace is not None:
        figures.fsyncs = _strace_calls(trace.read_text())
    trace.unlink(missing_ok=True)
    return figures


def _strace_calls(summary: str) -> int:
    """Calls of fsync and fdatasync in a ``strace -c`` summary."""
    total = 0
    for line in summary.splitlines():
        parts = line.split()  # % time, seconds, usecs/call, calls, [errors], syscall
        if len(parts) >= 5 and parts[-1] in ("fsync", "fdatasync"):
            total += int(parts[3])
    return total


# -- the run ------------------------------------------------------------------------------------


@dataclass
class Rig:
    work: Path
    broker: Mosquitto
    modbus_port: int
    watch: Watch
    peer_venv: Path | None
    args: argparse.Namespace

    def agent(self, w: Workload, *, fsyncs: bool = False, seconds: float | None = None) -> Figures:
        shutil.rmtree(self.work / "agent-data", ignore_errors=True)
        cfg = agent_config(self.work / "agent.json", w, self.modbus_port, self.broker.port)
        arrivals = self.watch.expect(Arrivals(f"edge/{AGENT_ID}/+/data", _agent_values))
        cmd = [str(Path(sys.executable).parent / "edge-agent"), "run", "-c", str(cfg)]
        return measure(
            [*cmd, "--log-level", "warning"],
            self.args.warmup,
            seconds or self.args.seconds,
            arrivals,
            fsyncs=fsyncs,
        )

    def bare(self, w: Workload) -> Figures:
        cfg = agent_config(self.work / "bare.json", w, self.modbus_port, self.broker.port)
        cmd = [sys.executable, "-m", "bench.raw_poll", str(cfg)]
        return measure(cmd, self.args.warmup, self.args.seconds, None)

    def peer(self, w: Workload) -> Figures:
        assert self.peer_venv is not None
        folder = peer_config(
            self.work / "tb", self.peer_venv, w, self.modbus_port, self.broker.port
        )
        arrivals = self.watch.expect(Arrivals("v1/gateway/telemetry", _peer_values))
        env = {"PATH": "/usr/bin:/bin", "TB_GW_CONFIG_DIR": f"{folder}/"}
        return measure(
            [str(self.peer_venv / "bin" / "thingsboard-gateway")],
            self.args.warmup,
            self.args.seconds,
            arrivals,
            cwd=folder,
            env=env,
        )


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b else "n/a"


def compare(rig: Rig, w: Workload) -> dict[str, Figures]:
    """The bare poller, the agent and the peer on one workload; a table and the ratios."""
    print(f"\n{w}", flush=True)
    runs = {"bare poller": rig.bare(w), "agent": rig.agent(w)}
    if rig.peer_venv:
        runs["ThingsBoard GW"] = rig.peer(w)
    lines: list[tuple[str, Callable[[Figures], str]]] = [
        ("CPU-s per minute", lambda f: f"{f.cpu_per_min:.2f}"),
        ("CPU (one core = 100 %)", lambda f: f"{f.cpu_per_min / 0.6:.2f} %"),
        ("RSS MB", lambda f: f"{f.rss_mb:.0f}"),
        ("values delivered /s", lambda f: f"{f.values_s:,.0f}" if f.payload else "-"),
        ("disk writes MB/h", lambda f: f"{f.mb_per_hour:.1f}"),
        ("write amplification", lambda f: f"{f.amplification:.2f}" if f.payload else "-"),
    ]
    print(f"  {'':<24}" + "".join(f"{name:>16}" for name in runs))
    for label, show in lines:
        print(f"  {label:<24}" + "".join(f"{show(f):>16}" for f in runs.values()))
    agent, bare = runs["agent"], runs["bare poller"]
    print(f"  agent / bare poller CPU        {_ratio(agent.cpu_s, bare.cpu_s)}")
    peer = runs.get("ThingsBoard GW")
    if peer is not None:
        print(f"  agent / ThingsBoard GW CPU     {_ratio(agent.cpu_s, peer.cpu_s)}")
        print(f"  agent / ThingsBoard GW RSS     {_ratio(agent.rss_mb, peer.rss_mb)}")
        print(f"  agent / ThingsBoard GW values  {_ratio(agent.values, peer.values)}")
    sys.stdout.flush()
    return runs


def disk(rig: Rig) -> dict[float, Figures]:
    """Bytes written and write amplification untraced; fsyncs counted in a run of their own
    (strace slows every system call it sees, and with it the commits)."""
    traced = shutil.which("strace") is not None
    out: dict[float, Figures] = {}
    print("\nagent disk writes (write_bytes of /proc/<pid>/io)", flush=True)
    for w in (Workload(20, 50, 1.0), Workload(200, 50, 1.0)):
        f = out[w.rate] = rig.agent(w)
        fsyncs = "n/a (no strace)"
        if traced:
            counted = rig.agent(w, fsyncs=True, seconds=min(20.0, rig.args.seconds))
            assert counted.fsyncs is not None
            fsyncs = f"{counted.fsyncs / counted.seconds * 3600:,.0f}"
        print(
            f"  {w.rate:>7,.0f} points/s: {f.mb_per_hour:,.1f} MB/h written, "
            f"payload {f.payload / f.seconds * 3600 / 1e6:,.1f} MB/h, "
            f"write amplification {f.amplification:.2f}, fsyncs/h {fsyncs}",
            flush=True,
        )
    return out


def verdict(compared: dict[Workload, dict[str, Figures]], written: dict[float, Figures]) -> None:
    """Issue 20's targets, each with the figure of this run that decides it."""
    print("\ntargets (issue 20)", flush=True)

    def line(target: str, figure: str, met: bool) -> None:
        print(f"  {'met    ' if met else 'NOT met'}  {target:<48} {figure}", flush=True)

    for w, runs in compared.items():
        agent, bare, peer = runs["agent"], runs["bare poller"], runs.get("ThingsBoard GW")
        if peer is not None and peer.cpu_s:
            ratio = agent.cpu_s / peer.cpu_s
            line(
                f"CPU <= 1/20 of the gateway's, {w.rate:,.0f} points/s",
                f"{ratio:.3f}",
                ratio <= 0.05,
            )
            ratio = agent.rss_mb / peer.rss_mb
            line(
                f"RSS <= 0.75x the gateway's, {w.rate:,.0f} points/s", f"{ratio:.2f}", ratio <= 0.75
            )
        if w.rate == 1000 and bare.cpu_s:
            ratio = agent.cpu_s / bare.cpu_s
            line("CPU <= 2x the bare poller at 1,000 points/s", f"{ratio:.1f}x", ratio <= 2)
        if w.interval >= 10:
            share = agent.cpu_per_min / 0.6
            line(
                f"near idle < 0.3 % of a core, {w.rate:,.0f} points/s",
                f"{share:.2f} %",
                share < 0.3,
            )
    for rate, f in written.items():
        line(
            f"write amplification <= 3 at {rate:,.0f} points/s",
            f"{f.amplification:.2f}",
            f.amplification <= 3,
        )


def startup(rig: Rig) -> None:
    w = Workload(100, 20, 1.0)
    f = rig.agent(w, seconds=1.0)
    shown = f"{f.startup_s:.2f} s" if f.startup_s is not None else "none within the warm-up"
    print(f"\nagent start-up, 100 devices: run -> first batch delivered {shown}", flush=True)


def long_run(rig: Rig, minutes: float) -> None:
    """RSS of the agent at 1,000 points/s, sampled every 10 s after a minute's warm-up."""
    shutil.rmtree(rig.work / "agent-data", ignore_errors=True)
    cfg = agent_config(
        rig.work / "agent.json", Workload(20, 50, 1.0), rig.modbus_port, rig.broker.port
    )
    cmd = [str(Path(sys.executable).parent / "edge-agent"), "run", "-c", str(cfg)]
    proc = subprocess.Popen(
        [*cmd, "--log-level", "warning"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    ps = psutil.Process(proc.pid)
    samples: list[float] = []
    try:
        time.sleep(60)
        end = time.monotonic() + minutes * 60
        while time.monotonic() < end:
            samples.append(ps.memory_info().rss / 1e6)
            time.sleep(10)
    finally:
        proc.terminate()
        proc.wait(20)
    half = len(samples) // 2
    early = max(samples[: max(half, 1)])
    late = max(samples[half:] or samples)
    print(
        f"\nagent RSS over {minutes:g} min at 1,000 points/s (after 1 min warm-up): "
        f"first {samples[0]:.1f} MB, last {samples[-1]:.1f} MB, peak of the first half "
        f"{early:.1f} MB, of the second {late:.1f} MB ({(late / early - 1) * 100:+.1f} %)",
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=60.0, help="measured window per run")
    parser.add_argument("--warmup", type=float, default=10.0)
    parser.add_argument("--workloads", default="20x50@1,100x20@1,20x50@10")
    parser.add_argument("--peer-venv", type=Path, help="a venv with thingsboard-gateway in it")
    parser.add_argument("--no-peer", action="store_true", help="the agent and bare poller only")
    parser.add_argument("--long", type=float, default=0.0, help="minutes of the RSS run")
    args = parser.parse_args(argv)
    # A stopped bench still stops what it started (the finally below): SIGTERM as an exception.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    work = Path(tempfile.mkdtemp(prefix="edge-bench-peer-"))
    peer_venv = None
    if not args.no_peer:
        peer_venv = args.peer_venv or install_peer(work)
    broker = Mosquitto(work / "mosquitto")
    broker.start()
    modbus_port = free_port()
    sim = subprocess.Popen(
        [sys.executable, "-m", "simulators.modbus_tcp", "--port", str(modbus_port),
         "--units", "1-200", "--update-interval", "1"],
        cwd=ROOT, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    watch = Watch(broker.port)
    rig = Rig(work, broker, modbus_port, watch, peer_venv, args)
    try:
        time.sleep(2.0)
        print(f"machine: {psutil.cpu_count()} cores, shared; figures are ratios in one run")
        compared = {}
        for text in args.workloads.split(","):
            w = Workload.parse(text)
            compared[w] = compare(rig, w)
        written = disk(rig)
        startup(rig)
        if args.long:
            long_run(rig, args.long)
        verdict(compared, written)
    finally:
        watch.stop()
        sim.terminate()
        sim.wait(10)
        broker.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
