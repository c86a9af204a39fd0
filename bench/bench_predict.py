"""Prediction and models: CPU per prediction update (a fit on a month of hourly points), per
model inference on a 4,096-sample waveform, and memory per predicted feature over a year of
hourly points; against the waveform features of the same waveform, measured in the same run.

    .venv/bin/python -m bench.bench_predict [--repeat 20]

A prediction update is ``Predictor.fit``: the three fits and the crossing, run once per point
(an hour by default), on the worker thread. Two series: a flat one with noise (the linear fit
wins) and a healthy level followed by an accelerating rise (the exponential and power-law grids
run in full). The models are built here with onnx's helper API: the waveform's RMS (the input
alone costs), and a small dense network (4,096 -> 64 -> 8 -> 1, about 263k weights: an
autoencoder-sized anomaly scorer). Memory: the points a year of hourly medians keeps
(``history: 365d``), the state file they make, and the peak a fit on them allocates
(tracemalloc).
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from agent.core.processing import features
from agent.core.processing.config import PredictSpec, WaveformSpec
from agent.core.processing.model import ModelRunner
from agent.core.processing.predict import Predictor

HOUR = 3600.0
T0 = 1_763_884_800.0


def _time(fn: Callable[[], Any], repeat: int) -> float:
    """Median seconds of one call (after one warm-up)."""
    fn()
    runs = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - start)
    return statistics.median(runs)


def _series(kind: str, hours: int) -> list[tuple[float, float]]:
    rng = np.random.default_rng(0)
    t = np.arange(hours) / 24.0
    y = 2.0 + rng.normal(0, 0.01, hours)
    if kind == "degrading":
        onset = t[-1] * 0.6
        y += 0.05 * np.expm1(0.4 * np.maximum(t - onset, 0.0))
    return [(T0 + i * HOUR, float(v)) for i, v in enumerate(y)]


def _models(directory: Path) -> dict[str, Path]:
    import onnx
    from onnx import TensorProto, helper

    opset = [helper.make_opsetid("", 17)]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4096])
    out = helper.make_tensor_value_info("score", TensorProto.FLOAT, [1, 1])
    rms = helper.make_graph(
        [
            helper.make_node("Mul", ["x", "x"], ["sq"]),
            helper.make_node("ReduceMean", ["sq"], ["ms"], axes=[1], keepdims=1),
            helper.make_node("Sqrt", ["ms"], ["score"]),
        ],
        "rms",
        [x],
        [out],
    )
    rng = np.random.default_rng(1)
    sizes = [(4096, 64), (64, 8), (8, 1)]
    inits, nodes, last = [], [], "x"
    for i, (a, b) in enumerate(sizes):
        w = rng.normal(0, 1 / np.sqrt(a), (a, b)).astype(np.float32)
        inits.append(helper.make_tensor(f"w{i}", TensorProto.FLOAT, [a, b], w.ravel().tolist()))
        inits.append(helper.make_tensor(f"b{i}", TensorProto.FLOAT, [b], [0.0] * b))
        name = "score" if i == len(sizes) - 1 else f"h{i}"
        nodes.append(
            helper.make_node(
                "Gemm", [last, f"w{i}", f"b{i}"], [f"g{i}" if name != "score" else name]
            )
        )
        if name != "score":
            nodes.append(helper.make_node("Relu", [f"g{i}"], [name]))
        last = name
    dense = helper.make_graph(nodes, "dense", [x], [out], initializer=inits)
    paths = {}
    for name, graph in (("rms", rms), ("dense", dense)):
        model = helper.make_model(graph, opset_imports=opset, ir_version=8)
        paths[name] = directory / f"{name}.onnx"
        onnx.save(model, str(paths[name]))
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args(argv)

    wave = np.random.default_rng(2).normal(0, 0.1, 4096).tolist()
    spec = WaveformSpec(sample_rate=5120, quantity="acceleration_g")  # default features
    baseline = _time(lambda: features.compute(wave, spec, None), args.repeat)
    print(
        f"baseline: waveform features (rms, peak, crest, kurtosis), 4,096 samples: "
        f"{baseline * 1e3:.2f} ms"
    )

    predict = PredictSpec(value=3.0, history=365 * 86400.0)
    for kind in ("flat", "degrading"):
        for days in (30, 365):
            points = _series(kind, days * 24)
            p = Predictor(predict, "v", 3.0)
            figures = p.fit(points)
            took = _time(functools.partial(p.fit, points), max(3, args.repeat // 4))
            print(
                f"prediction update, {kind:9} series, {days:3} days of hourly points: "
                f"{took * 1e3:7.2f} ms ({took / baseline:5.1f}x the features; model "
                f"{figures.evidence['model']})"
            )

    with tempfile.TemporaryDirectory() as tmp:
        paths = _models(Path(tmp))
        for name, path in paths.items():
            runner = ModelRunner(str(path), ["waveform"], ["score"])
            row = runner.row(wave, {})
            assert row is not None
            took = _time(functools.partial(runner.infer, row), args.repeat)
            print(
                f"model inference, {name:5} on 4,096 samples: {took * 1e3:6.3f} ms "
                f"({took / baseline:4.2f}x the features)"
            )

    year = _series("degrading", 365 * 24)
    tracemalloc.start()
    p = Predictor(predict, "v", 3.0)
    for ts, v in year:  # one value per hour: each closes the previous hour's point
        p.add(v, ts)
    kept, _ = tracemalloc.get_traced_memory()
    tracemalloc.reset_peak()
    base, _ = tracemalloc.get_traced_memory()
    p.fit(list(p.points))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    state = len(json.dumps(p.state(), separators=(",", ":")))
    print(
        f"memory per predicted feature, a year of hourly points ({len(p.points)}): "
        f"{kept / 1024:.0f} KiB kept, {state / 1024:.0f} KiB in the state file, "
        f"{(peak - base) / 1024:.0f} KiB peak during a fit"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
