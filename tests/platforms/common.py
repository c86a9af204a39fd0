"""The agent's side every cloud platform test shares: one writable device, ``press-1``, whose
writes are recorded, behind the real :class:`CommandHandler` (its checks and rate limit run)."""

from __future__ import annotations

from collections.abc import Mapping

from agent.south.commands import CommandHandler
from drivers.base import DeviceBase, TagBase, WritableTag

DEVICE = "press-1"


class RecordingTarget:
    """A writable device that records what was written (the real check and write path of
    CommandHandler runs around it)."""

    def __init__(self) -> None:
        self.written: dict[str, object] = {}

    def check_write(self, tag: str, value: object) -> None:
        return None

    async def write(self, tag: str, value: object) -> None:
        self.written[tag] = value


def press_commands(target: RecordingTarget, *tags: TagBase) -> CommandHandler:
    """Commands for ``press-1`` with ``tags`` (default: one writable tag ``sp``), written to
    ``target``."""
    devices: Mapping[str, DeviceBase] = {
        DEVICE: DeviceBase(
            name=DEVICE, driver="x", tags=list(tags) or [WritableTag(name="sp", writable=True)]
        )
    }
    return CommandHandler(devices, lambda d: target if d == DEVICE else None)
