"""The OPC UA section of the configuration: endpoint, security, user, mode, tags, methods and
events (Alarms & Conditions).

Node ids are parsed here with asyncua's own parser, so a typo in ``node`` is a ``validate`` error
with a file position rather than a tag that is bad forever. The password is never a key of the
file: ``password_env`` or ``password_file`` name where it is, like the broker's.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from asyncua import ua
from pydantic import AfterValidator, Field, ValidationInfo, field_validator, model_validator

from drivers.base import (
    DeviceBase,
    Duration,
    Name,
    PositiveDuration,
    ProfileBase,
    StrictModel,
    WritableTag,
    check_env_name,
    key_error,
    password_source,
    refuse_inline_password,
)

Policy = Literal[
    "None",
    "Basic256Sha256",
    "Aes128_Sha256_RsaOaep",
    "Aes256_Sha256_RsaPss",
    "Basic128Rsa15",
    "Basic256",
]
#: SHA-1 and RSA PKCS#1 v1.5: deprecated by the OPC UA specification, refused unless allowed.
DEPRECATED_POLICIES = ("Basic128Rsa15", "Basic256")
SecurityMode = Literal["Sign", "SignAndEncrypt"]

_ENDPOINT = re.compile(r"^opc\.tcp://(\[[0-9A-Fa-f:.]+\]|[^/:\s\[\]]+)(:\d{1,5})?(/\S*)?$")
_SEGMENT = re.compile(r"^(?:(\d+):)?(.+)$")


def _relative_to_config(value: Path, info: ValidationInfo) -> Path:
    """Relative paths are relative to the config file, as everywhere in the file (the loader
    passes its directory as ``base_dir`` in the validation context)."""
    context = info.context if isinstance(info.context, Mapping) else {}
    base = context.get("base_dir")
    if value.is_absolute() or base is None:
        return value
    return Path(base) / value


FilePath = Annotated[Path, AfterValidator(_relative_to_config)]


def parse_node(text: str) -> tuple[str | None, ua.NodeId]:
    """``nsu=<uri>;s=X`` → (uri, NodeId in namespace 0 for now), ``ns=2;i=5`` → (None, NodeId).

    The namespace URI form is what survives a server that renumbers its namespaces; its index is
    looked up on the server at connect."""
    uri: str | None = None
    rest = text
    if text.startswith("nsu="):
        uri, sep, rest = text[4:].partition(";")
        if not sep or not uri:
            raise ValueError(f"invalid node id {text!r}: nsu=<namespace uri>;<i|s|g|b>=<id>")
    try:
        node = ua.NodeId.from_string(rest)
    except Exception as exc:  # asyncua raises several kinds for malformed strings
        raise ValueError(
            f"invalid node id {text!r}: use ns=<index>;i=<number>, ns=<index>;s=<name> or "
            f"nsu=<namespace uri>;s=<name> ({exc})"
        ) from None
    if uri is not None and "ns=" in rest:
        raise ValueError(f"invalid node id {text!r}: give nsu= or ns=, not both")
    return uri, ua.NodeId(node.Identifier, 0, node.NodeIdType) if uri else node


def browse_segments(path: str) -> list[tuple[int | None, str]]:
    """``Machine/Spindle/2:Speed`` → [(None, "Machine"), (None, "Spindle"), (2, "Speed")]."""
    segments = []
    for part in path.strip("/").split("/"):
        m = _SEGMENT.match(part)
        if not part or m is None:
            raise ValueError(f"invalid browse_path {path!r}: empty segment")
        segments.append((int(m.group(1)) if m.group(1) else None, m.group(2)))
    return segments


class Security(StrictModel):
    """Message security of the secure channel. With a policy other than None the client proves
    itself with ``cert_file``/``key_file`` and trusts exactly ``server_cert_file``, which must be
    the certificate of the server's endpoint with this policy and mode (a server may hold one
    per policy)."""

    policy: Policy = Field(
        default="None",
        description="None, Basic256Sha256, Aes128_Sha256_RsaOaep or Aes256_Sha256_RsaPss; "
        "Basic128Rsa15 and Basic256 (deprecated) only with allow_deprecated: true",
    )
    mode: SecurityMode = Field(
        default="SignAndEncrypt", description="Sign, or SignAndEncrypt (the default)"
    )
    cert_file: FilePath | None = Field(
        default=None,
        description="this client's certificate (DER or PEM) with its application URI in the SAN",
    )
    key_file: FilePath | None = Field(default=None, description="private key of cert_file (PEM)")
    server_cert_file: FilePath | None = Field(
        default=None,
        description="the certificate of the server's endpoint with this policy and mode, trusted "
        "(pinned); connections to any other fail",
    )
    allow_deprecated: bool = Field(
        default=False,
        description="accept the deprecated policies Basic128Rsa15 and Basic256 (SHA-1), for "
        "machines that offer nothing better",
    )

    @model_validator(mode="after")
    def _files_with_policy(self) -> Security:
        files = ("cert_file", "key_file", "server_cert_file")
        if self.policy in DEPRECATED_POLICIES and not self.allow_deprecated:
            raise key_error(
                "policy",
                f"policy {self.policy} is deprecated (SHA-1); use Basic256Sha256 "
                "or an Aes policy, or set allow_deprecated: true if the machine offers nothing "
                "better",
            )
        if self.policy == "None":
            given = [k for k in (*files, "mode") if k in self.model_fields_set]
            if given:
                raise key_error(given[0], f"{given[0]} is for a security policy other than None")
            return self
        for key in files:
            if getattr(self, key) is None:
                raise key_error(
                    "policy", f"policy {self.policy} needs cert_file, key_file and server_cert_file"
                )
        return self


class OpcuaConnection(StrictModel):
    """Where the server listens and how the client proves who it is."""

    endpoint: str = Field(description="opc.tcp://host:port/path, as the server announces it")
    security: Security = Field(default_factory=Security, description="message security")
    username: str | None = Field(default=None, min_length=1, description="user name, if any")
    password_env: str | None = Field(
        default=None, description="name of the environment variable holding the password"
    )
    password_file: FilePath | None = Field(
        default=None, description="file holding the password (one trailing newline is ignored)"
    )
    timeout: PositiveDuration = Field(
        default=4.0, description="how long to wait for each answer (connect, read, browse)"
    )
    keepalive: PositiveDuration = Field(
        default=1.0,
        description="how often a silent session is probed; a dead server is noticed within it",
    )

    @model_validator(mode="before")
    @classmethod
    def _no_inline_password(cls, data: Any) -> Any:
        return refuse_inline_password(data)

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, value: str) -> str:
        m = _ENDPOINT.match(value)
        if m is None:
            raise ValueError(f"invalid endpoint {value!r}: use opc.tcp://host:port/path")
        if m.group(2) and not 0 < int(m.group(2)[1:]) <= 65535:
            raise ValueError(f"port {m.group(2)[1:]} is out of range (1..65535)")
        return value

    @field_validator("password_env")
    @classmethod
    def _env_name(cls, value: str | None) -> str | None:
        return check_env_name(value)

    @model_validator(mode="after")
    def _password_needs_user(self) -> OpcuaConnection:
        source = password_source(self.password_env, self.password_file)
        if self.username is None and getattr(self, source) is not None:
            raise key_error(source, "a password needs a username")
        if self.username is not None and self.password_env is None and self.password_file is None:
            raise key_error("username", "a username needs password_env or password_file")
        return self


class OpcuaTag(WritableTag):
    """One variable of the server, by node id or by browse path from Objects. With ``writable:
    true`` commands may set it: the value is checked against the node's DataType (read at each
    connect) and ``min``/``max``, written, and read back."""

    node: str | None = Field(
        default=None,
        description="node id: ns=2;i=1042, ns=2;s=Spindle.Speed or nsu=<namespace uri>;s=...",
    )
    browse_path: str | None = Field(
        default=None,
        description="browse names from the Objects folder, e.g. Machine/Spindle/Vibration",
    )
    sampling_interval: Duration | None = Field(
        default=None,
        description="subscribe mode: how often the server samples (default: publishing_interval)",
    )
    queue_size: int = Field(
        default=1,
        ge=1,
        le=10000,
        description="subscribe mode: changes the server keeps per publishing interval (1: latest)",
    )
    # The edge's report-by-exception key, which this driver also hands the server (an absolute
    # deadband means the same there): declared here because the driver reads it; the agent's
    # processing stage applies it too, as for every driver.
    deadband: float | None = Field(
        default=None,
        ge=0,
        description="report by exception: publish only changes beyond this (subscribe mode: "
        "the server filters them too)",
    )

    @model_validator(mode="after")
    def _one_address(self) -> OpcuaTag:
        if (self.node is None) == (self.browse_path is None):
            raise ValueError("a tag needs node or browse_path (exactly one)")
        if self.node is not None:
            try:
                parse_node(self.node)
            except ValueError as exc:
                raise key_error("node", str(exc)) from None
        if self.browse_path is not None:
            try:
                browse_segments(self.browse_path)
            except ValueError as exc:
                raise key_error("browse_path", str(exc)) from None
        return self

    @property
    def address(self) -> str:
        return self.node if self.node is not None else f"browse_path {self.browse_path}"


#: Built-in types a method argument may declare (OPC UA Part 6 names).
ArgumentType = Literal[
    "Boolean",
    "SByte",
    "Byte",
    "Int16",
    "UInt16",
    "Int32",
    "UInt32",
    "Int64",
    "UInt64",
    "Float",
    "Double",
    "String",
    "DateTime",
    "ByteString",
]
#: Method names the agent answers itself on a device with ``events``: a condition's
#: Acknowledge and Confirm (AcknowledgeableConditionType), by condition id or alarm name.
CONDITION_METHODS = ("acknowledge", "confirm")
#: Elements an array argument takes unless its ``max_items`` says: a set-point table, not a file.
MAX_ITEMS = 1000


def _node_id(value: str) -> str:
    parse_node(value)
    return value


NodeText = Annotated[str, AfterValidator(_node_id)]


class MethodArgument(StrictModel):
    """One input argument of a method: its name (as the server declares it) and type."""

    name: str = Field(min_length=1, max_length=128, description="the argument's name")
    type: ArgumentType = Field(description="its built-in type: Boolean, Int32, Double, String...")
    array: bool = Field(default=False, description="a one-dimensional array of type")
    max_items: int = Field(
        default=MAX_ITEMS,
        ge=1,
        le=100_000,
        description="array: the most elements a command may pass (longer is refused)",
    )
    min: float | None = Field(default=None, description="numbers below this are refused")
    max: float | None = Field(default=None, description="numbers above this are refused")


class OpcuaMethod(StrictModel):
    """A method commands may call (``{"call": {"<name>": [args]}}``); nothing else is callable.

    Inputs are checked at the agent (count, types, ranges, array sizes) before the call is sent,
    and against the method's InputArguments on the server at each connect."""

    name: Name = Field(description="the name commands call it by")
    object: NodeText = Field(description="node id of the object the method is called on")
    method: NodeText = Field(description="node id of the method")
    inputs: Sequence[MethodArgument] = Field(
        default_factory=list, description="input arguments, in the server's order"
    )
    description: str | None = Field(default=None, description="free text, for people")

    @model_validator(mode="after")
    def _names(self) -> OpcuaMethod:
        if self.name in CONDITION_METHODS:
            raise key_error(
                "name", f"{self.name} is the agent's own (acknowledging alarms): pick another name"
            )
        seen: set[str] = set()
        for i, arg in enumerate(self.inputs):
            if arg.name in seen:
                raise key_error("inputs", f"input {arg.name!r} (inputs.{i}) is given twice")
            seen.add(arg.name)
        return self


