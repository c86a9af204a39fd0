"""Methods commands may call: the config's declaration checked against the server, arguments
checked against the declaration.

Only methods listed under ``methods:`` are callable, by their config name. At each connect the
driver looks their nodes up and reads the server's InputArguments: a method the server does not
have, or whose inputs differ from the config's (count, names, types), is refused with that
reason instead of being called with arguments the machine would misread. A command's arguments
(a list in the server's order, or an object by input name) are checked against the declared
types before anything is sent.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from asyncua import Client, ua

from drivers.base import WriteError
from drivers.opcua.config import MethodArgument, OpcuaMethod
from drivers.opcua.convert import status_name
from drivers.opcua.events import resolve_node
from drivers.opcua.writes import Shape, json_type, to_variant


@dataclass(frozen=True, slots=True)
class Bound:
    """A configured method on this server: its object and method nodes, or why it cannot be
    called."""

    config: OpcuaMethod
    object: ua.NodeId | None = None
    method: ua.NodeId | None = None
    problem: str | None = None


def shape(arg: MethodArgument) -> Shape:
    return Shape(ua.VariantType[arg.type], arg.array, arg.max_items, arg.min, arg.max)


def _declared(arg: ua.Argument) -> str:
    dtype = arg.DataType
    name = (
        ua.VariantType(dtype.Identifier).name
        if dtype.NamespaceIndex == 0
        and isinstance(dtype.Identifier, int)
        and dtype.Identifier in {t.value for t in ua.VariantType}
        else str(dtype.to_string())
    )
    return f"{arg.Name}: {name}{'[]' if arg.ValueRank >= 1 else ''}"


def _configured(arg: MethodArgument) -> str:
    return f"{arg.name}: {arg.type}{'[]' if arg.array else ''}"


async def bind(
    client: Client, methods: Sequence[OpcuaMethod], namespaces: Sequence[str]
) -> dict[str, Bound]:
    """Every configured method on this server, by its config name."""
    out: dict[str, Bound] = {}
    for m in methods:
        try:
            obj = resolve_node(m.object, namespaces)
            node = resolve_node(m.method, namespaces)
        except ValueError as exc:
            out[m.name] = Bound(m, problem=str(exc))
            continue
        try:
            server_args = await _input_arguments(client, node)
        except ua.UaStatusCodeError as exc:
            problem = status_name(ua.StatusCode(exc.code))
            out[m.name] = Bound(m, problem=f"method node {m.method}: {problem}")
            continue
        theirs = [_declared(a) for a in server_args]
        ours = [_configured(a) for a in m.inputs]
        if theirs != ours:
            out[m.name] = Bound(
                m,
                problem=f"the server declares inputs ({', '.join(theirs) or 'none'}), the config "
                f"({', '.join(ours) or 'none'})",
            )
            continue
        out[m.name] = Bound(m, obj, node)
    return out


async def _input_arguments(client: Client, method: ua.NodeId) -> list[ua.Argument]:
    """The method's InputArguments ([] when it has none); raises the server's status when the
    node is not a method of this server."""
    node = client.get_node(method)
    node_class = await node.read_node_class()
    if node_class != ua.NodeClass.Method:
        raise ua.UaStatusCodeError(ua.StatusCodes.BadMethodInvalid)
    for ref in await node.get_children_descriptions(refs=ua.ObjectIds.HasProperty):
        if ref.BrowseName.Name == "InputArguments":
            value = await client.get_node(ref.NodeId).read_value()
            return list(value or [])
    return []


def arguments(method: OpcuaMethod, args: Any) -> list[ua.Variant]:
    """The command's arguments as variants in the server's order; ``WriteError`` when their
    number, names or types do not fit the declaration."""
    inputs = list(method.inputs)
    names = ", ".join(a.name for a in inputs) or "none"
    if isinstance(args, Mapping):
        unknown = sorted(str(k) for k in args if k not in {a.name for a in inputs})
        if unknown:
            raise WriteError(f"method '{method.name}' has no input {', '.join(unknown)}")
        missing = [a.name for a in inputs if a.name not in args]
        if missing:
            raise WriteError(f"method '{method.name}' needs {', '.join(missing)}")
        values = [args[a.name] for a in inputs]
    elif isinstance(args, list):
        values = list(args)
    elif args is None and not inputs:
        values = []
    else:
        raise WriteError(
            f"method '{method.name}' takes a list of arguments ({names}), not {json_type(args)}"
        )
    if len(values) != len(inputs):
        raise WriteError(
            f"method '{method.name}' takes {len(inputs)} argument"
            f"{'' if len(inputs) == 1 else 's'} ({names}), not {len(values)}"
        )
    return [
        to_variant(v, shape(a), f"argument '{a.name}' of '{method.name}'")
        for v, a in zip(values, inputs, strict=True)
    ]
