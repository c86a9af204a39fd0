"""An S7 "PLC" that breaks the protocol on purpose, to prove the S7 driver survives the wire.

python-snap7's server only misbehaves in ways it was written to, so :class:`HostileS7Server` is a
raw asyncio server that speaks ISO-on-TCP (TPKT, COTP) and S7 read requests itself and answers
each read, per a seeded random choice, with one of:

``ok``            a correct answer: byte ``i`` of an item from byte ``s`` is ``(s + i) & 0xFF``;
``item_error``    one item refused with return code 0x0A (object does not exist), the rest correct;
``truncated``     the answer's data cut short (the TPKT length agrees with what is sent);
``wrong_length``  an item whose length field is not the length asked for;
``wrong_count``   an answer for one item fewer than asked;
``header_error``  error class 0x81, code 0x04 (what an S7-1200 without PUT/GET answers);
``stale``         an answer with an older PDU reference first, then the correct one;
``bad_tpkt``      a TPKT header whose length is not what follows (the stream loses its step);
``garbage``       random bytes;
``slowloris``     a correct answer dribbled one byte at a time, slower than any timeout;
``silent``        no answer.

``refuse_types`` makes it refuse connection requests whose remote TSAP names one of those
connection types (1 PG, 2 OP, 3 S7 basic) with a COTP disconnect request, as a CPU does when it
has no free resource of that type. Every answer is counted in ``sent`` per kind.

Command line::

    python -m simulators.hostile_s7 --port 1103 [--seed 1] [--refuse 2]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import struct
import sys
from collections.abc import Sequence
from typing import Final

from simulators.hostile_server import HostileTcpServer

S7_KINDS: Final = (
    "ok",
    "item_error",
    "truncated",
    "wrong_length",
    "wrong_count",
    "header_error",
    "stale",
    "bad_tpkt",
    "garbage",
    "slowloris",
    "silent",
)


def tpkt(payload: bytes, length: int | None = None) -> bytes:
    return struct.pack(">BBH", 3, 0, len(payload) + 4 if length is None else length) + payload


def cotp_dt(s7: bytes) -> bytes:
    return bytes([2, 0xF0, 0x80]) + s7


def item_data(start: int, size: int) -> bytes:
    """What a correct answer carries for an item of ``size`` bytes from byte ``start``."""
    return bytes((start + i) & 0xFF for i in range(size))


def read_answer(
    ref: int, items: Sequence[tuple[int, int]], *, refuse: int | None = None, length_off: int = 0
) -> bytes:
    """An S7 ack-data answering a read of ``items`` (start byte, size): item ``refuse`` gets
    return code 0x0A, and ``length_off`` is added to the first item's length field."""
    data = bytearray()
    for n, (start, size) in enumerate(items):
        if n == refuse:
            data += bytes([0x0A, 0x00, 0x00, 0x00])
        else:
            bits = (size + (length_off if n == 0 else 0)) * 8
            data += struct.pack(">BBH", 0xFF, 0x04, bits & 0xFFFF) + item_data(start, size)
            if n < len(items) - 1 and size % 2:
                data.append(0)
    params = bytes([0x04, len(items)])
    header = struct.pack(">BBHHHHBB", 0x32, 3, 0, ref, len(params), len(data), 0, 0)
    return header + params + bytes(data)


