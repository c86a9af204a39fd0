"""One Modbus medium (a TCP connection, a serial port, a connection to an RTU-over-TCP converter)
and the rules of talking on it.

Devices on a shared transport (``rtu``, ``rtu-over-tcp``, ``tcp-gateway``) get one link per port
or endpoint, handed to each of them by the agent as their ``Line``; a lone ``tcp`` device makes a
link of its own. The agent polls a line's devices from one task, so a link carries one request at
a time without a lock of its own.

What pymodbus does not do and the link does: the RTU inter-frame silence (3.5 character times,
1.75 ms above 19200 baud) before each request, measured from the last byte seen on the line (an
answer, or the end of a timeout), plus a device's ``pause_between_requests``; a timeout per
request (devices on one line may differ; pymodbus has one per client); and counts of the frames
sent and the bytes seen, which the benchmark turns into line utilisation.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.client.base import ModbusBaseClient
from pymodbus.framer import FramerType

from drivers.base import DeviceError, Line
from drivers.modbus.config import ModbusConnection

T = TypeVar("T")
Call = Callable[[ModbusBaseClient], Awaitable[T]]

#: On a shared line pymodbus must never drop the connection because a dead unit stopped
#: answering: the other units still answer. The agent backs off the dead one instead.
_NEVER_GIVE_UP = 1_000_000


class ModbusLink(Line):
    """A pymodbus client on one port or endpoint, used one request at a time."""

    def __init__(self, conn: ModbusConnection) -> None:
        self.key = conn.endpoint
        self.conn = conn
        self._client: ModbusBaseClient | None = None
        self._quiet_from = 0.0  # time.monotonic() of the last byte on the line
        self.frames_sent = 0
        self.bytes_sent = 0
        self.bytes_received = 0

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.connected

    def _make_client(self) -> ModbusBaseClient:
        conn = self.conn
        common: dict[str, Any] = {
            "timeout": conn.timeout,
            "retries": 0,
            "reconnect_delay": 0,
            "trace_packet": self._trace,
        }
        client: ModbusBaseClient
        if conn.transport == "rtu":
            client = AsyncModbusSerialClient(
                str(conn.port),
                framer=FramerType.RTU,
                baudrate=conn.baudrate,
                parity=conn.parity,
                stopbits=conn.stopbits,
                bytesize=conn.bytesize,
                **common,
            )
        else:
            framer = FramerType.RTU if conn.transport == "rtu-over-tcp" else FramerType.SOCKET
            assert isinstance(conn.port, int)
            client = AsyncModbusTcpClient(conn.host, port=conn.port, framer=framer, **common)
        if conn.shared:
            client.set_max_no_responses(_NEVER_GIVE_UP)
        return client

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
        raise await self._why_unreachable()

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            # close() must never raise, whatever pymodbus does with a half-dead transport.
            with contextlib.suppress(Exception):
                client.close()

    async def execute(self, call: Call[T], *, timeout: float, pause: float = 0.0) -> T:
        """Send one request after the line's silence; raise ``DeviceError`` when not open.

        pymodbus's exceptions (``ModbusIOException`` for no answer...) pass through: what they
        mean depends on the device's situation, which the driver knows."""
        client = self._client
        if client is None or not client.connected:
            raise DeviceError("connection lost", f"{self.key}: not open")
        wait = self._quiet_from + max(self.conn.frame_silence, pause) - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        client.comm_params.timeout_connect = timeout
        try:
            return await call(client)
        finally:
            self._quiet_from = time.monotonic()

    def _trace(self, sending: bool, data: bytes) -> bytes:
        if sending:
            self.frames_sent += 1
            self.bytes_sent += len(data)
        else:
            self.bytes_received += len(data)
        self._quiet_from = time.monotonic()
        return data

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
        except ConnectionRefusedError as exc:
            return DeviceError("connection refused", f"{where}: {exc}")
        except TimeoutError:
            return DeviceError("timeout", f"{where}: no answer to connect within {conn.timeout}s")
        except OSError as exc:
            if exc.errno == errno.ECONNREFUSED:
                return DeviceError("connection refused", f"{where}: {exc}")
            return DeviceError("unreachable", f"{where}: {exc}")
        writer.close()
        return DeviceError("unreachable", f"{where}: connect failed, then succeeded on retry")
