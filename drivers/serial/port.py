"""A serial port on the event loop: non-blocking reads through ``add_reader``, small writes.

pyserial opens and configures the port (baud rate, parity, exclusive lock); after that the file
descriptor is read directly, non-blocking, when the loop says it is readable, which is what
pyserial-asyncio does, without its dependency. A port that disappears (USB adapter unplugged, pty
closed) shows up as EIO or end of file on read; it is reported once through ``on_lost`` and every
later use raises ``DeviceError("port lost")``, so the agent reconnects with backoff.

A port is opened through a :class:`SerialLine`, the agent's ``Line`` for it: instruments on one
RS-485 port share one line (and one open port), and take turns, the device asking being the one
the bytes are delivered to. The exclusive lock stays on the port, so a second program (or agent)
on the same port is still refused with ``port busy``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import termios
from collections.abc import Callable
from typing import Any

import serial

from drivers.base import DeviceError, Line
from drivers.serial.config import SerialConnection

READ_CHUNK = 4096

_OPEN_REASONS = {
    errno.ENOENT: "port not found",
    errno.ENODEV: "port not found",
    errno.ENXIO: "port not found",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EBUSY: "port busy",
    errno.EAGAIN: "port busy",  # the exclusive lock is held by another device or program
}


def _open_serial(conn: SerialConnection) -> Any:
    return serial.Serial(
        port=conn.port,
        baudrate=conn.baudrate,
        bytesize=conn.bytesize,
        parity=conn.parity,
        stopbits=conn.stopbits,
        timeout=0,
        write_timeout=0,
        exclusive=True,
    )


class SerialPort:
    """One open port delivering bytes to ``on_data`` as they arrive."""

    def __init__(
        self,
        handle: Any,
        on_data: Callable[[bytes], None],
        on_lost: Callable[[str], None],
    ) -> None:
        self._serial = handle
        self._fd: int = handle.fileno()
        self._loop = asyncio.get_running_loop()
        self._on_data = on_data
        self._on_lost = on_lost
        self.lost: str | None = None
        self._loop.add_reader(self._fd, self._readable)

    @classmethod
    async def open(
        cls,
        conn: SerialConnection,
        on_data: Callable[[bytes], None],
        on_lost: Callable[[str], None],
    ) -> SerialPort:
        """Open and configure the port; ``DeviceError`` with a stable reason when it cannot be."""
        try:
            # Opening may wait on a slow USB-serial driver: off the loop.
            handle = await asyncio.to_thread(_open_serial, conn)
        except (serial.SerialException, OSError, ValueError) as exc:
            raise _open_error(conn.port, exc) from exc
        return cls(handle, on_data, on_lost)

    def _readable(self) -> None:
        self.read_pending()

    def _hung_up(self) -> bool:
        """Whether an empty read means the device is gone rather than "nothing yet".

        The port returns at once (VMIN = VTIME = 0), so an empty read is normal when someone else
        (``read_pending``, ``drain_input``) took the bytes the loop saw; a hung-up tty (USB adapter
        pulled) also reads empty, but refuses ioctls with EIO.
        """
        try:
            termios.tcgetattr(self._fd)
        except (termios.error, OSError):
            return True
        return False

    def _read_once(self) -> bool:
        """Read and deliver one chunk; False when nothing more is to be had now."""
        try:
            data = os.read(self._fd, READ_CHUNK)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as exc:
            self._lose(exc.strerror or str(exc))
            return False
        if not data:
            if self._hung_up():
                self._lose("hung up")
            return False
        self._on_data(data)
        return True

    def read_pending(self) -> None:
        """Deliver whatever the port holds now, without waiting for the loop's next turn."""
        while self.lost is None and self._read_once():
            pass

    def _lose(self, why: str) -> None:
        if self.lost is not None:
            return
        self.lost = why
        self._loop.remove_reader(self._fd)
        self._on_lost(why)

    def drain_input(self) -> None:
        """Drop bytes already received but not yet read, so an answer is not a stale line."""
        while self.lost is None:
            try:
                if not os.read(self._fd, READ_CHUNK):
                    return
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._lose(exc.strerror or str(exc))

    async def write(self, data: bytes) -> None:
        """Write all of ``data``, waiting for the port to take it without blocking the loop."""
        view = memoryview(data)
        while view:
            if self.lost is not None:
                raise DeviceError("port lost", self.lost)
            try:
                written = os.write(self._fd, view)
            except (BlockingIOError, InterruptedError):
                await self._writable()
                continue
            except OSError as exc:
                self._lose(exc.strerror or str(exc))
                raise DeviceError("port lost", self.lost) from exc
            view = view[written:]

    async def _writable(self) -> None:
        ready: asyncio.Future[None] = self._loop.create_future()
        self._loop.add_writer(self._fd, ready.set_result, None)
        try:
            await ready
        finally:
            self._loop.remove_writer(self._fd)

    def close(self) -> None:
        """Never raises: the port may already be gone."""
        with contextlib.suppress(Exception):
            self._loop.remove_reader(self._fd)
        with contextlib.suppress(Exception):
            self._serial.close()


def _open_error(port: str, exc: BaseException) -> DeviceError:
    code = getattr(exc, "errno", None)
    if code is None and not os.path.exists(port):
        code = errno.ENOENT
    reason = _OPEN_REASONS.get(code, "port error") if isinstance(code, int) else "port error"
    return DeviceError(reason, f"{port}: {exc}")


class SerialLine(Line):
    """One serial port, opened once for every instrument on it.

    Bytes go to whichever driver ``listen`` named last: on a shared line that is the device whose
    turn it is (the agent polls a line's devices one at a time), so an answer never reaches a
    neighbour that was not asking.
    """

    def __init__(self, connection: SerialConnection) -> None:
        self.key = connection.port
        self.connection = connection
        self.port: SerialPort | None = None
        self._on_data: Callable[[bytes], None] = _ignore
        self._on_lost: Callable[[str], None] = _ignore

    def listen(self, on_data: Callable[[bytes], None], on_lost: Callable[[str], None]) -> None:
        self._on_data, self._on_lost = on_data, on_lost

    async def open(self) -> None:
        if self.port is not None and self.port.lost is None:
            return
        await self.close()
        self.port = await SerialPort.open(
            self.connection,
            lambda data: self._on_data(data),
            lambda why: self._on_lost(why),
        )

    async def close(self) -> None:
        port, self.port = self.port, None
        if port is not None:
            port.close()


def live_port(port: SerialPort | None, name: str) -> SerialPort:
    """``port`` if a request can go out on it; else ``DeviceError("port lost")`` saying why (not
    open, or what the port ``name`` died of), which the agent answers by reconnecting."""
    if port is None:
        raise DeviceError("port lost", "not connected")
    if port.lost is not None:
        raise DeviceError("port lost", f"{name}: {port.lost}")
    return port


def fail_answer(answer: asyncio.Future[Any] | None, name: str, why: str) -> None:
    """The port ``name`` died: the answer a driver awaits (if any) fails at once with
    ``DeviceError("port lost")`` rather than at its timeout."""
    if answer is not None and not answer.done():
        answer.set_exception(DeviceError("port lost", f"{name}: {why}"))


def _ignore(_: object) -> None:
    """No driver has had a turn yet: what arrives answers nobody and is dropped."""
