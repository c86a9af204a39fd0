"""A transparent TCP proxy in front of a broker that parses every MQTT packet, both ways.

What a client put in its CONNECT (will topic, payload, QoS and retain flag, clean session or
clean start, session expiry), the QoS and retain flag of each PUBLISH as the client sent it, its
SUBSCRIBE filters and QoS, its DISCONNECT reason code: none of it is visible to another
subscriber (a broker delivers at the subscription's QoS and clears the retain flag of live
messages), all of it is what the Sparkplug TCK judges. The TCK reads it inside HiveMQ; this reads
it on the wire, so the agent's own code is not the judge of itself.

Bytes are forwarded unchanged as they arrive; parsing works on a copy. ``close_listener`` and
``open_listener`` make the port refuse connections for a while (a closed port, as a stopped broker
looks to a client) and take them again on the same port.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

NAMES = {
    1: "CONNECT", 2: "CONNACK", 3: "PUBLISH", 4: "PUBACK", 5: "PUBREC", 6: "PUBREL",
    7: "PUBCOMP", 8: "SUBSCRIBE", 9: "SUBACK", 10: "UNSUBSCRIBE", 11: "UNSUBACK",
    12: "PINGREQ", 13: "PINGRESP", 14: "DISCONNECT", 15: "AUTH",
}  # fmt: skip

# MQTT 5 property identifiers by how their value is encoded (spec 2.2.2.2).
_BYTE = {0x01, 0x17, 0x19, 0x24, 0x25, 0x28, 0x29, 0x2A}
_TWO = {0x13, 0x21, 0x22, 0x23}
_FOUR = {0x02, 0x11, 0x18, 0x27}
_VARINT = {0x0B}
_STRING = {0x03, 0x08, 0x12, 0x15, 0x1A, 0x1C, 0x1F}
_BINARY = {0x09, 0x16}
_PAIR = {0x26}
SESSION_EXPIRY = 0x11


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def byte(self) -> int:
        self.pos += 1
        return self.data[self.pos - 1]

    def u16(self) -> int:
        (value,) = struct.unpack_from(">H", self.data, self.pos)
        self.pos += 2
        return int(value)

    def u32(self) -> int:
        (value,) = struct.unpack_from(">I", self.data, self.pos)
        self.pos += 4
        return int(value)

    def varint(self) -> int:
        value, shift = 0, 0
        while True:
            b = self.byte()
            value |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                return value

    def binary(self) -> bytes:
        n = self.u16()
        self.pos += n
        return self.data[self.pos - n : self.pos]

    def string(self) -> str:
        return self.binary().decode()

    def rest(self) -> bytes:
        out = self.data[self.pos :]
        self.pos = len(self.data)
        return out

    def properties(self) -> dict[int, Any]:
        end = self.varint()
        end += self.pos
        props: dict[int, Any] = {}
        while self.pos < end:
            ident = self.varint()
            value: Any
            if ident in _BYTE:
                value = self.byte()
            elif ident in _TWO:
                value = self.u16()
            elif ident in _FOUR:
                value = self.u32()
            elif ident in _VARINT:
                value = self.varint()
            elif ident in _STRING:
                value = self.string()
            elif ident in _BINARY:
                value = self.binary()
            elif ident in _PAIR:
                value = (self.string(), self.string())
            else:
                raise ValueError(f"unknown MQTT property 0x{ident:02x}")
            props[ident] = value
        return props


@dataclass
class Will:
    topic: str
    payload: bytes
    qos: int
    retain: bool


@dataclass
class Connect:
    level: int  # 4: MQTT 3.1.1, 5: MQTT 5
    clean: bool  # Clean Session (3.1.1) or Clean Start (5)
    keepalive: int
    client_id: str
    properties: dict[int, Any]
    will: Will | None


@dataclass
class Packet:
    direction: str  # "up": client to broker, "down": broker to client
    kind: str
    flags: int
    order: int  # arrival order over every connection of every proxy sharing the clock
    topic: str | None = None
    qos: int = 0
    retain: bool = False
    dup: bool = False
    payload: bytes = b""
    connect: Connect | None = None
    subscriptions: list[tuple[str, int]] = field(default_factory=list)
    reason: int | None = None  # CONNACK return/reason code, DISCONNECT reason code


def _decode(direction: str, ptype: int, flags: int, body: bytes, level: int, order: int) -> Packet:
    p = Packet(direction, NAMES.get(ptype, f"type{ptype}"), flags, order)
    r = _Reader(body)
    v5 = level == 5
    if p.kind == "CONNECT":
        r.string()  # "MQTT"
        lvl = r.byte()
        cflags = r.byte()
        keepalive = r.u16()
        props = r.properties() if lvl == 5 else {}
        client_id = r.string()
        will = None
        if cflags & 0x04:
            if lvl == 5:
                r.properties()
            topic = r.string()
            will = Will(topic, r.binary(), (cflags >> 3) & 3, bool(cflags & 0x20))
        p.connect = Connect(lvl, bool(cflags & 0x02), keepalive, client_id, props, will)
    elif p.kind == "PUBLISH":
        p.qos, p.retain, p.dup = (flags >> 1) & 3, bool(flags & 1), bool(flags & 8)
        p.topic = r.string()
        if p.qos:
            r.u16()
        if v5:
            r.properties()
        p.payload = r.rest()
    elif p.kind == "SUBSCRIBE":
        r.u16()
        if v5:
            r.properties()
        while r.pos < len(body):
            topic = r.string()
            p.subscriptions.append((topic, r.byte() & 3))
    elif p.kind == "CONNACK":
        r.byte()
        p.reason = r.byte()
    elif p.kind == "DISCONNECT":
        p.reason = r.byte() if body else 0
    return p


class _Stream:
    """Incremental framing of one direction of one connection."""

    def __init__(self, conn: Connection, direction: str) -> None:
        self.conn = conn
        self.direction = direction
        self.buf = bytearray()

    def feed(self, data: bytes) -> None:
        self.buf += data
        while True:
            if len(self.buf) < 2:
                return
            length, shift, i = 0, 0, 1
            while True:
                if i >= len(self.buf):
                    return
                b = self.buf[i]
                length |= (b & 0x7F) << shift
                shift += 7
                i += 1
                if not b & 0x80:
                    break
            if len(self.buf) < i + length:
                return
            first = self.buf[0]
            body = bytes(self.buf[i : i + length])
            del self.buf[: i + length]
            self.conn.record(self.direction, first >> 4, first & 0x0F, body)


class Connection:
    """One client connection through the proxy and every packet it carried."""

    def __init__(self, wire: Wire, index: int) -> None:
        self.wire = wire
        self.index = index
        self.packets: list[Packet] = []
        self.level = 4
        self.opened = next(wire.clock)
        self.closed: int | None = None

    def record(self, direction: str, ptype: int, flags: int, body: bytes) -> None:
        packet = _decode(direction, ptype, flags, body, self.level, next(self.wire.clock))
        if packet.connect is not None:
            self.level = packet.connect.level
        self.packets.append(packet)
        self.wire.changed()

    @property
    def connect(self) -> Connect:
        first = self.packets[0]
        assert first.connect is not None, first
        return first.connect

    def up(self, kind: str | None = None) -> list[Packet]:
        return [p for p in self.packets if p.direction == "up" and kind in (None, p.kind)]

    def down(self, kind: str | None = None) -> list[Packet]:
        return [p for p in self.packets if p.direction == "down" and kind in (None, p.kind)]

    @property
    def accepted(self) -> bool:
        return any(p.kind == "CONNACK" and p.reason == 0 for p in self.packets)


class Wire:
    """``await Wire(broker_port).start()``; clients connect to ``wire.port``."""

    def __init__(self, target_port: int, clock: Iterator[int] | None = None) -> None:
        self.target = ("127.0.0.1", target_port)
        self.port = 0
        self.clock = clock or itertools.count()
        self.connections: list[Connection] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._event = asyncio.Event()

    async def start(self) -> Wire:
        await self.open_listener()
        return self

    async def open_listener(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close_listener(self) -> None:
        """Refuse new connections (the port is closed); open ones go on."""
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
            self._server = None

    async def stop(self) -> None:
        await self.close_listener()
        for w in list(self._writers):
            w.transport.abort()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def changed(self) -> None:
        self._event.set()

    async def wait_for(self, predicate: Callable[[], Any], timeout: float = 10.0) -> None:
        """Await until ``predicate()`` holds, re-checked at every packet and every close: a
        condition on the traffic only (anything else may change without a packet)."""
        async with asyncio.timeout(timeout):
            while not predicate():
                self._event.clear()
                await self._event.wait()

    def publishes(self) -> list[tuple[Connection, Packet]]:
        """Every PUBLISH the clients sent, in wire order."""
        return [(c, p) for c in self.connections for p in c.up("PUBLISH")]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        conn = Connection(self, len(self.connections))
        self.connections.append(conn)
        self._writers.add(writer)
        try:
            s_reader, s_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            conn.closed = next(self.clock)
            self._writers.discard(writer)
            self._tasks.discard(task)
            self.changed()
            return
        self._writers.add(s_writer)
        down = asyncio.create_task(self._pump(s_reader, writer, _Stream(conn, "down")))
        self._tasks.add(down)
        try:
            await self._pump(reader, s_writer, _Stream(conn, "up"))
        finally:
            # Either side closing ends the connection, as it would without the proxy; what was
            # already read is flushed first (a DISCONNECT must reach the broker, or it sends the
            # will).
            writer.close()
            s_writer.close()
            await asyncio.gather(down, return_exceptions=True)
            conn.closed = next(self.clock)
            self._writers.discard(writer)
            self._writers.discard(s_writer)
            self._tasks.discard(task)
            self._tasks.discard(down)
            self.changed()

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, stream: _Stream
    ) -> None:
        with contextlib.suppress(ConnectionError, OSError, asyncio.CancelledError):
            while data := await reader.read(65536):
                writer.write(data)
                stream.feed(data)
                await writer.drain()
        writer.close()
