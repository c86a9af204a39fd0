"""Calculated tags (``calculated:`` with ``expr``): the expression grammar (with hypothesis), the
types found at validation with the file's positions, quality and reasons per batch, and the agent
end to end through a real mosquitto against the Modbus simulator."""

from __future__ import annotations

import ast
import asyncio
import json
import math
import operator
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.app import status_cli
from agent.app.config import ConfigErrors, load_config
from agent.core.processing.calculated import Calculator, calculated_types
from agent.core.processing.config import CalculatedTag
from agent.core.processing.expr import EvalError, ExprError, evaluate, infer, parse
from agent.north.formats.base import tag_types
from agent.north.formats.meta import TagMeta, tag_meta
from agent.north.formats.sparkplug.format import SparkplugFormat
from agent.south.registry import load_drivers
from drivers.base import Quality, Reading
from simulators.modbus_tcp import ModbusSimulator
from tests.brokers import Mosquitto, Subscriber, free_port
from tests.e2e import AgentRig, write_config
from tests.platforms.sparkplug_host import Decoded

DRIVERS = load_drivers()
DOUBLE, BOOLEAN = 10, 11  # Sparkplug B datatypes

# -- the grammar, against a reference built beside the text ---------------------------------------

NAMES = ("v", "i", "pf", "volt.l1")
_OPS: dict[str, Callable[[float, float], float]] = {
    "+": operator.add,
    "-": operator.sub,
    "*": operator.mul,
    "/": operator.truediv,
}


def _numbers() -> st.SearchStrategy[tuple[str, Callable[[dict[str, float]], float]]]:
    """(text, reference) pairs of arithmetic: the reference computes what the text means."""
    leaf = st.one_of(
        st.integers(0, 1000).map(lambda n: (str(n), lambda _env, n=n: float(n))),
        st.sampled_from(NAMES).map(lambda name: (name, lambda env, name=name: env[name])),
    )

    def extend(
        inner: st.SearchStrategy[tuple[str, Callable[[dict[str, float]], float]]],
    ) -> st.SearchStrategy[tuple[str, Callable[[dict[str, float]], float]]]:
        def binary(op: str, a: Any, b: Any) -> tuple[str, Callable[[dict[str, float]], float]]:
            return f"({a[0]} {op} {b[0]})", lambda env: _OPS[op](a[1](env), b[1](env))

        def call(name: str, args: list[Any]) -> tuple[str, Callable[[dict[str, float]], float]]:
            text = f"{name}({', '.join(a[0] for a in args)})"
            fn: Callable[..., float] = {"min": min, "max": max}[name]
            return text, lambda env: fn(*(a[1](env) for a in args))

        def choose(cond: Any, a: Any, b: Any) -> tuple[str, Callable[[dict[str, float]], float]]:
            text = f"if({cond[0]} > {a[0]}, {a[0]}, -{b[0]})"
            return text, lambda env: a[1](env) if cond[1](env) > a[1](env) else -b[1](env)

        arguments = st.lists(inner, min_size=2, max_size=3)
        return st.one_of(
            st.builds(binary, st.sampled_from(sorted(_OPS)), inner, inner),
            st.builds(call, st.sampled_from(["min", "max"]), arguments),
            st.builds(lambda a: (f"abs({a[0]})", lambda env: abs(a[1](env))), inner),
            st.builds(choose, inner, inner, inner),
        )

    return st.recursive(leaf, extend, max_leaves=12)


ENV = st.fixed_dictionaries({name: st.floats(-1e6, 1e6) for name in NAMES})


