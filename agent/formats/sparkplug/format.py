"""Sparkplug B 3.0: the edge node's session rules and its protobuf payloads.

Rules implemented (specification chapter 5 and 6), each tested in tests/test_sparkplug.py:

* The will is NDEATH (QoS 1, not retained) with ``bdSeq`` (Int64), one more than the previous
  CONNECT's (0..255, persisted); the NBIRTH after that CONNECT carries the same ``bdSeq``.
* NBIRTH has ``seq`` 0 and ``Node Control/Rebirth``; every later message of the session takes the
  next ``seq``, wrapping 255 → 0. NDEATH carries no ``seq``.
* Births list every metric with name, alias and datatype; NDATA/DDATA carry aliases only.
* A DBIRTH precedes a device's first DDATA of a session and is repeated (with the longer list)
  when a metric appears that its birth did not declare or whose datatype changes.
* NCMD ``Node Control/Rebirth`` = true: NBIRTH (seq 0, same bdSeq) and every DBIRTH again.
* A device going down: DDEATH; its next batch with values: DBIRTH first.
* With ``primary_host_id``: subscribe to ``spBv1.0/STATE/<id>`` and publish births and data only
  while the host says ``online: true`` (newer timestamps only); on ``online: false`` send NDEATH,
  disconnect and connect again (to the next server), waiting for the host to come back.
* Buffered history goes out with ``is_historical`` true: a batch committed more than
  ``history_grace`` (2 s) before the session's NBIRTH (an outage's backlog, or what a restarted
  agent found in its buffer), or older than a batch of the same device already sent in this
  session (the backlog drains beside live data). The grace keeps the first polls of a starting
  agent, taken while it was still connecting, current.

Deliberate choice: data (NDATA/DDATA) uses ``mqtt.qos`` (1 by default) rather than the
specification's QoS 0, because a batch leaves the buffer only on PUBACK; set ``qos: 0`` for the
letter of the specification. Births and DDEATH are QoS 0, NDEATH QoS 1, as specified.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from agent.buffer import StoredBatch
from agent.formats.base import Command, Format, Message, Packed, Reaction, stream_of
from agent.formats.sparkplug import sparkplug_b_pb2
from agent.formats.sparkplug.bdseq import BdSeq
from agent.formats.sparkplug.values import choose, fits, get_value, set_value
from agent.record import decode_body

#: The generated module has no type information; its names are checked by the tests.
pb: Any = sparkplug_b_pb2

log = logging.getLogger(__name__)

NAMESPACE = "spBv1.0"
REBIRTH = "Node Control/Rebirth"
BDSEQ = "bdSeq"
#: Metric name prefix of a device's event stream (``<device>/event`` in the buffer).
EVENT_PREFIX = "Events/"
_QUALITY = {"bad": 0, "uncertain": 64}  # OPC-style codes in a metric property "Quality"


def _now_ms() -> int:
    return int(time.time() * 1000)


class _Device:
    """What the host application knows of a device in this session."""

    def __init__(self) -> None:
        self.types: dict[str, int] = {}  # metric name -> datatype, as born
        self.born = False
        self.status = "up"
        self.latest: dict[str, Any] = {}  # current (non-historical) values, for births
        self.newest_ms = 0  # newest batch timestamp sent in this session


class SparkplugFormat(Format):
    name = "sparkplug"

    def __init__(
        self,
        group_id: str,
        edge_node_id: str,
        state_dir: Path,
        primary_host_id: str | None = None,
        tag_types: Mapping[str, Mapping[str, str]] | None = None,
        topic_prefix: str | None = None,
        history_grace: float = 2.0,
    ) -> None:
        self.group_id = group_id
        self.node_id = edge_node_id
        self.host_id = primary_host_id
        self.prefix = topic_prefix or f"edge/{edge_node_id}"
        self._declared = {d: dict(t) for d, t in (tag_types or {}).items()}
        self.bdseq = BdSeq(state_dir / "sparkplug-bdseq")
        self._seq = 0
        self._aliases: dict[tuple[str, str], int] = {("", BDSEQ): 0, ("", REBIRTH): 1}
        self._devices: dict[str, _Device] = {}
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

    def _ndeath(self) -> Message:
        payload = pb.Payload(timestamp=_now_ms())
        m = payload.metrics.add(name=BDSEQ, datatype=pb.Int64)
        m.long_value = self.bdseq.value or 0
        return Message(self.topic("NDEATH"), payload.SerializeToString(), qos=1, retain=False)

    def _nbirth(self) -> Message:
        self._seq = 0
        payload = self._payload()
        ts = payload.timestamp
        m = payload.metrics.add(name=BDSEQ, alias=0, timestamp=ts, datatype=pb.Int64)
        m.long_value = self.bdseq.value or 0
        m = payload.metrics.add(name=REBIRTH, alias=1, timestamp=ts, datatype=pb.Boolean)
        m.boolean_value = False
        self._node_born = True
        self._birth_ms = ts
        return Message(self.topic("NBIRTH"), payload.SerializeToString(), qos=0)

    def _dbirth(self, name: str, dev: _Device) -> Message:
        payload = self._payload()
        declared = self._declared.get(name, {})
        for metric, tag_type in declared.items():
            if metric not in dev.types:
                dev.types[metric] = choose(tag_type, dev.latest.get(metric))
        for metric, datatype in dev.types.items():
            m = payload.metrics.add(
                name=metric,
                alias=self._alias(name, metric),
                timestamp=payload.timestamp,
                datatype=datatype,
            )
            set_value(m, datatype, dev.latest.get(metric))
        dev.born = True
        return Message(self.topic("DBIRTH", name), payload.SerializeToString(), qos=0)

    def _births(self) -> list[Message]:
        out = [self._nbirth()]
        for name, dev in self._devices.items():
            if dev.born:
                out.append(self._dbirth(name, dev))
        return out

    # -- session rules ----------------------------------------------------------------------------

    def will(self) -> Message:
        self.bdseq.next()
        return self._ndeath()

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
            return []
        return self._births()

    def offline(self) -> list[Message]:
        return [self._ndeath()] if self._node_born else []

    def ready(self) -> bool:
        return self._node_born

    def device_topic(self, device: str, kind: str) -> str:
        return f"{self.prefix}/{device}/{kind}"

    def status_changed(
        self, device: str, state: str, reason: str | None, ts_ms: int
    ) -> list[Message]:
        dev = self._devices.setdefault(device, _Device())
        dev.status = state
        if state == "down" and dev.born and self._node_born:
            return [self._ddeath(device, dev)]
        return []

    def _ddeath(self, name: str, dev: _Device) -> Message:
        dev.born = False
        payload = self._payload()
        return Message(self.topic("DDEATH", name), payload.SerializeToString(), qos=0)

    # -- data -------------------------------------------------------------------------------------

    def pack(self, rows: Sequence[StoredBatch]) -> list[Packed]:
        out: list[Packed] = []
        for row in rows:
            device, kind = stream_of(row)
            dev = self._devices.setdefault(device, _Device())
            try:
                doc = decode_body(row.body)
                values: dict[str, Any] = dict(doc.get("values", {}))
                quality: dict[str, str] = dict(doc.get("quality", {}))
            except (ValueError, TypeError, AttributeError) as exc:
                # Cannot happen with records the pipeline wrote; never let one stop the rest.
                log.error(
                    "unreadable buffered batch skipped",
                    extra={"device": device, "seq": row.seq, "error": str(exc)},
                )
                out.append(Packed(None, (row,)))
                continue
            if kind != "data":
                values = {f"{EVENT_PREFIX}{k}": v for k, v in values.items()}
                quality = {f"{EVENT_PREFIX}{k}": v for k, v in quality.items()}
            historical = (
                row.created * 1000 < self._birth_ms - self._grace_ms or row.ts_ms < dev.newest_ms
            )
            dev.newest_ms = max(dev.newest_ms, row.ts_ms)
            if not values and dev.status == "down" and kind == "data":
                # The all-bad batch of a lost device: DDEATH says it (once).
                msg = self._ddeath(device, dev) if dev.born else None
                out.append(Packed(msg, (row,)))
                continue
            births = self._prepare(device, dev, values, quality, historical)
            out.extend(Packed(m, ()) for m in births)
            out.append(Packed(self._ddata(device, row, values, quality, historical), (row,)))
        return out

    def _prepare(
        self,
        device: str,
        dev: _Device,
        values: dict[str, Any],
        quality: dict[str, str],
        historical: bool,
    ) -> list[Message]:
        """A DBIRTH when the host does not know this device or one of these metrics yet."""
        declared = self._declared.get(device, {})
        changed = False
        for metric in (*values, *quality):
            value = values.get(metric)
            known = dev.types.get(metric)
            if known is None or not fits(known, value):
                if known is None and value is None and metric not in declared:
                    continue  # no value and no declared type yet: born with its first value
                dev.types[metric] = choose(declared.get(metric), value)
                changed = True
        if not historical:
            dev.latest.update(values)
            for metric in quality:
                if metric not in values:
                    dev.latest.pop(metric, None)
        if dev.born and not changed:
            return []
        return [self._dbirth(device, dev)]

    def _ddata(
        self,
        device: str,
        row: StoredBatch,
        values: dict[str, Any],
        quality: dict[str, str],
        historical: bool,
    ) -> Message:
        dev = self._devices[device]
        payload = self._payload()
        for metric in dict.fromkeys((*values, *quality)):
            datatype = dev.types.get(metric)
            if datatype is None:
                continue
            m = payload.metrics.add(alias=self._alias(device, metric), timestamp=row.ts_ms)
            if historical:
                m.is_historical = True
            set_value(m, datatype, values.get(metric))
            q = quality.get(metric)
            if q is not None:
                code = _QUALITY.get(q.partition(":")[0], 0)
                m.properties.keys.append("Quality")
                m.properties.values.add(type=pb.Int32, int_value=code)
        # QoS: the publisher applies mqtt.qos to data messages.
        return Message(self.topic("DDATA", device), payload.SerializeToString())

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
            return None  # an older STATE than one already seen (3.0: compare timestamps)
        self._host_ts = ts
        was_online, self._host_online = self._host_online, online
        if online and not self._node_born:
            log.info("primary host online: birth", extra={"host": self.host_id})
            return Reaction(publish=self._births())
        if not online and was_online and self._node_born:
            log.warning("primary host offline: NDEATH and reconnect", extra={"host": self.host_id})
            msg = self._ndeath()
            self._node_born = False
            return Reaction(publish=[msg], reconnect=True)
        return None

    def _node_command(self, decoded: Any) -> Reaction | None:
        for m in decoded.metrics:
            name = m.name if m.HasField("name") else None
            if (name == REBIRTH or (name is None and m.alias == 1)) and m.boolean_value:
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
        return Reaction(command=Command(device, writes=writes, cmd_id=cmd_id))
