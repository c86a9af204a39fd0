"""The gateway's side of the fleet: pushes in on ``<prefix>/config/set``, the result out on
``config/state`` (retained), ``health`` (retained) every ``fleet.health_interval`` and on change.

Why a session of its own (client id ``<client_id>-fleet``) rather than a hook in the default
publisher: the publisher's session is rebuilt by every reload that touches the ``mqtt`` section
or the format, and an apply is itself a reload: the session that carries a push must outlive the
apply it triggers, and the one that reports a rollback must not be the one being rolled back. A
separate small paho session also keeps the publisher's flow control, its will and its dialects
(Sparkplug, cloud platforms) untouched. paho runs on its own thread; messages hop onto the event
loop, are checked off the loop (parsing a large text must not delay polls) and applied one at a
time through the reload path (agent/app/reload.py), so devices keep their schedule.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from agent.app.config.models import Config
from agent.app.fleet.boot import Boot, file_in_force
from agent.app.fleet.health import InForce, change_key, check_health, health_doc, was_up
from agent.app.fleet.push import (
    Push,
    Refused,
    build_config,
    check_signature,
    check_writes,
    parse_push,
    pushable_text,
)
from agent.app.fleet.store import Entry
from agent.app.reload import _off_loop, apply_config
from agent.north.formats.base import topic_prefix
from agent.north.publisher import _ssl_context
from drivers.base import Driver

if TYPE_CHECKING:
    from agent.app.runtime import Agent

log = logging.getLogger(__name__)

#: How often the health document is compared with the last one sent.
WATCH_STEP = 1.0


class FleetGateway:
    """One agent's fleet session; ``start`` after the agent, ``stop`` before it."""

    def __init__(
        self, agent: Agent, boot: Boot, local: Path, drivers: Mapping[str, type[Driver]]
    ) -> None:
        self.agent = agent
        self.boot = boot
        self.local = local
        self.drivers = drivers
        self.fleet = agent.config.fleet
        self.in_force: InForce = boot.in_force
        self.prefix = topic_prefix(agent.config)
        self._queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=16)
        self._last_state: bytes | None = None
        self._current = b""
        self._sent_key: Any = None
        self._connected = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: mqtt.Client | None = None
        self.applying = False

    # -- session -------------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._current = await asyncio.to_thread(self._current_doc)
        self._client = self._new_client(self.agent.config)
        if self.boot.announce is not None:
            self._set_state({**self.boot.announce, "ts": int(time.time() * 1000)})
        self._tasks = [
            asyncio.create_task(self._apply_loop(), name="fleet:apply"),
            asyncio.create_task(self._health_loop(), name="fleet:health"),
        ]
        self.agent.reload_listeners.append(self._file_reloaded)
        log.info("fleet session started", extra={"prefix": self.prefix})

    def _file_reloaded(self, path: Path) -> None:
        """A SIGHUP applied the local file: it is the config in force now (health and
        ``config/current`` say so at once)."""
        try:
            self.in_force = file_in_force(path)
            self._current = self._current_doc()
        except OSError as exc:
            log.warning("fleet: cannot read the reloaded file", extra={"error": str(exc)})
            return
        self._publish("config/current", self._current)

    async def stop(self) -> None:
        with contextlib.suppress(ValueError):
            self.agent.reload_listeners.remove(self._file_reloaded)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        client = self._client
        if client is not None:
            self._client = None

            def close() -> None:
                client.disconnect()
                client.loop_stop()

            await asyncio.to_thread(close)

    def _new_client(self, config: Config) -> mqtt.Client:
        section = config.mqtt
        client_id = f"{section.client_id or config.agent.id}-fleet"
        if any(o.client_id == client_id for o in config.outputs):  # an output named "fleet"
            client_id += "-session"
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=True,
            reconnect_on_failure=True,
        )
        if section.username is not None:
            password = section.password.get_secret_value() if section.password else None
            client.username_pw_set(section.username, password)
        if section.tls is not None:
            client.tls_set_context(_ssl_context(section.tls))
        client.reconnect_delay_set(
            max(1, int(section.reconnect_min)), max(1, int(section.reconnect_max))
        )
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        host, port = section.host, section.port
        if section.servers:
            host, _, raw_port = section.servers[0].rpartition(":")
            port = int(raw_port)
        client.connect_async(host.strip("[]"), port, keepalive=max(5, int(section.keepalive)))
        client.loop_start()
        return client

    # paho's thread -> the event loop
    def _on_connect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        if rc.is_failure:
            return
        client.subscribe(f"{self.prefix}/config/set", qos=1)
        if self._last_state is not None:
            client.publish(f"{self.prefix}/config/state", self._last_state, qos=1, retain=True)
        client.publish(f"{self.prefix}/config/current", self._current, qos=1, retain=True)
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._connected_now)

    def _connected_now(self) -> None:
        self._sent_key = None  # a new session: send health at once
        self._connected.set()

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._connected.clear)

    def _on_message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        payload = bytes(msg.payload)
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._enqueue, payload)

    def _enqueue(self, payload: bytes) -> None:
        try:
            self._queue.put_nowait(payload)
        except asyncio.QueueFull:
            log.warning("fleet: pushes arrive faster than they are applied; one dropped")

    def _publish(self, suffix: str, payload: bytes) -> None:
        if self._client is not None:
            self._client.publish(f"{self.prefix}/{suffix}", payload, qos=1, retain=True)

    def _set_state(self, state: dict[str, Any]) -> None:
        self._last_state = json.dumps(state, separators=(",", ":")).encode()
        self._publish("config/state", self._last_state)

    # -- health --------------------------------------------------------------------------------

    async def _health_loop(self) -> None:
        last_sent = 0.0
        while True:
            await self._connected.wait()
            doc = health_doc(self.agent, self.in_force)
            key = change_key(doc)
            due = time.monotonic() - last_sent >= self.fleet.health_interval
            if (key != self._sent_key or due) and not self.applying:
                self._publish("health", json.dumps(doc, separators=(",", ":")).encode())
                self._sent_key = key
                last_sent = time.monotonic()
            await asyncio.sleep(WATCH_STEP)

    # -- pushes --------------------------------------------------------------------------------

    async def _apply_loop(self) -> None:
        while True:
            payload = await self._queue.get()
            try:
                await self.handle(payload)
            except Exception:  # a bug, not a bad push: say so and keep serving
                log.exception("fleet: push handling failed")

    async def handle(self, payload: bytes) -> None:
        """One message of ``config/set``: refused, applied, or applied and rolled back."""
        push: Push | None = None
        state = self.boot.state
        try:
            push = parse_push(payload)
            check_signature(push, self.boot.key)
            if push.version <= state.highest:
                raise Refused(
                    [
                        f"1:1: (push).version: version {push.version} is not newer than "
                        f"{state.highest}"
                    ],
                    push,
                )
            text = push.yaml
            new = await _off_loop(
                build_config, text, self.local, self.drivers, list(self.fleet.allow)
            )
            if not self.fleet.allow_writes:
                check_writes(new, self.agent.config, text)
        except Refused as exc:
            push = exc.push or push
            self._refused(push, exc.errors)
            return
        except Exception as exc:  # RecursionError from a hostile nesting, and the like
            self._refused(push, [f"1:1: (yaml): cannot be read: {type(exc).__name__}"])
            return
        await self._apply(push, new)

    def _refused(self, push: Push | None, errors: list[str]) -> None:
        # The errors name keys and positions, never values: nothing pushed reaches the log.
        version = push.version if push is not None else 0
        log.warning(
            "fleet push refused",
            # Where, not what: a message may quote a pushed value.
            extra={"version": version, "problems": len(errors), "at": _where(errors[0])},
        )
        self._set_state(
            {
                "id": push.id if push is not None else "",
                "version": version,
                "hash": push.hash if push is not None else "",
                "result": "refused",
                "errors": errors,
                "ts": int(time.time() * 1000),
            }
        )

    async def _apply(self, push: Push, new: Config) -> None:
        store, state = self.boot.store, self.boot.state
        await asyncio.to_thread(store.save_version, push.version, push.yaml)
        state.highest = push.version
        state.pending = Entry(push.version, push.hash, id=push.id)
        await asyncio.to_thread(store.save, state)
        agent = self.agent
        self.applying = True
        try:
            async with agent.reload_lock:
                before = was_up(agent)
                previous = agent.config
                try:
                    await apply_config(agent, new)
                except Exception as exc:  # a bug on the way: the previous config comes back
                    log.exception("fleet apply failed")
                    problem: str | None = f"the apply failed: {type(exc).__name__}"
                else:
                    problem = None
            if problem is None:
                problem = await check_health(agent, before, self.fleet.health_check)
            if problem is None:
                state.current = Entry(push.version, push.hash, id=push.id)
                state.pending = None
                state.record(push.version, push.hash, "applied")
                self.in_force = InForce(push.version, push.hash, "fleet")
                result, errors = "applied", []
                log.info("fleet push applied", extra={"version": push.version})
            else:
                async with agent.reload_lock:
                    await apply_config(agent, previous)
                state.pending = None
                state.record(push.version, push.hash, "rolled_back", problem)
                result, errors = "rolled_back", [problem]
                log.warning(
                    "fleet push rolled back",
                    extra={"version": push.version, "reason": problem},
                )
            protect = {state.current.version} if state.current is not None else set()
            await asyncio.to_thread(store.save, state)
            await asyncio.to_thread(store.prune, protect)
        finally:
            self.applying = False
        self._set_state(
            {
                "id": push.id,
                "version": push.version,
                "hash": push.hash,
                "result": result,
                "errors": errors,
                "ts": int(time.time() * 1000),
            }
        )
        if result == "applied":
            self._current = await asyncio.to_thread(self._current_doc)
            self._publish("config/current", self._current)
        self._sent_key = None  # health at once, with the config in force

    def _current_doc(self) -> bytes:
        """``config/current`` (retained, for ``fleet diff``): the text in force of the
        sections a push may carry: the pushed text, or those sections of the local file."""
        force = self.in_force
        if force.source == "fleet":
            text = self.boot.store.read_version(force.version)
        else:
            text = pushable_text(self.local, list(self.fleet.allow))
        doc = {"version": force.version, "hash": force.hash, "source": force.source, "yaml": text}
        return json.dumps(doc, separators=(",", ":")).encode()


def _where(error: str) -> str:
    """``LINE:COL: key.path`` of one error, without its message."""
    return ": ".join(error.split(": ")[:2])
