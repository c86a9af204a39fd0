"""The plant's own models (``model: {onnx: FILE, inputs, outputs}``): an ONNX model run with
onnxruntime on a tag's waveform or on a vector of its features, its outputs published as
``<tag>.<output>``.

onnxruntime is an optional extra (``pip install 'edge-agent[onnx]'``), imported only when a
config names a model: most gateways run none and should not carry its ~50 MB. The session is
created on the worker thread at the first inference (loading a model can take a while), and
every inference runs there too; the event loop only hands over the row and takes the outputs.
The signature is checked at validation (``check_signature``) so a wrong file is refused with
FILE:LINE:COL before start rather than failing at the first waveform.
"""

from __future__ import annotations

import math
import threading
import time
from typing import Any

from agent.core.processing.values import FeatureValue, tidy

EXTRA = "pip install 'edge-agent[onnx]'"


class SignatureError(ValueError):
    """The model file is missing, unreadable, or does not take or give what the config says."""


def _runtime() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise SignatureError(f"a model needs onnxruntime, the onnx extra: {EXTRA}") from None
    return onnxruntime


def _session(path: str) -> Any:
    ort = _runtime()
    options = ort.SessionOptions()
    # One thread: the worker pool already runs devices side by side, and an edge box has few
    # cores; onnxruntime's default of one thread per core would fight the event loop.
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: its warnings are not the integrator's
    try:
        return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own classes for every kind of bad file
        raise SignatureError(f"cannot load {path}: {exc}") from None


def check_signature(path: str, width: int | None, outputs: int) -> None:
    """The model takes one float tensor whose last dimension is ``width`` (None: the waveform,
    any length) and gives ``outputs`` outputs; ``SignatureError`` says what differs."""
    session = _session(path)
    ins = session.get_inputs()
    if len(ins) != 1:
        raise SignatureError(f"{path} takes {len(ins)} inputs; a model here takes one")
    tensor = ins[0]
    if tensor.type != "tensor(float)":
        raise SignatureError(f"{path} takes {tensor.type}; a model here takes tensor(float)")
    shape = list(tensor.shape or [])
    last = shape[-1] if shape else None
    if width is not None and isinstance(last, int) and last != width:
        raise SignatureError(
            f"{path} takes {last} values per row, inputs names {width}: list as many features "
            "as the model was trained on"
        )
    given = len(session.get_outputs())
    if given != outputs:
        names = ", ".join(o.name for o in session.get_outputs())
        raise SignatureError(f"{path} gives {given} outputs ({names}); outputs names {outputs}")


class ModelRunner:
    """One tag's model: the session, made at first use on the worker thread; inference count
    and time for the metrics."""

    def __init__(self, path: str, inputs: list[str], outputs: list[str]) -> None:
        self.path = path
        self.inputs = inputs
        self.outputs = outputs
        self._session: Any = None
        self._lock = threading.Lock()  # two waveforms of the tag may reach two workers
        self.inferences = 0
        self.seconds = 0.0
        self.failing = False

    def row(self, samples: Any, features: dict[str, FeatureValue]) -> list[float] | None:
        """The model's input row: the waveform, or the features in ``inputs`` order (None when
        one of them is not a number this time)."""
        if self.inputs == ["waveform"]:
            return [float(x) for x in samples]
        row = [features.get(name) for name in self.inputs]
        if any(not isinstance(x, float | int) for x in row):
            return None
        return [float(x) for x in row]  # type: ignore[arg-type]

    def infer(self, row: list[float]) -> dict[str, FeatureValue]:
        """Blocking: run on the worker thread."""
        import numpy as np

        with self._lock:
            if self._session is None:
                self._session = _session(self.path)
            session = self._session
        x = np.asarray(row, dtype=np.float32).reshape(1, -1)
        start = time.perf_counter()
        results = session.run(None, {session.get_inputs()[0].name: x})
        elapsed = time.perf_counter() - start
        with self._lock:
            self.inferences += 1
            self.seconds += elapsed
        out: dict[str, FeatureValue] = {}
        for name, result in zip(self.outputs, results, strict=False):
            first = np.asarray(result).ravel()[:1]
            if first.size == 0:
                continue
            value = first[0].item() if hasattr(first[0], "item") else first[0]
            if isinstance(value, bytes):
                value = value.decode(errors="replace")
            if isinstance(value, bool | int):
                out[name] = int(value)  # a class label
            elif isinstance(value, float):
                if not math.isfinite(value):
                    raise ValueError(f"output {name} is {value}, not a finite number")
                out[name] = tidy(value, 6)
            else:
                out[name] = str(value)
        return out
