"""The docs' general claims about device-side keys and commands, checked for every driver.

The docs (docs/configuration.md, the device pages under docs/devices/, docs/processing.md and
docs/operations.md; the README before them) say that the edge-processing keys (deadband,
deadband_percent, max_silence, window, waveform, counter, alarms, state) work on any device, that
``profile`` merges tags, that a device's ``commands`` limit and ``enabled`` are keys of every
driver, that writes are off unless a tag allows them, that ``edge-agent read`` and ``edge-agent
status`` (and the status page) show any device, and so on. A claim of that kind is only as good as
the driver nobody tried it on, so the tests here are generated from the driver registry
(``load_drivers()``, the entry points of ``edge_agent.drivers``), not from a hand-picked list: a new
driver is covered without editing this file, and until it has an entry in ``KINDS`` (how to get a
live device of it) every live test fails with a message saying so.

A driver can have several kinds of device that behave differently enough to break a claim
(OPC UA subscribes or polls; a serial instrument streams or answers requests, and in poll mode
it shares a line task): each is a kind of its own.

The live claims share one scenario per kind (``record``): real simulators (Modbus TCP, the OPC
UA lathe, serial instruments on pseudo-terminals), the agent built as ``edge-agent run`` builds
it, a real mosquitto; the tests then judge what reached the broker, the status page, the
command replies and the CLI's output. One scenario per kind keeps the module within a minute.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import io
import json
import math
import struct
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import pytest

from agent.app import cli
from agent.app.config import ConfigErrors, load_config
from agent.app.runtime import Agent
from agent.south.registry import load_drivers
from drivers.base import Driver
from simulators.dlt645_meters import Meter, MeterLine
from simulators.mc_press import McPressSimulator
from simulators.modbus_tcp import ModbusSimulator
from simulators.opcua_cnc import POINTS as OPCUA_POINTS
from simulators.opcua_cnc import WAVE_POINTS, CncSimulator
from simulators.s7_moulding import MouldingSimulator
from simulators.serial_instruments import OvenSimulator, ScaleSimulator
from tests.brokers import Mosquitto, Received, Subscriber, free_port
from tests.e2e import local_mqtt, until
from tests.readme import DOCS

DRIVERS = load_drivers()

# -- how to get a live device of each driver ------------------------------------------------------


SimT = TypeVar("SimT")


class Live(abc.ABC, Generic[SimT]):
    """A running simulated device: its simulator, where it is, and the test's hands on it."""

    def __init__(self, sim: SimT, where: Any) -> None:
        self.sim = sim
        self.where = where  # what the device entry needs to reach it (a port, a path, an endpoint)

    @abc.abstractmethod
    async def set(self, value: float) -> None:
        """Make the device's numeric point hold ``value``."""

    @abc.abstractmethod
    async def fail(self) -> None:
        """Make the device stop answering (every tag becomes bad)."""

    @abc.abstractmethod
    async def revive(self) -> None:
        """Undo ``fail``."""

    async def held(self) -> float | None:
        """What the device holds in its writable point (kinds whose driver writes)."""
        return None


@dataclass(frozen=True)
class Kind:
    """One kind of device of a driver, as the README's claims need it.

    ``entry(where)`` gives the device keys beyond name, driver and tags; ``num`` addresses the
    numeric point ``Live.set`` controls (every tag of the scenario reads it, each with other
    processing keys); ``other`` a second point; ``writable`` a writable numeric point with
    ``min: 0, max: 500`` when the driver supports writes; ``array`` a point whose value is a
    list, when the driver reads lists. ``by_exception``: the device itself hands the agent a
    reading only when a value changes (OPC UA subscribe mode), which the README says limits the
    keys that act on time (Edge processing) and what ``read`` answers.
    """

    name: str
    driver: str
    entry: Callable[[Any], dict[str, Any]]
    num: dict[str, Any]
    other: dict[str, Any]
    start: Callable[[], contextlib.AbstractAsyncContextManager[Live[Any]]]
    fake_where: Any
    writable: dict[str, Any] | None = None
    array: dict[str, Any] | None = None
    by_exception: bool = False


def tcp_entry(port: Any, **connection: Any) -> dict[str, Any]:
    """``Kind.entry`` of a device on a TCP port of this host, polled every 100 ms."""
    conn = {"host": "127.0.0.1", "port": port, "timeout": "300ms", **connection}
    return {"poll_interval": "100ms", "connection": conn}


class Server(Protocol):
    """A simulator that listens on a port of its own."""

    async def start(self) -> None: ...
    async def stop(self) -> None: ...


ServerT = TypeVar("ServerT", bound=Server)


class ServerLive(Live[ServerT]):
    """A device that is a server of its own (Modbus TCP, OPC UA): it fails by stopping, so the
    agent's connection is refused, and revives by starting again on the same port."""

    async def fail(self) -> None:
        await self.sim.stop()

    async def revive(self) -> None:
        await self.sim.start()


# Modbus TCP ---------------------------------------------------------------------------------------

MB_NUM, MB_SP, MB_OTHER, MB_WAVE = 1150, 1151, 1152, 1160  # free registers of the simulator's map


class ModbusLive(ServerLive[ModbusSimulator]):
    async def set(self, value: float) -> None:
        self.sim.set_registers(1, "holding", MB_NUM, [int(value)])

    async def held(self) -> float | None:
        return float(self.sim.registers(1, "holding", MB_SP, 1)[0])


