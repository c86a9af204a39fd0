"""The degrading pump through the pump config docs/processing.md shows: the bearing alarm comes
before the fault's end of life and never while the bearing is healthy; counters and state follow
the pump.

The pump's model is driven on simulated time (no network), and the batches carry simulated
timestamps, so the config's delays (``for: 10m``) and learning period (``learn: 7d``) mean what
they say, and 30 days of wear take a couple of seconds.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from ruamel.yaml import YAML

from agent.core.processing import Processing
from agent.core.processing.config import ProcessedDevice
from drivers.base import Batch, Reading
from simulators.degrading_pump import DAY, G_PER_COUNT, PumpModel

CONFIG = Path(__file__).resolve().parent.parent / "config" / "pump-pdm.yaml"
#: The driver's addressing keys: what remains is the processing every driver shares.
DRIVER_KEYS = {"table", "address", "type", "count", "scale", "byte_order", "offset", "bit"}
T0 = 1_763_884_800.0
HOUR = 3600.0


def pump_device() -> ProcessedDevice:
    doc: Any = YAML(typ="safe").load(CONFIG.read_text())
    entry = dict(doc["devices"][0])
    for key in ("connection", "poll_interval"):
        entry.pop(key)
    entry["driver"] = "test"
    entry["tags"] = [{k: v for k, v in t.items() if k not in DRIVER_KEYS} for t in entry["tags"]]
    for tag in entry["tags"]:
        if tag["name"] == "power":  # readings here are half an hour apart, not 2 s
            tag["counter"] = {**tag["counter"], "max_gap": "1h"}
    return ProcessedDevice.model_validate(entry)


def readings(model: PumpModel, ts: float) -> list[Reading]:
    counts = np.clip(np.round(model.waveform() / G_PER_COUNT), -32768, 32767)
    values: dict[str, Any] = {
        "speed": round(model.rpm),
        "bearing_temp": round(model.temperature, 1),
        "parts": int(model.parts) % 65536,
        "power": model.power_kw,
        "energy": int(model.energy_kwh * 100) / 100,
        "alarm_code": 7 if model.tripped else 0,
        "vibration": (counts * G_PER_COUNT).tolist(),
    }
    return [Reading(tag, v, ts) for tag, v in values.items()]


@pytest.mark.slow
async def test_the_bearing_alarm_comes_before_end_of_life_and_not_while_healthy(
    tmp_path: Path,
) -> None:
    model = PumpModel(onset=10 * DAY, life=30 * DAY, seed=11)
    retained: list[dict[str, Any]] = []
    processing = Processing([pump_device()], tmp_path, lambda d, p: retained.append(json.loads(p)))
    await processing.start()
    events: list[dict[str, Any]] = []
    published: dict[str, list[tuple[float, Any]]] = {}
    step = HOUR / 2
    model.step(step)
    first_parts = int(model.parts)  # counting starts at the first reading
    try:
        while True:
            ts = T0 + model.t
            out = await processing.process(Batch("pump-1", ts, readings(model, ts)))
            assert out is not None
            events += [e.doc for e in out.events]
            for b in out.batches:
                for r in b.readings:
                    published.setdefault(r.tag, []).append((b.ts, r.value))
            if model.t + step > model.life:
                break
            model.step(step)
    finally:
        await processing.stop()

    def day(e: dict[str, Any]) -> float:
        return (e["ts"] / 1000 - T0) / DAY

    raised = [e for e in events if e["event"] == "raise"]
    assert raised, "no alarm before end of life"
    assert all(day(e) > 10 for e in raised), [(e["alarm"], day(e)) for e in raised]
    assert {"bearing_outer_race", "vibration_anomaly"} <= {e["alarm"] for e in raised}
    bearing = [e for e in raised if e["alarm"] == "bearing_outer_race"]
    assert bearing and day(bearing[0]) < 25  # days of warning before end of life (day 30)
    assert bearing[0]["tag"] == "vibration.bpfo" and bearing[0]["value"] > 0.02
    # the early warning comes before the ISO severity alarm, which only sees the late stage
    severity = [e for e in raised if e["alarm"] == "vibration_severity"]
    assert not severity or day(severity[0]) > day(bearing[0]) + 5
    # features, zones and counters were published all along
    zones = [z for _, z in published["vibration.iso_zone"]]
    assert zones[0] in "AB" and {"C", "D"} & set(zones[-96:])  # the last two days
    assert published["vibration.bpfo"][-1][1] > 10 * published["vibration.bpfo"][0][1]
    tags = processing.processors["pump-1"].tags
    counter = tags["parts"].counter
    made = int(model.parts) - first_parts
    assert counter is not None and counter.total == made
    assert counter.total > 65535  # the 16-bit register wrapped many times, the total not
    # published under the config's 1 % deadband, so at most 1 % behind
    assert published["parts.total"][-1][1] == pytest.approx(made, rel=0.01)
    assert published["energy.kwh"][-1][1] == pytest.approx(model.energy_kwh, rel=0.01)
    assert published["power.kwh"][-1][1] == pytest.approx(model.energy_kwh, rel=0.02)
    states = {r["state"] for r in retained}
    assert states == {"running", "idle"}
    runtime = retained[-1]["runtime"]
    assert runtime["running"] / (runtime["running"] + runtime["idle"]) == pytest.approx(
        20 / 24, abs=0.05
    )
