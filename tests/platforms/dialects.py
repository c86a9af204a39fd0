"""Every format's dialect as its platform sees it, for tests/test_seams_matrix.py.

An adapter knows four things about one format: a broker shaped like its platform (users and
topics it allows) with the platform's own client on it; the config's ``mqtt`` section, in two
variants (the second changes an option the format really uses, for the reload situation); how the
platform sends a write (the format's command dialect); and how to read what arrived. ``decode``
turns the messages the platform received into, per device, the observations of each stream kind
of agent/core/streams.py in the shape the format's page documents (docs/platforms/<format>.md, and
README "What reaches the broker" for json), plus the problems found in that shape. It is written
from the documented shape, not from the format's code, so a format that sends something else
shows up as a missing stream kind or a shape problem.

A format registered in the entry-point group ``edge_agent.formats`` without an adapter here fails
the matrix: add one (and its platform rig in tests/platforms/) when you add a format.
"""

from __future__ import annotations

import abc
import base64
import json
import re
import urllib.parse
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from agent.core.processing.config import Feature, Stat
from agent.core.streams import StreamKind
from agent.north.formats.alibaba import sign
from tests.brokers import Mosquitto, Received, Subscriber
from tests.platforms.alibaba import GW_DN, GW_PK, SUB_PK, AlibabaResponder
from tests.platforms.cloud import AZURE_DEVICE, IotHubResponder, TlsSubscriber, aws_broker
from tests.platforms.huawei import GATEWAY as HW_GATEWAY
from tests.platforms.huawei import IotdaResponder
from tests.platforms.sparkplug_host import Decoded as SparkplugDecoded
from tests.platforms.sparkplug_host import encode as sparkplug_encode
from tests.platforms.thingsboard import (
    GATEWAY_PASSWORD,
    GATEWAY_USER,
    ThingsBoardResponder,
    thingsboard_broker,
)

#: The key of the gateway's own observations (``GATEWAY_STATUS``) in ``Arrived.kinds``.
GATEWAY = ""
#: The agent id every matrix config uses.
AGENT_ID = "test-gw"

_STATS = set(Stat.__args__)  # type: ignore[attr-defined]
_FEATURES = set(Feature.__args__)  # type: ignore[attr-defined]

#: The key of one batch on the wire: its seq where the dialect carries one, else its content.
BatchKey = int | str


@dataclass
class Arrived:
    """What the platform received, read as the format's documentation says."""

    #: device (GATEWAY for the gateway) -> stream kind -> observations, in arrival order
    kinds: dict[str, dict[StreamKind, list[Any]]] = field(default_factory=dict)
    #: (device, buffered stream "data" | "event") -> (batch key, payload that carried it) per
    #: batch received; the same key in the same payload is a QoS 1 redelivery (after a reload
    #: it may come on the new options' topic)
    batches: dict[tuple[str, str], list[tuple[BatchKey, bytes]]] = field(default_factory=dict)
    #: what does not have the documented shape
    problems: list[str] = field(default_factory=list)

    def add(self, device: str, kind: StreamKind, observation: Any) -> None:
        self.kinds.setdefault(device, {}).setdefault(kind, []).append(observation)

    def of(self, device: str, kind: StreamKind) -> list[Any]:
        return self.kinds.get(device, {}).get(kind, [])

    def batch(self, device: str, stream: str, key: BatchKey, wire: bytes) -> None:
        self.batches.setdefault((device, stream), []).append((key, wire))

    def values(self, device: str, values: dict[str, Any], state_in_data: bool) -> None:
        """One data-stream batch's values: raw tags are DATA, ``<tag>.<stat>`` WINDOW,
        ``<tag>.<feature>`` FEATURES, and ``state`` STATE where the dialect documents the
        machine state as a value of the data (Sparkplug, Alibaba, Huawei)."""
        split: dict[StreamKind, dict[str, Any]] = {}
        for key, value in values.items():
            suffix = key.rpartition(".")[2] if "." in key else None
            if key == "state" or key.startswith("runtime."):
                if key == "state" and state_in_data:
                    self.add(device, StreamKind.STATE, value)
                continue
            if suffix in _STATS:
                kind = StreamKind.WINDOW
            elif suffix in _FEATURES:
                kind = StreamKind.FEATURES
            else:
                kind = StreamKind.DATA
            split.setdefault(kind, {})[key] = value
        for kind, part in split.items():
            self.add(device, kind, part)


def _json(m: Received, arrived: Arrived) -> Any:
    try:
        return json.loads(m.payload)
    except ValueError:
        arrived.problems.append(f"{m.topic}: not JSON: {m.payload[:80]!r}")
        return None


def _missing(doc: Any, keys: Iterable[str], where: str, arrived: Arrived) -> bool:
    """Record a shape problem when ``doc`` is no object or lacks one of ``keys``."""
    if not isinstance(doc, dict):
        arrived.problems.append(f"{where}: not a JSON object: {doc!r:.80}")
        return True
    lacking = [k for k in keys if k not in doc]
    if lacking:
        arrived.problems.append(f"{where}: lacks {lacking}: {doc!r:.200}")
        return True
    return False


def _content(*parts: Any) -> str:
    return json.dumps(parts, sort_keys=True, default=str)


def _agent_body(
    m: Received, device: str, stream: str, doc: Any, event_keys: list[str], arrived: Arrived
) -> bool:
    """A data or event batch in the agent's own JSON body (agent, device, seq, ts, then the
    values or the event with ``event_keys``), as json and azure send it: keyed by its seq. False
    when a key is missing (a problem already recorded)."""
    required = ["agent", "device", "seq", "ts"]
    required += ["values"] if stream == "data" else event_keys
    if _missing(doc, required, m.topic, arrived):
        return False
    arrived.batch(device, stream, doc["seq"], m.payload)
    if stream == "data":
        arrived.values(device, doc["values"], state_in_data=False)
    else:
        arrived.add(device, StreamKind.EVENT, doc)
    return True


