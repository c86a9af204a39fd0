"""Expressions of calculated tags: parsed once at validation, evaluated per batch, never ``eval``.

An integrator writes ``voltage * current / 1000`` or ``if(flow > 0.5, flow * 3.6, 0)`` in the
config; a config file is not trusted code, so the text is parsed with Python's ``ast`` module and
only a small grammar is accepted (numbers, tag names, arithmetic, comparisons, ``and or not``,
``min max abs round if``); anything else (attribute calls, subscripts, lambdas, strings...) is
refused with its column. The accepted tree is turned once into closures, one per node, that do
only the grammar's operations: no Python ``compile``, no ``eval``, no name lookup outside the
tag values handed in.

All arithmetic is done in floats, so ``10 ** 10 ** 10`` overflows at once (a bad reading) instead
of computing a huge integer. Types are inferred at validation from the input tags' declared types
(:func:`infer`): ``number`` or ``bool``, ``any`` when the driver cannot say before reading.

Tag names may hold ``.`` (``voltage.l1`` is read as the tag ``voltage.l1``); names that are not
identifiers (with ``-``, starting with a digit, or a keyword) are written ``tag('power-total')``.
"""

from __future__ import annotations

import ast
import io
import itertools
import keyword
import math
import operator
import tokenize
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

#: What an expression or an input is: a number, true/false, or unknown until read; an input
#: may also be text, which no expression takes.
ExprType = Literal["number", "bool", "any", "text"]

FUNCTIONS = ("min", "max", "abs", "round", "if", "tag")
#: Stand-in for the keyword ``if`` in call position (same length, so columns stay right).
_IF = "iF"
#: Longest expression text accepted (a config typo should not feed the parser megabytes).
MAX_LENGTH = 2000
#: Deepest nesting accepted (the evaluator recurses).
MAX_DEPTH = 50

_BINARY: dict[type[ast.operator], Callable[[float, float], float]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_COMPARE: dict[type[ast.cmpop], Callable[[Any, Any], bool]] = {
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
}
_ORDERING = (ast.Lt, ast.LtE, ast.Gt, ast.GtE)


class ExprError(ValueError):
    """The expression is not accepted; ``col`` is the 1-based column in its text."""

    def __init__(self, message: str, col: int) -> None:
        super().__init__(f"{message} (column {col})")
        self.reason = message
        self.col = col


class EvalError(ArithmeticError):
    """Evaluation failed on these values (division by zero, an input that is not a number);
    the message is the bad reading's reason."""


@dataclass(frozen=True, slots=True)
class Expression:
    """A parsed, accepted expression, the tag names it reads, and the closures that compute it
    (``_compile``)."""

    text: str
    tree: ast.expr
    inputs: tuple[str, ...]
    run: Callable[[Mapping[str, Any]], Any] = field(compare=False, repr=False)


def _col(node: ast.AST) -> int:
    return getattr(node, "col_offset", 0) + 1


def _hide_if(text: str) -> str:
    """The text with each ``if`` that is called (``if(`` where an operand is due) renamed to
    ``iF``, which ``ast`` can parse as a function name; a conditional's ``if`` (after an
    operand: ``x if (c) else y``) and other tokens, string contents included, are left alone."""
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(text).readline))
    except (tokenize.TokenError, SyntaxError, ValueError):
        return text  # ast.parse reports the problem with its position
    lines = text.split("\n")
    previous: tokenize.TokenInfo | None = None
    for tok, nxt in itertools.pairwise(tokens):
        after_operand = previous is not None and (
            previous.type in (tokenize.NUMBER, tokenize.STRING)
            or (previous.type == tokenize.NAME and not keyword.iskeyword(previous.string))
            or previous.string in (")", "]", "}")
            or previous.string in ("True", "False", "None")
        )
        calls_if = tok.type == tokenize.NAME and tok.string == "if" and nxt.string == "("
        if tok.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.COMMENT):
            previous = tok
        # ``x if (cond) else y`` follows an operand: Python's conditional, left alone.
        if calls_if and not after_operand:
            row, col = tok.start
            line = lines[row - 1]
            lines[row - 1] = line[:col] + _IF + line[col + 2 :]
    return "\n".join(lines)


