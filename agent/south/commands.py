"""Downlink commands: parse, check against the config, write, answer every one of them.

Writes are off unless a tag is marked writable. A command is checked whole before anything is
sent (every tag known and writable, every value of the right type and within ``min``/``max``,
as the driver judges it), so a command with one bad value changes nothing on the device. The
writes then go to the device one tag at a time, in the order given, each confirmed by the driver
(Modbus reads the tag back); the first failure stops the command and the reply names the tags
already written. Every command gets a reply; none raises or reaches a device it should not.

A flood of commands is rate-limited per device with a token bucket (the device's ``commands``
key: ``burst`` commands at once, refilled at ``per_second``): the excess is answered with an error
at once, without waiting for the line, so a runaway cloud script cannot starve polling of an
RS-485 line. The limit is read from the device's config at every command, so a reload that
changes it applies to the next command; the commands taken lately still count against the new
limit (a reload is no way around it).

:meth:`CommandHandler.write` is the entry point for every write path (the JSON command topic
here, Sparkplug DCMD or a cloud RPC elsewhere): one place that checks, limits and writes.

Method calls (``{"id", "call": {"<method>": [arguments]}}``, OPC UA methods) take the same path:
:meth:`CommandHandler.call` has the driver check the method and its arguments (declared in the
config, else refused), takes a token of the same bucket, calls between polls, and replies with
the server's status and output arguments.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol, runtime_checkable

from drivers.base import CallResult, CommandLimits, DeviceBase, WritableTag, WriteError

#: Larger payloads are refused unparsed: a command is a handful of set-points, not a file.
MAX_COMMAND_BYTES = 64 * 1024
#: Commands a device takes at once, and per second after that, unless its ``commands`` key says.
DEFAULT_LIMITS = CommandLimits()


class WriteTarget(Protocol):
    """What a write reaches: the device's poller (``agent.south.scheduler.PolledDevice``)."""

    def check_write(self, tag: str, value: object) -> None: ...

    async def write(self, tag: str, value: object) -> None: ...


@runtime_checkable
class CallTarget(WriteTarget, Protocol):
    """A target that also takes method calls (the poller of a driver with methods)."""

    def check_call(self, method: str, args: object) -> None: ...

    async def call(self, method: str, args: object) -> CallResult: ...


