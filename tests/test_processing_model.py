"""The plant's own models (``model: {onnx: FILE, inputs, outputs}``): ONNX models built here with
onnx's helper API (never downloaded), run by onnxruntime on the worker thread on a waveform or
on a vector of features; their outputs published, watched by alarms; their signature checked at
validation with FILE:LINE:COL; their inference time a metric; onnxruntime imported only when a
config names a model.
"""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from agent.app.config import ConfigErrors, load_config
from agent.core.processing import Processing
from agent.core.processing.config import ProcessedDevice
from agent.ops.processing_metrics import ProcessingCollector
from agent.south.registry import load_drivers
from drivers.base import Batch, Reading

ROOT = Path(__file__).resolve().parent.parent
T0 = 1_763_884_800.0
OPSET = [helper.make_opsetid("", 17)]


def save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=OPSET, ir_version=8)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def rms_model(path: Path, length: int | None = None) -> Path:
    """Waveform in (any length), its RMS out: an 'anomaly score' the test can check exactly."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, length])
    y = helper.make_tensor_value_info("score", TensorProto.FLOAT, [1, 1])
    nodes = [
        helper.make_node("Mul", ["x", "x"], ["sq"]),
        helper.make_node("ReduceMean", ["sq"], ["ms"], axes=[1], keepdims=1),
        helper.make_node("Sqrt", ["ms"], ["score"]),
    ]
    return save(helper.make_graph(nodes, "rms", [x], [y]), path)


def classifier(path: Path, width: int = 2) -> Path:
    """Features in, a class and its probability out: a linear layer, softmax, argmax."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, width])
    label = helper.make_tensor_value_info("label", TensorProto.INT64, [1])
    prob = helper.make_tensor_value_info("probability", TensorProto.FLOAT, [1])
    # class 1 ("worn") wins when kurtosis (the second feature) is large
    weights = helper.make_tensor(
        "w", TensorProto.FLOAT, [width, 2], [0.0, 0.0] * (width - 1) + [-1.0, 1.0]
    )
    bias = helper.make_tensor("b", TensorProto.FLOAT, [2], [4.0, -4.0])
    nodes = [
        helper.make_node("Gemm", ["x", "w", "b"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["p"], axis=1),
        helper.make_node("ArgMax", ["p"], ["label"], axis=1, keepdims=0),
        helper.make_node("ReduceMax", ["p"], ["probability"], axes=[1], keepdims=0),
    ]
    graph = helper.make_graph(nodes, "clf", [x], [label, prob], initializer=[weights, bias])
    return save(graph, path)


def device(model: dict[str, Any], **tag: Any) -> ProcessedDevice:
    return ProcessedDevice.model_validate(
        {
            "name": "m1",
            "driver": "test",
            "tags": [
                {
                    "name": "vib",
                    "waveform": {"sample_rate": 5120, "features": ["rms", "kurtosis"]},
                    "model": model,
                    **tag,
                }
            ],
        }
    )


def waves(n: int, impulsive_from: int) -> list[list[float]]:
    rng = np.random.default_rng(1)
    out = []
    for i in range(n):
        w = rng.normal(0, 0.1, 4096)
        if i >= impulsive_from:
            w[::256] += 3.0  # impacts: kurtosis far above 3
        out.append(w.tolist())
    return out


async def test_a_waveform_model_runs_on_the_worker_thread_and_is_a_metric(tmp_path: Path) -> None:
    path = rms_model(tmp_path / "rms.onnx")
    alarm = {"name": "model_score", "value": "score", "on": "> 0.15", "off": "< 0.12"}
    dev = device({"onnx": str(path), "inputs": ["waveform"], "outputs": ["score"]}, alarms=[alarm])
    processing = Processing([dev], tmp_path)
    await processing.start()
    published: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    signals = waves(6, impulsive_from=3)
    try:
        for i, w in enumerate(signals):
            out = await processing.process(Batch("m1", T0 + i, [Reading("vib", w, T0 + i)]))
            assert out is not None
            published += [{r.tag: r.value for r in b.readings} for b in out.batches]
            events += [e.doc for e in out.events]
    finally:
        await processing.stop()
    for values, w in zip(published, signals, strict=True):
        rms = math.sqrt(float(np.mean(np.square(w))))  # the model's own arithmetic
        assert values["vib.score"] == pytest.approx(rms, rel=1e-5)
    assert [e["event"] for e in events] == ["raise"] and events[0]["tag"] == "vib.score"
    runner = processing.processors["m1"].tags["vib"].model
    assert runner is not None and runner.inferences == 6 and runner.seconds > 0
    metrics = {m.name: m for m in ProcessingCollector(lambda: processing.processors).collect()}
    family = metrics["edge_agent_model_inferences"]
    assert [s.value for s in family.samples if s.name.endswith("_total")] == [6]
    seconds = metrics["edge_agent_model_inference_seconds"]
    assert 0 < seconds.samples[0].value == pytest.approx(runner.seconds)


async def test_a_features_model_publishes_a_class_and_its_probability(tmp_path: Path) -> None:
    path = classifier(tmp_path / "clf.onnx")
    model = {"onnx": str(path), "inputs": ["rms", "kurtosis"], "outputs": ["wear", "wear_p"]}
    processing = Processing([device(model)], tmp_path)
    await processing.start()
    got: list[dict[str, Any]] = []
    try:
        for i, w in enumerate(waves(4, impulsive_from=2)):
            out = await processing.process(Batch("m1", T0 + i, [Reading("vib", w, T0 + i)]))
            assert out is not None
            got += [{r.tag: r.value for r in b.readings} for b in out.batches]
    finally:
        await processing.stop()
    for values in got:
        k = float(values["vib.kurtosis"])
        expected = 1 if k > 4.0 else 0
        assert values["vib.wear"] == expected and isinstance(values["vib.wear"], int)
        p1 = 1 / (1 + math.exp(-2 * (k - 4.0)))
        assert values["vib.wear_p"] == pytest.approx(max(p1, 1 - p1), rel=1e-4)
    assert [v["vib.wear"] for v in got] == [0, 0, 1, 1]


async def test_a_model_that_fails_gives_bad_readings_and_one_log_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = rms_model(tmp_path / "rms64.onnx", length=64)  # trained on 64 samples, fed 4096
    model = {"onnx": str(path), "inputs": ["waveform"], "outputs": ["score"]}
    processing = Processing([device(model)], tmp_path)
    await processing.start()
    try:
        for i, w in enumerate(waves(3, impulsive_from=9)):
            out = await processing.process(Batch("m1", T0 + i, [Reading("vib", w, T0 + i)]))
            assert out is not None
            quality = {r.tag: r.quality.name for b in out.batches for r in b.readings}
            assert quality["vib.score"] == "BAD" and quality["vib.rms"] == "GOOD"
    finally:
        await processing.stop()
    assert [r.message for r in caplog.records].count("model failed") == 1


def _config(tmp_path: Path, model: str) -> Path:
    path = tmp_path / "agent.yaml"
    path.write_text(
        textwrap.dedent(
            f"""\
            agent: {{id: t}}
            devices:
              - name: pump
                driver: modbus
                connection: {{host: 127.0.0.1}}
                tags:
                  - name: vib
                    table: input
                    address: 0
                    type: int16
                    count: 64
                    waveform: {{sample_rate: 5120, features: [rms, kurtosis]}}
                    model: {model}
            """
        )
    )
    return path


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ("{onnx: clf.onnx, inputs: [rms], outputs: [c, p]}", "takes 2 values per row"),
        ("{onnx: clf.onnx, inputs: [rms, kurtosis], outputs: [c]}", "gives 2 outputs"),
        ("{onnx: rms.onnx, inputs: [waveform], outputs: [score]}", None),  # relative: found
        ("{onnx: nothing.onnx, inputs: [waveform], outputs: [s]}", "cannot load"),
        ("{onnx: agent.yaml, inputs: [waveform], outputs: [s]}", "cannot load"),
    ],
)
def test_the_signature_is_checked_at_validation_with_file_line_col(
    tmp_path: Path, model: str, message: str | None
) -> None:
    classifier(tmp_path / "clf.onnx")
    rms_model(tmp_path / "rms.onnx")
    path = _config(tmp_path, model)
    if message is None:
        load_config(path, load_drivers())
        return
    with pytest.raises(ConfigErrors) as caught:
        load_config(path, load_drivers())
    (issue,) = caught.value.issues
    assert (issue.line, issue.path) == (13, "devices.0.tags.0.model.onnx")
    assert message in issue.message


