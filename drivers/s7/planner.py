"""Read planning: a PLC's tags turned into the fewest S7 read requests the negotiated PDU allows.

Two steps, done once per negotiated PDU size (the PLC says it when the connection is set up:
240 bytes on an S7-300 or S7-1200, 480 or 960 on an S7-1500):

1. Ranges. Tags of one area (one data block, or M, I, Q) are sorted by address and swept left to
   right: a tag joins the open range when the bytes it would add in between are at most
   ``max_gap`` and the range stays within what one item of an answer can carry (the PDU less
   the answer's 14-byte header and the item's 4-byte header). A tag longer than that is cut into
   pieces, read as ranges of their own and put back together.
2. Requests. Ranges are packed into multi-variable reads (read_multi_vars): each request holds
   at most ``max_items`` (20 by default, snap7's limit), its items' address specifications (12
   bytes each after a 14-byte header) must fit the PDU, and so must the answer: a 14-byte
   header, then per item 4 bytes of header and its data, padded to even. The packing is a bin
   packing; it is solved exactly by branch and bound (first-fit decreasing, then worst-fit
   decreasing over as few requests as the lower bound allows, give the first packing, and most
   plans stop there because they meet the lower bound), so the request count is the optimum for
   the ranges. The search is bounded in nodes; a plan that hits the bound keeps
   the best packing found and says so (``exact`` False), which the corpus never does.

The budgets count the answer's header as 14 bytes and pad every item, as python-snap7's own
optimizer does, so a plan never exceeds what the library and the PLC accept.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Protocol

from drivers.s7.address import AREA_CODES

HEADER: Final = 14  # S7 header (12, as budgeted) + function code + item count
ITEM_REQUEST: Final = 12  # one address specification
ITEM_REPLY: Final = 4  # return code, transport size, bit length
#: Items per request unless the device says otherwise: snap7's limit, which every CPU takes.
MAX_ITEMS: Final = 20
#: Nodes the exact packing may visit before it keeps the best packing found.
NODE_BUDGET: Final = 50_000


class PlanTag(Protocol):
    """What planning reads of a tag: its name and the bytes it spans."""

    @property
    def name(self) -> str: ...
    @property
    def area(self) -> str: ...  # DB, M, I, Q
    @property
    def db(self) -> int: ...
    @property
    def byte(self) -> int: ...
    @property
    def size(self) -> int: ...


@dataclass(frozen=True, slots=True)
class Piece:
    """Where (part of) one tag sits in an item's data: ``count`` bytes from ``start``, which are
    the tag's bytes from ``part`` on (0 for a tag read in one piece)."""

    tag: str
    start: int
    count: int
    part: int = 0


@dataclass(frozen=True, slots=True)
class Item:
    """One range: ``size`` bytes of an area from byte ``start``, as one item of a request."""

    area: str
    db: int
    start: int
    size: int
    pieces: tuple[Piece, ...]

    @property
    def area_code(self) -> int:
        return AREA_CODES[self.area]

    @property
    def reply_cost(self) -> int:
        return reply_cost(self.size)

    def describe(self) -> str:
        where = f"DB{self.db}" if self.area == "DB" else self.area
        return f"{where}:{self.start}+{self.size}"


@dataclass(frozen=True, slots=True)
class Request:
    """One read_multi_vars exchange."""

    items: tuple[Item, ...]

    @property
    def tags(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(p.tag for i in self.items for p in i.pieces))

    def describe(self) -> str:
        """One line, as the plan corpus's ``expected.txt`` writes it."""
        names = (
            p.tag if p.part == 0 else f"{p.tag}@{p.part}" for i in self.items for p in i.pieces
        )
        return f"{' '.join(i.describe() for i in self.items)} tags={','.join(names)}"


@dataclass(frozen=True, slots=True)
class Plan:
    requests: tuple[Request, ...]
    pdu: int
    lower_bound: int  # no packing of these ranges takes fewer requests
    exact: bool  # the packing is proven optimal


def reply_cost(size: int) -> int:
    """Bytes one item takes in the answer: header, data, fill byte to even."""
    return ITEM_REPLY + size + (size & 1)


def item_cap(pdu: int) -> int:
    """The most bytes one item can carry in an answer of ``pdu`` bytes (even)."""
    cap = (pdu - HEADER - ITEM_REPLY) & ~1
    if cap < 2:
        raise ValueError(f"a PDU of {pdu} bytes cannot carry a read")
    return cap


