"""The life cycle every simulator shares: ``async with`` around start and stop, cancelling its
background task, the port a server bound, and the command line's "serve until Ctrl-C"."""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import Any, Self


class Service(abc.ABC):
    """A simulator tests use as ``async with Sim(...) as sim``: started on entry, stopped on exit
    (also when the test fails), so no server or pty outlives its test."""

    @abc.abstractmethod
    async def start(self) -> None:
        """Open the server or pty and start the background work."""

    @abc.abstractmethod
    async def stop(self) -> None:
        """Close everything start opened; safe to call twice."""

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


async def cancel(task: asyncio.Task[Any] | None) -> None:
    """Cancel a background task (a ticker, the instrument's own loop) and wait until it ended."""
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def bound_port(server: Any) -> int:
    """The port a listening pymodbus server was given when asked for port 0 (its transport is
    an ``asyncio.Server`` once listening; untyped in pymodbus)."""
    return int(server.transport.sockets[0].getsockname()[1])


async def serve_until_signal(sim: Service, ready: Callable[[], None]) -> None:
    """The command line of a simulator: run it until SIGINT or SIGTERM; ``ready`` runs once it
    is started (set it up, print where it listens)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with sim:
        ready()
        await stop.wait()


def run_modbus_cli(serve: Coroutine[Any, Any, None], log_level: str) -> int:
    """Run a Modbus simulator's ``serve`` coroutine as a program: logs at ``log_level``, and
    Ctrl-C ends it quietly."""
    logging.basicConfig(level=log_level.upper(), format="%(levelname)s %(name)s %(message)s")
    # pymodbus logs every dropped or refused request at error level; that is the point here.
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve)
    return 0