def acl_broker(workdir: Path, acl: str, extra: str = "") -> Mosquitto:
    """A broker that lets each user do what ``acl`` says and nothing else. Its users sign in
    with passwords the platform computes (a time-stamped HMAC, a SAS token): a broker cannot
    check those, tests/test_cloud_*.py check them; here the user name is the identity."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "acl").write_text(acl)
    conf = f"acl_file {workdir / 'acl'}\nlog_type all\n{extra}"
    return Mosquitto(workdir, extra_conf=conf)


@dataclass(frozen=True)
class PlatformNames:
    """How a platform names our devices, per variant of the mqtt section: ``prefix`` and the
    device's name, unless ``renamed[variant]`` (the format's ``devices`` option) gives another."""

    renamed: tuple[dict[str, str], dict[str, str]]
    prefix: str = ""

    def of(self, device: str, variant: int) -> str:
        return self.renamed[variant].get(device, self.prefix + device)

    def ours(self, variant: int | None) -> Callable[[str], str | None]:
        """Name on the platform -> our device, as a platform set up for ``variant`` (None:
        either) sees it; None for a name that is none of ours (a device's default name where
        ``variant`` renames it)."""
        mapped = {n: d for v in Dialect.variants(variant) for d, n in self.renamed[v].items()}
        elsewhere = set(self.renamed[variant]) if variant is not None else set()

        def lookup(name: str) -> str | None:
            if name in mapped:
                return mapped[name]
            if not name.startswith(self.prefix):
                return None
            device = name[len(self.prefix) :]
            return None if device in elsewhere else device

        return lookup


@dataclass
class Sent:
    """A write the platform sent, in the matrix's terms."""

    device: str
    tag: str
    value: Any


class Dialect(abc.ABC):
    """One format as its platform sees it. ``variant`` 0 is the first config, 1 the one a reload
    applies (an option of the format changed); the test sets it."""

    #: ``mqtt.format`` of the config
    format: ClassVar[str]
    #: whether a batch without any readable value (a device that does not answer) is a message
    #: of its own on the wire (Alibaba posts no properties for it; Sparkplug says it by DDEATH)
    shows_empty_batches: ClassVar[bool] = True
    #: whether batches carry the buffer's seq (else they are told apart by content)
    keyed_by_seq: ClassVar[bool] = False
    #: whether the platform hears that the gateway went offline (its MQTT will, and on a clean
    #: stop the same message)
    says_offline: ClassVar[bool] = False

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.variant = 0
        #: the devices of each variant's config (the test says)
        self.devices: dict[int, list[str]] = {0: [], 1: []}
        self.sent: dict[str, Sent] = {}
        self.broker: Mosquitto = self._broker()
        self.platform: Subscriber = self._platform()

    # -- the platform -----------------------------------------------------------------------------

    @abc.abstractmethod
    def _broker(self) -> Mosquitto: ...

    @abc.abstractmethod
    def _platform(self) -> Subscriber: ...

    def start(self) -> None:
        self.broker.start()
        self.platform.start()

    def stop(self) -> None:
        self.platform.stop()
        self.broker.stop()

    def publish(self, topic: str, payload: bytes | str) -> None:
        """The platform publishes (QoS 1), as its own user."""
        self.platform._client.publish(topic, payload, qos=1)

    def broker_log(self) -> str:
        path = self.broker.workdir / "mosquitto.log"
        return path.read_text(errors="replace") if path.exists() else ""

    # -- the agent's side -------------------------------------------------------------------------

    #: environment variables the config's password_env names
    env: ClassVar[dict[str, str]] = {}

    @abc.abstractmethod
    def mqtt(self, variant: int) -> dict[str, Any]:
        """The config's mqtt section less host and port."""

    def agent(self) -> dict[str, Any]:
        """Extra keys of the config's agent section."""
        return {}

    # -- writes -----------------------------------------------------------------------------------

    def send_write(self, device: str, tag: str, value: Any) -> str:
        """Send a write of ``tag`` on ``device`` in the dialect; the command's id."""
        cmd_id = f"w{len(self.sent) + 1}"
        self.sent[cmd_id] = Sent(device, tag, value)
        self._send(cmd_id, device, tag, value)
        return cmd_id

    @abc.abstractmethod
    def _send(self, cmd_id: str, device: str, tag: str, value: Any) -> None: ...

    # -- reading ----------------------------------------------------------------------------------

    @abc.abstractmethod
    def decode(self, messages: Sequence[Received], variant: int | None = None) -> Arrived:
        """Per device, what arrived of each stream kind; ``variant`` reads only what a platform
        set up for that variant's options sees (None: both)."""

    def options_applied(self, messages: Sequence[Received], added: str) -> list[str]:
        """Problems showing the option the reload changed did not take effect for the device
        ``added`` (what ``decode(messages, 1)`` cannot tell by topics alone)."""
        return []

    def problems(self, messages: Sequence[Received]) -> list[str]:
        """Rules of the dialect beyond the payload shapes; here: publishes the platform refused
        (its ACL allows the gateway only the dialect's topics)."""
        denied = [line for line in self.broker_log().splitlines() if "Denied PUBLISH" in line]
        return [f"the broker refused: {line}" for line in denied[:5]]

    @staticmethod
    def variants(variant: int | None) -> list[int]:
        return [0, 1] if variant is None else [variant]


# -- json, and json with topic templates ---------------------------------------------------------


