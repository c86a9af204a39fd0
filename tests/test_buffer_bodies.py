"""Bodies kept deflated on disk (agent.core.buffer.bodies): any bytes round-trip, a record
really is stored smaller, and a buffer written before compression is read as it was."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from agent.core.buffer import MIN_SIZE, Buffer, bodies

# A meter's batch as encode_batch writes it: 50 registers, the same names in every batch.
RECORD = json.dumps(
    {"ts": 1765000000000, "values": {f"r{i}": 1000 + 37 * i for i in range(50)}},
    separators=(",", ":"),
).encode()


@given(st.binary(max_size=2000))
def test_any_bytes_round_trip(body: bytes) -> None:
    assert bodies.unpack(bodies.pack(body)) == body


@given(
    st.binary(max_size=40).map(lambda b: b"\x00" + b)
    | st.binary(max_size=40).map(lambda b: b"\x01" + b)
)
def test_a_body_starting_like_a_marker_round_trips(body: bytes) -> None:
    assert bodies.unpack(bodies.pack(body)) == body


def test_a_record_is_stored_in_half_its_bytes_and_a_small_one_as_it_is() -> None:
    assert len(bodies.pack(RECORD)) < 0.6 * len(RECORD)
    small = b'{"ts":0,"values":{"v":1}}'
    assert bodies.pack(small) == small


async def test_the_store_keeps_bodies_deflated_and_hands_them_back_whole(tmp_path: Path) -> None:
    buf = Buffer(tmp_path, 8 * MIN_SIZE)
    await buf.open()
    for _ in range(3):
        await buf.put("meter", 0, RECORD)
    rows = await buf.fetch(0, 10)
    await buf.close()
    assert [r.body for r in rows] == [RECORD] * 3
    conn = sqlite3.connect(tmp_path / "buffer.db")
    try:
        stored = [bytes(b) for (b,) in conn.execute("SELECT body FROM batches")]
    finally:
        conn.close()
    assert stored and all(len(b) < 0.6 * len(RECORD) for b in stored)


async def test_rows_an_earlier_agent_wrote_are_read_as_they_are(tmp_path: Path) -> None:
    buf = Buffer(tmp_path, 8 * MIN_SIZE)
    await buf.open()
    await buf.put("meter", 0, RECORD)  # creates the schema and the seq counters
    await buf.close()
    conn = sqlite3.connect(tmp_path / "buffer.db")
    try:
        with conn:  # what an agent before compression stored: the JSON itself
            conn.execute("UPDATE batches SET body = ?", (RECORD,))
    finally:
        conn.close()
    buf = Buffer(tmp_path, 8 * MIN_SIZE)
    await buf.open()
    rows = await buf.fetch(0, 10)
    await buf.close()
    assert [r.body for r in rows] == [RECORD]
