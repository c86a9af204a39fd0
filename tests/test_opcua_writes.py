"""The OPC UA driver's commands against the CNC simulator: writes typed by the node's DataType
and read back, methods checked at the agent, Alarms & Conditions with ConditionRefresh and
acknowledgement, a session lost mid-call, and the deprecated policies' warning.

Every refusal is checked to leave the machine as it was: a refused write or call sends nothing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
import pytest_asyncio
from asyncua import ua

from drivers.base import DeviceError, WriteError
from drivers.opcua.config import OpcuaDevice, OpcuaMethod
from drivers.opcua.driver import OpcuaDriver
from drivers.opcua.events import FIELDS, Selection, event_doc
from drivers.opcua.methods import arguments
from simulators.opcua_cnc import NAMESPACE, POINTS, CncSimulator
from tests.brokers import free_port
from tests.faultproxy import FaultProxy
from tests.test_opcua_commands import START_JOB
from tests.test_opcua_support import device

pytestmark = pytest.mark.asyncio(loop_scope="module")

#: A value to write per type of the simulator's writable Types/ points, as a command sends it,
#: and what reading it back gives.
WRITES: dict[str, tuple[Any, Any]] = {
    "Types/Boolean": (False, False),
    "Types/SByte": (-5, -5),
    "Types/Byte": (200, 200),
    "Types/Int16": (-300, -300),
    "Types/UInt16": (60000, 60000),
    "Types/Int32": (70000, 70000),
    "Types/UInt32": (4000000000, 4000000000),
    "Types/Int64": (-(2**40), -(2**40)),
    "Types/UInt64": (2**63, 2**63),
    "Types/Float": (1.1, 1.1),
    "Types/Double": (2.5, 2.5),
    "Types/String": ("Grüße, CNC-8", "Grüße, CNC-8"),
    "Types/DateTime": ("2026-12-01T06:30:00Z", datetime(2026, 12, 1, 6, 30, tzinfo=UTC)),
    "Types/Int32Array": ([4, -5], [4, -5]),
}

#: Writes refused before anything is sent: (point, value, part of the reason).
REFUSED: list[tuple[str, Any, str]] = [
    ("Types/Int16", 70000, "out of range for tag 'types_int16' (Int16)"),
    ("Types/Int16", 3.5, "it takes an integer"),
    ("Types/Byte", -1, "out of range"),
    ("Types/Boolean", 1, "takes true or false, not a number"),
    ("Types/Double", True, "takes a number, not true"),
    ("Types/Double", "2.5", "takes a number, not a string"),
    ("Types/Float", 1e39, "out of range for tag 'types_float' (Float)"),
    ("Types/String", 5, "takes a string, not a number"),
    ("Types/DateTime", "yesterday", "ISO 8601"),
    ("Types/DateTime", "2026-12-01T06:30:00", "with its zone"),
    ("Types/Int32Array", 5, "takes a list of Int32, not a number"),
    ("Types/Int32Array", list(range(1001)), "at most 1000 items, not 1001"),
    ("Types/Int32", [1], "takes a number, not a list"),
    ("Setpoints/FeedOverride", 151, "above max 150"),
    ("Setpoints/FeedOverride", -1, "below min 0"),
]


def tag(path: str) -> str:
    return path.replace("/", "_").lower()


def writable(path: str, **keys: Any) -> dict[str, Any]:
    return {"name": tag(path), "node": POINTS[path].node_string, "writable": True, **keys}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def sim() -> AsyncIterator[CncSimulator]:
    s = CncSimulator(port=free_port(), update_interval=None)
    await s.start()
    yield s
    await s.stop()


def make_driver(sim: CncSimulator, **extra: Any) -> OpcuaDriver:
    tags = [writable(p) for p in WRITES]
    tags.append(writable("Setpoints/FeedOverride", min=0, max=150))
    tags.append({"name": "program", "node": POINTS["ProgramName"].node_string})
    entry = device(
        sim.endpoint,
        tags,
        publishing_interval="100ms",
        methods=[START_JOB],
        events=[{"name": "alarms"}],
        **extra,
    )
    return OpcuaDriver(OpcuaDevice.model_validate(entry))


@pytest_asyncio.fixture(loop_scope="module")
async def driver(sim: CncSimulator) -> AsyncIterator[OpcuaDriver]:
    d = make_driver(sim)
    await d.connect()
    d.take_events()
    yield d
    await d.close()


@pytest.mark.parametrize("path", list(WRITES))
async def test_each_type_is_written_and_read_back(
    sim: CncSimulator, driver: OpcuaDriver, path: str
) -> None:
    value, machine = WRITES[path]
    driver.check_write(tag(path), value)
    await driver.write(tag(path), value)
    got = await sim.value(path)
    assert got == pytest.approx(machine) if isinstance(machine, float) else got == machine


@pytest.mark.parametrize(("path", "value", "why"), REFUSED)
async def test_a_refused_write_sends_nothing(
    sim: CncSimulator, driver: OpcuaDriver, path: str, value: Any, why: str
) -> None:
    before = await sim.value(path)
    with pytest.raises(WriteError) as refused:
        driver.check_write(tag(path), value)
    assert why in str(refused.value)
    with pytest.raises(WriteError):
        await driver.write(tag(path), value)
    assert await sim.value(path) == before


async def test_a_tag_not_marked_writable_is_refused(driver: OpcuaDriver) -> None:
    with pytest.raises(WriteError, match="tag 'program' is not writable"):
        driver.check_write("program", "O9999")


async def test_a_write_the_machine_refuses_says_why(sim: CncSimulator) -> None:
    """A node the server will not write (no write access) answers with its status code."""
    d = OpcuaDriver(
        OpcuaDevice.model_validate(
            device(
                sim.endpoint,
                [{"name": "state", "node": POINTS["State"].node_string, "writable": True}],
            )
        )
    )
    await d.connect()
    try:
        with pytest.raises(WriteError, match="refused by the server: BadUserAccessDenied"):
            await d.write("state", "IDLE")
    finally:
        await d.close()
    assert await sim.value("State") == "RUNNING"


async def test_a_method_returns_its_outputs_and_refusals_never_reach_it(
    sim: CncSimulator, driver: OpcuaDriver
) -> None:
    sim.calls.clear()
    result = await driver.call("start_job", {"Job": "JOB-1", "Count": 2})
    assert result.status == "Good" and isinstance(result.outputs[0], int)
    assert await sim.value("ProgramName") == "JOB-1"
    refused = await driver.call("start_job", ["JOB-2", 0])  # the machine's own refusal
    assert (refused.status, refused.outputs) == ("BadInvalidArgument", [])
    for args, why in [
        (["JOB-3"], "takes 2 arguments (Job, Count), not 1"),
        (["JOB-3", 1, 2], "not 3"),
        (["JOB-3", "two"], "argument 'Count' of 'start_job' takes a number, not a string"),
        (["JOB-3", -1], "out of range"),
        ([["JOB"] * 100_000, 1], "takes a string, not a list"),
        ({"Job": "JOB-3", "Count": 1, "Extra": 1}, "has no input Extra"),
        ({"Job": "JOB-3"}, "needs Count"),
        ("JOB-3", "takes a list of arguments"),
    ]:
        with pytest.raises(WriteError) as exc:
            driver.check_call("start_job", args)
        assert why in str(exc.value), (args, exc.value)
    with pytest.raises(WriteError, match="unknown method 'reset' \\(callable: start_job\\)"):
        driver.check_call("reset", [])
    assert [name for name, _ in sim.calls] == ["StartJob", "StartJob"]


async def test_an_array_argument_is_bounded() -> None:
    method = OpcuaMethod.model_validate(
        {
            "name": "load_table",
            "object": "ns=2;s=Machine",
            "method": "ns=2;s=Machine.Load",
            "inputs": [{"name": "Points", "type": "Double", "array": True, "max_items": 10}],
        }
    )
    [variant] = arguments(method, [[0.5] * 10])
    assert variant.VariantType == ua.VariantType.Double and variant.is_array
    with pytest.raises(WriteError, match="at most 10 items, not 11"):
        arguments(method, [[0.5] * 11])
    with pytest.raises(WriteError, match=r"'Points' of 'load_table'\[3\] takes a number"):
        arguments(method, [[0.5, 1, 2, "x"]])


async def test_inputs_that_differ_from_the_server_make_the_method_uncallable(
    sim: CncSimulator, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = {**START_JOB, "inputs": [{"name": "Job", "type": "String"}]}
    d = OpcuaDriver(OpcuaDevice.model_validate(device(sim.endpoint, [], methods=[wrong])))
    with caplog.at_level(logging.WARNING, logger="drivers.opcua.driver"):
        await d.connect()
        await d.connect()  # a reconnect: the same reason is not logged again
    try:
        with pytest.raises(WriteError, match=r"the server declares inputs \(Job: String, Count"):
            d.check_call("start_job", ["JOB"])
    finally:
        await d.close()
    assert caplog.text.count("method not callable: start_job") == 1


async def test_an_event_type_the_server_lacks_is_logged_and_the_rest_works(
    sim: CncSimulator, caplog: pytest.LogCaptureFixture
) -> None:
    entry = device(
        sim.endpoint,
        [{"name": "program", "node": POINTS["ProgramName"].node_string}],
        events=[{"name": "vendor", "types": [f"nsu={NAMESPACE};i=99999"]}, {"name": "alarms"}],
    )
    d = OpcuaDriver(OpcuaDevice.model_validate(entry))
    with caplog.at_level(logging.WARNING, logger="drivers.opcua.driver"):
        await d.connect()
    try:
        assert "events not received: vendor" in caplog.text
        await sim.raise_alarm("DoorOpen", "the other entry works")
        await events_until(d, lambda e: e.get("message") == "the other entry works")
    finally:
        await d.close()
        await sim.clear_alarm("DoorOpen")


async def events_until(d: OpcuaDriver, match: Any, timeout: float = 5.0) -> list[dict[str, Any]]:
    """Poll as the agent does until an event ``match`` accepts arrives; every event taken."""
    taken: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout):
        while not any(match(e) for e in taken):
            await d.poll()
            taken += d.take_events()
            await asyncio.sleep(0.05)
    return taken


async def test_alarms_raise_clear_refresh_acknowledge_confirm(sim: CncSimulator) -> None:
    d = make_driver(sim)
    await d.connect()
    try:
        await sim.raise_alarm("DoorOpen")

        def fresh(e: dict[str, Any]) -> bool:  # not a condition an earlier test left retained
            return e["alarm"] == "DoorOpen" and e["event"] == "raise" and not e["acked"]

        raised = next(e for e in await events_until(d, fresh) if fresh(e))
        assert raised["severity"] == 300
        assert raised["condition_id"] == f"nsu={NAMESPACE};s=Alarms.DoorOpen"
        assert raised["source"] == "Machine" and raised["message"].startswith("operator door")
        assert (raised["acked"], raised["retain"], raised["type"]) == (
            False,
            True,
            "AlarmConditionType",
        )
        # Away while it clears and raises again: the refresh after the reconnect reports it.
        await d.close()
        await sim.clear_alarm("DoorOpen")
        await sim.raise_alarm("DoorOpen", "door open again")
        await d.connect()
        again = await events_until(d, lambda e: e.get("message") == "door open again")
        assert any(e["event"] == "raise" for e in again)
        # Acknowledge by the condition id, then confirm by the alarm's name.
        ack = await d.call("acknowledge", [raised["condition_id"], "on my way"])
        assert ack.status == "Good"
        await events_until(d, lambda e: e["alarm"] == "DoorOpen" and e.get("acked") is True)
        confirm = await d.call("confirm", {"condition": "DoorOpen"})
        assert confirm.status == "Good"
        await sim.clear_alarm("DoorOpen")
        cleared = await events_until(d, lambda e: e["event"] == "clear")
        assert next(e for e in cleared if e["event"] == "clear")["alarm"] == "DoorOpen"
        with pytest.raises(WriteError, match="no condition 'Coolant' has been reported"):
            d.check_call("acknowledge", ["Coolant"])
    finally:
        await d.close()


async def test_a_hostile_event_is_bounded() -> None:
    from drivers.opcua.config import OpcuaEvents

    selection = Selection(OpcuaEvents(name="alarms"), (*FIELDS, "ConditionId"))
    values: dict[str, ua.Variant] = {
        "Severity": ua.Variant(5000, ua.VariantType.UInt16),
        "Message": ua.Variant(ua.LocalizedText("x" * 10_000), ua.VariantType.LocalizedText),
        "ConditionName": ua.Variant("a" * 5000, ua.VariantType.String),
        "ActiveState/Id": ua.Variant("yes", ua.VariantType.String),
    }
    fields = [values.get(name, ua.Variant()) for name in selection.names]
    doc = event_doc(selection, fields, [], received=1.0).doc
    assert doc["severity"] == 1000
    assert len(doc["message"]) == len(doc["alarm"]) == 1000
    assert doc["event"] == "event" and doc["ts"] == 1000  # no ActiveState: a plain event
    short = event_doc(selection, fields[:3], [], received=1.0).doc  # fewer fields than asked
    assert short["alarm"] == "alarms"


async def test_a_session_lost_mid_call_is_an_error(sim: CncSimulator) -> None:
    """The link dies (an RST) while the machine works on the call: the call fails as a lost
    device (the agent's reply says "device down"), it does not hang."""
    async with FaultProxy(sim.port) as proxy:
        entry = device(f"opc.tcp://127.0.0.1:{proxy.port}/cnc", [], methods=[START_JOB])
        d = OpcuaDriver(OpcuaDevice.model_validate(entry))
        await d.connect()
        sim.call_delay = 1.0
        sim.calls.clear()
        try:
            call = asyncio.create_task(d.call("start_job", ["JOB-9", 1]))
            async with asyncio.timeout(5):
                while not sim.calls:  # noqa: ASYNC110 - the call reached the machine
                    await asyncio.sleep(0.02)
            proxy.set("reset")
            with pytest.raises(DeviceError):
                await asyncio.wait_for(call, 3)
        finally:
            sim.call_delay = 0.0
            await d.close()


async def test_a_deprecated_policy_is_a_warning_at_start(
    caplog: pytest.LogCaptureFixture,
) -> None:
    security = {
        "policy": "Basic256",
        "allow_deprecated": True,
        "cert_file": "a.der",
        "key_file": "a.pem",
        "server_cert_file": "s.der",
    }
    entry = device("opc.tcp://127.0.0.1:4840", [], connection={"security": security})
    with caplog.at_level(logging.WARNING, logger="drivers.opcua.driver"):
        OpcuaDriver(OpcuaDevice.model_validate(entry))
    assert "deprecated security policy Basic256" in caplog.text


async def test_poll_mode_receives_alarms_too(sim: CncSimulator) -> None:
    """A polled device has no data subscription; its events come on one of their own, at the
    poll interval, and every poll still reads every tag."""
    entry = device(
        sim.endpoint,
        [{"name": "program", "node": POINTS["ProgramName"].node_string}],
        mode="poll",
        poll_interval="100ms",
        events=[{"name": "alarms", "types": ["AlarmConditionType"]}],
    )
    d = OpcuaDriver(OpcuaDevice.model_validate(entry))
    await d.connect()
    try:
        d.take_events()
        await sim.raise_alarm("SpindleOverTemp", "poll mode sees it")
        got = await events_until(d, lambda e: e.get("message") == "poll mode sees it")
        assert any(e["event"] == "raise" for e in got)
        assert [r.tag for r in await d.poll()] == ["program"]
    finally:
        await d.close()
        await sim.clear_alarm("SpindleOverTemp")


@pytest.mark.slow
async def test_the_simulators_alarm_source_raises_and_clears_on_its_schedule() -> None:
    """``alarm_period`` (``--alarm-period``): SpindleOverTemp raises and clears by itself."""
    s = CncSimulator(port=free_port(), update_interval=None, alarm_period=0.2)
    await s.start()
    d = OpcuaDriver(OpcuaDevice.model_validate(device(s.endpoint, [], events=[{"name": "a"}])))
    try:
        await d.connect()
        got = await events_until(d, lambda e: e["event"] == "clear")
        assert [e["event"] for e in got if e["alarm"] == "SpindleOverTemp"][:2] == [
            "raise",
            "clear",
        ]
    finally:
        await d.close()
        await s.stop()
