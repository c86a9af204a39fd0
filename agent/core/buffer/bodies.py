"""How a batch's body is kept on disk: deflated when that makes it smaller.

Why: at shop-floor rates every byte stored is written twice (the WAL frame, then the
checkpoint's copy into the database file), and the bodies, JSON with the same tag names in every
batch, are most of those bytes. Raw deflate at level 1 halves a meter's 50 values (609 -> 299
bytes) in about 6 us, on the buffer's worker thread, and inflating one for the publisher takes
about 2 us. Half the bytes means fewer pages per commit and per acknowledgement (the SD card's
wear, docs/performance.md) and twice the hours of outage ``buffer.max_size`` holds.

The stored form is self-describing, so a buffer written before compression (or with bodies
that do not shrink) is read as it always was, and any bytes at all round-trip:

* ``0x00`` + raw deflate: a compressed body;
* ``0x01`` + the body: a body that did not shrink and starts with 0x00 or 0x01 itself;
* anything else: the body as given (every record the agent writes is JSON: it starts with ``{``).

An agent older than this format would publish a compressed body as it is: downgrading needs an
empty buffer (CHANGELOG).
"""

from __future__ import annotations

import zlib

_DEFLATED = b"\x00"
_ESCAPED = b"\x01"
_LEVEL = 1  # level 6 saves 1 % more of a small JSON body for twice the time
_MIN = 64  # below this the deflate stream's own overhead eats the saving


def pack(body: bytes) -> bytes:
    """The form stored for ``body``."""
    if len(body) >= _MIN:
        c = zlib.compressobj(_LEVEL, zlib.DEFLATED, -15)
        deflated = c.compress(body) + c.flush()
        if len(deflated) + 1 < len(body):
            return _DEFLATED + deflated
    if body[:1] in (_DEFLATED, _ESCAPED):
        return _ESCAPED + body
    return body


def unpack(stored: bytes) -> bytes:
    """The body ``pack`` was given."""
    head = stored[:1]
    if head == _DEFLATED:
        return zlib.decompress(stored[1:], -15)
    if head == _ESCAPED:
        return stored[1:]
    return stored
