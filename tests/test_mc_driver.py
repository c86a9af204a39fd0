"""The MC driver against the press-line simulator: every type in both codes over TCP and UDP,
end codes as bad quality, the plan on the wire, writes with their checks, and a PLC that
refuses, goes silent or speaks the other code."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.base import DeviceError, Quality, WriteError
from drivers.mc.config import McDevice
from drivers.mc.driver import McDriver
from drivers.mc.frame import BATCH_READ, BATCH_WRITE, RANDOM_READ, Encoding
from simulators.mc_press import PRESS, McPressSimulator
from tests.brokers import free_port

EXPECTED = {
    "strokes": 120_000,
    "tonnage": 0,
    "speed": 0.0,
    "die_height": 412.5,
    "program": "PRG-A12",
    "tonnage_setpoint": 250,
    "status_word": 1,
    "good_parts": 118_500,
    "motor_on": True,
    "ram_down": False,
    "fault": False,
    "light_curtain": True,
    "motor_contactor": False,
}


def device(port: int, tags: list[dict[str, Any]] | None = None, **keys: Any) -> McDevice:
    connection = {"host": "127.0.0.1", "port": port, "timeout": "300ms"}
    connection.update(keys.pop("connection", {}))
    return McDevice.model_validate(
        {
            "name": "press-7",
            "driver": "mc",
            "connection": connection,
            "tags": tags if tags is not None else [p.tag() for p in PRESS],
            **keys,
        }
    )


@pytest.fixture
async def sim() -> AsyncIterator[McPressSimulator]:
    async with McPressSimulator(free_port(), update_interval=None) as s:
        yield s


@pytest.fixture
async def driver(sim: McPressSimulator) -> AsyncIterator[McDriver]:
    d = McDriver(device(sim.port))
    await d.connect()
    try:
        yield d
    finally:
        await d.close()


@pytest.mark.parametrize("transport", ["tcp", "udp"])
@pytest.mark.parametrize("encoding", ["binary", "ascii"])
async def test_every_point_of_the_press_in_both_codes(encoding: Encoding, transport: str) -> None:
    async with McPressSimulator(
        free_port(), encoding=encoding, transport=transport, update_interval=None
    ) as sim:
        d = McDriver(device(sim.port, connection={"encoding": encoding, "transport": transport}))
        await d.connect()
        try:
            readings = {r.tag: r for r in await d.poll()}
        finally:
            await d.close()
    assert all(r.quality is Quality.GOOD for r in readings.values()), readings
    values = {name: r.value for name, r in readings.items()}
    assert values.pop("clock_year") == sim.get("clock_year") > 2000
    assert values == EXPECTED


async def test_the_plan_on_the_wire_and_the_raw_words(
    sim: McPressSimulator, driver: McDriver
) -> None:
    """Three bit ranges (X, Y, M) and one random read for the scattered words: 4 requests a
    cycle, as the plan says, instead of 8 batch reads."""
    assert driver.describe_plan()["requests"] == 4
    before = sim.requests.copy()
    await driver.poll()
    await driver.poll()
    sent = sim.requests - before
    assert sent == {BATCH_READ: 6, RANDOM_READ: 2}
    raw = driver.raw_values()
    assert raw["strokes"] == [120_000 & 0xFFFF, 120_000 >> 16]
    assert raw["program"][:2] == [ord("P") | ord("R") << 8, ord("G") | ord("-") << 8]
    assert raw["motor_on"] == [True]


async def test_a_value_follows_the_plc(sim: McPressSimulator, driver: McDriver) -> None:
    sim.set("strokes", 0x1234_5678)
    sim.set("speed", 41.5)
    sim.set("fault", True)
    values = {r.tag: r.value for r in await driver.poll()}
    assert (values["strokes"], values["speed"], values["fault"]) == (0x1234_5678, 41.5, True)


async def test_an_end_code_makes_its_tags_bad_and_the_others_stay_good(
    sim: McPressSimulator,
) -> None:
    tags = [
        {"name": "ok", "address": "D0", "type": "int16"},
        {"name": "bits", "address": "M0", "type": "bool"},
        {"name": "beyond", "address": "D20000", "type": "int16"},  # the CPU has D0..D12287
    ]
    d = McDriver(device(sim.port, tags, random_reads=False))
    await d.connect()
    try:
        readings = {r.tag: r for r in await d.poll()}
    finally:
        await d.close()
    assert readings["beyond"].quality is Quality.BAD
    assert readings["beyond"].reason == "end code 0xC056 (address out of range)"
    assert readings["ok"].quality is Quality.GOOD and readings["bits"].quality is Quality.GOOD
    assert d.error_counts() == {"end code 0xC056": 1}


async def test_one_wrong_address_in_a_random_read_costs_its_own_tag_only(
    sim: McPressSimulator,
) -> None:
    """The random read of six scattered words is refused (C056) for the one past the CPU's
    D range: it is split and planned again until that tag is alone, in the same poll; the
    split plan is kept, and the whole plan is tried again after a reconnect."""
    tags = [{"name": f"w{n}", "address": f"D{n}", "type": "int16"} for n in (0, 900, 3000)]
    tags += [{"name": "beyond", "address": "D20000", "type": "int16"}]
    tags += [{"name": f"z{n}", "address": f"ZR{n}", "type": "int16"} for n in (0, 5000)]
    d = McDriver(device(sim.port, tags))
    assert [r.kind for r in d.requests] == ["random"]
    await d.connect()
    try:
        first = {r.tag: r for r in await d.poll()}
        assert first["beyond"].reason == "end code 0xC056 (address out of range)"
        assert all(r.quality is Quality.GOOD for n, r in first.items() if n != "beyond")
        assert d.splits >= 2
        before = sum(sim.requests.values())
        second = {r.tag: r.quality for r in await d.poll()}
        learned = sum(sim.requests.values()) - before
        assert second == {r: first[r].quality for r in first}
        assert 1 < learned <= 4  # the good tags' reads and the lone bad one, no new splits
        await d.connect()
        before = sum(sim.requests.values())
        await d.poll()
        assert sum(sim.requests.values()) - before > learned  # the full plan, probed again
    finally:
        await d.close()


async def test_writes_reach_the_plc_and_are_read_back(
    sim: McPressSimulator, driver: McDriver
) -> None:
    tags = [
        {**p.tag(), "writable": True} | ({"min": 0, "max": 500} if p.type == "int16" else {})
        for p in PRESS
        if p.name in ("tonnage_setpoint", "motor_on", "program")
    ]
    d = McDriver(device(sim.port, tags))
    await d.connect()
    try:
        before = sim.requests[BATCH_WRITE]
        await d.write("tonnage_setpoint", 320)
        await d.write("motor_on", False)
        await d.write("program", "PRG-B7")
        assert sim.requests[BATCH_WRITE] - before == 3
    finally:
        await d.close()
    assert (sim.get("tonnage_setpoint"), sim.get("motor_on"), sim.get("program")) == (
        320,
        False,
        "PRG-B7",
    )


@pytest.mark.parametrize(
    ("tag", "value", "error"),
    [
        ("tonnage_setpoint", 501, "501 is above max 500.0 of tag 'tonnage_setpoint'"),
        ("tonnage_setpoint", -1, "-1 is below min 0.0 of tag 'tonnage_setpoint'"),
        ("tonnage_setpoint", 2.5, "tag 'tonnage_setpoint': int16 takes whole numbers"),
        ("tonnage_setpoint", "forty", "tag 'tonnage_setpoint' takes a number, not a string"),
        ("tonnage_setpoint", True, "tag 'tonnage_setpoint' takes a number, not a boolean"),
        ("big", 70_000, "70000 does not fit tag 'big' (int16)"),
        ("motor_on", 1, "tag 'motor_on' takes true or false, not a number"),
        ("program", "x" * 17, "tag 'program' takes at most 16 characters"),
        ("program", "Prüfung", "tag 'program' takes ASCII text only"),
        ("strokes", 1, "tag 'strokes' is not writable"),
    ],
)
async def test_a_write_is_refused_before_anything_is_sent(
    sim: McPressSimulator, tag: str, value: Any, error: str
) -> None:
    tags: list[dict[str, Any]] = [
        {"name": "tonnage_setpoint", "address": "D200", "type": "int16", "writable": True}
        | {"min": 0, "max": 500},
        {"name": "big", "address": "D201", "type": "int16", "writable": True},
        {"name": "motor_on", "address": "M10", "type": "bool", "writable": True},
        {"name": "program", "address": "D120", "type": "string", "length": 8, "writable": True},
        {"name": "strokes", "address": "D100", "type": "uint32"},
    ]
    d = McDriver(device(sim.port, tags))
    with pytest.raises(WriteError) as exc:
        d.check_write(tag, value)
    assert str(exc.value) == error
    assert sim.requests[BATCH_WRITE] == 0


async def test_a_write_while_the_plc_refuses_writes_during_run(
    sim: McPressSimulator,
) -> None:
    tags = [{"name": "sp", "address": "D200", "type": "int16", "writable": True}]
    sim.write_during_run = False
    d = McDriver(device(sim.port, tags))
    await d.connect()
    try:
        with pytest.raises(WriteError, match=r"end code 0x0055 \(write during RUN not enabled\)"):
            await d.write("sp", 10)
    finally:
        await d.close()
    assert sim.get("tonnage_setpoint") == 250


async def test_a_value_the_program_overwrites_is_not_confirmed() -> None:
    class Stubborn(McPressSimulator):
        """A program that writes its own value to D200 every scan."""

        def set_words(self, device: str, number: int, words: Any) -> None:
            super().set_words(device, number, words)
            if device == "D" and number <= 200 < number + len(words):
                super().set_words("D", 200, [250])

    async with Stubborn(free_port(), update_interval=None) as stubborn:
        tags = [{"name": "sp", "address": "D200", "type": "int16", "writable": True}]
        d = McDriver(device(stubborn.port, tags))
        await d.connect()
        try:
            with pytest.raises(WriteError, match="not confirmed: read back 250"):
                await d.write("sp", 300)
        finally:
            await d.close()


@pytest.mark.parametrize(("timeout", "timer"), [(0.1, 1), (0.3, 1), (1.0, 3), (2.0, 7)])
def test_the_module_gives_up_on_the_cpu_before_the_agent_gives_up_on_the_module(
    timeout: float, timer: int
) -> None:
    """The monitoring timer (250 ms units) sent in each request: a CPU that is slow to answer
    is reported by the module with an end code before the agent's own timeout."""
    conn = device(5007, connection={"timeout": timeout}).connection
    assert conn.timer == timer
    frame = McDriver(device(5007, connection={"timeout": timeout}))._plan[0].frame
    assert int.from_bytes(frame[9:11], "little") == timer


