"""``edge-agent sniff`` against a simulated scale; ``validate --sample`` on the sample config."""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path

import pytest

from agent.app.cli import main
from simulators.serial_instruments import ScaleSimulator

SAMPLE = str(Path(__file__).resolve().parent.parent / "drivers" / "serial" / "sample.yaml")


@pytest.mark.parametrize(
    ("device", "frame", "code", "shown"),
    [
        ("scale-1", "ST,GS,+0012.34 kg", 0, ["weight = 12.34", "stable = True"]),
        ("scale-1", r"US,GS,-0001.50 kg\r\n", 0, ["weight = -1.5", "stable = False"]),
        ("oven-ctl", "SV=180.5", 0, ["temperature = bad: no match", "setpoint = 180.5"]),
        ("counter-1", r"\x02C=0123337E\x03", 0, ["parts = 12333", "parts_k = 12.333"]),
        ("counter-1", "C=01233300", 1, ["parts = bad: checksum"]),
        ("scale-1", "hello", 1, ["weight = bad: no match"]),
    ],
)
def test_validate_sample_shows_what_a_frame_yields(
    capsys: pytest.CaptureFixture[str], device: str, frame: str, code: int, shown: list[str]
) -> None:
    assert main(["validate", SAMPLE, "--sample", device, frame]) == code
    out = capsys.readouterr().out
    for line in shown:
        assert f"  {line}\n" in out


def test_validate_sample_names_an_unknown_device(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", SAMPLE, "--sample", "scale-9", "x"]) == 2
    assert (
        "no device 'scale-9' (devices: scale-1, oven-ctl, counter-1, oven-2, oven-3)"
        in capsys.readouterr().err
    )


def test_sniff_on_a_missing_port_fails_cleanly(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sniff", "/dev/nonexistent-tty", "--duration", "0.1"]) == 1
    assert "port not found" in capsys.readouterr().err


async def test_sniff_prints_frames_with_escapes_and_timing() -> None:
    async with ScaleSimulator(rate=20, seed=1) as scale:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "agent",
            "sniff",
            scale.path,
            "--baudrate",
            "9600",
            "--terminator",
            r"\r\n",
            "--count",
            "3",
            "--duration",
            "5",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    lines = out.decode().splitlines()
    assert len(lines) == 3, lines
    frame = r"(ST|US),GS,[+-]\d{4}\.\d\d kg\\r\\n"
    row = re.compile(r"^ +\d+\.\d{3}s  \+ *\d+\.\dms +19 bytes  " + frame + "$")
    assert all(row.match(line) for line in lines), lines
