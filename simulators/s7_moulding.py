"""An injection-moulding machine's S7 PLC, on python-snap7's server, for development and tests.

The PLC holds the data blocks a moulding machine's program typically exposes (non-optimised,
so absolute addresses work, as the S7 driver's documentation asks of integrators):

``DB1`` machine: ``DBD0`` cycle counter (DINT), ``DBD4`` last cycle time in s (REAL), ``DBW8``
state word (WORD: bit 0 running, 1 automatic, 2 alarm, 3 mould open, 4 heaters ready),
``DBX10.0`` running, ``DBX10.1`` alarm (BOOL), ``DBB12`` mould id (STRING[16]), ``DBB30`` end
of the last cycle (DTL), ``DBB42`` start of the shift (DATE_AND_TIME), ``DBB50`` shot weight
total in kg (LREAL), ``DBB58`` parts total (LINT), ``DBB66`` operator (WSTRING[8]).

``DB2`` temperatures (REAL, deg C): ``DBB0`` barrel zones 1..5 (count 5), ``DBD20`` melt,
``DBD24`` mould, ``DBD28`` hydraulic oil.

``DB3`` set-points (writable): ``DBD0`` barrel set-point (REAL), ``DBW4`` holding pressure in
bar (INT), ``DBX6.0`` heaters enabled (BOOL).

``MW20`` cooling time set-point in 0.1 s (WORD), ``MD24`` spare (DWORD); ``I0.0`` door closed,
``I0.1`` safety gate; ``Q0.0`` heaters on, ``Q0.1`` alarm lamp. ``DB100`` (64 bytes of zeros)
is free for tests.

Two things python-snap7's server does not do as a PLC does are done here: a bit write sets one
bit (snap7 writes the whole byte), and ``stop()`` cuts open connections (snap7 lets them run
until their next read times out), so a test's "PLC off" is felt at once. ``pdu`` is the PDU
the PLC grants (240 as an S7-300 or S7-1200, 480 or 960 as an S7-1500; snap7's own server
grants 480 at most), and ``exchanges`` counts the requests answered.

Command line::

    python -m simulators.s7_moulding --port 1102 [--pdu 240] [--seed 1] [--db 10:4096]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import logging
import math
import random
import socket
import struct
import sys
import threading
from collections.abc import Sequence
from typing import Any, Final

from snap7.datatypes import S7Area, S7WordLen
from snap7.server import Server
from snap7.type import SrvArea

from simulators.service import Service, serve_until_signal

DB_SIZES: Final = {1: 128, 2: 64, 3: 32, 100: 64}
MOULD_ID: Final = "MLD-4711-A"
OPERATOR: Final = "Müller"
#: Running state bits of DB1.DBW8.
RUNNING, AUTOMATIC, ALARM, MOULD_OPEN, HEATERS_READY = (1, 2, 4, 8, 16)


class MouldingServer(Server):
    """snap7's server with a PDU cap, bit writes and connections that end with ``stop()``."""

    def __init__(self, pdu: int = 480) -> None:
        super().__init__(log=False)
        self.pdu = pdu
        self.exchanges = 0
        self._sockets: set[socket.socket] = set()
        self._sockets_lock = threading.Lock()

    def _handle_setup_communication(self, request: dict[str, Any]) -> bytes:
        answer = bytearray(super()._handle_setup_communication(request))
        # snap7 grants at most 480; a PLC grants what it has, up to what was asked.
        asked = int((request.get("parameters") or {}).get("pdu_length", 480))
        granted = min(asked, self.pdu)
        struct.pack_into(">H", answer, len(answer) - 2, granted)
        return bytes(answer)

    def _process_request(
        self, request_data: bytes, client_address: tuple[str, int]
    ) -> bytes | None:
        self.exchanges += 1
        return super()._process_request(request_data, client_address)

    def _parse_address_specification(self, addr_spec: bytes) -> dict[str, Any]:
        spec = super()._parse_address_specification(addr_spec)
        if spec and len(addr_spec) >= 12:
            spec["bit"] = int.from_bytes(addr_spec[9:12], "big") & 7
        return spec

    def _handle_write_area(self, request: dict[str, Any], client_address: tuple[str, int]) -> bytes:
        spec = (request.get("parameters") or {}).get("address_spec") or {}
        data = (request.get("data") or {}).get("data") or b""
        key: tuple[S7Area, int] = (spec.get("area", S7Area.DB), spec.get("db_number", 0))
        memory = self.memory_areas.get(key)
        if spec.get("word_len") == S7WordLen.BIT and memory is not None and data:
            at, mask = spec["start"], 1 << spec.get("bit", 0)
            if at < len(memory):
                new = (memory[at] & ~mask) | (mask if data[0] & 1 else 0)
                request["data"]["data"] = bytes([new])
        return super()._handle_write_area(request, client_address)

    def _handle_client(self, client_socket: socket.socket, address: tuple[str, int]) -> None:
        with self._sockets_lock:
            self._sockets.add(client_socket)
        try:
            super()._handle_client(client_socket, address)
        finally:
            with self._sockets_lock:
                self._sockets.discard(client_socket)

    def stop(self) -> int:
        with self._sockets_lock:
            open_sockets = list(self._sockets)
        for sock in open_sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        return super().stop()


