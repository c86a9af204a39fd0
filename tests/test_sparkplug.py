"""Sparkplug B 3.0 against a real mosquitto, every payload decoded by protoc (not our code).

Each test names the rules of the specification it checks.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from agent.core.buffer import StoredBatch
from agent.north.formats.sparkplug.format import SparkplugFormat
from agent.south.commands import CommandHandler
from drivers.base import DeviceBase, TagBase
from tests.brokers import Mosquitto, Received, Subscriber
from tests.e2e import until
from tests.platforms.sparkplug_host import Decoded, encode
from tests.test_failover import Rig, _settings

INT16, INT64, FLOAT, DOUBLE, BOOLEAN = 2, 4, 9, 10, 11
NODE = "spBv1.0/plant1/{}/gw"


def _fmt(tmp: Path, host: str | None = None, grace: float = 2.0) -> SparkplugFormat:
    return SparkplugFormat(
        "plant1",
        "gw",
        tmp / "state",
        primary_host_id=host,
        tag_types={"d1": {"t": "int16", "f": "float32"}},
        history_grace=grace,
    )


def _decoded(messages: list[Received]) -> list[Decoded]:
    return [Decoded(m.topic, m.payload) for m in messages if "/STATE/" not in m.topic]


def _kinds(messages: list[Received]) -> list[str]:
    return [m.topic.split("/")[2] for m in messages if "/STATE/" not in m.topic]


def _count(kind: str, n: int = 1) -> Any:
    return lambda ms: _kinds(ms).count(kind) >= n


def _row(i: int, t: int = -5, f: float = 1.5) -> dict[str, Any]:
    return {"ts": 1_700_000_000_000 + i, "values": {"t": t, "f": f}}


class Recorder(CommandHandler):
    """The real command path, recording what reached it."""

    def __init__(self) -> None:
        dev = DeviceBase(name="d1", driver="x", tags=[TagBase(name="t")])
        super().__init__({"d1": dev})
        self.seen: list[tuple[str, dict[str, Any]]] = []

    async def write(
        self, device: str, cmd_id: str | None, writes: Mapping[str, Any]
    ) -> dict[str, Any]:
        self.seen.append((device, {"id": cmd_id, "write": dict(writes)}))
        return await super().write(device, cmd_id, writes)


def _host(broker: Mosquitto, name: str = "host") -> Subscriber:
    return Subscriber(broker.port, ["spBv1.0/#"], client_id=name).start()


async def test_births_aliases_datatypes_and_seq(tmp_path: Path, broker: Mosquitto) -> None:
    """NBIRTH seq 0 with bdSeq (Int64) and Node Control/Rebirth; DBIRTH with name, alias and
    datatype of every metric; DDATA by alias only; seq +1 per message; payload timestamps."""
    host = _host(broker)
    async with Rig(tmp_path, _settings([f"127.0.0.1:{broker.port}"]), _fmt(tmp_path)) as rig:
        await host.wait_for(_count("NBIRTH"))
        for i in range(3):
            await rig.put_doc("d1", _row(i, t=-5 - i))
        msgs = await host.wait_for(_count("DDATA", 3))
    host.stop()
    decoded = _decoded(msgs)
    assert [d.kind for d in decoded][:5] == ["NBIRTH", "DBIRTH", "DDATA", "DDATA", "DDATA"]
    assert [d.seq for d in decoded][:5] == [0, 1, 2, 3, 4]
    nbirth, dbirth, ddata = decoded[0], decoded[1], decoded[2]
    assert nbirth.topic == NODE.format("NBIRTH")
    bdseq = nbirth.metric("bdSeq")
    assert (bdseq["datatype"], bdseq["long_value"]) == (INT64, 0)
    rebirth = nbirth.metric("Node Control/Rebirth")
    assert (rebirth["datatype"], rebirth["boolean_value"]) == (BOOLEAN, False)
    assert dbirth.topic == NODE.format("DBIRTH") + "/d1"
    types = {m["name"]: m["datatype"] for m in dbirth.metrics}
    assert types == {"t": INT16, "f": FLOAT}
    aliases = [m["alias"] for m in nbirth.metrics + dbirth.metrics if "alias" in m]
    assert len(aliases) == len(nbirth.metrics + dbirth.metrics) - 1 == len(set(aliases))
    assert "alias" not in rebirth  # a host asks for a rebirth by name (3.0)
    alias_of = {m["name"]: m["alias"] for m in dbirth.metrics}
    assert all("name" not in m for m in ddata.metrics)  # data by alias only
    by_alias = {m["alias"]: m for m in ddata.metrics}
    t = by_alias[alias_of["t"]]
    # Int16 travels as two's complement in the unsigned 32-bit int_value (spec 6.4.16)
    assert t["int_value"] == (-5) & 0xFFFFFFFF
    assert by_alias[alias_of["f"]]["float_value"] == 1.5
    assert t["timestamp"] == 1_700_000_000_000
    assert all(abs(d.timestamp - time.time() * 1000) < 60_000 for d in decoded)
    assert "is_historical" not in t


@pytest.mark.slow
async def test_seq_wraps_from_255_to_0(tmp_path: Path, broker: Mosquitto) -> None:
    host = _host(broker)
    async with Rig(tmp_path, _settings([f"127.0.0.1:{broker.port}"]), _fmt(tmp_path)) as rig:
        for i in range(300):
            await rig.put_doc("d1", _row(i))
        msgs = await host.wait_for(_count("DDATA", 300), timeout=30)
    host.stop()
    seqs = [d.seq for d in _decoded(msgs)][:302]
    assert seqs == [i % 256 for i in range(302)]


async def test_will_bdseq_matches_nbirth_and_rebirth_on_ncmd(
    tmp_path: Path, broker: Mosquitto
) -> None:
    """The will is NDEATH (QoS 1, not retained) with the bdSeq of the NBIRTH that followed the
    same CONNECT; the next CONNECT increments it (persisted); NCMD Rebirth re-births the node
    (seq 0, same bdSeq) and its devices."""
    host = _host(broker)
    fmt = _fmt(tmp_path)
    async with Rig(tmp_path, _settings([f"127.0.0.1:{broker.port}"]), fmt) as rig:
        await rig.put_doc("d1", _row(0))
        await host.wait_for(_count("DDATA"))
        client = rig.publisher._client
        assert client is not None
        sock = client.socket()
        assert isinstance(sock, socket.socket)
        sock.shutdown(socket.SHUT_RDWR)  # an unclean loss: the broker sends the will
        msgs = await host.wait_for(_count("NBIRTH", 2))
        host._client.publish(
            NODE.format("NCMD"),
            encode('metrics { name: "Node Control/Rebirth" datatype: 11 boolean_value: true }'),
            qos=0,
        )
        msgs = await host.wait_for(_count("NBIRTH", 3))
        await rig.put_doc("d1", _row(1))
        msgs = await host.wait_for(_count("DDATA", 2))
    host.stop()
    decoded = _decoded(msgs)
    births = [d for d in decoded if d.kind == "NBIRTH"]
    [death] = [m for m in msgs if m.topic == NODE.format("NDEATH")][:1]
    assert not death.retain
    ndeath = Decoded(death.topic, death.payload)
    assert ndeath.seq is None  # NDEATH has no seq
    assert ndeath.metric("bdSeq") == {"name": "bdSeq", "datatype": INT64, "long_value": 0}
    assert [b.metric("bdSeq")["long_value"] for b in births] == [0, 1, 1]
    assert [b.seq for b in births] == [0, 0, 0]
    after_rebirth = [d.kind for d in decoded[decoded.index(births[2]) :]]
    assert after_rebirth[:2] == ["NBIRTH", "DBIRTH"]
    assert (tmp_path / "state" / "sparkplug-bdseq").read_text().strip() == "1"
    # a restarted agent continues from the persisted value; the will alone consumes nothing
    restarted = _fmt(tmp_path)
    assert (
        Decoded(NODE.format("NDEATH"), restarted.will().payload).metric("bdSeq")["long_value"] == 2
    )
    assert (tmp_path / "state" / "sparkplug-bdseq").read_text().strip() == "1"
    restarted.connect_sent()
    assert (tmp_path / "state" / "sparkplug-bdseq").read_text().strip() == "2"


async def test_ddeath_on_device_down_dbirth_when_back_and_dcmd_writes(
    tmp_path: Path, broker: Mosquitto
) -> None:
    host = _host(broker)
    commands = Recorder()
    settings = _settings([f"127.0.0.1:{broker.port}"])
    async with Rig(tmp_path, settings, _fmt(tmp_path), commands) as rig:
        await rig.put_doc("d1", _row(0))
        msgs = await host.wait_for(_count("DDATA"))
        dbirth = next(d for d in _decoded(msgs) if d.kind == "DBIRTH")
        alias_t = dbirth.metric("t")["alias"]
        rig.publisher.device_status("d1", "down", "timeout", time.time())
        await host.wait_for(_count("DDEATH"))
        # the lost device's all-bad batch: said by the DDEATH, acknowledged, not sent
        await rig.put_doc("d1", {"ts": 1, "values": {}, "quality": {"t": "bad: timeout"}})
        await until(lambda: rig.buffer.stats().batches == 0, timeout=5)
        rig.publisher.device_status("d1", "up", None, time.time())
        await rig.put_doc("d1", _row(2, t=7))
        msgs = await host.wait_for(_count("DDATA", 2))
        # DCMD by alias, value as the host encodes an Int16 -3
        host._client.publish(
            NODE.format("DCMD") + "/d1",
            encode(f"metrics {{ alias: {alias_t} datatype: 2 int_value: {(-3) & 0xFFFFFFFF} }}"),
            qos=0,
        )
        await until(lambda: bool(commands.seen), timeout=5)
    host.stop()
    kinds = [k for k in _kinds(msgs)]
    assert kinds == ["NBIRTH", "DBIRTH", "DDATA", "DDEATH", "DBIRTH", "DDATA"]
    seqs = [d.seq for d in _decoded(msgs)]
    assert seqs == list(range(6))
    assert commands.seen == [("d1", {"id": "dcmd-1", "write": {"t": -3}})]


async def test_buffered_history_is_flagged_after_an_outage(
    tmp_path: Path, broker: Mosquitto
) -> None:
    host = Subscriber(broker.port, ["spBv1.0/#"], client_id="host-persist").start()
    fmt = _fmt(tmp_path, grace=0)
    async with Rig(tmp_path, _settings([f"127.0.0.1:{broker.port}"]), fmt) as rig:
        await host.wait_for(_count("NBIRTH"))
        await rig.put_doc("d1", _row(0))
        await host.wait_for(_count("DDATA"))
        broker.stop()
        await until(lambda: not rig.publisher.connected.is_set(), timeout=5)
        for i in range(1, 4):
            await rig.put_doc("d1", _row(i))
        broker.start()
        assert host.connected.wait(10)
        await rig.publisher.connected.wait()
        await until(lambda: rig.buffer.stats().batches == 0, timeout=10)
        await rig.put_doc("d1", _row(9))
        msgs = await host.wait_for(_count("DDATA", 5), timeout=10)
    host.stop()
    ddata = [d for d in _decoded(msgs) if d.kind == "DDATA"]
    flags = [all(m.get("is_historical") is True for m in d.metrics) for d in ddata]
    assert flags == [False, True, True, True, False]


async def test_primary_host_state_gates_births_and_data(tmp_path: Path, broker: Mosquitto) -> None:
    """With primary_host_id: births only once STATE says online; an older STATE is ignored;
    online false: NDEATH, disconnect, reconnect, and wait for the host again."""
    host = _host(broker)
    state = "spBv1.0/STATE/scada"
    fmt = _fmt(tmp_path, host="scada", grace=0)

    def say(online: bool, ts: int) -> None:
        doc = json.dumps({"online": online, "timestamp": ts}).encode()
        host._client.publish(state, doc, qos=1, retain=True)

    async with Rig(tmp_path, _settings([f"127.0.0.1:{broker.port}"]), fmt) as rig:
        await rig.publisher.connected.wait()
        await rig.put_doc("d1", _row(0))
        await asyncio.sleep(0.3)  # a negative check: nothing may be born without the host
        assert _count("NBIRTH")(host.messages) is False
        say(True, 1000)
        await host.wait_for(_count("DDATA"))
        say(False, 2000)
        await host.wait_for(_count("NDEATH"))
        await until(lambda: rig.publisher.sessions == 2, timeout=5)
        await rig.put_doc("d1", _row(1))
        say(True, 1500)  # older than the offline STATE: ignored
        await asyncio.sleep(0.3)
        assert _kinds(host.messages).count("NBIRTH") == 1
        say(True, 3000)
        msgs = await host.wait_for(_count("DDATA", 2))
    host.stop()
    decoded = _decoded(msgs)
    assert [d.kind for d in decoded] == [
        "NBIRTH", "DBIRTH", "DDATA", "NDEATH", "NBIRTH", "DBIRTH", "DDATA",
    ]  # fmt: skip
    nbirths = [d for d in decoded if d.kind == "NBIRTH"]
    ndeath = next(d for d in decoded if d.kind == "NDEATH")
    assert ndeath.metric("bdSeq")["long_value"] == nbirths[0].metric("bdSeq")["long_value"] == 0
    assert nbirths[1].metric("bdSeq")["long_value"] == 1
    assert decoded[-1].metrics[0].get("is_historical") is True  # buffered while the host was away


DATETIME, DOUBLE_ARRAY, STRING = 13, 31, 12
ALARM = "Events/bearing_outer_race"


def _event(kind: str, ts: int, values: list[float], alarm: str = "bearing_outer_race") -> Any:
    """An alarm event as agent/core/processing/alarms.py stores it on the ``<device>/event``
    stream."""
    return {
        "ts": ts, "event": kind, "alarm": alarm, "tag": "vibration.bpfo", "severity": "warning",
        "mode": "level", "condition": "> 0.02" if kind == "raise" else "< 0.015",
        "value": 0.02783 if kind == "raise" else 1, "since": ts - 600_000, "values": values,
    }  # fmt: skip


async def test_alarm_events_are_metrics_of_their_device(tmp_path: Path, broker: Mosquitto) -> None:
    """An event row (its ``values`` a list of evidence) becomes ``Events/<alarm>/<field>``
    metrics of the device, typed once per field: the first event re-births the device, a clear
    (an empty list, an integer value) does not, another alarm's name re-births again."""
    host = _host(broker)
    async with Rig(tmp_path, _settings([f"127.0.0.1:{broker.port}"]), _fmt(tmp_path)) as rig:
        await rig.put_doc("d1", _row(0))
        await host.wait_for(_count("DDATA"))
        evidence = [0.03113, 0.029749, 0.02783]
        await rig.put_doc("d1", _event("raise", 1_700_000_000_100, evidence), "event")
        await host.wait_for(_count("DDATA", 2))
        await rig.put_doc("d1", _event("clear", 1_700_000_000_200, []), "event")
        await host.wait_for(_count("DDATA", 3))
        await rig.put_doc("d1", _event("raise", 1_700_000_000_300, [7.5], alarm="seal"), "event")
        msgs = await host.wait_for(_count("DDATA", 4))
        await until(lambda: rig.buffer.stats().batches == 0, timeout=5)  # every event sent
    host.stop()
    decoded = _decoded(msgs)
    kinds = [d.kind for d in decoded]
    assert kinds == ["NBIRTH", "DBIRTH", "DDATA", "DBIRTH", "DDATA", "DDATA", "DBIRTH", "DDATA"]
    birth = decoded[3]
    types = {m["name"]: m["datatype"] for m in birth.metrics if m["name"].startswith("Events/")}
    assert types == {
        f"{ALARM}/active": BOOLEAN, f"{ALARM}/event": STRING, f"{ALARM}/tag": STRING,
        f"{ALARM}/severity": STRING, f"{ALARM}/mode": STRING, f"{ALARM}/condition": STRING,
        f"{ALARM}/value": DOUBLE, f"{ALARM}/since": DATETIME, f"{ALARM}/values": DOUBLE_ARRAY,
    }  # fmt: skip
    name_of = {m["alias"]: m["name"] for m in birth.metrics}

    def fields(d: Decoded) -> dict[str, Any]:
        return {name_of[m["alias"]].removeprefix(f"{ALARM}/"): m for m in d.metrics}

    raised, cleared = fields(decoded[4]), fields(decoded[5])
    assert raised["active"]["boolean_value"] is True
    assert raised["severity"]["string_value"] == "warning"
    assert raised["value"]["double_value"] == 0.02783
    assert raised["since"]["long_value"] == 1_700_000_000_100 - 600_000
    packed = str(raised["values"]["bytes_value"]).encode("latin-1")  # protoc's C escapes
    assert list(struct.unpack("<3d", packed)) == evidence
    assert all(m["timestamp"] == 1_700_000_000_100 for m in decoded[4].metrics)
    assert cleared["active"]["boolean_value"] is False
    assert cleared["value"]["double_value"] == 1.0
    assert cleared["values"].get("bytes_value", "") == ""
    assert "Events/seal/active" in {m["name"] for m in decoded[6].metrics}


