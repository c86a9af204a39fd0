"""Devices that break the protocol on purpose, to prove the agent survives whatever the wire brings.

pymodbus's server can only misbehave in ways it was written to, so :class:`HostileModbusServer`
is a raw asyncio server that parses Modbus TCP requests itself and answers each one, per a seeded
random choice, with one of:

``ok``            a correct answer (register value ``address + i``, so values can be checked);
``wrong_tid``     an answer with another transaction id, then the correct one;
``wrong_unit``    an answer from another unit id, then the correct one;
``wrong_length``  an MBAP length field that does not match the bytes that follow;
``oversized``     a frame far larger than any Modbus frame (up to 64 KB);
``short``         an answer with fewer registers than asked for;
``garbage``       random bytes;
``exception``     a Modbus exception answer (code 1..11, some undefined);
``slowloris``     a correct answer dribbled one byte at a time, slower than any timeout;
``silent``        no answer.

Every hostile frame sent is counted in ``frames`` (per kind in ``sent``), so a test can run until
it has thrown, say, 10,000 of them at the agent.

:class:`HostileSerialEmitter` does the same on a pty for the serial driver: frames with a wrong
checksum, without an end, far too long, split at random, binary noise, NUL and 0xFF bursts,
interleaved with good frames.

Command line::

    python -m simulators.hostile modbus --port 5030 [--seed 1]
    python -m simulators.hostile serial [--link PATH] [--rate 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import signal
import struct
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from simulators.hostile_server import HostileTcpServer, serve_until_signal
from simulators.serial_instruments import ETX, STX, PtyInstrument, xor_hex

MODBUS_KINDS: Final = (
    "ok",
    "wrong_tid",
    "wrong_unit",
    "wrong_length",
    "oversized",
    "short",
    "garbage",
    "exception",
    "slowloris",
    "silent",
)
_READ_FUNCTIONS: Final = frozenset({1, 2, 3, 4})


def _mbap(tid: int, unit: int, pdu: bytes, length: int | None = None) -> bytes:
    size = len(pdu) + 1 if length is None else length
    return struct.pack(">HHHB", tid & 0xFFFF, 0, size & 0xFFFF, unit & 0xFF) + pdu


def read_answer(function: int, address: int, count: int, registers: int | None = None) -> bytes:
    """The PDU of a correct answer: registers hold ``address + i``, bits alternate."""
    n = count if registers is None else registers
    if function in (1, 2):
        nbytes = (n + 7) // 8
        return struct.pack(">BB", function, nbytes) + bytes([0x55] * nbytes)
    values = [(address + i) & 0xFFFF for i in range(n)]
    return struct.pack(f">BB{n}H", function, 2 * n, *values)


class HostileModbusServer(HostileTcpServer):
    """A Modbus TCP "device" that answers with a random mix of ``weights``' kinds."""

    KINDS = MODBUS_KINDS

    async def session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            header = await reader.readexactly(7)
            tid, _proto, length, unit = struct.unpack(">HHHB", header)
            pdu = await reader.readexactly(max(0, length - 1)) if length > 1 else b""
            self.requests += 1
            if len(pdu) < 5 or pdu[0] not in _READ_FUNCTIONS:
                writer.write(_mbap(tid, unit, bytes([(pdu[:1] or b"\x00")[0] | 0x80, 1])))
                continue
            function, address, count = struct.unpack(">BHH", pdu[:5])
            await self._answer(writer, tid, unit, function, address, count)
            await writer.drain()

    async def _answer(
        self,
        writer: asyncio.StreamWriter,
        tid: int,
        unit: int,
        function: int,
        address: int,
        count: int,
    ) -> None:
        kind = self._pick()
        rnd = self._random
        good = _mbap(tid, unit, read_answer(function, address, count))
        if kind == "ok":
            writer.write(good)
        elif kind == "wrong_tid":
            writer.write(_mbap(tid + rnd.randint(1, 0xFFFE), unit, read_answer(function, 0, count)))
            writer.write(good)
        elif kind == "wrong_unit":
            writer.write(_mbap(tid, unit + rnd.randint(1, 254), read_answer(function, 0, count)))
            writer.write(good)
        elif kind == "wrong_length":
            pdu = read_answer(function, address, count)
            writer.write(_mbap(tid, unit, pdu, length=len(pdu) + rnd.choice([-3, -1, 2, 40, 300])))
        elif kind == "oversized":
            pdu = bytes([function, 255]) + rnd.randbytes(rnd.choice([300, 4096, 65000]))
            writer.write(_mbap(tid, unit, pdu))
        elif kind == "short":
            writer.write(_mbap(tid, unit, read_answer(function, address, count, max(0, count - 1))))
        elif kind == "garbage":
            writer.write(rnd.randbytes(rnd.randint(1, 300)))
        elif kind == "exception":
            writer.write(_mbap(tid, unit, bytes([function | 0x80, rnd.randint(0, 20)])))
        elif kind == "slowloris":
            await self._dribble(writer, good)
        # "silent": nothing at all


