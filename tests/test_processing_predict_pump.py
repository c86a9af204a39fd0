"""The degrading pump proves the prediction: from a healthy bearing to ISO 10816 zone C, the time
to zone C published at half of the remaining life is within ±25 % of the true time, for both of
the simulator's wear laws and four seeds each, its error shrinks as the wear progresses, the
predicted alarm raises before zone C; and a healthy pump run just as long never predicts a
crossing within the horizon.

The pump's model is driven on simulated time (no network), one waveform every three minutes
with the batches stamped in simulated time, so the prediction's hours and days mean what they
say and three weeks take seconds. The reference is the run's own measurement: where a local
quadratic through the hourly medians of velocity RMS (36 hours either side of the first hour in
zone C) reaches zone C; the first such hour alone is off by the hourly noise, several hours at
the end's slope.

The seeds run two at a time in child processes (the two cores), each feeding its velocity RMS
to a ``Predictor`` as the device does, without the per-hour fits before half-life that no
assertion reads; the end-to-end run (alarms, publishing) is the exponential law's seed 5.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.core.processing import Processing
from agent.core.processing.config import ProcessedDevice
from agent.core.processing.predict import Predictor
from drivers.base import Batch, Reading
from simulators.degrading_pump import DAY, G_PER_COUNT, PumpModel, WearLaw

T0 = 1_763_884_800.0
HOUR = 3600.0
STEP = 180.0  # a waveform every three minutes
ZONE_C = 2.8  # mm/s, ISO 10816-1 class II, the B/C limit
ONSET, LIFE = 6 * DAY, 26 * DAY
SEEDS = (5, 6, 7, 8)


def pump(predict: bool = True) -> ProcessedDevice:
    doc: dict[str, Any] = {
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
    if not predict:  # the features alone
        for key in ("predict", "alarms"):
            del doc["tags"][1][key]
    return ProcessedDevice.model_validate(doc)


async def run(
    model: PumpModel, days: float, data_dir: Path, predict: bool = True
) -> dict[str, Any]:
    """Feed ``days`` of the pump; what was published (by name: (hours, value) pairs), the
    events, the velocity RMS while running ((ts, value) pairs) and its hourly medians."""
    processing = Processing([pump(predict)], data_dir)
    await processing.start()
    published: dict[str, list[tuple[float, Any]]] = {}
    events: list[dict[str, Any]] = []
    hourly: dict[int, list[float]] = {}
    running: list[tuple[float, float]] = []
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
                running += [(ts, v) for v in velocity]
    finally:
        await processing.stop()
    medians = {h: float(np.median(v)) for h, v in hourly.items() if v}
    return {"published": published, "events": events, "medians": medians, "running": running}


def zone_c_reached(medians: dict[int, float]) -> float:
    """Hours from the start until the velocity RMS reaches zone C: where a quadratic through
    the hourly medians 36 hours either side of the first hour in zone C meets it."""
    first = min(h for h, v in medians.items() if v >= ZONE_C) + 0.5
    near = [(h + 0.5 - first, v) for h, v in medians.items() if abs(h + 0.5 - first) <= 36]
    x, y = np.array(near).T
    roots = np.roots(np.polyfit(x, y, 2) - np.array([0.0, 0.0, ZONE_C]))
    real = roots[np.isreal(roots)].real
    return first + float(real[np.argmin(np.abs(real))])


def accuracy(wear_law: WearLaw, seed: int) -> dict[str, Any]:
    """One fault run (16.5 days): the true hours to zone C, and every prediction made from
    half of the remaining life until zone C: (hours from the start, ttt_h)."""
    model = PumpModel(onset=ONSET, life=LIFE, seed=seed, wear_law=wear_law)
    with tempfile.TemporaryDirectory() as data_dir:
        result = asyncio.run(run(model, 16.5, Path(data_dir), predict=False))
    crossed = zone_c_reached(result["medians"])
    half = (ONSET / HOUR + crossed) / 2
    spec = pump().tags[1].predict[0]
    predictor = Predictor(spec, "vibration.velocity_rms", ZONE_C)
    made: list[tuple[float, float | None]] = []
    for ts, v in result["running"]:
        hours = (ts - T0) / HOUR
        if predictor.add(v, ts) and predictor.ready and half - 1 <= hours < crossed:
            figures = predictor.fit(predictor.points)
            made.append((hours, predictor.published(figures, ts).get("ttt_h")))
    return {"crossed": crossed, "half": half, "made": made}


def median_error(
    made: list[tuple[float, float | None]], crossed: float, start: float, end: float
) -> tuple[float, float]:
    """The median error of the predictions made from ``start`` to ``end``, in hours and
    relative to the time left; a prediction of no crossing misses all of it."""
    errors = [
        (abs(v - (crossed - t)), abs(v - (crossed - t)) / (crossed - t))
        if v is not None
        else (crossed - t, 1.0)
        for t, v in made
        if start <= t < end
    ]
    assert errors, (start, end)
    hours, relative = np.median(np.array(errors), axis=0)
    return float(hours), float(relative)


@pytest.mark.slow
def test_the_time_to_zone_c_is_predicted_within_25_percent_at_half_life_for_both_laws() -> None:
    runs = [(law, seed) for law in ("quadratic", "exponential") for seed in SEEDS]
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(2, mp_context=spawn) as pool:
        results = dict(zip(runs, pool.map(accuracy, *zip(*runs, strict=True)), strict=True))
    at_half: dict[tuple[str, int], float] = {}
    for run_, r in results.items():
        crossed, half, made = r["crossed"], r["half"], r["made"]
        assert ONSET / HOUR + 48 < crossed < 15 * 24, (run_, crossed)
        # the first prediction from half-life on (the pump stops four hours a day)
        t, predicted = next((t, v) for t, v in made if t >= half - 1)
        assert t <= half + 5 and predicted is not None, (run_, t, predicted)
        at_half[run_] = (predicted - (crossed - t)) / (crossed - t)

        # the error shrinks: its median over the last third of the time from half-life to
        # zone C is less than over the first third, in hours and relative to the time left
        third = (crossed - half) / 3

        first = median_error(made, crossed, half, half + third)
        last = median_error(made, crossed, crossed - third, crossed)
        assert last[0] < first[0], (run_, first, last)
        assert last[1] < 0.25, (run_, first, last)
    assert all(abs(e) <= 0.25 for e in at_half.values()), at_half


@pytest.mark.slow
async def test_the_predicted_alarm_raises_before_zone_c(tmp_path: Path) -> None:
    """End to end on the device (exponential law, seed 5): the figures published and the
    predicted alarm's events."""
    model = PumpModel(onset=ONSET, life=LIFE, seed=5, wear_law="exponential")
    result = await run(model, 16.5, tmp_path)
    crossed = zone_c_reached(result["medians"])
    assert ONSET / HOUR + 48 < crossed < 16.5 * 24, crossed
    ttt = result["published"]["vibration.velocity_rms.ttt_h"]
    low = dict(result["published"]["vibration.velocity_rms.ttt_h_low"])
    half = (ONSET / HOUR + crossed) / 2
    t, predicted = next((t, v) for t, v in ttt if t >= half - 1)
    assert predicted == pytest.approx(crossed - t, rel=0.25), (t, predicted, crossed - t)
    assert low[t] <= predicted

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
