"""Scan rates within a device (``every``, ``scan_group``): grouping, planning, the poll loop's
schedule measured from the readings' own timestamps, and the agent end to end through a real
mosquitto, against the Modbus simulator."""

from __future__ import annotations

import itertools
import json
import textwrap
from pathlib import Path
from typing import Any

import pytest

from agent.app.config import ConfigErrors, load_config
from agent.core.processing import Processing
from agent.core.processing.config import ProcessedDevice
from agent.ops.metrics import Metrics
from agent.ops.status import StatusView, build_snapshot
from agent.south.lines import LinePoller
from agent.south.registry import load_drivers
from agent.south.scheduler import DevicePoller
from drivers.base import Batch, Reading, rate_groups
from drivers.modbus.config import ModbusDevice
from drivers.modbus.driver import ModbusDriver
from drivers.serial.config import SerialDevice
from drivers.serial.driver import SerialDriver
from simulators.modbus_tcp import ModbusSimulator
from simulators.serial_instruments import OvenSimulator
from tests.brokers import Mosquitto, Subscriber, free_port
from tests.e2e import AgentRig, write_config
from tests.sinks import Sink, Status

DRIVERS = load_drivers()
FAST, SLOW = 1120, 1130  # holding registers of the simulator nothing else uses


def _reg(name: str, address: int, **keys: Any) -> dict[str, Any]:
    return {"name": name, "table": "holding", "address": address, "type": "uint16", **keys}


def _modbus(port: int, tags: list[dict[str, Any]], **keys: Any) -> ModbusDevice:
    return ModbusDevice.model_validate(
        {
            "name": "meter",
            "driver": "modbus",
            "poll_interval": "1s",
            "connection": {"host": "127.0.0.1", "port": port, "timeout": "500ms"},
            "tags": tags,
            **keys,
        }
    )


# -- grouping -------------------------------------------------------------------------------------


def test_tags_are_grouped_by_rate_fastest_first_named_groups_merging_with_equal_rates() -> None:
    device = _modbus(
        502,
        [
            _reg("v", 0),
            _reg("e1", 10, scan_group="energy"),
            _reg("t", 20, every="5s"),
            _reg("e2", 11, every="1m"),
            _reg("f", 30, scan_group="fast"),
        ],
        scan_groups=[{"name": "energy", "every": "60s"}, {"name": "fast", "every": "200ms"}],
    )
    groups = rate_groups(device)
    assert [(g.every, g.tags) for g in groups] == [
        (0.2, ("f",)),
        (1.0, ("v",)),
        (5.0, ("t",)),
        (60.0, ("e1", "e2")),
    ]


def test_a_device_without_rates_is_one_group_of_every_tag() -> None:
    device = _modbus(502, [_reg("a", 0), _reg("b", 1)])
    assert [(g.every, g.tags) for g in rate_groups(device)] == [(1.0, ("a", "b"))]


def test_the_modbus_planner_plans_each_rate_group_apart() -> None:
    """Neighbouring registers of two rates are two requests, each read only by its group."""
    device = _modbus(502, [_reg("fast", 0), _reg("slow", 1, every="10s"), _reg("fast2", 2)])
    driver = ModbusDriver(device)
    assert [r.describe() for r in driver.requests] == [
        "holding 0 3 tags=fast,fast2",
        "holding 1 1 tags=slow",
    ]
    assert driver.describe_plan()["rate_groups"] == {"every 1s": 1, "every 10s": 1}
    plain = ModbusDriver(_modbus(502, [_reg("fast", 0), _reg("slow", 1), _reg("fast2", 2)]))
    assert [r.describe() for r in plain.requests] == ["holding 0 3 tags=fast,slow,fast2"]


# -- validation -----------------------------------------------------------------------------------


def _errors(tmp_path: Path, devices: str) -> list[str]:
    path = tmp_path / "c.yaml"
    path.write_text("agent: {id: t}\ndevices:\n" + textwrap.indent(textwrap.dedent(devices), "  "))
    with pytest.raises(ConfigErrors) as caught:
        load_config(path, DRIVERS)
    return [f"{i.line}:{i.col}: {i.path}: {i.message}" for i in caught.value.issues]


def test_an_unknown_scan_group_is_refused_where_the_tags_are(tmp_path: Path) -> None:
    assert _errors(
        tmp_path,
        """\
        - name: m
          driver: modbus
          connection: {host: 127.0.0.1}
          scan_groups: [{name: energy, every: 1m}]
          tags:
            - {name: a, table: holding, address: 0, type: uint16, scan_group: enrgy}
        """,
    ) == ["7:5: devices.0.tags: tags.0.scan_group: no scan group 'enrgy' (scan_groups has: energy)"]


