"""The S7 driver against the moulding machine's PLC (python-snap7's server): every type read,
the plan on the wire, item errors, writes with read-back, a PLC that goes away and comes back,
the connection type in the TSAP, and one dead PLC beside a live one."""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from snap7.datatypes import S7Area

from drivers.base import DeviceError, Quality, Reading, WriteError
from drivers.s7.config import S7Device
from drivers.s7.driver import S7Driver
from simulators.hostile_s7 import HostileS7Server
from simulators.s7_moulding import MouldingSimulator

MACHINE_TAGS: list[dict[str, Any]] = [
    {"name": "cycles", "address": "DB1.DBD0", "type": "DINT"},
    {"name": "cycle_time", "address": "DB1.DBD4", "type": "REAL"},
    {"name": "state", "address": "DB1.DBW8", "type": "WORD"},
    {"name": "running", "address": "DB1.DBX10.0", "type": "BOOL"},
    {"name": "alarm", "address": "DB1.DBX10.1", "type": "BOOL"},
    {"name": "mould_id", "address": "DB1.DBB12", "type": "STRING", "length": 16},
    {"name": "last_cycle", "address": "DB1.DBB30", "type": "DTL"},
    {"name": "shift", "address": "DB1.DBB42", "type": "DATE_AND_TIME"},
    {"name": "weight", "address": "DB1.DBB50", "type": "LREAL"},
    {"name": "parts", "address": "DB1.DBB58", "type": "LINT"},
    {"name": "operator", "address": "DB1.DBB66", "type": "WSTRING", "length": 8},
    {"name": "zones", "address": "DB2.DBB0", "type": "REAL", "count": 5},
    {"name": "melt", "address": "DB2.DBD20", "type": "real"},
    {"name": "barrel_sp", "address": "DB3.DBD0", "type": "REAL", "writable": True, "max": 320},
    {"name": "pressure", "address": "DB3.DBW4", "type": "INT", "writable": True, "min": 0},
    {"name": "heaters", "address": "DB3.DBX6.0", "type": "BOOL", "writable": True},
    {"name": "job", "address": "DB3.DBB8", "type": "STRING", "length": 10, "writable": True},
    {"name": "cooling", "address": "MW20", "type": "WORD", "writable": True, "max": 500},
    {"name": "door", "address": "I0.0", "type": "BOOL"},
    {"name": "gate", "address": "I0.1", "type": "BOOL"},
    {"name": "heater_out", "address": "Q0.0", "type": "BOOL"},
]


def device(port: int, tags: list[dict[str, Any]] | None = None, **keys: Any) -> S7Device:
    conn = {"host": "127.0.0.1", "port": port, "timeout": "500ms", **keys.pop("connection", {})}
    return S7Device.model_validate(
        {"name": "mould", "driver": "s7", "connection": conn, **keys, "tags": tags or MACHINE_TAGS}
    )


@pytest.fixture
async def plc() -> AsyncIterator[MouldingSimulator]:
    async with MouldingSimulator(update_interval=None, pdu=240) as sim:
        yield sim


@pytest.fixture
async def driver(plc: MouldingSimulator) -> AsyncIterator[S7Driver]:
    d = S7Driver(device(plc.port))
    await d.connect()
    yield d
    await d.close()


def values(readings: list[Reading]) -> dict[str, Any]:
    assert all(r.quality is Quality.GOOD for r in readings), [r for r in readings if r.reason]
    return {r.tag: r.value for r in readings}


