"""Request planning: a PLC's tags turned into the fewest MC requests, once at start.

Two kinds of read exist. A batch read (0401) takes a contiguous range of one device, up to 960
words or 3584 bits: tags of one device a few numbers apart (``max_gap``) share one. A random
read (0403) takes up to 192 single words and double words of any word devices at once: tags
scattered over D, W, R, ZR and SD, each too far from the next to share a batch read, cost one
request per 192 points instead of one per tag.

The plan first coalesces every device's tags into batch ranges (a left-to-right sweep: for tags
that do not overlap, closing a range as late as possible gives the fewest ranges). Then, when
random reads are allowed, it moves the word ranges that cost the fewest points into random
reads, as many as lowers the count: moving the k cheapest ranges costs ``ranges - k`` batch
reads plus the random reads their points pack into (first fit, largest first), and the plan
takes the k with the fewest requests (none when moving does not save one). In a random read a
tag of odd width is read as words, one of even width as double words (an int32 or a float32 is
one point, a float64 two). When every tag is one or two points (every number type, strings of
2 or 4 words) and no range is cut by ``max_words``, this is the optimum over every way of
splitting tags between batch and random reads (``tests/test_mc_planner.py`` checks it against
a brute force); where a cap cuts a run of tags, moving a single tag could let its neighbours
join, which the planner does not try.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from drivers.mc.devices import DEVICES, Address, format_address

RequestKind = Literal["words", "bits", "random"]


class PlanTag(Protocol):
    """What planning reads of a tag (an ``McTag``, or a plain tuple in tests and benchmarks)."""

    @property
    def name(self) -> str: ...
    @property
    def where(self) -> Address: ...
    @property
    def width(self) -> int: ...


@dataclass(frozen=True, slots=True)
class TagSlice:
    """Where one tag's words (or bits) sit in its request's answer, as a flat list of words: a
    random read's answer is its word points, then each double word as low word, high word."""

    tag: str
    start: int
    count: int


@dataclass(frozen=True, slots=True)
class Request:
    """One read: a batch of ``count`` words or bits of ``device`` from ``number``, or a random
    read of ``words`` and ``dwords``."""

    kind: RequestKind
    slices: tuple[TagSlice, ...]
    device: str = ""
    number: int = 0
    count: int = 0
    words: tuple[Address, ...] = ()
    dwords: tuple[Address, ...] = ()

    @property
    def tags(self) -> tuple[str, ...]:
        return tuple(s.tag for s in self.slices)

    @property
    def size(self) -> int:
        """Words (bits for a bit read) the answer carries."""
        if self.kind == "random":
            return len(self.words) + 2 * len(self.dwords)
        return self.count

    def describe(self) -> str:
        """One line, as the plan corpus's ``expected.txt`` writes it."""
        names = ",".join(self.tags)
        if self.kind == "random":
            words = ",".join(str(a) for a in self.words) or "-"
            dwords = ",".join(str(a) for a in self.dwords) or "-"
            return f"random words={words} dwords={dwords} tags={names}"
        return f"{self.kind} {format_address(self.device, self.number)} {self.count} tags={names}"


def random_points(width: int) -> int:
    """Points a value of ``width`` words costs in a random read (double words when even)."""
    return width if width % 2 else width // 2


@dataclass(frozen=True, slots=True)
class _Range:
    device: str
    start: int
    end: int  # exclusive
    tags: tuple[PlanTag, ...]

    @property
    def points(self) -> int:
        return sum(random_points(t.width) for t in self.tags)


def _ranges(tags: Sequence[PlanTag], max_gap: int, max_words: int, max_bits: int) -> list[_Range]:
    """Every device's tags swept into batch ranges, devices in a fixed order."""
    out: list[_Range] = []
    for device, kind in DEVICES.items():
        cap = max_bits if kind.bits else max_words
        mine = sorted(
            (t for t in tags if t.where.device == device),
            key=lambda t: (t.where.number, t.where.number + t.width),
        )
        group: list[PlanTag] = []
        start = end = 0
        for t in mine:
            first = t.where.number
            last = first + t.width
            if group and first - end <= max_gap and max(end, last) - start <= cap:
                group.append(t)
                end = max(end, last)
                continue
            if group:
                out.append(_Range(device, start, end, tuple(group)))
            group, start, end = [t], first, last
        if group:
            out.append(_Range(device, start, end, tuple(group)))
    return out


