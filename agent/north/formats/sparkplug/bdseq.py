"""The persisted birth/death sequence number (``bdSeq``) of a Sparkplug edge node.

It goes up by one with every MQTT CONNECT packet the edge node actually sends (0..255, wrapping)
and must survive restarts: a host application matches the NDEATH it receives (the will) with
the NBIRTH that followed the same CONNECT, and a restarted agent reusing an old number could make
a host drop a live session.

Two steps, because a connection attempt is not a CONNECT: ``pending`` is the number the next
CONNECT's will carries (asked once per attempt, consumes nothing), ``consume()`` makes it the
current number once the CONNECT packet went out. An outage of many refused attempts therefore
costs one number, not one per attempt (specification ``tck-id-topics-nbirth-bdseq-increment``:
"increment by one on every new MQTT CONNECT packet").
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)


class BdSeq:
    def __init__(self, path: Path) -> None:
        self._path = path
        self.value: int | None = None  # of the latest CONNECT sent by this process

    def _load(self) -> int:
        try:
            return int(self._path.read_text().strip()) % 256
        except FileNotFoundError:
            return -1  # the first connect uses 0
        except (OSError, ValueError) as exc:
            log.warning("sparkplug bdSeq file unreadable, starting over", extra={"error": str(exc)})
            return -1

    @property
    def pending(self) -> int:
        """The number the next CONNECT carries in its will: one more than the last one sent
        (by this process, or persisted by an earlier one)."""
        last = self.value if self.value is not None else self._load()
        return (last + 1) % 256

    def consume(self) -> int:
        """A CONNECT carrying ``pending`` was sent: it becomes the current number, persisted
        before the NBIRTH that repeats it."""
        value = self.pending
        tmp = self._path.with_suffix(".tmp")
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            with tmp.open("w") as f:
                f.write(f"{value}\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self._path)
        except OSError as exc:
            # Still usable for this process; a restart may then repeat a number once.
            log.warning("cannot persist sparkplug bdSeq", extra={"error": str(exc)})
            with contextlib.suppress(OSError):
                tmp.unlink()
        self.value = value
        return value
