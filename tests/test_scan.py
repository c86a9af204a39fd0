"""``edge-agent scan modbus`` and ``edge-agent scan dlt645`` over pseudo-terminals: the devices
that answer are listed, the others are not, and a driver that cannot scan is refused."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from agent.app import cli
from simulators.dlt645_meters import Meter, MeterLine, three_meters
from simulators.modbus_rtu import RtuSimulator

EDGE_AGENT = str(Path(sys.executable).parent / "edge-agent")


async def run(*args: str) -> tuple[int, str, str]:
    """The installed command, as an integrator runs it (the simulator keeps this loop)."""
    proc = await asyncio.create_subprocess_exec(
        EDGE_AGENT, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_modbus_scan_lists_the_units_that_answer() -> None:
    async with RtuSimulator((2, 5), baudrate=19200) as sim:
        sim.set_registers(2, "holding", 0, [230])
        sim.set_illegal(5, 0, 9)  # a device without register 0 is still there
        code, out, err = await run(
            "scan", "modbus", "--port", sim.path, "--baudrate", "19200", "--units", "1-6",
            "--timeout", "0.1",
        )  # fmt: skip
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == f"scanning {sim.path} at 19200 baud 8N1, 6 unit ids"
    assert lines[1:-1] == [
        "unit 2: holding register 0 = 230",
        "unit 5: exception 2 (illegal data address)",
    ]
    assert lines[-1] == "2 answered: 2 5"
    assert "6/6" in err  # the progress


@pytest.mark.slow
async def test_dlt645_scan_finds_meters_that_share_their_last_digits() -> None:
    """Two meters ending in 11 answer the same first-round address at once (garbled): the scan
    looks one byte further there and finds both; the -1997 meter is not a -2007 one."""
    meters = [*three_meters(), Meter("990000004011", values={"00010000": 1.0})]
    async with MeterLine(meters) as line:
        code, out, err = await run(
            "scan", "dlt645", "--port", line.path, "--parity", "N", "--timeout", "0.02"
        )
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith(f"scanning {line.path} at 2400 baud 8N1 for DL/T 645-2007")
    found = sorted(line.removeprefix("found ") for line in lines[1:-1])
    assert found == ["210220003011", "210220003012", "990000004011"]
    assert lines[-1].startswith("3 meters: ")
    assert "byte 1: 100/100" in err and "byte 2: 100/100" in err


async def test_an_empty_line_finds_nobody_and_exits_1() -> None:
    async with MeterLine([]) as line:
        code, out, _ = await run(
            "scan", "dlt645", "--port", line.path, "--parity", "N", "--timeout", "0.01",
            "--protocol", "1997",
        )  # fmt: skip
    assert code == 1
    assert out.splitlines()[-1] == "0 meters: -"


def test_a_driver_that_cannot_scan_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["scan", "opcua", "--port", "x"]) == 2
    assert "drivers that can: dlt645, modbus" in capsys.readouterr().err


def test_a_port_that_does_not_exist_is_a_runtime_failure(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli.main(["scan", "dlt645", "--port", "/dev/no-such-port"]) == 1
    assert "port not found" in capsys.readouterr().err


async def test_the_only_meter_of_a_line_is_found_at_once() -> None:
    """One clean answer to AAAAAAAAAAAA: no search rounds."""
    async with MeterLine([Meter("210220003011", values={"00010000": 1.0})]) as line:
        code, out, err = await run(
            "scan", "dlt645", "--port", line.path, "--parity", "N", "--timeout", "0.1"
        )
    assert code == 0, err
    assert out.splitlines()[1:] == ["found 210220003011", "1 meter: 210220003011"]
    assert "byte 1" not in err