class JsonDialect(Dialect):
    """The contract's format (README "What reaches the broker", docs/platforms/json.md):
    everything under ``topic_prefix``; the reload changes the prefix."""

    format = "json"
    keyed_by_seq = True
    says_offline = True
    PREFIXES: ClassVar[tuple[str, str]] = ("edge/test-gw", "plant/test-gw")
    retained = True

    def _broker(self) -> Mosquitto:
        return Mosquitto(self.workdir / "broker", extra_conf="log_type all\n")

    def _platform(self) -> Subscriber:
        return Subscriber(self.broker.port, [f"{p}/#" for p in self.PREFIXES], "platform")

    def mqtt(self, variant: int) -> dict[str, Any]:
        return {"topic_prefix": self.PREFIXES[variant]}

    def prefix(self, variant: int) -> str:
        return self.PREFIXES[variant]

    def _send(self, cmd_id: str, device: str, tag: str, value: Any) -> None:
        doc = {"id": cmd_id, "write": {tag: value}}
        self.publish(f"{self.prefix(self.variant)}/{device}/cmd", json.dumps(doc))

    def decode(self, messages: Sequence[Received], variant: int | None = None) -> Arrived:
        arrived = Arrived()
        for m in messages:
            for v in self.variants(variant):
                if self._one(m, v, arrived):
                    break
        return arrived

    def _one(self, m: Received, variant: int, arrived: Arrived) -> bool:
        prefix = self.prefix(variant) + "/"
        if not m.topic.startswith(prefix):
            return False
        rest = m.topic[len(prefix) :].split("/")
        if rest == ["status"]:
            doc = _json(m, arrived)
            if not _missing(doc, ["online"], m.topic, arrived):
                self._retained(m, arrived)
                arrived.add(GATEWAY, StreamKind.GATEWAY_STATUS, doc["online"])
            return True
        if len(rest) == 3 and rest[1:] == ["cmd", "reply"]:
            doc = _json(m, arrived)
            if not _missing(doc, ["id", "ok"], m.topic, arrived):
                arrived.add(rest[0], StreamKind.COMMAND_REPLY, (doc["id"], doc["ok"]))
            return True
        if len(rest) == 2 and rest[1] in ("status", "state"):
            device, what = rest
            doc = _json(m, arrived)
            self._retained(m, arrived)
            if what == "status" and not _missing(doc, ["state", "ts", "reason"], m.topic, arrived):
                arrived.add(device, StreamKind.DEVICE_STATUS, (doc["state"], doc["reason"]))
            if what == "state" and not _missing(doc, ["state"], m.topic, arrived):
                arrived.add(device, StreamKind.STATE, doc["state"])
            return True
        return self._stream(m, variant, arrived)

    def _retained(self, m: Received, arrived: Arrived) -> None:
        """The contract: statuses and the machine state are retained (where the platform keeps
        retained messages: AWS and Azure do not)."""
        if not self.retained and m.retain:
            arrived.problems.append(f"{m.topic}: retained, but the platform keeps none")

    def stream_of_topic(self, topic: str, variant: int) -> tuple[str, str] | None:
        """(device, "data" | "event") of a data or event topic of this variant."""
        rest = topic[len(self.prefix(variant)) + 1 :].split("/")
        if len(rest) == 2 and rest[1] in ("data", "event"):
            return rest[0], rest[1]
        return None

    def _stream(self, m: Received, variant: int, arrived: Arrived) -> bool:
        found = self.stream_of_topic(m.topic, variant)
        if found is None:
            return False
        device, stream = found
        doc = _json(m, arrived)
        if m.retain:
            arrived.problems.append(f"{m.topic}: data and events are not retained")
        event_keys = ["event", "alarm", "tag", "severity"]
        if _agent_body(m, device, stream, doc, event_keys, arrived) and (
            doc["agent"] != AGENT_ID or doc["device"] != device
        ):
            arrived.problems.append(f"{m.topic}: agent/device {doc['agent']}/{doc['device']}")
        return True


class JsonTemplateDialect(JsonDialect):
    """json with ``topic_template`` (docs/platforms/json.md): data and
    events where the template puts them, statuses and commands under ``topic_prefix``. The
    reload changes the template (and places the added device in another area)."""

    TEMPLATES: ClassVar[tuple[str, str]] = (
        "{site}/{area}/{line}/{device}/data",
        "{site}/{area}/{device}/{kind}",
    )
    PLACEMENT: ClassVar[tuple[dict[str, Any], dict[str, Any]]] = ({}, {"m3": {"area": "paint"}})
    SITE = {"site": "hh", "area": "press", "line": "l1"}

    def _platform(self) -> Subscriber:
        return Subscriber(self.broker.port, ["edge/test-gw/#", "hh/#"], "platform")

    def agent(self) -> dict[str, Any]:
        return dict(self.SITE)

    def mqtt(self, variant: int) -> dict[str, Any]:
        options: dict[str, Any] = {"topic_template": self.TEMPLATES[variant]}
        if self.PLACEMENT[variant]:
            options["placement"] = self.PLACEMENT[variant]
        return {"json": options}

    def prefix(self, variant: int) -> str:
        return f"edge/{AGENT_ID}"

    def decode(self, messages: Sequence[Received], variant: int | None = None) -> Arrived:
        # statuses and commands once (one prefix for both variants), data by template
        arrived = Arrived()
        for m in messages:
            if m.topic.startswith(self.prefix(0) + "/"):
                self._one(m, 0, arrived)
                continue
            for v in self.variants(variant):
                if self._stream(m, v, arrived):
                    break
        return arrived

    def render(self, variant: int, device: str, kind: str) -> str:
        """Where the template of ``variant`` puts ``device``'s stream ``kind`` (a device outside
        the placement takes the agent's fields)."""
        fields = {**self.SITE, **self.PLACEMENT[variant].get(device, {}), "device": device}
        template = self.TEMPLATES[variant]
        if "{kind}" in template:
            return template.format(**fields, kind=kind)
        topic = template.format(**fields)
        return topic if kind == "data" else f"{topic.rsplit('/', 1)[0]}/{kind}"

    def stream_of_topic(self, topic: str, variant: int) -> tuple[str, str] | None:
        levels = topic.split("/")
        pattern = self.TEMPLATES[variant].split("/")
        if len(levels) != len(pattern):
            return None
        found: dict[str, str] = {}
        for level, want in zip(levels, pattern, strict=True):
            if want.startswith("{"):
                found[want.strip("{}")] = level
            elif want != level and not (want == "data" and level == "event"):
                return None
        device = found.get("device")
        kind = found.get("kind", levels[-1])
        if device is None or kind not in ("data", "event"):
            return None
        if self.render(variant, device, kind) != topic:
            return None
        return device, kind


class AwsDialect(JsonDialect):
    """AWS IoT Core (docs/platforms/aws.md): the contract's topics and payloads under
    ``topic_prefix``, nothing retained, mutual TLS with the thing's certificate against a policy
    limited to the prefix. The reload changes the prefix."""

    format = "aws"
    PREFIXES = ("edge/line1", "edge/line2")
    retained = False

    def _broker(self) -> Mosquitto:
        broker, self.pki = aws_broker(self.workdir / "broker", "edge")
        return broker

    def _platform(self) -> Subscriber:
        return TlsSubscriber(self.broker.port, ["edge/#"], "iot-rule").with_tls(self.pki)

    def mqtt(self, variant: int) -> dict[str, Any]:
        tls = {
            "ca_file": str(self.pki / "ca.pem"),
            "cert_file": str(self.pki / "client.pem"),
            "key_file": str(self.pki / "client.key"),
        }
        return {"format": "aws", "tls": tls, "topic_prefix": self.PREFIXES[variant]}


# -- Azure IoT Hub ---------------------------------------------------------------------------------

AZURE_HUBS = ("contoso.azure-devices.net", "fabrikam.azure-devices.net")
AZURE_KEY = base64.b64encode(b"a device key of 32 bytes length!").decode()


def _azure_user(hub: str) -> str:
    return f"{hub}/{AZURE_DEVICE}/?api-version=2021-04-12"


class AzureDialect(Dialect):
    """Azure IoT Hub (docs/platforms/azure.md): device-to-cloud messages whose property bag says
    agent, device, seq and type; direct method ``write``. The reload moves the device to another
    hub (``azure.hub``: its user name and SAS token)."""

    format = "azure"
    keyed_by_seq = True
    says_offline = True
    env = {"AZ_KEY": AZURE_KEY}
    EVENTS = f"devices/{AZURE_DEVICE}/messages/events/"

    def _broker(self) -> Mosquitto:
        acl = "".join(
            f"user {_azure_user(hub)}\n"
            f"topic write {self.EVENTS}#\n"
            "topic read $iothub/methods/POST/#\n"
            "topic write $iothub/methods/res/#\n\n"
            for hub in AZURE_HUBS
        )
        acl += "user hub\ntopic readwrite #\ntopic readwrite $iothub/#\n"
        return acl_broker(self.workdir / "broker", acl)

    def _platform(self) -> Subscriber:
        topics = [f"{self.EVENTS}#", "$iothub/methods/res/#"]
        return IotHubResponder(self.broker.port, topics, client_id="hub")

    def mqtt(self, variant: int) -> dict[str, Any]:
        return {
            "format": "azure",
            "client_id": AZURE_DEVICE,
            "password_env": "AZ_KEY",
            "azure": {"hub": AZURE_HUBS[variant]},
        }

    def _send(self, cmd_id: str, device: str, tag: str, value: Any) -> None:
        assert isinstance(self.platform, IotHubResponder)
        self.platform.invoke("write", cmd_id, {"device": device, "write": {tag: value}})

    def decode(self, messages: Sequence[Received], variant: int | None = None) -> Arrived:
        """Messages do not say the hub: both variants read the same (see options_applied)."""
        arrived = Arrived()
        for m in messages:
            if m.topic.startswith("$iothub/methods/res/"):
                status, _, query = m.topic[len("$iothub/methods/res/") :].partition("/")
                rid = urllib.parse.parse_qs(query.lstrip("?")).get("$rid", [""])[0]
                doc = _json(m, arrived)
                sent = self.sent.get(rid)
                if sent is not None and not _missing(doc, ["id", "ok"], m.topic, arrived):
                    ok = status == "200" and doc["ok"] is True
                    arrived.add(sent.device, StreamKind.COMMAND_REPLY, (rid, ok))
                continue
            if not m.topic.startswith(self.EVENTS):
                continue
            bag = urllib.parse.parse_qs(m.topic[len(self.EVENTS) :])
            props = {k: v[0] for k, v in bag.items()}
            if props.get("$.ct") != "application/json" or m.retain:
                arrived.problems.append(f"{m.topic}: no JSON content type, or retained")
            if props.get("agent") != AGENT_ID:
                arrived.problems.append(f"{m.topic}: no agent property")
            kind, device = props.get("type"), props.get("device")
            doc = _json(m, arrived)
            if kind == "status" and device is None:
                if not _missing(doc, ["online"], m.topic, arrived):
                    arrived.add(GATEWAY, StreamKind.GATEWAY_STATUS, doc["online"])
            elif device is None:
                arrived.problems.append(f"{m.topic}: no device property")
            elif kind == "status":
                if not _missing(doc, ["state", "reason"], m.topic, arrived):
                    arrived.add(device, StreamKind.DEVICE_STATUS, (doc["state"], doc["reason"]))
            elif kind == "state":
                if not _missing(doc, ["state"], m.topic, arrived):
                    arrived.add(device, StreamKind.STATE, doc["state"])
            elif kind in ("data", "event"):
                event_keys = ["event", "alarm", "severity"]
                if _agent_body(m, device, kind, doc, event_keys, arrived) and (
                    props.get("seq") != str(doc["seq"]) or doc["device"] != device
                ):
                    arrived.problems.append(f"{m.topic}: properties and body disagree")
            else:
                arrived.problems.append(f"{m.topic}: unknown message type {kind!r}")
        return arrived

    def options_applied(self, messages: Sequence[Received], added: str) -> list[str]:
        if f"u'{_azure_user(AZURE_HUBS[1])}'" in self.broker_log():
            return []
        return [f"the agent never signed in to {AZURE_HUBS[1]} after the reload"]


# -- ThingsBoard -----------------------------------------------------------------------------------

TB_TYPES: tuple[dict[str, Any], dict[str, Any]] = (
    {"device_type": "Machine"},
    {"device_type": "Machine", "device_types": {"m3": "Mixer"}},
)


