"""S7 read planning: the plan corpus, the PDU budgets, and the packing's optimality (properties
checked against an exhaustive search over every partition of small range sets)."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ruamel.yaml import YAML

from drivers.s7.config import S7Device
from drivers.s7.driver import _PlanTag
from drivers.s7.planner import (
    HEADER,
    ITEM_REQUEST,
    MAX_ITEMS,
    _first_fit,
    item_cap,
    items_per_request,
    lower_bound,
    pack,
    plan,
)

CORPUS = Path(__file__).resolve().parent.parent / "drivers" / "s7" / "testcases" / "plan"
CASES = sorted(p.name for p in CORPUS.iterdir() if (p / "config.yaml").exists())


def _device(tags: list[dict[str, Any]], **keys: Any) -> S7Device:
    return S7Device.model_validate(
        {"name": "p", "driver": "s7", "connection": {"host": "h"}, **keys, "tags": tags}
    )


def _plan_tags(device: S7Device) -> list[_PlanTag]:
    return [
        _PlanTag(t.name, t.location.area, t.location.db, t.location.byte, t.bytes)
        for t in device.tags
    ]


@pytest.mark.parametrize("case", CASES)
def test_plan_corpus(case: str) -> None:
    data = YAML(typ="safe").load((CORPUS / case / "config.yaml").read_text())
    device = _device(data["tags"], **(data.get("device") or {}))
    got = plan(_plan_tags(device), pdu=data["pdu"], max_gap=device.max_gap)
    expected = [line for line in (CORPUS / case / "expected.txt").read_text().split("\n") if line]
    assert [r.describe() for r in got.requests] == expected
    # Every case is solved to proven optimality, at the lower bound or by the search.
    assert got.exact
    assert len(got.requests) >= got.lower_bound


def test_corpus_is_not_empty() -> None:
    assert len(CASES) >= 8


def test_first_fit_decreasing_is_beaten_where_it_is_not_optimal() -> None:
    """The corpus's bin_packing case, as costs: FFD takes 3 requests, the plan 2."""
    costs = [10, 38, 48, 16, 16, 54, 14]
    order = sorted(range(len(costs)), key=lambda i: -costs[i])
    assert len(_first_fit(order, costs, 100, 20)) == 3
    bins, exact = pack(costs, 100, 20)
    assert (len(bins), exact) == (2, True)
    assert sorted(i for b in bins for i in b) == list(range(len(costs)))


def test_budgets_follow_the_pdu() -> None:
    assert item_cap(240) == 222 and item_cap(480) == 462 and item_cap(960) == 942
    assert items_per_request(240) == 18  # 14 + 12 x 18 = 230
    assert items_per_request(480) == MAX_ITEMS
    with pytest.raises(ValueError, match="cannot carry"):
        item_cap(19)


def _partitions(items: list[int]) -> Any:
    """Every partition of ``items`` into non-empty groups."""
    if not items:
        yield []
        return
    first, rest = items[0], items[1:]
    for part in _partitions(rest):
        for i in range(len(part)):
            yield [*part[:i], [first, *part[i]], *part[i + 1 :]]
        yield [[first], *part]


def _optimum(costs: list[int], room: int, slots: int) -> int:
    return min(
        len(p)
        for p in _partitions(list(range(len(costs))))
        if all(sum(costs[i] for i in g) <= room and len(g) <= slots for g in p)
    )


@settings(max_examples=150, deadline=None)
@given(
    costs=st.lists(st.integers(3, 51).map(lambda n: 2 * n), min_size=1, max_size=8),
    room=st.integers(102, 160),
    slots=st.integers(1, 6),
)
def test_packing_is_the_optimum_of_every_partition(costs: list[int], room: int, slots: int) -> None:
    bins, exact = pack(costs, room, slots)
    assert exact
    assert sorted(i for b in bins for i in b) == list(range(len(costs)))
    assert all(sum(costs[i] for i in b) <= room and len(b) <= slots for b in bins)
    assert len(bins) == _optimum(costs, room, slots)
    assert len(bins) >= lower_bound(costs, room, slots)


TYPES = {"INT": "W", "REAL": "D", "BYTE": "B", "LREAL": "B", "BOOL": "X"}


@st.composite
def tag_sets(draw: st.DrawFn) -> list[dict[str, Any]]:
    tags = []
    for i in range(draw(st.integers(1, 40))):
        area = draw(st.sampled_from(["DB1", "DB7", "M", "I", "Q"]))
        type_ = draw(st.sampled_from(sorted(TYPES)))
        byte = draw(st.integers(0, 600))
        letter = TYPES[type_]
        if area.startswith("DB"):
            tail = f"X{byte}.{byte % 8}" if letter == "X" else f"{letter}{byte}"
            address = f"{area}.DB{tail}"
        else:
            address = f"{area}{byte}.{byte % 8}" if letter == "X" else f"{area}{letter}{byte}"
        tag: dict[str, Any] = {"name": f"t{i}", "address": address, "type": type_}
        if draw(st.booleans()):
            tag["count"] = draw(st.integers(1, 90))
        tags.append(tag)
    return tags


@settings(max_examples=100, deadline=None)
@given(tags=tag_sets(), pdu=st.sampled_from([114, 240, 480, 960]), max_gap=st.integers(0, 20))
def test_any_tag_set_plans_within_the_pdu_covering_each_byte_once(
    tags: list[dict[str, Any]], pdu: int, max_gap: int
) -> None:
    device = _device(tags, max_gap=max_gap)
    got = plan(_plan_tags(device), pdu=pdu, max_gap=max_gap)
    covered: dict[str, list[tuple[int, int]]] = {}
    for req in got.requests:
        assert 1 <= len(req.items) <= items_per_request(pdu)
        assert HEADER + ITEM_REQUEST * len(req.items) <= pdu
        assert HEADER + sum(i.reply_cost for i in req.items) <= pdu
        for item in req.items:
            assert 1 <= item.size <= item_cap(pdu)
            for p in item.pieces:
                assert p.start >= 0 and p.start + p.count <= item.size
                covered.setdefault(p.tag, []).append((p.part, p.count))
                t = next(t for t in device.tags if t.name == p.tag)
                assert item.start + p.start == t.location.byte + p.part
                assert item.area == t.location.area and item.db == t.location.db
    for t in device.tags:
        pieces = sorted(covered[t.name])
        assert pieces[0][0] == 0
        assert all(a[0] + a[1] == b[0] for a, b in itertools.pairwise(pieces))
        assert pieces[-1][0] + pieces[-1][1] == t.bytes
    # Never worse than first-fit decreasing, never below the bound; proven optimal wherever
    # the search finishes (always for the corpus and for up to eight ranges, see above).
    items = [i for r in got.requests for i in r.items]
    costs = [i.reply_cost for i in items]
    order = sorted(range(len(costs)), key=lambda i: -costs[i])
    ffd = _first_fit(order, costs, pdu - HEADER, items_per_request(pdu))
    assert got.lower_bound <= len(got.requests) <= len(ffd)