async def test_every_type_reads_as_the_plc_holds_it(
    plc: MouldingSimulator, driver: S7Driver
) -> None:
    plc.step()
    got = values(await driver.poll())
    assert got["cycles"] == 1 and got["state"] & 0b1000  # the mould opened on this cycle
    assert 27 < got["cycle_time"] < 29 and round(got["cycle_time"], 2) == got["cycle_time"]
    assert (got["running"], got["alarm"]) == (True, False)
    assert got["mould_id"] == "MLD-4711-A"
    assert got["shift"] == "2026-12-07T06:00:00.000"
    assert got["last_cycle"].startswith("20")
    assert (got["weight"], got["parts"], got["operator"]) == (0.0482, 4, "Müller")
    assert len(got["zones"]) == 5 and all(isinstance(z, float) for z in got["zones"])
    assert (got["pressure"], got["heaters"], got["cooling"]) == (650, True, 150)
    assert (got["door"], got["gate"], got["heater_out"]) == (True, True, True)
    raw = driver.raw_values()
    assert raw["cycles"] == "00 00 00 01"
    assert raw["mould_id"].startswith("10 0a 4d 4c 44")  # STRING[16], 10 characters, "MLD"


async def test_the_plan_follows_the_pdu_the_plc_grants_and_is_what_goes_on_the_wire(
    plc: MouldingSimulator,
) -> None:
    d = S7Driver(device(plc.port))
    assert d.describe_plan()["pdu"] == 480  # before connecting: the usual grant
    await d.connect()
    try:
        plan = d.describe_plan()
        assert plan["pdu"] == 240 and plan["optimal"]
        assert plan["requests"] == plan["lower_bound"]
        before, sent = plc.exchanges, d.link.exchanges if d.link else 0
        for _ in range(3):
            await d.poll()
        assert d.link is not None
        assert plc.exchanges - before == d.link.exchanges - sent == 3 * plan["requests"]
    finally:
        await d.close()


async def test_a_missing_block_costs_only_its_own_tags(plc: MouldingSimulator) -> None:
    tags = [
        {"name": "cycles", "address": "DB1.DBD0", "type": "DINT"},
        {"name": "ghost", "address": "DB9.DBW0", "type": "INT"},
        {"name": "past_end", "address": "DB2.DBD200", "type": "REAL"},
        {"name": "melt", "address": "DB2.DBD20", "type": "REAL"},
    ]
    d = S7Driver(device(plc.port, tags))
    await d.connect()
    try:
        got = {r.tag: r for r in await d.poll()}
    finally:
        await d.close()
    assert d.describe_plan()["requests"] == 1
    assert (got["cycles"].value, got["melt"].value) == (0, 232.5)
    assert got["ghost"].reason == "item error 0x0a (object does not exist)"
    assert got["past_end"].reason == "item error 0x05 (invalid address)"
    assert d.error_counts()["item error"] == 2


async def test_writes_change_only_their_bytes_and_are_read_back(
    plc: MouldingSimulator, driver: S7Driver
) -> None:
    plc.put(3, 6, bytes([0b1000_0001]))  # heaters on, and bit 7 belongs to someone else
    await driver.write("heaters", False)
    assert plc.get(3, 6, 1) == bytes([0b1000_0000])
    await driver.write("barrel_sp", 245.5)
    assert struct.unpack(">f", plc.get(3, 0, 4))[0] == 245.5
    await driver.write("pressure", 700.0)  # a whole number sent as a float is fine
    assert plc.get(3, 4, 2) == struct.pack(">h", 700)
    await driver.write("cooling", 320)
    assert plc.get_area(S7Area.MK, 20, 2) == struct.pack(">H", 320)
    plc.put(3, 8, bytes([10, 0]))  # STRING[10] as the PLC declares it
    await driver.write("job", "JOB-42")
    assert plc.get(3, 8, 8) == b"\x0a\x06JOB-42"  # the maximum length byte left alone
    got = values(await driver.poll())
    assert (got["heaters"], got["barrel_sp"], got["job"]) == (False, 245.5, "JOB-42")
    # The PLC declares STRING[4] there: six characters would run into the next variable.
    plc.put(3, 8, bytes([4, 0]))
    with pytest.raises(WriteError, match=r"declares STRING\[4\] at DB3.DBB8: at most 4"):
        await driver.write("job", "JOB-43")
    assert plc.get(3, 8, 2) == bytes([4, 0])


