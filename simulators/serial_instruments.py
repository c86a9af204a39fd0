"""Serial instruments on pseudo-terminals: a weighing scale, an oven controller, a noisy line.

Each simulator holds the master side of a pty; the driver opens the slave path (``path``), just as
it would open ``/dev/ttyUSB0``. Pulling the USB adapter is :meth:`PtyInstrument.unplug` (the slave
then reads EIO) and plugging it back is :meth:`PtyInstrument.replug`; since a new pty gets a new
path, give the simulator a ``link`` and the driver that symlink, as udev rules give a real adapter
a stable name.

- :class:`ScaleSimulator` streams ``ST,GS,+0012.34 kg`` lines (10 Hz), alternating an unstable
  phase (``US``, the weight settling) and a stable one (``ST``, constant weight).
- :class:`OvenSimulator` answers ``PV?``/``SV?`` with ``PV=182.5``/``SV=180.0`` and takes
  ``SV=200`` as a new set point; the process value follows the set point with a first-order lag.
- :class:`OvenBus` is an RS-485 line with several addressed ovens on it (``address="01"``: they
  answer ``01PV?`` with ``01PV=182.5`` and ignore requests for other addresses).
- :class:`NoisySimulator` streams ``STX C=000123 <xor hex> ETX`` counter frames and, at configured
  rates, garbage between frames, frames split across writes and bad checksums.

With ``rate=None`` (or ``tau=None``) nothing changes by itself, so tests can send exact frames.

Command line (prints the slave path, runs until Ctrl-C)::

    python -m simulators.serial_instruments scale|oven|bus|noisy [--link PATH] [--seed N]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import math
import os
import random
import sys
import time
import tty
from pathlib import Path

from simulators.service import Service, cancel, serve_until_signal

STX, ETX = b"\x02", b"\x03"


def xor_hex(body: bytes) -> bytes:
    """The noisy line's checksum: XOR of the body, two upper-case hex digits."""
    return f"{functools.reduce(lambda a, b: a ^ b, body, 0):02X}".encode()


class PtyInstrument(Service):
    """A pty whose master side plays the instrument; subclasses say what it sends and answers."""

    def __init__(self, *, link: Path | None = None) -> None:
        self.link = link
        self._master = -1
        self._slave = -1
        self.path = ""
        self.received = bytearray()  # everything the driver wrote, for tests
        self.frames_sent = 0
        self._task: asyncio.Task[None] | None = None
        self._sent = asyncio.Event()

    # -- the pty ----------------------------------------------------------------------------------

    def _open_pty(self) -> None:
        self._master, self._slave = os.openpty()
        # Raw until the driver configures it: no echo, no line editing of what the device sends.
        tty.setraw(self._slave)
        os.set_blocking(self._master, False)
        self.path = os.ttyname(self._slave)
        if self.link is not None:
            tmp = self.link.with_name(self.link.name + ".new")
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            tmp.symlink_to(self.path)
            tmp.replace(self.link)
        asyncio.get_running_loop().add_reader(self._master, self._readable)

    def _close_pty(self) -> None:
        if self._master < 0:
            return
        asyncio.get_running_loop().remove_reader(self._master)
        for fd in (self._master, self._slave):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._master = self._slave = -1

    @property
    def plugged(self) -> bool:
        return self._master >= 0

    def unplug(self) -> None:
        """The adapter is pulled: the driver's next read fails with EIO."""
        self._close_pty()

    def replug(self) -> None:
        """A new adapter (a new pty; ``link`` points at it)."""
        self._close_pty()
        self._open_pty()

    def _readable(self) -> None:
        try:
            data = os.read(self._master, 4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            return  # the driver's side closed; it may open again
        self.received += data
        self.on_request_bytes(data)

    def on_request_bytes(self, data: bytes) -> None:
        """Bytes the driver sent; streaming instruments ignore them."""

    def write(self, data: bytes) -> None:
        """Put bytes on the line; with nobody listening and the buffer full they are lost, as on
        a real line."""
        if self._master < 0:
            return
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._master, data)

    def send_frame(self, frame: bytes) -> None:
        self.write(frame)
        self.frames_sent += 1
        self._sent.set()

    async def wait_sent(self, count: int) -> None:
        """Until ``frames_sent`` reaches ``count``."""
        while self.frames_sent < count:
            self._sent.clear()
            await self._sent.wait()

    # -- life cycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        self._open_pty()
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel(task)
        self._close_pty()
        if self.link is not None:
            with contextlib.suppress(FileNotFoundError):
                self.link.unlink()

    async def _run(self) -> None:
        """What the instrument does by itself; nothing for instruments that only answer."""