async def test_a_closed_port_is_connection_refused() -> None:
    d = McDriver(device(free_port()))
    with pytest.raises(DeviceError) as exc:
        await d.connect()
    assert exc.value.reason == "connection refused"


async def test_a_closed_udp_port_is_connection_refused_at_the_first_request() -> None:
    """UDP has no connect: the port unreachable answer (ICMP) to the first request says it."""
    d = McDriver(device(free_port(), connection={"transport": "udp"}))
    await d.connect()
    try:
        with pytest.raises(DeviceError) as exc:
            await d.poll()
    finally:
        await d.close()
    assert exc.value.reason == "connection refused"


async def test_a_silent_plc_times_out_and_the_next_connect_reads_again(
    sim: McPressSimulator, driver: McDriver
) -> None:
    sim.silent = True
    with pytest.raises(DeviceError) as exc:
        await driver.poll()
    assert exc.value.reason == "timeout"
    assert driver.client is None or not driver.client.connected  # a late answer cannot pass
    sim.silent = False
    await driver.connect()
    assert {r.tag: r.value for r in await driver.poll()}["program"] == "PRG-A12"
    assert driver.error_counts()["timeout"] == 1


async def test_the_other_code_is_never_taken_for_an_answer() -> None:
    """The agent set to ASCII, the port to binary: the module drops the line."""
    async with McPressSimulator(free_port(), encoding="binary", update_interval=None) as sim:
        d = McDriver(device(sim.port, connection={"encoding": "ascii"}))
        await d.connect()
        try:
            with pytest.raises(DeviceError) as exc:
                await d.poll()
        finally:
            await d.close()
    assert exc.value.reason in ("connection lost", "timeout")


