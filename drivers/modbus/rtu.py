"""Modbus RTU, on a serial port or over TCP to a transparent converter, through pymodbus's clients.

Only this module imports pymodbus, and the link imports it only when it builds an RTU client:
an agent polling only Modbus TCP (our MBAP client, :mod:`drivers.modbus.mbap`) does not pay for
it (1.2-1.5 MB of RSS on import after the agent's runtime, ~2 MB in a running agent).

pymodbus is told neither to retry nor to reconnect (``retries=0``, ``reconnect_delay=0``): the
agent owns both. Its exceptions become ours (:mod:`drivers.modbus.errors`) in ``ModbusLink``, so
the driver catches the same classes on every transport.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.client.base import ModbusBaseClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.framer import FramerType

from drivers.modbus.config import ModbusConnection
from drivers.modbus.errors import LinkDown, ModbusError, NoAnswer

__all__ = ["make_client", "ours"]

#: On a shared line pymodbus must never drop the connection because a dead unit stopped
#: answering: the other units still answer. The agent backs off the dead one instead.
_NEVER_GIVE_UP = 1_000_000


def make_client(conn: ModbusConnection, trace: Callable[[bool, bytes], bytes]) -> ModbusBaseClient:
    """pymodbus's client for ``rtu`` (a serial port) or ``rtu-over-tcp``; ``trace`` sees every
    frame sent and every chunk received (the link's counts and RTU silence)."""
    common: dict[str, Any] = {
        "timeout": conn.timeout,
        "retries": 0,
        "reconnect_delay": 0,
        "trace_packet": trace,
    }
    client: ModbusBaseClient
    if conn.transport == "rtu":
        client = AsyncModbusSerialClient(
            str(conn.port),
            framer=FramerType.RTU,
            baudrate=conn.baudrate,
            parity=conn.parity,
            stopbits=conn.stopbits,
            bytesize=conn.bytesize,
            **common,
        )
    else:
        assert isinstance(conn.port, int)
        client = AsyncModbusTcpClient(conn.host, port=conn.port, framer=FramerType.RTU, **common)
    if conn.shared:
        client.set_max_no_responses(_NEVER_GIVE_UP)
    return client


def ours(exc: BaseException) -> ModbusError | None:
    """Our exception for one of pymodbus's (its message kept, so a device's status reads as
    before); None for anything else, which passes through as it is."""
    if isinstance(exc, ModbusIOException):
        return NoAnswer(str(exc))
    if isinstance(exc, ConnectionException):
        return LinkDown(str(exc))
    if isinstance(exc, ModbusException):
        return ModbusError(str(exc))
    return None