def dtl(when: dt.datetime) -> bytes:
    """DTL bytes of ``when``."""
    return struct.pack(
        ">HBBBBBBI",
        when.year,
        when.month,
        when.day,
        when.isoweekday() % 7 + 1,
        when.hour,
        when.minute,
        when.second,
        when.microsecond * 1000,
    )


def date_and_time(when: dt.datetime) -> bytes:
    """DATE_AND_TIME (BCD) bytes of ``when``."""

    def bcd(n: int) -> int:
        return (n // 10) << 4 | n % 10

    ms = when.microsecond // 1000
    return bytes(
        [
            bcd(when.year % 100),
            bcd(when.month),
            bcd(when.day),
            bcd(when.hour),
            bcd(when.minute),
            bcd(when.second),
            bcd(ms // 10),
            (ms % 10) << 4 | (when.isoweekday() % 7 + 1),
        ]
    )


def s7_string(text: str, max_len: int) -> bytes:
    chars = text.encode("latin-1")[:max_len]
    return bytes([max_len, len(chars)]) + chars.ljust(max_len, b"\x00")


def s7_wstring(text: str, max_len: int) -> bytes:
    chars = text.encode("utf-16-be")[: 2 * max_len]
    return struct.pack(">HH", max_len, len(chars) // 2) + chars.ljust(2 * max_len, b"\x00")


class MouldingSimulator(Service):
    """The machine: its PLC's memory, a cycle that runs while ``update_interval`` is set, and the
    hands tests need (read and write memory, stop and start on the same port)."""

    def __init__(
        self,
        port: int = 0,
        *,
        host: str = "127.0.0.1",
        pdu: int = 480,
        update_interval: float | None = 0.5,
        seed: int = 0,
        extra_dbs: dict[int, int] | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.pdu = pdu
        self.update_interval = update_interval
        self._random = random.Random(seed)
        self.memory: dict[tuple[S7Area, int], bytearray] = {}
        self._server: MouldingServer | None = None
        self._task: asyncio.Task[None] | None = None
        self._exchanges = 0
        self._init_memory()
        for number, size in (extra_dbs or {}).items():  # zeros, for tests and benchmarks
            self.memory[(S7Area.DB, number)] = bytearray(size)

    # -- memory --------------------------------------------------------------------------------

    def _init_memory(self) -> None:
        for number, size in DB_SIZES.items():
            self.memory[(S7Area.DB, number)] = bytearray(size)
        for area in (S7Area.MK, S7Area.PE, S7Area.PA):
            self.memory[(area, 0)] = bytearray(256)
        start = dt.datetime(2026, 12, 7, 6, 0, 0)
        self.put(1, 0, struct.pack(">i", 0))
        self.put(1, 4, struct.pack(">f", 28.4))
        self.put(1, 8, struct.pack(">H", RUNNING | AUTOMATIC | HEATERS_READY))
        self.put(1, 10, bytes([0b01]))
        self.put(1, 12, s7_string(MOULD_ID, 16))
        self.put(1, 30, dtl(start))
        self.put(1, 42, date_and_time(start))
        self.put(1, 50, struct.pack(">d", 0.0))
        self.put(1, 58, struct.pack(">q", 0))
        self.put(1, 66, s7_wstring(OPERATOR, 8))
        for zone, temp in enumerate((215.0, 225.0, 230.0, 235.0, 240.0)):
            self.put(2, 4 * zone, struct.pack(">f", temp))
        self.put(2, 20, struct.pack(">f", 232.5))
        self.put(2, 24, struct.pack(">f", 45.0))
        self.put(2, 28, struct.pack(">f", 42.0))
        self.put(3, 0, struct.pack(">f", 230.0))
        self.put(3, 4, struct.pack(">h", 650))
        self.put(3, 6, bytes([1]))
        self.put_area(S7Area.MK, 20, struct.pack(">H", 150))
        self.put_area(S7Area.PE, 0, bytes([0b11]))
        self.put_area(S7Area.PA, 0, bytes([0b01]))

    def put(self, db: int, offset: int, data: bytes) -> None:
        """Write ``data`` into DB ``db`` at ``offset``, as the PLC program would."""
        self.put_area(S7Area.DB, offset, data, db)

    def put_area(self, area: S7Area, offset: int, data: bytes, index: int = 0) -> None:
        memory = self.memory[(area, index)]
        server = self._server
        lock = server.area_locks.get((area, index)) if server is not None else None
        with lock or contextlib.nullcontext():
            memory[offset : offset + len(data)] = data

    def get(self, db: int, offset: int, size: int) -> bytes:
        return bytes(self.memory[(S7Area.DB, db)][offset : offset + size])

    def get_area(self, area: S7Area, offset: int, size: int, index: int = 0) -> bytes:
        return bytes(self.memory[(area, index)][offset : offset + size])

    @property
    def cycles(self) -> int:
        return int(struct.unpack(">i", self.get(1, 0, 4))[0])

    @property
    def exchanges(self) -> int:
        """Requests the PLC answered since made (over restarts)."""
        return self._exchanges + (self._server.exchanges if self._server is not None else 0)

    # -- machine -------------------------------------------------------------------------------

    def step(self) -> None:
        """One machine cycle: counters up, temperatures wander around their set-points."""
        rnd = self._random
        self.put(1, 0, struct.pack(">i", self.cycles + 1))
        cycle_time = 28.0 + rnd.uniform(-0.6, 0.6)
        self.put(1, 4, struct.pack(">f", round(cycle_time, 2)))
        state = struct.unpack(">H", self.get(1, 8, 2))[0] ^ MOULD_OPEN
        self.put(1, 8, struct.pack(">H", state))
        self.put(1, 30, dtl(dt.datetime.now().replace(microsecond=0)))
        weight = struct.unpack(">d", self.get(1, 50, 8))[0] + 0.0482
        self.put(1, 50, struct.pack(">d", round(weight, 4)))
        parts = struct.unpack(">q", self.get(1, 58, 8))[0] + 4  # a four-cavity mould
        self.put(1, 58, struct.pack(">q", parts))
        setpoint = struct.unpack(">f", self.get(3, 0, 4))[0]
        heating = bool(self.get(3, 6, 1)[0] & 1)
        for zone in range(5):
            now = struct.unpack(">f", self.get(2, 4 * zone, 4))[0]
            target = setpoint - 15 + 5 * zone if heating else 25.0
            now += 0.2 * (target - now) + rnd.gauss(0, 0.3)
            self.put(2, 4 * zone, struct.pack(">f", round(now, 1)))
        melt = setpoint + 2.5 + rnd.gauss(0, 0.4) if heating else 25.0
        self.put(2, 20, struct.pack(">f", round(melt, 1)))
        self.put(2, 24, struct.pack(">f", round(45 + 2 * math.sin(self.cycles / 10), 1)))

    async def _run(self) -> None:
        assert self.update_interval is not None
        while True:
            await asyncio.sleep(self.update_interval)
            self.step()

    # -- life ----------------------------------------------------------------------------------

    async def start(self) -> None:
        server = MouldingServer(self.pdu)
        for (area, index), memory in self.memory.items():
            srv_area = {
                S7Area.DB: SrvArea.DB,
                S7Area.MK: SrvArea.MK,
                S7Area.PE: SrvArea.PE,
                S7Area.PA: SrvArea.PA,
            }[area]
            server.register_area(srv_area, index, memory)  # the same bytearray: shared memory
        server.host = self.host
        await asyncio.to_thread(server.start, self.port)
        if server.server_socket is not None:
            self.port = int(server.server_socket.getsockname()[1])
        self._server = server
        if self.update_interval is not None and self._task is None:
            self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        server, self._server = self._server, None
        if server is not None:
            self._exchanges += server.exchanges
            await asyncio.to_thread(server.stop)


async def _serve(args: argparse.Namespace) -> None:
    extra = {int(n): int(size) for n, size in (spec.split(":") for spec in args.db)}
    sim = MouldingSimulator(
        args.port,
        host=args.host,
        pdu=args.pdu,
        update_interval=args.interval or None,
        seed=args.seed,
        extra_dbs=extra,
    )

    def ready() -> None:
        print(f"S7 moulding machine on {args.host}:{sim.port} (PDU {args.pdu})", flush=True)

    await serve_until_signal(sim, ready)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1102)
    parser.add_argument("--pdu", type=int, default=480, help="PDU size the PLC grants")
    parser.add_argument(
        "--interval", type=float, default=1.0, help="seconds per machine cycle (0: frozen)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--db", action="append", default=[], metavar="N:SIZE", help="an extra DB of zeros"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("snap7").setLevel(logging.ERROR)
    asyncio.run(_serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
