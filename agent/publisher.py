"""The northbound session: drains the buffer to the broker with QoS 1, deletes only after PUBACK.

Design notes, the why:

* **A fresh paho client per connection.** paho keeps un-acknowledged QoS 1 messages and resends
  them by itself after a reconnect (even with a clean session); that would duplicate the buffer's
  job and hold memory the buffer is meant to bound. A new client per connection means the buffer
  is the only place a batch waits, and what was in flight when the link died is simply fetched
  again from the buffer.
* **A bounded in-flight window** (``mqtt.max_inflight``): at most that many batches are sent and
  not yet acknowledged. It bounds memory and the duplicates a crash can cause.
* **Live first, backlog beside it.** At a connect that finds more than a window of batches
  buffered, those are backlog (ids up to a watermark) and newer batches are live; a smaller
  backlog is simply sent first, in order. Each round fills the window with live batches
  first and backlog with what is left, so after a long outage fresh data keeps low latency while
  history drains as fast as the broker acknowledges. Each stream is in order per device; the
  consumer orders across them with ``seq``.
* paho runs its network loop on its own thread; every callback hops onto the event loop with
  ``call_soon_threadsafe`` so all state lives on one thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
import time
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_exponential_jitter

from agent.buffer import Buffer, StoredBatch
from agent.commands import CommandHandler
from agent.formats import JsonFormat
from agent.metrics import Metrics

log = logging.getLogger(__name__)

_CONNACK_TIMEOUT = 15.0
_SHUTDOWN_GRACE = 3.0


class ConnectFailed(Exception):
    """One connection attempt failed; the reason is short, for logs and metrics."""


class Publisher:
    def __init__(
        self,
        settings: Any,
        client_id: str,
        password: str | None,
        buffer: Buffer,
        fmt: JsonFormat,
        metrics: Metrics,
        commands: CommandHandler | None = None,
    ) -> None:
        self._cfg = settings
        self._client_id = client_id
        self._password = password
        self._buffer = buffer
        self._fmt = fmt
        self._metrics = metrics
        self._commands = commands
        self._window = int(settings.max_inflight)
        self._qos = int(settings.qos)
        self._statuses: dict[str, bytes] = {}
        self._client: mqtt.Client | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connack: asyncio.Future[Any] | None = None
        self._inflight: dict[int, StoredBatch] = {}
        self._acked: list[int] = []
        self._wake = asyncio.Event()
        self._lost = asyncio.Event()
        self._stopping = False
        self._down_logged = False
        self._commands_running: set[asyncio.Task[None]] = set()
        self.connected = asyncio.Event()  # tests and readiness wait on it
        self.sessions = 0

    # -- device status (StatusSink) ---------------------------------------------------------------

    def device_status(self, device: str, state: str, reason: str | None, ts: float) -> None:
        """Remember the latest state; publish it retained now if connected, else on connect."""
        payload = self._fmt.device_status(state, int(ts * 1000), reason)
        self.retain(self._fmt.device_status_topic(device), payload)

    def retain(self, topic: str, payload: bytes) -> None:
        """Publish a retained message (device status, machine state) now if connected, and again
        after every reconnect, so a consumer always finds the latest one."""
        self._statuses[topic] = payload
        client = self._client
        if client is not None and self.connected.is_set():
            client.publish(topic, payload, qos=1, retain=True)

    # -- life cycle -------------------------------------------------------------------------------

    async def run(self) -> None:
        """Connect, drain, reconnect with backoff; until ``stop()``."""
        self._loop = asyncio.get_running_loop()
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(ConnectFailed),
            wait=wait_exponential_jitter(
                multiplier=self._cfg.reconnect_min, max=self._cfg.reconnect_max, jitter=1.0
            ),
            before_sleep=self._connect_failed,
        )
        while not self._stopping:
            client: mqtt.Client = await retrying(self._connect)
            try:
                await self._session(client)
            finally:
                await self._teardown(client)

    async def stop(self) -> None:
        """Stop sending, let in-flight batches settle (or leave them in the buffer), say offline."""
        self._stopping = True
        self._wake.set()
        client = self._client
        if client is None or not self.connected.is_set():
            return
        deadline = time.monotonic() + _SHUTDOWN_GRACE
        while self._inflight and not self._lost.is_set() and time.monotonic() < deadline:
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), deadline - time.monotonic())
            except TimeoutError:
                break
        await self._flush_acks()
        if not self._lost.is_set():
            # The will is only sent on an unclean loss; a clean stop says offline itself.
            info = client.publish(
                self._fmt.gateway_status_topic, self._fmt.gateway_status(False), qos=1, retain=True
            )
            await asyncio.to_thread(_wait_published, info, max(0.1, deadline - time.monotonic()))
        client.disconnect()

    # -- connecting -------------------------------------------------------------------------------

    def _new_client(self) -> mqtt.Client:
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self._client_id,
            clean_session=True,
            protocol=mqtt.MQTTv311,
            reconnect_on_failure=False,
        )
        if self._cfg.username is not None:
            client.username_pw_set(self._cfg.username, self._password)
        tls = getattr(self._cfg, "tls", None)
        if tls is not None:
            client.tls_set_context(_ssl_context(tls))
        client.will_set(
            self._fmt.gateway_status_topic, self._fmt.gateway_status(False), qos=1, retain=True
        )
        # Room for the window plus status messages and replies, so paho never queues data itself.
        client.max_inflight_messages_set(self._window + 64)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        return client

    async def _connect(self) -> mqtt.Client:
        loop = asyncio.get_running_loop()
        client = self._new_client()
        connack: asyncio.Future[Any] = loop.create_future()
        self._connack = connack
        self._lost = asyncio.Event()
        try:
            await asyncio.to_thread(
                client.connect, self._cfg.host, self._cfg.port, max(5, int(self._cfg.keepalive))
            )
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise ConnectFailed(_describe_os_error(exc)) from exc
        client.loop_start()
        try:
            reason = await asyncio.wait_for(connack, _CONNACK_TIMEOUT)
        except TimeoutError:
            await _stop_client(client)
            raise ConnectFailed("no CONNACK from broker") from None
        if reason is not None:
            await _stop_client(client)
            raise ConnectFailed(f"refused by broker: {reason}")
        return client

    async def _connect_failed(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        self._metrics.publish_errors.inc()
        if not self._down_logged:
            self._down_logged = True
            log.warning(
                "broker unreachable, buffering",
                extra={"broker": f"{self._cfg.host}:{self._cfg.port}", "reason": str(exc)},
            )

    # -- the session ------------------------------------------------------------------------------

    async def _session(self, client: mqtt.Client) -> None:
        self._client = client
        self._inflight.clear()
        self._down_logged = False
        self.sessions += 1
        self.connected.set()
        self._metrics.mqtt_connected.set(1)
        log.info("connected to broker", extra={"broker": f"{self._cfg.host}:{self._cfg.port}"})
        client.publish(
            self._fmt.gateway_status_topic, self._fmt.gateway_status(True), qos=1, retain=True
        )
        for topic, payload in self._statuses.items():
            client.publish(topic, payload, qos=1, retain=True)
        if self._commands is not None:
            client.subscribe(self._fmt.command_filter, qos=1)

        # A backlog that fits in one window drains in strict id order; only a real backlog is
        # split off so that it cannot hold fresh data back.
        backlog = self._buffer.stats().batches > self._window
        watermark = await self._buffer.max_id() if backlog else 0
        live_cursor = watermark
        backlog_cursor = 0
        while not self._lost.is_set():
            self._wake.clear()
            self._buffer.new_data.clear()
            await self._flush_acks()
            if self._stopping:  # stop() settles the window and disconnects; send nothing new
                await self._wait_for_work()
                continue
            free = self._window - len(self._inflight)
            sent = 0
            if free > 0:
                rows = await self._buffer.fetch(live_cursor, free)
                if rows:
                    live_cursor = rows[-1].id
                    sent += self._send(client, rows)
            free = self._window - len(self._inflight)
            if free > 0 and backlog_cursor < watermark:
                rows = await self._buffer.fetch(backlog_cursor, free, upto_id=watermark)
                backlog_cursor = rows[-1].id if rows else watermark
                sent += self._send(client, rows)
            if sent == 0:
                await self._wait_for_work()

    def _send(self, client: mqtt.Client, rows: list[StoredBatch]) -> int:
        for row in rows:
            info = client.publish(
                self._fmt.data_topic(row.device), self._fmt.encode(row), self._qos
            )
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                self._lost.set()
                return 0
            self._inflight[info.mid] = row
        return len(rows)

    async def _wait_for_work(self) -> None:
        """Sleep until new data is committed, an ack frees the window, or the link is lost."""
        waiters = [
            asyncio.ensure_future(self._wake.wait()),
            asyncio.ensure_future(self._buffer.new_data.wait()),
        ]
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()

    async def _flush_acks(self) -> None:
        if self._acked:
            ids, self._acked = self._acked, []
            await self._buffer.ack(ids)

    async def _teardown(self, client: mqtt.Client) -> None:
        was_connected = self.connected.is_set()
        self.connected.clear()
        self._metrics.mqtt_connected.set(0)
        self._client = None
        await self._flush_acks()
        self._inflight.clear()  # not acknowledged: still in the buffer, fetched again next session
        await _stop_client(client)
        if was_connected and not self._stopping:
            self._metrics.publish_errors.inc()
            log.warning("connection to broker lost, buffering")

    # -- paho callbacks (network thread) -> event loop --------------------------------------------

    def _call(self, fn: Any, *args: Any) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(fn, *args)

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        self._call(self._connack_result, None if not reason.is_failure else str(reason))

    def _connack_result(self, reason: str | None) -> None:
        if self._connack is not None and not self._connack.done():
            self._connack.set_result(reason)

    def _on_disconnect(
        self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        self._call(self._link_lost)

    def _link_lost(self) -> None:
        self._lost.set()
        self._wake.set()
        self._connack_result("disconnected")

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        self._call(self._acknowledged, mid)

    def _acknowledged(self, mid: int) -> None:
        row = self._inflight.pop(mid, None)
        if row is None:
            return  # a status message or a reply, not a buffered batch
        self._acked.append(row.id)
        self._metrics.published.inc()
        self._metrics.publish_latency.observe(max(0.0, time.time() - row.ts_ms / 1000))
        self._wake.set()

    def _on_message(self, client: Any, userdata: Any, message: mqtt.MQTTMessage) -> None:
        self._call(self._command, message.topic, bytes(message.payload))

    def _command(self, topic: str, payload: bytes) -> None:
        """Answer on a task of its own: a write waits for its device's turn on the line, and
        neither the publisher nor other commands may wait with it."""
        if self._commands is None or self._client is None:
            return
        levels = topic.split("/")
        device = levels[-2] if len(levels) >= 2 else ""
        task = asyncio.create_task(self._answer(device, payload), name=f"cmd:{device}")
        self._commands_running.add(task)
        task.add_done_callback(self._commands_running.discard)

    async def _answer(self, device: str, payload: bytes) -> None:
        assert self._commands is not None
        reply = await self._commands.handle(device, payload)
        log.info(
            "command refused" if not reply.get("ok") else "command done",
            extra={"device": device, "id": reply.get("id"), "error": reply.get("error", "")},
        )
        client = self._client
        if client is None:
            return  # the link went while the command ran; the sender retries or times out
        client.publish(
            self._fmt.command_reply_topic(device), json.dumps(reply).encode(), qos=1, retain=False
        )


# -- helpers ---------------------------------------------------------------------------------------


def _ssl_context(tls: Any) -> ssl.SSLContext:
    """Verification on by default; ``verify: false`` is an explicit, logged choice."""
    ctx = ssl.create_default_context(cafile=str(tls.ca_file) if tls.ca_file else None)
    if tls.cert_file is not None:
        ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file) if tls.key_file else None)
    if not tls.verify:
        log.warning("TLS certificate verification is OFF (mqtt.tls.verify: false)")
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _describe_os_error(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS verification failed: {exc.verify_message}"
    if isinstance(exc, TimeoutError):
        return "timeout"
    return str(exc) or type(exc).__name__


def _wait_published(info: mqtt.MQTTMessageInfo, timeout: float) -> None:
    with contextlib.suppress(RuntimeError, ValueError):
        info.wait_for_publish(timeout)


async def _stop_client(client: mqtt.Client) -> None:
    """Close the socket and join paho's thread without blocking the event loop."""

    def stop() -> None:
        client.disconnect()
        client.loop_stop()

    await asyncio.to_thread(stop)