class ThingsBoardDialect(Dialect):
    """ThingsBoard's gateway API (docs/platforms/thingsboard.md): telemetry
    ``{device: [{ts, values}]}`` with alarm events as ``event.<alarm>`` keys, device status and
    machine state as client attributes, RPC ``write``. The gateway's own connectivity is its MQTT
    session; what the agent says at each connect is the announcement of its devices
    (``v1/gateway/connect``). The reload gives the added device a type of its own
    (``device_types``)."""

    format = "thingsboard"
    env = {"TB_PASS": GATEWAY_PASSWORD}

    def _broker(self) -> Mosquitto:
        return thingsboard_broker(self.workdir / "broker")

    def _platform(self) -> Subscriber:
        return ThingsBoardResponder(self.broker.port, ["v1/gateway/#"], client_id="thingsboard")

    def mqtt(self, variant: int) -> dict[str, Any]:
        return {
            "format": "thingsboard",
            "username": GATEWAY_USER,
            "password_env": "TB_PASS",
            "protocol": "3.1.1",
            "thingsboard": TB_TYPES[variant],
        }

    def _send(self, cmd_id: str, device: str, tag: str, value: Any) -> None:
        assert isinstance(self.platform, ThingsBoardResponder)
        self.platform.rpc(device, int(cmd_id[1:]), "write", {tag: value})

    def decode(self, messages: Sequence[Received], variant: int | None = None) -> Arrived:
        arrived = Arrived()
        for m in messages:
            doc = _json(m, arrived)
            if m.topic == "v1/gateway/connect":
                if not _missing(doc, ["device"], m.topic, arrived):
                    arrived.add(GATEWAY, StreamKind.GATEWAY_STATUS, True)
            elif m.topic == "v1/gateway/rpc":
                reply = isinstance(doc, dict) and "id" in doc  # else the platform's own call
                if reply and not _missing(doc, ["device", "data"], m.topic, arrived):
                    ok = doc["data"].get("success") is True
                    arrived.add(doc["device"], StreamKind.COMMAND_REPLY, (f"w{doc['id']}", ok))
            elif m.topic == "v1/gateway/attributes" and isinstance(doc, dict):
                for device, attrs in doc.items():
                    if "state" in attrs:
                        status = (attrs["state"], attrs.get("reason"))
                        arrived.add(device, StreamKind.DEVICE_STATUS, status)
                    if "machine_state" in attrs:
                        arrived.add(device, StreamKind.STATE, attrs["machine_state"])
                    # tag metadata after each connect: <tag>.unit, <tag>.description
                    meta = {k for k in attrs if k.endswith((".unit", ".description"))}
                    if not {"state", "machine_state"} & set(attrs) and set(attrs) != meta:
                        arrived.problems.append(f"attributes of {device}: {attrs}")
            elif m.topic == "v1/gateway/telemetry" and isinstance(doc, dict):
                self._telemetry(m, doc, arrived)
        return arrived

    @staticmethod
    def _telemetry(m: Received, doc: dict[str, Any], arrived: Arrived) -> None:
        wire = m.payload
        for device, entries in doc.items():
            for entry in entries:
                if _missing(entry, ["ts", "values"], f"telemetry of {device}", arrived):
                    continue
                values = entry["values"]
                events = {k: v for k, v in values.items() if k.startswith("event.")}
                data = {k: v for k, v in values.items() if not k.startswith("event.")}
                if events and data:
                    arrived.problems.append(f"telemetry of {device} mixes events and data")
                for key, event in events.items():
                    where = f"telemetry {key} of {device}"
                    if _missing(event, ["event", "alarm", "severity", "values"], where, arrived):
                        continue
                    if key != f"event.{event['alarm']}":
                        arrived.problems.append(f"{where}: key and alarm name disagree")
                    arrived.add(device, StreamKind.EVENT, event)
                    arrived.batch(device, "event", _content(entry["ts"], event), wire)
                if data or not events:
                    readable = {k: v for k, v in data.items() if not k.endswith(".quality")}
                    arrived.values(device, readable, state_in_data=False)
                    arrived.batch(device, "data", _content(entry["ts"], data), wire)

    def options_applied(self, messages: Sequence[Received], added: str) -> list[str]:
        types = [
            doc.get("type")
            for m in messages
            if m.topic == "v1/gateway/connect"
            and isinstance(doc := json.loads(m.payload), dict)
            and doc.get("device") == added
        ]
        if types and types[-1] == TB_TYPES[1]["device_types"][added]:
            return []
        return [f"{added} was announced with the types {types}, not its own"]


# -- Alibaba Cloud IoT Platform --------------------------------------------------------------------

ALI_SECRET = "ga7XA6KdlEeiPXQPpRbAjOZXwG8ydgSe"
#: per variant: our device -> its DeviceName on the platform, where it is not the device's name
ALI_NAMES = PlatformNames(({}, {"m3": "machine-3"}))


