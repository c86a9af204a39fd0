"""MC read planning: the plan corpus, and the plan against a brute-force optimum.

The optimum is computed independently of the planner: for every choice of which word tags go
into random reads, the batch reads the other tags need (the fewest groups of consecutive tags,
per device, within ``max_gap`` and the size cap: a dynamic programme) plus the random reads the
chosen tags need (exact bin packing of their points), and the cheapest choice over all of them.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ruamel.yaml import YAML

from drivers.mc.config import McDevice, McTag
from drivers.mc.devices import DEVICES
from drivers.mc.planner import plan, random_points

CORPUS = Path(__file__).resolve().parent.parent / "drivers" / "mc" / "testcases" / "plan"
CASES = sorted(p.name for p in CORPUS.iterdir() if (p / "config.yaml").exists())


def _device(case: str) -> McDevice:
    data = YAML(typ="safe").load((CORPUS / case / "config.yaml").read_text())
    return McDevice.model_validate(
        {
            "name": case.replace("_", "-"),
            "driver": "mc",
            "connection": {"host": "127.0.0.1", "port": 5007},
            **(data.get("device") or {}),
            "tags": data["tags"],
        }
    )


def _plan(device: McDevice, tags: Sequence[McTag] | None = None) -> Any:
    return plan(
        device.tags if tags is None else tags,
        max_gap=device.max_gap,
        max_words=device.max_words,
        max_bits=device.max_bits,
        random_reads=device.random_reads,
        max_random_points=device.max_random_points,
    )


# -- the brute-force optimum -------------------------------------------------------------------


def _batch_optimum(tags: Sequence[McTag], max_gap: int, max_words: int, max_bits: int) -> int:
    """Fewest batch reads for ``tags`` (not overlapping): per device, the fewest groups of
    consecutive tags whose gaps are within ``max_gap`` and whose span is within the cap."""
    total = 0
    for device, kind in DEVICES.items():
        mine = sorted((t for t in tags if t.where.device == device), key=lambda t: t.where.number)
        cap = max_bits if kind.bits else max_words
        best = [0] + [10**9] * len(mine)  # best[i]: the first i tags
        for end in range(1, len(mine) + 1):
            for start in range(end - 1, -1, -1):
                group = mine[start:end]
                span = group[-1].where.number + group[-1].width - group[0].where.number
                gaps_ok = all(
                    b.where.number - (a.where.number + a.width) <= max_gap
                    for a, b in itertools.pairwise(group)
                )
                if not gaps_ok or span > cap:
                    break
                best[end] = min(best[end], best[start] + 1)
        total += best[len(mine)]
    return total


def _bins(sizes: Sequence[int], cap: int) -> int:
    """Fewest bins of ``cap`` for ``sizes`` (exact, by subsets)."""
    n = len(sizes)
    if n == 0:
        return 0

    @functools.cache
    def fewest(left: int) -> int:
        if left == 0:
            return 0
        first = left & -left  # the lowest item left goes into the next bin
        rest = left & ~first
        best = 10**9
        sub = rest
        while True:
            chosen = sub | first
            if sum(sizes[i] for i in range(n) if chosen >> i & 1) <= cap:
                best = min(best, 1 + fewest(left & ~chosen))
            if sub == 0:
                break
            sub = (sub - 1) & rest
        return best

    return fewest((1 << n) - 1)


def optimum(device: McDevice) -> int:
    """The fewest requests any plan can read ``device.tags`` with."""
    tags = list(device.tags)
    movable = [
        i
        for i, t in enumerate(tags)
        if device.random_reads
        and not t.where.kind.bits
        and random_points(t.width) <= device.max_random_points
    ]
    best = 10**9
    for r in range(len(movable) + 1):
        for chosen in itertools.combinations(movable, r):
            rest = [t for i, t in enumerate(tags) if i not in chosen]
            cost = _batch_optimum(rest, device.max_gap, device.max_words, device.max_bits)
            points = [random_points(tags[i].width) for i in chosen]
            best = min(best, cost + _bins(points, device.max_random_points))
    return best


# -- the corpus ----------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_plan_corpus(case: str) -> None:
    device = _device(case)
    reqs = _plan(device)
    expected = (CORPUS / case / "expected.txt").read_text().split("\n")
    assert [r.describe() for r in reqs] == [line for line in expected if line.strip()]


@pytest.mark.parametrize("case", [c for c in CASES if c != "shared_words"])
def test_each_corpus_plan_is_the_optimum(case: str) -> None:
    """(``shared_words`` has overlapping tags, which the brute force does not model.)"""
    device = _device(case)
    assert len(_plan(device)) == optimum(device)


def test_corpus_is_not_empty() -> None:
    assert len(CASES) >= 8


def test_random_reads_take_words_then_double_words() -> None:
    device = _device("scattered_words_random")
    (req,) = _plan(device)
    assert req.kind == "random"
    # int16 and uint16 are word points; int32 one double word; float64 two.
    assert [str(a) for a in req.words] == ["SD210", "D100", "W1A"]
    assert [str(a) for a in req.dwords] == ["ZR2000", "ZR2002", "D5000"]  # largest first
    starts = {s.tag: (s.start, s.count) for s in req.slices}
    assert starts == {"sd": (0, 1), "d": (1, 1), "w": (2, 1), "zr": (3, 4), "dd": (7, 2)}


# -- property: any small tag set plans within limits, each tag once, at the optimum -------------

#: Every number type; strings of 4 words (2 points): with tags of one or two points, first fit
#: decreasing packs random reads optimally, so the plan must be the optimum (module docstring).
WORD_TYPES = {"int16": 1, "uint16": 1, "int32": 2, "float32": 2, "float64": 4, "string": 4}
WORD_DEVICES = ("D", "W", "R", "ZR", "SD")
BIT_DEVICES = ("M", "X", "Y")


@st.composite
def devices(draw: st.DrawFn, *, cut: bool) -> McDevice:
    """Up to 7 tags that do not overlap, over word and bit devices, with random limits;
    ``cut``: batch reads small enough to cut ranges (else the gaps alone decide them)."""
    n = draw(st.integers(1, 7))
    taken: dict[str, set[int]] = {}
    tags: list[dict[str, Any]] = []
    for i in range(n):
        bits = draw(st.booleans()) and draw(st.booleans())  # a quarter of them bits
        device = draw(st.sampled_from(BIT_DEVICES if bits else WORD_DEVICES))
        type_ = "bool" if bits else draw(st.sampled_from(sorted(WORD_TYPES)))
        width = 1 if bits else WORD_TYPES[type_]
        number = draw(st.integers(0, 300))
        used = taken.setdefault(device, set())
        if used & set(range(number, number + width)):
            continue
        used |= set(range(number, number + width))
        base = 16 if DEVICES[device].base == 16 else 10
        address = device + (f"{number:X}" if base == 16 else str(number))
        tag: dict[str, Any] = {"name": f"t{i}", "address": address, "type": type_}
        if type_ == "string":
            tag["length"] = width
        tags.append(tag)
    return McDevice.model_validate(
        {
            "name": "p",
            "driver": "mc",
            "connection": {"host": "h", "port": 1},
            "max_gap": draw(st.integers(0, 40)),
            "max_words": draw(st.integers(4, 40)) if cut else 960,
            "max_bits": draw(st.integers(1, 64)) if cut else 3584,
            "max_random_points": draw(st.integers(2, 8)),
            "random_reads": draw(st.booleans()) or draw(st.booleans()),
            "tags": tags,
        }
    )


@settings(max_examples=150, deadline=None)
@given(device=devices(cut=False))
def test_a_plan_is_the_optimum_when_the_caps_cut_no_range(device: McDevice) -> None:
    """Where ``max_words`` cuts no range, moving whole ranges into random reads is as good as
    any split of the tags (moving a tag out of a range can only split it). Where a cap cuts a
    run of tags, moving one tag could let its neighbours join, which the planner does not try:
    it can then be a request above the optimum (the test below checks those plans are valid)."""
    assert len(_plan(device)) == optimum(device), [r.describe() for r in _plan(device)]


@settings(max_examples=150, deadline=None)
@given(device=devices(cut=True))
def test_any_plan_reads_each_tag_once_within_the_caps(device: McDevice) -> None:
    reqs = _plan(device)
    by_name = {t.name: t for t in device.tags}
    seen: list[str] = []
    for req in reqs:
        if req.kind == "random":
            assert len(req.words) + len(req.dwords) <= device.max_random_points
            flat = list(req.words)
            for d in req.dwords:
                flat += [d, type(d)(d.device, d.number + 1)]
            for s in req.slices:
                t = by_name[s.tag]
                assert [(a.device, a.number) for a in flat[s.start : s.start + s.count]] == [
                    (t.where.device, t.where.number + i) for i in range(t.width)
                ]
                seen.append(s.tag)
            continue
        cap = device.max_bits if req.kind == "bits" else device.max_words
        assert 1 <= req.count <= cap
        assert (req.kind == "bits") == DEVICES[req.device].bits
        for s in req.slices:
            t = by_name[s.tag]
            assert t.where.device == req.device
            assert req.number + s.start == t.where.number
            assert s.count == t.width and s.start + s.count <= req.count
            seen.append(s.tag)
    assert sorted(seen) == sorted(by_name)
    assert len(reqs) <= optimum(device) + 1
