"""Prediction (``predict:``) and the ``predicted`` alarm mode: the fits on known curves, what is
published and when, states, bounds, persistence across a restart, and the alarm's events.

Batches carry simulated timestamps (hours apart where the points are hourly), so weeks of
history take a fraction of a second; the fits run inline (``DeviceProcessor.process`` without
an offload) or on the worker thread (``Processing``), both exercised.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.core.processing import Processing
from agent.core.processing.config import ProcessedDevice
from agent.core.processing.device import DeviceProcessor
from agent.core.processing.predict import BUCKET_VALUES, Predictor
from agent.core.processing.trend import Crossing, best_fit, crossing
from drivers.base import Batch, Reading

T0 = 1_763_884_800.0
HOUR = 3600.0
DAY = 86400.0


async def _no_compute(*_: Any) -> dict[str, Any]:
    raise AssertionError("no waveform here")


def device(tag: dict[str, Any], *others: dict[str, Any], **extra: Any) -> ProcessedDevice:
    doc = {"name": "m1", "driver": "test", "tags": [{"name": "temp", **tag}, *others], **extra}
    return ProcessedDevice.model_validate(doc)


async def feed(
    proc: DeviceProcessor, values: list[float], start: float = T0, step: float = HOUR
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """One reading per step; the published values (one dict per batch) and the events."""
    published, events = [], []
    for i, v in enumerate(values):
        ts = start + i * step
        out = await proc.process(Batch("m1", ts, [Reading("temp", v, ts)]), _no_compute)
        published.append({r.tag: r.value for b in out.batches for r in b.readings})
        events += [e.doc for e in out.events]
    return published, events


# -- the fits -------------------------------------------------------------------------------------


def test_a_linear_drift_is_fitted_linear_and_its_crossing_is_where_the_line_meets() -> None:
    rng = np.random.default_rng(1)
    t = np.arange(-10 * 24, 1) / 24.0  # ten days of hourly points, days from the last
    y = 60 + 0.5 * t + rng.normal(0, 0.2, len(t))  # 0.5 degC per day from 60
    fit = best_fit(t, y)
    assert fit.model == "linear"
    assert fit.slope() == pytest.approx(0.5, rel=0.05)
    cross = crossing(fit, 70.0, 60.0, 0.9)
    assert cross.hours == pytest.approx(20 * 24, rel=0.05)  # 10 degC at 0.5 per day
    assert cross.hours is not None and cross.hours_low is not None
    assert cross.hours_low < cross.hours


def test_a_level_then_accelerating_rise_is_fitted_exponential_and_beats_the_line() -> None:
    rng = np.random.default_rng(2)
    t = np.arange(-20 * 24, 1) / 24.0
    onset = -8.0
    y = 2.0 + 0.1 * np.expm1(0.3 * np.maximum(t - onset, 0)) + rng.normal(0, 0.02, len(t))
    fit = best_fit(t, y)
    assert fit.model == "exponential"
    true_hours = (onset + math.log1p((4.0 - 2.0) / 0.1) / 0.3) * 24  # when 2 + 0.1(e^...-1) = 4
    cross = crossing(fit, 4.0, 30.0, 0.9)
    assert cross.hours == pytest.approx(true_hours, rel=0.1)
    assert cross.hours is not None and cross.hours_low is not None
    assert cross.hours_low <= cross.hours


def test_a_level_then_quadratic_rise_is_fitted_as_a_power_law_and_its_crossing_found() -> None:
    rng = np.random.default_rng(5)
    t = np.arange(-20 * 24, 1) / 24.0
    onset = -8.0
    y = 2.0 + 0.01 * np.maximum(t - onset, 0) ** 2 + rng.normal(0, 0.02, len(t))
    fit = best_fit(t, y)
    assert fit.model == "power"
    assert fit.params[2] == pytest.approx(2.0, abs=0.3)  # the exponent
    true_hours = (onset + math.sqrt((4.0 - 2.0) / 0.01)) * 24  # when 2 + 0.01·(t - t0)² = 4
    cross = crossing(fit, 4.0, 30.0, 0.9)
    assert cross.hours == pytest.approx(true_hours, rel=0.1)
    assert cross.hours is not None and cross.hours_low is not None
    assert cross.hours_low <= cross.hours


def test_outliers_do_not_bend_the_trend() -> None:
    t = np.arange(-10 * 24, 1) / 24.0
    y = 60 + 0.5 * t
    y[::17] += 25.0  # one hour in 17 is a wild reading
    fit = best_fit(t, y)
    assert fit.slope() == pytest.approx(0.5, rel=0.05)
    assert fit.value(np.zeros(1))[0] == pytest.approx(60, abs=0.5)


@pytest.mark.parametrize("slope", [0.0, -0.5, 1e-4])
def test_a_flat_or_reversing_trend_predicts_no_crossing(slope: float) -> None:
    rng = np.random.default_rng(3)
    t = np.arange(-10 * 24, 1) / 24.0
    y = 60 + slope * t + rng.normal(0, 0.5, len(t))
    cross = crossing(best_fit(t, y), 70.0, 3650.0, 0.9)
    assert cross == Crossing(None, None)


def test_a_falling_value_heads_for_a_lower_threshold() -> None:
    t = np.arange(-5 * 24, 1) / 24.0
    y = 50 - 2.0 * (t - t[0])  # falls 2 units a day: 40 now
    cross = crossing(best_fit(t, y), 30.0, 30.0, 0.9, rising=False)
    assert cross.hours == pytest.approx(5 * 24, rel=0.02)
    assert crossing(best_fit(t, y), 30.0, 30.0, 0.9).hours == 0.0  # "up" to 30: beyond it


def test_a_value_beyond_the_threshold_has_reached_it() -> None:
    t = np.arange(-5 * 24, 1) / 24.0
    y = 75 + 1.0 * (t - t[0])  # 80 now, past 78, still rising
    cross = crossing(best_fit(t, y), 78.0, 30.0, 0.9)
    assert (cross.hours, cross.hours_low) == (0.0, 0.0)
    y = 85 - 1.0 * (t - t[0])  # 80 now and falling (repaired), yet still beyond 78
    cross = crossing(best_fit(t, y), 78.0, 30.0, 0.9)
    assert (cross.hours, cross.hours_low) == (0.0, 0.0)


# -- the predictor in a device ---------------------------------------------------------------


async def test_nothing_is_published_before_min_points_then_trend_and_countdown() -> None:
    proc = DeviceProcessor(device({"predict": {"value": 70, "min_points": 24}}))
    rng = np.random.default_rng(4)
    values = [60 + 0.5 * i / 24 + rng.normal(0, 0.05) for i in range(24 * 5)]  # 0.5 per day
    published, _ = await feed(proc, values)
    trends = [i for i, p in enumerate(published) if "temp.trend" in p]
    # a point is completed when the next hour starts; the 24th point comes at reading 24
    assert trends[0] == 24 and all("temp.ttt_h" not in p for p in published[:24])
    last = next(p for p in reversed(published) if "temp.trend" in p)
    assert last["temp.trend"] == pytest.approx(0.5, rel=0.02)
    level_now = 60 + 0.5 * (len(values) - 1) / 24
    assert last["temp.ttt_h"] == pytest.approx((70 - level_now) / 0.5 * 24, rel=0.05)
    assert 0 < last["temp.ttt_h_low"] < last["temp.ttt_h"]


async def test_points_are_medians_of_each_bucket_and_stay_bounded() -> None:
    spec = device({"predict": {"value": 80, "every": "1h", "history": "2d"}}).tags[0].predict[0]
    p = Predictor(spec, "temp", 80.0)
    for i in range(60):  # readings every minute: one hour's median ignores its spikes
        p.add(10.0 if i % 10 else 1000.0, T0 + i * 60)
    p.add(0.0, T0 + HOUR)
    assert len(p.points) == 1 and p.points[0][1] == 10.0
    assert p.points[0][0] == pytest.approx(T0 + 29.5 * 60)  # the mean time of its readings
    for h in range(2, 24 * 10):  # ten days, two kept
        p.add(float(h), T0 + h * HOUR)
    assert len(p.points) <= 2 * 24 + 1
    assert p.points[0][0] >= p.points[-1][0] - 2 * DAY  # the newest point's history
    for i in range(3 * BUCKET_VALUES):  # a fast poll cannot grow a bucket without bound
        p.add(1.0, T0 + 20 * DAY + i * 1e-4)
    assert len(p._bucket_values) < BUCKET_VALUES


async def test_only_values_in_the_when_states_are_taken() -> None:
    dev = device(
        {"predict": {"value": 80, "when": "running"}},
        {"name": "speed"},
        state={"rules": [{"state": "running", "when": "speed > 100"}]},
    )
    proc = DeviceProcessor(dev)
    for i in range(24 * 6):
        ts = T0 + i * HOUR
        running = (i // 12) % 2 == 0  # twelve hours on, twelve off
        temp = 60.0 + 0.5 * i / 24 if running else 25.0  # cold while stopped: no wear there
        readings = [Reading("speed", 1480 if running else 0, ts), Reading("temp", temp, ts)]
        await proc.process(Batch("m1", ts, readings), _no_compute)
    predictor = proc.tags["temp"].predictors[None]
    assert predictor.points and all(v >= 60 for _, v in predictor.points)
    assert predictor.latest is not None and predictor.latest.trend == pytest.approx(0.5, rel=0.1)


async def test_the_points_survive_a_restart(tmp_path: Path) -> None:
    dev = device({"predict": {"value": 80, "min_points": 24}})
    processing = Processing([dev], tmp_path)
    await processing.start()
    for i in range(30):
        ts = T0 + i * HOUR
        await processing.process(Batch("m1", ts, [Reading("temp", 60 + 0.02 * i, ts)]))
    points = list(processing.processors["m1"].tags["temp"].predictors[None].points)
    await processing.stop()
    assert len(points) == 29

    again = Processing([dev], tmp_path)
    await again.start()
    try:
        assert again.processors["m1"].tags["temp"].predictors[None].points == points
        # the hour being filled at the stop is lost; the next one completed is fitted with the
        # restored ones, on the worker thread
        for i in (31, 32):
            ts = T0 + i * HOUR
            out = await again.process(Batch("m1", ts, [Reading("temp", 60 + 0.02 * i, ts)]))
        assert out is not None
        values = {r.tag: r.value for b in out.batches for r in b.readings}
        assert values["temp.trend"] == pytest.approx(0.48, rel=0.01)
    finally:
        await again.stop()


# -- the predicted alarm ---------------------------------------------------------------------


async def test_a_predicted_alarm_raises_with_evidence_and_clears_when_the_trend_reverses() -> None:
    dev = device(
        {
            "predict": {"value": 80, "min_points": 24, "history": "3d"},
            "alarms": [{"name": "overheat_soon", "mode": "predicted", "within": "3d"}],
        }
    )
    proc = DeviceProcessor(dev)
    rising = [60 + 4.0 * i / 24 for i in range(24 * 3)]  # 4 degC a day: 80 in five days
    cooling = [rising[-1] - 2.0 * i / 24 for i in range(1, 24 * 4)]  # after the repair
    published, events = await feed(proc, rising + cooling)
    raised = [e for e in events if e["event"] == "raise"]
    assert len(raised) == 1
    first = raised[0]
    i = round((first["ts"] / 1000 - T0) / HOUR)
    low = published[i]["temp.ttt_h_low"]
    assert first["tag"] == "temp.ttt_h_low" and first["value"] == low and low < 72
    assert first["condition"] == "< 72"
    evidence = first["prediction"]
    assert evidence["model"] in ("linear", "exponential", "power") and evidence["threshold"] == 80
    assert evidence["ttt_h_low"] == low and evidence["ttt_h"] >= low
    assert evidence["points"] >= 24 and evidence["confidence"] == 0.9
    # no chatter while it is close, then a clear once no crossing is predicted any more
    cleared = [e for e in events if e["event"] == "clear"]
    assert len(cleared) == 1 and cleared[0]["ts"] > first["ts"]
    assert cleared[0]["condition"] == "> 90"
    assert cleared[0]["value"] is None or cleared[0]["value"] > 90
    assert round((cleared[0]["ts"] / 1000 - T0) / HOUR) > 24 * 3


async def test_a_predicted_alarm_on_a_window_stat_watches_its_prediction() -> None:
    dev = device(
        {
            "window": {"length": "1h", "stats": ["mean"]},
            "predict": {"feature": "mean", "value": 80, "min_points": 24},
            "alarms": [{"name": "soon", "mode": "predicted", "value": "mean", "within": "10d"}],
        }
    )
    proc = DeviceProcessor(dev)
    values = [60 + 2.0 * i / 24 / 4 for i in range(24 * 4 * 4)]  # every 15 min, 2 per day
    published, events = await feed(proc, values, step=HOUR / 4)
    assert any("temp.mean.ttt_h" in p for p in published)
    raised = [e for e in events if e["event"] == "raise"]
    assert raised and raised[0]["tag"] == "temp.mean.ttt_h_low"


def test_a_damaged_state_file_restores_what_is_sound() -> None:
    spec = device({"predict": {"value": 80}}).tags[0].predict[0]
    p = Predictor(spec, "temp", 80.0)
    p.restore({"points": [[T0, 1.0], "x", [T0 + 1, float("nan")], [T0 - 5, 2.0], [T0 + 9, 3]]})
    assert p.points == [(T0, 1.0), (T0 + 9, 3.0)]  # in order, finite, numbers
    for junk in ({}, {"points": 7}, {"points": None}):
        q = Predictor(spec, "temp", 80.0)
        q.restore(junk)
        assert q.points == []


async def test_a_predicted_alarm_with_states_is_judged_only_in_them() -> None:
    dev = device(
        {
            "predict": {"value": 80, "min_points": 24},
            "alarms": [
                {"name": "soon", "mode": "predicted", "within": "3d", "states": ["running"]}
            ],
        },
        {"name": "speed"},
        state={"rules": [{"state": "running", "when": "speed > 100"}]},
    )
    events = []
    for running in (False, True):
        proc = DeviceProcessor(dev)
        for i in range(24 * 3):
            ts = T0 + i * HOUR
            readings = [
                Reading("speed", 1480 if running else 0, ts),
                Reading("temp", 60 + i / 6, ts),
            ]
            out = await proc.process(Batch("m1", ts, readings), _no_compute)
            events.append((running, [e.doc["event"] for e in out.events]))
    assert not any(e for running, e in events if not running)  # the same trend, never judged
    assert ["raise"] in [e for running, e in events if running]
