"""The agent's one local HTTP listener (``metrics.listen``, 127.0.0.1:9108 by default).

=================  ======  ================================================================
``/metrics``       GET     Prometheus text format (our registry)
``/healthz``       GET     200 while the process runs *and* its event loop answers within 2 s
``/readyz``        GET     200 when config loaded, buffer open, and broker connected or the
                           buffer below 90 % of ``max_size``; 503 with the reasons otherwise
``/status.json``   GET     everything ``edge-agent status`` prints
``/``              GET     the status page, English or Simplified Chinese (``Accept-Language``)
``/read``          POST    ``edge-agent read`` through the running agent (see below)
=================  ======  ================================================================

Why the standard library's threaded server and not an asyncio one: prometheus_client already
serves from a thread this way, and a hung event loop must not take ``/healthz`` down with it:
the thread notices the loop is not answering and says so with a 503, which is what a watchdog
wants to see.

Everything but ``/read`` is read-only. ``/read`` makes the agent report the device's next poll
(it does not touch the device itself) and is refused unless the request comes from a loopback
address, carries ``X-Edge-Agent: read`` and no ``Origin``: a custom header forces a browser's
CORS preflight, which this server never grants, so a web page cannot trigger it either.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ipaddress
import json
import logging
import socket
import threading
from collections.abc import Callable, Coroutine
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from agent.ops.web.i18n import pick_language
from agent.ops.web.page import render_page

log = logging.getLogger(__name__)

#: How long a request waits for the event loop before answering 503.
LOOP_TIMEOUT = 2.0
READ_HEADER = "X-Edge-Agent"

_SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class StatusSource(Protocol):
    """What the server asks of the agent; both run on the event loop."""

    async def snapshot(self) -> dict[str, Any]: ...

    async def read_device(self, device: str, tags: list[str]) -> dict[str, Any]: ...


class LoopNotAnswering(Exception):
    pass


class StatusServer:
    """Serves the endpoints above from a daemon thread; ``stop()`` joins it."""

    def __init__(
        self,
        host: str,
        port: int,
        registry: CollectorRegistry,
        source: StatusSource,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        server_class = type("_Server", (ThreadingHTTPServer,), {"address_family": family})
        handler = type(
            "_Handler",
            (_Handler,),
            {"registry": registry, "source": source, "loop": loop},
        )
        self._server: ThreadingHTTPServer = server_class((host, port), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="http", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


class _Handler(BaseHTTPRequestHandler):
    registry: CollectorRegistry
    source: StatusSource
    loop: asyncio.AbstractEventLoop
    server_version = "edge-agent"
    sys_version = ""
    protocol_version = "HTTP/1.1"

    # -- plumbing ---------------------------------------------------------------------------------

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http " + format, *args)

    def _on_loop(
        self, factory: Callable[[], Coroutine[Any, Any, Any]], timeout: float = LOOP_TIMEOUT
    ) -> Any:
        """Run ``factory()`` on the event loop and wait for its result, at most ``timeout``.

        The coroutine is created on the loop, when the loop gets to it: a hung loop never starts
        it, and nothing is left half-made behind when this thread gives up."""
        result: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def start() -> None:
            if not result.set_running_or_notify_cancel():
                return  # the request gave up already
            task = asyncio.ensure_future(factory())
            task.add_done_callback(lambda t: _settle(t, result))

        self.loop.call_soon_threadsafe(start)
        try:
            return result.result(timeout)
        except TimeoutError:
            result.cancel()
            raise LoopNotAnswering from None

    def _send(
        self, status: int, body: bytes, content_type: str, extra: dict[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in {**_SECURITY_HEADERS, **(extra or {})}.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _text(self, status: int, text: str) -> None:
        self._send(status, text.encode(), "text/plain; charset=utf-8")

    def _json(self, status: int, doc: Any) -> None:
        body = json.dumps(doc, ensure_ascii=False, default=str).encode()
        self._send(status, body, "application/json; charset=utf-8")

    # -- GET --------------------------------------------------------------------------------------

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        try:
            if url.path == "/metrics":
                self._send(HTTPStatus.OK, generate_latest(self.registry), CONTENT_TYPE_LATEST)
            elif url.path == "/healthz":
                self._on_loop(lambda: asyncio.sleep(0))
                self._text(HTTPStatus.OK, "ok\n")
            elif url.path == "/readyz":
                snap = self._on_loop(self.source.snapshot)
                if snap["ready"]:
                    self._text(HTTPStatus.OK, "ready\n")
                else:
                    lines = "".join(f"{p}\n" for p in snap["problems"])
                    self._text(HTTPStatus.SERVICE_UNAVAILABLE, "not ready\n" + lines)
            elif url.path == "/status.json":
                self._json(HTTPStatus.OK, self._on_loop(self.source.snapshot))
            elif url.path in ("/", "/index.html"):
                query = parse_qs(url.query)
                asked = query.get("lang", [""])[0] or self.headers.get("Accept-Language", "")
                lang = pick_language(asked)
                snap = self._on_loop(self.source.snapshot)
                body = render_page(snap, lang).encode()
                self._send(
                    HTTPStatus.OK,
                    body,
                    "text/html; charset=utf-8",
                    {"Content-Language": lang, "Vary": "Accept-Language"},
                )
            else:
                self._text(HTTPStatus.NOT_FOUND, "not found\n")
        except LoopNotAnswering:
            self._text(HTTPStatus.SERVICE_UNAVAILABLE, "event loop not responding\n")
        except Exception:  # one bad request must not end the server thread
            log.exception("status request failed")
            self._text(HTTPStatus.INTERNAL_SERVER_ERROR, "internal error\n")

    # -- POST /read -------------------------------------------------------------------------------

    def do_POST(self) -> None:
        url = urlsplit(self.path)
        if url.path != "/read":
            self._text(HTTPStatus.METHOD_NOT_ALLOWED, "read-only\n")
            return
        if not _is_loopback(self.client_address[0]):
            self._text(HTTPStatus.FORBIDDEN, "read is allowed from this machine only\n")
            return
        if self.headers.get(READ_HEADER) != "read" or self.headers.get("Origin") is not None:
            self._text(HTTPStatus.FORBIDDEN, f"read needs the header {READ_HEADER}: read\n")
            return
        query = parse_qs(url.query)
        device = (query.get("device") or [""])[0]
        tags = query.get("tag", [])
        try:
            doc = self._on_loop(lambda: self.source.read_device(device, tags), timeout=120)
        except LoopNotAnswering:
            self._text(HTTPStatus.SERVICE_UNAVAILABLE, "event loop not responding\n")
            return
        except Exception:
            log.exception("read request failed")
            self._text(HTTPStatus.INTERNAL_SERVER_ERROR, "internal error\n")
            return
        self._json(HTTPStatus.OK, doc)


def _settle(task: asyncio.Future[Any], result: concurrent.futures.Future[Any]) -> None:
    if task.cancelled():
        result.set_exception(asyncio.CancelledError())
    elif task.exception() is not None:
        result.set_exception(task.exception())
    else:
        result.set_result(task.result())


def _is_loopback(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback
