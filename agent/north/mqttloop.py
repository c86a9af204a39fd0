"""paho's network I/O on the asyncio event loop instead of a thread per session.

Why: with ``loop_start()`` every session has its own thread, and every message crosses threads
twice: a wake-up byte to paho's thread per PUBLISH, a ``call_soon_threadsafe`` (a byte to the
event loop's self-pipe) per PUBACK, and the GIL handed back and forth between them. With one
destination that is a fifth of the publishing cost; with several it is paid once per
destination (bench/bench_outputs.py measured a second destination adding about half of the
first one's cost). Driven from the loop, paho's callbacks run on the loop's own thread, packets
queued in one loop turn leave in one write, and an idle session costs one timer a second.

paho 2.x supports this directly (its ``loop_read``/``loop_write``/``loop_misc`` and the
``on_socket_*`` callbacks, as in paho's own asyncio example); what is ours is that the blocking
``connect()`` (TCP connect and TLS handshake) still runs on a worker thread, so the socket
callbacks it fires there hop onto the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import threading
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode

#: paho's keepalive and ping timeout checks (``loop_misc``): its own threaded loop runs them
#: about once a second too.
MISC_INTERVAL = 1.0


class LoopDriver:
    """Runs one paho client's socket on ``loop``; attach before ``connect()``."""

    def __init__(self, client: mqtt.Client, loop: asyncio.AbstractEventLoop) -> None:
        self.client = client
        self.loop = loop
        self._thread = threading.get_ident()  # the loop's thread (made on it)
        self._sock: Any = None
        self._misc: asyncio.Task[None] | None = None
        self.closed = asyncio.Event()
        client.on_socket_open = self._on_open
        client.on_socket_close = self._on_close
        client.on_socket_register_write = self._on_want_write
        client.on_socket_unregister_write = self._on_written

    # -- paho's socket callbacks (on the loop, or on the connect thread) ---------------------------

    def _soon(self, fn: Any, *args: Any) -> None:
        if threading.get_ident() == self._thread:
            fn(*args)
        elif not self.loop.is_closed():
            self.loop.call_soon_threadsafe(fn, *args)

    def _on_open(self, client: Any, userdata: Any, sock: Any) -> None:
        self._soon(self._opened, sock)

    def _on_close(self, client: Any, userdata: Any, sock: Any) -> None:
        self._soon(self._closed, sock)

    def _on_want_write(self, client: Any, userdata: Any, sock: Any) -> None:
        self._soon(self._want_write, sock)

    def _on_written(self, client: Any, userdata: Any, sock: Any) -> None:
        self._soon(self._written, sock)

    # -- on the loop -------------------------------------------------------------------------------

    def _opened(self, sock: Any) -> None:
        self._sock = sock
        self.closed.clear()
        with contextlib.suppress(ValueError, OSError):
            self.loop.add_reader(sock, self._readable)
        if self._misc is None or self._misc.done():
            self._misc = self.loop.create_task(self._keepalive(), name="mqtt-keepalive")

    def _closed(self, sock: Any) -> None:
        self._forget(sock)

    def _want_write(self, sock: Any) -> None:
        if sock is self._sock:
            with contextlib.suppress(ValueError, OSError):
                self.loop.add_writer(sock, self._writable)

    def _written(self, sock: Any) -> None:
        with contextlib.suppress(ValueError, OSError):
            self.loop.remove_writer(sock)

    def _readable(self) -> None:
        client = self.client
        rc = client.loop_read()
        # TLS may hold decrypted bytes the socket no longer signals: read them too.
        sock = client.socket()
        while (
            rc == MQTTErrorCode.MQTT_ERR_SUCCESS
            and isinstance(sock, ssl.SSLSocket)
            and sock.pending()
        ):
            rc = client.loop_read()

    def _writable(self) -> None:
        self.client.loop_write()

    async def _keepalive(self) -> None:
        while True:
            await asyncio.sleep(MISC_INTERVAL)
            if self.client.loop_misc() != MQTTErrorCode.MQTT_ERR_SUCCESS:
                return

    def _forget(self, sock: Any) -> None:
        if sock is None:
            return
        with contextlib.suppress(ValueError, OSError):
            self.loop.remove_reader(sock)
        with contextlib.suppress(ValueError, OSError):
            self.loop.remove_writer(sock)
        if sock is self._sock:
            self._sock = None
            self.closed.set()
            if self._misc is not None:
                self._misc.cancel()

    async def close(self, grace: float = 1.0) -> None:
        """Send DISCONNECT if the link still takes it, then make sure the socket is gone and
        nothing of it stays registered on the loop (a blackholed link never closes itself)."""
        client = self.client
        if self._sock is not None:
            with contextlib.suppress(Exception):
                client.disconnect()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.closed.wait(), grace)
        sock = self._sock
        if sock is not None:
            self._forget(sock)
            # paho has no public way to drop a socket that will not close by itself.
            with contextlib.suppress(Exception):
                client._sock_close()
        if self._misc is not None:
            self._misc.cancel()
