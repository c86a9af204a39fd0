"""The frame splitter: every framing, frames split across feeds, noise, overflow, resync."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.serial.framing import Event, Frame, FrameError, FrameSplitter


def frames(events: list[Event]) -> list[bytes]:
    return [e.payload for e in events if isinstance(e, Frame)]


def errors(events: list[Event]) -> list[tuple[str, bytes]]:
    return [(e.kind, e.sample) for e in events if isinstance(e, FrameError)]


def feed_bytewise(splitter: FrameSplitter, data: bytes) -> list[Event]:
    events: list[Event] = []
    for i in range(len(data)):
        events += splitter.feed(data[i : i + 1])
    return events


def test_terminator_two_frames_in_one_read() -> None:
    s = FrameSplitter(end=b"\r\n")
    assert frames(s.feed(b"ST,GS,+0012.34 kg\r\nUS,GS,+0001.00 kg\r\n")) == [
        b"ST,GS,+0012.34 kg",
        b"US,GS,+0001.00 kg",
    ]


def test_terminator_split_across_reads_including_the_terminator() -> None:
    s = FrameSplitter(end=b"\r\n")
    assert s.feed(b"PV=18") == []
    assert s.feed(b"2.5\r") == []
    assert frames(s.feed(b"\nPV=1")) == [b"PV=182.5"]
    assert frames(s.feed(b"83.0\r\n")) == [b"PV=183.0"]


def test_empty_lines_are_skipped() -> None:
    s = FrameSplitter(end=b"\n")
    assert s.feed(b"\n\na\n\n") == [Frame(b"a")]


def test_start_end_noise_before_start_is_reported_and_skipped() -> None:
    s = FrameSplitter(start=b"\x02", end=b"\x03")
    events = s.feed(b"xx\x02abc\x03\x02de")
    assert frames(events) == [b"abc"]
    assert errors(events) == [("noise", b"xx")]
    assert frames(s.feed(b"f\x03")) == [b"def"]


def test_start_end_a_second_start_abandons_the_unfinished_frame() -> None:
    s = FrameSplitter(start=b"\x02", end=b"\x03")
    events = s.feed(b"\x02hal\x02whole\x03")
    assert frames(events) == [b"whole"]
    assert errors(events) == [("noise", b"\x02hal")]


def test_fixed_length_without_start() -> None:
    s = FrameSplitter(length=4)
    assert frames(s.feed(b"abcdefg")) == [b"abcd"]
    assert frames(s.feed(b"h")) == [b"efgh"]


def test_fixed_length_with_start_resynchronises_on_the_marker() -> None:
    s = FrameSplitter(start=b"@", length=4)
    events = s.feed(b"zz@abc@de@fgh")
    assert frames(events) == [b"abc", b"fgh"]
    assert errors(events) == [("noise", b"zz"), ("noise", b"@de")]


def test_discard_drops_an_unfinished_frame_as_noise() -> None:
    s = FrameSplitter(length=4)
    s.feed(b"ab")
    assert s.discard() == FrameError("noise", b"ab")
    assert s.discard() is None
    assert frames(s.feed(b"wxyz")) == [b"wxyz"]


def test_overflow_is_reported_once_then_resync_on_next_terminator() -> None:
    s = FrameSplitter(end=b"\r\n", max_frame=8)
    events = s.feed(b"0123456789") + s.feed(b"abcdefghij" * 5) + s.feed(b"\r\nok\r\n")
    assert errors(events) == [("frame too long", b"01234567")]
    assert frames(events) == [b"ok"]


def test_overflow_of_a_complete_frame_in_one_read() -> None:
    s = FrameSplitter(end=b"\n", max_frame=3)
    events = s.feed(b"abcd\nxyz\n")
    assert errors(events) == [("frame too long", b"abc")]
    assert frames(events) == [b"xyz"]


def test_overflow_with_start_marker_hunts_for_the_next_start() -> None:
    s = FrameSplitter(start=b"\x02", end=b"\x03", max_frame=4)
    events = s.feed(b"\x02" + b"x" * 10) + s.feed(b"\x03\x02ok\x03")
    assert ("frame too long", b"xxxx") in errors(events)
    assert frames(events) == [b"ok"]


def test_multi_byte_start_marker_split_across_reads() -> None:
    s = FrameSplitter(start=b"<<", end=b">>")
    assert s.feed(b"noise<") == [FrameError("noise", b"noise")]
    assert frames(s.feed(b"<abc>")) == []
    assert frames(s.feed(b">")) == [b"abc"]


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError):
        FrameSplitter()
    with pytest.raises(ValueError):
        FrameSplitter(end=b"\n", length=3)


# -- properties -------------------------------------------------------------------------------

FRAMINGS: dict[str, dict[str, Any]] = {
    "terminator": {"end": b"\r\n"},
    "start-end": {"start": b"\x02", "end": b"\x03"},
    "start-length": {"start": b"\x02", "length": 9},
}
SAFE = st.binary(min_size=1, max_size=40).map(
    lambda b: bytes(c for c in b if c not in b"\r\n\x02\x03") or b"v"
)


@settings(max_examples=200, deadline=None)
@given(
    framing=st.sampled_from(sorted(FRAMINGS)),
    data=st.lists(st.binary(max_size=80), max_size=8),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=10),
)
def test_splitter_never_raises_on_any_bytes(
    framing: str, data: list[bytes], cuts: list[int]
) -> None:
    s = FrameSplitter(max_frame=16, **FRAMINGS[framing])
    stream = b"".join(data)
    bounds = sorted({0, len(stream), *(c for c in cuts if c < len(stream))})
    for a, b in itertools.pairwise(bounds):
        for event in s.feed(stream[a:b]):
            if isinstance(event, Frame):
                assert len(event.payload) <= 16
    s.discard()


@settings(max_examples=200, deadline=None)
@given(
    framing=st.sampled_from(sorted(FRAMINGS)),
    noise=st.binary(max_size=300),
    payload=SAFE,
    cut=st.integers(min_value=0, max_value=400),
)
def test_a_valid_frame_after_noise_is_never_lost(
    framing: str, noise: bytes, payload: bytes, cut: int
) -> None:
    options = FRAMINGS[framing]
    if "length" in options:
        payload = (payload * 8)[:8]
        frame = b"\x02" + payload
        noise = noise.replace(b"\x02", b"")  # a fixed-length frame may contain anything after it
    elif "start" in options:
        frame = b"\x02" + payload + b"\x03"
    else:
        noise += b"\r\n"  # without a start marker only a terminator tells noise from a frame
        frame = payload + b"\r\n"
    s = FrameSplitter(max_frame=64, **options)
    stream = noise + frame
    cut = min(cut, len(stream))
    events = s.feed(stream[:cut]) + s.feed(stream[cut:])
    assert frames(events)[-1:] == [payload]
