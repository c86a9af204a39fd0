"""A TCP proxy that misbehaves on demand, for putting faults between the agent and its peers.

Placed between the agent and the broker, or between the agent and a Modbus device, it forwards
bytes faithfully (``pass``) until the test switches it, at run time, to another mode:

``delay``     every chunk is held ``seconds`` before it is forwarded (order and throughput kept);
``blackhole`` bytes are read and dropped, nothing is closed: a half-open link, no FIN, no RST. A
              connection that lost bytes this way stays dead even after ``pass`` (its stream is
              broken), exactly like a peer that vanished; new connections are accepted and
              swallowed;
``reset``     every open connection is aborted with an RST, and new ones are reset at once;
``throttle``  at most ``rate`` bytes per second;
``cut``       the next chunk is forwarded only up to ``after`` bytes, then the connection is
              closed: a frame truncated mid-packet;
``garbage``   every chunk is replaced with random bytes of the same length.

Each mode applies to one direction (``up``: client to server, ``down``: server to client) or to
both. The proxy runs on the test's event loop; it needs no thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
import time
from dataclasses import dataclass
from typing import Literal

Mode = Literal["pass", "delay", "blackhole", "reset", "throttle", "cut", "garbage"]
Direction = Literal["up", "down", "both"]

_CHUNK = 65536


@dataclass
class _Fault:
    mode: Mode = "pass"
    seconds: float = 0.0
    rate: float = 0.0
    after: int = 0


class _Link:
    """One accepted client and its upstream connection."""

    def __init__(self, proxy: FaultProxy, client: asyncio.StreamWriter) -> None:
        self.proxy = proxy
        self.client = client
        self.server: asyncio.StreamWriter | None = None
        self.dead = False  # lost bytes to a blackhole: never forwards again
        self.tasks: list[asyncio.Task[None]] = []

    def abort(self) -> None:
        """Close both sides with an RST (SO_LINGER 0), not a FIN."""
        for w in (self.client, self.server):
            if w is None:
                continue
            sock = w.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            w.transport.abort()

    def close(self) -> None:
        for w in (self.client, self.server):
            if w is not None:
                w.transport.close()


class FaultProxy:
    """``async with FaultProxy(port) as proxy:`` then connect to ``proxy.port``."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._faults: dict[str, _Fault] = {"up": _Fault(), "down": _Fault()}
        self._links: set[_Link] = set()
        self._server: asyncio.Server | None = None
        self.accepted = 0  # connections accepted so far
        self.forwarded = {"up": 0, "down": 0}  # bytes forwarded per direction
        self._rng = random.Random(0)

    # -- control ----------------------------------------------------------------------------------

    def set(
        self,
        mode: Mode,
        direction: Direction = "both",
        *,
        seconds: float = 0.0,
        rate: float = 0.0,
        after: int = 0,
    ) -> None:
        """Switch mode; applies to every chunk read from now on."""
        for d in ("up", "down") if direction == "both" else (direction,):
            self._faults[d] = _Fault(mode, seconds, rate, after)
        if mode == "reset":
            for link in list(self._links):
                link.abort()

    @property
    def connections(self) -> int:
        """Connections currently open through the proxy."""
        return len(self._links)

    # -- life cycle -------------------------------------------------------------------------------

    async def start(self) -> FaultProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for link in list(self._links):
            link.abort()
            for t in link.tasks:
                t.cancel()
        for link in list(self._links):
            await asyncio.gather(*link.tasks, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
            self._server = None

    async def __aenter__(self) -> FaultProxy:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- forwarding -------------------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        link = _Link(self, writer)
        self._links.add(link)
        try:
            up = self._faults["up"].mode
            if up == "reset":
                link.abort()
                return
            if up == "blackhole":
                link.dead = True
                await self._swallow(reader)
                return
            try:
                s_reader, s_writer = await asyncio.open_connection(*self.target)
            except OSError:
                link.abort()
                return
            link.server = s_writer
            link.tasks = [
                asyncio.current_task(),  # type: ignore[list-item]
            ]
            down = asyncio.create_task(self._pump(link, s_reader, writer, "down"))
            link.tasks.append(down)
            try:
                await self._pump(link, reader, s_writer, "up")
            finally:
                await asyncio.gather(down, return_exceptions=True)
        except (asyncio.CancelledError, ConnectionError, OSError):
            pass
        finally:
            self._links.discard(link)
            link.close()

    async def _swallow(self, reader: asyncio.StreamReader) -> None:
        while await reader.read(_CHUNK):
            pass

    async def _pump(
        self,
        link: _Link,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        direction: str,
    ) -> None:
        """Read chunks, apply the direction's fault, forward. Ends when either side closes."""
        queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()
        sender = asyncio.create_task(self._send(link, queue, writer, direction))
        try:
            while True:
                try:
                    data = await reader.read(_CHUNK)
                except (ConnectionError, OSError):
                    data = b""
                if not data:
                    break
                fault = self._faults[direction]
                if link.dead or fault.mode == "blackhole":
                    link.dead = True
                    continue
                if fault.mode == "reset":
                    link.abort()
                    break
                if fault.mode == "garbage":
                    data = self._rng.randbytes(len(data))
                if fault.mode == "cut":
                    await queue.put((0.0, data[: fault.after]))
                    await queue.put(None)
                    await sender
                    link.close()
                    return
                hold = fault.seconds if fault.mode == "delay" else 0.0
                await queue.put((time.monotonic() + hold, data))
        finally:
            if not sender.done():
                await queue.put(None)
                with contextlib.suppress(Exception):
                    await sender
            if not link.dead:
                # Pass the FIN on, so the other side sees the close as it happened.
                with contextlib.suppress(OSError, RuntimeError):
                    if writer.can_write_eof():
                        writer.write_eof()

    async def _send(
        self,
        link: _Link,
        queue: asyncio.Queue[tuple[float, bytes] | None],
        writer: asyncio.StreamWriter,
        direction: str,
    ) -> None:
        while True:
            item = await queue.get()
            if item is None:
                return
            at, data = item
            wait = at - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            if link.dead:
                continue
            try:
                writer.write(data)
                await writer.drain()
            except (ConnectionError, OSError):
                return
            self.forwarded[direction] += len(data)
            fault = self._faults[direction]
            if fault.mode == "throttle" and fault.rate > 0:
                await asyncio.sleep(len(data) / fault.rate)
