"""What the line scans (``edge-agent scan modbus``, ``edge-agent scan dlt645``) share: the
RS-485 line's command-line settings, the connection they make, and how a scan run ends when the
adapter fails (one line ``edge-agent: REASON: DETAIL`` and exit status 1, never a traceback)."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Coroutine
from typing import Any, TextIO, TypeVar

from drivers.base import DeviceError
from drivers.serial.config import SerialConnection

T = TypeVar("T")


def line_arguments(p: argparse.ArgumentParser, *, baudrate: int | None, parity: str) -> None:
    """``--port``, ``--baudrate`` (required without a default), ``--parity``, ``--stopbits``."""
    p.add_argument("--port", required=True, help="the RS-485 adapter, e.g. /dev/ttyUSB0")
    if baudrate is None:
        p.add_argument("--baudrate", type=int, required=True)
    else:
        p.add_argument("--baudrate", type=int, default=baudrate)
    p.add_argument("--parity", default=parity, choices=["N", "E", "O"])
    p.add_argument("--stopbits", type=int, default=1, choices=[1, 2])


def line_connection(args: argparse.Namespace) -> SerialConnection:
    """The line the arguments name (8 data bits: both protocols' framing)."""
    return SerialConnection(
        port=args.port,
        baudrate=args.baudrate,
        parity=args.parity,
        bytesize=8,
        stopbits=args.stopbits,
        timeout=args.timeout,
    )


def run_scan(scan: Coroutine[Any, Any, T], err: TextIO) -> T | None:
    """What ``scan`` found; None (said on ``err`` when the adapter failed) when it did not end."""
    try:
        return asyncio.run(scan)
    except DeviceError as exc:
        print(f"edge-agent: {exc.reason}: {exc}", file=err)
    except KeyboardInterrupt:
        pass
    return None
