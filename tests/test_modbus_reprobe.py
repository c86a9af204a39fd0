"""``reprobe_interval`` from the YAML is what the driver honours: a plan split on exception 2 is
dropped and the full plan probed afresh every interval, and only then (the default is 10 min)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from agent.app.config import load_config
from agent.south.registry import load_drivers
from drivers.base import Quality
from drivers.modbus.config import ModbusDevice
from drivers.modbus.driver import ModbusDriver
from simulators.modbus_tcp import ModbusSimulator
from tests.brokers import free_port

pytestmark = pytest.mark.usefixtures("quiet_pymodbus")

POLL = 0.05
#: Tag a at 0 and c at 5 are read with one request (0, 6) until c's address answers exception 2.
FULL = (0, 6)


def write_config(path: Path, port: int) -> Path:
    def device(name: str, unit: int, **extra: object) -> dict[str, object]:
        return {
            "name": name,
            "driver": "modbus",
            "poll_interval": POLL,
            "connection": {"host": "127.0.0.1", "port": port, "unit_id": unit, "timeout": 0.5},
            "tags": [
                {"name": "a", "table": "holding", "address": 0, "type": "uint16"},
                {"name": "c", "table": "holding", "address": 5, "type": "uint16"},
            ],
            **extra,
        }

    doc = {
        "agent": {"id": "gw", "data_dir": str(path.parent / "data")},
        "devices": [device("quick", 1, reprobe_interval="1s"), device("default", 2)],
    }
    path.write_text(json.dumps(doc))
    return path


async def test_a_parked_address_is_probed_again_after_the_configured_interval(
    tmp_path: Path,
) -> None:
    async with ModbusSimulator(port=free_port(), units=(1, 2), update_interval=None) as sim:
        for unit in (1, 2):
            sim.set_illegal(unit, 5, 5)
        config = load_config(write_config(tmp_path / "c.yaml", sim.port), load_drivers())
        quick, default = (d for d in config.devices if isinstance(d, ModbusDevice))
        assert (quick.reprobe_interval, default.reprobe_interval) == (1.0, 600.0)
        drivers = {1: ModbusDriver(quick), 2: ModbusDriver(default)}
        for driver in drivers.values():
            await driver.connect()
        probes: dict[int, list[float]] = {1: [], 2: []}  # when each sent the full plan
        start = time.monotonic()
        try:
            while len(probes[1]) < 3 and time.monotonic() - start < 6:
                for unit, driver in drivers.items():
                    seen = len(sim.log)
                    readings = {r.tag: r for r in await driver.poll()}
                    assert readings["a"].quality is Quality.GOOD
                    assert readings["c"].reason == "exception 2 (illegal data address)"
                    new = [(a, n) for u, fc, a, n in list(sim.log)[seen:] if u == unit]
                    if FULL in new:
                        probes[unit].append(time.monotonic() - start)
                await asyncio.sleep(POLL)  # the poll interval: the cadence, not a wait
        finally:
            for driver in drivers.values():
                await driver.close()
    assert len(probes[1]) == 3, probes
    gaps = [later - earlier for earlier, later in zip(probes[1], probes[1][1:], strict=False)]
    # Not before the interval, and at the first poll after it (a loaded machine adds a little).
    assert all(0.9 <= gap <= 1.8 for gap in gaps), gaps
    # The default device learned once and keeps its split plan for ten minutes.
    assert len(probes[2]) == 1, probes
