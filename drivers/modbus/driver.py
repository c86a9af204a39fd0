"""The Modbus TCP driver: connect, poll the planned requests, decode, report quality per tag.

pymodbus is told neither to retry nor to reconnect (``retries=0``, ``reconnect_delay=0``): the
agent owns backoff, and a client retrying behind its back would multiply the cost of a dead device
(``timeout x (retries + 1)`` per request) and hide connection loss from the device status.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException

from drivers.base import DeviceBase, DeviceError, Driver, Reading
from drivers.modbus.codec import Decoded, TagCodec, make_decoder, resolve_byte_order
from drivers.modbus.config import BIT_TABLES, ModbusDevice, ModbusProfile, ModbusTag
from drivers.modbus.planner import Request, plan

#: Modbus exception codes as the specification names them, for the quality reason.
EXCEPTION_NAMES = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    5: "acknowledge",
    6: "server device busy",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}

Decoder = Callable[[Sequence[int] | Sequence[bool]], Decoded]


def exception_reason(code: int) -> str:
    """``exception 2 (illegal data address)``: stable to alert on, readable in a dashboard."""
    return f"exception {code} ({EXCEPTION_NAMES.get(code, 'unknown')})"


def tag_codec(tag: ModbusTag, device_byte_order: str) -> TagCodec:
    """One tag's decoding facts; the device's byte order applies where the tag has none."""
    if tag.table in BIT_TABLES:
        return TagCodec(type="bool", count=1, from_bits=True)
    width = tag.width
    order = "ABCD"
    if tag.type not in ("bool", "string"):
        if tag.byte_order is not None:
            order = resolve_byte_order(tag.byte_order, width, device_default=False)
        else:
            order = resolve_byte_order(device_byte_order, width)
    return TagCodec(
        type=tag.type,
        count=width,
        byte_order=order,
        bit=tag.bit,
        scale=tag.scale,
        offset=tag.offset,
    )


@dataclass(frozen=True, slots=True)
class _PlannedRead:
    """A request with, for each of its tags, where to slice the answer and how to decode it."""

    request: Request
    tags: tuple[tuple[str, int, int, Decoder], ...]


class ModbusDriver(Driver):
    """One Modbus TCP device (or one unit id behind a gateway)."""

    name = "modbus"
    device_model = ModbusDevice
    profile_model = ModbusProfile

    def __init__(self, device: DeviceBase) -> None:
        super().__init__(device)
        if not isinstance(device, ModbusDevice):
            device = ModbusDevice.model_validate(device.model_dump())
        self.config: ModbusDevice = device
        self.requests = plan(
            device.tags,
            max_gap=device.max_gap,
            max_registers=device.max_registers,
            max_bits=device.max_bits,
        )
        by_name = {t.name: t for t in device.tags}
        self._reads: tuple[_PlannedRead, ...] = tuple(
            _PlannedRead(
                request=req,
                tags=tuple(
                    (
                        s.tag,
                        s.start,
                        s.count,
                        make_decoder(tag_codec(by_name[s.tag], device.byte_order)),
                    )
                    for s in req.slices
                ),
            )
            for req in self.requests
        )
        self._client: AsyncModbusTcpClient | None = None

    def describe_plan(self) -> dict[str, Any]:
        return {
            "requests": len(self.requests),
            "registers": sum(r.count for r in self.requests if not r.is_bits),
            "bits": sum(r.count for r in self.requests if r.is_bits),
        }

    async def connect(self) -> None:
        await self.close()
        conn = self.config.connection
        client = AsyncModbusTcpClient(
            conn.host,
            port=conn.port,
            timeout=conn.timeout,
            retries=0,
            reconnect_delay=0,
        )
        if await client.connect() and client.connected:
            self._client = client
            return
        client.close()
        # pymodbus only says "False"; a second, bare attempt tells the operator why.
        raise await self._why_unreachable()

    async def _why_unreachable(self) -> DeviceError:
        conn = self.config.connection
        where = f"{conn.host}:{conn.port}"
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(conn.host, conn.port), timeout=conn.timeout
            )
        except ConnectionRefusedError as exc:
            return DeviceError("connection refused", f"{where}: {exc}")
        except TimeoutError:
            return DeviceError("timeout", f"{where}: no answer to connect within {conn.timeout}s")
        except OSError as exc:
            if exc.errno == errno.ECONNREFUSED:
                return DeviceError("connection refused", f"{where}: {exc}")
            return DeviceError("unreachable", f"{where}: {exc}")
        writer.close()
        return DeviceError("unreachable", f"{where}: connect failed, then succeeded on retry")

    async def poll(self) -> list[Reading]:
        client = self._client
        if client is None or not client.connected:
            raise DeviceError("connection lost", "not connected")
        unit = self.config.connection.unit_id
        readings: list[Reading] = []
        answered = 0
        for index, planned in enumerate(self._reads):
            req = planned.request
            try:
                response = await self._read(client, req, unit)
            except ModbusIOException as exc:
                if not client.connected:
                    raise DeviceError("connection lost", str(exc)) from exc
                if answered == 0:
                    raise DeviceError(
                        "timeout", f"no answer from unit {unit} within {self._timeout}s"
                    ) from exc
                # The device stopped answering mid-cycle: one timeout is enough per cycle.
                now = time.time()
                for later in self._reads[index:]:
                    readings.extend(Reading.bad(t[0], now, "timeout") for t in later.tags)
                return readings
            except ConnectionException as exc:
                raise DeviceError("connection lost", str(exc)) from exc
            except ModbusException as exc:
                now = time.time()
                answered += 1
                readings.extend(Reading.bad(t[0], now, f"error: {exc}") for t in planned.tags)
                continue
            now = time.time()
            answered += 1
            if response.isError():
                reason = exception_reason(int(response.exception_code))
                readings.extend(Reading.bad(t[0], now, reason) for t in planned.tags)
                continue
            words: Sequence[int] | Sequence[bool] = (
                response.bits if req.is_bits else response.registers
            )
            for name, start, count, decoder in planned.tags:
                part = words[start : start + count]
                if len(part) < count:
                    readings.append(Reading.bad(name, now, "short response"))
                else:
                    readings.append(Reading(tag=name, value=decoder(part), ts=now))
        return readings

    @property
    def _timeout(self) -> float:
        return self.config.connection.timeout

    @staticmethod
    async def _read(client: AsyncModbusTcpClient, req: Request, unit: int) -> Any:
        if req.table == "holding":
            return await client.read_holding_registers(req.address, count=req.count, device_id=unit)
        if req.table == "input":
            return await client.read_input_registers(req.address, count=req.count, device_id=unit)
        if req.table == "coil":
            return await client.read_coils(req.address, count=req.count, device_id=unit)
        return await client.read_discrete_inputs(req.address, count=req.count, device_id=unit)

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        # close() must never raise, whatever pymodbus does with a half-dead transport.
        with contextlib.suppress(Exception):
            client.close()
