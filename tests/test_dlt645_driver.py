"""DL/T 645 meters on one line over a pty: the driver against the simulator (written from the
standard, not from the driver), the line task with a dead meter, hostile answers, and the agent
end to end through a real mosquitto."""

from __future__ import annotations

import contextlib
import itertools
import json
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from agent.ops.metrics import Metrics
from agent.south.lines import LinePoller
from drivers.base import DeviceBase, DeviceError, Driver, Quality, Reading
from drivers.dlt645.config import Dlt645Device, Dlt645Tag
from drivers.dlt645.driver import Dlt645Driver
from drivers.serial.config import SerialDevice
from drivers.serial.driver import SerialDriver
from simulators.dlt645_meters import MeterLine, frame, three_meters
from simulators.serial_instruments import PtyInstrument
from tests.brokers import Mosquitto, Subscriber
from tests.e2e import AgentRig, local_mqtt
from tests.sinks import Sink, Status

#: A tag of :func:`meter`: (name, identifier), or the whole entry.
Tag = tuple[str, str] | dict[str, Any]


def meter(
    port: str,
    address: str,
    tags: Sequence[Tag],
    *,
    protocol: str = "2007",
    interval: float = 0.1,
    timeout: str = "200ms",
) -> Dlt645Device:
    return Dlt645Device.model_validate(
        {
            "name": f"m-{address[-4:]}",
            "driver": "dlt645",
            "protocol": protocol,
            "address": address,
            "poll_interval": interval,
            # Parity N: Linux refuses a second open of a pty with parity E (EINVAL), and these
            # tests open the simulator's pty once per meter; the agent's test below keeps 8E1.
            "connection": {"port": port, "timeout": timeout, "parity": "N"},
            "tags": [t if isinstance(t, dict) else {"name": t[0], "di": t[1]} for t in tags],
        }
    )


async def poll_line_until(
    devices: Sequence[tuple[DeviceBase, Driver]],
    sink: Sink,
    done: Callable[[], bool],
    timeout: float = 5.0,
    status: Status | None = None,
    **options: Any,
) -> None:
    """The agent's line task over ``devices`` (rate groups, backoff...) on the line the first
    driver makes, until ``done``."""
    line = devices[0][1].make_line()
    poller = LinePoller(line, devices, sink, status or Status(), Metrics(), **options)
    await sink.run_until(poller, done, timeout)


@contextlib.asynccontextmanager
async def alone(device: Dlt645Device) -> AsyncIterator[Dlt645Driver]:
    """The driver on a line of its own, connected (as ``edge-agent read`` polls it)."""
    driver = Dlt645Driver(device)
    line = driver.make_line()
    driver.use_line(line)
    await driver.connect()
    try:
        yield driver
    finally:
        await driver.close()
        await line.close()


def values(readings: list[Reading]) -> dict[str, Any]:
    return {r.tag: r.value if r.quality is Quality.GOOD else r.reason for r in readings}


async def test_known_values_of_both_editions_read_exactly() -> None:
    async with MeterLine(three_meters()) as line:
        new = meter(
            line.path,
            "210220003011",
            [
                ("energy", "00010000"),
                ("energy_t1", "active_energy_t1"),
                ("voltage", "voltage_a"),
                ("current_b", "current_b"),
                ("power", "active_power_total"),
                ("pf", "power_factor_total"),
                ("hz", "frequency"),
                ("demand", "active_demand"),
                ("max_demand", "max_demand_active"),
                ("volts_again", "02010100"),
            ],
        )
        old = meter(
            line.path,
            "000000001997",
            [("energy", "active_energy_total"), ("voltage", "B611"), ("pf", "power_factor_total")],
            protocol="1997",
        )
        async with alone(new) as driver:
            got = values(await driver.poll())
            assert driver.raw_values()["voltage"] == "01 23"
        async with alone(old) as driver:
            got_old = values(await driver.poll())
    assert got == {
        "energy": 12345.67,
        "energy_t1": 4000.01,
        "voltage": 230.1,
        "current_b": -1.5,
        "power": 3.4567,
        "pf": 0.987,
        "hz": 49.98,
        "demand": 3.21,
        "max_demand": 7.5,
        "volts_again": 230.1,
    }
    assert got_old == {"energy": 5678.9, "voltage": 231.0, "pf": 0.95}
    # One request per identifier, however many tags read it.
    assert line.meters[0].asked["02010100"] == 1