# -- property: any answer of the right size decodes into a value of the tag's type -------------

_RANGES = {
    "int16": (-(2**15), 2**15 - 1),
    "uint16": (0, 2**16 - 1),
    "int32": (-(2**31), 2**31 - 1),
    "uint32": (0, 2**32 - 1),
}
_TYPES = ["int16", "uint16", "int32", "uint32", "float32", "float64", "string", "bool"]


@settings(max_examples=100, deadline=None)
@given(
    spec=st.lists(
        st.tuples(st.sampled_from(_TYPES), st.integers(0, 3000), st.sampled_from("DWRZ")),
        min_size=1,
        max_size=12,
    ),
    data=st.data(),
)
def test_any_answer_decodes_to_values_of_each_tags_type(
    spec: list[tuple[str, int, str]], data: st.DataObject
) -> None:
    tags: list[dict[str, Any]] = []
    for i, (type_, number, which) in enumerate(spec):
        if type_ == "bool":
            address = f"M{number}"
        else:
            address = {"D": f"D{number}", "W": f"W{number:X}", "R": f"R{number}"}.get(
                which, f"ZR{number}"
            )
        tag: dict[str, Any] = {"name": f"t{i}", "address": address, "type": type_}
        if type_ == "string":
            tag["length"] = 3
        tags.append(tag)
    d = McDriver(device(5007, tags))
    by_name = {t["name"]: t["type"] for t in tags}
    for planned in d._plan:
        size = planned.request.size
        if planned.request.kind == "bits":
            words: list[Any] = data.draw(st.lists(st.booleans(), min_size=size, max_size=size))
        else:
            words = data.draw(st.lists(st.integers(0, 0xFFFF), min_size=size, max_size=size))
        for name, start, end, decode in planned.reads:
            value = decode(words[start:end])
            type_ = by_name[name]
            if type_ in _RANGES:
                low, high = _RANGES[type_]
                assert isinstance(value, int) and low <= value <= high
            elif type_.startswith("float"):
                assert isinstance(value, float)
            elif type_ == "string":
                assert isinstance(value, str) and len(value) <= 6
            else:
                assert isinstance(value, bool)
