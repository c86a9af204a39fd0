"""The simulated press's register map, and how its values are laid out on the wire.

The simulator is a separate device: it encodes with ``struct`` and the byte-order letters
literally (letter ``A`` is the value's most significant byte, the letters list the bytes in wire
order), on purpose without the driver's codec, so that a test comparing the two compares two
independent readings of the contract. ``simulators/README.md`` documents the same map.

Two areas:

* the **press / power meter** (addresses 0-39 and a few bits): values the physics in
  ``modbus_tcp`` keeps changing;
* the **type test** area (1000 and up, holding and input alike): every type in every byte order
  with fixed, known values, for checking a decoder.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

Table = Literal["holding", "input", "coil", "discrete"]
PointValue = bool | int | float | str

#: Registers per fixed-width type.
WIDTH: Final[Mapping[str, int]] = {
    "bool": 1,
    "int16": 1,
    "uint16": 1,
    "int32": 2,
    "uint32": 2,
    "float32": 2,
    "int64": 4,
    "uint64": 4,
    "float64": 4,
}
#: ``struct`` formats of the numeric types, big-endian (the byte order is applied after).
STRUCT: Final[Mapping[str, str]] = {
    "int16": ">h",
    "uint16": ">H",
    "int32": ">i",
    "uint32": ">I",
    "float32": ">f",
    "int64": ">q",
    "uint64": ">Q",
    "float64": ">d",
}
#: Size of each table of every unit: registers 0-1199, bits 0-2047.
REGISTERS: Final = 1200
BITS: Final = 2048
TYPE_TEST_BASE: Final = 1000


@dataclass(frozen=True, slots=True)
class Point:
    """A named value of the device map."""

    name: str
    table: Table
    address: int
    type: str
    byte_order: str | None = None  # wire order of the value's bytes; None: big-endian
    bit: int | None = None  # for a bool inside a register
    length: int | None = None  # registers, for strings
    scale: float | None = None  # the engineering value is raw * scale (for the agent's config)
    unit: str | None = None
    meaning: str = ""
    initial: PointValue = 0

    @property
    def width(self) -> int:
        if self.table in ("coil", "discrete"):
            return 1
        return self.length if self.type == "string" and self.length else WIDTH[self.type]

    def tag(self, name: str | None = None) -> dict[str, Any]:
        """This point as a tag of the agent's YAML (the contract's keys)."""
        tag: dict[str, Any] = {
            "name": name or self.name,
            "table": self.table,
            "address": self.address,
            "type": self.type,
        }
        if self.byte_order is not None:
            tag["byte_order"] = self.byte_order
        if self.bit is not None:
            tag["bit"] = self.bit
        if self.length is not None:
            tag["length"] = self.length
        if self.scale is not None:
            tag["scale"] = self.scale
        if self.unit is not None:
            tag["unit"] = self.unit
        return tag


def _press() -> list[Point]:
    h: Table = "holding"
    return [
        Point("voltage_l1", h, 0, "float32", unit="V", meaning="phase voltage L1", initial=230.0),
        Point("voltage_l2", h, 2, "float32", unit="V", meaning="phase voltage L2", initial=230.0),
        Point("voltage_l3", h, 4, "float32", unit="V", meaning="phase voltage L3", initial=230.0),
        Point("current_l1", h, 6, "uint16", scale=0.01, unit="A", meaning="phase current L1"),
        Point("current_l2", h, 7, "uint16", scale=0.01, unit="A", meaning="phase current L2"),
        Point("current_l3", h, 8, "uint16", scale=0.01, unit="A", meaning="phase current L3"),
        Point("frequency", h, 9, "uint16", scale=0.01, unit="Hz", meaning="grid frequency"),
        Point("power_kw", h, 10, "float32", "CDAB", unit="kW", meaning="active power, total"),
        Point(
            "energy_kwh",
            h,
            12,
            "uint32",
            "CDAB",
            scale=0.01,
            unit="kWh",
            meaning="active energy counter, only grows",
        ),
        Point("oil_temp", h, 14, "int16", scale=0.1, unit="degC", meaning="hydraulic oil"),
        Point("stroke_count", h, 15, "uint16", meaning="strokes, wraps from 65535 to 0"),
        Point("state", h, 16, "uint16", meaning="0 stopped, 1 running"),
        Point("status_word", h, 17, "uint16", meaning="bit 0 motor on, bit 3 door open"),
        Point("motor_on", h, 17, "bool", bit=0, meaning="status_word bit 0"),
        Point("door_open", h, 17, "bool", bit=3, meaning="status_word bit 3, only when stopped"),
        Point("serial_no", h, 20, "string", length=4, meaning="PRS-<unit, 4 digits>"),
        Point("operating_hours", h, 24, "float64", unit="h", meaning="running time, only grows"),
        Point("total_strokes", h, 28, "uint64", meaning="lifetime strokes, never wraps"),
        Point("power_factor", h, 32, "int16", scale=0.001, meaning="cos phi"),
        Point("cycle_time_ms", "input", 0, "uint16", unit="ms", meaning="last stroke's cycle"),
        Point("ambient_temp", "input", 1, "int16", scale=0.1, unit="degC", meaning="cabinet"),
        Point(
            "apparent_power_kva",
            "input",
            2,
            "float32",
            "DCBA",
            unit="kVA",
            meaning="apparent power, total",
        ),
        Point("lamp", "coil", 0, "bool", meaning="stack light output (written by clients)"),
        Point("horn", "coil", 1, "bool", meaning="horn output (written by clients)"),
        Point("running", "discrete", 0, "bool", meaning="press running"),
        Point("door_closed", "discrete", 1, "bool", meaning="door switch, true when closed"),
        Point("estop_ok", "discrete", 2, "bool", meaning="emergency stop chain closed"),
    ]


#: (type, offset from 1000, byte orders with the value each holds). Extremes on purpose.
_TYPE_TEST: Final[Sequence[tuple[str, int, Sequence[tuple[str, PointValue]]]]] = (
    ("int16", 0, (("AB", -12345), ("BA", -2))),
    ("uint16", 2, (("AB", 54321), ("BA", 65535))),
    ("int32", 10, (("ABCD", -123456789), ("CDAB", 2147483647), ("BADC", -2147483648), ("DCBA", 1))),
    ("uint32", 20, (("ABCD", 3456789012), ("CDAB", 4294967295), ("BADC", 305419896), ("DCBA", 0))),
    (
        "float32",
        30,
        (("ABCD", 229.8), ("CDAB", -0.125), ("BADC", 3.4028235e38), ("DCBA", 1.1754944e-38)),
    ),
    (
        "int64",
        40,
        (
            ("ABCDEFGH", -1234567890123456789),
            ("GHEFCDAB", 9223372036854775807),
            ("BADCFEHG", -9223372036854775808),
            ("HGFEDCBA", 1),
        ),
    ),
    (
        "uint64",
        60,
        (
            ("ABCDEFGH", 12345678901234567890),
            ("GHEFCDAB", 18446744073709551615),
            ("BADCFEHG", 81985529216486895),
            ("HGFEDCBA", 0),
        ),
    ),
    (
        "float64",
        80,
        (("ABCDEFGH", 1234.5678), ("GHEFCDAB", -0.1), ("BADCFEHG", 1e300), ("HGFEDCBA", 5e-324)),
    ),
)
#: Bits of the type-test status register (offset 4): 0xA009.
TEST_BITS_WORD: Final = 0xA009
#: Pattern of the type-test coils (1000-1007); the discrete inputs hold its inverse.
TEST_BIT_PATTERN: Final = (True, False, True, True, False, False, True, False)


def _type_test(table: Table, prefix: str) -> list[Point]:
    base = TYPE_TEST_BASE
    points: list[Point] = []
    for type_, offset, cases in _TYPE_TEST:
        width = WIDTH[type_]
        for i, (order, value) in enumerate(cases):
            points.append(
                Point(
                    f"{prefix}_{type_}_{order.lower()}",
                    table,
                    base + offset + i * width,
                    type_,
                    order,
                    meaning="type test",
                    initial=value,
                )
            )
    points.append(
        Point(
            f"{prefix}_bits",
            table,
            base + 4,
            "uint16",
            initial=TEST_BITS_WORD,
            meaning="type test: bits 0, 3, 13, 15 set",
        )
    )
    points.extend(
        Point(f"{prefix}_bit{b}", table, base + 4, "bool", bit=b, meaning="type test")
        for b in (0, 1, 3, 13, 15)
    )
    points.append(
        Point(
            f"{prefix}_string_nul",
            table,
            base + 100,
            "string",
            length=8,
            initial="PUMP-07!",
            meaning="type test: padded with NULs",
        )
    )
    points.append(
        Point(
            f"{prefix}_string_space",
            table,
            base + 110,
            "string",
            length=4,
            initial="Line 1  ",
            meaning="type test: padded with spaces",
        )
    )
    return points


def _type_test_bits() -> list[Point]:
    coils = [
        Point(
            f"coil_{TYPE_TEST_BASE + i}",
            "coil",
            TYPE_TEST_BASE + i,
            "bool",
            initial=v,
            meaning="type test",
        )
        for i, v in enumerate(TEST_BIT_PATTERN)
    ]
    inputs = [
        Point(
            f"di_{TYPE_TEST_BASE + i}",
            "discrete",
            TYPE_TEST_BASE + i,
            "bool",
            initial=not v,
            meaning="type test",
        )
        for i, v in enumerate(TEST_BIT_PATTERN)
    ]
    return coils + inputs


PRESS_POINTS: Final[tuple[Point, ...]] = tuple(_press())
TYPE_TEST_POINTS: Final[tuple[Point, ...]] = tuple(
    _type_test("holding", "h") + _type_test("input", "i") + _type_test_bits()
)


def _bench() -> list[Point]:
    """50 holding-register points of mixed types at 200-279: one read with default limits."""
    types = ("uint16", "int16", "float32", "uint32", "int32")
    points, address = [], 200
    for i in range(50):
        type_ = types[i % len(types)]
        value: PointValue = float(i) + 0.5 if type_ == "float32" else i * 100
        if type_ == "int16":
            value = -i * 100
        points.append(Point(f"b{i:02d}", "holding", address, type_, initial=value, meaning="bench"))
        address += WIDTH[type_]
    return points


BENCH_POINTS: Final[tuple[Point, ...]] = tuple(_bench())
POINTS: Final[Mapping[str, Point]] = {
    p.name: p for p in PRESS_POINTS + TYPE_TEST_POINTS + BENCH_POINTS
}


def bench_config(units: int, port: int, broker_port: int, data_dir: str) -> str:
    """Agent YAML for ``units`` devices (unit ids 1..N on one port) x the 50 bench points."""
    lines = [
        "# Written by python -m simulators.modbus_tcp --write-bench-config",
        "agent:",
        "  id: bench-gw",
        f"  data_dir: {data_dir}",
        "mqtt:",
        "  host: 127.0.0.1",
        f"  port: {broker_port}",
        "metrics:",
        "  listen: null",
        "profiles:",
        "  bench:",
        "    driver: modbus",
        "    tags:",
    ]
    for p in BENCH_POINTS:
        lines.append(
            f"      - {{name: {p.name}, table: holding, address: {p.address}, type: {p.type}}}"
        )
    lines.append("devices:")
    for unit in range(1, units + 1):
        lines += [
            f"  - name: bench-{unit:03d}",
            "    driver: modbus",
            "    profile: bench",
            "    poll_interval: 1s",
            f"    connection: {{host: 127.0.0.1, port: {port}, unit_id: {unit}, timeout: 1s}}",
        ]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------- wire format


def _default_order(width: int) -> str:
    return "ABCDEFGH"[: 2 * width]


def to_registers(point: Point, value: PointValue) -> list[int]:
    """The registers that carry ``value`` for a register point (not for bools)."""
    if point.type == "string":
        data = str(value).encode("ascii").ljust(2 * point.width, b"\x00")
        if len(data) > 2 * point.width:
            raise ValueError(f"{point.name}: {value!r} is longer than {point.width} registers")
    else:
        big_endian = struct.pack(STRUCT[point.type], value)
        order = point.byte_order or _default_order(point.width)
        if len(order) != len(big_endian):
            raise ValueError(f"{point.name}: byte order {order} for {len(big_endian)} bytes")
        data = bytes(big_endian[ord(letter) - ord("A")] for letter in order)
    return [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]


def from_registers(point: Point, registers: Sequence[int]) -> PointValue:
    """The value a register point's registers carry (the inverse of :func:`to_registers`)."""
    data = b"".join(r.to_bytes(2, "big") for r in registers)
    if point.type == "string":
        return data.rstrip(b"\x00 ").decode("ascii", errors="replace")
    order = point.byte_order or _default_order(point.width)
    big_endian = bytearray(len(data))
    for wire_position, letter in enumerate(order):
        big_endian[ord(letter) - ord("A")] = data[wire_position]
    value: int | float = struct.unpack(STRUCT[point.type], bytes(big_endian))[0]
    if point.type == "float32":
        return shortest_float32(value)
    return value


def shortest_float32(x: float) -> float:
    """The float with the fewest significant digits that is still the same float32."""
    target = struct.pack(">f", x)
    for digits in range(1, 10):
        candidate = float(f"{x:.{digits}g}")
        try:
            if struct.pack(">f", candidate) == target:
                return candidate
        except OverflowError:  # near FLT_MAX a short decimal rounds past the float32 range
            continue
    return x
