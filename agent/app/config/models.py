"""The agent's own config sections, and the top-level model assembled from the installed drivers.

The models are the single description of the file: validation, defaults and the JSON Schema that
integrators' editors show all come from them, so every field carries a description. Checks that
involve two keys raise ``key_error`` so the message lands on the key at fault rather than on the
mapping that holds it.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import (
    AfterValidator,
    ConfigDict,
    Discriminator,
    Field,
    SecretStr,
    Tag,
    ValidationInfo,
    create_model,
    field_validator,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema

from agent.app.config.defaults import with_defaults
from agent.app.config.formats import format_section_model
from agent.core.processing.config import processed_models
from agent.north.formats.base import Format, options_field
from agent.north.formats.registry import installed_formats
from drivers.base import (
    NAME_PATTERN,
    DeviceBase,
    Driver,
    Duration,
    Name,
    PositiveDuration,
    ProfileBase,
    Size,
    StrictModel,
    check_env_name,
    key_error,
    password_source,
    refuse_inline_password,
)

#: pydantic error type of ``key_error``; the locator reads ``ctx["key"]`` to point at that key.
KEY_ERROR = "config_key"
#: Validation context key: the directory relative paths in the file are relative to.
BASE_DIR = "base_dir"

#: Longest topic_prefix: with a device name (at most 128) and ``/cmd/reply`` every topic stays far
#: below any broker's limit and readable in broker logs.
TOPIC_PREFIX_MAX = 200
#: MQTT carries the keepalive as a 16-bit number of seconds.
KEEPALIVE_MAX = 65535

_LISTEN = re.compile(r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[^:\[\]\s]+)):(?P<port>\d{1,5})$")


def _relative_to_config(value: Path, info: ValidationInfo) -> Path:
    """A relative path means relative to the config file, not to wherever the agent was started:
    systemd, a shell and a test runner all start it from different directories."""
    context = info.context if isinstance(info.context, Mapping) else {}
    base = context.get(BASE_DIR)
    if value.is_absolute() or base is None:
        return value
    return Path(os.path.normpath(Path(base) / value))


#: A filesystem path; relative ones are resolved against the config file's directory.
ConfigPath = Annotated[Path, AfterValidator(_relative_to_config)]


def parse_listen(listen: str) -> tuple[str, int]:
    """Split ``host:port`` or ``[v6addr]:port``; raise ``ValueError`` when it is neither."""
    m = _LISTEN.match(listen)
    if m is None:
        raise ValueError(f"invalid listen address {listen!r}: use host:port or [ipv6]:port")
    port = int(m.group("port"))
    if port > 65535:
        raise ValueError(f"port {port} is out of range (0..65535)")
    host = m.group("v6") or m.group("host")
    if m.group("v6") is not None:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"invalid IPv6 address {host!r}") from None
    return host, port


def check_topic_prefix(prefix: str) -> str:
    """Refuse prefixes that would subscribe by accident or collide with broker topics: wildcards
    in a publish topic are a protocol error, ``$`` topics belong to the broker, and an empty level
    silently creates a different topic tree."""
    if "\0" in prefix:
        raise ValueError("topic_prefix must not contain NUL")
    if prefix.startswith("$"):
        raise ValueError("topic_prefix must not start with '$' (reserved for broker topics)")
    for level in prefix.split("/"):
        if level == "":
            raise ValueError("topic_prefix must not have empty levels (leading, trailing or '//')")
        if "+" in level or "#" in level:
            raise ValueError("topic_prefix must not contain the wildcards '+' or '#'")
    return prefix


class AgentSection(StrictModel):
    """Identity of this gateway and where it keeps state."""

    id: Name = Field(
        description="identifies the gateway in MQTT topics and in the payload dedupe key"
    )
    data_dir: ConfigPath = Field(
        default=Path("/var/lib/edge-agent"),
        description="buffer and sequence state; a relative path is relative to the config file's "
        "directory",
    )
    site: Name | None = Field(default=None, description="plant site, for mqtt.json.topic_template")
    area: Name | None = Field(default=None, description="plant area, for mqtt.json.topic_template")
    line: Name | None = Field(default=None, description="production line, for topic templates")


class TlsSection(StrictModel):
    """TLS to the broker. Verification stays on unless switched off explicitly."""

    ca_file: ConfigPath | None = Field(
        default=None, description="CA bundle to verify the broker; system CAs when omitted"
    )
    cert_file: ConfigPath | None = Field(
        default=None, description="client certificate for mutual TLS (needs key_file)"
    )
    key_file: ConfigPath | None = Field(
        default=None, description="private key of cert_file (needs cert_file)"
    )
    verify: bool = Field(default=True, description="verify the broker's certificate and name")

    @model_validator(mode="after")
    def _cert_and_key_together(self) -> TlsSection:
        if self.cert_file is not None and self.key_file is None:
            raise key_error("cert_file", "cert_file needs key_file")
        if self.key_file is not None and self.cert_file is None:
            raise key_error("key_file", "key_file needs cert_file")
        return self


def _options_after_format(schema: dict[str, Any], model: type[Any]) -> None:
    """In the schema, the formats' option sections follow ``format`` (where a reader looks for
    them), though the composed model adds them after every connection key."""
    properties = schema.get("properties")
    classes = getattr(model, "format_classes", {})
    keys = [cls.section_key() if cls else name for name, cls in classes.items()]
    if not isinstance(properties, dict) or "format" not in properties:
        return
    options = {k: properties[k] for k in keys if k in properties}
    ordered: dict[str, Any] = {}
    for key, value in properties.items():
        if key in options:
            continue
        ordered[key] = value
        if key == "format":
            ordered.update(options)
    schema["properties"] = ordered


class MqttSection(StrictModel):
    """The broker connection. The password is never written in the file: it comes from an
    environment variable or a file readable only by the agent, so configs can be shared and
    committed."""

    # The formats' option sections (``json``, ``sparkplug``...) are not declared here: each
    # format declares its own, and ``agent.app.config.formats.format_section_model`` composes
    # this model with the installed ones (``format_classes``).
    model_config = ConfigDict(json_schema_extra=_options_after_format)

    #: The formats this model was composed with (name: class, or None when not imported).
    format_classes: ClassVar[dict[str, type[Format] | None]] = {}

    host: str = Field(default="127.0.0.1", min_length=1, description="broker host name or address")
    port: int = Field(
        default=1883, ge=1, le=65535, description="broker port; default 1883, or 8883 with tls"
    )
    client_id: str | None = Field(
        default=None, min_length=1, max_length=128, description="MQTT client id; default agent.id"
    )
    username: str | None = Field(default=None, description="user name, when the broker wants one")
    password_env: str | None = Field(
        default=None, description="name of the environment variable holding the password"
    )
    password_file: ConfigPath | None = Field(
        default=None,
        description="file holding the password (one trailing newline is ignored)",
    )
    tls: TlsSection | None = Field(default=None, description="omit for plain TCP")
    qos: Literal[0, 1] = Field(
        default=1, description="QoS of data messages; the buffer's delivery guarantee needs 1"
    )
    topic_prefix: str | None = Field(
        default=None,
        min_length=1,
        max_length=TOPIC_PREFIX_MAX,
        description="first topic levels; default edge/<agent.id>",
    )
    format: str = Field(
        default="json", description="payload format; its options go in the section of that name"
    )
    max_rate: float | None = Field(
        default=None,
        gt=0,
        description="data messages per second at most; default: the platform's limit (aws 100)",
    )
    servers: list[str] | None = Field(
        default=None,
        min_length=1,
        description="broker cluster nodes as host:port, tried in turn; instead of host and port",
    )
    protocol: Literal["auto", "3.1.1", "5"] = Field(
        default="auto", description="MQTT version; auto: v5 where the broker supports it"
    )
    message_expiry: PositiveDuration | None = Field(
        default=None, description="MQTT v5 message expiry of data messages; none by default"
    )
    keepalive: Annotated[Duration, Field(le=KEEPALIVE_MAX)] = Field(
        default=30.0, description="MQTT keepalive"
    )
    max_inflight: int = Field(
        default=64, ge=1, le=1000, description="batches sent and not yet acknowledged, at most"
    )
    # Positive: a zero delay would retry a refused connection in a tight loop.
    reconnect_min: PositiveDuration = Field(default=1.0, description="first reconnect delay")
    reconnect_max: PositiveDuration = Field(default=60.0, description="longest reconnect delay")
    # Filled by load_config(resolve_secrets=True) only; the file cannot set it (the loader refuses
    # an inline ``password`` key) and the schema does not show it.
    password: SkipJsonSchema[SecretStr | None] = Field(default=None, exclude=True)

    @model_validator(mode="before")
    @classmethod
    def _defaults_from_tls(cls, data: Any) -> Any:
        refuse_inline_password(data)
        if isinstance(data, Mapping) and data.get("servers") is not None:
            return data  # host/port do not apply (checked once the fields are valid)
        if isinstance(data, Mapping) and "port" not in data and data.get("tls") is not None:
            return {**data, "port": 8883}
        return data

    @field_validator("client_id")
    @classmethod
    def _printable(cls, value: str | None) -> str | None:
        if value is not None and not value.isprintable():
            raise ValueError("client_id must be printable characters only")
        return value

    @field_validator("password_env")
    @classmethod
    def _env_name(cls, value: str | None) -> str | None:
        return check_env_name(value)

    @field_validator("topic_prefix")
    @classmethod
    def _topic(cls, value: str | None) -> str | None:
        return None if value is None else check_topic_prefix(value)

    @field_validator("servers")
    @classmethod
    def _servers(cls, value: list[str] | None) -> list[str] | None:
        for entry in value or []:
            parse_listen(entry)
        return value

    @model_validator(mode="after")
    def _consistent(self) -> MqttSection:
        if self.servers is not None and {"host", "port"} & self.model_fields_set:
            raise key_error("servers", "use servers or host/port, not both")
        chosen = self._format_rules()
        source = password_source(self.password_env, self.password_file)
        # A format whose password is a token (sent as user) or a key (signs one) needs no user.
        token = chosen is not None and chosen.password_is_token
        if self.username is None and getattr(self, source) is not None and not token:
            # MQTT 3.1.1 sends no password without a user name; the client would drop it silently.
            raise key_error(source, "a password needs a username (MQTT 3.1.1 sends none without)")
        if self.reconnect_min > self.reconnect_max:
            raise key_error("reconnect_max", "reconnect_max must not be less than reconnect_min")
        return self

    def _format_rules(self) -> type[Format] | None:
        """The chosen format's class after its rules held: its section is given when it has
        options without defaults, no other format's section is, and its ``check_section``."""
        chosen = self.format_classes.get(self.format)
        for name, cls in self.format_classes.items():
            key = cls.section_key() if cls else name
            if name != self.format and getattr(self, options_field(key), None) is not None:
                raise key_error(key, f"the {key} section needs format: {name}")
        if chosen is None:
            return None
        key = chosen.section_key()
        required = chosen.options_required()
        if required and getattr(self, options_field(key), None) is None:
            needs = ", ".join(required)
            an = "an" if key[:1] in tuple("aeiou") else "a"
            raise key_error("format", f"format: {self.format} needs {an} {key} section ({needs})")
        for at, message in chosen.check_section(self):
            raise key_error(at, message)
        return chosen