def test_every_and_scan_group_together_are_refused_at_the_key(tmp_path: Path) -> None:
    errors = _errors(
        tmp_path,
        """\
        - name: m
          driver: modbus
          connection: {host: 127.0.0.1}
          scan_groups: [{name: energy, every: 1m}]
          tags:
            - name: a
              table: holding
              address: 0
              type: uint16
              scan_group: energy
              every: 5s
        """,
    )
    assert errors == ["12:9: devices.0.tags.0.scan_group: give every or scan_group, not both"]


def test_a_scan_group_defined_twice_is_refused(tmp_path: Path) -> None:
    errors = _errors(
        tmp_path,
        """\
        - name: m
          driver: modbus
          connection: {host: 127.0.0.1}
          scan_groups: [{name: e, every: 1m}, {name: e, every: 2m}]
          tags: [{name: a, table: holding, address: 0, type: uint16}]
        """,
    )
    assert errors == ["6:5: devices.0.scan_groups: scan group 'e' is defined twice"]


def test_an_opcua_subscription_refuses_rates_with_the_reason(tmp_path: Path) -> None:
    errors = _errors(
        tmp_path,
        """\
        - name: lathe
          driver: opcua
          connection: {endpoint: "opc.tcp://127.0.0.1:4840"}
          tags: [{name: speed, node: "ns=2;s=Speed", every: 10s}]
        """,
    )
    assert len(errors) == 1 and errors[0].startswith("6:5: devices.0.tags: every and scan_group")
    assert "sampling_interval" in errors[0] and "mode: poll" in errors[0]


def test_a_profile_tag_may_name_the_devices_scan_group(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        textwrap.dedent(
            """\
            agent: {id: t}
            profiles:
              meter:
                driver: modbus
                tags: [{name: e, table: holding, address: 0, type: uint16, scan_group: energy}]
            devices:
              - name: m1
                driver: modbus
                profile: meter
                connection: {host: 127.0.0.1}
                scan_groups: [{name: energy, every: 1m}]
              - name: m2
                driver: modbus
                profile: meter
                connection: {host: 127.0.0.1, unit_id: 2}
            """
        )
    )
    with pytest.raises(ConfigErrors) as caught:
        load_config(path, DRIVERS)
    shown = [f"{i.line}:{i.col}: {i.path}: {i.message}" for i in caught.value.issues]
    # m1 defines the group; m2 does not, and is told so at its own entry.
    assert shown == [
        "12:5: devices.1.tags: tags.0.scan_group: no scan group 'energy' (scan_groups has: none)"
    ]


# -- the schedule, measured from the readings' timestamps -----------------------------------------


async def _fast_and_slow(delay: float) -> tuple[list[Batch], Metrics]:
    """A fast tag every 300 ms (one request) and 20 slow tags every 900 ms (20 requests), each
    request answered after ``delay``; the batches of three slow ticks."""
    async with ModbusSimulator(port=free_port(), units=(1,), update_interval=None) as sim:
        sim.set_delay(1, delay)
        slow = [_reg(f"s{i}", SLOW + i, scan_group="slow") for i in range(20)]
        device = _modbus(
            sim.port,
            [_reg("fast", FAST), *slow],
            poll_interval="300ms",
            no_coalescing=True,
            scan_groups=[{"name": "slow", "every": "900ms"}],
        )
        sink, metrics = Sink(), Metrics()
        poller = DevicePoller(device, ModbusDriver(device), sink, Status(), metrics)
        await sink.run_until(poller, lambda: sum("s19" in _tags(b) for b in sink.batches) >= 3, 8)
    return sink.batches, metrics


def _fast_gaps(batches: list[Batch]) -> list[float]:
    fast = [r.ts for b in batches for r in b.readings if r.tag == "fast"]
    return [b - a for a, b in itertools.pairwise(fast)]