class AlibabaDialect(Dialect):
    """Alibaba Cloud IoT Platform, Alink JSON (docs/platforms/alibaba.md): sub-devices
    registered, added and logged in at each connect (their online state is the login within the
    gateway's session: they go offline with the gateway),
    ``thing.event.property.pack.post`` with properties and TSL events, ``property.set`` writes.
    The platform has no retained messages: the machine state is the ``state`` property. The
    reload gives the added device another DeviceName (``alibaba.devices``)."""

    format = "alibaba"
    shows_empty_batches = False  # tags that could not be read are left out
    env = {"ALI_SECRET": ALI_SECRET}

    def _broker(self) -> Mosquitto:
        acl = (
            f"user {GW_DN}&{GW_PK}\n"
            f"topic readwrite /sys/{GW_PK}/{GW_DN}/#\n"
            f"topic readwrite /ext/session/{GW_PK}/{GW_DN}/#\n"
            f"topic read /sys/{SUB_PK}/+/thing/service/property/set\n"
            f"topic write /sys/{SUB_PK}/+/thing/service/property/set_reply\n"
            # services (method calls, docs/platforms/alibaba.md) and their <method>_reply
            f"topic readwrite /sys/{SUB_PK}/+/thing/service/+\n"
            "\nuser platform\ntopic readwrite #\n"
        )
        return acl_broker(self.workdir / "broker", acl)

    def _platform(self) -> Subscriber:
        return AlibabaResponder(self.broker.port, ["/sys/#", "/ext/#"], client_id="platform")

    def mqtt(self, variant: int) -> dict[str, Any]:
        options: dict[str, Any] = {
            "product_key": GW_PK,
            "device_name": GW_DN,
            "sub_product_key": SUB_PK,
        }
        if renamed := ALI_NAMES.renamed[variant]:
            options["devices"] = {d: {"device_name": n} for d, n in renamed.items()}
        return {
            "format": "alibaba",
            "password_env": "ALI_SECRET",
            "protocol": "3.1.1",
            "alibaba": options,
        }

    def _send(self, cmd_id: str, device: str, tag: str, value: Any) -> None:
        assert isinstance(self.platform, AlibabaResponder)
        self.platform.property_set(ALI_NAMES.of(device, self.variant), cmd_id, {tag: value})

    def decode(self, messages: Sequence[Received], variant: int | None = None) -> Arrived:
        arrived = Arrived()
        ours = ALI_NAMES.ours(variant)
        sys = f"/sys/{GW_PK}/{GW_DN}/"
        session = f"/ext/session/{GW_PK}/{GW_DN}/"
        for m in messages:
            topic = m.topic
            if topic == f"{sys}thing/sub/register":
                doc = _json(m, arrived)
                if not _missing(doc, ["id", "params", "method"], topic, arrived):
                    # A new session of the gateway: its sub-devices went offline with it, and
                    # are online again once logged in.
                    arrived.add(GATEWAY, StreamKind.GATEWAY_STATUS, True)
                    names = [ours(p["deviceName"]) for p in doc["params"]]
                    for device in {*arrived.kinds, *names} - {GATEWAY, None}:
                        assert device is not None
                        said = arrived.of(device, StreamKind.DEVICE_STATUS)
                        if not said or said[-1][0] != "down":
                            arrived.add(device, StreamKind.DEVICE_STATUS, ("down", None))
            elif topic in (f"{session}combine/login", f"{session}combine/logout"):
                doc = _json(m, arrived)
                if _missing(doc, ["id", "params"], topic, arrived):
                    continue
                device = ours(doc["params"].get("deviceName", ""))
                state = "up" if topic.endswith("/login") else "down"
                if device is not None:
                    arrived.add(device, StreamKind.DEVICE_STATUS, (state, None))
            elif topic == f"{sys}thing/event/property/pack/post":
                doc = _json(m, arrived)
                if _missing(doc, ["id", "version", "params", "method"], topic, arrived):
                    continue
                for sub in doc["params"].get("subDevices", []):
                    self._sub(m, sub, ours, arrived)
            elif topic.endswith("/thing/service/property/set_reply"):
                levels = topic.split("/")
                device = ours(levels[3])
                doc = _json(m, arrived)
                if device is None or _missing(doc, ["id", "code", "message"], topic, arrived):
                    continue
                arrived.add(device, StreamKind.COMMAND_REPLY, (doc["id"], doc["code"] == 200))
        return arrived

    @staticmethod
    def _sub(
        m: Received, sub: dict[str, Any], ours: Callable[[str], str | None], arrived: Arrived
    ) -> None:
        where = f"{m.topic} sub-device"
        if _missing(sub, ["identity", "properties", "events"], where, arrived):
            return
        identity = sub["identity"]
        if identity.get("productKey") != SUB_PK:
            arrived.problems.append(f"{where}: product key {identity}")
        device = ours(identity.get("deviceName", ""))
        if device is None:
            return
        props, events = sub["properties"], sub["events"]
        if props or not events:
            times = {p.get("time") for p in props.values()}
            if len(times) > 1:
                arrived.problems.append(f"{where}: properties of several times in one batch")
            values = {k: p["value"] for k, p in props.items()}
            arrived.values(device, values, state_in_data=True)
            if props:
                arrived.batch(device, "data", _content(times.pop(), values), m.payload)
        for name, event in events.items():
            if _missing(event, ["value", "time"], f"{where} event {name}", arrived):
                continue
            doc = event["value"]
            if name != "event" or _missing(doc, ["event", "alarm", "severity"], where, arrived):
                continue
            arrived.add(device, StreamKind.EVENT, doc)
            arrived.batch(device, "event", _content(event["time"], doc), m.payload)

    def options_applied(self, messages: Sequence[Received], added: str) -> list[str]:
        name = ALI_NAMES.of(added, 1)
        logins = [
            json.loads(m.payload)["params"].get("deviceName")
            for m in messages
            if m.topic.endswith("/combine/login")
        ]
        return [] if name in logins else [f"{added} never logged in as {name}: {logins}"]

    def problems(self, messages: Sequence[Received]) -> list[str]:
        found = super().problems(messages)
        assert isinstance(self.platform, AlibabaResponder)
        if self.platform.bad_signs:
            found.append(f"logins with a wrong signature: {self.platform.bad_signs}")
        # every login is signed with the secret the platform issued at registration
        for m in messages:
            if m.topic.endswith("/combine/login"):
                params = json.loads(m.payload)["params"]
                secret = self.platform.secrets.get(params["deviceName"])
                signed = {k: params[k] for k in ("clientId", "deviceName", "productKey")}
                signed["timestamp"] = params["timestamp"]
                if secret is None or sign(secret, signed) != params["sign"]:
                    found.append(f"login of {params['deviceName']} not signed as issued")
        return found


# -- Huawei Cloud IoTDA ----------------------------------------------------------------------------

HW_PRODUCT = "prod01"
#: per variant: our device -> its IoTDA device id, where it is not <product>_<name>
HW_IDS = PlatformNames(({}, {"m3": "mixer-0003"}), prefix=f"{HW_PRODUCT}_")