#: What a destination can take: the buffered ``data`` and ``events``, the retained machine
#: ``state`` and device ``status`` (the gateway's own online/offline always goes).
StreamName = Literal["data", "events", "state", "status"]
#: The ``mqtt`` section's destination name, which no ``outputs`` entry may take.
DEFAULT_OUTPUT = "default"


def _unique(values: list[Any] | None) -> list[Any] | None:
    if values is None:
        return None
    seen: set[Any] = set()
    for value in values:
        if value in seen:
            raise ValueError(f"{value!r} is listed twice")
        seen.add(value)
    return values


class OutputSection(MqttSection):
    """One more destination (``outputs:``): every key of the ``mqtt`` section, plus its name and
    what it takes. It has its own session, its own share of the buffer and its own metrics
    (label ``output``); the ``mqtt`` section is the destination named ``default``."""

    name: Name = Field(
        description="unique among the destinations ([A-Za-z0-9_.-]+; `default` is the mqtt "
        "section's); the output label of its metrics"
    )
    client_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        description="MQTT client id; default <agent.id>-<name>",
    )
    devices: Annotated[list[Name], AfterValidator(_unique)] | None = Field(
        default=None,
        min_length=1,
        description="the devices whose batches, events, state and status it takes; default all",
    )
    streams: Annotated[list[StreamName], AfterValidator(_unique)] | None = Field(
        default=None,
        min_length=1,
        description="what it takes: data, events (alarms), state (machine state), status "
        "(devices up/down); default all",
    )

    @field_validator("name")
    @classmethod
    def _not_default(cls, value: str) -> str:
        if value == DEFAULT_OUTPUT:
            raise ValueError(f"{DEFAULT_OUTPUT!r} is the mqtt section's name; choose another")
        return value


