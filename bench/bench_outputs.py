"""Several destinations (``outputs:``): what each added destination costs, and an outage of one.

200 meters x 50 tags polled every second (10,000 points/s) from the Modbus simulator; every
destination is a mosquitto of its own, json format, all devices; a subscriber on each broker
counts what arrives. Everything is measured in one run on one machine, with its baselines:

1. **Fan-out cost.** The agent with 1, 2 and 3 destinations: CPU per 1,000 points delivered
   (counted per destination) and per 1,000 points polled, disk writes per batch (``write_bytes``
   and write calls of ``/proc/<pid>/io``), and fsyncs (``strace --seccomp-bpf`` counting fsync
   and fdatasync, when strace is installed, in one more run each of 1 and 2 destinations: the
   tracing itself costs the agent CPU, so the CPU figures come from untraced runs). The
   baseline is the agent's own polling with nothing stored or sent (``bench.agent_poll_only``:
   the same ``Agent`` object, its ``Buffer.put`` replaced by one that drops the batch). The
   publishing cost of the first destination is the agent with one destination minus that
   baseline; each added destination's cost is quoted as a share of it (target: at most 40 %).
   The bare pymodbus poller of ``bench_e2e`` is printed too. Three rounds of every count,
   interleaved, medians: the cores are shared and single runs drift by a third.
2. **Outage.** Two destinations; the second reached through a fault proxy that blackholes it (a
   half-open link: no FIN, no RST) for ``--outage`` seconds, one simulated hour scaled 1:60 by
   default (60 s of 10,000 points/s: 12,000 batches; a real hour is 720,000). The live
   destination's latency p50/p99 before and during the outage; on return the returning
   destination's drain rate in batches/s and points/s as a multiple of the ingest rate (target:
   at least 10x), and the latency of its live data while it drains.

    .venv/bin/python -m bench.bench_outputs [--seconds 10] [--rounds 3] [--outage 60] [--part X]
    .venv/bin/python -m bench.bench_outputs --part fanout --profile 2   # py-spy, 2 destinations
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

import psutil

from bench.bench_e2e import ROOT, Counter, DataWatch, cpu_seconds, measure, write_config
from tests.brokers import Mosquitto, free_port
from tests.faultproxy import FaultProxy

DEVICES = 200
TAGS = 50
RATE = DEVICES * TAGS  # points/s at 1 s polls
QUICK = {"reconnect_min": "50ms", "reconnect_max": "1s", "keepalive": 5}
AGENT = [str(Path(sys.executable).parent / "edge-agent"), "run", "--log-level", "warning", "-c"]


def outputs_config(path: Path, modbus_port: int, ports: list[int]) -> Path:
    """bench_e2e's config (200 meters, 1 s) with one destination per broker port: the first is
    the ``mqtt`` section, the others ``outputs:`` entries named out2, out3..."""
    write_config(path, DEVICES, TAGS, modbus_port, ports[0])
    doc = json.loads(path.read_text())
    doc["mqtt"].update(QUICK)
    if len(ports) > 1:
        doc["outputs"] = [
            {"name": f"out{i}", "host": "127.0.0.1", "port": port, "max_inflight": 256, **QUICK}
            for i, port in enumerate(ports[1:], start=2)
        ]
    path.write_text(json.dumps(doc))
    return path


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, int(len(ordered) * q) - 1)] if ordered else float("nan")


# -- a process measured in windows -----------------------------------------------------------------


@dataclass
class Window:
    """What one process did over one window of wall time."""

    elapsed: float
    cpu: float
    write_bytes: int
    write_calls: int
    t0: float  # wall clock, to pick strace's lines
    t1: float


class Measured:
    """A child process, optionally under ``strace`` counting its fsyncs; ``ps`` is the traced
    process itself (strace's child), whose CPU and I/O the windows read."""

    def __init__(self, cmd: list[str], trace: Path | None) -> None:
        self.trace = trace
        if trace is not None:
            cmd = ["strace", "-f", "-qq", "--seccomp-bpf", "-e", "trace=fsync,fdatasync",
                   "-e", "signal=none", "-ttt", "-o", str(trace), *cmd]  # fmt: skip
        self.errors = tempfile.TemporaryFile()  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=self.errors)
        self.ps = psutil.Process(self.proc.pid)
        if trace is not None:  # strace forks test children first: find the traced command
            deadline = time.monotonic() + 10
            while (traced := self._traced(cmd[-1])) is None and time.monotonic() < deadline:
                time.sleep(0.02)
            if traced is None:
                self.fail()
            else:
                self.ps = traced

    def _traced(self, last_arg: str) -> psutil.Process | None:
        for child in self.ps.children():
            with contextlib.suppress(psutil.Error):
                args = child.cmdline()
                if args and Path(args[0]).name != "strace" and last_arg in args:
                    return child
        return None

    def fail(self) -> None:
        self.errors.seek(0)
        tail = self.errors.read().decode(errors="replace")[-2000:]
        self.stop()
        raise SystemExit(f"{self.proc.args!r} exited ({self.proc.returncode}): {tail}")

    def check(self) -> None:
        if self.proc.poll() is not None or not self.ps.is_running():
            self.fail()

    def window(self, seconds: float, before: Any = None) -> Window:
        """Sleep ``seconds`` and say what the process did meanwhile; ``before()`` runs right at
        the start (counters' snapshots)."""
        self.check()
        cpu0, io0 = cpu_seconds(self.ps), self.ps.io_counters()
        t0, m0 = time.time(), time.monotonic()
        if before is not None:
            before()
        time.sleep(seconds)
        cpu1, io1 = cpu_seconds(self.ps), self.ps.io_counters()
        return Window(
            time.monotonic() - m0,
            cpu1 - cpu0,
            io1.write_bytes - io0.write_bytes,
            io1.write_count - io0.write_count,
            t0,
            time.time(),
        )

    def stop(self) -> None:
        """SIGTERM to the measured process (strace ends with it), SIGKILL to what lingers."""
        with contextlib.suppress(psutil.Error):
            self.ps.terminate()
            self.ps.wait(30)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self.errors.close()

    def fsyncs(self, w: Window) -> int | None:
        """fsync and fdatasync calls within the window (after ``stop``: strace's file is
        complete then)."""
        if self.trace is None or not self.trace.exists():
            return None
        n = 0
        for line in self.trace.read_text().splitlines():
            parts = line.split(maxsplit=2)
            if len(parts) == 3 and parts[2].startswith(("fsync(", "fdatasync(")):
                n += w.t0 <= float(parts[1]) <= w.t1
        return n


