"""One connection to a PLC's MC port: an ``asyncio.Protocol`` over TCP, datagrams over UDP.

Our own rather than a library's: the MC clients on PyPI (pymcprotocol, last released in 2021;
pymelsec, 2022; their forks) are synchronous sockets, which would need a thread per PLC, and
none bounds an answer's length, times out a dribbled answer as a whole, or says why a connect
failed. The 3E frame is small (:mod:`drivers.mc.frame`), so owning it costs little.

One request at a time, one answer per request. The 3E frame has no serial number to match an
answer with its request, so the client trusts the byte stream only while it is in step: bytes
that arrive while no request is waiting, or after the end of an answer, put it out of step, and
so do a timeout and an answer that is not a 3E frame. Out of step, it closes itself (a late or
doubled answer would otherwise pass for the next request's); the agent reconnects with backoff.
What no 3E client can catch is a copy that arrives after the next request went out, when the two
answers are the same size: only the 4E frame's serial number ties an answer to its request.
"""

from __future__ import annotations

import asyncio
import errno
from typing import cast

from drivers.base import DeviceError
from drivers.mc.frame import (
    MAX_ANSWER,
    Answer,
    Encoding,
    FrameError,
    body_length,
    header_size,
    parse_answer,
)

#: A connect waits at least this long (seconds), whatever the answer timeout: a tight timeout
#: for answers (100 ms on a LAN) must not fail connects on a busy network or a loaded gateway,
#: since every failed connect is backed off for a second or more.
CONNECT_TIMEOUT_FLOOR = 1.0