def test_onnxruntime_is_imported_only_when_a_config_names_a_model(tmp_path: Path) -> None:
    rms_model(tmp_path / "rms.onnx")
    plain = _config(tmp_path, "null")
    check = (
        "import sys; from agent.app.config import load_config;"
        "from agent.south.registry import load_drivers;"
        f"from pathlib import Path; load_config(Path({str(plain)!r}), load_drivers());"
        "print('onnxruntime' in sys.modules)"
    )
    run = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, cwd=ROOT)
    assert run.stdout.strip() == "False", run.stderr


async def test_a_model_giving_nan_is_a_bad_reading_not_a_broken_message(tmp_path: Path) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, None])
    y = helper.make_tensor_value_info("score", TensorProto.FLOAT, [1, 1])
    nodes = [  # log of a negative mean: NaN
        helper.make_node("ReduceMean", ["x"], ["m"], axes=[1], keepdims=1),
        helper.make_node("Neg", ["m"], ["n"]),
        helper.make_node("Log", ["n"], ["score"]),
    ]
    path = save(helper.make_graph(nodes, "nan", [x], [y]), tmp_path / "nan.onnx")
    dev = device({"onnx": str(path), "inputs": ["waveform"], "outputs": ["score"]})
    processing = Processing([dev], tmp_path)
    await processing.start()
    try:
        wave = [1.0 + 0.1 * (i % 7) for i in range(256)]  # positive mean: log(-m) is NaN
        out = await processing.process(Batch("m1", T0, [Reading("vib", wave, T0)]))
    finally:
        await processing.stop()
    assert out is not None
    (score,) = [r for b in out.batches for r in b.readings if r.tag == "vib.score"]
    assert score.quality.name == "BAD" and score.value is None


