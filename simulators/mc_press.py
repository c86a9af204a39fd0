"""A press line's Mitsubishi PLC speaking MC protocol 3E (binary or ASCII, TCP or UDP).

What the press's program keeps in the PLC (see ``PRESS`` for the map, ``simulators/README.md``):
the stroke counter (32 bits across D100-D101), the measured tonnage, the stroke speed (a float
across D110-D111), the die height (a float64), the loaded program's name (a string from D120,
first character in the low byte), the main motor and ram bits (M10...), inputs and outputs
(X, Y, in hexadecimal), the tonnage set-point the line controller may write (D200), the CPU's
clock in SD210-SD216 as a Q CPU keeps it. While the motor runs, strokes count up at the speed
and the tonnage follows the set-point.

The server answers batch reads (0401) in word and bit units, random reads (0403) and batch
writes (1401) with the end codes a CPU gives (C056 past a device's range, C051 too many points,
C059 an unknown command, 0055 a write while "enable write during RUN" is off), and closes the
connection on a frame that is not a 3E request of its encoding, as an Ethernet module set to the
other code does (it never answers).

Tests drive it through :class:`McPressSimulator`: read and set devices and named points, refuse
writes, stop answering, count requests per command, stop and restart on the same port.

Command line::

    python -m simulators.mc_press --port 5007 [--encoding ascii] [--transport udp]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import random
import sys
import time
from array import array
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, cast

from drivers.mc.codec import encode, make_decoder, word_count
from drivers.mc.devices import DEVICES, Address, parse_address
from drivers.mc.frame import (
    BATCH_READ,
    BATCH_WRITE,
    MAX_BITS,
    MAX_RANDOM_POINTS,
    MAX_WORDS,
    RANDOM_READ,
    SUB_BITS,
    SUB_WORDS,
    Encoding,
    FrameError,
    ParsedRequest,
    Writer,
    answer,
    body_length,
    error_answer,
    header_size,
    parse_request,
)
from simulators.service import Service, cancel, serve_until_signal

#: Device sizes of the simulated CPU (a Q06UDV's defaults, ZR a 64K-word file register).
SIZES: Final = {
    "SM": 2048, "SD": 2048, "X": 0x2000, "Y": 0x2000, "M": 8192, "L": 8192, "B": 0x2000,
    "D": 12288, "W": 0x2000, "R": 32768, "ZR": 65536,
}  # fmt: skip

#: End codes the simulated CPU answers.
TOO_MANY_POINTS: Final = 0xC051
OUT_OF_RANGE: Final = 0xC056
LENGTH_MISMATCH: Final = 0xC058
UNKNOWN_COMMAND: Final = 0xC059
WRONG_CONTENTS: Final = 0xC05C
WRITE_DURING_RUN: Final = 0x0055


@dataclass(frozen=True, slots=True)
class PressPoint:
    """A named value of the press program: where it lives and its type (the tag's keys)."""

    name: str
    address: str
    type: str
    length: int | None = None
    unit: str | None = None
    writable: bool = False

    def tag(self) -> dict[str, Any]:
        """This point as an agent tag entry."""
        tag: dict[str, Any] = {"name": self.name, "address": self.address, "type": self.type}
        if self.length is not None:
            tag["length"] = self.length
        if self.unit is not None:
            tag["unit"] = self.unit
        if self.writable:
            tag.update(writable=True, min=0, max=500)
        return tag


PRESS: Final = (
    PressPoint("strokes", "D100", "uint32"),
    PressPoint("tonnage", "D102", "int16", unit="t"),
    PressPoint("speed", "D110", "float32", unit="spm"),
    PressPoint("die_height", "D112", "float64", unit="mm"),
    PressPoint("program", "D120", "string", length=8),
    PressPoint("tonnage_setpoint", "D200", "int16", unit="t", writable=True),
    PressPoint("status_word", "W1A", "uint16"),
    PressPoint("good_parts", "ZR2000", "int32"),
    PressPoint("clock_year", "SD210", "int16"),
    PressPoint("motor_on", "M10", "bool"),
    PressPoint("ram_down", "M11", "bool"),
    PressPoint("fault", "M12", "bool"),
    PressPoint("light_curtain", "X1F", "bool"),
    PressPoint("motor_contactor", "Y20", "bool"),
)
POINTS: Final = {p.name: p for p in PRESS}


class McPressSimulator(Service):
    """The press's PLC on one port; ``update_interval=None`` freezes the physics."""

    def __init__(
        self,
        port: int = 0,
        *,
        host: str = "127.0.0.1",
        encoding: Encoding = "binary",
        transport: str = "tcp",
        update_interval: float | None = 0.1,
        seed: int = 0,
    ) -> None:
        self.host = host
        self.port = port
        self.encoding: Encoding = encoding
        self.transport = transport
        self.update_interval = update_interval
        self.words: dict[str, array[int]] = {
            d: array("H", bytes(2 * n)) for d, n in SIZES.items() if not DEVICES[d].bits
        }
        self.bit_memory: dict[str, bytearray] = {
            d: bytearray(n) for d, n in SIZES.items() if DEVICES[d].bits
        }
        #: False: writes are refused with end code 0055 ("enable write during RUN" off).
        self.write_during_run = True
        #: True: requests are read and swallowed (a CPU that stopped answering).
        self.silent = False
        self.requests: Counter[int] = Counter()  # per command
        self.connections = 0
        self._random = random.Random(seed)
        self._server: asyncio.Server | None = None
        self._udp: asyncio.DatagramTransport | None = None
        self._clients: set[asyncio.Task[None]] = set()
        self._ticker: asyncio.Task[None] | None = None
        self._strokes = 0.0
        self._reset()

    # -- memory --------------------------------------------------------------------------------

    def _reset(self) -> None:
        self.set("strokes", 120_000)
        self._strokes = 120_000.0
        self.set("tonnage", 0)
        self.set("speed", 0.0)
        self.set("die_height", 412.5)
        self.set("program", "PRG-A12")
        self.set("tonnage_setpoint", 250)
        self.set("status_word", 0x0001)
        self.set("good_parts", 118_500)
        self.set("motor_on", True)
        self.set("light_curtain", True)
        self.set_bits("SM", 400, [True, False])  # SM400 always ON, SM401 always OFF, as a CPU
        self._clock()

    def _clock(self) -> None:
        t = time.localtime()
        base = parse_address("SD210").number
        self.words["SD"][base : base + 7] = array(
            "H", [t.tm_year, t.tm_mon, t.tm_mday, t.tm_hour, t.tm_min, t.tm_sec, t.tm_wday]
        )

    def set_words(self, device: str, number: int, words: Sequence[int]) -> None:
        self.words[device][number : number + len(words)] = array("H", words)

    def get_words(self, device: str, number: int, count: int) -> list[int]:
        return list(self.words[device][number : number + count])

    def set_bits(self, device: str, number: int, bits: Sequence[bool]) -> None:
        self.bit_memory[device][number : number + len(bits)] = bytes(bool(b) for b in bits)

    def get_bits(self, device: str, number: int, count: int) -> list[bool]:
        return [bool(b) for b in self.bit_memory[device][number : number + count]]

    def set_at(self, address: str, type_: str, value: Any, length: int | None = None) -> None:
        """Write ``value`` as the PLC program would store it at ``address``."""
        where = parse_address(address)
        if where.kind.bits:
            self.set_bits(where.device, where.number, [bool(value)])
        else:
            self.set_words(where.device, where.number, encode(type_, value, length))

    def get_at(self, address: str, type_: str, length: int | None = None) -> Any:
        where = parse_address(address)
        if where.kind.bits:
            return self.get_bits(where.device, where.number, 1)[0]
        words = self.get_words(where.device, where.number, word_count(type_, length))
        return make_decoder(type_)(words)

    def set(self, name: str, value: Any) -> None:
        """Set a named point of the press (``PRESS``)."""
        p = POINTS[name]
        self.set_at(p.address, p.type, value, p.length)

    def get(self, name: str) -> Any:
        p = POINTS[name]
        return self.get_at(p.address, p.type, p.length)

    # -- physics -------------------------------------------------------------------------------

    async def _tick(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            self.step(interval)

    def step(self, dt: float) -> None:
        """Advance the press by ``dt`` seconds."""
        running = self.get("motor_on") and not self.get("fault")
        self.set("motor_contactor", running)
        if not running:
            self.set("speed", 0.0)
            self.set("tonnage", 0)
            self.set("ram_down", False)
            self._clock()
            return
        speed = 42.0 + self._random.uniform(-0.5, 0.5)
        self.set("speed", speed)
        self._strokes += speed / 60.0 * dt
        strokes = int(self._strokes) & 0xFFFFFFFF
        self.set("strokes", strokes)
        self.set("ram_down", math.sin(self._strokes * 2 * math.pi) < 0)
        sp = self.get("tonnage_setpoint")
        self.set("tonnage", max(0, min(32767, int(sp + self._random.gauss(0, 3)))))
        self._clock()

    # -- serving -------------------------------------------------------------------------------

    async def start(self) -> None:
        if self.transport == "udp":
            loop = asyncio.get_running_loop()
            self._udp, _ = await loop.create_datagram_endpoint(
                lambda: _UdpServer(self), local_addr=(self.host, self.port)
            )
            self.port = int(self._udp.get_extra_info("sockname")[1])
        else:
            self._server = await asyncio.start_server(self._serve, self.host, self.port)
            self.port = int(self._server.sockets[0].getsockname()[1])
        if self.update_interval and self._ticker is None:
            self._ticker = asyncio.create_task(self._tick(self.update_interval))

    async def stop(self) -> None:
        await cancel(self._ticker)
        self._ticker = None
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        if self._server is not None:
            self._server.close()
            self._server = None
        for task in list(self._clients):
            task.cancel()
        await asyncio.gather(*self._clients, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._clients.add(task)
        self.connections += 1
        size = header_size(self.encoding)
        try:
            while True:
                header = await reader.readexactly(size)
                length = body_length(header, self.encoding, answer=False)
                if length > 8192:
                    raise FrameError(f"length {length}")
                frame = header + await reader.readexactly(length)
                out = self.handle(frame)
                if out is not None:
                    writer.write(out)
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, FrameError, OSError):
            pass  # a frame of the other code, or the client went: the module drops the line
        except asyncio.CancelledError:
            pass
        finally:
            self._clients.discard(task)
            writer.close()

    def handle(self, frame: bytes) -> bytes | None:
        """The answer to one request frame; None to answer nothing. ``FrameError`` when the
        frame is not a 3E request of this encoding."""
        req = parse_request(frame, self.encoding)
        self.requests[req.command] += 1
        if self.silent:
            return None
        try:
            data = self._execute(req)
        except _EndCode as exc:
            return error_answer(self.encoding, exc.code, req.command, req.sub)
        except FrameError:
            return error_answer(self.encoding, LENGTH_MISMATCH, req.command, req.sub)
        return answer(self.encoding, 0, data)

    def _execute(self, req: ParsedRequest) -> bytes:
        body, out = req.body, Writer(self.encoding)
        if req.command == BATCH_READ and req.sub in (SUB_WORDS, SUB_BITS):
            where, count = body.device(), body.u16()
            body.end()
            if req.sub == SUB_BITS:
                if not where.kind.bits:
                    raise _EndCode(WRONG_CONTENTS)
                self._check(where, count, MAX_BITS)
                return out.bits(self.get_bits(where.device, where.number, count)).bytes()
            self._check(where, count * (16 if where.kind.bits else 1), MAX_WORDS * 16)
            if count > MAX_WORDS:
                raise _EndCode(TOO_MANY_POINTS)
            return out.words(self._words_of(where, count)).bytes()
        if req.command == RANDOM_READ and req.sub == SUB_WORDS:
            n_words, n_dwords = body.u8(), body.u8()
            if not 1 <= n_words + n_dwords <= MAX_RANDOM_POINTS:
                raise _EndCode(TOO_MANY_POINTS)
            singles = [body.device() for _ in range(n_words)]
            doubles = [body.device() for _ in range(n_dwords)]
            body.end()
            for a in singles:
                self._check(a, 16 if a.kind.bits else 1, 16)
            for a in doubles:
                self._check(a, 32 if a.kind.bits else 2, 32)
            out.words([self._words_of(a, 1)[0] for a in singles])
            pairs = [self._words_of(a, 2) for a in doubles]
            return out.dwords([lo | (hi << 16) for lo, hi in pairs]).bytes()
        if req.command == BATCH_WRITE and req.sub in (SUB_WORDS, SUB_BITS):
            where, count = body.device(), body.u16()
            if req.sub == SUB_BITS:
                if not where.kind.bits:
                    raise _EndCode(WRONG_CONTENTS)
                self._check(where, count, MAX_BITS)
                bits = body.bits(count)
                body.end()
                self._writable()
                self.set_bits(where.device, where.number, bits)
                return b""
            if where.kind.bits:
                raise _EndCode(WRONG_CONTENTS)
            self._check(where, count, MAX_WORDS)
            words = body.words(count)
            body.end()
            self._writable()
            self.set_words(where.device, where.number, words)
            return b""
        raise _EndCode(UNKNOWN_COMMAND)

    def _writable(self) -> None:
        if not self.write_during_run:
            raise _EndCode(WRITE_DURING_RUN)

    @staticmethod
    def _check(where: Address, count: int, cap: int) -> None:
        if not 1 <= count <= cap:
            raise _EndCode(TOO_MANY_POINTS)
        if where.number + count > SIZES[where.device]:
            raise _EndCode(OUT_OF_RANGE)

    def _words_of(self, where: Address, count: int) -> list[int]:
        """Words of a word device, or of a bit device read in word units (16 bits a word,
        the lowest number in bit 0)."""
        if not where.kind.bits:
            return self.get_words(where.device, where.number, count)
        bits = self.get_bits(where.device, where.number, 16 * count)
        return [sum(1 << i for i in range(16) if bits[16 * w + i]) for w in range(count)]


class _EndCode(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(f"end code {code:#06x}")
        self.code = code


class _UdpServer(asyncio.DatagramProtocol):
    def __init__(self, sim: McPressSimulator) -> None:
        self.sim = sim
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        with contextlib.suppress(FrameError):
            out = self.sim.handle(data)
            if out is not None and self.transport is not None:
                self.transport.sendto(out, addr)


# -- command line ----------------------------------------------------------------------------------


async def _serve(args: argparse.Namespace) -> None:
    sim = McPressSimulator(
        args.port,
        host=args.host,
        encoding=args.encoding,
        transport=args.transport,
        update_interval=args.update_interval or None,
        seed=args.seed,
    )
    await serve_until_signal(
        sim,
        lambda: print(
            f"MC press simulator on {args.host}:{sim.port} ({args.transport}, 3E {args.encoding})",
            flush=True,
        ),
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m simulators.mc_press",
        description="A press line's Mitsubishi PLC speaking MC protocol 3E.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5007)
    parser.add_argument("--encoding", choices=("binary", "ascii"), default="binary")
    parser.add_argument("--transport", choices=("tcp", "udp"), default="tcp")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--update-interval", type=float, default=0.1, help="seconds between physics steps"
    )
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
