"""How a Modbus request fails, as the driver sees it, whatever the transport.

Our MBAP client (Modbus TCP) raises these; the link translates pymodbus's exceptions into them
for RTU clients (the original kept as ``__cause__``). So the driver catches one set of classes,
and an agent that polls only Modbus TCP never imports pymodbus (~2 MB of RSS in a running agent).
"""

from __future__ import annotations

__all__ = ["InvalidAnswer", "LinkDown", "ModbusError", "NoAnswer"]


class ModbusError(Exception):
    """A request failed; the base of the others. One that is neither of them (an RTU client's
    other errors) marks the request's tags bad, as an invalid answer does."""


class NoAnswer(ModbusError):
    """No answer within the timeout. The connection may still be open (a dead unit on a live
    line): the driver checks, and reports ``timeout`` or ``connection lost``."""


class LinkDown(ModbusError):
    """Not connected, the connection lost while waiting, or the stream out of sync: nothing more
    goes through until the agent reconnects (``connection lost``)."""


class InvalidAnswer(ModbusError):
    """An answer that cannot be the one asked for; the driver counts it as an invalid answer."""

    def __str__(self) -> str:
        return f"invalid answer: {self.args[0] if self.args else ''}"