def _at_least_1mb(value: int) -> int:
    if value < 1_000_000:
        raise ValueError(f"max_size must be at least 1MB, not {value} bytes")
    return value


class BufferSection(StrictModel):
    """The on-disk store-and-forward buffer."""

    max_size: Annotated[Size, AfterValidator(_at_least_1mb)] = Field(
        default=256_000_000,
        description="the buffer never grows past this (at least 1MB); oldest batches go first",
    )
    commit_interval: Duration = Field(
        default=1.0,
        le=10.0,
        description="longest a polled batch waits to share one commit (one fsync) with the "
        "batches polled after it, never past its device's next poll; a power cut can take at "
        "most this much of readings not yet committed, never a committed one; 0 commits each "
        "batch at once (docs/reliability.md)",
    )


class MetricsSection(StrictModel):
    """The Prometheus endpoint."""

    listen: str | None = Field(
        default="127.0.0.1:9108",
        description="host:port or [ipv6]:port of the /metrics endpoint; null disables it",
    )

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str | None) -> str | None:
        if value is not None:
            parse_listen(value)
        return value

    @property
    def host(self) -> str | None:
        """Address to bind (IPv6 without brackets), or None when metrics are off."""
        return None if self.listen is None else parse_listen(self.listen)[0]

    @property
    def port(self) -> int | None:
        """Port to bind (0: any free port), or None when metrics are off."""
        return None if self.listen is None else parse_listen(self.listen)[1]


