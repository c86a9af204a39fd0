"""Property tests of the Modbus planner and codec: any tag set, any register content.

The planner must turn any valid tag set into requests within the protocol's limits that cover
exactly the tags (each tag read once, whole, from the right place); the decoder must turn any
register content a device can send, short answers included, into a value without raising.
"""

from __future__ import annotations

import itertools
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.modbus.codec import register_count
from drivers.modbus.config import BIT_TABLES, ModbusDevice, ModbusTag
from drivers.modbus.driver import ModbusDriver, tag_codec
from drivers.modbus.planner import plan

_TYPES = ["bool", "int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64"]
_ORDERS = {1: ["AB", "BA"], 2: ["ABCD", "CDAB", "BADC", "DCBA"], 4: ["ABCDEFGH", "GHEFCDAB"]}
_SETTINGS = settings(max_examples=100, deadline=None, database=None)


@st.composite
def tag_entry(draw: st.DrawFn, index: int) -> dict[str, Any]:
    table = draw(st.sampled_from(["holding", "input", "coil", "discrete"]))
    # Mostly low addresses so tags cluster and merge; some near the top of the address space.
    address = draw(st.one_of(st.integers(0, 300), st.integers(65400, 65535)))
    entry: dict[str, Any] = {"name": f"t{index}", "table": table}
    if table in BIT_TABLES:
        return {**entry, "address": address, "type": "bool"}
    type_ = draw(st.sampled_from([*_TYPES, "string"]))
    entry["type"] = type_
    if type_ == "bool":
        entry["bit"] = draw(st.integers(0, 15))
    elif type_ == "string":
        entry["length"] = draw(st.integers(1, 20))
    else:
        width = register_count(type_)
        if draw(st.booleans()):
            entry["byte_order"] = draw(st.sampled_from(_ORDERS[width]))
        if draw(st.booleans()):
            entry["scale"] = draw(st.sampled_from([0.1, 0.01, 2.0, -1.0, 1e-6, 1e30]))
            entry["offset"] = draw(st.sampled_from([0.0, -40.0, 273.15, 1e300]))
    width = register_count(type_, entry.get("length"))
    entry["address"] = min(address, 65536 - width)
    return entry


@st.composite
def device(draw: st.DrawFn) -> ModbusDevice:
    n = draw(st.integers(1, 40))
    tags = [draw(tag_entry(i)) for i in range(n)]
    return ModbusDevice.model_validate(
        {
            "name": "d",
            "driver": "modbus",
            "connection": {"host": "127.0.0.1"},
            "byte_order": draw(st.sampled_from(["ABCD", "CDAB", "BADC", "DCBA"])),
            "max_gap": draw(st.integers(0, 64)),
            "max_registers": draw(st.integers(20, 125)),
            "max_bits": draw(st.integers(1, 2000)),
            "tags": tags,
        }
    )


def _width(tag: ModbusTag) -> int:
    return 1 if tag.table in BIT_TABLES else register_count(tag.type, tag.length)


@_SETTINGS
@given(device())
def test_any_tag_set_plans_to_requests_within_limits_covering_exactly_the_tags(
    dev: ModbusDevice,
) -> None:
    requests = plan(
        dev.tags, max_gap=dev.max_gap, max_registers=dev.max_registers, max_bits=dev.max_bits
    )
    by_name = {t.name: t for t in dev.tags}
    covered: list[str] = []
    for req in requests:
        cap = dev.max_bits if req.table in BIT_TABLES else dev.max_registers
        assert 1 <= req.count <= cap, req
        assert req.address >= 0 and req.address + req.count <= 65536, req
        for s in req.slices:
            tag = by_name[s.tag]
            assert tag.table == req.table
            assert req.address + s.start == tag.address, (req, s)
            assert s.count == _width(tag) and s.start + s.count <= req.count, (req, s)
            covered.append(s.tag)
    assert sorted(covered) == sorted(by_name), "each tag read exactly once"
    # Tags that do not overlap are never read twice: their table's requests do not overlap
    # (overlapping tags, a string and a bit inside it say, may straddle two requests).
    for table in ("holding", "input", "coil", "discrete"):
        tags = sorted((t.address, t.address + _width(t)) for t in dev.tags if t.table == table)
        if any(a[1] > b[0] for a, b in itertools.pairwise(tags)):
            continue
        spans = sorted((r.address, r.address + r.count) for r in requests if r.table == table)
        assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans)), spans


@_SETTINGS
@given(device(), st.data())
def test_decoding_any_register_content_never_raises(dev: ModbusDevice, data: st.DataObject) -> None:
    driver = ModbusDriver(dev)
    for req in driver.requests:
        if req.is_bits:
            words: list[Any] = data.draw(st.lists(st.booleans(), max_size=req.count + 2))
        else:
            words = data.draw(st.lists(st.integers(0, 0xFFFF), min_size=0, max_size=req.count + 2))
        for _name, start, end, _part, decoder in driver._reads_for(req):
            value = decoder(words[start:end])
            assert isinstance(value, bool | int | float | str)


@_SETTINGS
@given(
    st.sampled_from(_TYPES),
    st.lists(st.integers(0, 0xFFFF), min_size=0, max_size=6),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(allow_nan=True, allow_infinity=True),
)
def test_decoding_with_any_scale_and_offset_never_raises(
    type_: str, words: list[int], scale: float, offset: float
) -> None:
    if type_ == "bool":
        return
    tag = ModbusTag.model_validate(
        {"name": "x", "table": "holding", "address": 0, "type": type_}
    ).model_copy(update={"scale": scale, "offset": offset})
    from drivers.modbus.codec import make_decoder

    value = make_decoder(tag_codec(tag, "CDAB"))(words)
    assert isinstance(value, int | float)
