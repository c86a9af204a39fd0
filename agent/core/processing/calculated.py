"""Calculated tags: values the agent computes from a device's readings, for every driver alike.

A device's ``calculated:`` list holds tags with an ``expr`` over its other tags (apparent power
from voltage and current, a flow in m³/h from l/s). They are computed here, in processing, on
the batches the pollers hand over, so every driver gets them without knowing of them, and the
result goes on like a reading the device gave: report by exception, windows and alarms apply,
and every format publishes it.

A batch may hold only some of the device's tags (scan rates: ``drivers.base.rates``), so the last
reading of every input is kept: a calculated tag is computed whenever a batch holds one of its
inputs, with the latest value of the others, and stamped with the newest input's time. Its
quality is the worst of its inputs': an input never read yet or bad makes it bad, with the
reason naming the input; an input uncertain makes it uncertain. A value the formula has no
answer for (division by zero, overflow) is bad with that reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from agent.core.processing.config import CalculatedTag, ProcessedDevice, input_type
from agent.core.processing.expr import EvalError, Expression, ExprType, evaluate, infer, parse
from drivers.base import DeviceBase, Quality, Reading, ValueType

#: The value type a calculated tag declares, by the type of its expression.
_DECLARED: dict[ExprType, ValueType] = {"number": "float64", "bool": "bool"}


def calculated_of(device: DeviceBase) -> Sequence[CalculatedTag]:
    """The device's calculated tags (none for a device built without the processing keys)."""
    return device.calculated if isinstance(device, ProcessedDevice) else ()


def calculated_types(device: DeviceBase) -> dict[str, ValueType]:
    """Each calculated tag's value type, for formats that declare types (Sparkplug births,
    ThingsBoard attributes): ``float64`` or ``bool``; left out where an input's type is known
    only when read (the expression's type then is too)."""
    types: dict[str, ExprType] = {t.name: input_type(t.value_type()) for t in device.tags}
    out: dict[str, ValueType] = {}
    for calc in calculated_of(device):
        kind = infer(parse(calc.expr), types)
        types[calc.name] = kind
        declared = _DECLARED.get(kind)
        if declared is not None:
            out[calc.name] = declared
    return out


class Calculator:
    """One device's calculated tags and the last reading of each of their inputs."""

    def __init__(self, tags: Sequence[CalculatedTag]) -> None:
        self._exprs: list[tuple[str, Expression]] = [(t.name, parse(t.expr)) for t in tags]
        wanted = {name for _, expr in self._exprs for name in expr.inputs}
        self._wanted = frozenset(wanted)
        self._last: dict[str, Reading] = {}

    def readings(self, batch: Sequence[Reading]) -> list[Reading]:
        """The calculated readings ``batch`` gives: one for each calculated tag with an input
        in it (or in a calculated tag computed before it)."""
        last = self._last
        touched: set[str] = set()
        for r in batch:
            if r.tag in self._wanted:
                last[r.tag] = r
                touched.add(r.tag)
        out: list[Reading] = []
        for name, expr in self._exprs:
            if touched.isdisjoint(expr.inputs):
                continue
            reading = self._compute(name, expr)
            out.append(reading)
            if name in self._wanted:
                last[name] = reading
                touched.add(name)
        return out

    def _compute(self, name: str, expr: Expression) -> Reading:
        last = self._last
        values: dict[str, Any] = {}
        ts = 0.0
        missing: str | None = None
        for input_name in expr.inputs:
            r = last.get(input_name)
            if r is None:
                missing = missing or input_name
                continue
            if r.ts > ts:
                ts = r.ts
            values[input_name] = r
        if missing is not None:
            return Reading.bad(name, ts, f"no value of {missing} yet")
        uncertain: str | None = None
        for input_name, r in values.items():
            if r.quality is not Quality.GOOD:
                if r.quality is Quality.BAD or r.value is None:
                    return Reading.bad(name, ts, f"{input_name}: {r.reason or 'bad'}")
                if uncertain is None:
                    uncertain = f"{input_name}: {r.reason or 'uncertain'}"
            values[input_name] = r.value
        try:
            value = evaluate(expr, values)
        except EvalError as exc:
            return Reading.bad(name, ts, str(exc))
        if uncertain is not None:
            return Reading(name, value, ts, Quality.UNCERTAIN, uncertain)
        return Reading(name, value, ts)
