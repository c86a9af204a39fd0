"""One Modbus medium (a TCP connection, a serial port, a connection to an RTU-over-TCP converter)
and the rules of talking on it.

Devices on a shared transport (``rtu``, ``rtu-over-tcp``, ``tcp-gateway``) get one link per port
or endpoint, handed to each of them by the agent as their ``Line``; a lone ``tcp`` device makes a
link of its own. The agent polls a line's devices from one task, so a link carries one request at
a time without a lock of its own.

Modbus TCP (``tcp``, ``tcp-gateway``) goes through our own MBAP client
(:mod:`drivers.modbus.mbap`), not pymodbus's: at the 5,000 requests/s of 50,000 points/s,
pymodbus's client was ~29 % of the event loop. Ours costs 14.9 us of CPU per request with 100
connections against pymodbus's 50.8 us and a bare socket's 14.2 us (38.9, 87.2 and 33.7 us one
connection at a time; ``python -m bench.bench_modbus_requests`` measures all three in one run).
RTU, on a serial port or over TCP, keeps pymodbus: there the baud rate, not the CPU, is the limit.
pymodbus is imported only when an RTU client is built (:mod:`drivers.modbus.rtu`), and its
exceptions become ours (:mod:`drivers.modbus.errors`) here, so an agent with Modbus TCP devices
only never loads it (~2 MB of RSS).

What pymodbus does not do and the link does: the RTU inter-frame silence (3.5 character times,
1.75 ms above 19200 baud) before each request, measured from the last byte seen on the line (an
answer, or the end of a timeout), plus a device's ``pause_between_requests``; a timeout per
request (devices on one line may differ; pymodbus has one per client); and counts of the frames
sent and the bytes seen, which the benchmark turns into line utilisation (for TCP they are
informative).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar

from drivers.base import DeviceError, Line
from drivers.modbus.config import ModbusConnection
from drivers.modbus.mbap import MbapClient

if TYPE_CHECKING:
    from pymodbus.client.base import ModbusBaseClient

T = TypeVar("T")
#: A request: called with the link's client (an ``MbapClient`` for Modbus TCP, a pymodbus client
#: for RTU; both offer the same read and write methods), awaited for the answer.
Call = Callable[[Any], Awaitable[T]]
#: What a link talks through: our MBAP client on TCP, pymodbus's on RTU (same methods). A string,
#: so that naming it imports no pymodbus.
Client: TypeAlias = "MbapClient | ModbusBaseClient"

#: The transports our MBAP client speaks.
_MBAP_TRANSPORTS = frozenset({"tcp", "tcp-gateway"})


class ModbusLink(Line):
    """A Modbus client on one port or endpoint, used one request at a time."""

    def __init__(self, conn: ModbusConnection) -> None:
        self.key = conn.endpoint
        self.conn = conn
        self._client: Client | None = None
        self._silence = conn.frame_silence
        self._quiet_from = 0.0  # time.monotonic() of the last byte on the line
        # Counts of clients closed since, and of pymodbus's (which reports through _trace).
        self._frames_sent = 0
        self._bytes_sent = 0
        self._bytes_received = 0

    def _live(self, counter: str) -> int:
        """The open MBAP client's own count (pymodbus's are added in ``_trace`` as they come)."""
        client = self._client
        return int(getattr(client, counter)) if isinstance(client, MbapClient) else 0

    @property
    def frames_sent(self) -> int:
        return self._frames_sent + self._live("frames_sent")

    @property
    def bytes_sent(self) -> int:
        return self._bytes_sent + self._live("bytes_sent")

    @property
    def bytes_received(self) -> int:
        return self._bytes_received + self._live("bytes_received")

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.connected

    def _make_client(self) -> Client:
        conn = self.conn
        if conn.transport in _MBAP_TRANSPORTS:
            assert isinstance(conn.port, int) and conn.host is not None
            return MbapClient(conn.host, conn.port, timeout=conn.timeout)
        from drivers.modbus import rtu  # pymodbus: loaded for RTU only

        return rtu.make_client(conn, self._trace)

    async def open(self) -> None:
        if self.connected:
            return
        await self.close()
        client = self._make_client()
        if await client.connect() and client.connected:
            self._client = client
            self._quiet_from = time.monotonic()
            return
        client.close()
        if isinstance(client, MbapClient) and client.error is not None:
            raise self._why_refused(client.error)
        raise await self._why_unreachable()

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        if isinstance(client, MbapClient):
            self._frames_sent += client.frames_sent
            self._bytes_sent += client.bytes_sent
            self._bytes_received += client.bytes_received
        # close() must never raise, whatever pymodbus does with a half-dead transport.
        with contextlib.suppress(Exception):
            client.close()

    async def execute(self, call: Call[T], *, timeout: float, pause: float = 0.0) -> T:
        """Send one request after the line's silence; raise ``DeviceError`` when not open.

        The client's exceptions (:mod:`drivers.modbus.errors`: ``NoAnswer`` for no answer...)
        pass through, pymodbus's translated into them on RTU (the original as ``__cause__``):
        what they mean depends on the device's situation, which the driver knows."""
        client = self._client
        if client is None or not client.connected:
            raise DeviceError("connection lost", f"{self.key}: not open")
        silence = pause if pause > self._silence else self._silence
        if silence > 0:
            wait = self._quiet_from + silence - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
        if isinstance(client, MbapClient):
            client.timeout = timeout
            try:
                return await call(client)
            finally:
                self._quiet_from = time.monotonic()
        client.comm_params.timeout_connect = timeout
        try:
            return await call(client)
        except Exception as exc:
            from drivers.modbus import rtu  # already loaded: it built the client

            ours = rtu.ours(exc)
            if ours is None:
                raise
            raise ours from exc
        finally:
            self._quiet_from = time.monotonic()

    def _trace(self, sending: bool, data: bytes) -> bytes:
        if sending:
            self._frames_sent += 1
            self._bytes_sent += len(data)
        else:
            self._bytes_received += len(data)
        self._quiet_from = time.monotonic()
        return data

    def _why_refused(self, exc: BaseException) -> DeviceError:
        """The device's reason for a failed TCP connect."""
        where, conn = self.key, self.conn
        if isinstance(exc, ConnectionRefusedError) or (
            isinstance(exc, OSError) and exc.errno == errno.ECONNREFUSED
        ):
            return DeviceError("connection refused", f"{where}: {exc}")
        if isinstance(exc, TimeoutError):
            return DeviceError("timeout", f"{where}: no answer to connect within {conn.timeout}s")
        return DeviceError("unreachable", f"{where}: {exc}")

    async def _why_unreachable(self) -> DeviceError:
        """pymodbus only says "False"; find out why, for the device status."""
        conn = self.conn
        if conn.transport == "rtu":
            path = str(conn.port)
            try:
                fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
            except OSError as exc:
                reason = {
                    errno.ENOENT: "port not found",
                    errno.ENODEV: "port not found",
                    errno.ENXIO: "port not found",
                    errno.EACCES: "permission denied",
                    errno.EPERM: "permission denied",
                    errno.EBUSY: "port busy",
                }.get(exc.errno or 0, "port unusable")
                return DeviceError(reason, f"{path}: {exc}")
            os.close(fd)
            return DeviceError("port busy", f"{path}: cannot open it exclusively")
        where = self.key
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(conn.host, conn.port), timeout=conn.timeout
            )
        except (OSError, TimeoutError) as exc:
            return self._why_refused(exc)
        writer.close()
        return DeviceError("unreachable", f"{where}: connect failed, then succeeded on retry")