@settings(max_examples=300, deadline=None)
@given(_numbers(), ENV)
def test_arithmetic_means_what_it_says(case: Any, env: dict[str, float]) -> None:
    text, reference = case
    expr = parse(text)
    assert set(expr.inputs) <= set(NAMES)
    assert infer(expr, dict.fromkeys(NAMES, "number")) == "number"
    try:
        expected = reference(env)
    except ZeroDivisionError:
        with pytest.raises(EvalError, match="division by zero"):
            evaluate(expr, env)
        return
    if not math.isfinite(expected):
        with pytest.raises(EvalError):
            evaluate(expr, env)
        return
    assert evaluate(expr, env) == expected


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60))
def test_any_text_is_accepted_or_refused_with_a_column_never_run(text: str) -> None:
    """Arbitrary text never escapes the grammar: it parses into the accepted nodes only, or
    ``ExprError`` says where; nothing else is raised."""
    try:
        expr = parse(text)
    except ExprError as exc:
        assert exc.col >= 1
        return
    allowed = (
        ast.Constant, ast.Name, ast.Attribute, ast.UnaryOp, ast.BinOp, ast.BoolOp, ast.Compare,
        ast.IfExp, ast.Call, ast.Load, ast.operator, ast.unaryop, ast.cmpop, ast.boolop,
    )  # fmt: skip
    assert all(isinstance(node, allowed) for node in ast.walk(expr.tree))


@pytest.mark.parametrize(
    "text",
    ["__import__('os')", "open('x')", "v.__class__", "[v]", "v[0]", "f'{v}'", "(lambda: 1)()",
     "exec('1')", "v := 1", "{1: 2}", "...", "'a' * 3", "v.real", "getattr(v, 'x')",
     "2 ** 10 ** 10 ** 10", "v if v else"],
)  # fmt: skip
def test_what_is_not_arithmetic_is_refused_or_harmless(text: str) -> None:
    try:
        expr = parse(text)
    except ExprError:
        return
    # Accepted: only as a tag name (``v.real`` is the tag "v.real") or as float arithmetic,
    # which overflows instead of building a huge integer.
    with pytest.raises(EvalError):
        evaluate(expr, {"v": 1.0})


def test_if_comparisons_and_logic() -> None:
    expr = parse("if(flow > 0.5 and not stopped, round(flow * 3.6, 1), 0)")
    types = {"flow": "number", "stopped": "bool"}
    assert infer(expr, types) == "number"  # type: ignore[arg-type]
    assert evaluate(expr, {"flow": 2.0, "stopped": False}) == 7.2
    assert evaluate(expr, {"flow": 2.0, "stopped": True}) == 0.0
    assert evaluate(parse("1 < v <= 3"), {"v": 3}) is True
    assert evaluate(parse("tag('power-total') / 1000"), {"power-total": 2500}) == 2.5
    assert evaluate(parse("v if v > 0 else -v"), {"v": -2}) == 2.0
    # Python's conditional with a parenthesised condition is not the function if().
    assert evaluate(parse("v if (v > 0) else -v"), {"v": -2}) == 2.0
    assert evaluate(parse("if(if(v > 0, True, False), 1, 2) * 3"), {"v": 1}) == 3.0


@pytest.mark.parametrize(
    ("text", "types", "message"),
    [
        ("v + stopped", {"v": "number", "stopped": "bool"}, "arithmetic takes numbers, not true"),
        ("v and stopped", {"v": "number", "stopped": "bool"}, "and takes true/false, not a number"),
        ("if(v, 1, 2)", {"v": "number"}, "if's condition takes true/false"),
        ("if(s, 1, s)", {"s": "bool"}, "if's two results must be both"),
        ("v * volts", {"v": "number"}, "unknown tag 'volts' (column 5)"),
        ("v == s", {"v": "number", "s": "bool"}, "== and != compare two numbers"),
        ("name + 1", {"name": "text"}, "tag 'name' is text"),
    ],
)
def test_type_mistakes_are_found_before_running(text: str, types: Any, message: str) -> None:
    with pytest.raises(ExprError, match=message.replace("(", r"\(").replace(")", r"\)")):
        infer(parse(text), types)


# -- quality and reasons, batch by batch ----------------------------------------------------------


def _calc(**exprs: str) -> Calculator:
    return Calculator([CalculatedTag(name=name, expr=text) for name, text in exprs.items()])