class ScaleSimulator(PtyInstrument):
    """A scale streaming ``ST,GS,+0012.34 kg\\r\\n``: settling (US) then stable (ST) phases."""

    def __init__(
        self,
        *,
        rate: float | None = 10.0,
        unstable_s: float = 1.0,
        stable_s: float = 2.0,
        seed: int | None = None,
        link: Path | None = None,
    ) -> None:
        super().__init__(link=link)
        self.rate = rate
        self.unstable_s = unstable_s
        self.stable_s = stable_s
        self.weight = 0.0
        self.stable = True
        self._random = random.Random(seed)

    @staticmethod
    def line(weight: float, stable: bool) -> bytes:
        return f"{'ST' if stable else 'US'},GS,{weight:+08.2f} kg\r\n".encode()

    def send(self, weight: float | None = None, stable: bool | None = None) -> None:
        """Send one line (with the current weight and state, or these)."""
        if weight is not None:
            self.weight = weight
        if stable is not None:
            self.stable = stable
        self.send_frame(self.line(self.weight, self.stable))

    async def _run(self) -> None:
        if self.rate is None:
            return
        period = 1.0 / self.rate
        while True:
            target = round(self._random.uniform(0.5, 50.0), 2)
            start = self.weight
            steps = max(1, round(self.unstable_s * self.rate))
            for i in range(1, steps + 1):
                wobble = self._random.uniform(-0.3, 0.3) * (1 - i / steps)
                self.send(round(start + (target - start) * i / steps + wobble, 2), stable=False)
                await asyncio.sleep(period)
            for _ in range(max(1, round(self.stable_s * self.rate))):
                self.send(target, stable=True)
                await asyncio.sleep(period)


class OvenSimulator(PtyInstrument):
    """An oven controller: ``PV?\\r`` → ``PV=182.5\\r``, ``SV?\\r`` → ``SV=180.0\\r``,
    ``SV=200\\r`` sets the set point (answer ``OK\\r``, ``ERR\\r`` for a bad number); other
    requests go unanswered. The process value approaches the set point
    with time constant ``tau`` seconds (None: it stays where tests put it).

    With an ``address`` (``"01"``) it is one of several on a multidrop line: requests start with
    the address, answers too, and requests for other addresses are not its business."""

    def __init__(
        self,
        *,
        pv: float = 20.0,
        sv: float = 180.0,
        tau: float | None = 30.0,
        silent: bool = False,
        address: str = "",
        link: Path | None = None,
    ) -> None:
        super().__init__(link=link)
        self.address = address
        self._pv = pv
        self.sv = sv
        self.tau = tau
        self.silent = silent  # switched off: requests go unanswered
        self._since = time.monotonic()
        self._pending = bytearray()
        self.requests = 0

    @property
    def pv(self) -> float:
        now = time.monotonic()
        if self.tau is not None:
            self._pv = self.sv + (self._pv - self.sv) * math.exp(-(now - self._since) / self.tau)
        self._since = now
        return self._pv

    @pv.setter
    def pv(self, value: float) -> None:
        self._pv = value
        self._since = time.monotonic()

    def on_request_bytes(self, data: bytes) -> None:
        self._pending += data
        while b"\r" in self._pending:
            request, _, rest = bytes(self._pending).partition(b"\r")
            self._pending = bytearray(rest)
            answer = self.reply(request.decode("latin-1").strip())
            if answer is not None:
                self.send_frame(answer.encode() + b"\r")

    def reply(self, request: str) -> str | None:
        """The answer to one request line, if this oven gives one (addressed, switched on)."""
        if not request.startswith(self.address):
            return None
        self.requests += 1
        answer = self.answer(request[len(self.address) :])
        if answer is None or self.silent:
            return None
        return self.address + answer

    def answer(self, request: str) -> str | None:
        if request == "PV?":
            return f"PV={self.pv:.1f}"
        if request == "SV?":
            return f"SV={self.sv:.1f}"
        if request.startswith("SV="):
            try:
                sv = float(request[3:])
            except ValueError:
                return "ERR"
            _ = self.pv  # settle the lag up to now before the set point changes
            self.sv = sv
            return "OK"
        return None  # like many controllers, it ignores what it does not know


