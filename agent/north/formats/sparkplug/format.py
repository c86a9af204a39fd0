"""Sparkplug B 3.0: the edge node's session rules and its protobuf payloads.

Rules implemented (specification chapters 4 to 6); every edge-node MUST of the Eclipse Sparkplug
TCK is checked on the wire in tests/test_sparkplug_tck.py (one test per ``tck-id``):

* The will is NDEATH (QoS 1, not retained) with ``bdSeq`` (Int64). ``bdSeq`` is one more than
  the previous CONNECT packet's (0..255, persisted in ``data_dir``): ``will()`` only reads the
  pending number, ``connect_sent()`` consumes it once the CONNECT went out, so refused attempts
  during an outage cost nothing. The NBIRTH after that CONNECT carries the same ``bdSeq``.
* NBIRTH has ``seq`` 0, ``bdSeq`` and ``Node Control/Rebirth`` (Boolean false, no alias: a host
  must be able to ask for a rebirth without knowing an alias); every later message of the
  session takes the next ``seq``, wrapping 255 → 0. NDEATH carries no ``seq``.
* Right after the NBIRTH, before any data, a DBIRTH for every device whose metrics are known
  (declared tag types, or seen earlier): name, alias, datatype, current value (or ``is_null``)
  and, for a value that is not good, its ``Quality``; a device that is down then gets its DDEATH
  at once, so a host shows it offline rather than unknown. DDATA carries aliases only.
  A device whose metrics are not known yet is born with its first batch; a metric that appears
  later (a computed feature, an alarm event) or changes datatype re-births its device first, so
  every DDATA metric is in the latest DBIRTH of its device.
* Metrics of one message are in chronological order of their timestamps (a tag's own source
  timestamp where the device gave one, else the batch's).
* NCMD ``Node Control/Rebirth`` = true: NBIRTH (seq 0, same bdSeq) and the DBIRTHs again.
* A device going down: DDEATH (its values are stale from then on); its batches while down (all
  its tags bad, the machine state the agent derives) are said by it; its next batch with values:
  DBIRTH first. Backlog of a device that is down now goes out under a DBIRTH and is followed by
  a DDEATH again.
* With ``primary_host_id``: subscribe to ``spBv1.0/STATE/<id>`` and birth and publish only
  while the host says ``online: true``; a STATE older than one already seen in this MQTT session
  is ignored (a host keeps its timestamp per server, so one from another server says nothing).
  On ``online: false``: NDEATH, disconnect, connect again (to the next server), wait for the host.
* Buffered history goes out with ``is_historical`` true: a batch committed more than
  ``history_grace`` (2 s) before the session's NBIRTH (an outage's backlog, or what a restarted
  agent found in its buffer), or older than a batch of the same device already sent in this
  session (the backlog drains beside live data). The grace keeps the first polls of a starting
  agent, taken while it was still connecting, current.
* Alarm events (stream ``<device>/event``) become metrics ``Events/<alarm>/<field>`` of the
  device: ``active`` (Boolean, raise/clear), ``event``, ``severity``, ``tag``, ``mode``,
  ``condition`` (String), ``value``, ``measure``, ``mean``, ``stddev`` (Double), ``since``
  (DateTime) and the evidence ``values`` (DoubleArray), stamped with the event's time.
* Window aggregates, waveform features and the machine state (``state``, ``runtime.<state>``)
  are metrics of the device's data. The machine state's side document (``device_topic(device,
  "state")``) is not published outside the namespace: it sets those metrics' current values,
  which the device's DBIRTH carries.
* Quality property codes are the specification's: 0 for a bad reading, 500 (stale) for an
  uncertain one.
* Methods a device declares (``DeviceBase.method_names``) are String metrics ``Methods/<name>``
  and ``Methods/<name>/Result`` in its DBIRTH. A DCMD setting ``Methods/<name>`` (alone) to a
  JSON array of arguments calls the method; the agent's reply (``{"id", "ok", "status",
  "outputs"}`` or ``{"id", "ok": false, "error"}``) comes back as JSON in a DDATA of
  ``Methods/<name>/Result``. Writes are answered by the data itself, as before.

Deliberate choice: data (DDATA) uses ``mqtt.qos`` (1 by default) rather than the specification's
QoS 0, because a batch leaves the buffer only on PUBACK; set ``qos: 0`` for the letter of the
specification. Births and DDEATH are QoS 0, NDEATH QoS 1, as specified.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field

from agent.core.buffer import StoredBatch
from agent.core.record import decode_body
from agent.north.formats.base import (
    Command,
    Format,
    Message,
    Packed,
    Reaction,
    options_of,
    stream_of,
    tag_types,
    topic_prefix,
)
from agent.north.formats.meta import Meta, TagMeta, config_meta
from agent.north.formats.sparkplug import sparkplug_b_pb2
from agent.north.formats.sparkplug.bdseq import BdSeq
from agent.north.formats.sparkplug.values import choose, fits, get_value, set_value
from drivers.base import DeviceBase, Name, StrictModel

if TYPE_CHECKING:  # the config is built in app; a format reads it, never imports app at run time
    from agent.app.config.models import Config

#: The generated module has no type information; its names are checked by the tests.
pb: Any = sparkplug_b_pb2

log = logging.getLogger(__name__)

NAMESPACE = "spBv1.0"
REBIRTH = "Node Control/Rebirth"
BDSEQ = "bdSeq"
#: Metric name prefix of a device's event stream (``<device>/event`` in the buffer).
EVENT_PREFIX = "Events/"
#: The specification's Quality property codes (6.4.9): 0 BAD, 192 GOOD, 500 STALE.
QUALITY_BAD, QUALITY_STALE = 0, 500
_QUALITY = {"bad": QUALITY_BAD, "uncertain": QUALITY_STALE}


def _now_ms() -> int:
    return int(time.time() * 1000)


class _Device:
    """What the host application knows of a device in this session."""

    def __init__(self) -> None:
        self.types: dict[str, int] = {}  # metric name -> datatype, as born
        self.born = False
        self.status = "up"
        self.latest: dict[str, Any] = {}  # current (non-historical) values, for births
        self.stamps: dict[str, int] = {}  # ms of each current value
        self.quality: dict[str, int] = {}  # Quality code of current values that are not good
        self.newest_ms = 0  # newest batch timestamp sent in this session
        self.reborn = False  # a metric was added outside a batch: the next batch re-births


@dataclass(slots=True)
class _Row:
    """One buffered batch read for Sparkplug: metric values, Quality codes, timestamps."""

    device: str
    kind: str
    values: dict[str, Any]
    quality: dict[str, int] = field(default_factory=dict)
    stamps: dict[str, int] = field(default_factory=dict)  # metric -> ms where not the row's
    hints: dict[str, int] = field(default_factory=dict)  # metric -> datatype the stream fixes


def _event_type(key: str, value: Any) -> int | None:
    """The datatype of an event field, fixed per field so that raise and clear (an integer
    value one time, a fraction the next) never re-birth the device."""
    if isinstance(value, bool):
        return int(pb.Boolean)
    if isinstance(value, int | float):
        return int(pb.DateTime) if key == "since" and isinstance(value, int) else int(pb.Double)
    if isinstance(value, str):
        return int(pb.String)
    if isinstance(value, list):
        if all(isinstance(v, int | float) and not isinstance(v, bool) for v in value):
            return int(pb.DoubleArray)  # the evidence: numbers, possibly none
        if all(isinstance(v, str) for v in value):
            return int(pb.StringArray)
    return None  # anything else: the value's own type (JSON text)


def _event_row(device: str, kind: str, doc: dict[str, Any]) -> _Row:
    """An alarm event (``{"event": "raise"|"clear", "alarm", "tag", "severity", "values":
    [...], ...}``) as metrics ``Events/<alarm>/<field>`` plus ``Events/<alarm>/active``."""
    prefix = EVENT_PREFIX if kind == "event" else f"{kind}/"
    name = doc.get("alarm") or doc.get("name")
    base = f"{prefix}{name}" if isinstance(name, str) and name else prefix.rstrip("/")
    row = _Row(device, kind, {})
    if doc.get("event") in ("raise", "clear"):
        row.values[f"{base}/active"] = doc["event"] == "raise"
        row.hints[f"{base}/active"] = int(pb.Boolean)
    for key, value in doc.items():
        if key in ("ts", "alarm", "name"):
            continue  # ts is the metrics' timestamp, the alarm's name is in theirs
        metric = f"{base}/{key}"
        row.values[metric] = value
        hint = _event_type(key, value)
        if hint is not None:
            row.hints[metric] = hint
    return row


def _quality_code(text: Any) -> int:
    return _QUALITY.get(str(text).partition(":")[0].strip(), QUALITY_BAD)


def _read_row(row: StoredBatch) -> _Row:
    """The metrics of a buffered row; raises (ValueError, TypeError) on a record this format
    cannot read, before anything of the session changed, so the publisher can set the row aside
    without a hole in ``seq``."""
    device, kind = stream_of(row)
    doc = decode_body(row.body)
    if not isinstance(doc, dict):
        raise TypeError(f"buffered {kind} row is a JSON {type(doc).__name__}, not an object")
    values = doc.get("values", {})
    if kind != "data" and ("event" in doc or not isinstance(values, dict)):
        return _event_row(device, kind, doc)
    quality = doc.get("quality", {})
    stamps = doc.get("ts_source", {})
    if not isinstance(values, dict) or not isinstance(quality, dict):
        raise TypeError("buffered batch: values and quality must be JSON objects")
    out = _Row(
        device,
        kind,
        dict(values),
        {k: _quality_code(v) for k, v in quality.items()},
        {k: int(v) for k, v in stamps.items()} if isinstance(stamps, dict) else {},
    )
    if kind != "data":  # an older event record: {"values": {...}}
        pre = EVENT_PREFIX if kind == "event" else f"{kind}/"
        out.values = {f"{pre}{k}": v for k, v in out.values.items()}
        out.quality = {f"{pre}{k}": v for k, v in out.quality.items()}
        out.stamps = {f"{pre}{k}": v for k, v in out.stamps.items()}
    return out


def _quality_property(metric: Any, code: int) -> None:
    metric.properties.keys.append("Quality")
    metric.properties.values.add(type=pb.Int32, int_value=code)


#: Metric property names of a tag's unit and description in births (the names Ignition and
#: other Sparkplug hosts read; the specification reserves only ``Quality``).
ENG_UNIT = "engUnit"
DESCRIPTION = "description"


def _meta_properties(metric: Any, meta: TagMeta) -> None:
    """``engUnit`` and ``description`` (String) where the config gives them."""
    for key, text in ((ENG_UNIT, meta.unit), (DESCRIPTION, meta.description)):
        if text is not None:
            metric.properties.keys.append(key)
            metric.properties.values.add(type=pb.String, string_value=text)


#: The metric folder of a device's methods: ``Methods/<name>`` and ``Methods/<name>/Result``.
METHODS = "Methods/"
RESULT = "/Result"


def method_metrics(device: DeviceBase) -> dict[str, str]:
    """The String metrics a device's methods add to its births."""
    names = device.method_names()
    return {f"{METHODS}{n}{suffix}": "string" for n in names for suffix in ("", RESULT)}


