"""Downlink commands: parse, check against the config, answer every one of them.

Writes are off unless a tag is marked writable, and no driver bundled today declares writable
tags, so every well-formed write is refused with the reason. What this module guarantees already:
no command, however malformed, goes unanswered, raises, or reaches a device it should not.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from drivers.base import DeviceBase

#: Larger payloads are refused unparsed: a command is a handful of set-points, not a file.
MAX_COMMAND_BYTES = 64 * 1024


class CommandHandler:
    def __init__(self, devices: Mapping[str, DeviceBase]) -> None:
        self._devices = devices

    async def handle(self, device: str, payload: bytes) -> dict[str, Any]:
        """Return the reply for one command; never raises."""
        if len(payload) > MAX_COMMAND_BYTES:
            return _error(
                None, f"command too large ({len(payload)} bytes, max {MAX_COMMAND_BYTES})"
            )
        try:
            doc = json.loads(payload)
        except (ValueError, UnicodeDecodeError) as exc:
            return _error(None, f"malformed command: not JSON ({exc})")
        if not isinstance(doc, dict):
            return _error(None, "malformed command: expected a JSON object")
        cmd_id = doc.get("id")
        if not isinstance(cmd_id, str):
            return _error(None, "malformed command: 'id' must be a string")
        unknown = sorted(set(doc) - {"id", "write"})
        if unknown:
            return _error(cmd_id, f"unknown key(s): {', '.join(unknown)}")
        writes = doc.get("write")
        if not isinstance(writes, dict) or not writes:
            return _error(cmd_id, "malformed command: 'write' must be an object of tag: value")
        cfg = self._devices.get(device)
        if cfg is None:
            return _error(cmd_id, f"unknown device '{device}'")
        tags = {t.name: t for t in cfg.tags}
        for tag in writes:
            if tag not in tags:
                return _error(cmd_id, f"unknown tag '{tag}'")
            if not getattr(tags[tag], "writable", False):
                return _error(cmd_id, f"tag '{tag}' is not writable")
        return _error(cmd_id, f"driver '{cfg.driver}' does not support writes")


def _error(cmd_id: str | None, message: str) -> dict[str, Any]:
    return {"id": cmd_id, "ok": False, "error": message}
