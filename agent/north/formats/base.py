"""What a northbound format is: an encoder plus the rules of its session.

The publisher owns the connection, the buffer and the acknowledgements; a format decides what
goes on the wire. Keeping that line sharp is what lets Sparkplug B (births, deaths, aliases, host
state) and plain JSON share one publisher with one delivery guarantee: a buffered batch leaves
the buffer only when the message that carried it was acknowledged, whatever the dialect.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from pydantic import BaseModel

from agent.core.buffer import StoredBatch
from agent.core.processing.calculated import calculated_types
from drivers.base import DeviceBase, StrictModel

if TYPE_CHECKING:  # the config is built in app; a format reads it, never imports app at run time
    from agent.app.config.models import Config


#: A place in the parsed config file, as keys and list indexes (``("thingsboard", "device_types",
#: "m1")``); a format's checks give it relative to the section that holds the format's options.
KeyPath = tuple[str | int, ...]
#: One problem a format's ``check`` finds: where (relative to its section) and what.
Issue = tuple[KeyPath, str]

_Options = TypeVar("_Options", bound=BaseModel)


def options_field(key: str) -> str:
    """The attribute that holds the options section ``key`` on the composed MQTT section model:
    the key itself, unless pydantic's ``BaseModel`` already has that name (``json``), then
    ``<key>_options``; the YAML key stays ``key`` (the field's alias)."""
    return f"{key}_options" if hasattr(BaseModel, key) or key.startswith("_") else key


def options_of(section: object, key: str, model: type[_Options]) -> _Options | None:
    """The validated options section ``key`` of an MQTT section (``config.mqtt``), or None when
    the file has none. TypeError when the section holds something else: a model composed for
    another set of formats (a bug, never a config mistake)."""
    value = getattr(section, options_field(key), None)
    if value is not None and not isinstance(value, model):
        raise TypeError(f"section {key!r} holds {type(value).__name__}, not {model.__name__}")
    return value


@dataclass(frozen=True, slots=True)
class Message:
    """One MQTT publish. ``properties`` become MQTT v5 user properties (dropped on 3.1.1)."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False
    properties: tuple[tuple[str, str], ...] = ()
    content_type: str | None = None


@dataclass(frozen=True, slots=True)
class Packed:
    """A data message and the buffered batches it carries: acknowledged together. Without a
    message the batches are acknowledged at once: the dialect already said what they say (the
    all-bad batch of a lost device is Sparkplug's DDEATH)."""

    message: Message | None
    rows: tuple[StoredBatch, ...]


@dataclass(frozen=True, slots=True)
class Command:
    """A downlink command. Dialects other than json decode it to ``writes`` (tag: value) so that
    every dialect goes through the same checked write path (``CommandHandler.write``); json
    passes the raw ``payload`` to ``CommandHandler.handle``. ``Format.reply`` turns the
    handler's reply into the dialect's answer, using ``context`` (a request id...)."""

    device: str
    payload: bytes = b""
    reply_topic: str | None = None
    writes: Mapping[str, Any] | None = None
    cmd_id: str | None = None
    context: Any = None
    #: A method call instead of writes: ``{method: arguments}`` (``CommandHandler.call``).
    call: Mapping[str, Any] | None = None


@dataclass(slots=True)
class Reaction:
    """What an incoming message asks of the publisher."""

    publish: list[Message] = field(default_factory=list)
    command: Command | None = None
    #: drop this session and connect again (to the next server): Sparkplug's host went offline
    reconnect: bool = False


def stream_of(row: StoredBatch) -> tuple[str, str]:
    """(device, kind) of a buffered batch: the buffer's ``kind`` column says what a row is
    (``data`` or ``event``); device names never carry a stream suffix."""
    return row.device, row.kind or "data"


class Format(abc.ABC):
    """The default session rules: nothing to announce, nothing to subscribe, always ready.

    Subclasses override what their dialect needs. Every method runs on the event loop and must
    be quick: the publisher calls them between sends.

    A format is a plugin (entry point group ``edge_agent.formats``): besides its wire rules it
    declares its config, so that one installed from outside the agent is validated, reported at
    FILE:LINE:COL and shown by ``edge-agent schema`` like a bundled one. The surface:

    * ``Options``: the pydantic model of its section (``mqtt.<options_key>``), or None;
    * ``options_key``: that section's key, by default the format's ``name``;
    * ``password_is_token``: the password is a token or key the format sends its own way, so a
      password without ``username`` is right (for other formats MQTT 3.1.1 would drop it);
    * ``check_section``: rules across the MQTT section's keys, on the validated section;
    * ``check``: rules across the file (names of devices and profiles), on the parsed data;
    * ``from_config``: the format as a config asks for it.
    """

    name = "base"
    #: the model of the options section, or None: the format takes no options
    Options: ClassVar[type[StrictModel] | None] = None
    #: the key of the options section in ``mqtt``; None: the format's ``name``
    options_key: ClassVar[str | None] = None
    #: the password is the platform's token or key, not an MQTT password for a user name
    password_is_token: ClassVar[bool] = False
    #: How this format was built (class and constructor arguments): a reload compares it to
    #: know whether the new config needs a new format and MQTT session (``Format.__new__``).
    spec: tuple[Any, ...] = ()
    #: largest payload the platform accepts (bytes); None: the broker decides
    max_payload: int | None = None
    #: whether the platform keeps retained messages (Alibaba, AWS and Azure do not need them)
    retain_supported = True
    #: On a clean stop over MQTT 5, after ``offline()``, DISCONNECT with reason code 4
    #: ("disconnect with will message") so that the broker publishes the will too: Sparkplug 3.0
    #: requires it (tck-id-payloads-ndeath-will-message-publisher-disconnect-mqtt50; the NDEATH
    #: it repeats carries the same bdSeq, which a host takes as the same death).
    will_on_clean_stop = False
    #: data messages per second the platform allows per connection; None: no limit
    max_rate: float | None = None

    def __new__(cls, *args: Any, **kwargs: Any) -> Format:
        # Recorded here, not in every subclass's __init__, so that a format added later (or a
        # third party's) is compared on reload without remembering to do so.
        self = super().__new__(cls)
        self.spec = (cls, args, kwargs)
        return self

    def credentials(
        self, username: str | None, password: str | None
    ) -> tuple[str | None, str | None]:
        """MQTT user name and password for the next CONNECT (platforms that sign in with a
        token or a computed signature replace them)."""
        return username, password

    def client_id(self, configured: str) -> str:
        """The MQTT client id of the next CONNECT (Alibaba signs parameters into it)."""
        return configured

    def session_deadline(self) -> float | None:
        """Epoch seconds after which the session must be renewed (credentials that expire)."""
        return None

    def will(self) -> Message | None:
        """The MQTT last will for the next connection (called once per connection attempt, so
        it must not consume anything: most attempts of an outage never reach a broker)."""
        return None

    def connect_sent(self) -> None:
        """The CONNECT packet carrying the last ``will()`` went out (the socket opened and paho
        wrote it); called once per CONNECT actually sent, never for an attempt that failed
        before. Sparkplug's ``bdSeq`` rises per CONNECT packet, not per attempt, and the NBIRTH
        must repeat the will's number: this is where it is consumed and persisted."""
        return None

    def subscriptions(self) -> Sequence[str]:
        return ()

    def online(self) -> list[Message]:
        """Sent right after the subscriptions at each connect, before any data."""
        return []

    def offline(self) -> list[Message]:
        """Sent on a clean stop, before DISCONNECT (the will covers an unclean loss)."""
        return []

    def ready(self) -> bool:
        """Whether data may flow now (Sparkplug waits for its primary host)."""
        return True

    @classmethod
    def section_key(cls) -> str:
        """The key of this format's options section (``options_key``, else ``name``)."""
        return cls.options_key or cls.name

    @classmethod
    def options_required(cls) -> list[str]:
        """The options that have no default: with any, ``format: <name>`` needs the section."""
        if cls.Options is None:
            return []
        return [k for k, f in cls.Options.model_fields.items() if f.is_required()]

    @classmethod
    def check_section(cls, section: Any) -> list[tuple[str, str]]:
        """(key of the MQTT section, message) for each rule across its keys that this format
        has (AWS: a client certificate, few topic levels). ``section`` is validated, with this
        format chosen; the options are ``options_of(section, ...)``."""
        return []

    @classmethod
    def check(cls, data: Mapping[str, Any], section: Mapping[str, Any]) -> list[Issue]:
        """Problems across the file that a model of one section cannot see (a name in the
        options that is no device of the file), each at its key relative to ``section``.

        Run on the parsed file (``data``; ``section`` is the raw MQTT section that chose this
        format) rather than on validated models, so they are reported in the same run as any
        other mistake. Values may be of any type here: skip what is not what you expect, the
        model reports it."""
        return []

    @classmethod
    @abc.abstractmethod
    def from_config(cls, config: Config) -> Format:
        """The format as the config asks for it (``mqtt`` and the format's own section, the
        devices that run): called at start and by every reload, which compares ``spec``."""

    @abc.abstractmethod
    def pack(self, rows: Sequence[StoredBatch]) -> list[Packed]:
        """The messages that carry these buffered batches, each naming the rows it acknowledges."""

    def status_changed(
        self, device: str, state: str, reason: str | None, ts_ms: int
    ) -> list[Message]:
        """Messages for a device's state change, sent now if connected (and not replayed)."""
        return []

    def retained_status(
        self, device: str, state: str, reason: str | None, ts_ms: int
    ) -> Message | None:
        """A retained status message the publisher keeps and republishes after each connect."""
        return None

    @abc.abstractmethod
    def device_topic(self, device: str, kind: str) -> str:
        """A retained per-device side topic (machine ``state``...) beside the dialect's own."""

    def side_message(self, topic: str, payload: bytes) -> Message | None:
        """The message for ``Publisher.retain(topic, payload)`` (``topic`` from
        ``device_topic``): retained as is by default; platforms without retained messages
        carry it their way. Replayed after every connect either way."""
        return Message(topic, payload, qos=1, retain=True)

    def incoming(self, topic: str, payload: bytes) -> Reaction | None:
        return None

    def reply(self, command: Command, reply: dict[str, object]) -> Message | None:
        """The dialect's answer to a command, or None when it has none."""
        return None

    def refresh(self, new: Format) -> list[Message]:
        """A reload built ``new`` with the same ``spec`` as this format (so this one and its
        session stay): take over what may change without a new session, and return the
        messages that say so now (JSON's tag metadata). Nothing by default."""
        return []


def topic_prefix(config: Config) -> str:
    """``mqtt.topic_prefix``, by default ``edge/<agent.id>``."""
    return config.mqtt.topic_prefix or f"edge/{config.agent.id}"


def tag_types(device: DeviceBase) -> dict[str, str]:
    """Tag name to the value type the driver declares for it (where it declares one), and each
    calculated tag's, inferred from its expression (agent/core/processing/calculated.py)."""
    declared: dict[str, str] = {t.name: v for t in device.tags if (v := t.value_type()) is not None}
    return {**declared, **calculated_types(device)}
