"""The pipeline with processing in front of a real buffer: what gets committed, on which stream,
with which seq; and that devices without processing are untouched."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from agent.core.buffer import Buffer
from agent.core.pipeline import Pipeline
from agent.core.processing import Output, Processing
from agent.core.processing.config import ProcessedDevice
from agent.core.record import encode_batch
from agent.north.formats import JsonFormat
from drivers.base import Batch, Reading

T0 = 1_763_884_800.0


def pump() -> ProcessedDevice:
    return ProcessedDevice.model_validate(
        {
            "name": "pump-1",
            "driver": "test",
            "tags": [
                {
                    "name": "temp",
                    "deadband": 0.5,
                    "window": {"length": 10, "raw": True},
                    "alarms": [{"name": "hot", "on": "> 80", "off": "< 75"}],
                },
                {
                    "name": "vib",
                    "waveform": {"sample_rate": 1000, "features": ["rms", "dominant_frequency"]},
                },
            ],
        }
    )


async def test_processed_batches_events_and_untouched_devices(tmp_path: Path) -> None:
    other = ProcessedDevice.model_validate(
        {"name": "meter", "driver": "test", "tags": [{"name": "v"}]}
    )
    processing = Processing([pump(), other], tmp_path)
    buffer = Buffer(tmp_path, 4_000_000)
    await buffer.open()
    await processing.start()
    try:
        pipeline = Pipeline(buffer, processing)
        t = np.arange(1000) / 1000
        wave = (3 * np.sin(2 * np.pi * 50 * t)).tolist()
        batches = [
            Batch("pump-1", T0 + 1, [Reading("temp", 70.0, T0 + 1), Reading("vib", wave, T0 + 1)]),
            Batch("pump-1", T0 + 2, [Reading("temp", 70.2, T0 + 2)]),  # within the deadband
            Batch("pump-1", T0 + 11, [Reading("temp", 85.0, T0 + 11)]),  # closes, raises
            Batch("meter", T0 + 11, [Reading("v", 1.5, T0 + 11)]),
        ]
        for b in batches:
            await pipeline.submit(b)
        assert [b.seq for b in batches] == [1, None, 3, 1]
        rows = await buffer.fetch(0, 100)
        fmt = JsonFormat("gw", "edge/gw")
        stream = {"data": ""}  # the kind column says what a row is: data, or an event
        by_topic = [
            (fmt.data_topic(r.device + stream.get(r.kind, f"/{r.kind}")), r.seq, fmt.encode(r))
            for r in rows
        ]
        by_topic = [(t, seq, json.loads(body)) for t, seq, body in by_topic]
        topics = [(topic, seq) for topic, seq, _ in by_topic]
        assert topics == [
            ("edge/gw/pump-1/data", 1),
            ("edge/gw/pump-1/data", 2),  # the window closed at T0 + 10, before the new batch
            ("edge/gw/pump-1/data", 3),
            ("edge/gw/pump-1/event", 1),  # events have their own seq
            ("edge/gw/meter/data", 1),
        ]
        first = by_topic[0][2]
        assert first["values"]["temp"] == 70.0
        assert "vib" not in first["values"]  # the waveform itself is not published by default
        assert abs(first["values"]["vib.rms"] - 3 / np.sqrt(2)) < 1e-5  # 6 significant digits
        assert abs(first["values"]["vib.dominant_frequency"] - 50) < 0.25
        window = by_topic[1][2]
        assert window["ts"] == round((T0 + 10) * 1000)
        assert window["values"] == {
            "temp.min": 70.0,
            "temp.max": 70.2,
            "temp.mean": 70.1,
            "temp.last": 70.2,
            "temp.count": 2,
        }
        event = by_topic[3][2]
        assert event["device"] == "pump-1" and event["agent"] == "gw"
        assert event["event"] == "raise" and event["alarm"] == "hot" and event["value"] == 85.0
        assert rows[-1].body == encode_batch(batches[-1])  # no processing: the same bytes
    finally:
        await processing.stop()
        await buffer.close()


async def test_a_list_that_is_not_a_waveform_is_a_bad_reading_not_silence(tmp_path: Path) -> None:
    processing = Processing([pump()], tmp_path)
    buffer = Buffer(tmp_path, 4_000_000)
    await buffer.open()
    await processing.start()
    try:
        pipeline = Pipeline(buffer, processing)
        weird = Batch("pump-1", T0, [Reading("vib", ["not", "numbers"], T0)])
        await pipeline.submit(weird)
        good = Batch("pump-1", T0 + 1, [Reading("vib", [0.0, 1.0, 0.0, -1.0] * 8, T0 + 1)])
        await pipeline.submit(good)
        rows = await buffer.fetch(0, 10)
        assert json.loads(rows[0].body)["quality"] == {"vib": "bad: not a waveform"}
        assert "vib.rms" in json.loads(rows[1].body)["values"]
    finally:
        await processing.stop()
        await buffer.close()


class _Broken(Processing):
    """Stands for a bug in a processing stage: what cannot be provoked with real input."""

    async def process(self, batch: Batch) -> Output | None:
        raise RuntimeError("a bug")


async def test_a_failing_processing_stage_costs_no_reading(tmp_path: Path) -> None:
    processing = _Broken([pump()], tmp_path)
    buffer = Buffer(tmp_path, 4_000_000)
    await buffer.open()
    try:
        batch = Batch("pump-1", T0, [Reading("temp", 71.0, T0)])
        await Pipeline(buffer, processing).submit(batch)
        assert batch.seq == 1
        assert json.loads((await buffer.fetch(0, 10))[0].body)["values"] == {"temp": 71.0}
    finally:
        await buffer.close()
