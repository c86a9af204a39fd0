"""What every hostile TCP "device" shares: the server, the seeded choice of misbehaviour, the
count of what was thrown, and the slowloris dribble.

:mod:`simulators.hostile` (Modbus), :mod:`simulators.hostile_mc` (MC 3E) and
:mod:`simulators.hostile_s7` (S7) differ only in how they read a request and what they answer;
each subclasses :class:`HostileTcpServer` and writes :meth:`HostileTcpServer.session`. One
random generator per server, drawn from in the same order as before, keeps a seed's sequence of
answers reproducible.
"""

from __future__ import annotations

import asyncio
import random
import signal
from collections import Counter
from collections.abc import Sequence
from typing import ClassVar, Self


class HostileTcpServer:
    """A TCP server on 127.0.0.1 answering each request with a random mix of ``weights``' kinds.

    Subclasses set ``KINDS`` (the default weights: each kind once) and write :meth:`session`,
    which serves one connection until it returns or raises one of ``SESSION_ENDS`` (the ways a
    client or a request we cannot parse ends a connection, not failures of the simulator).
    """

    KINDS: ClassVar[Sequence[str]] = ()
    SESSION_ENDS: ClassVar[tuple[type[BaseException], ...]] = (
        asyncio.IncompleteReadError,
        ConnectionError,
        OSError,
        asyncio.CancelledError,
    )

    def __init__(
        self,
        port: int = 0,
        *,
        seed: int = 0,
        weights: dict[str, float] | None = None,
        slowloris_delay: float = 0.2,
    ) -> None:
        self.port = port
        self.weights = weights or {k: 1.0 for k in self.KINDS}
        self.slowloris_delay = slowloris_delay
        self.sent: Counter[str] = Counter()
        self.requests = 0
        self._random = random.Random(seed)
        self._server: asyncio.Server | None = None
        self._clients: set[asyncio.Task[None]] = set()

    @property
    def frames(self) -> int:
        """Hostile answers sent so far (correct ones not counted)."""
        return sum(n for k, n in self.sent.items() if k != "ok")

    async def start(self) -> Self:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._clients):
            task.cancel()
        await asyncio.gather(*self._clients, return_exceptions=True)
        self._server = None

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _pick(self) -> str:
        """The next kind of answer, counted in ``sent``."""
        kinds = list(self.weights)
        kind = self._random.choices(kinds, [self.weights[k] for k in kinds])[0]
        self.sent[kind] += 1
        return kind

    async def _dribble(self, writer: asyncio.StreamWriter, good: bytes) -> None:
        """Slowloris: a correct answer one byte at a time, slower than any timeout."""
        for byte in good:
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(self.slowloris_delay)

    async def session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve one connection (the protocol's part)."""
        raise NotImplementedError

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._clients.add(task)
        try:
            await self.session(reader, writer)
        except self.SESSION_ENDS:
            pass
        finally:
            self._clients.discard(task)
            writer.close()


async def serve_until_signal(server: HostileTcpServer, banner: str) -> None:
    """Run ``server`` until SIGINT or SIGTERM, then print what it threw (the command lines)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        print(banner.format(port=server.port), flush=True)
        await stop.wait()
        print(dict(server.sent))