def test_without_onnxruntime_a_model_is_refused_with_the_extra_to_install(tmp_path: Path) -> None:
    rms_model(tmp_path / "rms.onnx")
    path = _config(tmp_path, "{onnx: rms.onnx, inputs: [waveform], outputs: [score]}")
    check = (
        "import sys; sys.modules['onnxruntime'] = None;"  # as if the extra were not installed
        "from pathlib import Path; from agent.app.config import ConfigErrors, load_config;"
        "from agent.south.registry import load_drivers\n"
        "try:\n"
        f"    load_config(Path({str(path)!r}), load_drivers())\n"
        "except ConfigErrors as exc:\n"
        "    print(*(f'{i.line}:{i.path}: {i.message}' for i in exc.issues))"
    )
    run = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, cwd=ROOT)
    assert run.stdout.strip() == (
        "13:devices.0.tags.0.model.onnx: a model needs onnxruntime, the onnx extra: "
        "pip install 'edge-agent[onnx]'"
    ), run.stderr


@pytest.mark.parametrize(
    ("tag", "message"),
    [
        (
            "{name: temp, table: input, address: 0, type: int16, "
            "model: {onnx: clf.onnx, inputs: [a, b], outputs: [c, p]}}",
            "a model runs on a waveform: add waveform: to the tag",
        ),
        (
            "{name: vib, table: input, address: 0, type: int16, count: 64, "
            "waveform: {sample_rate: 5120, features: [rms, kurtosis]}, "
            "model: {onnx: clf.onnx, inputs: [rms, skewness], outputs: [c, p]}}",
            "model.inputs: tag vib computes no 'skewness' (it computes: rms, kurtosis)",
        ),
        (
            "{name: vib, table: input, address: 0, type: int16, count: 64, "
            "waveform: {sample_rate: 5120, features: [rms, kurtosis]}, "
            "model: {onnx: clf.onnx, inputs: [rms, kurtosis], outputs: [rms, p]}}",
            "model.outputs: 'rms' is already a feature of the tag",
        ),
    ],
)
def test_a_model_fits_its_tag(tmp_path: Path, tag: str, message: str) -> None:
    classifier(tmp_path / "clf.onnx")
    path = tmp_path / "agent.yaml"
    path.write_text(
        "agent: {id: t}\ndevices:\n  - name: pump\n    driver: modbus\n"
        f"    connection: {{host: 127.0.0.1}}\n    tags:\n      - {tag}\n"
    )
    with pytest.raises(ConfigErrors) as caught:
        load_config(path, load_drivers())
    (issue,) = caught.value.issues
    assert (issue.line, issue.path) == (7, "devices.0.tags.0.model")
    assert message in issue.message
