"""Cutting a serial byte stream into frames, incrementally and without ever giving up.

A serial line has no packets: reads return whatever the UART had, so one frame may arrive in three
reads and three frames in one. The splitter keeps the unfinished tail between feeds. A line also
carries rubbish (power-up noise, a half frame from before the port was opened, a device that
never sends its terminator), so every failure is reported as an error the driver counts and the
splitter resynchronises on the next marker instead of raising: one bad byte must cost one frame,
not the connection.

It is pure (bytes in, frames and errors out) so it is tested without a port.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

ErrorKind = Literal["frame too long", "noise"]


@dataclass(frozen=True, slots=True)
class Frame:
    """One frame's payload: what lies between the start and end markers (markers excluded)."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class FrameError:
    """Bytes that could not be a frame; ``sample`` is (the start of) them, for the log."""

    kind: ErrorKind
    sample: bytes


Event = Frame | FrameError


class FrameSplitter:
    """Incremental splitter for the three framings instruments use.

    - ``end`` only (a terminator such as ``\\r\\n``): a frame is everything up to the terminator.
    - ``start`` and ``end`` (``STX ... ETX``): bytes before a start are noise; a second start
      before the end abandons the first, unfinished frame.
    - ``length`` (optionally after ``start``): fixed-size frames of ``length`` bytes counting the
      start marker. Without a start marker only :meth:`discard` (called after line silence) can
      realign a stream that lost a byte.

    A payload longer than ``max_frame`` is an error; the splitter drops bytes up to the next end
    marker (or looks for the next start marker) and carries on.
    """

    def __init__(
        self,
        *,
        start: bytes | None = None,
        end: bytes | None = None,
        length: int | None = None,
        max_frame: int = 256,
    ) -> None:
        if (end is None) == (length is None):
            raise ValueError("give exactly one of end and length")
        if length is not None and length <= len(start or b""):
            raise ValueError("length must be longer than the start marker")
        self.start = start or None
        self.end = end or None
        self.length = length
        self.max_frame = max_frame
        self._buf = bytearray()
        self._in_frame = self.start is None  # with a start marker, hunt for it first
        self._dropping = False  # after an overflow: skip to the next end marker

    def feed(self, data: bytes) -> list[Event]:
        """Frames completed and errors found by adding ``data``; never raises."""
        self._buf += data
        events: list[Event] = []
        while True:
            event = self._next()
            if event is None:
                return events
            events.append(event)

    def discard(self) -> FrameError | None:
        """Drop an unfinished frame (the line went silent mid-frame); the bytes are noise."""
        pending = bytes(self._buf)
        self._buf.clear()
        self._dropping = False
        self._in_frame = self.start is None
        return FrameError("noise", pending[: self.max_frame]) if pending else None

    # -- one step ---------------------------------------------------------------------------------

    def _next(self) -> Event | None:
        if not self._in_frame:
            return self._hunt_start()
        if self.length is not None:
            return self._fixed_length()
        return self._up_to_end()

    def _hunt_start(self) -> Event | None:
        assert self.start is not None
        at = self._buf.find(self.start)
        if at < 0:
            # Keep what could be the beginning of a start marker split across reads.
            keep = len(self.start) - 1
            if len(self._buf) > keep:
                cut = len(self._buf) - keep
                noise = bytes(self._buf[:cut])
                del self._buf[:cut]
                return FrameError("noise", noise[: self.max_frame])
            return None
        self._in_frame = True
        if at > 0:
            noise = bytes(self._buf[:at])
            del self._buf[: at + len(self.start)]
            return FrameError("noise", noise[: self.max_frame])
        del self._buf[: len(self.start)]
        return self._next()

    def _fixed_length(self) -> Event | None:
        assert self.length is not None
        size = self.length - len(self.start or b"")
        if self.start is not None:
            restart = self._buf.find(self.start, 0, size)
            if restart >= 0:
                return self._abandon(restart)
        if len(self._buf) < size:
            return None
        payload = bytes(self._buf[:size])
        del self._buf[:size]
        self._in_frame = self.start is None
        return Frame(payload)

    def _up_to_end(self) -> Event | None:
        assert self.end is not None
        at = self._buf.find(self.end)
        if self.start is not None and not self._dropping:
            limit = at if at >= 0 else len(self._buf)
            restart = self._buf.find(self.start, 0, limit)
            if restart >= 0:
                return self._abandon(restart)
        if at < 0:
            return self._overflow_while_waiting()
        payload = bytes(self._buf[:at])
        del self._buf[: at + len(self.end)]
        self._in_frame = self.start is None
        if self._dropping:
            self._dropping = False
            return self._next()
        if len(payload) > self.max_frame:
            return FrameError("frame too long", payload[: self.max_frame])
        if not payload:
            return self._next()  # an empty line between frames carries nothing
        return Frame(payload)

    def _overflow_while_waiting(self) -> Event | None:
        assert self.end is not None
        keep = len(self.end) - 1
        if self._dropping:
            if len(self._buf) > keep:
                del self._buf[: len(self._buf) - keep]
            return None
        if len(self._buf) <= self.max_frame + keep:
            return None
        sample = bytes(self._buf[: self.max_frame])
        if self.start is not None:
            # Look for the next start marker rather than the end of a frame we gave up on.
            del self._buf[: self.max_frame]
            self._in_frame = False
        else:
            self._dropping = True
            del self._buf[: len(self._buf) - keep]
        return FrameError("frame too long", sample)

    def _abandon(self, restart: int) -> FrameError:
        """A new start marker inside an unfinished frame: the device restarted its frame."""
        noise = (self.start or b"") + bytes(self._buf[:restart])
        del self._buf[:restart]
        self._in_frame = False
        return FrameError("noise", noise[: self.max_frame])