#: Top-level sections a fleet push may carry (``fleet.allow`` chooses among them). Never
#: ``agent`` (identity, data_dir), ``mqtt`` (the way back to the operator), ``buffer``,
#: ``metrics`` or ``fleet`` itself: a push that could change those could lock the gateway out.
FLEET_SECTIONS = ("devices", "profiles", "outputs")
FleetSectionName = Literal["devices", "profiles", "outputs"]


class FleetHealthCheck(StrictModel):
    """What must hold after a fleet push is applied; else the previous version comes back."""

    timeout: PositiveDuration = Field(
        default=60.0, description="how long the new version has to pass the check"
    )
    devices: bool = Field(
        default=True, description="every device that was up before the apply is up again"
    )
    destinations: bool = Field(default=True, description="every destination is connected")


class FleetSection(StrictModel):
    """Central configuration through the broker (docs/fleet.md): signed pushes on
    ``<prefix>/config/set``, the result on ``config/state``, the gateway's ``health``."""

    enabled: bool = Field(
        default=False, description="accept signed config pushes and publish health"
    )
    key_env: str | None = Field(
        default=None, description="environment variable holding the shared HMAC-SHA256 key"
    )
    key_file: ConfigPath | None = Field(
        default=None, description="file holding the shared key (one trailing newline is ignored)"
    )
    allow: list[FleetSectionName] = Field(
        default_factory=lambda: list[FleetSectionName](["devices", "profiles"]),
        description="the top-level sections a push may carry (processing is part of devices)",
    )
    allow_writes: bool = Field(
        default=False,
        description="let a push make a tag writable that the running config does not let write",
    )
    keep: int = Field(default=10, ge=1, le=1000, description="pushed versions kept on disk")
    health_check: FleetHealthCheck = Field(
        default_factory=FleetHealthCheck, description="what must hold after an apply"
    )
    health_interval: PositiveDuration = Field(
        default=30.0, description="the retained health document is sent this often and on change"
    )

    @field_validator("key_env")
    @classmethod
    def _env_name(cls, value: str | None) -> str | None:
        return check_env_name(value)

    @model_validator(mode="after")
    def _one_key(self) -> FleetSection:
        if self.key_env is not None and self.key_file is not None:
            raise key_error("key_file", "give key_env or key_file, not both")
        if self.enabled and self.key_env is None and self.key_file is None:
            raise key_error("enabled", "the fleet needs a key: key_env or key_file")
        return self


