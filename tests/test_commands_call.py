"""The command handler's method calls (``{"id", "call": {"<method>": [args]}}``): malformed
commands, devices without methods, the rate limit shared with writes, and the reply's shape for
a good and a bad status. A recording target stands for the driver (the OPC UA driver's own
checks are in tests/test_opcua_writes.py, end to end in tests/test_opcua_commands.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from agent.south.commands import CallTarget, CommandHandler
from drivers.base import CallResult, CommandLimits, DeviceBase, WritableTag, WriteError
from tests.platforms.common import RecordingTarget


class Machine(RecordingTarget):
    """A device with one method, ``start_job(job)``; ``status`` is what the machine answers."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, Any]] = []
        self.status = "Good"

    def check_call(self, method: str, args: object) -> None:
        if method != "start_job":
            raise WriteError(f"unknown method '{method}'")
        if not isinstance(args, list) or len(args) != 1:
            raise WriteError("start_job takes 1 argument")

    async def call(self, method: str, args: object) -> CallResult:
        self.calls.append((method, args))
        return CallResult(self.status, [7] if self.status == "Good" else [])


def handler(target: RecordingTarget, burst: int = 5) -> CommandHandler:
    device = DeviceBase(
        name="cnc",
        driver="x",
        tags=[WritableTag(name="sp", writable=True)],
        commands=CommandLimits(burst=burst, per_second=0.001),
    )
    return CommandHandler({"cnc": device}, lambda d: target if d == "cnc" else None)


async def handle(h: CommandHandler, doc: Any, device: str = "cnc") -> dict[str, Any]:
    return await h.handle(device, json.dumps(doc).encode())


def test_a_machine_with_methods_is_a_call_target() -> None:
    assert isinstance(Machine(), CallTarget)
    assert not isinstance(RecordingTarget(), CallTarget)


async def test_a_call_is_answered_with_status_and_outputs() -> None:
    m = Machine()
    reply = await handle(handler(m), {"id": "c1", "call": {"start_job": ["J-1"]}})
    assert reply == {"id": "c1", "ok": True, "status": "Good", "outputs": [7]}
    assert m.calls == [("start_job", ["J-1"])]


async def test_a_bad_status_is_an_error_that_names_it() -> None:
    m = Machine()
    m.status = "BadInvalidArgument"
    reply = await handle(handler(m), {"id": "c2", "call": {"start_job": ["J-1"]}})
    assert reply == {
        "id": "c2",
        "ok": False,
        "error": "method 'start_job': BadInvalidArgument",
        "status": "BadInvalidArgument",
    }


@pytest.mark.parametrize(
    ("doc", "error"),
    [
        ({"id": "m1", "call": ["start_job"]}, "'call' must be an object of one method"),
        ({"id": "m2", "call": {"start_job": ["a"], "stop": []}}, "of one method"),
        ({"id": "m3", "call": {}}, "of one method"),
        ({"id": "m4", "call": {"start_job": ["a"]}, "write": {"sp": 1}}, "write or call, not both"),
        ({"id": "m5", "call": {"reset": []}}, "unknown method 'reset'"),
        ({"id": "m6", "call": {"start_job": "a"}}, "start_job takes 1 argument"),
        ({"id": "m7", "calls": {"start_job": ["a"]}}, "unknown key(s): calls"),
    ],
)
async def test_malformed_or_refused_calls_never_reach_the_machine(
    doc: dict[str, Any], error: str
) -> None:
    m = Machine()
    reply = await handle(handler(m), doc)
    assert reply["ok"] is False and error in reply["error"], reply
    assert m.calls == []


async def test_a_device_without_methods_or_not_polled_says_so() -> None:
    h = handler(RecordingTarget())
    reply = await handle(h, {"id": "n1", "call": {"start_job": ["a"]}})
    assert reply["error"] == "device 'cnc' has no methods"
    reply = await handle(h, {"id": "n2", "call": {"start_job": ["a"]}}, device="press")
    assert reply["error"] == "unknown device 'press'"


async def test_calls_and_writes_share_the_devices_rate_limit() -> None:
    m = Machine()
    h = handler(m, burst=2)
    assert (await handle(h, {"id": "r1", "write": {"sp": 1}}))["ok"]
    assert (await handle(h, {"id": "r2", "call": {"start_job": ["a"]}}))["ok"]
    refused = await handle(h, {"id": "r3", "call": {"start_job": ["b"]}})
    assert "rate limited" in refused["error"]
    assert m.calls == [("start_job", ["a"])]
    # a refusal at the check costs no token: it never reached the limit
    assert "unknown method" in (await handle(h, {"id": "r4", "call": {"x": []}}))["error"]


async def test_a_driver_that_raises_still_gets_an_answer() -> None:
    class Broken(Machine):
        async def call(self, method: str, args: object) -> CallResult:
            raise RuntimeError("bug")

    reply = await handle(handler(Broken()), {"id": "b1", "call": {"start_job": ["a"]}})
    assert reply == {"id": "b1", "ok": False, "error": "call failed: RuntimeError: bug"}