async def test_windows_features_state_and_side_documents(tmp_path: Path, broker: Mosquitto) -> None:
    """Window aggregates, waveform features and the machine state ride in the device's data as
    metrics of their own. The retained side document (``device_topic(device, "state")``, handed
    over again after a restart or reload) is not published outside the Sparkplug namespace: it
    gives the device's DBIRTH the current state and run times."""
    host = _host(broker)
    fmt = _fmt(tmp_path)
    side = {"state": "idle", "since": 1_699_999_000_000, "ts": 1_699_999_999_000,
            "runtime": {"idle": 5.0, "running": 12}}  # fmt: skip
    assert fmt.side_message(fmt.device_topic("d1", "state"), json.dumps(side).encode()) is None
    doc = {
        "ts": 1_700_000_000_000,
        "values": {"t": 3, "t.avg": 2.5, "t.max": 4, "vib.rms": 0.8, "vib.iso_zone": "B",
                   "state": "running", "runtime.running": 12.5, "wave": [0.1, -0.2]},
    }  # fmt: skip
    async with Rig(tmp_path, _settings([f"127.0.0.1:{broker.port}"]), fmt) as rig:
        await rig.put_doc("d1", doc)
        msgs = await host.wait_for(_count("DDATA"))
    host.stop()
    births = [d for d in _decoded(msgs) if d.kind == "DBIRTH"]
    first = {m["name"]: m for m in births[0].metrics}  # right after the NBIRTH
    assert first["state"]["string_value"] == "idle"
    assert first["state"]["timestamp"] == 1_699_999_999_000
    assert (first["runtime.idle"]["double_value"], first["runtime.running"]["datatype"]) == (
        5.0, DOUBLE,
    )  # fmt: skip
    types = {m["name"]: m["datatype"] for m in births[-1].metrics}
    assert types == {
        "t": INT16, "f": FLOAT, "state": STRING, "runtime.idle": DOUBLE, "runtime.running": DOUBLE,
        "t.avg": DOUBLE, "t.max": INT64, "vib.rms": DOUBLE, "vib.iso_zone": STRING,
        "wave": DOUBLE_ARRAY,
    }  # fmt: skip
    assert births[-1].metric("state")["string_value"] == "running"
    assert all(not m.topic.startswith("edge/") for m in msgs)


