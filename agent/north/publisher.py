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
* paho's network I/O runs on the event loop (agent/north/mqttloop.py says why: no thread per
  session, no cross-thread hop per message); only the blocking connect runs on a worker
  thread. Callbacks are deferred with ``call_soon`` so that no state changes inside paho's own
  call stack, and all state lives on the loop's thread.
* **The format decides the wire, the publisher the delivery.** A ``Format`` (agent/north/formats)
  turns batches into messages and owns its session rules (will, births, host state, commands);
  whatever it packs, a batch is deleted only when the message carrying it was acknowledged.
* **Failover across ``mqtt.servers``**: each connect tries the servers in turn, starting after
  the one that was lost, and backs off only when all of them failed. The client id stays the
  same; the buffer (not the broker session) holds what was not acknowledged, so nothing depends
  on which cluster node took the session.
* **MQTT v5 where the broker has it** (``protocol: auto``): the first CONNECT of a server is v5;
  a refusal falls back to 3.1.1 for that server. v5 adds user properties (the dedupe key) and
  message expiry to data messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import ssl
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_exponential_jitter

from agent.core.buffer import DEFAULT_OUTPUT, Buffer, BufferError, Route, StoredBatch
from agent.north.formats import Command, Format, Message, Packed
from agent.north.mqttloop import LoopDriver
from agent.north.v5props import PublishProperties

if TYPE_CHECKING:  # the config is built in app; north reads it, never imports app at run time
    from agent.app.config.models import MqttSection, TlsSection
from agent.ops.metrics import Metrics

log = logging.getLogger(__name__)

_CONNACK_TIMEOUT = 15.0
_SHUTDOWN_GRACE = 3.0
V5 = "5"
V311 = "3.1.1"


class ConnectFailed(Exception):
    """One connection attempt failed; the reason is short, for logs and metrics."""

    def __init__(self, reason: str, maybe_protocol: bool = False) -> None:
        super().__init__(reason)
        self.maybe_protocol = maybe_protocol


def servers_of(settings: MqttSection) -> list[tuple[str, int]]:
    """``mqtt.servers`` (host:port each) or the single ``host``/``port``."""
    servers = getattr(settings, "servers", None)
    if servers:
        out = []
        for entry in servers:
            host, _, port = str(entry).rpartition(":")
            out.append((host.strip("[]"), int(port)))
        return out
    return [(settings.host, int(settings.port))]


def _addr(server: tuple[str, int]) -> str:
    host, port = server
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Commands(Protocol):
    """Where the publisher hands the commands a format decoded (``agent.south.commands``'s
    ``CommandHandler``, passed in by the runtime): the north side knows the wire, not devices."""

    async def write(
        self, device: str, cmd_id: str | None, writes: Mapping[str, Any]
    ) -> dict[str, Any]: ...

    async def handle(self, device: str, payload: bytes) -> dict[str, Any]: ...

    async def call(self, device: str, cmd_id: str | None, calls: Any) -> dict[str, Any]: ...