@contextlib.asynccontextmanager
async def modbus_live() -> AsyncIterator[Live[Any]]:
    async with ModbusSimulator(port=free_port(), units=(1,), update_interval=None) as sim:
        sim.set_registers(1, "holding", MB_OTHER, [7])
        # A waveform: int16 samples 0, 100, 0, -100... (two's complement on the wire).
        sim.set_registers(1, "holding", MB_WAVE, [0, 100, 0, 65436] * 2)
        yield ModbusLive(sim, sim.port)


MODBUS_TCP = Kind(
    name="modbus-tcp",
    driver="modbus",
    entry=lambda port: tcp_entry(port, unit_id=1),
    num={"table": "holding", "address": MB_NUM, "type": "uint16"},
    other={"table": "holding", "address": MB_OTHER, "type": "uint16"},
    writable={
        "table": "holding",
        "address": MB_SP,
        "type": "uint16",
        "writable": True,
        "min": 0,
        "max": 500,
    },
    array={"table": "holding", "address": MB_WAVE, "type": "int16", "count": 8},
    start=modbus_live,
    fake_where=5020,
)

# Serial instruments -------------------------------------------------------------------------------


class OvenLive(Live[OvenSimulator]):
    """A temperature controller answering ``PV?`` and ``SV?`` (poll mode, on a line task)."""

    async def set(self, value: float) -> None:
        self.sim.pv = value

    async def fail(self) -> None:
        self.sim.silent = True

    async def revive(self) -> None:
        self.sim.silent = False


@contextlib.asynccontextmanager
async def oven_live() -> AsyncIterator[Live[Any]]:
    async with OvenSimulator(pv=0.0, sv=180.0, tau=None) as sim:
        yield OvenLive(sim, sim.path)


def _serial_entry(terminator: str, mode: str, **keys: Any) -> Callable[[Any], dict[str, Any]]:
    """The device keys of an instrument on the pseudo-terminal at ``path``: polled every
    100 ms, 300 ms to answer, lines ending in ``terminator``; ``keys`` say what the mode needs."""

    def entry(path: Any) -> dict[str, Any]:
        return {
            "poll_interval": "100ms",
            "connection": {"port": path, "timeout": "300ms"},
            "framing": {"terminator": terminator},
            "mode": mode,
            **keys,
        }

    return entry


SERIAL_POLL = Kind(
    name="serial-poll",
    driver="serial",
    entry=_serial_entry(
        "\\r",
        "poll",
        requests=[
            {"send": "PV?\\r", "match": r"^PV=(?P<pv>-?\d+(\.\d+)?)$"},
            {"send": "SV?\\r", "match": r"^SV=(?P<sv>-?\d+(\.\d+)?)$"},
        ],
    ),
    num={"group": "pv", "type": "float64"},
    other={"group": "sv", "type": "float64"},
    start=oven_live,
    fake_where="/dev/ttyUSB7",
)