def test_an_unreadable_row_raises_before_anything_is_spent(tmp_path: Path) -> None:
    """A row the format cannot read raises (the publisher quarantines it) before any seq or
    birth is spent: the next message continues the sequence without a hole."""
    fmt = _fmt(tmp_path)
    fmt.connect_sent()
    births = fmt.online()
    assert [Decoded(m.topic, m.payload).seq for m in births] == [0, 1]

    def row(i: int, body: bytes, device: str = "d1") -> StoredBatch:
        return StoredBatch(i, device, "data", i, 1_700_000_000_000, body, time.time())

    good = row(1, json.dumps(_row(0)).encode())
    for bad in (b"[1, 2]", b'{"values": [1]}', b"not json"):
        with pytest.raises((TypeError, ValueError)):
            fmt.pack([good, row(2, bad)])
    [packed] = fmt.pack([good])
    assert packed.rows == (good,) and packed.message is not None
    assert Decoded(packed.message.topic, packed.message.payload).seq == 2


async def test_a_down_device_stays_dead_for_the_host(tmp_path: Path, broker: Mosquitto) -> None:
    """While a device is down, its batches (every tag bad, and the machine state the agent
    derives from that) are said by its DDEATH, not by a DBIRTH that would show it online; a
    batch buffered while it was still up goes out under a DBIRTH and a DDEATH follows it."""
    host = _host(broker)
    async with Rig(tmp_path, _settings([f"127.0.0.1:{broker.port}"]), _fmt(tmp_path)) as rig:
        await rig.put_doc("d1", _row(0))
        await host.wait_for(_count("DDATA"))
        rig.publisher.device_status("d1", "down", "timeout", time.time())
        await host.wait_for(_count("DDEATH"))
        lost = {"ts": 1_700_000_000_001, "values": {"state": "stopped", "runtime.stopped": 2.0},
                "quality": {"t": "bad: timeout", "f": "bad: timeout"}}  # fmt: skip
        await rig.put_doc("d1", lost)
        await until(lambda: rig.buffer.stats().batches == 0, timeout=5)
        await rig.put_doc("d1", _row(2, t=9))  # read just before the device was lost
        msgs = await host.wait_for(_count("DDEATH", 2))
        await until(lambda: rig.buffer.stats().batches == 0, timeout=5)
    host.stop()
    kinds = _kinds(msgs)
    assert kinds == ["NBIRTH", "DBIRTH", "DDATA", "DDEATH", "DBIRTH", "DDATA", "DDEATH"]
    assert [d.seq for d in _decoded(msgs)] == list(range(7))
    assert "state" not in {m["name"] for m in _decoded(msgs)[4].metrics}