class Publisher:
    def __init__(
        self,
        settings: MqttSection,
        client_id: str,
        password: str | None,
        buffer: Buffer,
        fmt: Format,
        metrics: Metrics,
        commands: Commands | None = None,
        route: Route | None = None,
    ) -> None:
        #: Which destination this session is (``default``: the ``mqtt`` section) and what it
        #: takes: its share of the buffer, its metrics' ``output`` label.
        self.route = route or Route(DEFAULT_OUTPUT)
        self.output = self.route.output
        self._cfg = settings
        self._client_id = client_id
        self._password = password
        self._buffer = buffer
        self._fmt = fmt
        self._metrics = metrics
        self._commands = commands
        self._window = int(settings.max_inflight)
        self._qos = int(settings.qos)
        self._servers: list[tuple[str, int]] = servers_of(settings)
        self._protocol = str(getattr(settings, "protocol", "auto"))
        self._v311_only: set[tuple[str, int]] = set()  # servers that refused a v5 CONNECT
        self._server_index = 0
        self.server: tuple[str, int] = self._servers[0]  # the one connected (or last tried)
        self.protocol: str = V311
        expiry = getattr(settings, "message_expiry", None)
        self._expiry = int(expiry) if expiry else None
        self._v5props = PublishProperties()
        # Data messages per second (the platform's per-connection limit), a token bucket
        # holding one second's worth; None: as fast as the broker acknowledges.
        self._rate: float | None = getattr(settings, "max_rate", None) or fmt.max_rate
        self._tokens = self._rate or 0.0
        self._tokens_at = time.monotonic()
        self._statuses: dict[str, Message] = {}
        #: The latest side document per (device, kind): a new publisher (a reload that changed
        #: the format) gets them, so they reach the new topics without waiting for a change.
        self.sides: dict[tuple[str, str], bytes] = {}
        self._client: mqtt.Client | None = None
        self._drivers: dict[int, LoopDriver] = {}  # id(client) -> its I/O on the loop
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connack: asyncio.Future[Any] | None = None
        self._inflight: dict[int, tuple[StoredBatch, ...]] = {}
        self._inflight_rows = 0
        self._acked: list[int] = []
        # Rows the format could not pack, with the reason: set aside in the buffer (quarantined)
        # by the session loop. Each reason is logged once per publisher (a format bug repeats
        # on every such batch: one line says it, the metric counts them).
        self._unpackable: list[tuple[int, str]] = []
        self._reasons_logged: set[str] = set()
        self._wake = asyncio.Event()
        self._lost = asyncio.Event()
        self._stopping = False
        self._down_logged = False
        self._commands_running: set[asyncio.Task[None]] = set()
        self._renewing = False
        self.connected = asyncio.Event()  # tests and readiness wait on it
        self.sessions = 0
        self._new_data = buffer.wakeup(self.output)  # a flag; it also sets _wake
        self._new_data.forward(self._wake)
        self._m_connected = metrics.mqtt_connected.labels(self.output)
        self._m_published = metrics.published.labels(self.output)
        self._m_latency = metrics.publish_latency.labels(self.output)
        self._m_connected.set(0)

    # -- device status (StatusSink) ---------------------------------------------------------------

    def device_status(self, device: str, state: str, reason: str | None, ts: float) -> None:
        """Tell the format; it answers with messages for now (Sparkplug's DDEATH) and/or a
        retained status that is republished after every reconnect (json)."""
        if not self.route.takes(device, "status"):
            return
        ts_ms = int(ts * 1000)
        now = self._fmt.status_changed(device, state, reason, ts_ms)
        client = self._client
        if client is not None and self.connected.is_set():
            for msg in now:
                self._publish(client, msg)
        retained = self._fmt.retained_status(device, state, reason, ts_ms)
        if retained is not None:
            self._keep(f"status\0{device}", retained)

    def retain(self, device: str, kind: str, payload: bytes) -> None:
        """Publish a device's retained side document (its machine ``state``) now if connected,
        and again after every reconnect, so a consumer always finds the latest one; the format
        says where (``device_topic``) and how (``side_message``)."""
        if not self.route.takes(device, kind):
            return
        self.sides[(device, kind)] = payload
        topic = self._fmt.device_topic(device, kind)
        msg = self._fmt.side_message(topic, payload)
        if msg is not None:
            self._keep(topic, msg)

    def refresh(self, fmt: Format) -> None:
        """A reload built ``fmt`` like this session's format (the same ``spec``), so the
        session stays: the format takes over what may change without one (JSON's tag
        metadata), and what that changes goes out now if connected (``online()`` repeats
        the current state after every reconnect)."""
        messages = self._fmt.refresh(fmt)
        client = self._client
        if client is not None and self.connected.is_set():
            for msg in messages:
                self._publish(client, msg)

    def _keep(self, key: str, msg: Message) -> None:
        self._statuses[key] = msg
        client = self._client
        if client is not None and self.connected.is_set():
            self._publish(client, msg)

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
        await self._flush_unpackable()
        if not self._lost.is_set():
            # The will is only sent on an unclean loss; a clean stop says offline itself.
            for msg in self._fmt.offline():
                info = self._publish(client, msg)
                await asyncio.to_thread(
                    _wait_published, info, max(0.1, deadline - time.monotonic())
                )
        if self.protocol == V5 and self._fmt.will_on_clean_stop:
            # Reason code 4 asks the broker to publish the will as well.
            client.disconnect(reasoncode=ReasonCode(PacketTypes.DISCONNECT, identifier=4))
        else:
            client.disconnect()

    # -- connecting -------------------------------------------------------------------------------

    def _new_client(self, protocol: str) -> mqtt.Client:
        v5 = protocol == V5
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self._fmt.client_id(self._client_id),
            clean_session=None if v5 else True,
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
            reconnect_on_failure=False,
        )
        username, password = self._fmt.credentials(self._cfg.username, self._password)
        if username is not None:
            client.username_pw_set(username, password)
        tls = getattr(self._cfg, "tls", None)
        if tls is not None:
            client.tls_set_context(_ssl_context(tls))
        will = self._fmt.will()
        if will is not None:
            client.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)
        # Room for the window plus status messages and replies, so paho never queues data itself.
        client.max_inflight_messages_set(self._window + 64)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        return client

    async def _connect(self) -> mqtt.Client:
        """Try every server once, in turn; ConnectFailed (the last reason) when none took us."""
        failure: ConnectFailed | None = None
        for i in range(len(self._servers)):
            index = (self._server_index + i) % len(self._servers)
            server = self._servers[index]
            self.server = server
            try:
                client = await self._connect_to(server)
            except ConnectFailed as exc:
                failure = exc
                if len(self._servers) > 1:
                    log.info(
                        "broker not available, trying the next",
                        extra={"broker": _addr(server), "reason": str(exc)},
                    )
                continue
            self._server_index = index
            return client
        assert failure is not None
        raise failure

    async def _connect_to(self, server: tuple[str, int]) -> mqtt.Client:
        if self._protocol == V5 or (self._protocol == "auto" and server not in self._v311_only):
            try:
                return await self._attempt(server, V5)
            except ConnectFailed as exc:
                if self._protocol == V5 or not exc.maybe_protocol:
                    raise
                log.info("broker refused MQTT v5, using 3.1.1", extra={"broker": _addr(server)})
                self._v311_only.add(server)
        return await self._attempt(server, V311)

    async def _attempt(self, server: tuple[str, int], protocol: str) -> mqtt.Client:
        loop = asyncio.get_running_loop()
        client = self._new_client(protocol)
        self._drivers[id(client)] = LoopDriver(client, loop)
        connack: asyncio.Future[Any] = loop.create_future()
        self._connack = connack
        self._lost = asyncio.Event()
        host, port = server
        try:
            await asyncio.to_thread(client.connect, host, port, max(5, int(self._cfg.keepalive)))
            self._fmt.connect_sent()
        except (OSError, ssl.SSLError, ValueError) as exc:
            await self._close_client(client)
            raise ConnectFailed(_describe_os_error(exc)) from exc
        try:
            reason = await asyncio.wait_for(connack, _CONNACK_TIMEOUT)
        except TimeoutError:
            await self._close_client(client)
            raise ConnectFailed("no CONNACK from broker") from None
        if reason is not None:
            await self._close_client(client)
            # A broker without v5 answers a v5 CONNECT with "unacceptable protocol version" or
            # simply closes the connection: worth one more try with 3.1.1.
            raise ConnectFailed(
                f"refused by broker: {reason}",
                maybe_protocol=protocol == V5
                and ("protocol" in reason.lower() or reason == "disconnected"),
            )
        self.protocol = protocol
        return client

    async def _connect_failed(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        self._metrics.publish_errors.inc()
        if not self._down_logged:
            self._down_logged = True
            log.warning(
                "broker unreachable, buffering",
                extra={
                    "broker": ", ".join(map(_addr, self._servers)),
                    "reason": str(exc),
                    "output": self.output,
                },
            )

    # -- the session ------------------------------------------------------------------------------

    async def _session(self, client: mqtt.Client) -> None:
        self._client = client
        self._inflight.clear()
        self._inflight_rows = 0
        self._down_logged = False
        self.sessions += 1
        self.connected.set()
        self._m_connected.set(1)
        log.info(
            "connected to broker",
            extra={"broker": _addr(self.server), "protocol": self.protocol, "output": self.output},
        )
        # Subscriptions first: Sparkplug must see its host's STATE before it may birth.
        for topic in self._fmt.subscriptions():
            client.subscribe(topic, qos=1)
        for msg in self._fmt.online():
            self._publish(client, msg)
        for msg in self._statuses.values():
            self._publish(client, msg)

        # A backlog that fits in one window drains in strict id order; only a real backlog is
        # split off so that it cannot hold fresh data back.
        backlog = self._buffer.output_stats(self.output).batches > self._window
        watermark = await self._buffer.max_id() if backlog else 0
        live_cursor = watermark
        backlog_cursor = 0
        # Whether rows may wait past live_cursor: set by a commit that stored some for this
        # destination, and by a fetch that filled the window. A PUBACK wakes this loop too
        # (the window has room again), but asks the buffer again only then: a fetch per
        # acknowledgement that finds nothing was a worker round trip per message.
        more = True
        while not self._lost.is_set():
            self._wake.clear()
            if self._new_data.is_set():
                self._new_data.clear()
                more = True
            await self._flush_acks()
            await self._flush_unpackable()
            deadline = self._fmt.session_deadline()
            if deadline is not None and time.time() >= deadline and not self._stopping:
                # Credentials that expire (Azure's SAS token): connect again with fresh ones.
                log.info("renewing credentials: reconnecting", extra={"broker": _addr(self.server)})
                self._renewing = True
                client.disconnect()
                return
            if self._stopping or not self._fmt.ready():
                # stop() settles the window and disconnects; a format waiting for its host
                # (Sparkplug STATE) is woken by the message that makes it ready.
                await self._wait_for_work()
                continue
            free = self._window - self._inflight_rows
            sent = 0
            if free > 0 and more:
                rows = await self._buffer.fetch(live_cursor, free, output=self.output)
                more = len(rows) >= free
                if rows:
                    live_cursor = rows[-1].id
                    sent += self._send(client, rows)
            free = self._window - self._inflight_rows
            if free > 0 and backlog_cursor < watermark:
                rows = await self._buffer.fetch(
                    backlog_cursor, free, upto_id=watermark, output=self.output
                )
                backlog_cursor = rows[-1].id if rows else watermark
                sent += self._send(client, rows)
            if sent == 0:
                await self._wait_for_work(None if deadline is None else deadline - time.time())
            elif self._rate:
                await self._pace()

    async def _pace(self) -> None:
        """Wait while the bucket is empty (it may run below zero by one round of messages)."""
        assert self._rate
        now = time.monotonic()
        self._tokens = min(self._rate, self._tokens + (now - self._tokens_at) * self._rate)
        self._tokens_at = now
        if self._tokens < 1:
            await asyncio.sleep((1 - self._tokens) / self._rate)

    def _send(self, client: mqtt.Client, rows: list[StoredBatch]) -> int:
        if not rows:
            return 0
        for packed in self._pack(rows):
            if packed.message is None:
                self._done(packed.rows)
                continue
            msg = packed.message
            if packed.rows and msg.qos != self._qos:  # data messages take mqtt.qos
                msg = dataclasses.replace(msg, qos=self._qos)
            info = self._publish(client, msg, data=bool(packed.rows))
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                self._lost.set()
                return 0
            self._tokens -= 1
            if packed.rows:
                self._inflight[info.mid] = packed.rows
                self._inflight_rows += len(packed.rows)
        return len(rows)

    def _pack(self, rows: list[StoredBatch]) -> list[Packed]:
        """The format's messages for ``rows``. A batch the format cannot encode (a bug, or a
        record it does not understand) must neither stop every batch behind it nor be
        acknowledged unsent: it is quarantined in the buffer (``_flush_unpackable``), counted,
        logged once per episode and shown by ``edge-agent status``; a restart or a reload that
        rebuilds the format releases it for another try."""
        try:
            return self._fmt.pack(rows)
        except Exception:  # see the docstring
            out: list[Packed] = []
            for row in rows:
                try:
                    out.extend(self._fmt.pack([row]))
                except Exception as exc:
                    self._cannot_pack(row, exc)
            return out

    def _cannot_pack(self, row: StoredBatch, exc: Exception) -> None:
        reason = f"{self._fmt.name}: {type(exc).__name__}: {exc}"[:300]
        if reason not in self._reasons_logged and len(self._reasons_logged) < 100:
            self._reasons_logged.add(reason)
            log.error(
                "batch cannot be packed: quarantined in the buffer (not sent, not deleted); "
                "further batches for this reason are only counted",
                exc_info=exc,
                extra={"device": row.device, "seq": row.seq, "format": self._fmt.name},
            )
        self._unpackable.append((row.id, reason))
        self._metrics.quarantined.labels(self._fmt.name).inc()

    async def _flush_unpackable(self) -> None:
        """Quarantine what the format could not pack; on a buffer error the rows simply stay
        unacknowledged and are fetched again by the next session."""
        if not self._unpackable:
            return
        held, self._unpackable = self._unpackable, []
        by_reason: dict[str, list[int]] = {}
        for row_id, reason in held:
            by_reason.setdefault(reason, []).append(row_id)
        for reason, ids in by_reason.items():
            try:
                await self._buffer.quarantine(ids, reason, self.output)
            except BufferError as exc:
                log.error("cannot quarantine batches", extra={"error": str(exc)})

    def _publish(self, client: mqtt.Client, msg: Message, data: bool = False) -> Any:
        """One publish; on MQTT v5 with the message's user properties and, for data, the
        configured message expiry."""
        props = None
        expiry = self._expiry if data else None
        if self.protocol == V5 and (msg.properties or msg.content_type or expiry):
            props = self._v5props.pack(msg.properties, msg.content_type, expiry)
        return client.publish(
            msg.topic, msg.payload, qos=msg.qos, retain=msg.retain, properties=props
        )

    async def _wait_for_work(self, timeout: float | None = None) -> None:
        """Sleep until new data is committed, an ack frees the window, or the link is lost (each
        sets ``_wake``)."""
        if timeout is None:
            await self._wake.wait()
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), max(0.0, timeout))

    async def _flush_acks(self) -> None:
        if self._acked:
            ids, self._acked = self._acked, []
            await self._buffer.ack(ids, self.output)

    async def _teardown(self, client: mqtt.Client) -> None:
        was_connected = self.connected.is_set()
        self.connected.clear()
        self._m_connected.set(0)
        self._client = None
        await self._flush_acks()
        await self._flush_unpackable()
        self._inflight.clear()  # not acknowledged: still in the buffer, fetched again next session
        self._inflight_rows = 0
        await self._close_client(client)
        if self._renewing:
            self._renewing = False  # a planned reconnect, same server, nothing lost
        elif was_connected and not self._stopping:
            self._metrics.publish_errors.inc()
            log.warning(
                "connection to broker lost, buffering",
                extra={"broker": _addr(self.server), "output": self.output},
            )
            # Start the next round with the next cluster node: the lost one is likely down.
            self._server_index = (self._server_index + 1) % len(self._servers)

    async def _close_client(self, client: mqtt.Client) -> None:
        """DISCONNECT if the link takes it, then the socket closed and off the loop."""
        driver = self._drivers.pop(id(client), None)
        if driver is not None:
            await driver.close()

    # -- paho callbacks (on the loop, inside paho's call stack) -> our state ---------------------

    def _call(self, fn: Any, *args: Any) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon(fn, *args)

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
        rows = self._inflight.pop(mid, None)
        if rows is None:
            return  # a status message or a reply, not a buffered batch
        self._inflight_rows -= len(rows)
        self._done(rows)

    def _done(self, rows: tuple[StoredBatch, ...]) -> None:
        now = time.time()
        for row in rows:
            self._acked.append(row.id)
            self._m_published.inc()
            self._m_latency.observe(max(0.0, now - row.ts_ms / 1000))
        self._wake.set()

    def _on_message(self, client: Any, userdata: Any, message: mqtt.MQTTMessage) -> None:
        self._call(self._command, message.topic, bytes(message.payload))

    def _command(self, topic: str, payload: bytes) -> None:
        """Let the format read it; a write is answered on a task of its own: it waits for its
        device's turn on the line, and neither the publisher nor other commands may wait."""
        client = self._client
        if client is None:
            return
        try:
            reaction = self._fmt.incoming(topic, payload)
        except Exception:
            log.exception("incoming message not understood", extra={"topic": topic})
            return
        if reaction is None:
            return
        for msg in reaction.publish:
            self._publish(client, msg)
        if reaction.reconnect:
            client.disconnect()  # on_disconnect ends the session; the next one starts over
        if reaction.command is not None and self._commands is not None:
            cmd = reaction.command
            task = asyncio.create_task(self._answer(cmd), name=f"cmd:{cmd.device}")
            self._commands_running.add(task)
            task.add_done_callback(self._commands_running.discard)
        self._wake.set()  # the format may have become ready (births sent)

    async def _answer(self, cmd: Command) -> None:
        assert self._commands is not None
        reply: dict[str, Any]
        if self.route.devices is not None and cmd.device not in self.route.devices:
            # A destination scoped to some devices (outputs[].devices) commands only those: a
            # plant broker that sees press-1 must not be a way to write to every machine.
            reply = {
                "id": cmd.cmd_id if cmd.cmd_id is not None else _command_id(cmd.payload),
                "ok": False,
                "error": f"device {cmd.device!r} is not one of destination {self.output}'s",
            }
        elif cmd.call is not None:
            reply = await self._commands.call(cmd.device, cmd.cmd_id, cmd.call)
        elif cmd.writes is not None:
            reply = await self._commands.write(cmd.device, cmd.cmd_id, cmd.writes)
        else:
            reply = await self._commands.handle(cmd.device, cmd.payload)
        log.info(
            "command refused" if not reply.get("ok") else "command done",
            extra={"device": cmd.device, "id": reply.get("id"), "error": reply.get("error", "")},
        )
        client = self._client
        msg = self._fmt.reply(cmd, reply)
        if client is None or msg is None:
            return  # the link went while the command ran; the sender retries or times out
        self._publish(client, msg)


# -- helpers ---------------------------------------------------------------------------------------


def _command_id(payload: bytes) -> str | None:
    """The ``id`` of a raw command document, where one can be read (for a refusal)."""
    try:
        doc = json.loads(payload)
    except ValueError:
        return None
    found = doc.get("id") if isinstance(doc, dict) else None
    return found if isinstance(found, str) else None


def _ssl_context(tls: TlsSection) -> ssl.SSLContext:
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