async def test_follow_up_frames_are_joined() -> None:
    meters = three_meters()
    meters[0].frame_limit = 3  # every item longer than 3 bytes comes in pieces
    meters[2].frame_limit = 1
    async with MeterLine(meters) as line:
        async with alone(meter(line.path, "210220003011", [("e", "00010000")])) as driver:
            got = values(await driver.poll())
        old = meter(line.path, "000000001997", [("e", "9010")], protocol="1997")
        async with alone(old) as driver:
            got_old = values(await driver.poll())
    assert got == {"e": 12345.67}
    assert got_old == {"e": 5678.9}


async def test_an_error_answer_is_the_tags_reason_and_the_meter_stays_up() -> None:
    async with MeterLine(three_meters()) as line:
        new = meter(line.path, "210220003012", [("t", "temperature"), ("v", "voltage_a")])
        async with alone(new) as driver:
            got = values(await driver.poll())
        old = meter(line.path, "000000001997", [("q", "B640")], protocol="1997")
        async with alone(old) as driver:
            got_old = values(await driver.poll())
    assert got == {"t": "error 02 (no such data)", "v": 220.0}
    assert got_old == {"q": "error 02 (wrong identifier)"}


async def test_a_silent_meter_is_lost_with_timeout() -> None:
    meters = three_meters()
    meters[1].silent = True
    async with (
        MeterLine(meters) as line,
        alone(meter(line.path, "210220003012", [("v", "voltage_a")])) as driver,
    ):
        with pytest.raises(DeviceError) as lost:
            await driver.poll()
    assert lost.value.reason == "timeout"
    assert driver.error_counts()["timeout"] == 1


async def test_meters_share_the_line_and_a_dead_one_is_backed_off() -> None:
    """Three meters, one line task: the live two keep their cadence and values while the dead
    one is tried ever more rarely (each try costs the line one timeout)."""
    meters = three_meters()
    meters[1].silent = True
    sink, status = Sink(), Status()
    async with MeterLine(meters) as line:
        devices = [
            meter(line.path, "210220003011", [("v", "voltage_a")]),
            meter(line.path, "210220003012", [("v", "voltage_a")], timeout="100ms"),
            meter(line.path, "000000001997", [("v", "voltage_a")], protocol="1997"),
        ]
        drivers: list[tuple[Dlt645Device, Driver]] = [(d, Dlt645Driver(d)) for d in devices]
        done = lambda: len(sink.of("m-3011")) >= 12  # noqa: E731
        await poll_line_until(drivers, sink, done, 10, status, backoff_initial=0.3)
    good = sink.of("m-3011")
    assert all(values(b.readings) == {"v": 230.1} for b in good)
    assert all(values(b.readings) == {"v": 231.0} for b in sink.of("m-1997"))
    assert len(sink.of("m-1997")) >= 10
    dead = sink.of("m-3012")
    assert dead and all(values(b.readings) == {"v": "timeout"} for b in dead)
    assert len(dead) <= 5, len(dead)  # backed off: far fewer tries than the others' polls
    assert ("m-3012", "down", "timeout") in status.changes


class Hostile(PtyInstrument):
    """A meter played by the test: ``answer(request)`` gives the bytes to put on the line."""

    def __init__(self, answer: Callable[[bytes], bytes]) -> None:
        super().__init__()
        self.answer = answer

    def on_request_bytes(self, data: bytes) -> None:
        self.write(self.answer(data))