class OvenBus(PtyInstrument):
    """Addressed ovens sharing one line: every request reaches all of them, the one addressed
    answers. ``log`` records (monotonic time, request) for every request line, so tests can read
    each device's cadence off the line itself."""

    def __init__(self, ovens: list[OvenSimulator], *, link: Path | None = None) -> None:
        super().__init__(link=link)
        self.ovens = ovens
        self.log: list[tuple[float, str]] = []
        self._pending = bytearray()

    def on_request_bytes(self, data: bytes) -> None:
        self._pending += data
        while b"\r" in self._pending:
            line, _, rest = bytes(self._pending).partition(b"\r")
            self._pending = bytearray(rest)
            request = line.decode("latin-1").strip()
            self.log.append((time.monotonic(), request))
            for oven in self.ovens:
                answer = oven.reply(request)
                if answer is not None:
                    self.send_frame(answer.encode() + b"\r")

    def requests_to(self, address: str) -> list[float]:
        """When each request for ``address`` reached the line."""
        return [t for t, request in self.log if request.startswith(address)]


class NoisySimulator(PtyInstrument):
    """A counter on a bad line: ``STX C=000123 <XOR hex> ETX`` frames plus trouble at rates.

    ``garbage_rate``, ``split_rate`` and ``bad_checksum_rate`` are probabilities per frame of
    garbage bytes before it, the frame arriving in two writes, and a wrong checksum.
    """

    def __init__(
        self,
        *,
        rate: float | None = 10.0,
        garbage_rate: float = 0.1,
        split_rate: float = 0.2,
        bad_checksum_rate: float = 0.05,
        seed: int | None = None,
        link: Path | None = None,
    ) -> None:
        super().__init__(link=link)
        self.rate = rate
        self.garbage_rate = garbage_rate
        self.split_rate = split_rate
        self.bad_checksum_rate = bad_checksum_rate
        self.count = 0
        self._random = random.Random(seed)

    @staticmethod
    def frame(count: int, *, bad_checksum: bool = False) -> bytes:
        body = f"C={count:06d}".encode()
        check = xor_hex(body)
        if bad_checksum:
            check = f"{int(check, 16) ^ 0x5A:02X}".encode()
        return STX + body + check + ETX

    def garbage(self) -> bytes:
        size = self._random.randint(1, 12)
        return bytes(self._random.choice(b"\x00\xff#?ABC123\r\n") for _ in range(size))

    async def emit(
        self,
        count: int | None = None,
        *,
        garbage: bytes = b"",
        split_at: int | None = None,
        bad_checksum: bool = False,
    ) -> None:
        """Send one frame (the next count, or this one), with the given trouble."""
        self.count = self.count + 1 if count is None else count
        data = garbage + self.frame(self.count, bad_checksum=bad_checksum)
        if split_at is None:
            self.send_frame(data)
            return
        cut = len(garbage) + split_at
        self.write(data[:cut])
        await asyncio.sleep(0.02)  # the rest comes in a later read
        self.send_frame(data[cut:])

    async def _run(self) -> None:
        if self.rate is None:
            return
        period = 1.0 / self.rate
        rnd = self._random
        while True:
            await self.emit(
                garbage=self.garbage() if rnd.random() < self.garbage_rate else b"",
                split_at=rnd.randint(1, 9) if rnd.random() < self.split_rate else None,
                bad_checksum=rnd.random() < self.bad_checksum_rate,
            )
            await asyncio.sleep(period)


async def _serve(args: argparse.Namespace) -> None:
    link = Path(args.link) if args.link else None
    sim: PtyInstrument
    if args.kind == "scale":
        sim = ScaleSimulator(seed=args.seed, link=link)
    elif args.kind == "oven":
        sim = OvenSimulator(link=link)
    elif args.kind == "bus":
        sim = OvenBus([OvenSimulator(address=f"{n:02d}") for n in (1, 2, 3)], link=link)
    else:
        sim = NoisySimulator(seed=args.seed, link=link)
    await serve_until_signal(sim, lambda: print(link or sim.path, flush=True))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m simulators.serial_instruments", description=__doc__.split("\n")[0]
    )
    parser.add_argument("kind", choices=["scale", "oven", "bus", "noisy"])
    parser.add_argument("--link", help="keep this symlink pointing at the pty")
    parser.add_argument("--seed", type=int, default=None)
    asyncio.run(_serve(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