class ScaleLive(Live[ScaleSimulator]):
    """A scale streaming its weight every 20 ms, faster than the agent polls (stream mode)."""

    def __init__(self, sim: ScaleSimulator) -> None:
        super().__init__(sim, sim.path)
        self._task: asyncio.Task[None] | None = None

    async def _stream(self) -> None:
        while True:
            self.sim.send()
            await asyncio.sleep(0.02)  # the instrument's own rate

    async def set(self, value: float) -> None:
        self.sim.weight = value

    async def fail(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def revive(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._stream())


@contextlib.asynccontextmanager
async def scale_live() -> AsyncIterator[Live[Any]]:
    async with ScaleSimulator(rate=None) as sim:
        live = ScaleLive(sim)
        sim.weight, sim.stable = 0.0, True
        await live.revive()
        try:
            yield live
        finally:
            await live.fail()


SERIAL_STREAM = Kind(
    name="serial-stream",
    driver="serial",
    entry=_serial_entry(
        "\\r\\n", "stream", match=r"^(?P<status>ST|US),GS,\s*(?P<weight>[+-]?\d+\.\d+)\s*kg$"
    ),
    num={"group": "weight", "type": "float64"},
    other={"group": "status", "type": "bool", "true_value": "ST"},
    start=scale_live,
    fake_where="/dev/ttyUSB8",
)

# OPC UA -------------------------------------------------------------------------------------------


class LatheLive(ServerLive[CncSimulator]):
    async def set(self, value: float) -> None:
        await self.sim.set_value("Spindle/Speed", float(value))

    async def held(self) -> float | None:
        return float(await self.sim.value("Setpoints/FeedOverride"))


@contextlib.asynccontextmanager
async def lathe_live() -> AsyncIterator[Live[Any]]:
    sim = CncSimulator(port=free_port(), update_interval=None)
    await sim.start()
    try:
        wave = [round(math.sin(2 * math.pi * 4 * i / WAVE_POINTS), 6) for i in range(WAVE_POINTS)]
        await sim.set_value("Spindle/Vibration", wave)
        yield LatheLive(sim, sim.endpoint)
    finally:
        await sim.stop()


def _opcua_entry(mode: str) -> Callable[[Any], dict[str, Any]]:
    def entry(endpoint: Any) -> dict[str, Any]:
        # Subscribe mode refuses poll_interval: its publishing interval is its cadence.
        timing = {"publishing_interval" if mode == "subscribe" else "poll_interval": "100ms"}
        return {
            "connection": {"endpoint": endpoint, "timeout": "1s", "keepalive": "500ms"},
            "mode": mode,
            **timing,
        }

    return entry


def _node(path: str) -> dict[str, Any]:
    return {"node": OPCUA_POINTS[path].node_string}


OPCUA_SUBSCRIBE, OPCUA_POLL = (
    Kind(
        name=f"opcua-{mode}",
        driver="opcua",
        entry=_opcua_entry(mode),
        num=_node("Spindle/Speed"),
        other=_node("Spindle/Load"),
        # The server's deadband keeps the writes' changes out of the subscription's publishes:
        # ``read`` waits for the one publish that carries the numeric point's change.
        writable={
            **_node("Setpoints/FeedOverride"),
            "writable": True,
            "min": 0,
            "max": 500,
            **({"deadband": 1000} if mode == "subscribe" else {}),
        },
        array=_node("Spindle/Vibration"),
        start=lathe_live,
        fake_where="opc.tcp://127.0.0.1:4840/cnc",
        by_exception=mode == "subscribe",
    )
    for mode in ("subscribe", "poll")
)

# Siemens S7 ---------------------------------------------------------------------------------------

S7_DB = 100  # the moulding machine's free data block


class MouldingLive(ServerLive[MouldingSimulator]):
    async def set(self, value: float) -> None:
        self.sim.put(S7_DB, 0, struct.pack(">h", int(value)))

    async def held(self) -> float | None:
        return float(struct.unpack(">h", self.sim.get(S7_DB, 4, 2))[0])


@contextlib.asynccontextmanager
async def moulding_live() -> AsyncIterator[Live[Any]]:
    async with MouldingSimulator(free_port(), update_interval=None) as sim:
        sim.put(S7_DB, 2, struct.pack(">h", 7))
        # A waveform: INT samples 0, 100, 0, -100...
        sim.put(S7_DB, 10, struct.pack(">8h", *[0, 100, 0, -100] * 2))
        yield MouldingLive(sim, sim.port)


S7_MOULDING = Kind(
    name="s7",
    driver="s7",
    entry=tcp_entry,
    num={"address": f"DB{S7_DB}.DBW0", "type": "INT"},
    other={"address": f"DB{S7_DB}.DBW2", "type": "INT"},
    writable={
        "address": f"DB{S7_DB}.DBW4",
        "type": "INT",
        "writable": True,
        "min": 0,
        "max": 500,
    },
    array={"address": f"DB{S7_DB}.DBB10", "type": "INT", "count": 8},
    start=moulding_live,
    fake_where=1102,
)

# DL/T 645 meters ---------------------------------------------------------------------------------

METER_ADDRESS = "210220003011"


class MeterLive(Live[MeterLine]):
    """A -2007 meter on a pty line; the numeric point is its forward active energy (XXXXXX.XX
    kWh, room for every value the claims set)."""

    @property
    def meter(self) -> Meter:
        return self.sim.meters[0]

    async def set(self, value: float) -> None:
        self.meter.values["00010000"] = float(value)

    async def fail(self) -> None:
        self.meter.silent = True

    async def revive(self) -> None:
        self.meter.silent = False


@contextlib.asynccontextmanager
async def meter_live() -> AsyncIterator[Live[Any]]:
    meter = Meter(METER_ADDRESS, values={"00010000": 0.0, "02010100": 7.0})
    async with MeterLine([meter]) as sim:
        yield MeterLive(sim, sim.path)


DLT645_METER = Kind(
    name="dlt645",
    driver="dlt645",
    entry=lambda path: {
        "poll_interval": "100ms",
        "address": METER_ADDRESS,
        # Parity N: Linux refuses a second open of a pty with parity E (``read`` opens it again).
        "connection": {"port": path, "timeout": "300ms", "parity": "N"},
    },
    num={"di": "active_energy_total"},
    other={"di": "voltage_a"},
    start=meter_live,
    fake_where="/dev/ttyUSB9",
)

# Mitsubishi MC protocol -------------------------------------------------------------------------

MC_NUM, MC_SP, MC_OTHER = "D1150", "D1151", "D1152"  # free data registers of the press's PLC


class McLive(ServerLive[McPressSimulator]):
    async def set(self, value: float) -> None:
        self.sim.set_at(MC_NUM, "uint16", int(value))

    async def held(self) -> float | None:
        return float(self.sim.get_at(MC_SP, "uint16"))


@contextlib.asynccontextmanager
async def mc_live() -> AsyncIterator[Live[Any]]:
    async with McPressSimulator(free_port(), update_interval=None) as sim:
        sim.set_at(MC_OTHER, "uint16", 7)
        yield McLive(sim, sim.port)


MC_3E = Kind(
    name="mc",
    driver="mc",
    entry=tcp_entry,
    num={"address": MC_NUM, "type": "uint16"},
    other={"address": MC_OTHER, "type": "uint16"},
    writable={"address": MC_SP, "type": "uint16", "writable": True, "min": 0, "max": 500},
    start=mc_live,
    fake_where=5007,
)

#: Per registered driver, its kinds of device. A driver missing here fails every live test.
KINDS: dict[str, tuple[Kind, ...]] = {
    "dlt645": (DLT645_METER,),
    "mc": (MC_3E,),
    "modbus": (MODBUS_TCP,),
    "serial": (SERIAL_POLL, SERIAL_STREAM),
    "opcua": (OPCUA_SUBSCRIBE, OPCUA_POLL),
    "s7": (S7_MOULDING,),
}


def kinds_of_registered_drivers() -> list[Any]:
    """One pytest param per kind of every registered driver; a driver without an entry in
    ``KINDS`` becomes a param whose tests fail, saying what to add."""
    params: list[Any] = []
    for name in sorted(DRIVERS):
        for kind in KINDS.get(name, ()):
            params.append(pytest.param(kind, id=kind.name))
        if name not in KINDS:
            params.append(pytest.param(name, id=f"{name}-missing"))
    return params


def first_kinds() -> list[Any]:
    """One kind per registered driver (for the claims that need no live device)."""
    return [
        pytest.param(KINDS[name][0] if name in KINDS else name, id=name) for name in sorted(DRIVERS)
    ]


def need_kind(kind: Kind | str) -> Kind:
    if isinstance(kind, str):
        pytest.fail(
            f"driver {kind!r} is registered (edge_agent.drivers) but tests/test_claims_drivers.py "
            "has no KINDS entry for it: add how to get a live device of it, one numeric tag, "
            "and a writable tag if it supports writes"
        )
    return kind


def writes_supported(driver: type[Driver]) -> bool:
    """Whether the driver's tags can be writable at all (its tag model has the key)."""
    tag_model = driver.device_model.model_fields["tags"].annotation
    args = getattr(tag_model, "__args__", ())
    return any("writable" in getattr(a, "model_fields", {}) for a in args)


# -- configs --------------------------------------------------------------------------------------

UNIT = "U-claims"  # a unit nobody would print by accident
#: The value a by-exception device changes to while ``read`` waits for its next poll.
READ_VALUE = 101


def tag(kind: Kind, name: str, **keys: Any) -> dict[str, Any]:
    return {"name": name, **kind.num, **keys}


def scenario_config(kind: Kind, where: Any, tmp: Path, broker_port: int, metrics: int) -> Path:
    """The scenario's config: device ``dev`` (tags from profile ``kind`` first, then its own,
    each reading the numeric point with different processing keys, plus machine state rules and
    a command limit), and device ``off`` with ``enabled: false`` on the same connection."""
    own = [
        {"name": "other", **kind.other, "deadband": 0},
        tag(kind, "db", deadband=5),
        tag(kind, "dbp", deadband_percent=10),
        tag(kind, "silent", deadband=1000, max_silence="600ms"),
        tag(kind, "win", window={"length": "1s", "stats": ["min", "max", "mean", "last", "count"]}),
        tag(kind, "cnt", counter={"kind": "parts"}),
        tag(kind, "alm", alarms=[{"name": "high", "on": "> 150", "off": "< 120"}]),
        tag(kind, "wf", waveform={"sample_rate": 10, "length": 16, "features": ["rms", "peak"]}),
    ]
    if kind.writable is not None:
        own.append({"name": "sp", **kind.writable})
    if kind.array is not None:
        own.append(
            {"name": "wave", **kind.array, "waveform": {"sample_rate": 100, "features": ["rms"]}}
        )
    doc = {
        "agent": {"id": agent_id(kind), "data_dir": str(tmp / "data")},
        "mqtt": local_mqtt(broker_port),
        "buffer": {"max_size": "16MB"},
        "metrics": {"listen": f"127.0.0.1:{metrics}"},
        "profiles": {
            "kind": {
                "driver": kind.driver,
                "tags": [tag(kind, "plain", unit=UNIT, deadband=0)],
            }
        },
        "devices": [
            {
                "name": "dev",
                "driver": kind.driver,
                "profile": "kind",
                **kind.entry(where),
                "state": {
                    "rules": [{"state": "running", "when": "plain > 150"}],
                    "default": "idle",
                    "down": "stopped",
                },
                "commands": {"burst": 3, "per_second": 0.1},
                "tags": own,
            },
            {
                "name": "off",
                "driver": kind.driver,
                "enabled": False,
                **kind.entry(where),
                "tags": [tag(kind, "plain")],
            },
        ],
    }
    path = tmp / "agent.yaml"
    path.write_text(json.dumps(doc, indent=1))
    return path


def agent_id(kind: Kind) -> str:
    return f"claims-{kind.name}"


def one_device_config(tmp: Path, kind: Kind, device: dict[str, Any], **top: Any) -> Path:
    """A config with one device of ``kind`` (not reachable: for ``validate``-level claims)."""
    doc = {
        "agent": {"id": "claims", "data_dir": str(tmp / "data")},
        "mqtt": {"host": "127.0.0.1"},
        "metrics": {"listen": None},
        **top,
        "devices": [
            {"name": "dev", "driver": kind.driver, **kind.entry(kind.fake_where), **device}
        ],
    }
    path = tmp / "config.yaml"
    path.write_text(json.dumps(doc, indent=1))
    return path


def problems(path: Path) -> list[str]:
    """``key.path: message`` of every problem ``validate`` finds; [] when the file is valid."""
    try:
        load_config(path, DRIVERS, resolve_secrets=False)
    except ConfigErrors as exc:
        return [f"{i.path}: {i.message}" for i in exc.issues]
    return []


def run_cli(*args: str) -> tuple[int, str, str]:
    """``edge-agent ARGS`` (the console script's own ``main``): exit code, stdout, stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(list(args))
    return code, out.getvalue(), err.getvalue()


# -- the live scenario ----------------------------------------------------------------------------


@dataclass
class Record:
    """What one kind's scenario saw, for the tests to judge."""

    kind: Kind
    tag_order: list[str] = field(default_factory=list)
    direct_read: tuple[int, str, str] = (0, "", "")
    agent_read: tuple[int, str, str] = (0, "", "")
    agent_read_s: float = 0.0
    messages: list[Received] = field(default_factory=list)
    status: dict[str, Any] = field(default_factory=dict)
    page: str = ""
    replies: dict[str, dict[str, Any]] = field(default_factory=dict)
    held_after_write: float | None = None
    polls_steady: int = 0  # polls of ``dev`` during the steady phase after the small change
    steady: int = 0  # messages received by the end of the first phase (steady at 100 for ~4 s)
    waited: dict[str, bool] = field(default_factory=dict)

    def topic(self, suffix: str) -> str:
        return f"edge/{agent_id(self.kind)}/{suffix}"

    def data(self, device: str = "dev") -> list[dict[str, Any]]:
        return [m.json() for m in self.messages if m.topic == self.topic(f"{device}/data")]

    def values(self, name: str, upto: int | None = None) -> list[Any]:
        """Every value of ``name`` published on dev's data stream (of the first ``upto``
        messages received), in order."""
        return _values(self.messages[:upto], self.topic("dev/data"), name)


def _values(messages: list[Received], topic: str, name: str) -> list[Any]:
    return [
        m.json()["values"][name]
        for m in messages
        if m.topic == topic and name in m.json().get("values", {})
    ]


async def _soft(label: str, record: Record, wait: Awaitable[Any]) -> None:
    """Await a condition the claim under test should make true; a claim that does not hold
    must not stop the scenario, so a timeout is recorded (and judged by its test)."""
    try:
        await wait
        record.waited[label] = True
    except (AssertionError, TimeoutError):
        record.waited[label] = False


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as response:
        return bytes(response.read())


async def scenario(kind: Kind, tmp: Path, broker: Mosquitto) -> Record:
    record = Record(kind)
    metrics = free_port()
    async with kind.start() as live:
        await live.set(100)
        cfg = scenario_config(kind, live.where, tmp, broker.port, metrics)
        config = load_config(cfg, DRIVERS, resolve_secrets=True)
        record.tag_order = [t.name for t in next(d for d in config.devices if d.name == "dev").tags]
        # Commissioning before the service runs: edge-agent read polls the device itself.
        record.direct_read = await asyncio.to_thread(run_cli, "read", "-c", str(cfg), "dev")
        prefix = f"edge/{agent_id(kind)}"
        sub = Subscriber(broker.port, [f"{prefix}/#"], client_id=f"{agent_id(kind)}-sub").start()
        topic = f"{prefix}/dev/data"

        def seen(name: str, value: Any, after: int = 0) -> Callable[[list[Received]], bool]:
            return lambda m: value in _values(m[after:], topic, name)

        agent = Agent(config, config_path=cfg)
        await agent.start()
        try:
            poller = next(p for p in agent.polled if p.device.name == "dev")
            await sub.wait_for(seen("plain", 100), timeout=15)
            # Steady at 100: max_silence republishes, windows close on the second.
            await _soft(
                "steady",
                record,
                sub.wait_for(
                    lambda m: (
                        _values(m, topic, "silent").count(100) >= 2
                        and bool(_values(m, topic, "win.count"))
                    ),
                    timeout=4,
                ),
            )
            record.steady = len(sub.messages)
            # A small change (within every deadband), then steady for a few polls.
            mark = len(sub.messages)
            await live.set(103)
            await sub.wait_for(seen("plain", 103, mark))
            cycles = poller.cycles
            await until(lambda: poller.cycles >= cycles + 6)
            record.polls_steady = poller.cycles - cycles
            # A big change: state running, alarm raised, counter counting.
            mark = len(sub.messages)
            await live.set(200)
            await sub.wait_for(seen("plain", 200, mark))
            await _soft("alarm raised", record, sub.wait_for(_event("raise", prefix), timeout=3))
            mark = len(sub.messages)
            await live.set(100)
            await sub.wait_for(seen("plain", 100, mark))
            await _soft("alarm cleared", record, sub.wait_for(_event("clear", prefix), timeout=3))
            await _soft(
                "features",
                record,
                sub.wait_for(
                    lambda m: (
                        bool(_values(m, topic, "wf.rms"))
                        and (kind.array is None or bool(_values(m, topic, "wave.rms")))
                    ),
                    timeout=4,
                ),
            )
            await commands(agent, live, record)
            # Status and the page, then edge-agent read through the running agent.
            base = f"http://127.0.0.1:{metrics}"
            status = json.loads(await asyncio.to_thread(_get, f"{base}/status.json"))
            record.status = status
            record.page = (await asyncio.to_thread(_get, f"{base}/")).decode()
            t0 = time.monotonic()
            reading = asyncio.create_task(
                asyncio.to_thread(run_cli, "read", "-c", str(cfg), "dev", "plain")
            )
            if kind.by_exception:
                # The next poll of such a device carries what changed: change something once
                # read is waiting for it.
                await until(lambda: bool(agent.board._waiters.get("dev")))
                await live.set(READ_VALUE)
            record.agent_read = await reading
            record.agent_read_s = time.monotonic() - t0
            # The device stops answering, then comes back.
            mark = len(sub.messages)
            await live.fail()
            await _soft("down", record, sub.wait_for(seen("state", "stopped", mark), timeout=8))
            mark = len(sub.messages)
            await live.revive()
            await live.set(100)
            await _soft("back", record, sub.wait_for(seen("db", 100, mark), timeout=10))
        finally:
            await agent.stop()
            sub.stop()
        record.messages = list(sub.messages)
    return record


def _event(kind: str, prefix: str) -> Callable[[list[Received]], bool]:
    return lambda m: any(
        x.topic == f"{prefix}/dev/event" and x.json().get("event") == kind for x in m
    )


async def commands(agent: Agent, live: Live[Any], record: Record) -> None:
    """Commands as the publisher hands them on (``CommandHandler.handle``)."""

    async def send(label: str, device: str, write: dict[str, Any]) -> None:
        payload = json.dumps({"id": label, "write": write}).encode()
        record.replies[label] = await agent.commands.handle(device, payload)

    await send("read-only", "dev", {"plain": 1})
    await send("disabled", "off", {"plain": 1})
    if record.kind.writable is None:
        return
    await send("ok", "dev", {"sp": 42})
    record.held_after_write = await live.held()
    await send("above-max", "dev", {"sp": 501})
    await send("wrong-type", "dev", {"sp": "forty"})
    # burst 3: the write above took one, two more go at once, the next is refused.
    for n in (1, 2, 3):
        await send(f"burst-{n}", "dev", {"sp": 40 + n})


@pytest.fixture(scope="module")
def module_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    b = Mosquitto(tmp_path_factory.mktemp("mosquitto"))
    b.start()
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture(scope="module", params=kinds_of_registered_drivers())
def record(
    request: pytest.FixtureRequest,
    module_broker: Mosquitto,
    tmp_path_factory: pytest.TempPathFactory,
) -> Record:
    """One kind's scenario, run once for every claim test of that kind."""
    kind = need_kind(request.param)
    tmp = tmp_path_factory.mktemp(kind.name)
    return asyncio.run(scenario(kind, tmp, module_broker))


live = pytest.mark.slow  # each kind's scenario takes several seconds (once per kind)


# -- Configuration: profile, enabled, unit --------------------------------------------------------


@live
def test_profile_tags_come_first_and_the_devices_own_are_added(record: Record) -> None:
    """docs/configuration.md: ``profile: ...  # its tags come first, the device's own tags are
    added``."""
    assert record.tag_order[:2] == ["plain", "other"], record.tag_order
    first = record.data()[0]
    assert record.values("plain")[0] == 100, "the profile's tag is collected"
    assert "other" in first["values"], f"the device's own tag is collected: {first}"


@live
def test_a_disabled_device_is_neither_polled_nor_shown_nor_written(record: Record) -> None:
    """``enabled: false`` (a key of every driver's device): no data, no status, not on the
    status page, and commands to it are refused."""
    assert not [m.topic for m in record.messages if "/off/" in m.topic]
    assert [d["name"] for d in record.status["devices"]] == ["dev"]
    assert record.replies["disabled"]["ok"] is False


@live
def test_status_shows_the_device_its_driver_values_quality_and_unit(record: Record) -> None:
    """README Day-to-day operation: ``edge-agent status`` and the status page show every device
    with its driver and state, the last value of every tag with its quality (and its unit)."""
    dev = next(d for d in record.status["devices"] if d["name"] == "dev")
    assert dev["driver"] == record.kind.driver
    assert dev["state"] == "up"
    assert dev["last_poll"] is not None
    assert dev["values"]["plain"]["quality"] == "good", dev["values"]
    assert dev["units"] == {"plain": UNIT}
    assert UNIT in record.page


# -- Edge processing: report by exception ---------------------------------------------------------


@live
@pytest.mark.parametrize("name", ["db", "dbp"])
def test_deadbands_hold_back_small_changes_and_publish_big_ones(record: Record, name: str) -> None:
    """README Report by exception: ``deadband`` / ``deadband_percent`` publish a value only when
    it moved more than the band from the last value published."""
    assert 103 in record.values("plain"), "the device did change (the control)"
    published = record.values(name)
    assert 103 not in published, f"{name}: a change within the band was published: {published}"
    assert 200 in published, f"{name}: a change beyond the band was not published: {published}"
    assert published[: published.index(200)] == [100], f"{name}: steady 100 repeated"


@live
def test_max_silence_republishes_a_steady_value(record: Record) -> None:
    """README Report by exception: ``max_silence``: publish anyway when nothing was published
    for this long: a steady value costs nothing, a dead one still shows."""
    steady = record.values("silent", record.steady)
    if record.kind.by_exception:
        # README: such a device sends nothing while the value stands still: nothing to republish.
        assert steady == [100], steady
        return
    assert record.waited["steady"] and steady.count(100) >= 2, (
        f"a value steady for seconds was published only as {steady}"
    )


@live
def test_a_poll_in_which_nothing_passes_commits_nothing(record: Record) -> None:
    """README Report by exception: no message, no seq spent."""
    seqs = [d["seq"] for d in record.data()]
    assert seqs == list(range(1, len(seqs) + 1))
    assert record.polls_steady >= 6


@live
def test_a_bad_reading_is_published_and_the_next_good_one_too(record: Record) -> None:
    """README Report by exception: a bad reading is always published (its quality says why),
    and the next good one too, even when it equals the last value published."""
    bad = [d for d in record.data() if "db" in d.get("quality", {})]
    assert bad, "the failing device's readings were not published as bad"
    assert record.waited["back"], f"db=100 not published after the device came back: {bad[-1:]}"


# -- Edge processing: windows, waveforms, counters, state, alarms ---------------------------------


@live
def test_window_aggregates_are_published_on_wall_clock_edges(record: Record) -> None:
    """README Windows: aggregates over windows aligned to the wall clock, stamped with the
    window's end, instead of the raw values (``raw: false``)."""
    steady = record.values("win.count", record.steady)
    if record.kind.by_exception:
        # README: a window closes at the first reading after its end, so not while nothing
        # changes; the changes that followed closed it.
        assert steady == [], steady
    else:
        assert steady, "no window was published while the value stayed at 100 for seconds"
    windows = [d for d in record.data() if "win.count" in d["values"]]
    assert windows, "no window was published"
    assert all(d["ts"] % 1000 == 0 for d in windows), [d["ts"] for d in windows]
    first = windows[0]["values"]
    assert {"win.min", "win.max", "win.mean", "win.last"} <= set(first), first
    assert not record.values("win"), "raw values were published beside the window"


@live
def test_a_scalar_tag_becomes_a_waveform_of_length_readings(record: Record) -> None:
    """README Waveform features: a scalar tag becomes a waveform when ``length:`` readings of
    it are collected (by a device that reports by exception: one per change)."""
    if record.kind.by_exception:
        assert not record.values("wf.rms"), "16 samples from the scenario's few changes?"
        return
    assert record.values("wf.rms") and record.values("wf.peak")
    assert not record.values("wf"), "the samples are not published unless raw: true"


def test_the_drivers_named_as_reading_lists_have_an_array_point() -> None:
    """README Waveform features names "a Modbus block read with count:, an OPC UA array" as
    waveforms: the live kinds of those drivers must have an array point to prove it."""
    for name in ("modbus", "opcua"):
        assert name in DRIVERS
        assert all(k.array is not None for k in KINDS[name]), name


@live
def test_a_list_value_is_a_waveform(record: Record) -> None:
    """README Waveform features: a tag whose value is a list is a waveform with ``waveform:``."""
    if record.kind.array is None:
        return  # the driver reads no lists (see the test above for the ones that must)
    assert record.values("wave.rms"), "no features of the array tag"
    assert not record.values("wave")


@live
def test_a_parts_counter_totals_increments_and_resets(record: Record) -> None:
    """README Counters: ``counter: {kind: parts}`` publishes ``.total`` and ``.rate``; without
    ``rollover`` a decrease is a reset. 100 → 103 → 200 → 100 counts 3 + 97 + 100."""
    totals = record.values("cnt.total")
    assert 200 in totals and totals == sorted(totals), totals
    assert record.values("cnt.rate")


@live
def test_machine_state_follows_the_rules_and_the_device_going_down(record: Record) -> None:
    """README Machine state: the state is published when it changes (first rule that holds,
    ``default`` when none, ``down`` when every tag is bad) and retained on ``<device>/state``."""
    states = record.values("state")
    changes = [s for i, s in enumerate(states) if i == 0 or states[i - 1] != s]
    assert changes[:4] == ["idle", "running", "idle", "stopped"], changes
    retained = [m.json() for m in record.messages if m.topic == record.topic("dev/state")]
    assert retained and "runtime" in retained[-1], retained


@live
def test_an_alarm_raises_and_clears(record: Record) -> None:
    """README Alarms: raise and clear events on ``<prefix>/<device>/event``."""
    events = [m.json() for m in record.messages if m.topic == record.topic("dev/event")]
    assert [(e["event"], e["alarm"]) for e in events[:2]] == [("raise", "high"), ("clear", "high")]
    assert events[0]["value"] == 200


# -- Writes from the cloud ------------------------------------------------------------------------


@live
def test_writes_are_off_unless_a_tag_allows_them_within_its_range(record: Record) -> None:
    """docs/devices/modbus.md "Writes from the cloud" (and docs/configuration.md for
    ``commands``): writes are off unless a tag says ``writable: true``; ``min``/``max`` bound the
    value; the device holds what the reply confirms; a device's ``commands`` limit (every
    driver's devices take it) refuses the excess."""
    replies = record.replies
    assert replies["read-only"] == {
        "id": "read-only",
        "ok": False,
        "error": "tag 'plain' is not writable",
    }
    if record.kind.writable is None:
        assert not writes_supported(DRIVERS[record.kind.driver])
        return
    assert replies["ok"] == {"id": "ok", "ok": True}
    assert record.held_after_write == 42
    assert "above max" in replies["above-max"]["error"], replies["above-max"]
    assert replies["wrong-type"]["ok"] is False
    assert [replies[f"burst-{n}"]["ok"] for n in (1, 2, 3)] == [True, True, False]
    assert "rate limited" in replies["burst-3"]["error"]


@pytest.mark.parametrize("kind", first_kinds())
def test_a_driver_without_writes_refuses_writable_in_the_config(
    tmp_path: Path, kind: Kind | str
) -> None:
    """The driver's page (docs/devices/<driver>.md) says whether it writes; a driver that does
    not must refuse ``writable: true`` at ``validate``, not accept it and refuse every command
    later, and its page must say so."""
    kind = need_kind(kind)
    page = DOCS / "devices" / f"{kind.driver}.md"
    said = " ".join(page.read_text(encoding="utf-8").split())
    if writes_supported(DRIVERS[kind.driver]):
        assert " ## Writes from the cloud " in said, page
    else:
        assert "does not write" in said, page
        assert "`writable: true` is refused by `validate`" in said, page
    cfg = one_device_config(tmp_path, kind, {"tags": [tag(kind, "t", writable=True)]})
    found = problems(cfg)
    if writes_supported(DRIVERS[kind.driver]):
        assert found == [], found
    else:
        assert any(p.startswith("devices.0.tags.0.writable") for p in found), found


# -- Command line: read ---------------------------------------------------------------------------


def _table(out: str) -> dict[str, list[str]]:
    """Rows of the read table by tag: [value, quality, ...]."""
    rows: dict[str, list[str]] = {}
    for line in out.splitlines()[2:]:
        cells = line.split()
        if cells:
            rows[cells[0]] = cells[1:]
    return rows


@live
def test_read_polls_the_device_itself_when_no_agent_runs(record: Record) -> None:
    """README: ``edge-agent read -c FILE DEVICE`` prints one poll of the device: value and
    quality of each tag; with no agent answering it polls the device once itself. A RAW column
    for drivers that report raw values (``raw_values()``), none for the others."""
    code, out, err = record.direct_read
    assert code == 0, f"exit {code}: {out}{err}"
    assert "polled directly" in out
    rows = _table(out)
    assert rows.get("plain", [])[:2] in (["100", "good"], ["100.0", "good"]), out
    header = out.splitlines()[1].split()
    reports_raw = "raw_values" in vars(DRIVERS[record.kind.driver])
    assert ("RAW" in header) == reports_raw, out


@live
def test_read_asks_the_running_agent_for_the_next_poll(record: Record) -> None:
    """README: while the service runs, ``read`` asks it for the device's next poll; the answer
    comes within one poll_interval (from a device in OPC UA subscribe mode: the next publish,
    with the tags that changed)."""
    code, out, err = record.agent_read
    assert code == 0, f"exit {code} after {record.agent_read_s:.1f} s: {out}{err}"
    assert "next poll of the running agent" in out
    value = READ_VALUE if record.kind.by_exception else 100
    assert _table(out).get("plain", [])[:2] in ([str(value), "good"], [f"{value}.0", "good"]), out
    assert record.agent_read_s < 3, f"the answer took {record.agent_read_s:.1f} s"


@pytest.mark.parametrize("kind", first_kinds())
def test_read_exits_2_for_an_unknown_device_or_tag(tmp_path: Path, kind: Kind | str) -> None:
    """README: ``read`` exit code 2 for an unknown device or tag (before touching anything)."""
    kind = need_kind(kind)
    cfg = one_device_config(tmp_path, kind, {"tags": [tag(kind, "t")]})
    assert run_cli("read", "-c", str(cfg), "nodev")[0] == 2
    assert run_cli("read", "-c", str(cfg), "dev", "notag")[0] == 2


# -- Command line: discover -----------------------------------------------------------------------


def test_discover_says_which_drivers_can_for_those_that_cannot() -> None:
    """README: ``edge-agent discover opcua ...``; for a driver without discovery the command is
    a usage error (2) naming the drivers that can."""
    able = sorted(n for n, d in DRIVERS.items() if "discover" in vars(d))
    assert "opcua" in able, "the README documents discover for opcua"
    for name in sorted(DRIVERS):
        if name in able:
            continue
        code, _, err = run_cli("discover", name)
        assert code == 2, (name, err)
        assert f"drivers that can: {', '.join(able)}" in err, err


# -- Configuration: keys every driver takes -------------------------------------------------------

#: README "Every processing key": on a tag, and on a device.
TAG_KEYS = {
    "deadband",
    "deadband_percent",
    "max_silence",
    "window",
    "waveform",
    "counter",
    "alarms",
}
DEVICE_KEYS = {"processing", "state", "commands", "enabled", "profile", "poll_interval"}


@pytest.mark.parametrize("kind", first_kinds())
def test_every_processing_key_is_taken_by_every_driver(tmp_path: Path, kind: Kind | str) -> None:
    """README Every processing key: each on a tag and on a device of this driver validates, and
    ``edge-agent schema`` describes each."""
    kind = need_kind(kind)
    device = {
        "processing": {"deadband": 1, "max_silence": "5m", "window": {"length": "1m"}},
        "state": {"rules": [{"state": "running", "when": "t > 1"}], "report_every": "1m"},
        "commands": {"burst": 2, "per_second": 0.5},
        "tags": [
            tag(
                kind,
                "t",
                deadband_percent=1,
                max_silence="1m",
                window={"length": "1m", "stats": ["mean"], "raw": True},
                counter={"kind": "parts", "rollover": 65535},
                alarms=[{"name": "a", "on": "> 1", "off": "< 0", "for": "1s"}],
            ),
            tag(kind, "w", waveform={"sample_rate": 10, "length": 16, "features": ["rms"]}),
        ],
    }
    if "poll_interval" in kind.entry(kind.fake_where):  # not where a mode refuses it
        device["poll_interval"] = "1s"
    assert problems(one_device_config(tmp_path, kind, device)) == []
    code, out, _ = run_cli("schema")
    assert code == 0
    defs = json.loads(out)["$defs"]
    driver = DRIVERS[kind.driver]
    device_props = defs[driver.device_model.__name__]["properties"]
    tag_ref = device_props["tags"]["items"]["$ref"].rsplit("/", 1)[-1]
    assert set(device_props) >= DEVICE_KEYS, DEVICE_KEYS - set(device_props)
    assert set(defs[tag_ref]["properties"]) >= TAG_KEYS


@pytest.mark.parametrize("kind", first_kinds())
def test_unknown_and_duplicate_keys_and_duplicate_tags_after_a_profile_are_errors(
    tmp_path: Path, kind: Kind | str
) -> None:
    """docs/configuration.md: unknown keys and duplicate keys are errors, and so are duplicate
    tag names after a profile is merged, whatever the driver."""
    kind = need_kind(kind)
    cfg = one_device_config(
        tmp_path, kind, {"bogus": 1, "tags": [{**tag(kind, "t"), "bogus_tag_key": 1}]}
    )
    found = problems(cfg)
    assert any(p.startswith("devices.0.bogus:") for p in found), found
    assert any(p.startswith("devices.0.tags.0.bogus_tag_key:") for p in found), found
    # A key given twice (JSON is YAML: the text says "unit" twice in the tag's mapping).
    cfg = one_device_config(tmp_path, kind, {"tags": [tag(kind, "t", unit="A")]})
    cfg.write_text(cfg.read_text().replace('"unit": "A"', '"unit": "A", "unit": "B"'))
    found = problems(cfg)
    assert any("duplicate" in p and "unit" in p for p in found), found
    profiles = {"p": {"driver": kind.driver, "tags": [tag(kind, "t")]}}
    cfg = one_device_config(
        tmp_path, kind, {"profile": "p", "tags": [tag(kind, "t")]}, profiles=profiles
    )
    assert any("duplicate" in p and "'t'" in p for p in problems(cfg)), problems(cfg)