def parse(text: str) -> Expression:
    """Parse and check the grammar; ``ExprError`` says what is refused and where."""
    if not text.strip():
        raise ExprError("the expression is empty", 1)
    if len(text) > MAX_LENGTH:
        raise ExprError(f"the expression is longer than {MAX_LENGTH} characters", MAX_LENGTH)
    try:
        tree = ast.parse(_hide_if(text.strip("\n")), mode="eval")
    except SyntaxError as exc:
        raise ExprError(f"not an expression: {exc.msg}", exc.offset or 1) from None
    except (ValueError, RecursionError, MemoryError):  # the parser's own limits
        raise ExprError("the expression is too complex", 1) from None
    inputs: list[str] = []
    _check(tree.body, inputs, 0)
    return Expression(text, tree.body, tuple(dict.fromkeys(inputs)), _compile(tree.body))


def dotted_name(node: ast.expr) -> str | None:
    """``voltage.l1`` (an attribute chain of names) as the tag name it stands for."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(node.id)
    return ".".join(reversed(parts))


def _function(node: ast.Call) -> str:
    if not isinstance(node.func, ast.Name):
        raise ExprError("only min, max, abs, round, if and tag can be called", _col(node))
    name = "if" if node.func.id == _IF else node.func.id
    if name not in FUNCTIONS:
        raise ExprError(
            f"unknown function {name!r} (there are: {', '.join(FUNCTIONS)})", _col(node)
        )
    if node.keywords:
        raise ExprError(f"{name}() takes no named arguments", _col(node))
    if any(isinstance(a, ast.Starred) for a in node.args):
        raise ExprError(f"{name}() takes no *arguments", _col(node))
    count = len(node.args)
    wanted = {"abs": (1, 1), "round": (1, 2), "if": (3, 3), "tag": (1, 1)}.get(name, (2, 64))
    if not wanted[0] <= count <= wanted[1]:
        shown = {(1, 1): "1", (1, 2): "1 or 2", (3, 3): "3", (2, 64): "at least 2"}[wanted]
        raise ExprError(f"{name}() takes {shown} arguments, not {count}", _col(node))
    return name


def _tag_argument(node: ast.Call) -> str:
    arg = node.args[0]
    if not isinstance(arg, ast.Constant) or not isinstance(arg.value, str) or not arg.value:
        raise ExprError("tag() takes a tag name in quotes: tag('power-total')", _col(node))
    return arg.value


def _check(node: ast.expr, inputs: list[str], depth: int) -> None:
    """Refuse every node outside the grammar; collect the tag names read."""
    if depth > MAX_DEPTH:
        raise ExprError(f"the expression nests deeper than {MAX_DEPTH}", _col(node))
    deeper = depth + 1
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool | int | float):
            return
        raise ExprError(f"{node.value!r} is not a number (only tag() takes text)", _col(node))
    if isinstance(node, ast.Name | ast.Attribute):
        name = dotted_name(node)
        if name is None:
            raise ExprError("only tag names may contain '.'", _col(node))
        inputs.append(name)
        return
    if isinstance(node, ast.UnaryOp):
        if not isinstance(node.op, ast.USub | ast.UAdd | ast.Not):
            raise ExprError("'~' is not supported", _col(node))
        _check(node.operand, inputs, deeper)
        return
    if isinstance(node, ast.BinOp):
        if type(node.op) not in _BINARY:
            raise ExprError("only + - * / // % ** combine numbers", _col(node))
        _check(node.left, inputs, deeper)
        _check(node.right, inputs, deeper)
        return
    if isinstance(node, ast.BoolOp):
        for value in node.values:
            _check(value, inputs, deeper)
        return
    if isinstance(node, ast.Compare):
        if any(type(op) not in _COMPARE for op in node.ops):
            raise ExprError("only < <= > >= == != compare", _col(node))
        for value in (node.left, *node.comparators):
            _check(value, inputs, deeper)
        return
    if isinstance(node, ast.IfExp):
        for value in (node.test, node.body, node.orelse):
            _check(value, inputs, deeper)
        return
    if isinstance(node, ast.Call):
        name = _function(node)
        if name == "tag":
            inputs.append(_tag_argument(node))
            return
        if name == "round" and len(node.args) == 2:
            digits = node.args[1]
            if not (isinstance(digits, ast.Constant) and type(digits.value) is int):
                raise ExprError("round()'s digits must be a whole number", _col(digits))
            if not -15 <= digits.value <= 15:
                raise ExprError("round()'s digits must be within -15..15", _col(digits))
        for arg in node.args:
            _check(arg, inputs, deeper)
        return
    raise ExprError(f"{type(node).__name__} is not supported in an expression", _col(node))


# -------------------------------------------------------------------------------------- types


def infer(expr: Expression, types: Mapping[str, ExprType]) -> ExprType:
    """The type of ``expr`` given its inputs' types; ``ExprError`` for an unknown tag or a
    type mistake (arithmetic on true/false, ``and`` of numbers...), with its column."""
    return _type(expr.tree, types)


def _expect(node: ast.expr, types: Mapping[str, ExprType], want: ExprType, what: str) -> None:
    got = _type(node, types)
    if got != "any" and got != want:
        shown = "true/false" if got == "bool" else "a number"
        raise ExprError(f"{what} takes {_shown(want)}, not {shown}", _col(node))


def _shown(kind: ExprType) -> str:
    return "true/false" if kind == "bool" else "numbers" if kind == "number" else "values"


def _type(node: ast.expr, types: Mapping[str, ExprType]) -> ExprType:
    if isinstance(node, ast.Constant):
        return "bool" if isinstance(node.value, bool) else "number"
    if isinstance(node, ast.Name | ast.Attribute):
        return _input_type(dotted_name(node) or "", node, types)
    if isinstance(node, ast.UnaryOp):
        if isinstance(node.op, ast.Not):
            _expect(node.operand, types, "bool", "not")
            return "bool"
        _expect(node.operand, types, "number", "'-'")
        return "number"
    if isinstance(node, ast.BinOp):
        _expect(node.left, types, "number", "arithmetic")
        _expect(node.right, types, "number", "arithmetic")
        return "number"
    if isinstance(node, ast.BoolOp):
        word = "and" if isinstance(node.op, ast.And) else "or"
        for value in node.values:
            _expect(value, types, "bool", word)
        return "bool"
    if isinstance(node, ast.Compare):
        values = [node.left, *node.comparators]
        kinds = [_type(v, types) for v in values]
        for op, (a, b), (ka, kb) in zip(
            node.ops, itertools.pairwise(values), itertools.pairwise(kinds), strict=True
        ):
            if isinstance(op, _ORDERING):
                _expect(a, types, "number", "< <= > >=")
                _expect(b, types, "number", "< <= > >=")
            elif "any" not in (ka, kb) and ka != kb:
                raise ExprError("== and != compare two numbers or two true/false", _col(b))
        return "bool"
    if isinstance(node, ast.IfExp):
        return _branches(node.test, node.body, node.orelse, types)
    if isinstance(node, ast.Call):
        name = "if" if isinstance(node.func, ast.Name) and node.func.id == _IF else ""
        name = name or (node.func.id if isinstance(node.func, ast.Name) else "")
        if name == "tag":
            return _input_type(_tag_argument(node), node, types)
        if name == "if":
            test, then, otherwise = node.args
            return _branches(test, then, otherwise, types)
        args = node.args[:1] if name == "round" else node.args
        for arg in args:
            _expect(arg, types, "number", f"{name}()")
        return "number"
    raise ExprError(f"{type(node).__name__} is not supported in an expression", _col(node))


def _input_type(name: str, node: ast.expr, types: Mapping[str, ExprType]) -> ExprType:
    kind = types.get(name)
    if kind is None:
        raise ExprError(f"unknown tag {name!r}", _col(node))
    if kind == "text":
        raise ExprError(f"tag {name!r} is text: expressions take numbers, true/false", _col(node))
    return kind


def _branches(
    test: ast.expr, then: ast.expr, otherwise: ast.expr, types: Mapping[str, ExprType]
) -> ExprType:
    _expect(test, types, "bool", "if's condition")
    a, b = _type(then, types), _type(otherwise, types)
    if "any" in (a, b):
        return b if a == "any" else a
    if a != b:
        raise ExprError("if's two results must be both numbers or both true/false", _col(then))
    return a


# --------------------------------------------------------------------------------- evaluation


def evaluate(expr: Expression, values: Mapping[str, Any]) -> float | bool:
    """The value of ``expr`` with these input values (bools and numbers); ``EvalError`` with
    the reason when it has none (division by zero, overflow, an input of the wrong kind)."""
    try:
        result = expr.run(values)
    except ZeroDivisionError:
        raise EvalError("division by zero") from None
    except OverflowError:
        raise EvalError("overflow") from None
    except (ValueError, TypeError) as exc:  # a negative number to a fractional power...
        raise EvalError(f"no value: {exc}") from None
    if isinstance(result, bool):
        return result
    if not isinstance(result, float) or not math.isfinite(result):
        raise EvalError("not a finite number")
    return result


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise EvalError(f"{what} is {_kind(value)}, not a number")
    return float(value)


def _truth(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise EvalError(f"{what} is {_kind(value)}, not true/false")
    return value


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, list):
        return "a list"
    return "empty" if value is None else "not a value"


#: A compiled node: the input values in, the node's value out (a float or a bool).
Run = Callable[[Mapping[str, Any]], Any]


def _compile(node: ast.expr) -> Run:
    """The accepted tree as nested closures, built once: evaluating walks no tree and asks no
    ``isinstance`` of the nodes per batch (a few times faster than interpreting it), and still
    runs nothing but the operations below."""
    if isinstance(node, ast.Constant):
        constant = node.value if isinstance(node.value, bool) else _number(node.value, "a constant")
        return lambda _values: constant
    if isinstance(node, ast.Name | ast.Attribute):
        return _reader(dotted_name(node) or "")
    if isinstance(node, ast.UnaryOp):
        return _unary(node)
    if isinstance(node, ast.BinOp):
        return _binary(_BINARY[type(node.op)], _compile(node.left), _compile(node.right))
    if isinstance(node, ast.BoolOp):
        return _logic(isinstance(node.op, ast.And), [_compile(v) for v in node.values])
    if isinstance(node, ast.Compare):
        return _comparison(node)
    if isinstance(node, ast.IfExp):
        return _choice(_compile(node.test), _compile(node.body), _compile(node.orelse))
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        return _function_call(node)
    raise ExprError(f"{type(node).__name__} is not supported in an expression", _col(node))


def _unary(node: ast.UnaryOp) -> Run:
    operand = _compile(node.operand)
    if isinstance(node.op, ast.Not):
        return lambda values: not _truth(operand(values), "not's operand")
    if isinstance(node.op, ast.USub):
        return lambda values: -_num(operand(values), "'-''s operand")
    return lambda values: _num(operand(values), "'+''s operand")


def _binary(op: Callable[[float, float], float], left: Run, right: Run) -> Run:
    def run(values: Mapping[str, Any]) -> Any:
        result = op(_num(left(values), "an operand"), _num(right(values), "an operand"))
        if result.__class__ is complex:  # a negative number to a fractional power
            raise EvalError("no real value")
        return result

    return run


def _logic(conjunction: bool, parts: list[Run]) -> Run:
    word = "and's operand" if conjunction else "or's operand"
    if conjunction:
        return lambda values: all(_truth(part(values), word) for part in parts)
    return lambda values: any(_truth(part(values), word) for part in parts)


def _comparison(node: ast.Compare) -> Run:
    first = _compile(node.left)
    steps = [
        (_COMPARE[type(op)], isinstance(op, _ORDERING), _compile(right))
        for op, right in zip(node.ops, node.comparators, strict=True)
    ]

    def run(values: Mapping[str, Any]) -> bool:
        left = first(values)
        for compare, ordering, right_run in steps:
            right = right_run(values)
            if ordering:
                left, right = _num(left, "a comparison"), _num(right, "a comparison")
            elif isinstance(left, bool) != isinstance(right, bool):
                raise EvalError("== and != compare two numbers or two true/false")
            if not compare(left, right):
                return False
            left = right
        return True

    return run


def _choice(test: Run, then: Run, otherwise: Run) -> Run:
    return lambda values: (
        then(values) if _truth(test(values), "if's condition") else otherwise(values)
    )


def _function_call(node: ast.Call) -> Run:
    name = "if" if node.func.id == _IF else node.func.id  # type: ignore[attr-defined]
    if name == "tag":
        return _reader(_tag_argument(node))
    args = [_compile(a) for a in node.args]
    if name == "if":
        return _choice(*args)
    if name == "round":
        digits = node.args[1].value if len(node.args) == 2 else 0  # type: ignore[attr-defined]
        number = args[0]
        return lambda values: float(round(_num(number(values), "round()'s argument"), digits))
    what = f"{name}()'s argument"
    if name == "abs":
        only = args[0]
        return lambda values: abs(_num(only(values), what))
    pick = min if name == "min" else max
    return lambda values: pick(_num(a(values), what) for a in args)


def _num(value: Any, what: str) -> float:
    """``value`` as a number (the fast path: it already is a float)."""
    return value if value.__class__ is float else _number(value, what)


def _reader(name: str) -> Run:
    return lambda values: _input(name, values)


def _input(name: str, values: Mapping[str, Any]) -> Any:
    if name not in values:
        raise EvalError(f"no value of {name}")
    value = values[name]
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return float(value)
    raise EvalError(f"input {name} is {_kind(value)}, not a number")
