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
from typing import Protocol

from drivers.modbus.config import BIT_TABLES

#: Order in which tables are read in a cycle; fixed so plans (and their test corpus) are stable.
TABLE_ORDER = ("holding", "input", "coil", "discrete")


class PlanTag(Protocol):
    """What planning reads of a tag (a ``ModbusTag``, or the driver's key for sharing plans)."""

    @property
    def name(self) -> str: ...
    @property
    def table(self) -> str: ...
    @property
    def address(self) -> int: ...
    @property
    def width(self) -> int: ...
    @property
    def element_width(self) -> int: ...


@dataclass(frozen=True, slots=True)
class TagSlice:
    """Where one tag's registers (or bits) sit in its request's answer.

    An array longer than one read is cut into parts, each in its own request; ``part`` is where
    this slice's registers go in the tag's whole (0 for a tag read in one piece).
    """

    tag: str
    start: int  # index into the answer
    count: int
    part: int = 0


@dataclass(frozen=True, slots=True)
class Request:
    """One read: ``count`` registers or bits of ``table`` from ``address`` (as sent on the wire)."""

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
        names = (s.tag if s.part == 0 else f"{s.tag}@{s.part}" for s in self.slices)
        return f"{self.table} {self.address} {self.count} tags={','.join(names)}"


@dataclass(frozen=True, slots=True)
class _Span:
    """A tag, or one part of an array too long for one read, at its wire address."""

    tag: str
    table: str
    address: int
    width: int
    part: int


def _spans(tag: PlanTag, cap: int, address_offset: int) -> list[_Span]:
    """The tag in pieces of at most ``cap``, cut at element boundaries (an element is never
    split, so every piece decodes on its own terms when the tag is reassembled)."""
    address = tag.address + address_offset
    if tag.width <= cap:
        return [_Span(tag.name, tag.table, address, tag.width, 0)]
    step = max(1, cap // tag.element_width) * tag.element_width
    return [
        _Span(tag.name, tag.table, address + part, min(step, tag.width - part), part)
        for part in range(0, tag.width, step)
    ]


def plan(
    tags: Sequence[PlanTag],
    *,
    max_gap: int = 16,
    max_registers: int = 125,
    max_bits: int = 2000,
    coalesce: bool = True,
    address_offset: int = 0,
) -> tuple[Request, ...]:
    """Group tags into read requests.

    Per table, tags are sorted by address and swept left to right; a tag joins the open request
    when the registers it would add in between are at most ``max_gap`` and the request would stay
    within the size cap, otherwise it opens a new one. For tags that do not overlap, closing a
    request as late as possible gives the fewest requests; overlapping tags just share a request
    when they fit. An array longer than the cap is cut into parts that are planned like tags.
    ``coalesce=False`` (the ``no_coalescing`` quirk) gives every tag a request of its own.
    ``address_offset`` is added to every address (the ``address_offset`` quirk).
    Raises ``ValueError`` when one value alone is larger than the cap (config validation
    prevents it).
    """
    requests: list[Request] = []
    for table in TABLE_ORDER:
        cap = max_bits if table in BIT_TABLES else max_registers
        spans: list[_Span] = []
        for t in tags:
            if t.table != table:
                continue
            if t.element_width > cap:
                raise ValueError(f"tag {t.name} spans {t.width}, more than {cap} per read")
            spans.extend(_spans(t, cap, address_offset))
        spans.sort(key=lambda s: (s.address, s.address + s.width))
        group: list[_Span] = []
        start = end = 0  # end is exclusive
        for span in spans:
            span_end = span.address + span.width
            if (
                coalesce
                and group
                and span.address - end <= max_gap
                and max(end, span_end) - start <= cap
            ):
                group.append(span)
                end = max(end, span_end)
                continue
            if group:
                requests.append(_request(table, start, end, group))
            group, start, end = [span], span.address, span_end
        if group:
            requests.append(_request(table, start, end, group))
    return tuple(requests)


def _request(table: str, start: int, end: int, group: list[_Span]) -> Request:
    slices = tuple(TagSlice(s.tag, s.address - start, s.width, s.part) for s in group)
    return Request(table=table, address=start, count=end - start, slices=slices)