class HuaweiDialect(Dialect):
    """Huawei Cloud IoTDA (docs/platforms/huawei.md): sub-device property reports (service
    ``edge``; alarm events the service ``event``), ONLINE/OFFLINE by ``sub_device_update_status``
    (all of them at each connect: the gateway's own announcement), command ``write``. The
    machine state is the ``state`` property. The reload gives the added device its own id
    (``huawei.devices``)."""

    format = "huawei"
    # A batch with nothing readable is an empty properties report, and IoTDA's event_time has
    # whole seconds: two of them in one second (a window that closed with nothing read, beside
    # the poll's own batch) cannot be told apart.
    shows_empty_batches = False
    env = {"HW_SECRET": "iotda-gateway-secret"}
    BASE = f"$oc/devices/{HW_GATEWAY}/sys/"

    def _broker(self) -> Mosquitto:
        acl = (
            f"user {HW_GATEWAY}\n"
            f"topic write {self.BASE}gateway/sub_devices/properties/report\n"
            f"topic write {self.BASE}events/up\n"
            f"topic read {self.BASE}commands/#\n"
            f"topic write {self.BASE}commands/response/#\n"
            "\nuser iotda\ntopic readwrite $oc/#\n"
        )
        return acl_broker(self.workdir / "broker", acl)

    def _platform(self) -> Subscriber:
        return IotdaResponder(self.broker.port, ["$oc/#"], client_id="iotda")

    def mqtt(self, variant: int) -> dict[str, Any]:
        options: dict[str, Any] = {"device_id": HW_GATEWAY, "sub_product_id": HW_PRODUCT}
        if renamed := HW_IDS.renamed[variant]:
            options["devices"] = dict(renamed)
        return {
            "format": "huawei",
            "password_env": "HW_SECRET",
            "protocol": "3.1.1",
            "huawei": options,
        }

    def _send(self, cmd_id: str, device: str, tag: str, value: Any) -> None:
        assert isinstance(self.platform, IotdaResponder)
        self.platform.command(cmd_id, HW_IDS.of(device, self.variant), "write", {tag: value})

    def decode(self, messages: Sequence[Received], variant: int | None = None) -> Arrived:
        arrived = Arrived()
        ours = HW_IDS.ours(variant)
        for m in messages:
            if m.topic == f"{self.BASE}events/up":
                doc = _json(m, arrived)
                if _missing(doc, ["object_device_id", "services"], m.topic, arrived):
                    continue
                for service in doc["services"]:
                    if service.get("event_type") != "sub_device_update_status":
                        arrived.problems.append(f"{m.topic}: event {service}")
                        continue
                    statuses = service["paras"]["device_statuses"]
                    if len(statuses) > 1:  # every sub-device at once: the gateway's connect
                        arrived.add(GATEWAY, StreamKind.GATEWAY_STATUS, True)
                    for s in statuses:
                        device = ours(s["device_id"])
                        if device is not None:
                            state = {"ONLINE": "up", "OFFLINE": "down"}.get(s["status"], "?")
                            arrived.add(device, StreamKind.DEVICE_STATUS, (state, None))
            elif m.topic == f"{self.BASE}gateway/sub_devices/properties/report":
                doc = _json(m, arrived)
                if _missing(doc, ["devices"], m.topic, arrived):
                    continue
                for entry in doc["devices"]:
                    self._entry(m, entry, ours, arrived)
            elif m.topic.startswith(f"{self.BASE}commands/response/request_id="):
                cmd_id = m.topic.rpartition("=")[2]
                doc = _json(m, arrived)
                sent = self.sent.get(cmd_id)
                if sent is None or _missing(doc, ["result_code"], m.topic, arrived):
                    continue
                ok = doc["result_code"] == 0
                arrived.add(sent.device, StreamKind.COMMAND_REPLY, (cmd_id, ok))
        return arrived

    @staticmethod
    def _entry(
        m: Received, entry: dict[str, Any], ours: Callable[[str], str | None], arrived: Arrived
    ) -> None:
        if _missing(entry, ["device_id", "services"], f"{m.topic} device", arrived):
            return
        device = ours(entry["device_id"])
        if device is None:
            return
        for service in entry["services"]:
            where = f"{m.topic} service of {device}"
            if _missing(service, ["service_id", "properties", "event_time"], where, arrived):
                continue
            if not re.fullmatch(r"\d{8}T\d{6}Z", service["event_time"]):
                arrived.problems.append(f"{where}: event_time {service['event_time']}")
            props = service["properties"]
            key = _content(service["event_time"], props)
            if service["service_id"] == "edge":
                arrived.values(device, props, state_in_data=True)
                arrived.batch(device, "data", key, m.payload)
            elif service["service_id"] == "event":
                if not _missing(props, ["event", "alarm", "severity"], where, arrived):
                    arrived.add(device, StreamKind.EVENT, props)
                    arrived.batch(device, "event", key, m.payload)
            else:
                arrived.problems.append(f"{where}: unknown service {service['service_id']}")

    def options_applied(self, messages: Sequence[Received], added: str) -> list[str]:
        arrived = self.decode(messages, 1)
        if arrived.of(added, StreamKind.DATA):
            return []
        return [f"no report of {added} under its id {HW_IDS.of(added, 1)}"]


# -- Sparkplug B -----------------------------------------------------------------------------------

SP_GROUPS = ("plant1", "plant2")
_SP_SIGNED = {1: 8, 2: 16, 3: 32}