class HostileS7Server(HostileTcpServer):
    """An S7 "PLC" that answers reads with a random mix of ``weights``' kinds."""

    KINDS = S7_KINDS
    # a request we cannot parse ends the connection, as a PLC would
    SESSION_ENDS = (*HostileTcpServer.SESSION_ENDS, struct.error, IndexError)

    def __init__(
        self,
        port: int = 0,
        *,
        seed: int = 0,
        weights: dict[str, float] | None = None,
        slowloris_delay: float = 0.05,
        refuse_types: frozenset[int] = frozenset(),
        pdu: int = 240,
    ) -> None:
        super().__init__(port, seed=seed, weights=weights, slowloris_delay=slowloris_delay)
        self.refuse_types = refuse_types
        self.pdu = pdu
        self.connections = 0
        self.refused = 0

    async def _frame(self, reader: asyncio.StreamReader) -> bytes:
        version, _, length = struct.unpack(">BBH", await reader.readexactly(4))
        if version != 3 or length < 7:
            raise ConnectionError("not a TPKT frame")
        return await reader.readexactly(length - 4)

    async def session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        request = await self._frame(reader)  # COTP connection request
        called = request.find(b"\xc2\x02")
        conn_type = request[called + 2] if called >= 0 else 0
        if conn_type in self.refuse_types:
            self.refused += 1
            writer.write(tpkt(bytes([6, 0x80, 0, 1, 0, 1, 0x01])))  # disconnect request
            await writer.drain()
            return
        writer.write(tpkt(bytes([6, 0xD0, 0, 1, 0, 1, 0])))  # connection confirm
        while True:
            s7 = (await self._frame(reader))[3:]
            ref = struct.unpack_from(">H", s7, 4)[0]
            function = s7[10]
            if function == 0xF0:  # setup communication: grant our PDU
                params = struct.pack(">BBHHH", 0xF0, 0, 1, 1, self.pdu)
                header = struct.pack(">BBHHHHBB", 0x32, 3, 0, ref, len(params), 0, 0, 0)
                writer.write(tpkt(cotp_dt(header + params)))
            elif function == 0x04:
                count = s7[11]
                items = [struct.unpack_from(">HHB3s", s7, 12 + 12 * n + 4) for n in range(count)]
                spans = [(int.from_bytes(at, "big") >> 3, size) for size, _, _, at in items]
                await self._answer(writer, ref, spans)
            await writer.drain()

    async def _answer(
        self, writer: asyncio.StreamWriter, ref: int, spans: list[tuple[int, int]]
    ) -> None:
        kind = self._pick()
        rnd = self._random
        good = tpkt(cotp_dt(read_answer(ref, spans)))
        if kind == "ok":
            writer.write(good)
        elif kind == "item_error":
            refuse = rnd.randrange(len(spans))
            writer.write(tpkt(cotp_dt(read_answer(ref, spans, refuse=refuse))))
        elif kind == "truncated":
            answer = read_answer(ref, spans)
            cut = answer[: rnd.randint(12, len(answer) - 1)]
            writer.write(tpkt(cotp_dt(cut)))
        elif kind == "wrong_length":
            off = rnd.choice([-1, 1, 7])
            writer.write(tpkt(cotp_dt(read_answer(ref, spans, length_off=off))))
        elif kind == "wrong_count":
            writer.write(tpkt(cotp_dt(read_answer(ref, spans[:-1] or spans[:1] * 2))))
        elif kind == "header_error":
            header = struct.pack(">BBHHHHBB", 0x32, 2, 0, ref, 0, 0, 0x81, 0x04)
            writer.write(tpkt(cotp_dt(header)))
        elif kind == "stale":
            writer.write(tpkt(cotp_dt(read_answer((ref - 1) & 0xFFFF, spans))))
            writer.write(good)
        elif kind == "bad_tpkt":
            payload = cotp_dt(read_answer(ref, spans))
            writer.write(tpkt(payload, length=len(payload) + 4 + rnd.choice([-5, -1, 3, 60])))
        elif kind == "garbage":
            writer.write(rnd.randbytes(rnd.randint(1, 300)))
        elif kind == "slowloris":
            await self._dribble(writer, good)
        # "silent": nothing at all


async def _serve(args: argparse.Namespace) -> None:
    server = HostileS7Server(args.port, seed=args.seed, refuse_types=frozenset(args.refuse))
    async with server:
        print(f"hostile S7 PLC on 127.0.0.1:{server.port}", flush=True)
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.Event().wait()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=1103)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--refuse", type=int, action="append", default=[], help="1 PG, 2 OP, 3 S7 basic"
    )
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