def _event_type(value: str) -> str:
    """A standard event type by name (AlarmConditionType...) or a node id (a vendor's type)."""
    if "=" in value:
        parse_node(value)
        return value
    number = getattr(ua.ObjectIds, value, None)
    if not isinstance(number, int) or not value.endswith("Type"):
        raise ValueError(
            f"unknown event type {value!r}: a standard type (BaseEventType, AlarmConditionType, "
            "OffNormalAlarmType...) or a node id"
        )
    return value


EventType = Annotated[str, AfterValidator(_event_type)]


def _field_path(value: str) -> str:
    if not value or any(not part for part in value.split("/")):
        raise ValueError(f"invalid field {value!r}: browse names separated by /, e.g. Comment")
    return value


class OpcuaEvents(StrictModel):
    """Events of the server (Alarms & Conditions) published on the device's event stream."""

    name: Name = Field(description="the subscription's name, for logs")
    source: NodeText = Field(
        default="i=2253",
        description="the node whose events are subscribed (the Server object, i=2253, by default)",
    )
    types: Sequence[EventType] = Field(
        default_factory=lambda: ["AlarmConditionType"],
        min_length=1,
        description="event types (and their subtypes) to receive: AlarmConditionType...",
    )
    fields: Sequence[Annotated[str, AfterValidator(_field_path)]] = Field(
        default_factory=list,
        description="more event fields to publish (browse paths such as Comment or Quality), "
        "under fields in the event",
    )