def items_per_request(pdu: int, max_items: int = MAX_ITEMS) -> int:
    """Items one request may carry: ``max_items``, and what the request's PDU holds."""
    return max(1, min(max_items, (pdu - HEADER) // ITEM_REQUEST))


# -- step 1: ranges ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Span:
    tag: str
    start: int
    size: int
    part: int


def ranges(tags: Sequence[PlanTag], *, max_gap: int, cap: int) -> list[Item]:
    """Tags of each area coalesced into ranges of at most ``cap`` bytes (see the module doc)."""
    by_area: dict[tuple[int, int, str], list[_Span]] = {}
    for t in tags:
        key = (AREA_CODES[t.area], t.db, t.area)
        spans = by_area.setdefault(key, [])
        for part in range(0, t.size, cap):
            spans.append(_Span(t.name, t.byte + part, min(cap, t.size - part), part))
    items: list[Item] = []
    for (_, db, area), spans in sorted(by_area.items()):
        spans.sort(key=lambda s: (s.start, s.start + s.size))
        group: list[_Span] = []
        start = end = 0
        for s in spans:
            s_end = s.start + s.size
            if group and s.start - end <= max_gap and max(end, s_end) - start <= cap:
                group.append(s)
                end = max(end, s_end)
                continue
            if group:
                items.append(_item(area, db, start, end, group))
            group, start, end = [s], s.start, s_end
        if group:
            items.append(_item(area, db, start, end, group))
    return items


def _item(area: str, db: int, start: int, end: int, group: list[_Span]) -> Item:
    pieces = tuple(Piece(s.tag, s.start - start, s.size, s.part) for s in group)
    return Item(area=area, db=db, start=start, size=end - start, pieces=pieces)


# -- step 2: requests -------------------------------------------------------------------------


def lower_bound(costs: Sequence[int], room: int, slots: int) -> int:
    """No packing needs fewer bins: by the answer bytes; by the item count; and by the item
    count when large items (more than half the room: no two share a bin) leave their bins room
    for only a few of the smallest items besides."""
    if not costs:
        return 0
    by_bytes = math.ceil(sum(costs) / room)
    by_items = math.ceil(len(costs) / slots)
    smallest = min(costs)
    large = [c for c in costs if 2 * c > room]
    held = sum(min(slots, 1 + (room - c) // smallest) for c in large)
    by_large = len(large) + math.ceil(max(0, len(costs) - held) / slots)
    return max(by_bytes, by_items, by_large)


def _worst_fit(
    order: Sequence[int], costs: Sequence[int], room: int, slots: int, k: int
) -> list[list[int]] | None:
    """``order`` spread over ``k`` bins, each item into the bin with the most room left that
    takes it; None when one does not fit. Spreading balances bytes and item counts at once,
    where first fit fills bins by bytes and runs out of item slots (or the reverse)."""
    bins: list[list[int]] = [[] for _ in range(k)]
    left = [room] * k
    for i in order:
        b = max(
            (b for b in range(k) if left[b] >= costs[i] and len(bins[b]) < slots),
            key=lambda b: left[b],
            default=None,
        )
        if b is None:
            return None
        bins[b].append(i)
        left[b] -= costs[i]
    return [b for b in bins if b]


def pack(costs: Sequence[int], room: int, slots: int) -> tuple[list[list[int]], bool]:
    """Indexes of ``costs`` grouped into the fewest bins of ``room`` bytes and ``slots`` items
    each; and whether that is proven the minimum."""
    order = sorted(range(len(costs)), key=lambda i: -costs[i])
    best = _first_fit(order, costs, room, slots)
    bound = lower_bound(costs, room, slots)
    for k in range(bound, len(best)):
        spread = _worst_fit(order, costs, room, slots, k)
        if spread is not None:
            best = spread
            break
    if len(best) <= bound:
        return best, True
    bins: list[list[int]] = []
    left: list[int] = []
    # Bytes still to place from position k on, so a node whose open bins cannot take them in
    # fewer bins than the best so far is cut.
    tail = [0] * (len(order) + 1)
    for k in range(len(order) - 1, -1, -1):
        tail[k] = tail[k + 1] + costs[order[k]]
    nodes = 0
    exhausted = False

    def search(k: int) -> None:
        nonlocal best, nodes, exhausted
        nodes += 1
        if nodes > NODE_BUDGET:
            exhausted = True
            return
        if len(best) <= bound:
            return
        if k == len(order):
            best = [list(b) for b in bins]
            return
        free = sum(f for f, b in zip(left, bins, strict=True) if len(b) < slots)
        if len(bins) + math.ceil(max(0, tail[k] - free) / room) >= len(best):
            return
        i = order[k]
        tried: set[tuple[int, int]] = set()
        for b, items in enumerate(bins):
            state = (left[b], len(items))
            if left[b] < costs[i] or len(items) >= slots or state in tried:
                continue
            tried.add(state)
            items.append(i)
            left[b] -= costs[i]
            search(k + 1)
            left[b] += costs[i]
            items.pop()
            if exhausted:
                return
        if len(bins) + 1 < len(best):
            bins.append([i])
            left.append(room - costs[i])
            search(k + 1)
            bins.pop()
            left.pop()

    search(0)
    return best, not exhausted


def _first_fit(
    order: Sequence[int], costs: Sequence[int], room: int, slots: int
) -> list[list[int]]:
    bins: list[list[int]] = []
    left: list[int] = []
    for i in order:
        for b, items in enumerate(bins):
            if left[b] >= costs[i] and len(items) < slots:
                items.append(i)
                left[b] -= costs[i]
                break
        else:
            bins.append([i])
            left.append(room - costs[i])
    return bins


def plan(
    tags: Sequence[PlanTag], *, pdu: int, max_gap: int = 4, max_items: int = MAX_ITEMS
) -> Plan:
    """The read requests for ``tags`` under a negotiated PDU of ``pdu`` bytes."""
    items = ranges(tags, max_gap=max_gap, cap=item_cap(pdu))
    costs = [i.reply_cost for i in items]
    room, slots = pdu - HEADER, items_per_request(pdu, max_items)
    bins, exact = pack(costs, room, slots)
    requests = [Request(tuple(sorted((items[i] for i in b), key=_item_key))) for b in bins if b]
    requests.sort(key=lambda r: _item_key(r.items[0]))
    return Plan(
        requests=tuple(requests),
        pdu=pdu,
        lower_bound=lower_bound(costs, room, slots),
        exact=exact,
    )


def _item_key(item: Item) -> tuple[int, int, int]:
    return (item.area_code, item.db, item.start)
