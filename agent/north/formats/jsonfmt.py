"""The contract's ``json`` format, with an optional topic template for a unified namespace.

The wire output of the default layout is part of the public contract: payloads are spliced from
the stored record without re-encoding, and topics stay ``<prefix>/<device>/data``.
"""

from __future__ import annotations

import json
import string
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, cast

from pydantic import Field, field_validator

from agent.core.buffer import StoredBatch
from agent.north.formats.base import (
    Command,
    Format,
    Issue,
    Message,
    Packed,
    Reaction,
    options_of,
    stream_of,
    topic_prefix,
)
from agent.north.formats.meta import Meta, TagMeta, config_meta, meta_document
from drivers.base import Name, StrictModel

if TYPE_CHECKING:  # the config is built in app; a format reads it, never imports app at run time
    from agent.app.config.models import Config

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode

#: Fields a json topic template may use.
TEMPLATE_FIELDS = ("agent", "site", "area", "line", "device", "kind")
PLACEMENT_FIELDS = ("site", "area", "line")


def template_fields(template: str) -> list[str]:
    """The placeholders of a template, in order; ValueError for anything but ``{name}``."""
    found = []
    for _literal, fname, spec, conv in string.Formatter().parse(template):
        if fname is None:
            continue
        if spec or conv:
            raise ValueError(f"placeholder {{{fname}}} must not have a format spec or conversion")
        if fname not in TEMPLATE_FIELDS:
            known = ", ".join("{" + f + "}" for f in TEMPLATE_FIELDS)
            raise ValueError(f"unknown placeholder {{{fname}}} (use {known})")
        found.append(fname)
    return found


def check_template(template: str) -> str:
    """A publish topic with names filled in: no wildcards, no ``$``, no empty level, one level
    naming the device, and a last level that says the stream (``{kind}`` or ``data``)."""
    try:
        fields = template_fields(template)
    except ValueError as exc:  # unbalanced braces
        raise ValueError(f"invalid topic_template: {exc}") from None
    if "device" not in fields:
        raise ValueError("topic_template must contain {device}: devices would share one topic")
    if template.startswith("$"):
        raise ValueError("topic_template must not start with '$' (reserved for broker topics)")
    if "\0" in template:
        raise ValueError("topic_template must not contain NUL")
    levels = template.split("/")
    for level in levels:
        if level == "":
            raise ValueError(
                "topic_template must not have empty levels (leading, trailing or '//')"
            )
        if "+" in level or "#" in level:
            raise ValueError("topic_template must not contain the wildcards '+' or '#'")
    if "kind" not in fields and levels[-1] != "data":
        raise ValueError(
            "topic_template must end with the level {kind} or data (events replace that level)"
        )
    return template


class Placement(StrictModel):
    """Where a device sits in the plant, for topic templates (overrides agent.site/area/line)."""

    site: Name | None = None
    area: Name | None = None
    line: Name | None = None


class JsonOptions(StrictModel):
    """Options of ``format: json``."""

    topic_template: str | None = Field(
        default=None,
        max_length=400,
        description="data topic, for example {site}/{area}/{line}/{device}/data; placeholders: "
        + ", ".join("{" + f + "}" for f in TEMPLATE_FIELDS)
        + "; default <topic_prefix>/{device}/{kind}",
    )
    placement: dict[Name, Placement] = Field(
        default_factory=dict, description="per device: site, area, line for the template"
    )
    user_properties: bool = Field(
        default=True,
        description="on MQTT v5, send agent, device and seq as user properties of data messages",
    )

    @field_validator("topic_template")
    @classmethod
    def _template(cls, value: str | None) -> str | None:
        return None if value is None else check_template(value)


def _names(entries: Any) -> list[str]:
    """The ``name`` of each mapping in a parsed list (devices), skipping anything else."""
    items = entries if isinstance(entries, list) else []
    return [e["name"] for e in items if isinstance(e, dict) and isinstance(e.get("name"), str)]


def placement_issues(data: Mapping[str, Any], section: Mapping[str, Any]) -> list[Issue]:
    """Placement entries for devices the file does not have, and template fields no config
    value fills, at their keys under the section's ``json``."""
    options = section.get("json")
    if not isinstance(options, dict):
        return []
    devices = _names(data.get("devices"))
    placement = options.get("placement")
    placement = placement if isinstance(placement, dict) else {}
    issues: list[Issue] = []
    for name in placement:
        if isinstance(name, str) and name not in devices:
            listed = ", ".join(devices) or "no devices are defined"
            issues.append((("json", "placement", name), f"unknown device {name!r} ({listed})"))
    template = options.get("topic_template")
    try:
        fields = template_fields(check_template(template)) if isinstance(template, str) else []
    except ValueError:
        return issues  # the model says what is wrong with the template
    agent = data.get("agent")
    agent = agent if isinstance(agent, dict) else {}
    for fname in dict.fromkeys(f for f in fields if f in PLACEMENT_FIELDS):
        if agent.get(fname) is not None:
            continue
        missing = [
            d
            for d in devices
            if not (isinstance(placement.get(d), dict) and placement[d].get(fname) is not None)
        ]
        if missing or not devices:
            issues.append(
                (
                    ("json", "topic_template"),
                    f"{{{fname}}} needs agent.{fname} or json.placement.<device>.{fname} "
                    f"(missing for: {', '.join(missing) or 'every device'})",
                )
            )
    return issues


