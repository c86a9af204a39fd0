"""Modbus TCP never imports pymodbus (~2 MB of RSS, issue 20): an agent whose devices are all on
Modbus TCP loads the driver through its entry point, connects, polls and fails requests with the
driver's own exceptions (drivers/modbus/errors.py). RTU still uses pymodbus's clients, and the
link translates their exceptions into ours (tests/test_modbus_rtu.py runs them over ptys).

The import check runs in a fresh interpreter: this one has long imported pymodbus (the simulator
is built on it).
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException

from drivers.modbus import rtu
from drivers.modbus.errors import InvalidAnswer, LinkDown, ModbusError, NoAnswer
from simulators.modbus_tcp import ModbusSimulator
from tests.brokers import free_port

ROOT = Path(__file__).resolve().parent.parent

#: Runs in the child: the agent's runtime and the modbus driver from its entry point, a TCP
#: device polled against the simulator in the parent, a request on a client never connected;
#: then, as the control that the check can fail, an RTU client built.
CHILD = """
import asyncio, json, sys

import agent.app.runtime  # noqa: F401  (what `edge-agent run` imports)
from agent.south.registry import load_drivers

port = int(sys.argv[1])
cls = load_drivers()["modbus"]
device = cls.device_model.model_validate({
    "name": "press",
    "driver": "modbus",
    "connection": {"host": "127.0.0.1", "port": port, "unit_id": 1, "timeout": 2.0},
    "tags": [{"name": "oil_temp", "table": "holding", "address": 14, "type": "int16"}],
})


async def main() -> dict:
    from drivers.modbus.errors import LinkDown
    from drivers.modbus.mbap import MbapClient

    driver = cls(device)
    await driver.connect()
    (reading,) = await driver.poll()
    await driver.close()
    failed = None
    try:  # not connected: our exception, not pymodbus's
        MbapClient("127.0.0.1", port, timeout=1.0).read_holding_registers(0)
    except LinkDown as exc:
        failed = f"{type(exc).__name__}: {exc}"
    after_tcp = sorted(m for m in sys.modules if m.split(".")[0] == "pymodbus")

    from drivers.modbus.config import ModbusConnection
    from drivers.modbus.link import ModbusLink

    rtu = ModbusConnection.model_validate(
        {"transport": "rtu-over-tcp", "host": "127.0.0.1", "port": port}
    )
    ModbusLink(rtu)._make_client()
    return {
        "value": reading.value,
        "quality": reading.quality.name,
        "failed": failed,
        "pymodbus_after_tcp": after_tcp,
        "pymodbus_after_rtu": "pymodbus" in sys.modules,
    }


print(json.dumps(asyncio.run(main())))
"""


async def test_a_modbus_tcp_device_polls_without_importing_pymodbus() -> None:
    async with ModbusSimulator(port=free_port(), units=(1,), update_interval=None) as sim:
        sim.set_value(1, "oil_temp", 612)
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            CHILD,
            str(sim.port),
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    got = json.loads(out.decode().splitlines()[-1])
    assert got["quality"] == "GOOD" and got["value"] == 612, got
    assert got["failed"] == "LinkDown: not connected", got
    assert got["pymodbus_after_tcp"] == [], got
    assert got["pymodbus_after_rtu"] is True, got  # the control: the check sees pymodbus


@pytest.mark.parametrize(
    ("theirs", "ours"),
    [
        (ModbusIOException("no response"), NoAnswer),
        (ConnectionException("Connection lost during request"), LinkDown),
        (ModbusException("unexpected"), ModbusError),
    ],
)
def test_pymodbus_exceptions_become_ours_with_their_message(
    theirs: ModbusException, ours: type[ModbusError]
) -> None:
    got = rtu.ours(theirs)
    assert type(got) is ours
    assert str(got) == str(theirs)  # a device's status reads as it did with pymodbus's


def test_other_exceptions_are_not_translated() -> None:
    assert rtu.ours(OSError("gone")) is None
    assert rtu.ours(asyncio.CancelledError()) is None


def test_the_driver_catches_each_class_apart() -> None:
    """driver.py catches NoAnswer, then LinkDown, then ModbusError: none of the first two may be
    a subclass of the other, and InvalidAnswer must fall to ModbusError."""
    assert not issubclass(NoAnswer, LinkDown) and not issubclass(LinkDown, NoAnswer)
    assert issubclass(InvalidAnswer, ModbusError)
    assert not issubclass(InvalidAnswer, (NoAnswer, LinkDown))
    assert str(InvalidAnswer("byte count 1")) == "invalid answer: byte count 1"