async def test_a_slow_group_never_delays_a_fast_one() -> None:
    """The slow group's 20 requests of 10 ms (200 ms) fit before the next fast tick: served
    after the fast group when both are due, it never lands between two fast readings (were it
    served first, or read with the fast one, every third fast reading would come ~200 ms
    late), and each slow tick is one batch of its 20 tags."""
    batches, metrics = await _fast_and_slow(0.010)
    slow_batches = [b for b in batches if "s0" in _tags(b)]
    assert all(_tags(b) == {f"s{i}" for i in range(20)} for b in slow_batches)
    assert all(_tags(b) == {"fast"} for b in batches if b not in slow_batches)
    gaps = _fast_gaps(batches)
    assert len(gaps) >= 6 and max(gaps) < 0.3 + 0.1, gaps
    slow_ts = [b.ts for b in slow_batches]
    assert all(0.9 - 0.1 < b - a < 0.9 + 0.15 for a, b in itertools.pairwise(slow_ts))
    # Each slow poll took its 200 ms (the delay is real), and its 20 requests were its own.
    took = [max(r.ts for r in b.readings) - min(r.ts for r in b.readings) for b in slow_batches]
    assert min(took) > 0.15, took
    overruns = {"device": "meter"}
    assert metrics.registry.get_sample_value("edge_agent_poll_overruns_total", overruns) == 0


async def test_a_slow_group_longer_than_the_fast_interval_stops_for_it() -> None:
    """At 20 ms a request the slow group takes 400 ms, more than the 300 ms between fast
    ticks: it stops between two requests when the fast tick comes, the fast tag is read, and
    the slow group goes on. The fast tag waits for one slow request at most (20 ms), not for
    the rest of the slow group (~120 ms); each slow tick's batches hold all 20 tags once."""
    batches, _ = await _fast_and_slow(0.020)
    gaps = _fast_gaps(batches)
    assert len(gaps) >= 6 and max(gaps) < 0.3 + 0.02 + 0.05, gaps
    parts = [b for b in batches if "fast" not in _tags(b)]
    ticks: list[list[str]] = []
    for b in parts:  # the parts of one slow tick come in address order, s0 first
        if "s0" in _tags(b):
            ticks.append([])
        if ticks:
            ticks[-1] += [r.tag for r in b.readings]
    complete = [t for t in ticks if "s19" in t]
    assert len(complete) >= 3
    assert all(sorted(t) == sorted(f"s{i}" for i in range(20)) for t in complete), ticks
    assert len(parts) > len(ticks)  # it did stop: a tick's tags came in several batches


def _tags(batch: Batch) -> set[str]:
    return {r.tag for r in batch.readings}


# -- end to end -----------------------------------------------------------------------------------


async def test_rates_end_to_end_through_mosquitto(tmp_path: Path, broker: Mosquitto) -> None:
    """Voltages each 100 ms, the energy total each 600 ms, one device, one connection: the
    broker sees the voltage in every message and the energy in a sixth of them, each a
    message of its own group's tags only."""
    async with ModbusSimulator(port=free_port(), units=(1,), update_interval=None) as sim:
        sim.set_registers(1, "holding", FAST, [2301])
        sim.set_registers(1, "holding", SLOW, [0, 4242])
        cfg = write_config(
            tmp_path / "c.yaml",
            broker_port=broker.port,
            modbus_port=sim.port,
            devices=[
                {
                    "name": "meter",
                    "poll_interval": "100ms",
                    "scan_groups": [{"name": "energy", "every": "600ms"}],
                    "tags": [
                        _reg("voltage", FAST, scale=0.1, unit="V"),
                        {
                            "name": "energy",
                            "table": "holding",
                            "address": SLOW,
                            "type": "uint32",
                            "scan_group": "energy",
                        },
                    ],
                }
            ],
        )
        sub = Subscriber(broker.port, ["edge/test-gw/meter/data"]).start()
        try:
            async with AgentRig(cfg) as agent:
                msgs = await sub.wait_for(
                    lambda m: sum("energy" in json.loads(x.payload)["values"] for x in m) >= 3
                )
                assert [g.every for g in agent.pollers[0].groups] == [0.1, 0.6]
        finally:
            sub.stop()
    docs = [m.json()["values"] for m in msgs]
    assert all(d == {"energy": 4242} for d in docs if "energy" in d)
    assert all(d == {"voltage": 230.1} for d in docs if "voltage" in d)
    # Between the first and the third energy message the voltage came about 12 times.
    at = [i for i, d in enumerate(docs) if "energy" in d]
    between = sum("voltage" in d for d in docs[at[0] : at[2]])
    assert 9 <= between <= 13, between