class McClient:
    """A client of one PLC endpoint; ``open`` raises ``DeviceError`` with the reason."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        encoding: Encoding = "binary",
        transport: str = "tcp",
        timeout: float = 1.0,
    ) -> None:
        self.host = host
        self.port = port
        self.encoding: Encoding = encoding
        self.transport = transport
        self.timeout = timeout
        self._stream: _Answers | None = None
        self._udp: asyncio.DatagramTransport | None = None
        self._datagrams: asyncio.Queue[bytes | Exception] = asyncio.Queue(maxsize=16)
        self.frames_sent = 0
        self.bytes_sent = 0

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def bytes_received(self) -> int:
        return self._stream.received if self._stream is not None else 0

    @property
    def connected(self) -> bool:
        if self._udp is not None:
            return not self._udp.is_closing()
        return self._stream is not None and self._stream.open

    async def open(self) -> None:
        await self.close()
        loop = asyncio.get_running_loop()
        limit = max(self.timeout, CONNECT_TIMEOUT_FLOOR)
        try:
            async with asyncio.timeout(limit):
                if self.transport == "udp":
                    self._datagrams = asyncio.Queue(maxsize=16)
                    transport, _ = await loop.create_datagram_endpoint(
                        lambda: _Datagrams(self._datagrams), remote_addr=(self.host, self.port)
                    )
                    self._udp = transport
                else:
                    _, protocol = await loop.create_connection(
                        lambda: _Answers(self.encoding), self.host, self.port
                    )
                    self._stream = protocol
        except TimeoutError:
            raise DeviceError(
                "timeout", f"{self.where}: no answer to connect within {limit}s"
            ) from None
        except OSError as exc:
            if isinstance(exc, ConnectionRefusedError) or exc.errno == errno.ECONNREFUSED:
                raise DeviceError("connection refused", f"{self.where}: {exc}") from None
            raise DeviceError("unreachable", f"{self.where}: {exc}") from None

    async def close(self) -> None:
        """Must not raise."""
        stream, self._stream = self._stream, None
        udp, self._udp = self._udp, None
        if udp is not None:
            udp.close()
        if stream is not None:
            stream.close()

    async def exchange(self, frame: bytes) -> Answer:
        """Send one request and return its answer. Raises ``DeviceError``: ``timeout`` (no
        whole answer in time, however slowly it dribbles), ``invalid answer`` (not a 3E answer:
        garbage, a wrong length, bytes nobody asked for), ``connection lost``, ``connection
        refused`` (UDP: the port is closed); the connection is closed on each."""
        try:
            async with asyncio.timeout(self.timeout):
                return await self._exchange(frame)
        except TimeoutError:
            await self.close()
            why = f"{self.where}: no answer within {self.timeout}s"
            raise DeviceError("timeout", why) from None
        except FrameError as exc:
            await self.close()
            raise DeviceError("invalid answer", f"{self.where}: {exc}") from None
        except ConnectionRefusedError as exc:
            await self.close()
            raise DeviceError("connection refused", f"{self.where}: {exc}") from None
        except (OSError, EOFError) as exc:
            await self.close()
            raise DeviceError("connection lost", f"{self.where}: {exc!r}") from None

    async def _exchange(self, frame: bytes) -> Answer:
        self.frames_sent += 1
        self.bytes_sent += len(frame)
        if self._udp is not None:
            return await self._exchange_datagram(frame)
        stream = self._stream
        if stream is None or not stream.open:
            raise ConnectionResetError("not connected")
        header, rest = await stream.request(frame)
        return parse_answer(header, rest, self.encoding)

    async def _exchange_datagram(self, frame: bytes) -> Answer:
        assert self._udp is not None
        while not self._datagrams.empty():  # answers that came too late for their request
            self._datagrams.get_nowait()
        self._udp.sendto(frame)
        got = await self._datagrams.get()
        if isinstance(got, Exception):
            raise got
        size = header_size(self.encoding)
        if len(got) < size:
            raise FrameError(f"a datagram of {len(got)} bytes")
        return parse_answer(got[:size], got[size:], self.encoding)


class _Answers(asyncio.Protocol):
    """The TCP connection: one outstanding request, its answer cut from the byte stream by the
    3E header's length field, anything else an error for the request (or the next one)."""

    def __init__(self, encoding: Encoding) -> None:
        self.encoding: Encoding = encoding
        self.size = header_size(encoding)
        self.minimum = 2 if encoding == "binary" else 4
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[tuple[bytes, bytes]] | None = None
        self.fault: BaseException | None = None  # why the stream is out of step
        self.received = 0
        self.open = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.open = True

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False
        self._fail(exc or ConnectionResetError("the PLC closed the connection"))

    def close(self) -> None:
        self.open = False
        if self.transport is not None:
            self.transport.close()

    async def request(self, frame: bytes) -> tuple[bytes, bytes]:
        """Send ``frame``; the answer's header and the rest its length field announced."""
        if self.fault is not None:
            raise self.fault
        assert self.transport is not None
        self.buffer.clear()
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(frame)
        try:
            return await self.waiter
        finally:
            self.waiter = None

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        waiter = self.waiter
        if waiter is None or waiter.done():
            self.fault = FrameError(f"{len(data)} bytes nobody asked for")
            return
        self.buffer += data
        if len(self.buffer) > self.size + MAX_ANSWER:
            self._fail(FrameError(f"more than {self.size + MAX_ANSWER} bytes"))
            return
        if len(self.buffer) < self.size:
            return
        header = bytes(self.buffer[: self.size])
        try:
            length = body_length(header, self.encoding, answer=True)
        except FrameError as exc:
            self._fail(exc)
            return
        if not self.minimum <= length <= MAX_ANSWER:
            self._fail(FrameError(f"length field {length} ({self.minimum}..{MAX_ANSWER})"))
            return
        end = self.size + length
        if len(self.buffer) < end:
            return
        if len(self.buffer) > end:
            self._fail(FrameError(f"{len(self.buffer) - end} bytes after the answer"))
            return
        waiter.set_result((header, bytes(self.buffer[self.size : end])))
        self.buffer.clear()

    def _fail(self, exc: BaseException) -> None:
        self.fault = exc
        self.buffer.clear()
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)


class _Datagrams(asyncio.DatagramProtocol):
    """Received datagrams (and ICMP errors: port unreachable) into a bounded queue."""

    def __init__(self, queue: asyncio.Queue[bytes | Exception]) -> None:
        self.queue = queue

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        if not self.queue.full():
            self.queue.put_nowait(data[: MAX_ANSWER + 18])

    def error_received(self, exc: Exception) -> None:
        if not self.queue.full():
            self.queue.put_nowait(exc)
