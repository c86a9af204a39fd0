"""Alarms & Conditions: the event filter the driver subscribes with, and each event's document.

The filter selects a fixed set of fields (what an alarm needs: condition name, state, severity,
message, source, the condition id for acknowledging it) plus the config's ``fields``, and keeps
events of the configured types and their subtypes (asyncua's ``where_clause_from_evtype``). An
event becomes a document shaped like the agent's own alarm events, so every format publishes it
on the device's event stream without knowing where it came from::

    {"ts", "event": "raise" | "clear", "alarm", "source", "tag", "severity", "message",
     "condition_id", "type", "acked", "confirmed", "retain", "events", "values": [], ["fields"]}

``tag`` (what the agent's alarms watch) is the source here too; ``values``, the agent's alarms'
evidence, is empty (the server judged the condition): a consumer reads both kinds alike.
``event`` is ``raise`` while the condition's ActiveState is true and ``clear`` when it is false;
an event without an ActiveState (a plain event, not an alarm) says ``event``. A hostile server
cannot make a document unbounded: text is cut at ``MAX_TEXT`` characters and the severity is
clamped to 1..1000, the range OPC UA gives it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from asyncua import Client, ua
from asyncua.common.events import where_clause_from_evtype

from drivers.opcua.config import OpcuaEvents, parse_node
from drivers.opcua.convert import Unsupported, epoch, to_value

#: Text fields (message, names) longer than this are cut: an event is a line on a dashboard.
MAX_TEXT = 1000

#: Fields every event subscription selects, by browse path from the event type.
FIELDS: tuple[str, ...] = (
    "EventId",
    "EventType",
    "SourceNode",
    "SourceName",
    "Time",
    "Message",
    "Severity",
    "ConditionName",
    "Retain",
    "ActiveState/Id",
    "AckedState/Id",
    "ConfirmedState/Id",
)
#: The pseudo-field of the condition id (the NodeId attribute of the ConditionType).
CONDITION_ID = "ConditionId"


@dataclass(frozen=True, slots=True)
class Selection:
    """One event subscription: its config entry and the field names, in select-clause order."""

    entry: OpcuaEvents
    names: tuple[str, ...]


def resolve_node(text: str, namespaces: Sequence[str]) -> ua.NodeId:
    """A config node id (``nsu=`` resolved against the server's namespaces); ``ValueError``
    when its namespace is not on the server."""
    uri, node = parse_node(text)
    if uri is None:
        return node
    if uri not in namespaces:
        raise ValueError(f"namespace {uri} not on the server")
    return ua.NodeId(node.Identifier, list(namespaces).index(uri), node.NodeIdType)


def type_node(name: str, namespaces: Sequence[str]) -> ua.NodeId:
    """A standard event type by name, or a vendor's by node id."""
    if "=" in name:
        return resolve_node(name, namespaces)
    return ua.NodeId(getattr(ua.ObjectIds, name), 0)


def _operand(path: str) -> ua.SimpleAttributeOperand:
    op = ua.SimpleAttributeOperand()
    op.TypeDefinitionId = ua.NodeId(ua.ObjectIds.BaseEventType)
    op.BrowsePath = [ua.QualifiedName(part, 0) for part in path.split("/")]
    op.AttributeId = ua.AttributeIds.Value
    return op


async def event_filter(
    client: Client, entry: OpcuaEvents, namespaces: Sequence[str]
) -> tuple[ua.EventFilter, Selection]:
    """The filter of one ``events`` entry; ``ValueError`` when a type is not on the server (an
    event type nobody has would filter every event out, silently)."""
    types = [client.get_node(type_node(t, namespaces)) for t in entry.types]
    for name, node in zip(entry.types, types, strict=True):
        try:
            node_class = await node.read_node_class()
        except ua.UaStatusCodeError:
            node_class = None
        if node_class != ua.NodeClass.ObjectType:
            raise ValueError(f"event type {name} is not on the server")
    names = (*FIELDS, *(f for f in entry.fields if f not in FIELDS))
    evfilter = ua.EventFilter()
    evfilter.SelectClauses = [_operand(name) for name in names]
    condition = ua.SimpleAttributeOperand()
    condition.TypeDefinitionId = ua.NodeId(ua.ObjectIds.ConditionType)
    condition.AttributeId = ua.AttributeIds.NodeId
    evfilter.SelectClauses.append(condition)
    evfilter.WhereClause = await where_clause_from_evtype(types)
    return evfilter, Selection(entry, (*names, CONDITION_ID))


def node_text(node: ua.NodeId, namespaces: Sequence[str]) -> str:
    """A node id as configs write it: by namespace URI, which survives a renumbering."""
    text = str(node.to_string())
    if node.NamespaceIndex and node.NamespaceIndex < len(namespaces):
        rest = text.split(";", 1)[1]
        return f"nsu={namespaces[node.NamespaceIndex]};{rest}"
    return text


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, ua.LocalizedText):
        value = value.Text
    if isinstance(value, ua.QualifiedName):
        value = value.Name
    if value is None:
        return None
    return str(value)[:MAX_TEXT]