def test_inputs_from_different_batches_combine_with_their_latest_values() -> None:
    calc = _calc(apparent="v * i / 1000", doubled="apparent * 2")
    assert [r.reason for r in calc.readings([Reading("v", 230.0, 10.0)])] == [
        "no value of i yet",
        "apparent: no value of i yet",
    ]
    out = calc.readings([Reading("i", 10.0, 11.0)])
    assert [(r.tag, r.value, r.ts, r.quality) for r in out] == [
        ("apparent", 2.3, 11.0, Quality.GOOD),
        ("doubled", 4.6, 11.0, Quality.GOOD),
    ]
    assert calc.readings([Reading("unrelated", 1, 12.0)]) == []


def test_bad_uncertain_and_impossible_inputs_say_why() -> None:
    calc = _calc(ratio="a / b")
    calc.readings([Reading("a", 1.0, 1.0)])
    bad = calc.readings([Reading.bad("b", 2.0, "exception 2 (illegal data address)")])
    assert (bad[0].quality, bad[0].reason) == (
        Quality.BAD,
        "b: exception 2 (illegal data address)",
    )
    zero = calc.readings([Reading("b", 0, 3.0)])
    assert (zero[0].quality, zero[0].reason, zero[0].value) == (
        Quality.BAD,
        "division by zero",
        None,
    )
    unsure = calc.readings([Reading("b", 4, 4.0, Quality.UNCERTAIN, "sensor warming")])
    assert (unsure[0].value, unsure[0].quality, unsure[0].reason) == (
        0.25,
        Quality.UNCERTAIN,
        "b: sensor warming",
    )
    text = calc.readings([Reading("b", "n/a", 5.0)])
    assert text[0].reason == "input b is text, not a number"


# -- validation with the file's positions ---------------------------------------------------------


def _load(tmp_path: Path, calculated: str) -> list[str]:
    path = tmp_path / "c.yaml"
    path.write_text(
        textwrap.dedent(
            """\
            agent: {id: t}
            devices:
              - name: m
                driver: modbus
                connection: {host: 127.0.0.1}
                tags:
                  - {name: voltage, table: holding, address: 0, type: uint16, scale: 0.1}
                  - {name: current, table: holding, address: 1, type: uint16, scale: 0.01}
                  - {name: running, table: coil, address: 0, type: bool}
                calculated:
            """
        )
        + textwrap.indent(textwrap.dedent(calculated), "      ")
    )
    try:
        load_config(path, DRIVERS)
    except ConfigErrors as exc:
        return [f"{i.line}:{i.col}: {i.path}: {i.message}" for i in exc.issues]
    return []


def test_a_valid_calculated_tag_loads_with_its_type(tmp_path: Path) -> None:
    calculated = """\
    - {name: apparent, expr: voltage * current, unit: VA}
    - {name: loaded, expr: running and apparent > 10}
    """
    assert _load(tmp_path, calculated) == []
    config = load_config(tmp_path / "c.yaml", DRIVERS)
    device = config.devices[0]
    assert calculated_types(device) == {"apparent": "float64", "loaded": "bool"}
    assert tag_types(device)["apparent"] == "float64"
    # Sparkplug declares them in the device's birth, before any value: Double and Boolean.
    fmt = SparkplugFormat("plant1", "gw", tmp_path / "state", tag_types={"m": tag_types(device)})
    fmt.connect_sent()
    birth = next(Decoded(m.topic, m.payload) for m in fmt.online() if "/DBIRTH/" in m.topic)
    assert birth.metric("apparent")["datatype"] == DOUBLE
    assert birth.metric("loaded")["datatype"] == BOOLEAN
    # Their unit reaches the platforms that carry metadata (JSON's meta message, ThingsBoard...).
    assert tag_meta(device)["apparent"] == TagMeta("float64", "VA", None)