class JsonFormat(Format):
    """``<prefix>/<device>/data`` (or the template's topic) with the batch as one JSON object."""

    name = "json"
    Options: ClassVar[type[StrictModel] | None] = JsonOptions

    def __new__(cls, *args: Any, **kwargs: Any) -> JsonFormat:
        self = cast(JsonFormat, super().__new__(cls, *args, **kwargs))
        # The metadata is no reason for a new session (a device added on plain json keeps its
        # session): a reload hands it over through ``refresh``.
        self.spec = (cls, args, {k: v for k, v in kwargs.items() if k != "meta"})
        return self

    @classmethod
    def check(cls, data: Mapping[str, Any], section: Mapping[str, Any]) -> list[Issue]:
        return placement_issues(data, section)

    @classmethod
    def from_config(cls, config: Config) -> JsonFormat:
        agent = config.agent
        prefix = topic_prefix(config)
        options = options_of(config.mqtt, cls.section_key(), JsonOptions)
        if options is None:
            return cls(agent.id, prefix, meta=config_meta(config))
        placement = {}
        for d in config.active_devices():
            own = options.placement.get(d.name)
            fields = {}
            for key in PLACEMENT_FIELDS:
                value = getattr(own, key, None) or getattr(agent, key, None)
                if value is not None:
                    fields[key] = value
            placement[d.name] = fields
        return cls(
            agent.id,
            prefix,
            topic_template=options.topic_template,
            placement=placement,
            user_properties=options.user_properties,
            default_placement={k: v for k in PLACEMENT_FIELDS if (v := getattr(agent, k, None))},
            meta=config_meta(config),
        )

    def __init__(
        self,
        agent_id: str,
        topic_prefix: str,
        topic_template: str | None = None,
        placement: Mapping[str, Mapping[str, str]] | None = None,
        user_properties: bool = True,
        default_placement: Mapping[str, str] | None = None,
        meta: Meta | None = None,
    ) -> None:
        """``meta`` (device: tag: type, unit, description) goes out as each device's retained
        ``meta`` message after every connect."""
        self.agent_id = agent_id
        self.prefix = topic_prefix
        self._head = b'{"agent":' + _dumps(agent_id).encode() + b',"device":'
        self._template = topic_template
        # Per device: the fields a template may use (agent, site, area, line, device).
        self._placement = {k: dict(v) for k, v in (placement or {}).items()}
        # A device outside ``placement`` (a reload removed it while its batches were still
        # buffered) takes the gateway's own fields, as it did unless it had its own.
        self._default_placement = dict(default_placement or {})
        self._user_properties = user_properties
        self._topics: dict[str, str] = {}
        self._meta = {d: dict(tags) for d, tags in (meta or {}).items()}
        # Devices a reload removed: their retained meta is deleted now and after each connect,
        # in case the reload came while disconnected (a delete of nothing costs nothing).
        self._meta_gone: set[str] = set()

    def data_topic(self, stream: str) -> str:
        """A buffered stream is a device (``press-1`` → ``.../press-1/data``) or a device's
        side stream (``press-1/event`` → ``.../press-1/event``). Names cannot hold ``/``, so the
        two never clash, and each stream has its own ``seq``."""
        topic = self._topics.get(stream)
        if topic is None:
            device, _, kind = stream.partition("/")
            topic = self._render(device, kind or "data")
            self._topics[stream] = topic
        return topic

    def _render(self, device: str, kind: str) -> str:
        if self._template is None:
            return f"{self.prefix}/{device}/{kind}"
        own = self._placement.get(device, self._default_placement)
        fields = {"agent": self.agent_id, **own, "device": device}
        if "{kind}" in self._template:
            return self._template.format(**fields, kind=kind)
        # A template ending in a literal ``data`` level: side streams replace that level.
        topic = self._template.format(**fields)
        return topic if kind == "data" else f"{topic.rsplit('/', 1)[0]}/{kind}"

    def encode(self, batch: StoredBatch) -> bytes:
        """Splice agent, device and seq in front of the stored record (which starts with ``{``)."""
        return b"".join(
            (
                self._head,
                _dumps(batch.device.partition("/")[0]).encode(),
                b',"seq":',
                str(batch.seq).encode(),
                b",",
                batch.body[1:],
            )
        )

    def pack(self, rows: Sequence[StoredBatch]) -> list[Packed]:
        """One message per batch: the contract's shape. On MQTT v5 the dedupe key rides along
        as user properties so a shared-subscription consumer can drop duplicates unparsed."""
        out = []
        for row in rows:
            device, kind = stream_of(row)
            props: tuple[tuple[str, str], ...] = ()
            if self._user_properties:
                props = (("agent", self.agent_id), ("device", device), ("seq", str(row.seq)))
            msg = Message(
                self.data_topic(device if kind == "data" else f"{device}/{kind}"),
                self.encode(row),
                properties=props,
                content_type="application/json",
            )
            out.append(Packed(msg, (row,)))
        return out

    # Session rules ------------------------------------------------------------------------------

    def will(self) -> Message:
        return Message(self.gateway_status_topic, self.gateway_status(False), 1, True)

    def subscriptions(self) -> Sequence[str]:
        return (self.command_filter,)

    def online(self) -> list[Message]:
        return [
            Message(self.gateway_status_topic, self.gateway_status(True), 1, True),
            *self.meta_messages(),
        ]

    def refresh(self, new: Format) -> list[Message]:
        """Take ``new``'s metadata; the meta message of each device whose metadata changed, and
        an empty retained message (which deletes the broker's copy) for each device gone."""
        if not isinstance(new, JsonFormat):
            return []
        old, self._meta = self._meta, dict(new._meta)
        gone = [d for d in old if d not in self._meta]
        self._meta_gone = (self._meta_gone | set(gone)) - set(self._meta)
        out = [self._meta_delete(d) for d in gone]
        out += [self._meta_message(d, tags) for d, tags in self._meta.items() if old.get(d) != tags]
        return out

    def meta_messages(self) -> list[Message]:
        """Each device's retained ``<prefix>/<device>/meta``: what its tags are (type, unit,
        description). Sent after every connect, so a reload that changed them (a new format,
        a new session) replaces what the broker keeps; a removed device's is deleted."""
        deletes = [self._meta_delete(d) for d in sorted(self._meta_gone)]
        return [*deletes, *(self._meta_message(d, tags) for d, tags in self._meta.items())]

    def _meta_delete(self, device: str) -> Message:
        return Message(self._meta_topic(device), b"", 1, True)

    def _meta_topic(self, device: str) -> str:
        return self.device_topic(device, "meta")

    def _meta_message(self, device: str, tags: Mapping[str, TagMeta]) -> Message:
        payload = meta_document(self.agent_id, device, tags)
        return Message(self._meta_topic(device), payload, 1, True)

    def offline(self) -> list[Message]:
        return [self.will()]

    def retained_status(
        self, device: str, state: str, reason: str | None, ts_ms: int
    ) -> Message | None:
        return Message(
            self.device_status_topic(device), self.device_status(state, ts_ms, reason), 1, True
        )

    def incoming(self, topic: str, payload: bytes) -> Reaction | None:
        levels = topic.split("/")
        device = levels[-2] if len(levels) >= 2 else ""
        return Reaction(command=Command(device, payload, self.command_reply_topic(device)))

    def reply(self, command: Command, reply: dict[str, object]) -> Message | None:
        if command.reply_topic is None:
            return None
        return Message(command.reply_topic, _dumps(reply).encode(), 1, False)

    # Retained status messages -------------------------------------------------------------------

    @property
    def gateway_status_topic(self) -> str:
        return f"{self.prefix}/status"

    def gateway_status(self, online: bool) -> bytes:
        doc: dict[str, object] = {"online": online}
        if online:
            doc["ts"] = int(time.time() * 1000)
        return _dumps(doc).encode()

    def device_status_topic(self, device: str) -> str:
        return f"{self.prefix}/{device}/status"

    def device_topic(self, device: str, kind: str) -> str:
        """A retained per-device topic beside ``status`` (for example ``state``)."""
        return f"{self.prefix}/{device}/{kind}"

    def device_status(self, state: str, ts_ms: int, reason: str | None) -> bytes:
        """Always carries ``reason`` so consumers need no special case: ``ok`` while up."""
        doc = {"state": state, "ts": ts_ms, "reason": reason or "ok"}
        return _dumps(doc).encode()

    # Commands -----------------------------------------------------------------------------------

    @property
    def command_filter(self) -> str:
        return f"{self.prefix}/+/cmd"

    def command_reply_topic(self, device: str) -> str:
        return f"{self.prefix}/{device}/cmd/reply"