async def test_a_device_down_at_the_connect_is_born_and_dies(
    tmp_path: Path, broker: Mosquitto
) -> None:
    """A configured device that does not answer when the session starts: DBIRTH with null
    values right after the NBIRTH, then its DDEATH, so a host lists it as offline."""
    host = _host(broker)
    fmt = _fmt(tmp_path)
    assert fmt.status_changed("d1", "down", "connection refused", 0) == []  # not connected yet
    async with Rig(tmp_path, _settings([f"127.0.0.1:{broker.port}"]), fmt):
        msgs = await host.wait_for(_count("DDEATH"))
    host.stop()
    decoded = _decoded(msgs)
    assert [(d.kind, d.device, d.seq) for d in decoded] == [
        ("NBIRTH", None, 0), ("DBIRTH", "d1", 1), ("DDEATH", "d1", 2),
    ]  # fmt: skip
    assert all(m.get("is_null") is True for m in decoded[1].metrics)


def test_a_side_document_with_new_metrics_rebirths_before_the_next_data(tmp_path: Path) -> None:
    """The machine state's side document arriving in a session adds metrics the host does not
    know yet: the device's next message is a DBIRTH that declares them, then its DDATA."""
    fmt = _fmt(tmp_path)
    fmt.connect_sent()
    assert [m.topic.split("/")[2] for m in fmt.online()] == ["NBIRTH", "DBIRTH"]
    doc = {"state": "running", "ts": 1_700_000_000_000, "runtime": {"running": 3.5}}
    fmt.side_message(fmt.device_topic("d1", "state"), json.dumps(doc).encode())
    row = StoredBatch(1, "d1", "data", 1, 1_700_000_000_001, json.dumps(_row(1)).encode(), 0)
    packed = fmt.pack([row])
    assert [p.message.topic.split("/")[2] for p in packed if p.message] == ["DBIRTH", "DDATA"]
    assert packed[0].message is not None
    birth = Decoded(packed[0].message.topic, packed[0].message.payload)
    assert birth.metric("state")["string_value"] == "running"
    assert birth.metric("runtime.running")["double_value"] == 3.5
    assert fmt.pack([row])[0].message.topic.split("/")[2] == "DDATA"  # type: ignore[union-attr]