class SparkplugDialect(Dialect):
    """Sparkplug B 3.0 (docs/platforms/sparkplug.md), every payload decoded by protoc: NBIRTH/NDEATH
    (the gateway), DBIRTH/DDEATH (a device up/down; a device never born is not online), DDATA by
    alias, alarm events as metrics ``Events/<alarm>/<field>``, the machine state as the
    ``state`` metric (its current value in the DBIRTH, changes in DDATA). DCMD has no reply:
    the written value showing up in the device's data is the answer. The reload moves the node
    to another group."""

    format = "sparkplug"
    shows_empty_batches = False  # the all-bad batch of a lost device is said by its DDEATH
    says_offline = True

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self._decoded: dict[tuple[str, bytes], SparkplugDecoded] = {}
        self.known: set[str] = set()

    def _broker(self) -> Mosquitto:
        # Births are QoS 0: a host that is reconnecting after a broker restart must still get
        # them (a real host would ask for a rebirth instead).
        extra = "log_type all\nqueue_qos0_messages true\n"
        return Mosquitto(self.workdir / "broker", extra_conf=extra)

    def _platform(self) -> Subscriber:
        return Subscriber(self.broker.port, ["spBv1.0/#"], client_id="host")

    def mqtt(self, variant: int) -> dict[str, Any]:
        return {"format": "sparkplug", "sparkplug": {"group_id": SP_GROUPS[variant]}}

    def _send(self, cmd_id: str, device: str, tag: str, value: Any) -> None:
        topic = f"spBv1.0/{SP_GROUPS[self.variant]}/DCMD/{AGENT_ID}/{device}"
        # by name (docs/platforms/sparkplug.md: by name or alias), UInt16
        body = f'metrics {{ name: "{tag}" datatype: 6 int_value: {int(value)} }}'
        self.publish(topic, sparkplug_encode(body))

    def _decode_one(self, m: Received) -> SparkplugDecoded:
        key = (m.topic, m.payload)
        found = self._decoded.get(key)
        if found is None:
            found = self._decoded[key] = SparkplugDecoded(m.topic, m.payload)
        return found

    def decode(self, messages: Sequence[Received], variant: int | None = None) -> Arrived:
        arrived = Arrived()
        groups = {SP_GROUPS[v] for v in self.variants(variant)}
        names: dict[tuple[str, str], dict[int, tuple[str, int]]] = {}  # (group, device)
        # A DBIRTH followed by the device's DDEATH with no DDATA between is a device that is
        # down, born only so that the host knows its metrics: the host lists it as offline.
        births: dict[str, int] = {}  # device -> index of its pending "up"
        for m in messages:
            levels = m.topic.split("/")
            if len(levels) < 4 or levels[1] not in groups or levels[3] != AGENT_ID:
                continue
            group, kind = levels[1], levels[2]
            if kind in ("NCMD", "DCMD"):
                continue  # the host's own commands
            d = self._decode_one(m)
            if kind == "NBIRTH":
                arrived.add(GATEWAY, StreamKind.GATEWAY_STATUS, True)
            elif kind == "NDEATH":
                # the node's devices die with it (a birth without data was a dead one's)
                arrived.add(GATEWAY, StreamKind.GATEWAY_STATUS, False)
                for device, born in births.items():
                    del arrived.of(device, StreamKind.DEVICE_STATUS)[born]
                births.clear()
                for states in arrived.kinds.values():
                    said = states.get(StreamKind.DEVICE_STATUS)
                    if said and said[-1][0] == "up":
                        said.append(("down", None))
            elif kind == "DBIRTH" and d.device is not None:
                aliases = names.setdefault((group, d.device), {})
                for metric in d.metrics:
                    if "name" in metric and "alias" in metric:
                        aliases[int(metric["alias"])] = (metric["name"], int(metric["datatype"]))
                    if metric.get("name") == "state" and "string_value" in metric:
                        # the current machine state, as a late host learns it
                        arrived.add(d.device, StreamKind.STATE, metric["string_value"])
                births[d.device] = len(arrived.of(d.device, StreamKind.DEVICE_STATUS))
                arrived.add(d.device, StreamKind.DEVICE_STATUS, ("up", None))
            elif kind == "DDEATH" and d.device is not None:
                if d.device in births:
                    del arrived.of(d.device, StreamKind.DEVICE_STATUS)[births.pop(d.device)]
                arrived.add(d.device, StreamKind.DEVICE_STATUS, ("down", None))
            elif kind == "DDATA" and d.device is not None:
                births.pop(d.device, None)
                self._ddata(m, d, names.get((group, d.device), {}), arrived)
        # A device the host was never told about (no DBIRTH) is not online.
        for device in {d for v in self.variants(variant) for d in self.devices[v]}:
            if not arrived.of(device, StreamKind.DEVICE_STATUS):
                arrived.add(device, StreamKind.DEVICE_STATUS, ("down", None))
        for cmd_id, sent in self.sent.items():
            # the answer to a DCMD: the value written, in the device's data
            if any(v.get(sent.tag) == sent.value for v in arrived.of(sent.device, StreamKind.DATA)):
                arrived.add(sent.device, StreamKind.COMMAND_REPLY, (cmd_id, True))
        return arrived

    def _ddata(
        self,
        m: Received,
        d: SparkplugDecoded,
        aliases: dict[int, tuple[str, int]],
        arrived: Arrived,
    ) -> None:
        assert d.device is not None
        values: dict[str, Any] = {}
        stamped: list[tuple[str, int, Any]] = []
        for metric in d.metrics:
            alias = metric.get("alias")
            if "name" in metric or alias is None:
                arrived.problems.append(f"{m.topic}: DDATA metric not by alias only: {metric}")
                continue
            known = aliases.get(int(alias))
            if known is None:
                arrived.problems.append(f"{m.topic}: alias {alias} not in a DBIRTH")
                continue
            name, datatype = known
            value = _sp_value(metric, datatype)
            values[name] = value
            stamped.append((name, int(metric.get("timestamp", 0)), value))
        events = {k: v for k, v in values.items() if k.startswith("Events/")}
        data = {k: v for k, v in values.items() if not k.startswith("Events/")}
        key = _content(sorted(stamped))
        if events:
            docs: dict[str, dict[str, Any]] = {}
            for name, value in events.items():
                _, alarm, fld = name.split("/", 2)
                docs.setdefault(alarm, {"alarm": alarm})[fld] = value
            for doc in docs.values():
                if _missing(doc, ["event", "severity", "active"], m.topic, arrived):
                    continue
                arrived.add(d.device, StreamKind.EVENT, doc)
            arrived.batch(d.device, "event", key, m.payload)
        if data:
            arrived.values(d.device, data, state_in_data=True)
            arrived.batch(d.device, "data", key, m.payload)

    def problems(self, messages: Sequence[Received]) -> list[str]:
        """Sparkplug's own gap detection: in each session (NBIRTH seq 0 to the next NBIRTH),
        every message after the NBIRTH takes the next seq, 255 wrapping to 0. Byte-identical
        repeats (QoS 1 redelivery after a broker restart) are dropped first."""
        found = super().problems(messages)
        seen: set[tuple[str, bytes]] = set()
        expected: int | None = None
        for m in messages:
            levels = m.topic.split("/")
            if len(levels) < 4 or levels[2] in ("NCMD", "DCMD", "NDEATH", "STATE"):
                continue
            if (m.topic, m.payload) in seen:
                continue
            seen.add((m.topic, m.payload))
            seq = self._decode_one(m).seq
            if levels[2] == "NBIRTH":
                if seq != 0:
                    found.append(f"NBIRTH with seq {seq}")
                expected = 1
                continue
            if expected is not None and seq != expected:
                found.append(f"{m.topic}: seq {seq}, expected {expected}")
            expected = None if seq is None else (seq + 1) % 256
        return found


def _sp_value(metric: dict[str, Any], datatype: int) -> Any:
    if metric.get("is_null"):
        return None
    for fld in ("int_value", "long_value", "float_value", "double_value"):
        if fld in metric:
            value = metric[fld]
            bits = _SP_SIGNED.get(datatype)
            if bits is not None and value >= 1 << (bits - 1):
                value -= 1 << bits
            return value
    if "boolean_value" in metric:
        return metric["boolean_value"]
    if "string_value" in metric:
        return metric["string_value"]
    return metric.get("bytes_value")


#: Every format's adapter, by ``mqtt.format`` name, plus the variants the matrix also runs.
DIALECTS: dict[str, type[Dialect]] = {
    "json": JsonDialect,
    "sparkplug": SparkplugDialect,
    "thingsboard": ThingsBoardDialect,
    "aws": AwsDialect,
    "azure": AzureDialect,
    "alibaba": AlibabaDialect,
    "huawei": HuaweiDialect,
}
#: Variants of a format the matrix runs as columns of their own.
VARIANTS: dict[str, type[Dialect]] = {"json-templates": JsonTemplateDialect}
