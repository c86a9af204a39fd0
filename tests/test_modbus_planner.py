"""Request planning: coalescing, caps, gaps, shared registers, the plan corpus, and a property."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ruamel.yaml import YAML

from drivers.modbus.config import ModbusDevice, ModbusTag
from drivers.modbus.planner import plan

CORPUS = Path(__file__).resolve().parent.parent / "drivers" / "modbus" / "testcases" / "plan"


def tag(name: str, table: str, address: int, type_: str, **extra: Any) -> ModbusTag:
    return ModbusTag(name=name, table=table, address=address, type=type_, **extra)  # type: ignore[arg-type]


def test_neighbours_share_one_request() -> None:
    reqs = plan([tag("a", "holding", 0, "float32"), tag("b", "holding", 2, "float32")])
    assert [r.describe() for r in reqs] == ["holding 0 4 tags=a,b"]
    assert [(s.tag, s.start, s.count) for s in reqs[0].slices] == [("a", 0, 2), ("b", 2, 2)]


def test_gap_larger_than_max_gap_splits() -> None:
    tags = [tag("a", "holding", 0, "uint16"), tag("b", "holding", 6, "uint16")]
    assert len(plan(tags, max_gap=5)) == 1  # 5 unused registers in between: joins
    assert len(plan(tags, max_gap=4)) == 2


def test_max_registers_caps_a_request() -> None:
    tags = [tag(f"t{i}", "holding", i, "uint16") for i in range(250)]
    reqs = plan(tags)
    assert [(r.address, r.count) for r in reqs] == [(0, 125), (125, 125)]


def test_max_bits_caps_bit_reads() -> None:
    tags = [tag(f"c{i}", "coil", i, "bool") for i in range(0, 3000, 10)]
    reqs = plan(tags, max_gap=16)
    assert all(r.count <= 2000 for r in reqs)
    assert len(reqs) == 2


def test_bits_of_one_register_share_it() -> None:
    tags = [tag(f"b{b}", "holding", 17, "bool", bit=b) for b in (0, 3, 15)]
    (req,) = plan(tags)
    assert (req.address, req.count) == (17, 1)
    assert all(s.start == 0 and s.count == 1 for s in req.slices)


def test_tables_never_mix() -> None:
    tags = [tag("h", "holding", 0, "uint16"), tag("i", "input", 1, "uint16")]
    assert [r.table for r in plan(tags)] == ["holding", "input"]


def test_tag_too_large_for_the_cap_is_refused() -> None:
    with pytest.raises(ValueError, match="more than 4"):
        plan([tag("s", "holding", 0, "string", length=8)], max_registers=4)


CASES = sorted(p.name for p in CORPUS.iterdir() if (p / "config.yaml").exists())


@pytest.mark.parametrize("case", CASES)
def test_plan_corpus(case: str) -> None:
    data = YAML(typ="safe").load((CORPUS / case / "config.yaml").read_text())
    device = ModbusDevice.model_validate(
        {
            "name": case.replace("_", "-"),
            "driver": "modbus",
            "connection": {"host": "127.0.0.1"},
            **(data.get("device") or {}),
            "tags": data["tags"],
        }
    )
    reqs = plan(
        device.tags,
        max_gap=device.max_gap,
        max_registers=device.max_registers,
        max_bits=device.max_bits,
        coalesce=not device.no_coalescing,
        address_offset=device.address_offset,
    )
    expected = (CORPUS / case / "expected.txt").read_text().split("\n")
    assert [r.describe() for r in reqs] == [line for line in expected if line.strip()]


def test_corpus_is_not_empty() -> None:
    assert len(CASES) >= 5


TYPES = {"uint16": 1, "int32": 2, "float64": 4, "bool": 1, "string": 3}


@st.composite
def tag_sets(draw: st.DrawFn) -> list[ModbusTag]:
    n = draw(st.integers(1, 40))
    tags = []
    for i in range(n):
        table = draw(st.sampled_from(["holding", "input", "coil", "discrete"]))
        address = draw(st.integers(0, 400))
        if table in ("coil", "discrete"):
            tags.append(tag(f"t{i}", table, address, "bool"))
            continue
        type_ = draw(st.sampled_from(sorted(TYPES)))
        extra: dict[str, Any] = {}
        if type_ == "bool":
            extra["bit"] = draw(st.integers(0, 15))
        if type_ == "string":
            extra["length"] = TYPES["string"]
        tags.append(tag(f"t{i}", table, address, type_, **extra))
    return tags


@settings(max_examples=200, deadline=None)
@given(
    tags=tag_sets(),
    max_gap=st.integers(0, 40),
    max_registers=st.integers(4, 125),
    max_bits=st.integers(1, 2000),
)
def test_any_tag_set_plans_within_limits_covering_each_tag_once(
    tags: list[ModbusTag], max_gap: int, max_registers: int, max_bits: int
) -> None:
    reqs = plan(tags, max_gap=max_gap, max_registers=max_registers, max_bits=max_bits)
    by_name = {t.name: t for t in tags}
    seen: list[str] = []
    for req in reqs:
        assert 1 <= req.count <= (max_bits if req.is_bits else max_registers)
        for s in req.slices:
            t = by_name[s.tag]
            assert t.table == req.table
            assert req.address + s.start == t.address
            assert s.count == t.width
            assert s.start + s.count <= req.count
            seen.append(s.tag)
    assert sorted(seen) == sorted(by_name)
    # Requests of one table go up the address space, each starting at a tag (no wasted head).
    for table in ("holding", "input", "coil", "discrete"):
        starts = [r.address for r in reqs if r.table == table]
        assert starts == sorted(set(starts))
    assert all(req.slices[0].start == 0 for req in reqs)