@pytest.mark.parametrize(
    ("calculated", "error"),
    [
        (
            "- {name: p, expr: 'voltage * * current'}\n",
            "11:25: devices.0.calculated.0.expr: not an expression: invalid syntax (column 11)",
        ),
        (
            "- {name: p, expr: 'open(voltage)'}\n",
            "11:25: devices.0.calculated.0.expr: unknown function 'open' (there are: min, max, "
            "abs, round, if, tag) (column 1)",
        ),
        (
            "- {name: p, expr: voltage * curent}\n",
            "10:5: devices.0.calculated: calculated.0.expr: unknown tag 'curent' (column 11)",
        ),
        (
            "- {name: p, expr: running * 2}\n",
            "10:5: devices.0.calculated: calculated.0.expr: arithmetic takes numbers, not "
            "true/false (column 1)",
        ),
        (
            "- {name: voltage, expr: current * 2}\n",
            "10:5: devices.0.calculated: calculated.0.name: 'voltage' is already a tag of the "
            "device",
        ),
        (
            "- {name: p, expr: current * 2, every: 5s}\n",
            "11:38: devices.0.calculated.0.every: a calculated tag has no every: it is computed "
            "when its inputs are read",
        ),
    ],
)
def test_mistakes_are_refused_with_file_line_and_column(
    tmp_path: Path, calculated: str, error: str
) -> None:
    assert _load(tmp_path, calculated) == [error]


# -- end to end -----------------------------------------------------------------------------------


async def test_calculated_tags_end_to_end_through_mosquitto(
    tmp_path: Path, broker: Mosquitto
) -> None:
    """Apparent power from a fast voltage and a slow current (scan rates: the latest current is
    used), a unit conversion, a comparison; a zero divisor makes its tag bad with the reason."""
    async with ModbusSimulator(port=free_port(), units=(1,), update_interval=None) as sim:
        sim.set_registers(1, "holding", 1140, [2301, 1000, 0])
        reg = {"table": "holding", "type": "uint16"}
        cfg = write_config(
            tmp_path / "c.yaml",
            broker_port=broker.port,
            modbus_port=sim.port,
            devices=[
                {
                    "name": "meter",
                    "poll_interval": "100ms",
                    "tags": [
                        {"name": "voltage", "address": 1140, "scale": 0.1, **reg},
                        {
                            "name": "current",
                            "address": 1141,
                            "scale": 0.01,
                            "every": "300ms",
                            **reg,
                        },
                        {"name": "zero", "address": 1142, **reg},
                    ],
                    "calculated": [
                        {"name": "apparent_kva", "expr": "round(voltage * current / 1000, 3)"},
                        {"name": "voltage_kv", "expr": "voltage / 1000", "unit": "kV"},
                        {"name": "high", "expr": "voltage > 230"},
                        {"name": "per_zero", "expr": "voltage / zero"},
                    ],
                }
            ],
        )
        sub = Subscriber(broker.port, ["edge/test-gw/meter/data"]).start()
        try:
            async with AgentRig(cfg):
                msgs = await sub.wait_for(
                    lambda m: sum("voltage" in json.loads(x.payload)["values"] for x in m) >= 5
                )
        finally:
            sub.stop()
    docs = [m.json() for m in msgs]
    # Both groups are due at the start, the fast one first: the current is not read yet.
    assert docs[0]["quality"]["apparent_kva"] == "bad: no value of current yet"
    at = next(i for i, d in enumerate(docs) if "current" in d["values"])
    # The current's own batch carries what depends on it, nothing else.
    assert docs[at]["values"] == {"current": 10.0, "apparent_kva": 2.301}
    # A batch of the voltage alone carries the apparent power, from the latest current.
    after = [d for d in docs[at + 1 :] if "voltage" in d["values"]]
    assert after, docs
    for d in after:
        assert d["values"] == {
            "voltage": 230.1,
            "zero": 0,
            "apparent_kva": 2.301,
            "voltage_kv": 0.2301,
            "high": True,
        }
        assert d["quality"] == {"per_zero": "bad: division by zero"}


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("-" * 1990 + "1", "nests deeper than 50"),
        ("(" * 300 + "1" + ")" * 300, "too many nested parentheses"),
        ("1" + "+1" * 1500, "longer than 2000 characters"),
        ("a\x00b", "not an expression"),
        ("", "empty"),
    ],
)
def test_hostile_expressions_are_refused_not_crashing(text: str, reason: str) -> None:
    with pytest.raises(ExprError, match=reason):
        parse(text)