ADDR = bytes.fromhex("113000200221")  # 210220003011 on the wire
VOLTS = bytes.fromhex("00010102") + b"\x01\x23"  # DI 02010100 lowest first, then 230.1


def endless(request: bytes) -> bytes:
    """A meter that answers every read, and every read of follow-up data, with "more to come"."""
    body = request.lstrip(b"\xfe")
    data = bytes((b - 0x33) & 0xFF for b in body[10:-2])
    return frame(ADDR, 0xB1 if body[8] == 0x11 else 0xB2, data + b"\x01")


@pytest.mark.parametrize(
    ("name", "answer", "reason"),
    [
        ("noise then the answer", lambda r: b"\x00\xff\x13" + frame(ADDR, 0x91, VOLTS), None),
        ("echo, then the answer", lambda r: r + frame(ADDR, 0x91, VOLTS), None),
        (
            "a neighbour's answer, then ours",
            lambda r: frame(bytes.fromhex("123000200221"), 0x91, VOLTS) + frame(ADDR, 0x91, VOLTS),
            None,
        ),
        (
            "a late answer to another item, then ours",
            lambda r: (
                frame(ADDR, 0x91, bytes.fromhex("00000100") + b"\x00\x00\x00\x00")
                + frame(ADDR, 0x91, VOLTS)
            ),
            None,
        ),
        ("corrupted", lambda r: frame(ADDR, 0x91, VOLTS)[:-2] + b"\x00\x16", "checksum"),
        ("wrong identifier", lambda r: frame(ADDR, 0x91, b"\x00\x02\x01\x02\x01\x23"), None),
        ("not BCD", lambda r: frame(ADDR, 0x91, VOLTS[:4] + b"\xfa\xff"), "bad value"),
        ("short", lambda r: frame(ADDR, 0x91, VOLTS[:5]), "bad value"),
        ("wrong function", lambda r: frame(ADDR, 0x94, b""), "wrong answer"),
        ("error without code", lambda r: frame(ADDR, 0xD1, b""), "error (no code)"),
        ("endless follow-ups", lambda r: endless(r), "endless follow-ups"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
async def test_hostile_answers_are_reasons_never_crashes(
    name: str, answer: Callable[[bytes], bytes], reason: str | None
) -> None:
    async with (
        Hostile(answer) as sim,
        alone(meter(sim.path, "210220003011", [("v", "voltage_a")])) as driver,
    ):
        readings = await driver.poll()
        second = await driver.poll()  # the line is usable after whatever came before
    got = values(readings)["v"]
    if name == "wrong identifier":
        assert got == "wrong identifier"
    elif reason is None:
        assert got == 230.1, got
    else:
        assert got == reason, got
    assert values(second)["v"] == got


def agent_config(tmp: Path, broker: int, path: str) -> Path:
    doc = {
        "agent": {"id": "meters-gw", "data_dir": str(tmp / "data")},
        "mqtt": local_mqtt(broker),
        "buffer": {"max_size": "16MB"},
        "metrics": {"listen": None},
        "profiles": {
            "three-phase": {
                "driver": "dlt645",
                "tags": [
                    {"name": "energy_kwh", "di": "active_energy_total", "unit": "kWh"},
                    {"name": "voltage_a", "di": "voltage_a", "unit": "V"},
                ],
            }
        },
        "devices": [
            {
                "name": "meter-1",
                "driver": "dlt645",
                "profile": "three-phase",
                "poll_interval": "200ms",
                "protocol": "2007",
                "address": "210220003011",
                "connection": {"port": path, "baudrate": 2400, "parity": "E", "timeout": "300ms"},
                "tags": [{"name": "current_b", "di": "0202" + "0200"}],
            },
            {
                "name": "meter-2",
                "driver": "dlt645",
                "profile": "three-phase",
                "poll_interval": "200ms",
                "address": "210220003012",
                "connection": {"port": path, "baudrate": 2400, "parity": "E", "timeout": "300ms"},
            },
            {
                "name": "old-meter",
                "driver": "dlt645",
                "profile": "three-phase",
                "poll_interval": "200ms",
                "protocol": 1997,
                "address": "000000001997",
                "connection": {"port": path, "baudrate": 2400, "parity": "E", "timeout": "300ms"},
            },
        ],
    }
    file = tmp / "agent.yaml"
    file.write_text(json.dumps(doc))
    return file


async def test_three_meters_on_one_pty_reach_the_broker(tmp_path: Path, broker: Mosquitto) -> None:
    async with MeterLine(three_meters()) as line:
        cfg = agent_config(tmp_path, broker.port, line.path)
        sub = Subscriber(broker.port, ["edge/meters-gw/+/data"]).start()
        try:
            async with AgentRig(cfg):
                names = ("meter-1", "meter-2", "old-meter")
                msgs = await sub.wait_for(
                    lambda m: all(any(x.topic.endswith(f"/{n}/data") for x in m) for n in names)
                )
        finally:
            sub.stop()
    first = {
        n: next(m.json() for m in msgs if m.topic == f"edge/meters-gw/{n}/data")
        for n in ("meter-1", "meter-2", "old-meter")
    }
    assert first["meter-1"]["values"] == {
        "energy_kwh": 12345.67,
        "voltage_a": 230.1,
        "current_b": -1.5,
    }
    assert first["meter-2"]["values"] == {"energy_kwh": 200.0, "voltage_a": 220.0}
    assert first["old-meter"]["values"] == {"energy_kwh": 5678.9, "voltage_a": 231.0}
    assert all("quality" not in doc for doc in first.values())


async def test_a_slow_rate_group_asks_only_for_its_own_items() -> None:
    """Energy each second, voltage each 100 ms on one meter: the voltage polls do not ask for
    the energy (each request costs the line about 200 ms at 2400 baud)."""
    sink = Sink()
    async with MeterLine(three_meters()) as line:
        tags: list[Tag] = [("v", "voltage_a")]
        tags.append({"name": "e", "di": "active_energy_total", "every": "1s"})
        device = meter(line.path, "210220003011", tags)
        done = lambda: sum(len(b.readings) for b in sink.of("m-3011")) >= 14  # noqa: E731
        await poll_line_until([(device, Dlt645Driver(device))], sink, done, 10)
    asked = line.meters[0].asked
    assert asked["02010100"] >= 9 and asked["00010000"] <= 2, asked
    got = [r for b in sink.of("m-3011") for r in b.readings]
    assert {r.value for r in got if r.tag == "v"} == {230.1}
    assert {r.value for r in got if r.tag == "e"} == {12345.67}


class MetersAndOven(MeterLine):
    """The meters, and an ASCII oven controller answering ``01PV?`` on the same pty."""

    def on_request_bytes(self, data: bytes) -> None:
        if data == b"01PV?\r":
            self.send_frame(b"01PV=182.5\r")
            return
        super().on_request_bytes(data)


async def test_a_meter_shares_its_port_with_a_serial_instrument() -> None:
    sink = Sink()
    async with MetersAndOven(three_meters()) as line:
        oven = SerialDevice.model_validate(
            {
                "name": "oven",
                "driver": "serial",
                "mode": "poll",
                "poll_interval": "100ms",
                "connection": {"port": line.path, "timeout": "200ms"},
                "framing": {"terminator": "\\r"},
                "requests": [{"send": "01PV?\\r", "match": r"^01PV=(?P<pv>[\d.]+)$"}],
                "tags": [{"name": "pv", "type": "float64"}],
            }
        )
        meter_1 = meter(line.path, "210220003011", [("v", "voltage_a")])
        both: list[tuple[DeviceBase, Driver]] = [
            (oven, SerialDriver(oven)),
            (meter_1, Dlt645Driver(meter_1)),
        ]
        done = lambda: len(sink.of("oven")) >= 3 and len(sink.of("m-3011")) >= 3  # noqa: E731
        await poll_line_until(both, sink, done)
    assert all(values(b.readings) == {"pv": 182.5} for b in sink.of("oven"))
    assert all(values(b.readings) == {"v": 230.1} for b in sink.of("m-3011"))


async def test_a_profile_tag_the_edition_lacks_is_bad_and_the_others_read() -> None:
    """Profile tags join a device after validation (``frequency`` has no -1997 identifier):
    that tag is bad with the reason, the meter's other tags read."""
    async with MeterLine(three_meters()) as line:
        old = meter(line.path, "000000001997", [("v", "voltage_a")], protocol="1997")
        merged = old.model_copy(update={"tags": [Dlt645Tag(name="hz", di="frequency"), *old.tags]})
        async with alone(merged) as driver:
            got = values(await driver.poll())
    assert got == {"hz": "not a -1997 identifier", "v": 231.0}


async def test_a_dead_meter_is_down_on_the_broker_and_the_others_keep_publishing(
    tmp_path: Path, broker: Mosquitto
) -> None:
    meters = three_meters()
    meters[1].silent = True
    async with MeterLine(meters) as line:
        cfg = agent_config(tmp_path, broker.port, line.path)
        sub = Subscriber(broker.port, ["edge/meters-gw/#"]).start()
        try:
            async with AgentRig(cfg):
                msgs = await sub.wait_for(
                    lambda m: (
                        sum(x.topic.endswith("/meter-1/data") for x in m) >= 5
                        and any(x.topic.endswith("/meter-2/status") for x in m)
                    )
                )
        finally:
            sub.stop()
    down = [m.json() for m in msgs if m.topic == "edge/meters-gw/meter-2/status"]
    assert down[-1]["state"] == "down" and down[-1]["reason"] == "timeout", down
    alive = [m.json() for m in msgs if m.topic == "edge/meters-gw/meter-1/data"]
    assert all(doc["values"]["voltage_a"] == 230.1 for doc in alive)
    dead = [m.json() for m in msgs if m.topic == "edge/meters-gw/meter-2/data"]
    assert all(doc.get("values", {}).get("voltage_a") is None for doc in dead), dead


async def test_a_slow_rate_group_stops_for_the_fast_one_between_two_requests() -> None:
    """At 9600 baud a request and its answer take ~45 ms: nine slow identifiers each second take
    ~400 ms, more than the 200 ms between two voltage polls. The slow group stops between two
    requests when the voltage is due, so a voltage reading waits for one request at most, not
    for the rest of the slow group; every slow identifier is still read each second."""
    slow = ["00010000", "00010100", "00010200", "00020000", "02010200"]
    slow += ["02010300", "02020100", "02020200", "02030000"]
    sink = Sink()
    async with MeterLine(three_meters(), baudrate=9600) as line:
        tags: list[Tag] = [("v", "02010100")]
        tags += [{"name": f"s{di}", "di": di, "every": "1s"} for di in slow]
        device = meter(line.path, "210220003011", tags, interval=0.2, timeout="300ms")

        def done() -> bool:
            return sum(r.tag == "s02030000" for b in sink.of("m-3011") for r in b.readings) >= 3

        await poll_line_until([(device, Dlt645Driver(device))], sink, done, 15)
    got = [r for b in sink.of("m-3011") for r in b.readings]
    fast = [r.ts for r in got if r.tag == "v"]
    gaps = [b - a for a, b in itertools.pairwise(fast)]
    # One slow request (~45 ms) at most beside the 200 ms cadence; without stopping, a voltage
    # poll would wait for the whole slow group (~400 ms).
    assert len(gaps) >= 8 and max(gaps) < 0.2 + 0.15, gaps
    assert all(r.quality is Quality.GOOD for r in got)
    parts = [b for b in sink.of("m-3011") if not any(r.tag == "v" for r in b.readings)]
    ticks = sum(any(r.tag == "s00010000" for r in b.readings) for b in parts)
    assert len(parts) > ticks  # the slow group did stop: a tick came in several batches