# -- 1. fan-out cost -------------------------------------------------------------------------------


@dataclass
class Run:
    k: int
    window: Window
    fsyncs: int | None
    delivered: list[int]  # points per destination
    batches: int  # batches stored (the first destination's messages)
    p99: list[float]  # ms, per destination

    @property
    def cpu_per_k(self) -> float:
        """CPU-ms per 1,000 points polled."""
        return self.window.cpu / (RATE * self.window.elapsed) * 1e6


def fanout_run(
    k: int,
    args: argparse.Namespace,
    work: Path,
    modbus_port: int,
    brokers: list[Mosquitto],
    counters: list[Counter],
    trace: bool = False,
) -> Run:
    """The agent with ``k`` destinations (``k == 0``: polling only, nothing stored or sent);
    ``trace``: under strace, for its fsyncs (not for its CPU: tracing costs the agent CPU)."""
    shutil.rmtree(work / "data", ignore_errors=True)
    ports = [b.port for b in brokers[: max(k, 1)]]
    cfg = outputs_config(work / f"outputs-{k}.yaml", modbus_port, ports)
    cmd = (
        [sys.executable, "-m", "bench.agent_poll_only", str(cfg)] if k == 0 else [*AGENT, str(cfg)]
    )
    proc = Measured(cmd, work / f"strace-{k}.txt" if trace else None)
    used = counters[:k]
    snaps: list[tuple[int, int]] = []

    def start() -> None:
        for c in used:
            c.reset_latency()
        snaps[:] = [c.snapshot() for c in used]

    spy = None
    try:
        time.sleep(args.warmup)
        if args.profile == k:
            out = work / f"profile-{k}.txt"
            spy = subprocess.Popen(
                [str(Path(sys.executable).parent / "py-spy"), "record", "--nonblocking",
                 "--pid", str(proc.ps.pid), "--duration", str(int(args.seconds)),
                 "--format", "raw", "--output", str(out)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            print(f"profile of the agent with {k} destinations: {out}", flush=True)
        w = proc.window(args.seconds, start)
        ends = [c.snapshot() for c in used]
        latencies = [c.latencies[:] for c in used]
    finally:
        if spy is not None:
            spy.wait(60)
        proc.stop()
    delivered = [e[1] - s[1] for s, e in zip(snaps, ends, strict=True)]
    batches = ends[0][0] - snaps[0][0] if used else round(DEVICES * w.elapsed)
    p99 = [percentile(lat, 0.99) * 1000 for lat in latencies]
    return Run(k, w, proc.fsyncs(w), delivered, batches, p99)


def fanout(
    args: argparse.Namespace, work: Path, modbus_port: int, brokers: list[Mosquitto]
) -> list[str]:
    """``--rounds`` rounds of every destination count, interleaved, so that the machine's
    drift (other work on the shared cores) spreads over all of them; medians per count. Then
    one run each of 1 and 2 destinations under strace, for the fsyncs only: strace costs the
    agent a third more CPU even when it stops on fsync alone."""
    counters = [Counter(b.port) for b in brokers]
    by_k: dict[int, list[Run]] = {k: [] for k in args.runs}
    try:
        for _ in range(args.rounds):
            for k in args.runs:
                by_k[k].append(fanout_run(k, args, work, modbus_port, brokers, counters))
        traced = {
            k: fanout_run(k, args, work, modbus_port, brokers, counters, trace=True)
            for k in (1, 2)
            if args.strace and k in args.runs
        }
    finally:
        for c in counters:
            c.client.disconnect()
            c.client.loop_stop()
    bare_cfg = outputs_config(work / "bare.yaml", modbus_port, [brokers[0].port])
    try:
        bare = measure(
            [sys.executable, "-m", "bench.raw_poll", str(bare_cfg)],
            args.warmup,
            args.seconds,
            None,
        )
        bare_ms: float | None = bare["cpu"] / (RATE * bare["elapsed"]) * 1e6
    except SystemExit as exc:  # the bare poller is a reference only
        print(f"bare pymodbus poller failed: {exc}", flush=True)
        bare_ms = None

    def med(k: int, figure: Callable[[Run], float]) -> float:
        return statistics.median(figure(r) for r in by_k[k])

    def cpu(k: int) -> float:
        return med(k, lambda r: r.cpu_per_k)

    first = cpu(1) - cpu(0)
    ks = list(args.runs)
    dest = ks[1:]

    def rate_of(i: int) -> Callable[[Run], float]:  # points/s delivered to destination i
        return lambda r: r.delivered[i] / r.window.elapsed

    def cell(k: int, text: str) -> str:
        return text if k else "-"

    rows: list[tuple[str, list[str]]] = [
        ("points/s delivered, each destination",
         [cell(k, " / ".join(f"{med(k, rate_of(i)):,.0f}" for i in range(k))) for k in ks]),
        ("agent CPU use (one core = 100 %)",
         [f"{med(k, lambda r: r.window.cpu / r.window.elapsed) * 100:.0f} %" for k in ks]),
        ("CPU-ms per 1,000 points polled", [f"{cpu(k):.1f}" for k in ks]),
        ("  lowest - highest of the rounds",
         [f"{min(r.cpu_per_k for r in by_k[k]):.1f} - {max(r.cpu_per_k for r in by_k[k]):.1f}"
          for k in ks]),
        ("CPU-ms per 1,000 points delivered (all destinations)",
         [cell(k, f"{med(k, lambda r: r.window.cpu / max(sum(r.delivered), 1)) * 1e6:.1f}")
          for k in ks]),
        ("publishing: CPU-ms per 1,000 points polled",
         [cell(k, f"{cpu(k) - cpu(0):.1f}") for k in ks]),
        ("this destination adds, / the first's publishing",
         ["-", "100 %"] + [f"{(cpu(b) - cpu(a)) / first * 100:.0f} %" for a, b in pairwise(dest)]),
        ("disk bytes written per batch",
         [f"{med(k, lambda r: r.window.write_bytes / max(r.batches, 1)):,.0f}" for k in ks]),
        ("write calls per batch",
         [f"{med(k, lambda r: r.window.write_calls / max(r.batches, 1)):.2f}" for k in ks]),
        ("fsyncs per second, per batch (one run under strace)",
         [f"{t.fsyncs / t.window.elapsed:.1f}, {t.fsyncs / max(t.batches, 1):.2f}"
          if (t := traced.get(k)) is not None and t.fsyncs is not None else "-" for k in ks]),
        ("latency device -> subscriber p99, each destination",
         [cell(k, " / ".join(f"{statistics.median(r.p99[i] for r in by_k[k]):.0f}"
                             for i in range(k)) + " ms") for k in ks]),
    ]  # fmt: skip
    out = [f"offered {RATE:,} points/s ({DEVICES} x {TAGS} tags every 1 s), json, one mosquitto "
           f"per destination; medians of {args.rounds} rounds of {args.seconds:g} s"]  # fmt: skip
    width = max(len(name) for name, _ in rows)
    labels = ["polling only", *(f"{k} destination{'s' * (k > 1)}" for k in dest)]
    cols = max(16, *(len(v) for _, values in rows for v in values))
    out.append(f"  {'':<{width}}  " + "  ".join(f"{c:>{cols}}" for c in labels))
    for name, values in rows:
        out.append(f"  {name:<{width}}  " + "  ".join(f"{v:>{cols}}" for v in values))
    behind = sum(
        1 for k in dest for r in by_k[k] if min(r.delivered) < 0.98 * RATE * r.window.elapsed
    )
    if behind:
        out.append(f"  WARNING: in {behind} run(s) a destination got under 98 % of the offered "
                   "points (the agent fell behind: other work on the machine?); CPU per point "
                   "polled assumes the offered rate, so those runs read low")  # fmt: skip
    if bare_ms is not None:
        out.append(f"  bare pymodbus poller (bench_e2e's baseline): {bare_ms:.1f} CPU-ms per "
                   f"1,000 points; agent polling only / bare: {cpu(0) / bare_ms:.2f}x; agent with "
                   f"one destination / bare: {cpu(1) / bare_ms:.2f}x")  # fmt: skip
    return out


# -- 2. one destination down -----------------------------------------------------------------------


class SeqWatch(DataWatch):
    """Every data message: arrival, the batch's time, its points, and per device the seqs."""

    def __init__(self, port: int, client_id: str) -> None:
        self.arrivals: list[tuple[float, float, int]] = []
        self.seqs: dict[str, set[int]] = {}
        self.last: dict[str, int] = {}
        self.complete: dict[str, int] = {}  # every seq up to this one arrived
        self.listen(port, client_id)

    def count(self, doc: dict[str, Any], now: float) -> None:
        device, seq = doc["device"], int(doc["seq"])
        self.arrivals.append(
            (now, doc["ts"] / 1000, len(doc["values"]) + len(doc.get("quality", ())))
        )
        seqs = self.seqs.setdefault(device, set())
        seqs.add(seq)
        self.last[device] = max(seq, self.last.get(device, 0))
        complete = self.complete.get(device, 0)
        while complete + 1 in seqs:
            complete += 1
        self.complete[device] = complete

    def latencies(self, t0: float, t1: float, ts_from: float = 0.0) -> list[float]:
        """Latencies of messages that arrived in [t0, t1) of batches taken at ``ts_from`` or
        later."""
        with self.lock:
            return [now - ts for now, ts, _ in self.arrivals if t0 <= now < t1 and ts >= ts_from]

    def has_all(self, upto: dict[str, int]) -> bool:
        with self.lock:
            return all(self.complete.get(d, 0) >= last for d, last in upto.items())


class ProxyThread:
    """The fault proxy on an event loop of its own (this benchmark is threads, not asyncio)."""

    def __init__(self, target_port: int) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.proxy = asyncio.run_coroutine_threadsafe(
            FaultProxy(target_port).start(), self.loop
        ).result(5)

    def set(self, mode: Any) -> None:
        self.loop.call_soon_threadsafe(self.proxy.set, mode)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.proxy.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def outage(
    args: argparse.Namespace, work: Path, modbus_port: int, brokers: list[Mosquitto]
) -> list[str]:
    shutil.rmtree(work / "data", ignore_errors=True)
    proxy = ProxyThread(brokers[1].port)
    cfg = outputs_config(work / "outage.yaml", modbus_port, [brokers[0].port, proxy.proxy.port])
    live = SeqWatch(brokers[0].port, "outage-live")
    back = SeqWatch(brokers[1].port, "outage-returning")
    proc = Measured([*AGENT, str(cfg)], None)
    try:
        time.sleep(args.warmup)
        before = proc.window(args.seconds)
        proxy.set("blackhole")
        during = proc.window(args.outage)
        with live.lock:
            target = dict(live.last)  # every batch taken before the return
        restored = time.time()
        proxy.set("reset")  # the swallowed connects end now, not at their CONNACK timeout
        time.sleep(0.2)
        proxy.set("pass")
        drain_cpu0 = cpu_seconds(proc.ps)
        deadline = time.monotonic() + max(60.0, args.outage)
        while not back.has_all(target) and time.monotonic() < deadline:
            proc.check()
            time.sleep(0.25)
        drained = time.time()
        drain_cpu = cpu_seconds(proc.ps) - drain_cpu0
        complete = back.has_all(target)
    finally:
        proc.stop()
        for w in (live, back):
            w.client.disconnect()
            w.client.loop_stop()
        proxy.close()
    with back.lock:
        backlog = [
            (now, pts) for now, ts, pts in back.arrivals if now >= restored and ts < restored
        ]
    first, last = backlog[0][0], backlog[-1][0]
    span = max(last - first, 1e-3)
    batches_s, points_s = len(backlog) / span, sum(p for _, p in backlog) / span
    with live.lock:
        ingest = [pts for now, _, pts in live.arrivals if during.t0 <= now < during.t1]
    ingest_s = sum(ingest) / during.elapsed

    def p(lat: list[float]) -> str:
        return f"{statistics.median(lat) * 1000:.0f} / {percentile(lat, 0.99) * 1000:.0f} ms"

    rows = [
        ("live destination p50 / p99, before the outage", p(live.latencies(before.t0, before.t1))),
        ("live destination p50 / p99, during the outage", p(live.latencies(during.t0, during.t1))),
        ("live destination p50 / p99, while the other drains",
         p(live.latencies(restored, drained))),
        ("returning destination reconnected after", f"{first - restored:.1f} s"),
        ("backlog drained", f"{len(backlog):,} batches in {span:.1f} s"
                            + ("" if complete else " (NOT complete: timed out)")),
        ("drain rate", f"{batches_s:,.0f} batches/s, {points_s:,.0f} points/s"),
        ("live ingest during the outage", f"{ingest_s:,.0f} points/s"),
        ("drain / ingest", f"{points_s / ingest_s:.1f}x"),
        ("returning destination's live data while it drains, p50 / p99",
         p(back.latencies(first, last, ts_from=restored))),
        ("agent CPU use while draining", f"{drain_cpu / (drained - restored) * 100:.0f} %"),
    ]  # fmt: skip
    scale = f"an hour scaled 1:{3600 / args.outage:g}: {DEVICES * args.outage:,.0f} batches"
    out = [f"two destinations, the second blackholed for {args.outage:g} s at {RATE:,} "
           f"points/s ({scale})"]  # fmt: skip
    width = max(len(name) for name, _ in rows)
    out += [f"  {name:<{width}}  {value}" for name, value in rows]
    return out


@contextmanager
def rig(brokers: int, keep: bool) -> Iterator[tuple[Path, int, list[Mosquitto]]]:
    """Brokers and the simulator's 200 meters, in a temporary directory (``keep``: left for
    the profile in it)."""
    work = Path(tempfile.mkdtemp(prefix="edge-outputs-"))
    started = [Mosquitto(work / f"mosquitto-{i}") for i in range(brokers)]
    for b in started:
        b.start()
    modbus_port = free_port()
    sim = subprocess.Popen(
        [sys.executable, "-m", "simulators.modbus_tcp", "--port", str(modbus_port), "--units",
         f"1-{DEVICES}", "--update-interval", "1"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        time.sleep(2.0)
        yield work, modbus_port, started
    finally:
        sim.terminate()
        sim.wait(10)
        for b in started:
            b.stop()
        if not keep:
            shutil.rmtree(work, ignore_errors=True)


def _counts(text: str) -> tuple[int, ...]:
    """Destination counts of the fan-out runs (0, 1, ...: at least 0 and 1, the baselines)."""
    counts = tuple(int(n) for n in text.split(","))
    if counts[:2] != (0, 1):
        raise argparse.ArgumentTypeError("start with 0,1: the baselines")
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--part", choices=("all", "fanout", "outage"), default="all")
    parser.add_argument("--seconds", type=float, default=10.0, help="each measured window")
    parser.add_argument("--warmup", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=3, help="fan-out rounds (medians)")
    parser.add_argument("--outage", type=float, default=60.0, help="seconds the second is down")
    parser.add_argument(
        "--profile", type=int, default=None, help="py-spy the agent with this many destinations"
    )
    parser.add_argument("--no-strace", dest="strace", action="store_false")
    parser.add_argument("--runs", type=_counts, default=(0, 1, 2, 3), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.strace = args.strace and shutil.which("strace") is not None
    with rig(3, keep=args.profile is not None) as (work, modbus_port, brokers):
        if args.part in ("all", "fanout"):
            for line in fanout(args, work, modbus_port, brokers):
                print(line, flush=True)
        if args.part in ("all", "outage"):
            for line in outage(args, work, modbus_port, brokers):
                print(line, flush=True)
    print("machine: 2 shared cores; the simulator, the brokers and the subscribers share them")
    return 0


if __name__ == "__main__":
    sys.exit(main())
