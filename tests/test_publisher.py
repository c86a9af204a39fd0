"""The publisher against a real mosquitto: PUBACK before delete, outages lose nothing."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from agent.north.formats import JsonFormat
from agent.south.commands import CommandHandler
from drivers.base import DeviceBase, TagBase
from tests import test_failover as failover
from tests.brokers import Mosquitto, Subscriber, data_seqs
from tests.e2e import until


def _settings(port: int, **kw: Any) -> SimpleNamespace:
    base = dict(
        host="127.0.0.1",
        port=port,
        username=None,
        qos=1,
        keepalive=5,
        max_inflight=16,
        reconnect_min=0.05,
        reconnect_max=0.2,
        tls=None,
    )
    base.update(kw)
    return SimpleNamespace(**base)


class Rig(failover.Rig):
    """The failover tests' publisher rig on one broker, with a device ``d1`` commands can name."""

    def __init__(self, tmp: Path, port: int) -> None:
        dev = DeviceBase(name="d1", driver="x", tags=[TagBase(name="t")])
        super().__init__(tmp, _settings(port), commands=CommandHandler({"d1": dev}))

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        return self.metrics.registry.get_sample_value(name, labels) or 0.0


async def test_batches_arrive_in_order_and_leave_buffer_after_puback(
    tmp_path: Path, broker: Mosquitto
) -> None:
    sub = Subscriber(broker.port, ["edge/gw/#"]).start()
    async with Rig(tmp_path, broker.port) as rig:
        await rig.put("d1", 50)
        await rig.put("d2", 5)
        await sub.wait_for(lambda m: len(data_seqs(m, "d1")) >= 50 and len(data_seqs(m, "d2")) >= 5)
        assert data_seqs(sub.messages, "d1") == list(range(1, 51))
        first = next(m for m in sub.messages if m.topic == "edge/gw/d1/data").json()
        assert first == {"agent": "gw", "device": "d1", "seq": 1, "ts": 1000, "values": {"i": 0}}
        await until(lambda: rig.buffer.stats().batches == 0, timeout=5)
        assert rig.metric("edge_agent_published_batches_total", {"output": "default"}) == 55
        assert rig.metric("edge_agent_mqtt_connected", {"output": "default"}) == 1
    online = [m for m in sub.messages if m.topic == "edge/gw/status"]
    assert online[0].json()["online"] is True
    assert online[-1].json() == {"online": False}  # said on a clean stop
    sub.stop()


@pytest.mark.slow
async def test_broker_outage_loses_nothing(tmp_path: Path, broker: Mosquitto) -> None:
    sub = Subscriber(broker.port, ["edge/gw/+/data"], client_id="persist").start()
    async with Rig(tmp_path, broker.port) as rig:
        await rig.put("d1", 20)
        await sub.wait_for(lambda m: len(data_seqs(m, "d1")) >= 20)
        broker.stop()
        await until(lambda: not rig.publisher.connected.is_set(), timeout=5)
        await rig.put("d1", 200)  # polling goes on while the broker is away
        assert rig.buffer.stats().batches >= 200
        broker.start()
        assert sub.connected.wait(10)
        await sub.wait_for(lambda m: set(range(1, 221)) <= set(data_seqs(m, "d1")), timeout=20)
        seqs = data_seqs(sub.messages, "d1")
        assert len(seqs) - len(set(seqs)) <= 16  # duplicates only within the in-flight window
        assert rig.publisher.sessions >= 2
    sub.stop()


async def test_every_command_gets_a_reply(tmp_path: Path, broker: Mosquitto) -> None:
    sub = Subscriber(broker.port, ["edge/gw/+/cmd/reply"]).start()
    async with Rig(tmp_path, broker.port) as rig:
        async with asyncio.timeout(5):
            await rig.publisher.connected.wait()
        await asyncio.sleep(0.2)  # let the SUBSCRIBE reach the broker
        sub._client.publish("edge/gw/d1/cmd", b"{broken", qos=1)
        sub._client.publish("edge/gw/d1/cmd", b'{"id": "c1", "write": {"t": 5}}', qos=1)
        msgs = await sub.wait_for(lambda m: len(m) >= 2)
        replies = [m.json() for m in msgs if m.topic == "edge/gw/d1/cmd/reply"]
        assert replies[0]["id"] is None and replies[0]["ok"] is False
        assert replies[1] == {"id": "c1", "ok": False, "error": "tag 't' is not writable"}
    sub.stop()


class _Fussy(JsonFormat):
    """A format with a bug that only one batch triggers."""

    def pack(self, rows: Any) -> Any:
        if any(r.seq == 3 for r in rows):
            if len(rows) > 1:
                raise ValueError("cannot encode a group with seq 3")
            raise ValueError("cannot encode seq 3")
        return super().pack(rows)


async def test_a_batch_the_format_cannot_encode_does_not_stop_the_rest(
    tmp_path: Path, broker: Mosquitto
) -> None:
    sub = Subscriber(broker.port, ["edge/gw/+/data"]).start()
    rig = Rig(tmp_path, broker.port)
    rig.publisher._fmt = _Fussy("gw", "edge/gw")
    async with rig:
        await rig.put("d1", 6)
        await sub.wait_for(lambda m: len(data_seqs(m, "d1")) >= 5)
        # The one it cannot encode is quarantined: kept in the buffer, never acknowledged unsent.
        await until(lambda: rig.buffer.stats().batches == 1, timeout=5)
        assert rig.buffer.stats().quarantined == 1
        assert rig.publisher.connected.is_set()
    sub.stop()
    assert data_seqs(sub.messages, "d1") == [1, 2, 4, 5, 6]
