"""A real mosquitto for tests, on a free loopback port, with its own small config.

Tests never rely on a system broker (Debian's package starts one on 1883): each test that needs
one starts its own, can stop it (an outage) and start it again on the same port.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def mosquitto_binary() -> str:
    for candidate in (shutil.which("mosquitto"), "/usr/sbin/mosquitto"):
        if candidate and Path(candidate).exists():
            return candidate
    raise RuntimeError("mosquitto is not installed: run `make test` (it installs it)")


class Mosquitto:
    """One mosquitto process; ``stop()``/``start()`` keep the port so clients can come back."""

    def __init__(
        self, workdir: Path, port: int | None = None, extra_conf: str = "", anonymous: bool = True
    ) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.extra_conf = extra_conf
        self.anonymous = anonymous
        self.proc: subprocess.Popen[bytes] | None = None
        workdir.mkdir(parents=True, exist_ok=True)

    def start(self) -> None:
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            f"allow_anonymous {'true' if self.anonymous else 'false'}\n"
            "persistence true\n"
            f"persistence_location {self.workdir}/\n"
            "autosave_interval 1\n"
            "max_queued_messages 0\n"
            f"log_dest file {self.workdir}/mosquitto.log\n"
            # As root, mosquitto drops to user "mosquitto", who cannot read a test's private
            # tmp folder (files, persistence, log): stay who we are.
            + ("user root\n" if os.geteuid() == 0 else "")
            + self.extra_conf
        )
        self.proc = subprocess.Popen(
            [mosquitto_binary(), "-c", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                logfile = self.workdir / "mosquitto.log"
                log = logfile.read_text() if logfile.exists() else ""
                raise RuntimeError(f"mosquitto exited: {err} {log[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("mosquitto did not start listening")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


@dataclass
class Received:
    topic: str
    payload: bytes
    retain: bool

    def json(self) -> Any:
        return json.loads(self.payload)


@dataclass
class Subscriber:
    """A persistent-session QoS 1 subscriber: survives broker restarts without missing messages.

    Messages land in ``messages``; ``wait_for`` awaits a condition over them instead of sleeping.
    """

    port: int
    topics: list[str]
    client_id: str = "test-subscriber"
    messages: list[Received] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._cond = threading.Condition()
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=self.client_id, clean_session=False
        )
        self._client.on_connect = self._on_connect
        self._client.on_message = self._on_message
        self._client.reconnect_delay_set(1, 2)
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self._client.on_subscribe = self._on_subscribe

    def _on_connect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        for t in self.topics:
            client.subscribe(t, qos=1)
        self.connected.set()

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, codes: Any, props: Any) -> None:
        self.subscribed.set()

    def _on_message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self._cond:
            self.messages.append(Received(msg.topic, bytes(msg.payload), bool(msg.retain)))
            self._cond.notify_all()

    def start(self) -> Subscriber:
        self._client.connect("127.0.0.1", self.port, keepalive=5)
        self._client.loop_start()
        if not self.connected.wait(5) or not self.subscribed.wait(5):
            raise RuntimeError("subscriber did not connect and subscribe")
        return self

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def snapshot(self, topic_suffix: str = "") -> list[Received]:
        with self._cond:
            return [m for m in self.messages if m.topic.endswith(topic_suffix)]

    async def wait_for(self, predicate: Any, timeout: float = 10.0) -> list[Received]:
        """Await until ``predicate(messages)`` is true; returns the messages at that moment."""

        def waiter() -> bool:
            with self._cond:
                return bool(self._cond.wait_for(lambda: predicate(list(self.messages)), timeout))

        ok = await asyncio.to_thread(waiter)
        if not ok:
            with self._cond:
                tail = [(m.topic, m.payload[:120]) for m in self.messages[-5:]]
            raise AssertionError(f"condition not met within {timeout}s; last messages: {tail}")
        with self._cond:
            return list(self.messages)


def data_seqs(messages: list[Received], device: str) -> list[int]:
    return [m.json()["seq"] for m in messages if m.topic.endswith(f"/{device}/data")]


@dataclass
class V5Received:
    topic: str
    payload: bytes
    user_properties: list[tuple[str, str]]


class V5Subscriber:
    """An MQTT v5 subscriber that keeps each message's user properties (clean start)."""

    def __init__(self, port: int, topics: list[str], client_id: str = "test-v5-sub") -> None:
        self.port = port
        self.topics = topics
        self.messages: list[V5Received] = []
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5
        )
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message

    def _on_connect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        for t in self.topics:
            client.subscribe(t, qos=1)

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, codes: Any, props: Any) -> None:
        self._subscribed.set()

    def _on_message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        props = getattr(msg.properties, "UserProperty", None) or []
        with self._cond:
            self.messages.append(V5Received(msg.topic, bytes(msg.payload), list(props)))
            self._cond.notify_all()

    def start(self) -> V5Subscriber:
        self._client.connect("127.0.0.1", self.port, keepalive=5)
        self._client.loop_start()
        if not self._subscribed.wait(5):
            raise RuntimeError("v5 subscriber did not subscribe")
        return self

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    async def wait_for(self, predicate: Any, timeout: float = 10.0) -> list[V5Received]:
        def waiter() -> bool:
            with self._cond:
                return bool(self._cond.wait_for(lambda: predicate(list(self.messages)), timeout))

        if not await asyncio.to_thread(waiter):
            raise AssertionError(f"condition not met within {timeout}s")
        with self._cond:
            return list(self.messages)


def platform_broker(workdir: Path, users: dict[str, str], acl: str) -> Mosquitto:
    """A mosquitto shaped like a cloud platform: no anonymous clients, these users (name:
    password), and an ACL (mosquitto ``acl_file`` syntax) limiting each user to its topics."""
    workdir.mkdir(parents=True, exist_ok=True)
    pwfile = workdir / "passwords"
    for i, (user, password) in enumerate(users.items()):
        args = ["mosquitto_passwd", "-b", *(["-c"] if i == 0 else []), str(pwfile), user, password]
        subprocess.run(args, check=True, capture_output=True)
    aclfile = workdir / "acl"
    aclfile.write_text(acl)
    # log_type all: denied publishes are logged, so a test can assert there were none
    extra = f"password_file {pwfile}\nacl_file {aclfile}\nlog_type all\n"
    return Mosquitto(workdir, extra_conf=extra, anonymous=False)
