"""The serial-instrument driver: stream mode (the device talks) and poll mode (ask, then parse).

Bytes arrive through :class:`SerialPort` whenever the device sends them, are cut into frames by
the :class:`FrameSplitter` and read with the device's patterns. In stream mode ``poll()`` only
collects what the frames of the last interval said, so the cadence is the agent's, whatever rate
the device streams at; with ``every_frame`` it returns each of those frames (the agent makes one
batch of each), for devices whose frames are events rather than samples.

Every kind of frame trouble (checksum, no match, frame too long, timeout, noise, overflow) is
counted in ``frame_errors`` and logged once per kind with a sample: a scale that sends a
bad line ten times a second must not flood the log, but its first bad line is what an integrator
needs to see to fix the pattern.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, TextIO

from pydantic import ValidationError

from drivers.base import (
    DeviceBase,
    DeviceError,
    Driver,
    Line,
    LineSettings,
    RateGroup,
    Reading,
    Value,
)
from drivers.base.driver import own_config
from drivers.serial.checksums import ChecksumCheck
from drivers.serial.config import SerialConnection, SerialDevice, SerialProfile
from drivers.serial.escapes import decode_escapes, printable
from drivers.serial.framing import Frame, FrameSplitter
from drivers.serial.parse import Failed, FrameParser, frame_text
from drivers.serial.port import SerialLine, SerialPort, fail_answer, live_port
from drivers.serial.sniff import sniff

log = logging.getLogger(__name__)

#: Errors a tag carries as its bad-quality reason; "noise" between frames costs no tag its value.
TAG_ERRORS = ("timeout", "no match", "checksum", "frame too long")
#: Line settings that every instrument on one port must share: the port is configured once.
LINE_SETTINGS = ("baudrate", "parity", "bytesize", "stopbits")
#: ``every_frame``: frames kept between two polls. A device that sends more per interval than this
#: is misconfigured (or the agent stalled); the oldest go, counted as "overflow", so memory stays
#: bounded whatever the device does.
MAX_FRAMES = 1000


class SerialDriver(Driver):
    """One instrument on a serial port: its own port (stream mode, or a lone poll-mode device
    driven directly), or a turn on a port shared with other addressed instruments (poll mode)."""

    name = "serial"
    device_model = SerialDevice
    profile_model = SerialProfile

    def __init__(self, device: DeviceBase) -> None:
        super().__init__(device)
        device = own_config(device, SerialDevice)
        self.config: SerialDevice = device
        self._check = (
            ChecksumCheck(device.checksum.kind, device.checksum.format)
            if device.checksum is not None
            else None
        )
        self._parsers = [FrameParser(p, device.tags) for p in device.patterns]
        fed = {name for parser in self._parsers for name in parser.tag_names}
        self._tag_names = [t.name for t in device.tags]
        # Tags merged in from a profile after validation may name a group no pattern has.
        self._orphans = {name for name in self._tag_names if name not in fed}
        self.frame_errors: collections.Counter[str] = collections.Counter()
        self.frames_read = 0  # complete frames, good or bad, since the driver was made
        self._logged: set[str] = set()
        self._line: SerialLine | None = None
        self._shared = False  # the agent's line, used with other devices: never closed here
        self._splitter = self._new_splitter()
        self._last_byte = 0.0
        # Stream mode: what the frames since the last poll said.
        self._fresh: dict[str, Reading] = {}
        # every_frame: each frame's readings, in arrival order, since the last poll.
        self._frames: collections.deque[list[Reading]] = collections.deque()
        self._last_ts = 0.0
        self._error: str | None = None
        # Poll mode: the answer being waited for (a payload, or the kind of frame error).
        self._answer: asyncio.Future[tuple[bytes | str, float]] | None = None

    def _new_splitter(self) -> FrameSplitter:
        framing = self.config.framing
        return FrameSplitter(
            start=framing.start,
            end=framing.end_marker,
            length=framing.length,
            max_frame=self.config.max_frame,
        )

    @classmethod
    def sniffer(cls) -> Callable[..., Coroutine[Any, Any, None]]:
        return cls.sniff

    @staticmethod
    async def sniff(
        port: str,
        out: TextIO,
        *,
        baudrate: int = 9600,
        parity: str = "N",
        bytesize: int = 8,
        stopbits: float = 1,
        terminator: str | None = None,
        count: int | None = None,
        duration: float | None = None,
    ) -> None:
        """``edge-agent sniff``, reached through the driver registry (the agent imports no
        concrete driver). Raises ``ValueError`` for bad settings, ``DeviceError`` for the port."""
        connection = SerialConnection.model_validate(
            {
                "port": port,
                "baudrate": baudrate,
                "parity": parity,
                "bytesize": bytesize,
                "stopbits": stopbits,
            }
        )
        end = decode_escapes(terminator) if terminator else None
        await sniff(connection, out, terminator=end, count=count, duration=duration)

    def describe_plan(self) -> dict[str, Any]:
        return {
            "mode": self.config.mode,
            "requests": len(self.config.requests),
            "patterns": len(self._parsers),
        }

    def error_counts(self) -> Mapping[str, int]:
        return dict(self.frame_errors)  # one C-level copy: safe from the scrape thread

    # -- the line ---------------------------------------------------------------------------------

    @classmethod
    def line_settings(cls, entry: Mapping[str, Any]) -> LineSettings | None:
        connection = entry.get("connection")
        if not isinstance(connection, Mapping):
            return None
        try:
            conn = SerialConnection.model_validate(connection)
        except ValidationError:
            return None
        return LineSettings(
            key=conn.port,
            agree={f"connection.{key}": getattr(conn, key) for key in LINE_SETTINGS},
            alone="mode" if entry.get("mode", "stream") == "stream" else None,
        )

    def line_key(self) -> str | None:
        # A streaming instrument talks whenever it likes: it cannot take turns on a line.
        return self.config.connection.port if self.config.mode == "poll" else None

    def make_line(self) -> Line:
        return SerialLine(self.config.connection)

    def use_line(self, line: Line) -> None:
        if not isinstance(line, SerialLine):
            raise TypeError(f"a serial instrument cannot use a {type(line).__name__}")
        self._line, self._shared = line, True

    # -- connection -------------------------------------------------------------------------------

    @property
    def _port(self) -> SerialPort | None:
        return self._line.port if self._line is not None else None

    async def connect(self) -> None:
        await self.close()
        self._splitter = self._new_splitter()
        self._fresh, self._error = {}, None
        self._frames.clear()
        if self._line is None:
            self._line = SerialLine(self.config.connection)
        await self._line.open()
        self._line.listen(self._on_data, self._on_lost)
        self._last_byte = time.monotonic()

    async def close(self) -> None:
        if self._answer is not None and not self._answer.done():
            self._answer.cancel()
        line = self._line
        if line is not None and not self._shared:
            self._line = None
            await line.close()

    def _live_port(self) -> SerialPort:
        return live_port(self._port, self.config.connection.port)

    def _on_lost(self, why: str) -> None:
        fail_answer(self._answer, self.config.connection.port, why)

    # -- bytes in ---------------------------------------------------------------------------------

    def _on_data(self, data: bytes) -> None:
        now = time.monotonic()
        if now - self._last_byte > self.config.connection.timeout:
            # After a silence an unfinished frame will never be completed (the device restarted,
            # or a fixed-length stream lost a byte): start afresh.
            stale = self._splitter.discard()
            if stale is not None:
                self._report("noise", stale.sample)
        self._last_byte = now
        for event in self._splitter.feed(data):
            if isinstance(event, Frame):
                self.frames_read += 1
                self._on_frame(event.payload)
            else:
                self._report(event.kind, event.sample)
                if event.kind in TAG_ERRORS:
                    self._on_bad_frame(event.kind)

    def _stamp(self) -> float:
        """Now, but after the previous frame: two frames read in one chunk are two events, and
        the batches they become must not share a time."""
        self._last_ts = max(time.time(), self._last_ts + 1e-6)
        return self._last_ts

    def _on_frame(self, payload: bytes) -> None:
        ts = self._stamp()
        if self.config.mode == "poll":
            if self._answer is not None and not self._answer.done():
                self._answer.set_result((payload, ts))
            return  # an unsolicited line between requests answers nothing
        readings = self._read_frame(payload, self._parsers[0], ts)
        if isinstance(readings, str):
            self._on_bad_frame(readings)
            return
        if self.config.every_frame:
            found = {r.tag: r for r in readings}
            self._keep(
                [found.get(n) or Reading.bad(n, ts, "no such group") for n in self._tag_names]
            )
            return
        for reading in readings:
            held = self._fresh.get(reading.tag)
            if reading.reason is None or held is None or held.reason is not None:
                self._fresh[reading.tag] = reading

    def _on_bad_frame(self, kind: str) -> None:
        if self.config.mode == "poll":
            if self._answer is not None and not self._answer.done():
                self._answer.set_result((kind, time.time()))
            return
        self._error = kind
        if self.config.every_frame:
            ts = self._stamp()
            self._keep([Reading.bad(name, ts, kind) for name in self._tag_names])

    def _keep(self, frame: list[Reading]) -> None:
        """Hold one frame for the next poll (every_frame), dropping the oldest when full."""
        if len(self._frames) >= MAX_FRAMES:
            self._frames.popleft()
            self._report("overflow", f"more than {MAX_FRAMES} frames between polls".encode())
        self._frames.append(frame)

    def _read_frame(self, payload: bytes, parser: FrameParser, ts: float) -> list[Reading] | str:
        """The parser's tags from one frame, or what is wrong with the frame (reported)."""
        result = self._decode(payload, parser, ts)
        if isinstance(result, str):
            self._report(result, payload)
        return result

    def _decode(self, payload: bytes, parser: FrameParser, ts: float) -> list[Reading] | str:
        text = frame_text(payload, self._check)
        if text is None:
            return "checksum"
        values = parser.parse(text)
        if values is None:
            return "no match"
        return [_reading(name, value, ts) for name, value in values.items()]

    def try_sample(self, sample: str) -> list[Reading]:
        """What one frame would yield, without a port: ``edge-agent validate --sample``.

        ``sample`` is a frame as ``sniff`` prints it (escapes allowed), with or without its
        markers, so an integrator can paste either the raw frame or just its text.
        """
        data = decode_escapes(sample)
        framing = self.config.framing
        end = framing.end_marker
        if framing.start is not None and not data.startswith(framing.start):
            data = framing.start + data
        if end is not None and not data.endswith(end):
            data += end
        frames = [e.payload for e in self._new_splitter().feed(data) if isinstance(e, Frame)]
        payload = frames[0] if frames else data
        now = time.time()
        found: dict[str, Reading] = {}
        why = "no match"
        for parser in self._parsers:
            result = self._decode(payload, parser, now)
            if isinstance(result, str):
                why = result
                continue
            for reading in result:
                found.setdefault(reading.tag, reading)
        return [found.get(name) or Reading.bad(name, now, why) for name in self._tag_names]

    def _report(self, kind: str, sample: bytes) -> None:
        self.frame_errors[kind] += 1
        if kind in self._logged:
            return
        self._logged.add(kind)
        shown = printable(sample)
        log.warning(
            "serial %s: %s (first of its kind; further ones are counted, not logged)",
            kind,
            shown,
            extra={"device": self.config.name, "kind": kind, "sample": shown},
        )

    # -- poll -------------------------------------------------------------------------------------

    async def poll(self) -> list[Reading]:
        return await self._poll(None)

    async def poll_group(self, group: RateGroup) -> list[Reading]:
        """Poll mode: only the requests whose answers feed a tag of the group are sent (a
        request feeding tags of two rates is sent for each). Stream mode refuses rates."""
        wanted = frozenset(group.tags)
        return [r for r in await self._poll(wanted) if r.tag in wanted]

    async def _poll(self, only: frozenset[str] | None) -> list[Reading]:
        if self._shared and self._line is not None:
            self._line.listen(self._on_data, self._on_lost)  # our turn: the answers are ours
        port = self._live_port()
        port.read_pending()  # what already arrived belongs to this interval; a loss shows now
        port = self._live_port()
        if self.config.every_frame:
            # Every event since the last poll, each with its own time; none is not an error.
            frames, self._frames = self._frames, collections.deque()
            self._error = None
            return [reading for frame in frames for reading in frame]
        if self.config.mode == "poll":
            found = await self._ask_all(port, only)
        else:
            found, self._fresh = self._fresh, {}
        now = time.time()
        readings = []
        for name in self._tag_names:
            if only is not None and name not in only:
                continue
            reading = found.get(name)
            if reading is None:
                why = "no such group" if name in self._orphans else (self._error or "timeout")
                reading = Reading.bad(name, now, why)
            readings.append(reading)
        self._error = None
        return readings

    async def _ask_all(self, port: SerialPort, only: frozenset[str] | None) -> dict[str, Reading]:
        found: dict[str, Reading] = {}
        answered = 0
        asked = 0
        for request, parser in zip(self.config.requests, self._parsers, strict=True):
            if only is not None and only.isdisjoint(parser.tag_names):
                continue
            asked += 1
            timeout = request.timeout or self.config.connection.timeout
            reason, readings = await self._ask(port, request.send, parser, timeout)
            if reason != "timeout":
                answered += 1
            for reading in readings:
                found[reading.tag] = reading
        if answered == 0 and asked:
            raise DeviceError("timeout", "no answer to any request within its timeout")
        return found

    async def _ask(
        self, port: SerialPort, send: bytes, parser: FrameParser, timeout: float
    ) -> tuple[str | None, list[Reading]]:
        """Send one request and read its answer: the next complete frame."""
        port.drain_input()
        self._splitter.discard()
        self._answer = asyncio.get_running_loop().create_future()
        try:
            await port.write(send)
            answer, ts = await asyncio.wait_for(self._answer, timeout)
        except TimeoutError:
            self._report("timeout", send)
            now = time.time()
            return "timeout", [Reading.bad(name, now, "timeout") for name in parser.tag_names]
        finally:
            self._answer = None
        if isinstance(answer, bytes):
            readings = self._read_frame(answer, parser, ts)
            if not isinstance(readings, str):
                return None, readings
            answer = readings
        return answer, [Reading.bad(name, ts, answer) for name in parser.tag_names]


def _reading(name: str, value: Value | Failed, ts: float) -> Reading:
    if isinstance(value, Failed):
        return Reading.bad(name, ts, value.reason)
    return Reading(tag=name, value=value, ts=ts)