SERIAL_KINDS: Final = (
    "ok",
    "bad_checksum",
    "no_end",
    "too_long",
    "split",
    "noise",
    "nul_burst",
    "no_match",
)


class HostileSerialEmitter(PtyInstrument):
    """An ``STX C=000123 <xor hex> ETX`` counter line (as ``NoisySimulator``) gone bad.

    Sends ``rate`` frames a second, each a random kind of :data:`SERIAL_KINDS`; counts them in
    ``sent``. Good frames carry an increasing count, so a test can check what got through.
    """

    def __init__(
        self, *, rate: float = 2000.0, seed: int = 0, paused: bool = False, link: Path | None = None
    ) -> None:
        super().__init__(link=link)
        self.rate = rate
        self._running = asyncio.Event()
        if not paused:
            self._running.set()
        self.sent: Counter[str] = Counter()
        self.count = 0
        self.good: set[int] = set()  # counts carried by well-formed frames
        self._random = random.Random(seed)

    @property
    def frames(self) -> int:
        return sum(self.sent.values())

    def hostile_frame(self) -> bytes:
        rnd = self._random
        kind = rnd.choice(SERIAL_KINDS)
        self.sent[kind] += 1
        self.count += 1
        body = f"C={self.count:06d}".encode()
        good = STX + body + xor_hex(body) + ETX
        if kind == "bad_checksum":
            return STX + body + b"ZZ" + ETX
        if kind == "no_end":
            return STX + body + xor_hex(body)
        if kind == "too_long":
            return STX + b"C=" + b"9" * rnd.choice([100, 1000, 5000]) + ETX
        if kind == "noise":
            return rnd.randbytes(rnd.randint(1, 64))
        if kind == "nul_burst":
            return rnd.choice([b"\x00", b"\xff"]) * rnd.randint(1, 512)
        if kind == "no_match":
            text = b"X=" + rnd.randbytes(4).hex().encode()
            return STX + text + xor_hex(text) + ETX
        self.good.add(self.count)
        return good  # "ok" and "split" (split is done by the writer)

    def resume(self) -> None:
        """Start emitting (after ``paused=True``: once the reader is ready)."""
        self._running.set()

    async def _run(self) -> None:
        period = 1.0 / self.rate
        burst = max(1, int(self.rate / 100))  # written in bursts every 10 ms
        while True:
            await self._running.wait()
            chunk = bytearray()
            for _ in range(burst):
                chunk += self.hostile_frame()
            if self._random.random() < 0.3 and len(chunk) > 2:
                cut = self._random.randint(1, len(chunk) - 1)
                self.write(bytes(chunk[:cut]))
                await asyncio.sleep(0.001)
                self.write(bytes(chunk[cut:]))
            else:
                self.write(bytes(chunk))
            self.frames_sent = self.frames
            await asyncio.sleep(period * burst)


async def _serve(args: argparse.Namespace) -> None:
    if args.kind == "modbus":
        server = HostileModbusServer(args.port, seed=args.seed)
        await serve_until_signal(server, "hostile Modbus TCP on 127.0.0.1:{port}")
        return
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    link = Path(args.link) if args.link else None
    async with HostileSerialEmitter(rate=args.rate, seed=args.seed, link=link) as emitter:
        print(f"hostile serial line on {args.link or emitter.path}", flush=True)
        await stop.wait()
        print(dict(emitter.sent))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("kind", choices=["modbus", "serial"])
    parser.add_argument("--port", type=int, default=5030)
    parser.add_argument("--link", default=None)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