async def test_read_and_the_status_page_show_every_group_and_calculated_tags(
    tmp_path: Path, broker: Mosquitto
) -> None:
    """``edge-agent read`` on a running agent waits for the next batch of each rate group (not
    only the next batch, which holds one group); the status snapshot lists calculated tags with
    their units."""
    async with ModbusSimulator(port=free_port(), units=(1,), update_interval=None) as sim:
        sim.set_registers(1, "holding", FAST, [2301])
        sim.set_registers(1, "holding", SLOW, [500])
        cfg = write_config(
            tmp_path / "c.yaml",
            broker_port=broker.port,
            modbus_port=sim.port,
            devices=[
                {
                    "name": "meter",
                    "poll_interval": "100ms",
                    "tags": [
                        _reg("voltage", FAST, scale=0.1),
                        _reg("current", SLOW, scale=0.01, every="700ms"),
                    ],
                    "calculated": [{"name": "va", "expr": "voltage * current", "unit": "VA"}],
                }
            ],
        )
        async with AgentRig(cfg) as agent:
            view = StatusView(agent)
            answer = await view.read_device("meter", [])
            snapshot = build_snapshot(agent)
    assert answer["ok"], answer
    got = {r["tag"]: r.get("value") for r in answer["readings"]}
    assert got == {"voltage": 230.1, "current": 5.0, "va": 1150.5}
    device = next(d for d in snapshot["devices"] if d["name"] == "meter")
    assert device["units"] == {"va": "VA"}
    assert device["values"]["va"]["value"] == 1150.5


# -- processing on batches of one rate group ------------------------------------------------------


async def test_processing_takes_batches_of_one_group_at_a_time(tmp_path: Path) -> None:
    """A fast tag with a window and a slow one with a deadband, in alternating batches of one
    group each: the window counts only the fast tag's readings, the deadband holds the slow tag
    back while it stands still, a calculated tag combines both, and a slow batch all bad does
    not make the machine state 'stopped' (only a batch of every tag bad is the device down)."""
    device = ProcessedDevice.model_validate(
        {
            "name": "meter",
            "driver": "test",
            "tags": [
                {"name": "power", "window": {"length": 1.0, "stats": ["count", "mean"]}},
                {"name": "energy", "deadband": 1, "every": 5.0},
            ],
            "calculated": [{"name": "per_kwh", "expr": "power / energy"}],
            "state": {"rules": [{"state": "running", "when": "power > 1"}], "down": "stopped"},
        }
    )
    processing = Processing([device], tmp_path)
    await processing.start()
    published: list[Reading] = []
    try:
        t = 1_000.0
        for i in range(10):  # power each 0.25 s; energy at 1000.0, 1001.0 (same), 1002.0 (bad)
            batches = [Batch("meter", t, [Reading("power", 10.0 + i, t)])]
            if i % 4 == 0:
                energy = (
                    Reading.bad("energy", t, "timeout") if i == 8 else Reading("energy", 100.0, t)
                )
                batches.append(Batch("meter", t, [energy]))
            for batch in batches:
                out = await processing.process(batch)
                assert out is not None
                published += [r for b in out.batches for r in b.readings]
            t += 0.25
    finally:
        await processing.stop()
    by_tag: dict[str, list[Reading]] = {}
    for r in published:
        by_tag.setdefault(r.tag, []).append(r)
    # The first window (1000.0-1001.0) had the four power readings, not the energy batches.
    assert by_tag["power.count"][0].value == 4 and by_tag["power.mean"][0].value == 11.5
    # energy: published at 1000.0, held back at 1001.0 (no change), bad at 1002.0.
    assert [(r.ts, r.value) for r in by_tag["energy"]] == [(1000.0, 100.0), (1002.0, None)]
    # Before the first energy reading it says what it lacks; then 10 / 100 when energy came.
    assert by_tag["per_kwh"][0].reason == "no value of energy yet"
    assert by_tag["per_kwh"][1].value == 0.1
    assert by_tag["per_kwh"][-1].reason == "energy: timeout"
    assert "stopped" not in [r.value for r in by_tag["state"]]


