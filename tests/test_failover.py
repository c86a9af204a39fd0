"""Broker failover across ``mqtt.servers`` and MQTT v5 negotiation, against real mosquittos."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from agent.core.buffer import Buffer
from agent.north.formats import Format, JsonFormat
from agent.north.publisher import Publisher
from agent.ops.metrics import Metrics
from agent.south.commands import CommandHandler
from tests.brokers import Mosquitto, Subscriber, V5Subscriber, data_seqs, free_port
from tests.e2e import until


def _settings(servers: list[str], **kw: Any) -> SimpleNamespace:
    base = dict(
        host="unused",
        port=1,
        servers=servers,
        username=None,
        qos=1,
        keepalive=5,
        max_inflight=8,
        reconnect_min=0.05,
        reconnect_max=0.2,
        tls=None,
        protocol="auto",
        message_expiry=None,
    )
    base.update(kw)
    return SimpleNamespace(**base)


class Rig:
    """A publisher over a real buffer, for any format (tests of the formats use it too)."""

    def __init__(
        self,
        tmp: Path,
        settings: SimpleNamespace,
        fmt: Format | None = None,
        commands: CommandHandler | None = None,
        password: str | None = None,
    ) -> None:
        self.metrics = Metrics()
        self.buffer = Buffer(tmp / "data", 8_000_000, self.metrics)
        self.fmt = fmt or JsonFormat("gw", "edge/gw")
        self.publisher = Publisher(
            settings, "gw-test", password, self.buffer, self.fmt, self.metrics, commands
        )
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Rig:
        await self.buffer.open()
        self.task = asyncio.create_task(self.publisher.run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.publisher.stop()
        assert self.task is not None
        try:
            await asyncio.wait_for(self.task, 3)
        except TimeoutError:
            self.task.cancel()
        await self.buffer.close()

    async def put(self, device: str, n: int, start: int = 0) -> None:
        for i in range(start, start + n):
            await self.buffer.put(device, 1000 + i, b'{"ts":%d,"values":{"i":%d}}' % (1000 + i, i))

    async def put_doc(self, device: str, doc: dict[str, Any], kind: str = "data") -> None:
        await self.buffer.put(device, int(doc["ts"]), json.dumps(doc).encode(), kind)


@pytest.mark.slow
async def test_first_server_stopped_mid_run_data_continues_on_second_no_seq_lost(
    tmp_path: Path,
) -> None:
    first, second = Mosquitto(tmp_path / "b1"), Mosquitto(tmp_path / "b2")
    first.start()
    second.start()
    subs = []
    try:
        sub1 = Subscriber(first.port, ["edge/gw/+/data"], client_id="c1").start()
        sub2 = Subscriber(second.port, ["edge/gw/+/data"], client_id="c2").start()
        subs = [sub1, sub2]
        servers = [f"127.0.0.1:{first.port}", f"127.0.0.1:{second.port}"]
        async with Rig(tmp_path, _settings(servers)) as rig:
            await rig.put("d1", 30)
            await sub1.wait_for(lambda m: len(data_seqs(m, "d1")) >= 30)
            assert rig.publisher.server == ("127.0.0.1", first.port)
            sub1.stop()
            first.stop()
            await rig.put("d1", 100, start=30)  # polling goes on during the switch
            await sub2.wait_for(lambda m: len(data_seqs(m, "d1")) >= 1, timeout=15)
            assert rig.publisher.server == ("127.0.0.1", second.port)
            await until(lambda: rig.buffer.stats().batches == 0, timeout=15)
            seen = set(data_seqs(sub1.messages, "d1")) | set(data_seqs(sub2.messages, "d1"))
            assert seen == set(range(1, 131))  # nothing lost across the switch
            assert rig.publisher.sessions == 2
    finally:
        for s in subs:
            with contextlib.suppress(Exception):
                s.stop()
        first.stop()
        second.stop()


async def test_unreachable_first_server_is_skipped(tmp_path: Path, broker: Mosquitto) -> None:
    dead = free_port()
    sub = Subscriber(broker.port, ["edge/gw/+/data"]).start()
    servers = [f"127.0.0.1:{dead}", f"127.0.0.1:{broker.port}"]
    async with Rig(tmp_path, _settings(servers)) as rig:
        await rig.put("d1", 3)
        await sub.wait_for(lambda m: data_seqs(m, "d1") == [1, 2, 3])
        assert rig.publisher.server == ("127.0.0.1", broker.port)
    sub.stop()


async def test_v5_data_carries_dedupe_key_as_user_properties(
    tmp_path: Path, broker: Mosquitto
) -> None:
    sub = V5Subscriber(broker.port, ["edge/gw/+/data"]).start()
    settings = _settings([f"127.0.0.1:{broker.port}"], message_expiry=60)
    async with Rig(tmp_path, settings) as rig:
        await rig.put("d1", 2)
        msgs = await sub.wait_for(lambda m: len(m) >= 2)
        assert rig.publisher.protocol == "5"
    sub.stop()
    assert msgs[1].user_properties == [("agent", "gw"), ("device", "d1"), ("seq", "2")]
    assert b'"seq":2' in msgs[1].payload  # the payload itself is unchanged


async def _v311_only_broker(port_box: list[int], levels: list[int], stop: asyncio.Event) -> None:
    """A stand-in for a 3.1.1-only broker: refuses a v5 CONNECT with the 3.1.1 'unacceptable
    protocol version' CONNACK, accepts a 3.1.1 one and then stays silent."""

    async def packet(reader: asyncio.StreamReader) -> tuple[int, bytes]:
        head = await reader.readexactly(2)
        length, shift, byte = 0, 0, head[1]
        while True:
            length |= (byte & 0x7F) << shift
            if not byte & 0x80:
                break
            shift += 7
            byte = (await reader.readexactly(1))[0]
        return head[0], await reader.readexactly(length)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        _, body = await packet(reader)
        level = body[6]  # after the 2-byte length and "MQTT"
        levels.append(level)
        writer.write(b"\x20\x02\x00\x01" if level == 5 else b"\x20\x02\x00\x00")
        await writer.drain()
        if level == 5:
            writer.close()
            return
        with contextlib.suppress(Exception):
            while True:
                kind, body = await packet(reader)
                if kind >> 4 == 3 and (kind >> 1) & 3 == 1:  # PUBLISH QoS 1: PUBACK its id
                    topic_len = int.from_bytes(body[:2], "big")
                    writer.write(b"\x40\x02" + body[2 + topic_len : 4 + topic_len])
                    await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port_box.append(server.sockets[0].getsockname()[1])
    async with server:
        await stop.wait()


async def test_broker_without_v5_gets_311(tmp_path: Path) -> None:
    port_box: list[int] = []
    levels: list[int] = []
    stop = asyncio.Event()
    server = asyncio.create_task(_v311_only_broker(port_box, levels, stop))
    await until(lambda: bool(port_box), timeout=5)
    settings = _settings([f"127.0.0.1:{port_box[0]}"])
    try:
        async with Rig(tmp_path, settings) as rig:
            async with asyncio.timeout(10):
                await rig.publisher.connected.wait()
            assert rig.publisher.protocol == "3.1.1"
            assert levels[:2] == [5, 4]
    finally:
        stop.set()
        await server
