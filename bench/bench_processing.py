"""Edge processing cost: waveform feature extraction throughput, and what report by exception and
windows cost per 1,000 points against the pipeline without processing, in the same run.

    .venv/bin/python -m bench.bench_processing [--seconds 3]

(a) waveforms of 4,096 samples analysed per second on one core: statistics only, then every
    feature (spectrum, bands, velocity and ISO zone, envelope with bearing frequencies);
(b) CPU seconds per 1,000 points (readings) through ``Pipeline.submit`` into a real buffer:
    without processing (the baseline), with a deadband on every tag (a slowly wandering value:
    most readings are held back, so fewer batches reach the buffer), and with 1-minute windows
    on every tag (one aggregate batch a minute). CPU time counts every thread (SQLite's too),
    so the ratio says what processing costs or saves the gateway as a whole.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from agent.core.buffer import Buffer
from agent.core.pipeline import Pipeline
from agent.core.processing import Processing
from agent.core.processing.config import ProcessedDevice, WaveformSpec
from agent.core.processing.features import compute
from drivers.base import Batch, Reading

SAMPLES = 4096
FS = 25600.0
TAGS = 50
BATCHES = 2000  # 100,000 points per mode


def _waveform() -> np.ndarray:
    rng = np.random.default_rng(0)
    t = np.arange(SAMPLES) / FS
    x = 0.1 * np.sin(2 * np.pi * 24.7 * t) + 0.02 * rng.standard_normal(SAMPLES)
    for t0 in np.arange(0.001, t[-1], 1 / 88.0):
        tail = t >= t0
        x[tail] += 0.3 * np.exp(-(t[tail] - t0) * 600) * np.sin(2 * np.pi * 4000 * (t[tail] - t0))
    return x


def features_per_second(spec: WaveformSpec, seconds: float) -> tuple[float, float]:
    """(waveforms per second, ms per waveform) on this thread, one core."""
    samples = _waveform().tolist()  # as a driver hands it over: a list of floats
    n = 0
    start = time.process_time()
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        compute(samples, spec, 1480.0)
        n += 1
    cpu = time.process_time() - start
    return n / cpu, cpu / n * 1000


def _device(tag_keys: dict[str, Any]) -> ProcessedDevice:
    tags = [{"name": f"t{i:02d}", **tag_keys} for i in range(TAGS)]
    return ProcessedDevice.model_validate({"name": "meter", "driver": "bench", "tags": tags})


def _batches() -> list[Batch]:
    """BATCHES batches of TAGS readings a second apart, values wandering slowly as meters' do
    (the same every run: a seeded random walk)."""
    rng = np.random.default_rng(1)
    walk = 230.0 + np.cumsum(rng.normal(0, 0.01, (BATCHES, TAGS)), axis=0)
    t0 = 1_763_884_800.0
    return [
        Batch(
            "meter",
            t0 + i,
            [Reading(f"t{j:02d}", round(float(walk[i, j]), 2), t0 + i) for j in range(TAGS)],
        )
        for i in range(BATCHES)
    ]


async def pipeline_cpu(tag_keys: dict[str, Any] | None) -> tuple[float, int]:
    """(CPU seconds per 1,000 points, batches committed) for the meter's batches through the
    whole pipeline (processing, then the buffer)."""
    with tempfile.TemporaryDirectory() as tmp:
        buffer = Buffer(Path(tmp), 256_000_000)
        await buffer.open()
        processing = Processing([_device(tag_keys)] if tag_keys else [], Path(tmp))
        await processing.start()
        pipeline = Pipeline(buffer, processing)
        batches = _batches()
        start = time.process_time()
        for b in batches:
            await pipeline.submit(b)
        await buffer.close()
        cpu = time.process_time() - start
        committed = sum(1 for b in batches if b.seq is not None)
        await processing.stop()
    return cpu / (BATCHES * TAGS) * 1000, committed


async def stage_cpu(tag_keys: dict[str, Any]) -> float:
    """CPU seconds per 1,000 points of the processing stage alone (no buffer)."""
    with tempfile.TemporaryDirectory() as tmp:
        processing = Processing([_device(tag_keys)], Path(tmp))
        await processing.start()
        batches = _batches()
        start = time.process_time()
        for b in batches:
            await processing.process(b)
        cpu = time.process_time() - start
        await processing.stop()
    return cpu / (BATCHES * TAGS) * 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="per waveform measurement")
    args = parser.parse_args(argv)

    stats = WaveformSpec(
        sample_rate=FS,
        features=["rms", "peak", "peak_to_peak", "crest_factor", "kurtosis", "skewness"],
    )
    full = WaveformSpec.model_validate(
        {
            "sample_rate": FS,
            "quantity": "acceleration_g",
            "features": [
                "rms",
                "peak",
                "peak_to_peak",
                "crest_factor",
                "kurtosis",
                "skewness",
                "dominant_frequency",
                "bands",
                "velocity_rms",
                "iso_zone",
                "envelope",
            ],
            "bands": {"low": [10, 1000], "mid": [1000, 5000], "high": [5000, 12000]},
            "bearing": {"balls": 9, "ball_diameter": 7.94, "pitch_diameter": 39.04},
            "shaft_rpm": 1480,
        }
    )
    print(f"(a) waveform features, {SAMPLES} samples at {FS:g} Hz, one core")
    for name, spec in (("statistics only", stats), ("every feature", full)):
        rate, ms = features_per_second(spec, args.seconds)
        print(f"    {name:<16} {rate:8.0f} waveforms/s   {ms:6.2f} ms each")

    print(f"(b) pipeline into a real buffer, {BATCHES} batches x {TAGS} tags")
    modes: list[tuple[str, dict[str, Any] | None]] = [
        ("no processing", None),
        ("deadband 0.1", {"deadband": 0.1, "max_silence": "5m"}),
        ("1m windows", {"window": {"length": "1m"}}),
    ]

    def run(keys: dict[str, Any] | None) -> tuple[float, int]:
        return asyncio.run(pipeline_cpu(keys))

    base, base_batches = run(None)
    print(
        f"    {'no processing':<14} {base * 1000:7.2f} CPU-ms/1000 points   {base_batches:5d} "
        "batches buffered   (baseline)"
    )
    for name, keys in modes[1:]:
        cost, committed = run(keys)
        print(
            f"    {name:<14} {cost * 1000:7.2f} CPU-ms/1000 points   {committed:5d} batches "
            f"buffered   x{cost / base:.2f} the baseline"
        )
    print("(c) the processing stage alone (what it adds before any saving in the buffer)")
    for name, keys in modes[1:]:
        assert keys is not None
        cost = asyncio.run(stage_cpu(keys))
        print(f"    {name:<14} {cost * 1000:7.2f} CPU-ms/1000 points")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
