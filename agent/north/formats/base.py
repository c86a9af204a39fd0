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
from typing import TYPE_CHECKING, Any

from agent.core.buffer import StoredBatch
from drivers.base import DeviceBase

if TYPE_CHECKING:  # the config is built in app; a format reads it, never imports app at run time
    from agent.app.config.models import Config


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


@dataclass(slots=True)
class Reaction:
    """What an incoming message asks of the publisher."""

    publish: list[Message] = field(default_factory=list)
    command: Command | None = None
    #: drop this session and connect again (to the next server): Sparkplug's host went offline
    reconnect: bool = False


def stream_of(row: StoredBatch) -> tuple[str, str]:
    """(device, kind) of a buffered batch. Side streams are stored either with their own
    ``kind`` or as ``<device>/<kind>`` device names; both read the same here."""
    device, _, kind = row.device.partition("/")
    if row.kind and row.kind != "data":
        kind = row.kind
    return device, kind or "data"


class Format(abc.ABC):
    """The default session rules: nothing to announce, nothing to subscribe, always ready.

    Subclasses override what their dialect needs. Every method runs on the event loop and must
    be quick: the publisher calls them between sends.
    """

    name = "base"
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


def topic_prefix(config: Config) -> str:
    """``mqtt.topic_prefix``, by default ``edge/<agent.id>``."""
    return config.mqtt.topic_prefix or f"edge/{config.agent.id}"


def tag_types(device: DeviceBase) -> dict[str, str]:
    """Tag name to the value type the driver declares for it (where it declares one)."""
    return {t.name: v for t in device.tags if (v := t.value_type()) is not None}