@pytest.mark.parametrize(
    ("tag", "value", "message"),
    [
        ("barrel_sp", 400, "above max 320.0"),
        ("pressure", -1, "below min 0.0"),
        ("pressure", 1.5, "whole number"),
        ("pressure", 40000, "does not fit INT"),
        ("heaters", 1, "true or false"),
        ("job", "x" * 11, "at most 10"),
        ("job", 5, "takes a string"),
        ("cooling", float("nan"), "finite"),
        ("cycles", 1, "not writable"),
        ("nope", 1, "not writable"),
    ],
)
async def test_bad_writes_are_refused_before_anything_is_sent(
    plc: MouldingSimulator, tag: str, value: Any, message: str
) -> None:
    d = S7Driver(device(plc.port))
    with pytest.raises(WriteError, match=message):
        d.check_write(tag, value)
    assert plc.exchanges == 0


async def test_a_write_the_plc_refuses_says_why(plc: MouldingSimulator) -> None:
    tags = [{"name": "sp", "address": "DB9.DBW0", "type": "INT", "writable": True}]
    d = S7Driver(device(plc.port, tags))
    await d.connect()
    try:
        with pytest.raises(WriteError, match="PLC refused"):
            await d.write("sp", 5)
    finally:
        await d.close()


async def test_a_plc_that_goes_away_is_reported_and_reconnected(plc: MouldingSimulator) -> None:
    d = S7Driver(device(plc.port))
    await d.connect()
    try:
        await plc.stop()
        with pytest.raises(DeviceError) as lost:
            await d.poll()
        assert lost.value.reason in ("connection lost", "timeout")
        await d.close()
        with pytest.raises(DeviceError) as refused:
            await d.connect()
        assert refused.value.reason == "connection refused"
        await plc.start()
        await d.connect()
        assert values(await d.poll())["mould_id"] == "MLD-4711-A"
    finally:
        await d.close()


async def test_the_connection_type_goes_in_the_tsap_and_a_refusal_says_so() -> None:
    async with HostileS7Server(refuse_types=frozenset({2}), weights={"ok": 1}) as server:
        op = S7Driver(device(server.port, [{"name": "w", "address": "DB1.DBW4", "type": "WORD"}]))
        with pytest.raises(DeviceError) as refused:
            await op.connect()
        assert refused.value.reason == "connection refused by PLC"
        assert "connection type OP, rack 0, slot 1" in str(refused.value)
        pg = S7Driver(
            device(
                server.port,
                [{"name": "w", "address": "DB1.DBW4", "type": "WORD"}],
                connection={"connection_type": "PG"},
            )
        )
        await pg.connect()
        try:
            assert values(await pg.poll()) == {"w": 0x0405}
        finally:
            await pg.close()
        assert server.refused == 1


async def test_a_silent_plc_holds_only_its_own_device(plc: MouldingSimulator) -> None:
    """A PLC that accepts the connection then never answers (or dribbles bytes) costs its own
    device one timeout per poll; the live PLC beside it keeps its 50 ms cadence."""
    async with (
        HostileS7Server(weights={"silent": 1, "slowloris": 1}, slowloris_delay=0.05) as dead,
    ):
        live = S7Driver(device(plc.port))
        stuck = S7Driver(device(dead.port, [{"name": "w", "address": "DB1.DBW0", "type": "WORD"}]))
        await live.connect()
        await stuck.connect()
        gaps: list[float] = []
        timeouts = 0

        async def poll_live() -> None:
            last = time.monotonic()
            for _ in range(20):
                await live.poll()
                await asyncio.sleep(0.05)
                now = time.monotonic()
                gaps.append(now - last)
                last = now

        async def poll_stuck() -> None:
            nonlocal timeouts
            while True:
                started = time.monotonic()
                try:
                    await stuck.poll()
                except DeviceError as exc:
                    assert exc.reason == "timeout"
                    assert time.monotonic() - started < 0.5 + 0.3  # the deadline holds
                    timeouts += 1
                    await stuck.close()
                    await stuck.connect()

        task = asyncio.create_task(poll_stuck())
        try:
            await poll_live()
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await live.close()
            await stuck.close()
    assert timeouts >= 1
    assert max(gaps) < 0.4, gaps  # a wait on the stuck PLC would be 0.5 s or more
