"""The degrading pump proves the prediction: from a healthy bearing to ISO 10816 zone C, the time
to zone C published at half of the remaining life is within ±25 % of the true time, its error
shrinks as the wear progresses, the predicted alarm raises before zone C; and a healthy pump run
just as long never predicts a crossing within the horizon.

The pump's model is driven on simulated time (no network), one waveform every five minutes
with the batches stamped in simulated time, so the prediction's hours and days mean what they
say and three weeks take seconds. The wear follows the simulator's exponential law (the
two-stage bearing model: healthy, then a defect growing the faster the larger it is); the
reference is the run's own measurement: the first hour whose median velocity RMS is in zone C.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.core.processing import Processing
from agent.core.processing.config import ProcessedDevice
from drivers.base import Batch, Reading
from simulators.degrading_pump import DAY, G_PER_COUNT, PumpModel

T0 = 1_763_884_800.0
HOUR = 3600.0
STEP = 180.0  # a waveform every three minutes
ZONE_C = 2.8  # mm/s, ISO 10816-1 class II, the B/C limit
ONSET, LIFE = 6 * DAY, 26 * DAY


def pump() -> ProcessedDevice:
    return ProcessedDevice.model_validate(
        {
            "name": "pump-1",
            "driver": "test",
            "state": {"rules": [{"state": "running", "when": "speed > 100"}]},
            "tags": [
                {"name": "speed"},
                {
                    "name": "vibration",
                    "waveform": {
                        "sample_rate": 5120,
                        "quantity": "acceleration_g",
                        "features": ["velocity_rms"],
                        "zones": {"machine_class": "II"},
                    },
                    "predict": {"feature": "velocity_rms", "zone": "C", "when": "running"},
                    "alarms": [
                        {
                            "name": "bearing_zone_c_soon",
                            "value": "velocity_rms",
                            "mode": "predicted",
                            "within": "2d",
                        }
                    ],
                },
            ],
        }
    )


async def run(model: PumpModel, days: float, data_dir: Path) -> dict[str, Any]:
    """Feed ``days`` of the pump; what was published (by name: (hours, value) pairs), the
    events, and the hourly medians of velocity RMS while running (the reference)."""
    processing = Processing([pump()], data_dir)
    await processing.start()
    published: dict[str, list[tuple[float, Any]]] = {}
    events: list[dict[str, Any]] = []
    hourly: dict[int, list[float]] = {}
    try:
        while model.t < days * DAY:
            model.step(STEP)
            ts = T0 + model.t
            wave = (np.round(model.waveform() / G_PER_COUNT) * G_PER_COUNT).tolist()
            batch = Batch(
                "pump-1",
                ts,
                [Reading("speed", round(model.rpm), ts), Reading("vibration", wave, ts)],
            )
            out = await processing.process(batch)
            assert out is not None
            events += [e.doc for e in out.events]
            for b in out.batches:
                for r in b.readings:
                    published.setdefault(r.tag, []).append(((b.ts - T0) / HOUR, r.value))
            if model.running:
                velocity = [
                    v for t, v in published["vibration.velocity_rms"] if t == model.t / HOUR
                ]
                hourly.setdefault(int(model.t // HOUR), []).extend(velocity)
    finally:
        await processing.stop()
    medians = {h: float(np.median(v)) for h, v in hourly.items() if v}
    return {"published": published, "events": events, "medians": medians}


@pytest.mark.slow
async def test_the_time_to_zone_c_is_predicted_within_25_percent_at_half_life(
    tmp_path: Path,
) -> None:
    model = PumpModel(onset=ONSET, life=LIFE, seed=5, wear_law="exponential")
    result = await run(model, 16.5, tmp_path)
    medians = result["medians"]
    crossed = min(h for h, v in medians.items() if v >= ZONE_C) + 0.5  # the reference, hours
    assert ONSET / HOUR + 48 < crossed < 16.5 * 24, crossed
    ttt = result["published"]["vibration.velocity_rms.ttt_h"]
    low = dict(result["published"]["vibration.velocity_rms.ttt_h_low"])

    half = (ONSET / HOUR + crossed) / 2  # half of the life left between onset and zone C
    at_half = [(t, v) for t, v in ttt if half - 1 <= t <= half + 1]
    assert at_half, "no prediction at half of the remaining life"
    t, predicted = at_half[0]
    true = crossed - t
    assert predicted == pytest.approx(true, rel=0.25), (t, predicted, true)
    assert low[t] <= predicted

    # the error shrinks: the mean absolute error over the last quarter before zone C is less
    # than over the quarter after half-life
    def error(start: float, end: float) -> float:
        errs = [abs(v - (crossed - t)) for t, v in ttt if start <= t < end]
        assert errs, (start, end)
        return float(np.mean(errs))

    quarter = (crossed - half) / 2
    assert error(crossed - quarter, crossed) < error(half, half + quarter)

    # the predicted alarm (within 2 days, on the lower bound) raised after the fault's onset and
    # is active when zone C comes, its events carrying the fit
    events = result["events"]
    assert events and all(e["alarm"] == "bearing_zone_c_soon" for e in events)
    assert all((e["ts"] / 1000 - T0) / HOUR > ONSET / HOUR for e in events)
    before = [e for e in events if (e["ts"] / 1000 - T0) / HOUR < crossed]
    assert before[-1]["event"] == "raise", before
    assert before[-1]["prediction"]["threshold"] == ZONE_C
    assert before[-1]["value"] < 48 and before[-1]["prediction"]["ttt_h"] >= before[-1]["value"]


@pytest.mark.slow
async def test_a_healthy_pump_never_predicts_a_crossing(tmp_path: Path) -> None:
    model = PumpModel(onset=1000 * DAY, life=2000 * DAY, seed=6)  # no fault within the run
    result = await run(model, 16.5, tmp_path)
    published = result["published"]
    trends = [v for _, v in published["vibration.velocity_rms.trend"]]
    assert len(trends) > 24 * 10  # predictions were made all along...
    assert "vibration.velocity_rms.ttt_h" not in published  # ...and none crossed
    assert "vibration.velocity_rms.ttt_h_low" not in published
    assert result["events"] == []
    assert float(np.median(np.abs(trends))) < 0.01  # mm/s per day, on a level of 2: flat
