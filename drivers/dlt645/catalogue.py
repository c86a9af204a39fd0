"""The data identifiers meters of both editions answer, with the standard's formats and units.

A tag names an identifier as the standard writes it (DI3 DI2 DI1 DI0 in -2007: ``00010000``;
DI1 DI0 in -1997: ``9010``) or by a name from here (``active_energy_total``), which means the
same quantity in either edition, so a profile works for old and new meters alike where both have
it. An identifier not listed here is still readable: the tag then says its ``format``.

-2007 identifiers are built by rule: energy ``00 TT RR SS`` (TT the kind: 00 combined active,
01 forward active, 02 reverse active, 03/04 combined reactive 1/2; RR the tariff, 00 the total;
SS 00 the present reading), variables ``02 QQ PP 00`` (QQ the quantity, PP 00 the total or
01..03 the phase), more variables ``02 80 00 NN``. -1997 ones are a table: ``901R`` forward
active energy (R 0 total, 1..4 tariffs), ``B61P`` voltages, ``B62P`` currents and so on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from drivers.dlt645.bcd import Format

Protocol = Literal["2007", "1997"]
PROTOCOLS: tuple[Protocol, ...] = ("2007", "1997")
#: Hex digits of an identifier in each edition.
DI_DIGITS: Mapping[Protocol, int] = {"2007": 8, "1997": 4}


@dataclass(frozen=True, slots=True)
class Entry:
    """One identifier: what it is called here, its format and unit, what it means."""

    name: str
    di: str
    format: Format
    unit: str
    description: str


def _f(text: str, signed: bool = False, extra: int = 0) -> Format:
    return Format.parse(text, signed=signed, extra=extra)


_PHASES = (("total", "00"), ("a", "01"), ("b", "02"), ("c", "03"))
_TARIFFS = (("total", "00"), ("t1", "01"), ("t2", "02"), ("t3", "03"), ("t4", "04"))


def _entries_2007() -> list[Entry]:
    out: list[Entry] = []
    energies = (
        ("active_energy", "01", "kWh", False, "forward active energy"),
        ("reverse_active_energy", "02", "kWh", False, "reverse active energy"),
        ("combined_active_energy", "00", "kWh", True, "combined active energy"),
        ("reactive_energy_1", "03", "kvarh", True, "combined reactive energy 1"),
        ("reactive_energy_2", "04", "kvarh", True, "combined reactive energy 2"),
    )
    for name, kind, unit, signed, what in energies:
        for tariff, rr in _TARIFFS:
            label = "total" if tariff == "total" else f"tariff {rr[1]}"
            out.append(
                Entry(
                    f"{name}_{tariff}",
                    f"00{kind}{rr}00",
                    _f("XXXXXX.XX", signed),
                    unit,
                    f"{what}, {label}",
                )
            )
    for phase, pp in _PHASES[1:]:
        out.append(
            Entry(
                f"voltage_{phase}",
                f"0201{pp}00",
                _f("XXX.X"),
                "V",
                f"phase {phase.upper()} voltage",
            )
        )
        out.append(
            Entry(
                f"current_{phase}",
                f"0202{pp}00",
                _f("XXX.XXX", True),
                "A",
                f"phase {phase.upper()} current",
            )
        )
    powers = (
        ("active_power", "03", "XX.XXXX", "kW"),
        ("reactive_power", "04", "XX.XXXX", "kvar"),
        ("apparent_power", "05", "XX.XXXX", "kVA"),
        ("power_factor", "06", "X.XXX", ""),
    )
    for name, qq, fmt, unit in powers:
        for phase, pp in _PHASES:
            where = "total" if phase == "total" else f"phase {phase.upper()}"
            out.append(
                Entry(
                    f"{name}_{phase}",
                    f"02{qq}{pp}00",
                    _f(fmt, True),
                    unit,
                    f"{name.replace('_', ' ')}, {where}",
                )
            )
    out += [
        Entry("current_n", "02800001", _f("XXX.XXX", True), "A", "neutral current"),
        Entry("frequency", "02800002", _f("XX.XX"), "Hz", "grid frequency"),
        Entry("active_demand", "02800004", _f("XX.XXXX", True), "kW", "present active demand"),
        Entry(
            "reactive_demand", "02800005", _f("XX.XXXX", True), "kvar", "present reactive demand"
        ),
        Entry("temperature", "02800007", _f("XXX.X", True), "°C", "meter temperature"),
        Entry(
            "max_demand_active",
            "01010000",
            _f("XX.XXXX", extra=5),
            "kW",
            "forward active maximum demand (its time YYMMDDhhmm follows, not read)",
        ),
    ]
    return out


def _entries_1997() -> list[Entry]:
    out: list[Entry] = []
    for name, base, unit, what in (
        ("active_energy", "901", "kWh", "forward active energy"),
        ("reverse_active_energy", "902", "kWh", "reverse active energy"),
        ("forward_reactive_energy", "911", "kvarh", "forward reactive energy"),
        ("reverse_reactive_energy", "912", "kvarh", "reverse reactive energy"),
    ):
        for tariff, rr in _TARIFFS:
            label = "total" if tariff == "total" else f"tariff {rr[1]}"
            out.append(
                Entry(
                    f"{name}_{tariff}", f"{base}{rr[1]}", _f("XXXXXX.XX"), unit, f"{what}, {label}"
                )
            )
    for phase, p in (("a", "1"), ("b", "2"), ("c", "3")):
        out.append(
            Entry(f"voltage_{phase}", f"B61{p}", _f("XXX"), "V", f"phase {phase.upper()} voltage")
        )
        out.append(
            Entry(f"current_{phase}", f"B62{p}", _f("XX.XX"), "A", f"phase {phase.upper()} current")
        )
    for name, base, fmt, unit in (
        ("active_power", "B63", "XX.XXXX", "kW"),
        ("reactive_power", "B64", "XX.XX", "kvar"),
        ("power_factor", "B65", "X.XXX", ""),
    ):
        for phase, pp in _PHASES:
            where = "total" if phase == "total" else f"phase {phase.upper()}"
            out.append(
                Entry(
                    f"{name}_{phase}",
                    f"{base}{pp[1]}",
                    _f(fmt),
                    unit,
                    f"{name.replace('_', ' ')}, {where}",
                )
            )
    out.append(
        Entry("max_demand_active", "A010", _f("XX.XXXX"), "kW", "forward active maximum demand")
    )
    return out


class Catalogue:
    """One edition's identifiers, by name and by identifier."""

    def __init__(self, protocol: Protocol, entries: list[Entry]) -> None:
        self.protocol = protocol
        self.by_name = {e.name: e for e in entries}
        self.by_di = {e.di: e for e in entries}

    def lookup(self, di: str) -> Entry | None:
        """The entry a tag's ``di`` names (identifier in any case, or name), if listed."""
        return self.by_name.get(di) or self.by_di.get(di.upper())


CATALOGUES: Mapping[Protocol, Catalogue] = {
    "2007": Catalogue("2007", _entries_2007()),
    "1997": Catalogue("1997", _entries_1997()),
}
#: Every name of either edition (a profile's tags are checked before a protocol is known).
NAMES = frozenset(n for c in CATALOGUES.values() for n in c.by_name)


def is_identifier(di: str) -> bool:
    """Hex digits of either edition's length (``00010000``, ``9010``)."""
    return len(di) in DI_DIGITS.values() and all(c in "0123456789abcdefABCDEF" for c in di)


def di_bytes(di: str) -> bytes:
    """The wire form of an identifier: its bytes lowest (DI0) first, before the 0x33 offset."""
    return bytes.fromhex(di)[::-1]
