"""A Mitsubishi PLC that breaks the MC protocol on purpose, to prove the agent survives it.

:class:`HostileMcServer` parses 3E requests (binary or ASCII) with the driver's own frame module
and answers each one, per a seeded random choice, with one of:

``ok``             a correct answer (word ``n`` holds ``n & 0xFFFF``, bits alternate), so values
                   published as good can be checked;
``end_code``       an error end code (defined ones and undefined ones);
``wrong_length``   a length field that does not match the bytes that follow;
``oversized``      a length field far beyond any answer, then bytes;
``short``          a well-formed answer with fewer words than asked for;
``truncated``      part of a correct answer, then the connection closed;
``garbage``        random bytes;
``wrong_header``   a 4E answer, or the request echoed back (a subheader that is not ``D000``);
``doubled``        a correct answer sent twice at once (the copy would pass for the next
                   request's answer; one sent later can pass, as 3E has no serial number);
``slowloris``      a correct answer dribbled one byte at a time, slower than any timeout;
``silent``         no answer.

Every hostile answer is counted in ``sent`` per kind; ``frames`` is their sum, so a test can run
until it has thrown a given number at the agent. The module (like :mod:`simulators.hostile`
for Modbus) is separate from the press simulator, which must stay a well-behaved PLC.

Command line::

    python -m simulators.hostile_mc --port 5031 [--encoding ascii] [--seed 1]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import Sequence
from typing import Final

from drivers.mc.frame import (
    BATCH_READ,
    RANDOM_READ,
    SUB_BITS,
    Encoding,
    FrameError,
    Writer,
    answer,
    body_length,
    error_answer,
    header_size,
    parse_request,
)
from simulators.hostile_server import HostileTcpServer, serve_until_signal

MC_KINDS: Final = (
    "ok",
    "end_code",
    "wrong_length",
    "oversized",
    "short",
    "truncated",
    "garbage",
    "wrong_header",
    "doubled",
    "slowloris",
    "silent",
)
_END_CODES: Final = (0xC051, 0xC056, 0xC059, 0xC05C, 0x4031, 0x0055, 0xFFFF, 0x1234)


class HostileMcServer(HostileTcpServer):
    """An MC 3E "PLC" that answers with a random mix of ``weights``' kinds."""

    KINDS = MC_KINDS
    SESSION_ENDS = (*HostileTcpServer.SESSION_ENDS, FrameError)

    def __init__(
        self,
        port: int = 0,
        *,
        encoding: Encoding = "binary",
        seed: int = 0,
        weights: dict[str, float] | None = None,
        slowloris_delay: float = 0.2,
    ) -> None:
        super().__init__(port, seed=seed, weights=weights, slowloris_delay=slowloris_delay)
        self.encoding: Encoding = encoding

    async def session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        size = header_size(self.encoding)
        while True:
            header = await reader.readexactly(size)
            frame = header + await reader.readexactly(
                min(8192, body_length(header, self.encoding, answer=False))
            )
            self.requests += 1
            if not await self._answer(writer, frame):
                return
            await writer.drain()

    def correct(self, frame: bytes) -> bytes:
        """The well-formed answer to a read (word ``n`` holds ``n & 0xFFFF``, bits alternate)."""
        enc = self.encoding
        req = parse_request(frame, enc)
        out = Writer(enc)
        if req.command == BATCH_READ:
            where, count = req.body.device(), req.body.u16()
            if req.sub == SUB_BITS:
                out.bits([(where.number + i) % 2 == 0 for i in range(count)])
            else:
                out.words([(where.number + i) & 0xFFFF for i in range(count)])
        elif req.command == RANDOM_READ:
            n_words, n_dwords = req.body.u8(), req.body.u8()
            singles = [req.body.device() for _ in range(n_words)]
            doubles = [req.body.device() for _ in range(n_dwords)]
            out.words([a.number & 0xFFFF for a in singles])
            out.dwords([(a.number & 0xFFFF) | ((a.number + 1) & 0xFFFF) << 16 for a in doubles])
        return answer(enc, 0, out.bytes())

    async def _answer(self, writer: asyncio.StreamWriter, frame: bytes) -> bool:
        """Send one answer of a random kind; False when the connection is to be closed."""
        kind = self._pick()
        rnd, enc = self._random, self.encoding
        good = self.correct(frame)
        size = header_size(enc)
        if kind == "ok":
            writer.write(good)
        elif kind == "end_code":
            writer.write(error_answer(enc, rnd.choice(_END_CODES), BATCH_READ, 0))
        elif kind == "wrong_length":
            length = len(good) - size + rnd.choice([-3, -1, 2, 40])
            writer.write(good[: size - (2 if enc == "binary" else 4)])
            field = length.to_bytes(2, "little") if enc == "binary" else b"%04X" % length
            writer.write(field + good[size:])
        elif kind == "oversized":
            field = (0xFFF0).to_bytes(2, "little") if enc == "binary" else b"FFF0"
            writer.write(good[: size - len(field)] + field + rnd.randbytes(300))
        elif kind == "short":
            cut = 2 if enc == "binary" else 4
            rest = good[size:-cut] if len(good) - size > 2 * cut else good[size:]
            length = len(rest)
            field = length.to_bytes(2, "little") if enc == "binary" else b"%04X" % length
            writer.write(good[: size - len(field)] + field + rest)
        elif kind == "truncated":
            writer.write(good[: rnd.randint(1, len(good) - 1)])
            return False
        elif kind == "garbage":
            writer.write(rnd.randbytes(rnd.randint(1, 300)))
        elif kind == "wrong_header":
            writer.write(
                rnd.choice([frame, (b"\xd4\x00" if enc == "binary" else b"D400") + good[4:]])
            )
        elif kind == "doubled":  # in one write: a copy sent later is undetectable in 3E
            writer.write(good + good)
        elif kind == "slowloris":
            await self._dribble(writer, good)
        # "silent": nothing at all
        return True


async def _serve(args: argparse.Namespace) -> None:
    server = HostileMcServer(args.port, encoding=args.encoding, seed=args.seed)
    await serve_until_signal(server, f"hostile MC 3E ({args.encoding}) on 127.0.0.1:{{port}}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=5031)
    parser.add_argument("--encoding", choices=("binary", "ascii"), default="binary")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