class SparkplugOptions(StrictModel):
    """Options of ``format: sparkplug`` (Sparkplug B 3.0)."""

    group_id: Name = Field(description="Sparkplug group id")
    edge_node_id: Name | None = Field(default=None, description="edge node id; default agent.id")
    primary_host_id: Name | None = Field(
        default=None,
        description="publish only while this host application's STATE is online",
    )


class SparkplugFormat(Format):
    name = "sparkplug"
    Options = SparkplugOptions
    will_on_clean_stop = True

    @classmethod
    def from_config(cls, config: Config) -> SparkplugFormat:
        agent = config.agent
        sp = options_of(config.mqtt, cls.section_key(), SparkplugOptions)
        assert sp is not None  # the config requires the section with format: sparkplug
        return cls(
            sp.group_id,
            sp.edge_node_id or agent.id,
            Path(agent.data_dir),
            primary_host_id=sp.primary_host_id,
            tag_types={
                d.name: {**tag_types(d), **method_metrics(d)} for d in config.active_devices()
            },
            topic_prefix=topic_prefix(config),
            meta={
                d: {t: m for t, m in tags.items() if m.described}
                for d, tags in config_meta(config).items()
            },
        )

    def __init__(
        self,
        group_id: str,
        edge_node_id: str,
        state_dir: Path,
        primary_host_id: str | None = None,
        tag_types: Mapping[str, Mapping[str, str]] | None = None,
        topic_prefix: str | None = None,
        history_grace: float = 2.0,
        meta: Meta | None = None,
    ) -> None:
        """``meta`` (device: tag: unit, description) becomes metric properties ``engUnit``
        and ``description`` in the device's births."""
        self.group_id = group_id
        self.node_id = edge_node_id
        self.host_id = primary_host_id
        self.prefix = topic_prefix or f"edge/{edge_node_id}"
        self._declared = {d: dict(t) for d, t in (tag_types or {}).items()}
        self._meta = {d: dict(tags) for d, tags in (meta or {}).items()}
        self.bdseq = BdSeq(state_dir / "sparkplug-bdseq")
        self._seq = 0
        # Node Control/Rebirth has no alias (tck-id-operational-behavior-data-commands-rebirth-
        # name-aliases); bdSeq takes 0, device metrics the numbers after it, unique per node.
        self._aliases: dict[tuple[str, str], int] = {("", BDSEQ): 0}
        self._devices: dict[str, _Device] = {d: _Device() for d in self._declared}
        self._node_born = False
        self._birth_ms = 0
        self._grace_ms = int(history_grace * 1000)
        self._host_online = primary_host_id is None
        self._host_ts = -1
        self._ncmd = f"{NAMESPACE}/{group_id}/NCMD/{edge_node_id}"
        self._dcmd = f"{NAMESPACE}/{group_id}/DCMD/{edge_node_id}/"
        self._state = f"{NAMESPACE}/STATE/{primary_host_id}" if primary_host_id else None
        self._commands = 0

    # -- topics and payloads ----------------------------------------------------------------------

    def topic(self, kind: str, device: str | None = None) -> str:
        base = f"{NAMESPACE}/{self.group_id}/{kind}/{self.node_id}"
        return base if device is None else f"{base}/{device}"

    def _alias(self, device: str, metric: str) -> int:
        key = (device, metric)
        alias = self._aliases.get(key)
        if alias is None:
            alias = len(self._aliases)
            self._aliases[key] = alias
        return alias

    def _payload(self, with_seq: bool = True) -> Any:
        payload = pb.Payload(timestamp=_now_ms())
        if with_seq:
            payload.seq = self._seq
            self._seq = (self._seq + 1) % 256
        return payload

    def _ndeath(self, bdseq: int) -> Message:
        payload = pb.Payload(timestamp=_now_ms())
        m = payload.metrics.add(name=BDSEQ, datatype=pb.Int64)
        m.long_value = bdseq
        return Message(self.topic("NDEATH"), payload.SerializeToString(), qos=1, retain=False)

    def _nbirth(self) -> Message:
        self._seq = 0
        payload = self._payload()
        ts = payload.timestamp
        m = payload.metrics.add(name=BDSEQ, alias=0, timestamp=ts, datatype=pb.Int64)
        m.long_value = self._session_bdseq()
        m = payload.metrics.add(name=REBIRTH, timestamp=ts, datatype=pb.Boolean)
        m.boolean_value = False
        self._node_born = True
        return Message(self.topic("NBIRTH"), payload.SerializeToString(), qos=0)

    def _session_bdseq(self) -> int:
        """The bdSeq of the CONNECT this session started with."""
        return self.bdseq.value if self.bdseq.value is not None else self.bdseq.pending

    def _dbirth(self, name: str, dev: _Device) -> Message:
        payload = self._payload()
        declared = self._declared.get(name, {})
        meta = self._meta.get(name, {})
        for metric, tag_type in declared.items():
            if metric not in dev.types:
                dev.types[metric] = choose(tag_type, dev.latest.get(metric))
        stamped = sorted(
            (dev.stamps.get(metric, payload.timestamp), i, metric, datatype)
            for i, (metric, datatype) in enumerate(dev.types.items())
        )
        for ts, _, metric, datatype in stamped:
            m = payload.metrics.add(
                name=metric, alias=self._alias(name, metric), timestamp=ts, datatype=datatype
            )
            set_value(m, datatype, dev.latest.get(metric))
            code = dev.quality.get(metric)
            if code is not None:
                _quality_property(m, code)
            if metric in meta:
                _meta_properties(m, meta[metric])
        dev.born = True
        dev.reborn = False
        return Message(self.topic("DBIRTH", name), payload.SerializeToString(), qos=0)

    def _births(self) -> list[Message]:
        """NBIRTH, then at once a DBIRTH for every device whose metrics are known: all births
        before any data (tck-id-payloads-dbirth-order). A device that is down is born with null
        values and dies at once (DDEATH): a host then shows a configured device that does not
        answer as offline, not as unknown."""
        out = [self._nbirth()]
        dead = []
        for name, dev in self._devices.items():
            if dev.types or self._declared.get(name):
                out.append(self._dbirth(name, dev))
                if dev.status == "down":
                    dead.append((name, dev))
        out.extend(self._ddeath(name, dev) for name, dev in dead)
        return out

    def _session_births(self) -> list[Message]:
        self._birth_ms = _now_ms()
        return self._births()

    # -- session rules ----------------------------------------------------------------------------

    def will(self) -> Message:
        """NDEATH with the bdSeq the next CONNECT carries; consumes nothing (see bdseq.py)."""
        return self._ndeath(self.bdseq.pending)

    def connect_sent(self) -> None:
        self.bdseq.consume()

    def subscriptions(self) -> Sequence[str]:
        subs = [self._ncmd, f"{self._dcmd}+"]
        if self._state is not None:
            subs.insert(0, self._state)
        return subs

    def online(self) -> list[Message]:
        """A new MQTT session: nothing is born. Birth now, or once the host is online."""
        self._node_born = False
        for dev in self._devices.values():
            dev.born = False
            dev.newest_ms = 0
        if self._state is not None:
            self._host_online = False  # the retained STATE tells, right after the subscribe
            self._host_ts = -1  # a host's STATE timestamps are per server, hence per session
            return []
        return self._session_births()

    def offline(self) -> list[Message]:
        return [self._ndeath(self._session_bdseq())] if self._node_born else []

    def ready(self) -> bool:
        return self._node_born

    def device_topic(self, device: str, kind: str) -> str:
        return f"{self.prefix}/{device}/{kind}"

    def side_message(self, topic: str, payload: bytes) -> Message | None:
        """None: a Sparkplug edge node publishes nothing outside its namespace (a retained side
        topic would also precede the NBIRTH after each connect, which Sparkplug forbids:
        tck-id-principles-birth-certificates-order). The machine state travels as the device's
        ``state`` and ``runtime.<state>`` metrics in its data; the side document
        (``{"state", "since", "ts", "runtime": {...}}``) is taken in as their current values,
        so the device's DBIRTH gives a host the current state, as a retained message would,
        also after a restart or a reload that built this format afresh."""
        device, _, kind = topic.removeprefix(f"{self.prefix}/").rpartition("/")
        try:
            doc = json.loads(payload)
        except ValueError:
            return None
        if kind != "state" or not device or not isinstance(doc, dict):
            return None
        values: dict[str, Any] = {}
        if isinstance(doc.get("state"), str):
            values["state"] = doc["state"]
        runtime = doc.get("runtime")
        if isinstance(runtime, dict):
            values.update(
                (f"runtime.{k}", float(v))
                for k, v in runtime.items()
                if isinstance(v, int | float) and not isinstance(v, bool)
            )
        ts = doc.get("ts")
        dev = self._devices.setdefault(device, _Device())
        for metric, value in values.items():
            known = dev.types.get(metric)
            if known is None or not fits(known, value):
                dev.types[metric] = int(pb.String) if metric == "state" else int(pb.Double)
                dev.reborn = dev.born  # the host must learn the metric before any DDATA has it
            dev.latest[metric] = value
            if isinstance(ts, int) and not isinstance(ts, bool):
                dev.stamps[metric] = ts
        return None

    def status_changed(
        self, device: str, state: str, reason: str | None, ts_ms: int
    ) -> list[Message]:
        dev = self._devices.setdefault(device, _Device())
        dev.status = state
        if state != "down":
            return []
        # What the host was told is stale from now on: a later DBIRTH says null, not old values.
        dev.latest.clear()
        dev.stamps.clear()
        dev.quality.clear()
        if dev.born and self._node_born:
            return [self._ddeath(device, dev)]
        dev.born = False
        return []

    def _ddeath(self, name: str, dev: _Device) -> Message:
        dev.born = False
        payload = self._payload()
        return Message(self.topic("DDEATH", name), payload.SerializeToString(), qos=0)

    # -- data -------------------------------------------------------------------------------------

    def pack(self, rows: Sequence[StoredBatch]) -> list[Packed]:
        # Every row is read before anything changes: a row this format cannot read raises here
        # (the publisher quarantines it) and no seq was spent on messages never sent.
        read = [_read_row(row) for row in rows]
        out: list[Packed] = []
        for row, r in zip(rows, read, strict=True):
            dev = self._devices.setdefault(r.device, _Device())
            historical = (
                row.created * 1000 < self._birth_ms - self._grace_ms or row.ts_ms < dev.newest_ms
            )
            dev.newest_ms = max(dev.newest_ms, row.ts_ms)
            if self._lost(dev, r):
                # The all-bad batch of a lost device: DDEATH says it (once).
                msg = self._ddeath(r.device, dev) if dev.born else None
                out.append(Packed(msg, (row,)))
                continue
            births = self._prepare(dev, r, row.ts_ms, historical)
            out.extend(Packed(m, ()) for m in births)
            out.append(Packed(self._ddata(dev, r, row.ts_ms, historical), (row,)))
        for name in dict.fromkeys(r.device for r in read):
            dev = self._devices[name]
            if dev.status == "down" and dev.born:
                # What was buffered while the device was still up went out under a DBIRTH; the
                # host must not be left believing a lost device is online.
                out.append(Packed(self._ddeath(name, dev), ()))
        return out

    def _lost(self, dev: _Device, r: _Row) -> bool:
        """A data batch of a device that is down in which none of its own tags has a value:
        what a lost device yields (every tag bad, plus what the agent derives from that, such
        as the machine state ``stopped``). Its DDEATH says it all."""
        if r.kind != "data" or dev.status != "down":
            return False
        declared = self._declared.get(r.device)
        return not any(k in declared for k in r.values) if declared else not r.values

    def _prepare(self, dev: _Device, r: _Row, ts_ms: int, historical: bool) -> list[Message]:
        """A DBIRTH when the host does not know this device or one of these metrics yet."""
        declared = self._declared.get(r.device, {})
        changed = False
        for metric in (*r.values, *r.quality):
            value = r.values.get(metric)
            known = dev.types.get(metric)
            if known is None or not fits(known, value):
                hint = r.hints.get(metric)
                if known is None and value is None and metric not in declared and hint is None:
                    continue  # no value and no declared type yet: born with its first value
                if hint is not None and fits(hint, value):
                    dev.types[metric] = hint
                else:
                    dev.types[metric] = choose(declared.get(metric), value)
                changed = True
        if not historical:
            for metric, value in r.values.items():
                dev.latest[metric] = value
                dev.stamps[metric] = r.stamps.get(metric, ts_ms)
                dev.quality.pop(metric, None)
            for metric, code in r.quality.items():
                if metric not in r.values:
                    dev.latest.pop(metric, None)
                    dev.stamps[metric] = r.stamps.get(metric, ts_ms)
                dev.quality[metric] = code
        if dev.born and not changed and not dev.reborn:
            return []
        return [self._dbirth(r.device, dev)]

    def _ddata(self, dev: _Device, r: _Row, ts_ms: int, historical: bool) -> Message:
        payload = self._payload()
        stamped = sorted(
            (r.stamps.get(metric, ts_ms), i, metric)
            for i, metric in enumerate(dict.fromkeys((*r.values, *r.quality)))
            if metric in dev.types
        )
        for ts, _, metric in stamped:
            m = payload.metrics.add(alias=self._alias(r.device, metric), timestamp=ts)
            if historical:
                m.is_historical = True
            set_value(m, dev.types[metric], r.values.get(metric))
            code = r.quality.get(metric)
            if code is not None:
                _quality_property(m, code)
        # QoS: the publisher applies mqtt.qos to data messages.
        return Message(self.topic("DDATA", r.device), payload.SerializeToString())

    # -- downlink ---------------------------------------------------------------------------------

    def incoming(self, topic: str, payload: bytes) -> Reaction | None:
        if topic == self._state:
            return self._host_state(payload)
        try:
            decoded = pb.Payload.FromString(payload)
        except Exception as exc:  # protobuf's DecodeError family differs between runtimes
            log.warning(
                "sparkplug command not decodable", extra={"topic": topic, "error": f"{exc}"}
            )
            return None
        if topic == self._ncmd:
            return self._node_command(decoded)
        if topic.startswith(self._dcmd):
            return self._device_command(topic[len(self._dcmd) :], decoded)
        return None

    def _host_state(self, payload: bytes) -> Reaction | None:
        try:
            doc = json.loads(payload)
            online = doc["online"]
            ts = int(doc.get("timestamp", 0))
            if not isinstance(online, bool):
                raise ValueError("online is not a boolean")
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("malformed STATE message ignored", extra={"error": str(exc)})
            return None
        if ts < self._host_ts:
            return None  # older than a STATE already seen (3.0: compare timestamps)
        self._host_ts = ts
        self._host_online = online
        if online and not self._node_born:
            log.info("primary host online: birth", extra={"host": self.host_id})
            return Reaction(publish=self._session_births())
        if not online and self._node_born:
            log.warning("primary host offline: NDEATH and reconnect", extra={"host": self.host_id})
            msg = self._ndeath(self._session_bdseq())
            self._node_born = False
            return Reaction(publish=[msg], reconnect=True)
        return None

    def _node_command(self, decoded: Any) -> Reaction | None:
        for m in decoded.metrics:
            # By name only: the Rebirth metric has no alias (and alias 1 is a device metric).
            if m.HasField("name") and m.name == REBIRTH and m.boolean_value:
                if not self._node_born:
                    return None
                log.info("sparkplug rebirth requested")
                return Reaction(publish=self._births())
        return None

    def _device_command(self, device: str, decoded: Any) -> Reaction | None:
        dev = self._devices.get(device)
        by_alias = {a: m for (d, m), a in self._aliases.items() if d == device}
        writes: dict[str, Any] = {}
        self._commands += 1
        cmd_id = f"dcmd-{self._commands}"
        try:
            for m in decoded.metrics:
                name = m.name if m.HasField("name") and m.name else by_alias.get(m.alias)
                if name is None:
                    raise ValueError(f"unknown alias {m.alias}")
                datatype = m.datatype or (dev.types.get(name) if dev else None)
                writes[name] = get_value(m, datatype)
        except ValueError as exc:
            log.warning("sparkplug DCMD refused", extra={"device": device, "error": str(exc)})
            return None
        if any(name.startswith(METHODS) for name in writes):
            return self._call(device, cmd_id, writes)
        return Reaction(command=Command(device, writes=writes, cmd_id=cmd_id))

    def _call(self, device: str, cmd_id: str, metrics: dict[str, Any]) -> Reaction | None:
        """A DCMD of ``Methods/<name>`` (a JSON array of arguments): a method call."""
        try:
            ((metric, text),) = metrics.items()
            method = metric[len(METHODS) :]
            if not method or method.endswith(RESULT):
                raise ValueError(f"{metric} is not a method to call")
            args = json.loads(text) if isinstance(text, str) and text else []
        except (ValueError, TypeError) as exc:
            why = f"a method call is one metric {METHODS}<name> holding JSON arguments: {exc}"
            log.warning("sparkplug DCMD refused", extra={"device": device, "error": why})
            return None
        return Reaction(command=Command(device, call={method: args}, cmd_id=cmd_id, context=method))

    def reply(self, command: Command, reply: dict[str, object]) -> Message | None:
        """A call's reply as a DDATA of ``Methods/<name>/Result``; writes need none (the value
        written comes back in the device's data)."""
        if command.call is None or not isinstance(command.context, str):
            return None
        dev = self._devices.get(command.device)
        metric = f"{METHODS}{command.context}{RESULT}"
        if dev is None or not dev.born or metric not in dev.types or not self._node_born:
            return None  # the host learns the outcome from the next birth's current value
        text = json.dumps(reply, ensure_ascii=False, separators=(",", ":"))
        dev.latest[metric] = text
        payload = self._payload()
        m = payload.metrics.add(
            alias=self._alias(command.device, metric), timestamp=payload.timestamp
        )
        set_value(m, dev.types[metric], text)
        return Message(self.topic("DDATA", command.device), payload.SerializeToString())
