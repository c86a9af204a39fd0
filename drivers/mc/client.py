"""One connection to a PLC's MC port, over asyncio streams (TCP) or datagrams (UDP).

Our own rather than a library's: the MC clients on PyPI (pymcprotocol, pymelsec and their forks)
are synchronous sockets, which would need a thread per PLC, and have not been released for years;
none bounds an answer's length, times out a dribbled answer as a whole, or says why a connect
failed. The 3E frame is small (:mod:`drivers.mc.frame`), so owning it costs little.

One request at a time, one answer per request. The 3E frame has no serial number to match an
answer with its request, so after a timeout or an answer that is not a 3E frame the client closes
itself (a late answer would otherwise pass for the next one); the agent reconnects with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno

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
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._udp: asyncio.DatagramTransport | None = None
        self._datagrams: asyncio.Queue[bytes | Exception] = asyncio.Queue(maxsize=16)
        self.frames_sent = 0
        self.bytes_sent = 0
        self.bytes_received = 0

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def connected(self) -> bool:
        if self._udp is not None:
            return not self._udp.is_closing()
        return self._writer is not None and not self._writer.is_closing()

    async def open(self) -> None:
        await self.close()
        try:
            async with asyncio.timeout(self.timeout):
                if self.transport == "udp":
                    loop = asyncio.get_running_loop()
                    self._datagrams = asyncio.Queue(maxsize=16)
                    transport, _ = await loop.create_datagram_endpoint(
                        lambda: _Datagrams(self._datagrams), remote_addr=(self.host, self.port)
                    )
                    self._udp = transport
                else:
                    self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        except TimeoutError:
            raise DeviceError(
                "timeout", f"{self.where}: no answer to connect within {self.timeout}s"
            ) from None
        except OSError as exc:
            if isinstance(exc, ConnectionRefusedError) or exc.errno == errno.ECONNREFUSED:
                raise DeviceError("connection refused", f"{self.where}: {exc}") from None
            raise DeviceError("unreachable", f"{self.where}: {exc}") from None

    async def close(self) -> None:
        """Must not raise."""
        writer, self._writer, self._reader = self._writer, None, None
        udp, self._udp = self._udp, None
        if udp is not None:
            udp.close()
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 0.5)

    async def exchange(self, frame: bytes) -> Answer:
        """Send one request and return its answer. Raises ``DeviceError``: ``timeout`` (no
        whole answer in time, however slowly it dribbles), ``invalid answer`` (not a 3E answer:
        garbage, a wrong length), ``connection lost``; the connection is closed on each."""
        try:
            async with asyncio.timeout(self.timeout):
                return await self._exchange(frame)
        except TimeoutError:
            await self.close()
            raise DeviceError(
                "timeout", f"{self.where}: no answer within {self.timeout}s"
            ) from None
        except FrameError as exc:
            await self.close()
            raise DeviceError("invalid answer", f"{self.where}: {exc}") from None
        except ConnectionRefusedError as exc:  # UDP: the port is closed (ICMP)
            await self.close()
            raise DeviceError("connection refused", f"{self.where}: {exc}") from None
        except (OSError, EOFError, asyncio.IncompleteReadError) as exc:
            await self.close()
            raise DeviceError("connection lost", f"{self.where}: {exc!r}") from None

    async def _exchange(self, frame: bytes) -> Answer:
        size = header_size(self.encoding)
        if self._udp is not None:
            while not self._datagrams.empty():  # answers that came too late for their request
                self._datagrams.get_nowait()
            self._udp.sendto(frame)
            self._count_sent(frame)
            got = await self._datagrams.get()
            if isinstance(got, Exception):
                raise got
            self.bytes_received += len(got)
            if len(got) < size:
                raise FrameError(f"a datagram of {len(got)} bytes")
            return parse_answer(got[:size], got[size:], self.encoding)
        reader, writer = self._reader, self._writer
        if reader is None or writer is None or writer.is_closing():
            raise ConnectionResetError("not connected")
        writer.write(frame)
        self._count_sent(frame)
        await writer.drain()
        header = await reader.readexactly(size)
        self.bytes_received += size
        length = body_length(header, self.encoding, answer=True)
        minimum = 2 if self.encoding == "binary" else 4
        if not minimum <= length <= MAX_ANSWER:
            raise FrameError(f"length field {length} (an answer is {minimum}..{MAX_ANSWER})")
        rest = await reader.readexactly(length)
        self.bytes_received += length
        return parse_answer(header, rest, self.encoding)

    def _count_sent(self, frame: bytes) -> None:
        self.frames_sent += 1
        self.bytes_sent += len(frame)


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