async def test_a_serial_instrument_is_asked_only_for_the_due_group() -> None:
    """Poll mode: the oven's PV request every 100 ms, its SV request every 500 ms; the
    instrument counts what it was asked."""
    async with OvenSimulator(pv=20.0, sv=180.0, tau=None) as oven:
        device = SerialDevice.model_validate(
            {
                "name": "oven",
                "driver": "serial",
                "poll_interval": "100ms",
                "mode": "poll",
                "connection": {"port": oven.path, "timeout": "300ms"},
                "framing": {"terminator": "\\r"},
                "requests": [
                    {"send": "PV?\\r", "match": r"^PV=(?P<pv>-?\d+(\.\d+)?)$"},
                    {"send": "SV?\\r", "match": r"^SV=(?P<sv>-?\d+(\.\d+)?)$"},
                ],
                "tags": [
                    {"name": "pv", "group": "pv", "type": "float64"},
                    {"name": "sv", "group": "sv", "type": "float64", "every": "500ms"},
                ],
            }
        )
        sink = Sink()
        driver = SerialDriver(device)
        line = driver.make_line() if driver.line_key() is not None else None
        if line is not None:
            poller: Any = LinePoller(line, [(device, driver)], sink, Status(), Metrics())
        else:
            poller = DevicePoller(device, driver, sink, Status(), Metrics())
        await sink.run_until(poller, lambda: sum("sv" in _tags(b) for b in sink.batches) >= 3, 6)
        asked = oven.requests
    pv = sum("pv" in _tags(b) for b in sink.batches)
    sv = sum("sv" in _tags(b) for b in sink.batches)
    assert all(_tags(b) in ({"pv"}, {"sv"}) for b in sink.batches)
    assert pv >= 3 * sv - 3, (pv, sv)
    # One request per tag read: not both requests at every tick.
    assert pv + sv <= asked <= pv + sv + 2, (asked, pv, sv)


def test_a_profile_carries_its_scan_groups_and_calculated_tags_as_defaults(tmp_path: Path) -> None:
    """A meter's profile says once that its energy registers are read each minute and how its
    apparent power is computed; a device may change the rate."""
    path = tmp_path / "c.yaml"
    path.write_text(
        textwrap.dedent(
            """\
            agent: {id: t}
            profiles:
              meter:
                driver: modbus
                defaults:
                  scan_groups: [{name: energy, every: 1m}]
                  calculated: [{name: kva, expr: "voltage * current / 1000", unit: kVA}]
                tags:
                  - {name: voltage, table: input, address: 0, type: float32}
                  - {name: current, table: input, address: 6, type: float32}
                  - {name: energy, table: input, address: 342, type: float32, scan_group: energy}
            devices:
              - {name: m1, driver: modbus, profile: meter, connection: {host: 127.0.0.1}}
              - name: m2
                driver: modbus
                profile: meter
                connection: {host: 127.0.0.1, unit_id: 2}
                scan_groups: [{name: energy, every: 15m}]
            """
        )
    )
    config = load_config(path, DRIVERS)
    rates = {d.name: [(g.every, g.tags) for g in rate_groups(d)] for d in config.devices}
    assert rates == {
        "m1": [(1.0, ("voltage", "current")), (60.0, ("energy",))],
        "m2": [(1.0, ("voltage", "current")), (900.0, ("energy",))],
    }
    assert all([c.name for c in d.calculated] == ["kva"] for d in config.devices)  # type: ignore[attr-defined]


async def test_a_group_read_in_parts_gives_what_a_whole_read_gives() -> None:
    """Stopped after every request (``until`` already past), a Modbus group is read over
    several calls; together they give what one whole read gives: every value, a long array
    reassembled from its pieces, a hole's exception learned (split, then parked) on the way,
    an array over the hole bad whatever pieces of it were read before."""
    async with ModbusSimulator(port=free_port(), units=(1,), update_interval=None) as sim:
        sim.set_registers(1, "holding", SLOW, list(range(1, 21)))
        sim.set_illegal(1, SLOW + 5, SLOW + 5)
        tags = [
            _reg("a", SLOW, every="1m"),
            _reg("hole", SLOW + 5, every="1m"),
            _reg("b", SLOW + 7, every="1m"),
            {**_reg("arr", SLOW, every="1m"), "count": 10},
            {**_reg("arr2", SLOW + 10, every="1m"), "count": 8},
            _reg("fast", FAST),
        ]
        device = _modbus(sim.port, tags, max_registers=4)
        whole, parted = ModbusDriver(device), ModbusDriver(device)
        group = next(g for g in rate_groups(device) if g.every == 60.0)
        for driver in (whole, parted):
            await driver.connect()
        try:
            expected = {r.tag: (r.value, r.reason) for r in await whole.poll_group(group)}
            got: dict[str, tuple[Any, str | None]] = {}
            calls, done = 0, False
            while not done:
                readings, done = await parted.poll_group_until(group, 0.0)
                got.update((r.tag, (r.value, r.reason)) for r in readings)
                calls += 1
        finally:
            await whole.close()
            await parted.close()
    assert calls > 3
    assert got == expected
    assert expected["a"] == (1, None) and expected["b"] == (8, None)
    assert expected["arr2"] == (list(range(11, 19)), None)  # two pieces of 4
    # The hole, and the array over it, are bad with the exception (learned over the parts).
    assert expected["hole"] == expected["arr"] == (None, "exception 2 (illegal data address)")