class OpcuaDevice(DeviceBase):
    """An OPC UA server: one session, one subscription (or one Read per poll)."""

    driver: Literal["opcua"]
    connection: OpcuaConnection
    mode: Literal["subscribe", "poll"] = Field(
        default="subscribe",
        description="subscribe: the server reports changes; poll: one Read of every tag per cycle",
    )
    publishing_interval: PositiveDuration = Field(
        default=1.0,
        description="subscribe mode: how often the server sends changes (and batches are made)",
    )
    tags: Sequence[OpcuaTag] = Field(default_factory=list)
    methods: Sequence[OpcuaMethod] = Field(
        default_factory=list, description="methods commands may call (none unless listed)"
    )
    events: Sequence[OpcuaEvents] = Field(
        default_factory=list,
        description="Alarms & Conditions subscriptions, published on the device's event stream",
    )

    @model_validator(mode="before")
    @classmethod
    def _cadence(cls, data: Any) -> Any:
        """In subscribe mode the batches come at the publishing interval, so that is the poll
        interval too (the agent collects what arrived once per interval)."""
        if not isinstance(data, Mapping):
            return data
        if data.get("mode", "subscribe") == "subscribe":
            if "poll_interval" in data:
                raise key_error(
                    "poll_interval",
                    "subscribe mode uses publishing_interval; poll_interval is for mode: poll",
                )
            return {**data, "poll_interval": data.get("publishing_interval", 1.0)}
        if "publishing_interval" in data:
            raise key_error("publishing_interval", "publishing_interval is for mode: subscribe")
        return data

    def scan_rates_refused(self) -> str | None:
        """Subscribe mode: the server samples each tag (``sampling_interval``) and reports
        changes at the publishing interval; the agent asks it nothing per tag to give a rate."""
        if self.mode == "subscribe":
            return (
                "subscribe mode: the server reports changes, so tags have no read rate of their "
                "own: give a tag sampling_interval (how often the server samples it), or use "
                "mode: poll for every and scan_group"
            )
        return None

    def method_names(self) -> list[str]:
        names = [m.name for m in self.methods]
        return [*names, *CONDITION_METHODS] if self.events else names

    @model_validator(mode="after")
    def _unique_names(self) -> OpcuaDevice:
        for key in ("methods", "events"):
            seen: set[str] = set()
            for i, item in enumerate(getattr(self, key)):
                if item.name in seen:
                    raise key_error(key, f"{item.name!r} ({key}.{i}) is given twice")
                seen.add(item.name)
        return self

    @model_validator(mode="after")
    def _poll_mode_keys(self) -> OpcuaDevice:
        if self.mode == "poll":
            for i, tag in enumerate(self.tags):
                for key in ("sampling_interval", "queue_size"):
                    if key in tag.model_fields_set:
                        raise ValueError(
                            f"tags.{i} ({tag.name}): {key} is for mode: subscribe (the server "
                            "applies it)"
                        )
        return self


class OpcuaProfile(ProfileBase):
    """An OPC UA machine type: its tag list, shared by every device that names it."""

    driver: Literal["opcua"]
    tags: Sequence[OpcuaTag] = Field(default_factory=list)
