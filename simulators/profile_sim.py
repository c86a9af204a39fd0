"""A Modbus TCP device generated from a profile file, holding known physical values.

A profile says how a real meter or drive lays out its values: table, address (as its document
prints it, shifted by ``address_offset``), type, scale, offset, byte order. This simulator reads
the same file and serves registers that *encode* chosen physical values through that layout:
230.1 V on a float32 register, 230.1 V as 2301 in a uint16 with scale 0.1, 12345.67 kWh as
1234567 in a uint64 with scale 0.01. A client that decodes the profile right reads exactly the
chosen values back; one that gets a type, a word order, an offset or a scale wrong does not.

Like every simulator here it never imports the agent: the encoding below is a second reading of
the documented meaning of each key (``docs/profiles.md``), written with ``struct`` and
``decimal``, so a test comparing the two compares two independent readings.

    .venv/bin/python -m simulators.profile_sim config/profiles/eastron-sdm630.yaml --port 5020
"""

from __future__ import annotations

import argparse
import asyncio
import struct
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, Final

from ruamel.yaml import YAML

from simulators.modbus_map import STRUCT, WIDTH, shortest_float32
from simulators.service import Service, cancel, serve_until_signal

#: Physical values to show, by unit, first choice first: the values a person recognises on a
#: meter's display. A tag gets the first one its type and scale can carry exactly; the n-th tag
#: of a unit moves each choice by n steps, so two tags never hold the same value (an address
#: mix-up would go unseen otherwise).
_PREFERRED: Final[Mapping[str, tuple[tuple[str, str], ...]]] = {
    "V": (("230.1", "0.1"), ("400.2", "0.1"), ("230", "1")),
    "A": (("5.123", "0.001"), ("5.12", "0.01"), ("5.1", "0.1"), ("5", "1")),
    "W": (("1234.5", "0.1"), ("1234.56", "0.01"), ("1234", "1")),
    "kW": (("1.2345", "0.001"), ("1.23", "0.01"), ("12", "1")),
    "var": (("-345.6", "-0.1"), ("-345.67", "-0.01"), ("345", "1")),
    "kvar": (("-0.3456", "-0.001"), ("-0.35", "-0.01"), ("3", "1")),
    "VA": (("1280.3", "0.1"), ("1280.34", "0.01"), ("1280", "1")),
    "kVA": (("1.2803", "0.001"), ("1.28", "0.01"), ("13", "1")),
    "Hz": (("50.01", "0.01"), ("50.1", "0.1"), ("50", "1")),
    "kWh": (("12345.67", "0.01"), ("12345.6", "0.1"), ("12345", "1")),
    "kvarh": (("2345.67", "0.01"), ("2345.6", "0.1"), ("2345", "1")),
    "Wh": (("12345670", "10"), ("12345678", "1")),
    "varh": (("2345670", "10"), ("2345678", "1")),
    "%": (("12.3", "0.1"), ("12", "1")),
    "rpm": (("1480", "1"),),
    "h": (("4321", "1"),),
    "°C": (("41.5", "0.5"), ("41", "1")),
}
#: For tags without a unit (power factors, status words) or a unit not listed.
_FALLBACK: Final = (("0.987", "-0.001"), ("0.98", "-0.01"), ("0.9", "-0.1"), ("7", "1"))


@dataclass(frozen=True, slots=True)
class Point:
    """One tag of the profile as the device holds it."""

    name: str
    function: int  # 3 holding, 4 input
    address: int  # on the wire
    type: str
    order: str  # wire order of the value's bytes, A most significant
    scale: Decimal
    offset: Decimal
    bit: int | None
    value: Decimal | bool  # the physical value a client must read

    @property
    def width(self) -> int:
        return WIDTH[self.type]