async def test_read_without_an_agent_shows_calculated_tags(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``edge-agent read`` polling the device itself computes the calculated tags from that poll,
    as the agent would."""
    async with ModbusSimulator(port=free_port(), units=(1,), update_interval=None) as sim:
        sim.set_registers(1, "holding", 1140, [2301, 1000])
        reg = {"table": "holding", "type": "uint16"}
        cfg = write_config(
            tmp_path / "c.yaml",
            broker_port=free_port(),
            modbus_port=sim.port,
            devices=[
                {
                    "name": "meter",
                    "tags": [
                        {"name": "voltage", "address": 1140, "scale": 0.1, **reg},
                        {"name": "current", "address": 1141, "scale": 0.01, **reg},
                    ],
                    "calculated": [{"name": "kva", "expr": "voltage * current / 1000"}],
                }
            ],
        )
        rows = await asyncio.to_thread(
            status_cli.read_command, str(cfg), "meter", ["kva", "voltage"], None
        )
    assert rows == 0
    out = capsys.readouterr().out
    assert "polled directly" in out and "kva" in out and "2.301" in out, out
    assert "current" not in out.split("polled directly", 1)[1], out


def _any_expression() -> st.SearchStrategy[str]:
    """Expressions of the whole grammar, typed well or not: numbers, true/false, tags of both
    types, every operator and function."""
    leaf = st.sampled_from(["n", "m", "b", "c", "0", "2.5", "True", "tag('n')"])

    def extend(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
        binary = st.sampled_from(["+", "-", "*", "/", "//", "%", "**", "<", "<=", "==", "!=",
                                  "and", "or"])  # fmt: skip
        return st.one_of(
            st.builds(lambda a, op, b: f"({a} {op} {b})", inner, binary, inner),
            st.builds(lambda op, a: f"({op} {a})", st.sampled_from(["-", "not"]), inner),
            st.builds(
                lambda f, a, b: f"{f}({a}, {b})", st.sampled_from(["min", "max"]), inner, inner
            ),
            st.builds(lambda f, a: f"{f}({a})", st.sampled_from(["abs", "round"]), inner),
            st.builds(lambda a, b, c: f"if({a}, {b}, {c})", inner, inner, inner),
            st.builds(lambda a, b, c: f"({b} if {a} else {c})", inner, inner, inner),
        )

    return st.recursive(leaf, extend, max_leaves=10)


@settings(max_examples=250, deadline=None)
@given(_any_expression(), st.floats(-1e3, 1e3), st.floats(-1e3, 1e3), st.booleans(), st.booleans())
def test_the_type_found_at_validation_holds_when_it_runs(
    text: str, n: float, m: float, b: bool, c: bool
) -> None:
    """Whatever ``infer`` accepts evaluates to a value of the inferred type, or to a bad
    reading's reason (division by zero, overflow): never to another type or an exception
    nobody expects. What it refuses, it refuses with a column."""
    expr = parse(text)
    types: Any = {"n": "number", "m": "number", "b": "bool", "c": "bool"}
    try:
        kind = infer(expr, types)
    except ExprError as exc:
        assert exc.col >= 1
        return
    try:
        value = evaluate(expr, {"n": n, "m": m, "b": b, "c": c})
    except EvalError:
        return
    assert isinstance(value, bool) == (kind == "bool"), (text, kind, value)
    if kind == "number":
        assert isinstance(value, float) and math.isfinite(value)
