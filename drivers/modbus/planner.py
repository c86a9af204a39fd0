"""Request planning: a device's tags turned into the fewest read requests, once at start.

Each request costs a round trip (on a serial line behind a gateway, tens of milliseconds), so tags
of one table are merged into one read whenever the registers between them are few (``max_gap``)
and the read stays within the protocol's limits (``max_registers``, ``max_bits``). Tags may share
registers (several bits of one status word, overlapping views of the same value): a tag is simply
a slice of a request's answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from drivers.modbus.config import BIT_TABLES, ModbusTag

#: Order in which tables are read in a cycle; fixed so plans (and their test corpus) are stable.
TABLE_ORDER = ("holding", "input", "coil", "discrete")


@dataclass(frozen=True, slots=True)
class TagSlice:
    """Where one tag's registers (or bits) sit in its request's answer."""

    tag: str
    start: int  # index into the answer
    count: int


@dataclass(frozen=True, slots=True)
class Request:
    """One read: ``count`` registers or bits of ``table`` from ``address``."""

    table: str
    address: int
    count: int
    slices: tuple[TagSlice, ...]

    @property
    def is_bits(self) -> bool:
        return self.table in BIT_TABLES

    @property
    def tags(self) -> tuple[str, ...]:
        return tuple(s.tag for s in self.slices)

    def describe(self) -> str:
        """One line, as the plan corpus's ``expected.txt`` writes it."""
        return f"{self.table} {self.address} {self.count} tags={','.join(self.tags)}"


def plan(
    tags: Sequence[ModbusTag], *, max_gap: int = 16, max_registers: int = 125, max_bits: int = 2000
) -> tuple[Request, ...]:
    """Group tags into read requests.

    Per table, tags are sorted by address and swept left to right; a tag joins the open request
    when the registers it would add in between are at most ``max_gap`` and the request would stay
    within the size cap, otherwise it opens a new one. For tags that do not overlap, closing a
    request as late as possible gives the fewest requests; overlapping tags just share a request
    when they fit.
    Raises ``ValueError`` when one tag alone is larger than the cap (config validation prevents it).
    """
    requests: list[Request] = []
    for table in TABLE_ORDER:
        cap = max_bits if table in BIT_TABLES else max_registers
        in_table = sorted(
            (t for t in tags if t.table == table), key=lambda t: (t.address, t.address + t.width)
        )
        group: list[ModbusTag] = []
        start = end = 0  # end is exclusive
        for tag in in_table:
            tag_end = tag.address + tag.width
            if tag.width > cap:
                raise ValueError(f"tag {tag.name} spans {tag.width}, more than {cap} per read")
            if group and tag.address - end <= max_gap and max(end, tag_end) - start <= cap:
                group.append(tag)
                end = max(end, tag_end)
                continue
            if group:
                requests.append(_request(table, start, end, group))
            group, start, end = [tag], tag.address, tag_end
        if group:
            requests.append(_request(table, start, end, group))
    return tuple(requests)


def _request(table: str, start: int, end: int, group: list[ModbusTag]) -> Request:
    slices = tuple(TagSlice(t.name, t.address - start, t.width) for t in group)
    return Request(table=table, address=start, count=end - start, slices=slices)
