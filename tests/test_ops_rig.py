"""Helpers of the operations tests: the agent as a real process, its log, its listener.

(A module of helpers named like a test file so it sits with the tests it serves; it has no tests.)
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent / "edge-agent"
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class AgentProcess:
    """``edge-agent run`` with JSON logs collected line by line (awaitable, no sleeps)."""

    def __init__(
        self, config: Path, env: dict[str, str] | None = None, args: list[str] | None = None
    ) -> None:
        self.config = config
        self.proc = subprocess.Popen(
            [str(BIN), "run", "-c", str(config), "--log-format", "json", *(args or [])],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
        self.lines: list[dict[str, Any]] = []
        self.raw: list[str] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            text = raw.decode(errors="replace").rstrip("\n")
            with self._cond:
                self.raw.append(text)
                with contextlib.suppress(ValueError):
                    self.lines.append(json.loads(text))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait_for(
        self, pred: Callable[[dict[str, Any]], bool], timeout: float = 20
    ) -> dict[str, Any]:
        """The first log line matching ``pred`` (earlier lines included)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines:
                    if pred(line):
                        return line
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    raise AssertionError(
                        "log line not seen; last lines:\n" + "\n".join(self.raw[-80:])
                    )
                self._cond.wait(min(left, 0.5))

    def wait_msg(self, msg: str, timeout: float = 20) -> dict[str, Any]:
        return self.wait_for(lambda line: line.get("msg") == msg, timeout)

    @property
    def url(self) -> str:
        listen = self.wait_msg("metrics served")["listen"]
        return f"http://{listen}"

    def stop(self, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(5)
        return int(self.proc.returncode)

    def __enter__(self) -> AgentProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def http(
    url: str, data: bytes | None = None, headers: dict[str, str] | None = None, timeout: float = 10
) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body), for error statuses too."""
    request = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with _NO_PROXY.open(request, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def wait_http(url: str, pred: Callable[[int, bytes], bool], timeout: float = 20) -> bytes:
    """Poll a local endpoint until ``pred(status, body)``; the agent's own state has no event
    a test process could await."""
    deadline = time.monotonic() + timeout
    last: tuple[int, bytes] = (0, b"")
    while time.monotonic() < deadline:
        try:
            status, _, body = http(url)
            last = (status, body)
            if pred(status, body):
                return body
        except OSError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"{url}: condition not met; last answer {last[0]} {last[1][:500]!r}")


class NotifyListener:
    """A unix datagram socket standing in for systemd's ``$NOTIFY_SOCKET``, read continuously
    from a thread as systemd does (an unread socket fills after ~10 datagrams)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[str] = []
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._closed:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            with self._cond:
                self.messages.append(data.decode())
                self._cond.notify_all()

    def wait_for(self, text: str, timeout: float = 20) -> list[str]:
        """Messages received until one containing the line ``text``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not any(text in m.split("\n") for m in self.messages):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{text!r} not notified; got {self.messages}")
                self._cond.wait(left)
            return list(self.messages)

    def close(self) -> None:
        self._closed = True
        self._thread.join(2)
        self.sock.close()