@dataclass(frozen=True, slots=True)
class Received:
    """One event as the driver keeps it until the next poll: the document, and what
    acknowledging its condition needs (the condition's node and this event's id)."""

    doc: dict[str, Any]
    condition: ua.NodeId | None
    event_id: bytes | None


def event_doc(
    selection: Selection,
    fields: Sequence[ua.Variant],
    namespaces: Sequence[str],
    received: float | None = None,
) -> Received:
    """The document of one event (see the module docstring)."""
    values: dict[str, Any] = {}
    for name, variant in zip(selection.names, fields, strict=False):
        values[name] = variant.Value if isinstance(variant, ua.Variant) else None
    now = received if received is not None else time.time()
    when = values.get("Time")
    ts = epoch(when) if when is not None and hasattr(when, "timestamp") else None
    active = values.get("ActiveState/Id")
    condition = values.get(CONDITION_ID)
    if not isinstance(condition, ua.NodeId) or condition.is_null():
        condition = None
    source = values.get("SourceName")
    source_node = values.get("SourceNode")
    if not source and isinstance(source_node, ua.NodeId):
        source = node_text(source_node, namespaces)
    severity = values.get("Severity")
    event_type = values.get("EventType")
    doc: dict[str, Any] = {
        "ts": round((ts if ts is not None else now) * 1000),
        "event": "raise" if active is True else "clear" if active is False else "event",
        "alarm": _text(values.get("ConditionName")) or _text(source) or selection.entry.name,
        "source": _text(source),
        "tag": _text(source) or selection.entry.name,
        "severity": min(1000, max(1, int(severity)))
        if isinstance(severity, int) and not isinstance(severity, bool)
        else None,
        "message": _text(values.get("Message")),
        "condition_id": node_text(condition, namespaces) if condition is not None else None,
        "type": _type_name(event_type, namespaces),
        "acked": _bool(values.get("AckedState/Id")),
        "confirmed": _bool(values.get("ConfirmedState/Id")),
        "retain": _bool(values.get("Retain")),
        "events": selection.entry.name,
        "values": [],
    }
    extra = {
        name: _field(values.get(name), fields, selection, name) for name in selection.entry.fields
    }
    if extra:
        doc["fields"] = extra
    doc = {k: v for k, v in doc.items() if v is not None}
    event_id = values.get("EventId")
    return Received(doc, condition, event_id if isinstance(event_id, bytes) else None)


def _bool(value: Any) -> bool | None:
    return value if isinstance(value, bool) else None


def _type_name(value: Any, namespaces: Sequence[str]) -> str | None:
    if not isinstance(value, ua.NodeId):
        return None
    if value.NamespaceIndex == 0 and isinstance(value.Identifier, int):
        name = ua.ObjectIdNames.get(value.Identifier)
        if name is not None:
            return str(name)
    return node_text(value, namespaces)


def _field(value: Any, fields: Sequence[ua.Variant], selection: Selection, name: str) -> Any:
    """An extra field's value as the payload carries it (null when it cannot be carried)."""
    index = selection.names.index(name)
    if index >= len(fields) or not isinstance(fields[index], ua.Variant):
        return None
    variant = fields[index]
    try:
        out = to_value(variant)
    except Unsupported:
        return None
    return out[:MAX_TEXT] if isinstance(out, str) else out