class TokenBucket:
    """``burst`` tokens, refilled at ``rate`` per second; a command takes one or is refused."""

    def __init__(
        self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._at = clock()

    def take(self) -> bool:
        self._refill()
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False

    def resize(self, rate: float, burst: int) -> None:
        """New limits (a reload). What the bucket remembers is the commands taken lately (the
        burst less the tokens left, refilled at the old rate until now): they count against the
        new burst too, so raising it frees exactly the difference at once, lowering it refuses
        at once, and the new rate refills from now."""
        self._refill()
        taken = self.burst - self._tokens
        self.rate, self.burst = rate, burst
        self._tokens = min(float(burst), max(0.0, burst - taken))

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now


class CommandHandler:
    """Answers commands for the devices of ``devices``, writing through ``targets``.

    ``devices`` is read at every command (the runtime's live mapping, which a reload updates in
    place): the devices known, their tags and their ``commands`` rate limit all follow it."""

    def __init__(
        self,
        devices: Mapping[str, DeviceBase],
        targets: Callable[[str], WriteTarget | None] | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._devices = devices
        self._targets = targets or (lambda _device: None)
        self._clock = clock
        self._buckets: dict[str, TokenBucket] = {}

    async def handle(self, device: str, payload: bytes) -> dict[str, Any]:
        """Return the reply for one command of the contract's JSON form; never raises."""
        if len(payload) > MAX_COMMAND_BYTES:
            return _error(
                None, f"command too large ({len(payload)} bytes, max {MAX_COMMAND_BYTES})"
            )
        try:
            doc = json.loads(payload)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            return _error(None, f"malformed command: not JSON ({exc})")
        if not isinstance(doc, dict):
            return _error(None, "malformed command: expected a JSON object")
        cmd_id = doc.get("id")
        if not isinstance(cmd_id, str):
            return _error(None, "malformed command: 'id' must be a string")
        unknown = sorted(set(doc) - {"id", "write", "call"})
        if unknown:
            return _error(cmd_id, f"unknown key(s): {', '.join(unknown)}")
        if "call" in doc:
            if "write" in doc:
                return _error(cmd_id, "malformed command: give write or call, not both")
            return await self.call(device, cmd_id, doc["call"])
        writes = doc.get("write")
        if not isinstance(writes, dict) or not writes:
            return _error(cmd_id, "malformed command: 'write' must be an object of tag: value")
        return await self.write(device, cmd_id, writes)

    async def write(
        self, device: str, cmd_id: str | None, writes: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Check, rate-limit and carry out ``writes`` (tag: value) on ``device``; return the
        reply (``{"id", "ok": true}`` or ``{"id", "ok": false, "error"}``). Never raises.

        For every write path: the JSON command topic calls it from :meth:`handle`, Sparkplug
        DCMD or a cloud RPC call it with their own id (or None) and map the reply back."""
        try:
            return await self._write(device, cmd_id, writes)
        except Exception as exc:  # a driver bug must still get an answer
            return _error(cmd_id, f"write failed: {type(exc).__name__}: {exc}")

    async def _write(
        self, device: str, cmd_id: str | None, writes: Mapping[str, Any]
    ) -> dict[str, Any]:
        cfg = self._devices.get(device)
        if cfg is None:
            return _error(cmd_id, f"unknown device '{device}'")
        if not writes:
            return _error(cmd_id, "nothing to write")
        tags = {t.name: t for t in cfg.tags}
        for tag in writes:
            if tag not in tags:
                return _error(cmd_id, f"unknown tag '{tag}'")
            found = tags[tag]
            if not (isinstance(found, WritableTag) and found.writable):
                return _error(cmd_id, f"tag '{tag}' is not writable")
        target = self._targets(device)
        if target is None:
            return _error(cmd_id, f"device '{device}' is not polled (disabled or not started)")
        try:
            for tag, value in writes.items():
                target.check_write(tag, value)
        except WriteError as exc:
            return _error(cmd_id, str(exc))
        limited = self._rate_limited(device, cfg)
        if limited is not None:
            return _error(cmd_id, limited)
        done: list[str] = []
        for tag, value in writes.items():
            try:
                await target.write(tag, value)
            except WriteError as exc:
                written = f" (written before it: {', '.join(done)})" if done else ""
                return _error(cmd_id, f"tag '{tag}': {exc}{written}")
            done.append(tag)
        return {"id": cmd_id, "ok": True}

    async def call(self, device: str, cmd_id: str | None, calls: Any) -> dict[str, Any]:
        """Check, rate-limit and make one method call (``calls`` is ``{method: arguments}``) on
        ``device``; the reply is ``{"id", "ok": true, "status", "outputs"}``, or ``{"id", "ok":
        false, "error"}`` (with ``status`` when the server refused it). Never raises."""
        try:
            return await self._call(device, cmd_id, calls)
        except Exception as exc:  # a driver bug must still get an answer
            return _error(cmd_id, f"call failed: {type(exc).__name__}: {exc}")

    async def _call(self, device: str, cmd_id: str | None, calls: Any) -> dict[str, Any]:
        cfg = self._devices.get(device)
        if cfg is None:
            return _error(cmd_id, f"unknown device '{device}'")
        if not isinstance(calls, Mapping) or len(calls) != 1:
            return _error(
                cmd_id, "malformed command: 'call' must be an object of one method: [arguments]"
            )
        ((method, args),) = calls.items()
        target = self._targets(device)
        if target is None:
            return _error(cmd_id, f"device '{device}' is not polled (disabled or not started)")
        if not isinstance(target, CallTarget):
            return _error(cmd_id, f"device '{device}' has no methods")
        try:
            target.check_call(str(method), args)
        except WriteError as exc:
            return _error(cmd_id, str(exc))
        limited = self._rate_limited(device, cfg)
        if limited is not None:
            return _error(cmd_id, limited)
        try:
            result = await target.call(str(method), args)
        except WriteError as exc:
            return _error(cmd_id, f"method '{method}': {exc}")
        if not result.status.startswith("Good"):
            reply = _error(cmd_id, f"method '{method}': {result.status}")
            reply["status"] = result.status
            return reply
        return {"id": cmd_id, "ok": True, "status": result.status, "outputs": result.outputs}

    def _rate_limited(self, device: str, cfg: DeviceBase) -> str | None:
        """Why the device's command limit (``commands:`` of its config) refuses one more
        command now; None when a token was taken for it."""
        bucket = self._bucket(device, getattr(cfg, "commands", DEFAULT_LIMITS))
        if bucket.take():
            return None
        return (
            f"rate limited: at most {bucket.burst} command{'' if bucket.burst == 1 else 's'}"
            f" at once and {bucket.rate:g} per second to device '{device}'"
        )

    def _bucket(self, device: str, limits: CommandLimits) -> TokenBucket:
        """The device's bucket, made on its first command and resized when its limit changed."""
        bucket = self._buckets.get(device)
        if bucket is None:
            bucket = TokenBucket(limits.per_second, limits.burst, self._clock)
            self._buckets[device] = bucket
        elif (bucket.rate, bucket.burst) != (limits.per_second, limits.burst):
            bucket.resize(limits.per_second, limits.burst)
        return bucket


def _error(cmd_id: str | None, message: str) -> dict[str, Any]:
    return {"id": cmd_id, "ok": False, "error": message}