def _batch(r: _Range) -> Request:
    kind: RequestKind = "bits" if DEVICES[r.device].bits else "words"
    slices = tuple(TagSlice(t.name, t.where.number - r.start, t.width) for t in r.tags)
    return Request(kind, slices, device=r.device, number=r.start, count=r.end - r.start)


def _pack(tags: Sequence[PlanTag], cap: int) -> list[list[PlanTag]]:
    """Tags into random reads of at most ``cap`` points: first fit, largest first (optimal when
    every tag is one or two points, as numbers are; near it otherwise)."""
    bins: list[list[PlanTag]] = []
    room: list[int] = []
    for t in sorted(tags, key=lambda t: -random_points(t.width)):
        p = random_points(t.width)
        for i, left in enumerate(room):
            if p <= left:
                bins[i].append(t)
                room[i] -= p
                break
        else:
            bins.append([t])
            room.append(cap - p)
    return bins


def _random(tags: Sequence[PlanTag]) -> Request:
    """One random read of ``tags``: word points first, then double words, in tag order."""
    singles = [t for t in tags if t.width % 2]
    doubles = [t for t in tags if not t.width % 2]
    words: list[Address] = []
    dwords: list[Address] = []
    slices: list[TagSlice] = []
    for t in singles:
        slices.append(TagSlice(t.name, len(words), t.width))
        words += [Address(t.where.device, t.where.number + i) for i in range(t.width)]
    for t in doubles:
        slices.append(TagSlice(t.name, len(words) + 2 * len(dwords), t.width))
        dwords += [Address(t.where.device, t.where.number + i) for i in range(0, t.width, 2)]
    return Request("random", tuple(slices), words=tuple(words), dwords=tuple(dwords))


def plan(
    tags: Sequence[PlanTag],
    *,
    max_gap: int = 16,
    max_words: int = 960,
    max_bits: int = 3584,
    random_reads: bool = True,
    max_random_points: int = 192,
) -> tuple[Request, ...]:
    """Group tags into read requests: batch ranges, and random reads where they save requests.
    Batch reads come in device order, random reads after them."""
    ranges = _ranges(tags, max_gap, max_words, max_bits)
    if not random_reads:
        return tuple(_batch(r) for r in ranges)
    # Word ranges whose every tag fits a random read, cheapest first (stable: ties keep order).
    movable = sorted(
        (
            i
            for i, r in enumerate(ranges)
            if not DEVICES[r.device].bits
            and all(random_points(t.width) <= max_random_points for t in r.tags)
        ),
        key=lambda i: ranges[i].points,
    )
    # Moving the k cheapest costs at least ranges - k + ceil(points / cap): try the k in order
    # of that bound, packing each, until no bound left can beat the best packing found.
    total, bounds = 0, [(len(ranges), 0)]
    for k, i in enumerate(movable, 1):
        total += ranges[i].points
        bounds.append((len(ranges) - k + -(-total // max_random_points), k))
    bounds.sort()
    best_k, best_cost = 0, len(ranges)
    for bound, k in bounds:
        if bound >= best_cost:
            break
        chosen = [t for i in movable[:k] for t in ranges[i].tags]
        cost = len(ranges) - k + len(_pack(chosen, max_random_points))
        if cost < best_cost:
            best_k, best_cost = k, cost
    moved = set(movable[:best_k])
    batches = [_batch(r) for i, r in enumerate(ranges) if i not in moved]
    scattered = [t for i in movable[:best_k] for t in ranges[i].tags]
    return (*batches, *(_random(b) for b in _pack(scattered, max_random_points)))
