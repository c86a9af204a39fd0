"""The notify protocol against a real socket bound by the test (systemd's side of it)."""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path

from agent.ops.notify import Notifier


def listener(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(5)
    return sock


def test_messages_reach_the_socket(tmp_path: Path) -> None:
    sock = listener(tmp_path / "n")
    n = Notifier({"NOTIFY_SOCKET": str(tmp_path / "n")})
    assert n.enabled and n.ready("2/2 devices up")
    assert sock.recv(4096) == b"READY=1\nSTATUS=2/2 devices up"
    assert n.reloading()
    lines = sock.recv(4096).decode().split("\n")
    assert lines[0] == "RELOADING=1" and lines[1].startswith("MONOTONIC_USEC=")
    assert int(lines[1].split("=")[1]) > 0
    assert n.stopping() and sock.recv(4096) == b"STOPPING=1\nSTATUS=stopping"
    sock.close()


def test_abstract_socket_address() -> None:
    name = f"edge-agent-test-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(5)
    assert Notifier({"NOTIFY_SOCKET": "@" + name}).send("READY=1")
    assert sock.recv(64) == b"READY=1"
    sock.close()


def test_without_systemd_nothing_happens_and_nothing_fails(tmp_path: Path) -> None:
    assert not Notifier({}).send("READY=1")
    assert Notifier({}).watchdog_interval is None
    gone = Notifier({"NOTIFY_SOCKET": str(tmp_path / "nobody")})
    assert gone.send("READY=1") is False  # logged once, never raised


def test_a_manager_that_does_not_read_never_blocks_the_agent(tmp_path: Path) -> None:
    sock = listener(tmp_path / "n")
    n = Notifier({"NOTIFY_SOCKET": str(tmp_path / "n")})
    sent = [n.send("WATCHDOG=1") for _ in range(200)]  # the queue holds far fewer
    assert sent[0] and not sent[-1]
    sock.close()


def test_watchdog_interval_is_half_of_watchdog_usec() -> None:
    assert Notifier({"WATCHDOG_USEC": "30000000"}).watchdog_interval == 15.0
    assert Notifier({"WATCHDOG_USEC": "0"}).watchdog_interval is None
    other = {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)}
    assert Notifier(other).watchdog_interval is None  # meant for another process
    mine = {"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": str(os.getpid())}
    assert Notifier(mine).watchdog_interval == 0.5


async def test_keepalives_come_from_the_event_loop(tmp_path: Path) -> None:
    sock = listener(tmp_path / "n")
    n = Notifier({"NOTIFY_SOCKET": str(tmp_path / "n"), "WATCHDOG_USEC": "100000"})
    task = asyncio.create_task(n.watchdog())
    got = [await asyncio.to_thread(sock.recv, 64) for _ in range(3)]
    task.cancel()
    assert got == [b"WATCHDOG=1"] * 3
    sock.close()