def load_profile(path: Path) -> dict[str, Any]:
    """The profile file as plain data."""
    data = YAML(typ="safe", pure=True).load(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a profile file is a mapping")
    return data


def _wire_order(tag_order: str | None, device_order: str, width: int) -> str:
    """The documented meaning of ``byte_order``: a tag's own letters as written; a device's four
    letters say whether bytes are swapped within a word (B before A) and whether the words come
    low first (C before A), the same at every width."""
    if tag_order is not None:
        return tag_order
    swapped = device_order in ("BADC", "DCBA")
    low_first = device_order in ("CDAB", "DCBA")
    words = ["ABCDEFGH"[2 * i : 2 * i + 2] for i in range(width)]
    if low_first:
        words.reverse()
    return "".join(w[::-1] if swapped else w for w in words)


def _raw_fits(raw: Decimal, type_: str) -> bool:
    """Whether a register of ``type_`` carries ``raw`` exactly."""
    if type_ in ("float32", "float64"):
        if type_ == "float64":
            return bool(Decimal(repr(float(raw))) == raw)
        return bool(Decimal(repr(shortest_float32(float(raw)))) == raw)
    if raw != raw.to_integral_value():
        return False
    bits = 16 * WIDTH[type_]
    if type_.startswith("u"):
        return bool(0 <= raw < 2**bits)
    return bool(-(2 ** (bits - 1)) <= raw < 2 ** (bits - 1))


def choose_value(
    type_: str, unit: str | None, scale: Decimal, offset: Decimal, nth: int
) -> Decimal:
    """A physical value this register carries exactly: a familiar one for the unit where the
    type and scale allow, else a small integer number of steps."""
    for base, step in (*_PREFERRED.get(unit or "", ()), *_FALLBACK):
        value = Decimal(base) + nth * Decimal(step)
        if _raw_fits((value - offset) / scale, type_):
            return value
    raw = Decimal(100 + 7 * nth)
    return raw * scale + offset


def points(profile: Mapping[str, Any], values: Mapping[str, Any] | None = None) -> list[Point]:
    """Every register tag of the profile with the value it holds (``values`` by tag name, or one
    chosen for it); coils, discrete inputs and strings are not generated."""
    defaults = profile.get("defaults") or {}
    device_order = str(defaults.get("byte_order", "ABCD"))
    shift = int(defaults.get("address_offset", 0))
    read_function = defaults.get("read_function")
    seen: dict[str, int] = {}
    result: list[Point] = []
    for tag in profile.get("tags") or []:
        table, type_ = tag["table"], tag["type"]
        if table not in ("holding", "input") or type_ == "string":
            continue
        function = int(read_function or (3 if table == "holding" else 4))
        scale = Decimal(str(tag.get("scale", 1)))
        offset = Decimal(str(tag.get("offset", 0)))
        name = tag["name"]
        value: Decimal | bool
        if type_ == "bool":
            value = bool(values[name]) if values and name in values else len(result) % 2 == 0
            order = "AB"
        else:
            unit = tag.get("unit")
            nth = seen.get(unit or "", 0)
            seen[unit or ""] = nth + 1
            if values and name in values:
                value = Decimal(str(values[name]))
            else:
                value = choose_value(type_, unit, scale, offset, nth)
            order = _wire_order(tag.get("byte_order"), device_order, WIDTH[type_])
        result.append(
            Point(
                name,
                function,
                tag["address"] + shift,
                type_,
                order,
                scale,
                offset,
                tag.get("bit"),
                value,
            )
        )
    return result


def _reading(point: Point) -> float | int | bool:
    """The value as a reading carries it: a register read without scale or offset stays an
    integer, anything scaled (or a float register) is the float its decimal names."""
    if isinstance(point.value, bool):
        return point.value
    unscaled = point.scale == 1 and point.offset == 0
    if unscaled and not point.type.startswith("float"):
        return int(point.value)
    return float(point.value)


def encode(point: Point) -> list[int]:
    """The registers that carry ``point.value``."""
    if point.type == "bool":
        return [(1 << (point.bit or 0)) if point.value else 0]
    assert isinstance(point.value, Decimal)
    raw = (point.value - point.offset) / point.scale
    number: int | float = float(raw) if point.type.startswith("float") else int(raw)
    big_endian = struct.pack(STRUCT[point.type], number)
    wire = bytes(big_endian[ord(letter) - ord("A")] for letter in point.order)
    return [int.from_bytes(wire[i : i + 2], "big") for i in range(0, len(wire), 2)]


class ProfileSimulator(Service):
    """One Modbus TCP device (any unit id) serving a profile's registers with known values.

    Addresses the profile does not name read as 0, as most meters answer reads across gaps;
    functions other than 3 and 4 are refused with exception 1 (illegal function).
    """

    def __init__(
        self,
        profile: Mapping[str, Any],
        values: Mapping[str, Any] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.host = host
        self.port = port
        self.points = points(profile, values)
        self.memory: dict[tuple[int, int], int] = {}
        for point in self.points:
            for i, word in enumerate(encode(point)):
                key = (point.function, point.address + i)
                # Bits of one register are separate bool tags: they share the word.
                self.memory[key] = self.memory.get(key, 0) | word
        #: Every read served: (function, address, count), oldest first.
        self.log: list[tuple[int, int, int]] = []
        self._server: asyncio.Server | None = None
        self._clients: set[asyncio.Task[None]] = set()

    def expected(self) -> dict[str, float | bool]:
        """What a client must read, by tag name (numbers as the floats their decimals name)."""
        return {p.name: _reading(p) for p in self.points}

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for client in list(self._clients):
                await cancel(client)
            await self._server.wait_closed()
            self._server = None

    def answer(self, pdu: bytes) -> bytes:
        """The response PDU to a request PDU."""
        function = pdu[0]
        if function not in (3, 4) or len(pdu) != 5:
            return bytes([function | 0x80, 1])
        address, count = struct.unpack(">HH", pdu[1:5])
        if not 1 <= count <= 125 or address + count > 65536:
            return bytes([function | 0x80, 3])
        self.log.append((function, address, count))
        words = [self.memory.get((function, a), 0) for a in range(address, address + count)]
        return bytes([function, 2 * count]) + b"".join(w.to_bytes(2, "big") for w in words)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._clients.add(task)
        try:
            while True:
                header = await reader.readexactly(7)
                transaction, protocol, length, unit = struct.unpack(">HHHB", header)
                if length < 2:
                    break
                pdu = await reader.readexactly(length - 1)
                if protocol != 0:
                    continue
                reply = self.answer(pdu)
                writer.write(struct.pack(">HHHB", transaction, 0, len(reply) + 1, unit) + reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            if task is not None:
                self._clients.discard(task)


def profile_files(directory: Path) -> list[Path]:
    """The profile files of a directory, by name."""
    return sorted(directory.glob("*.yaml"))


def _describe(sim: ProfileSimulator) -> Iterable[str]:
    for point in sim.points:
        yield f"  {point.name} = {point.value} (function {point.function}, {point.address})"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("profile", type=Path, help="a profile file (config/profiles/...)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5020)
    args = parser.parse_args(argv)
    sim = ProfileSimulator(load_profile(args.profile), host=args.host, port=args.port)

    def ready() -> None:
        print(f"{args.profile.name} on {args.host}:{sim.port}, holding:", flush=True)
        for line in _describe(sim):
            print(line, flush=True)

    asyncio.run(serve_until_signal(sim, ready))
    return 0


if __name__ == "__main__":
    sys.exit(main())
