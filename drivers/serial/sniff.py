"""``edge-agent sniff``: what a serial device really sends, frame by frame, with timing.

Writing a ``match`` pattern starts with seeing the bytes: which terminator, whether there is an
STX, how often lines come, what the checksum looks like. Without a terminator every read is shown
as it arrives (gaps between reads hint at the framing); with one, complete frames are shown. Bytes
are printed with the escapes the YAML accepts, so a line can be pasted into ``--sample``.
"""

from __future__ import annotations

import asyncio
import time
from typing import TextIO

from drivers.base import DeviceError
from drivers.serial.config import SerialConnection
from drivers.serial.escapes import printable
from drivers.serial.framing import Frame, FrameSplitter
from drivers.serial.port import SerialPort


async def sniff(
    connection: SerialConnection,
    out: TextIO,
    *,
    terminator: bytes | None = None,
    count: int | None = None,
    duration: float | None = None,
    max_frame: int = 4096,
) -> None:
    """Print frames (or raw reads) until ``count`` of them, ``duration`` seconds, or cancellation.

    Raises ``DeviceError`` when the port cannot be opened or is lost.
    """
    chunks: asyncio.Queue[bytes | None] = asyncio.Queue()
    port = await SerialPort.open(connection, chunks.put_nowait, lambda _: chunks.put_nowait(None))
    splitter = FrameSplitter(end=terminator, max_frame=max_frame) if terminator else None
    start = last = time.monotonic()
    shown = 0
    try:
        async with asyncio.timeout(duration):
            while count is None or shown < count:
                data = await chunks.get()
                if data is None:
                    raise DeviceError("port lost", f"{connection.port}: {port.lost}")
                now = time.monotonic()
                events = splitter.feed(data) if splitter is not None else [Frame(data)]
                for event in events:
                    if isinstance(event, Frame):
                        body = event.payload + (terminator or b"")
                        label = f"{len(body)} bytes"
                    else:
                        body, label = event.sample, event.kind
                    out.write(
                        f"{now - start:9.3f}s  +{(now - last) * 1000:7.1f}ms  {label:>14}  "
                        f"{printable(body)}\n"
                    )
                    last = now
                    shown += 1
                out.flush()
    except TimeoutError:
        pass
    finally:
        port.close()