class Config(StrictModel):
    """The whole file. ``build_config_model`` derives the real model, with the installed drivers'
    device and profile models in ``devices`` and ``profiles``."""

    agent: AgentSection = Field(description="this gateway")
    mqtt: MqttSection = Field(
        default_factory=MqttSection, description="the broker (the destination named default)"
    )
    outputs: list[OutputSection] = Field(
        default_factory=list,
        description="more destinations, each with its own broker, format and backlog; a batch "
        "leaves the buffer once every destination that takes it has it",
    )
    buffer: BufferSection = Field(default_factory=BufferSection, description="the on-disk buffer")
    metrics: MetricsSection = Field(
        default_factory=MetricsSection, description="the Prometheus endpoint"
    )
    include: list[ConfigPath] = Field(
        default_factory=list,
        description="profile files to load (one profile each, named by the file's name without "
        ".yaml); a relative path is relative to the config file's directory",
    )
    profiles: dict[Name, ProfileBase] = Field(
        default_factory=dict,
        description="device types: tag lists and device defaults written once, by name; a "
        "device may also name a profile file of /etc/edge-agent/profiles or the bundled "
        "config/profiles",
    )
    devices: list[DeviceBase] = Field(default_factory=list, description="the devices to poll")
    fleet: FleetSection = Field(
        default_factory=FleetSection,
        description="central configuration and health through the broker; off by default",
    )

    @model_validator(mode="before")
    @classmethod
    def _defaults_from_agent_id(cls, data: Any) -> Any:
        """client_id and topic_prefix default to values derived from agent.id; filling them here
        means every consumer reads the effective value instead of re-deriving it."""
        if not isinstance(data, Mapping):
            return data
        agent, mqtt = data.get("agent"), data.get("mqtt", {})
        agent_id = agent.get("id") if isinstance(agent, Mapping) else None
        if not (isinstance(agent_id, str) and re.match(NAME_PATTERN, agent_id)):
            return data  # agent.id itself is reported; derived values would only repeat it
        if not isinstance(mqtt, Mapping):
            return data
        mqtt = dict(mqtt)
        if mqtt.get("client_id") is None:
            mqtt["client_id"] = agent_id
        if mqtt.get("topic_prefix") is None:
            mqtt["topic_prefix"] = f"edge/{agent_id}"
        data = {**data, "mqtt": mqtt}
        outputs = data.get("outputs")
        if isinstance(outputs, list):
            filled = []
            for entry in outputs:
                if isinstance(entry, Mapping) and isinstance(entry.get("name"), str):
                    entry = dict(entry)
                    if entry.get("client_id") is None:
                        entry["client_id"] = f"{agent_id}-{entry['name']}"
                    if entry.get("topic_prefix") is None:
                        entry["topic_prefix"] = f"edge/{agent_id}"
                filled.append(entry)
            data["outputs"] = filled
        return data

    def active_devices(self) -> list[DeviceBase]:
        """The devices that run: every one but those with ``enabled: false`` (the one place
        that says so; pollers, formats and reload all ask here)."""
        return [d for d in self.devices if d.enabled]

    def tag_count(self) -> int:
        """Tags over all devices (profiles merged in by load_config)."""
        return sum(len(d.tags) for d in self.devices)


def _tagged_union(models: Mapping[str, type[Any]]) -> Any:
    """One model per driver name, chosen by the ``driver`` key.

    A callable discriminator with ``Tag``s works whether or not a driver narrowed ``driver`` to a
    ``Literal``; a single driver needs no union at all.
    """
    if len(models) == 1:
        return next(iter(models.values()))
    members = tuple(Annotated[model, Tag(name)] for name, model in models.items())

    def driver_of(value: Any) -> str | None:
        found = (
            value.get("driver") if isinstance(value, Mapping) else getattr(value, "driver", None)
        )
        return found if isinstance(found, str) else None

    return Annotated[
        Union[members],  # noqa: UP007 - a union built at run time needs Union[...]
        Discriminator(driver_of),
    ]


def build_config_model(
    drivers: Mapping[str, type[Driver]],
    formats: Mapping[str, type[Format] | None] | None = None,
) -> type[Config]:
    """The top-level model for these drivers and formats: devices and profiles typed by the
    drivers' models, ``mqtt`` by the formats' options (``format_section_model``; by default
    every installed format, imported)."""
    formats = installed_formats() if formats is None else formats
    mqtt = format_section_model(MqttSection, formats)
    mqtt_field = (
        mqtt,
        Field(default_factory=mqtt, description=Config.model_fields["mqtt"].description),
    )
    output = format_section_model(OutputSection, formats)
    outputs_field: tuple[Any, Any] = (
        list[output],  # type: ignore[valid-type]
        Field(default_factory=list, description=Config.model_fields["outputs"].description),
    )
    if not drivers:
        return create_model(
            "Config",
            __base__=Config,
            __doc__="edge-agent configuration",
            mqtt=mqtt_field,
            outputs=outputs_field,
        )
    # Each driver's models with the agent's processing keys added (the contract has none).
    models = {n: processed_models(d.device_model, d.profile_model) for n, d in drivers.items()}
    # A profile's defaults: are typed by its driver's device keys, processing keys included.
    models = {
        n: (device, with_defaults(device, profile)) for n, (device, profile) in models.items()
    }
    device = _tagged_union({name: models[name][0] for name in sorted(models)})
    profile = _tagged_union({name: models[name][1] for name in sorted(models)})
    return create_model(
        "Config",
        __base__=Config,
        __doc__="edge-agent configuration",
        mqtt=mqtt_field,
        outputs=outputs_field,
        profiles=(
            dict[Name, profile],  # type: ignore[valid-type]
            Field(default_factory=dict, description=Config.model_fields["profiles"].description),
        ),
        devices=(
            list[device],  # type: ignore[valid-type]
            Field(default_factory=list, description=Config.model_fields["devices"].description),
        ),
    )
