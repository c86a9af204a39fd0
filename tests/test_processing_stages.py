"""Report by exception, windows, counters, alarms and machine state, driven with synthetic
batches through the real ``Processing`` (worker thread, state files in a temporary data_dir)."""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.core.processing import Output, Processing
from agent.core.processing.config import ProcessedDevice
from drivers.base import Batch, Quality, Reading

T0 = 1_763_884_800.0  # a whole minute (and hour) since the epoch


def device(tags: list[dict[str, Any]], **kw: Any) -> ProcessedDevice:
    return ProcessedDevice.model_validate({"name": "pump-1", "driver": "test", "tags": tags, **kw})


class Rig:
    """A Processing for one device, fed batch by batch; remembers every output."""

    def __init__(self, dev: ProcessedDevice, data_dir: Path) -> None:
        self.retained: list[dict[str, Any]] = []
        self.processing = Processing(
            [dev], data_dir, lambda d, payload: self.retained.append(json.loads(payload))
        )
        self.outputs: list[Output] = []

    async def feed(self, ts: float, **values: Any) -> Output:
        readings = [
            Reading.bad(tag, ts, "timeout") if v is BAD else Reading(tag, v, ts)
            for tag, v in values.items()
        ]
        out = await self.processing.process(Batch("pump-1", ts, readings))
        assert out is not None
        self.outputs.append(out)
        return out

    def published(self, name: str) -> list[tuple[float, Any]]:
        """(batch ts, value) of every publication of ``name``, in order."""
        return [
            (b.ts, r.value)
            for out in self.outputs
            for b in out.batches
            for r in b.readings
            if r.tag == name and r.quality is not Quality.BAD
        ]

    def events(self) -> list[dict[str, Any]]:
        return [e.doc for out in self.outputs for e in out.events]


BAD = object()


@pytest.fixture
async def make_rig(tmp_path: Path) -> AsyncIterator[Any]:
    rigs: list[Rig] = []

    async def make(dev: ProcessedDevice, data_dir: Path = tmp_path) -> Rig:
        rig = Rig(dev, data_dir)
        await rig.processing.start()
        rigs.append(rig)
        return rig

    yield make
    for rig in rigs:
        await rig.processing.stop()


# ------------------------------------------------------------------------ report by exception


async def test_deadband_publishes_only_moves_beyond_it_from_the_last_published(
    make_rig: Any,
) -> None:
    rig = await make_rig(device([{"name": "p", "deadband": 0.3}]))
    for i, v in enumerate([10.0, 10.05, 10.2, 10.25, 10.31, 10.35, 10.0, 9.9]):
        await rig.feed(T0 + i, p=v)
    # 10.31 is 0.31 from 10.0; 10.0 is 0.31 back; 9.9 only 0.1 from that
    assert [v for _, v in rig.published("p")] == [10.0, 10.31, 10.0]


async def test_deadband_percent_is_relative_to_the_last_published(make_rig: Any) -> None:
    rig = await make_rig(device([{"name": "p", "deadband_percent": 5}]))
    for i, v in enumerate([100.0, 104.0, 105.5, 108.0, 111.0]):
        await rig.feed(T0 + i, p=v)
    assert [v for _, v in rig.published("p")] == [100.0, 105.5, 111.0]


async def test_a_steady_value_costs_nothing_and_max_silence_is_a_heartbeat(make_rig: Any) -> None:
    rig = await make_rig(device([{"name": "p", "deadband": 0.5, "max_silence": "10s"}]))
    for i in range(100):  # 100 s of polls every second
        out = await rig.feed(T0 + i, p=42.0)
        if i % 10:
            assert out.batches == []  # nothing to commit: no seq spent
    assert [ts - T0 for ts, _ in rig.published("p")] == [float(i) for i in range(0, 100, 10)]


async def test_device_defaults_apply_and_a_tag_overrides_them(make_rig: Any) -> None:
    dev = device(
        [{"name": "a"}, {"name": "b", "deadband": 0}, {"name": "c", "deadband_percent": 50}],
        processing={"deadband": 5},
    )
    rig = await make_rig(dev)
    for i, v in enumerate([0.0, 1.0, 2.0, 6.0]):
        await rig.feed(T0 + i, a=v, b=v, c=v + 10)
    assert [v for _, v in rig.published("a")] == [0.0, 6.0]
    assert [v for _, v in rig.published("b")] == [0.0, 1.0, 2.0, 6.0]  # any change
    assert [v for _, v in rig.published("c")] == [10.0, 16.0]


async def test_a_bad_reading_is_always_published_and_the_next_good_one_too(make_rig: Any) -> None:
    rig = await make_rig(device([{"name": "p", "deadband": 1}]))
    await rig.feed(T0, p=5.0)
    await rig.feed(T0 + 1, p=BAD)
    await rig.feed(T0 + 2, p=BAD)
    await rig.feed(T0 + 3, p=5.0)
    bad = [
        r for o in rig.outputs for b in o.batches for r in b.readings if r.quality is Quality.BAD
    ]
    assert len(bad) == 2
    assert [v for _, v in rig.published("p")] == [5.0, 5.0]


async def test_lists_are_compared_element_by_element(make_rig: Any) -> None:
    rig = await make_rig(device([{"name": "arr", "deadband": 1}]))
    for i, v in enumerate([[1, 2, 3], [1, 2, 3.5], [1, 2, 4.5], [1, 2]]):
        await rig.feed(T0 + i, arr=v)
    assert [v for _, v in rig.published("arr")] == [[1, 2, 3], [1, 2, 4.5], [1, 2]]


# ----------------------------------------------------------------------------------- windows


async def test_windows_are_aligned_to_the_wall_clock(make_rig: Any) -> None:
    rig = await make_rig(
        device(
            [
                {
                    "name": "load",
                    "window": {"length": "1m", "stats": ["min", "max", "mean", "last", "count"]},
                }
            ]
        )
    )
    start = T0 + 37.25  # the agent starts mid-minute
    for i in range(150):  # 2.5 minutes at 1 s
        await rig.feed(start + i, load=float(i))
    ends = sorted({ts for ts, _ in rig.published("load.mean")})
    assert ends == [T0 + 60, T0 + 120, T0 + 180]
    # the first (partial) window holds readings 0..22 (37.25 s to 59.25 s), the next 23..82
    assert rig.published("load.count") == [(T0 + 60, 23), (T0 + 120, 60), (T0 + 180, 60)]
    assert rig.published("load.mean")[1] == (T0 + 120, pytest.approx((23 + 82) / 2))
    assert rig.published("load.min")[1][1] == 23.0
    assert rig.published("load.max")[1][1] == 82.0
    assert rig.published("load.last")[2][1] == 142.0
    assert rig.published("load") == []  # aggregates instead of raw values by default
    # a closed window is committed before the batch that closed it, stamped with its end
    out = rig.outputs[60 - 37]  # the reading at T0 + 60.25
    assert [b.ts for b in out.batches] == [T0 + 60]


async def test_window_raw_true_publishes_both_and_stddev_sum(make_rig: Any) -> None:
    rig = await make_rig(
        device(
            [{"name": "x", "deadband": 0.5}],
            processing={"window": {"length": 10, "stats": ["sum", "stddev"], "raw": True}},
        )
    )
    values = [1.0, 1.2, 3.0, 3.1, 1.0] * 2
    for i, v in enumerate(values):
        await rig.feed(T0 + i, x=v)
    await rig.feed(T0 + 10, x=1.0)
    assert rig.published("x.sum") == [(T0 + 10, pytest.approx(sum(values)))]
    assert rig.published("x.stddev")[0][1] == pytest.approx(float(np.std(values)))
    assert [v for _, v in rig.published("x")] == [1.0, 3.0, 1.0, 3.0, 1.0]


# ---------------------------------------------------------------------------------- counters


async def test_a_16_bit_part_counter_wraps_and_resets(make_rig: Any) -> None:
    rig = await make_rig(
        device([{"name": "parts", "counter": {"kind": "parts", "rollover": 65535}}])
    )
    raw = [65530, 65535, 3, 10, 10, 5, 7]  # wraps after 65535; 10 → 5 is a reset (long way up)
    for i, v in enumerate(raw):
        await rig.feed(T0 + 60 * i, parts=v)
    totals = [v for _, v in rig.published("parts.total")]
    assert totals == [0, 5, 9, 16, 16, 21, 23]
    rates = [v for _, v in rig.published("parts.rate")]
    assert rates[3] == pytest.approx(7.0)  # parts per minute over the last minute


async def test_counter_total_survives_a_restart(make_rig: Any, tmp_path: Path) -> None:
    dev = device([{"name": "parts", "counter": {"kind": "parts", "rollover": 65535}}])
    rig = await make_rig(dev, tmp_path / "a")
    for i, v in enumerate([100, 200, 300]):
        await rig.feed(T0 + i, parts=v)
    await rig.processing.stop()
    again = await make_rig(dev, tmp_path / "a")
    await again.feed(T0 + 100, parts=350)  # 50 made while the agent was away
    assert again.published("parts.total") == [(T0 + 100, 250.0)]


async def test_energy_from_integrated_power_is_the_trapezoid(make_rig: Any) -> None:
    rig = await make_rig(device([{"name": "power", "counter": {"kind": "power", "scale": 0.001}}]))
    for i in range(3601):  # a ramp from 0 to 10 kW (in W) over one hour, every second
        await rig.feed(T0 + i, power=10_000.0 * i / 3600)
    assert rig.published("power.kwh")[-1][1] == pytest.approx(5.0, rel=1e-9)
    await rig.feed(T0 + 3601 + 3600, power=10_000.0)  # after an hour's outage: not integrated
    assert rig.published("power.kwh")[-1][1] == pytest.approx(5.0, rel=1e-9)


async def test_energy_from_a_register_handles_rollover(make_rig: Any) -> None:
    rig = await make_rig(
        device([{"name": "e", "counter": {"kind": "energy", "rollover": 99999, "scale": 0.1}}])
    )
    for i, v in enumerate([99990, 99999, 5, 25]):
        await rig.feed(T0 + i, e=v)
    assert rig.published("e.kwh")[-1][1] == pytest.approx((9 + 6 + 20) * 0.1)


# ------------------------------------------------------------------------------------ alarms


def noisy_around(level: float, n: int, seed: int = 0, spread: float = 0.3) -> Iterable[float]:
    rng = np.random.default_rng(seed)
    return (level + spread * math.sin(i / 3) + rng.normal(0, spread) for i in range(n))


async def test_hysteresis_means_no_chatter_on_a_noisy_signal_at_the_threshold(
    make_rig: Any,
) -> None:
    alarm = {"name": "vib_high", "on": "> 7.1", "off": "< 6.5"}
    rig = await make_rig(device([{"name": "v", "alarms": [alarm]}]))
    chatter = await make_rig(
        device([{"name": "v", "alarms": [{"name": "naive", "on": "> 7.1"}]}]), rig_dir(rig)
    )
    values = list(noisy_around(7.1, 300, spread=0.1))  # 6.7 to 7.5: well above off
    for i, v in enumerate([*values, 6.0, 6.0]):
        await rig.feed(T0 + i, v=v)
        await chatter.feed(T0 + i, v=v)
    assert [e["event"] for e in rig.events()] == ["raise", "clear"]
    assert len(chatter.events()) > 20  # without hysteresis the same signal chatters
    raised = rig.events()[0]
    assert raised["alarm"] == "vib_high" and raised["tag"] == "v"
    assert raised["value"] > 7.1 and raised["condition"] == "> 7.1"
    assert raised["ts"] == raised["since"]
    cleared = rig.events()[1]
    assert cleared["value"] == 6.0 and cleared["condition"] == "< 6.5"


def rig_dir(rig: Rig) -> Path:
    return rig.processing._files.dir.parent / "other"


async def test_for_delays_the_raise_and_a_short_excursion_raises_nothing(make_rig: Any) -> None:
    alarm = {"name": "hot", "on": "> 80", "off": "< 75", "for": "10s"}
    rig = await make_rig(device([{"name": "t", "alarms": [alarm]}]))
    series = [70.0] * 5 + [85.0] * 9 + [70.0] * 5 + [85.0] * 12 + [70.0] * 12
    for i, v in enumerate(series):
        await rig.feed(T0 + i, t=v)
    events = rig.events()
    assert [e["event"] for e in events] == ["raise", "clear"]
    assert events[0]["ts"] - events[0]["since"] == 10_000
    assert events[0]["ts"] == round((T0 + 19 + 10) * 1000)
    assert events[0]["values"] == [85.0] * 11  # what held the condition during `for`


async def test_rate_of_change_alarm(make_rig: Any) -> None:
    alarm = {"name": "heating", "mode": "rate", "on": "> 2", "off": "< 1", "per": "1m"}
    rig = await make_rig(device([{"name": "t", "alarms": [alarm]}]))
    temps = [40.0 + 0.5 * i for i in range(10)] + [44.5 + 3.0 * i for i in range(1, 6)]
    temps += [60.0] * 3
    for i, v in enumerate(temps):
        await rig.feed(T0 + 60 * i, t=v)
    events = rig.events()
    assert [e["event"] for e in events] == ["raise", "clear"]
    assert events[0]["measure"] == pytest.approx(3.0)  # degrees per minute
    assert events[0]["value"] == 47.5


async def test_anomaly_score_learns_then_flags_a_jump(make_rig: Any) -> None:
    alarm = {
        "name": "odd",
        "mode": "anomaly",
        "on": "> 6",
        "off": "< 3",
        "learn": "100s",
        "half_life": "20s",
    }
    rig = await make_rig(device([{"name": "x", "alarms": [alarm]}]))
    rng = np.random.default_rng(5)
    for i in range(100):  # learning: even a wild value raises nothing
        await rig.feed(T0 + i, x=50.0 if i == 50 else float(rng.normal(10, 1)))
    assert rig.events() == []
    for i in range(100, 200):
        await rig.feed(T0 + i, x=float(rng.normal(10, 1)))
    assert rig.events() == []
    await rig.feed(T0 + 200, x=25.0)
    event = rig.events()[-1]
    assert event["event"] == "raise" and event["mode"] == "anomaly"
    assert event["mean"] == pytest.approx(10, abs=1) and event["measure"] > 6
    zs = [v for _, v in rig.published("x.z")]
    assert len(zs) == 101 and max(abs(z) for z in zs[:-1]) < 6


async def test_alarm_on_a_window_stat(make_rig: Any) -> None:
    tag = {
        "name": "load",
        "window": {"length": 10, "stats": ["mean"]},
        "alarms": [{"name": "overload", "value": "mean", "on": "> 90", "off": "< 80"}],
    }
    rig = await make_rig(device([tag]))
    for i in range(40):
        await rig.feed(T0 + i, load=100.0 if 10 <= i < 20 else 50.0)
    assert [(e["event"], e["ts"], e["tag"]) for e in rig.events()] == [
        ("raise", round((T0 + 20) * 1000), "load.mean"),
        ("clear", round((T0 + 30) * 1000), "load.mean"),
    ]


# ------------------------------------------------------------------------------ machine state

STATE = {
    "rules": [
        {"state": "alarm", "when": "alarm_code != 0"},
        {"state": "running", "when": ["spindle_speed > 50"]},
    ],
    "report_every": "1h",
}


async def test_state_rules_run_time_and_the_retained_message(make_rig: Any) -> None:
    rig = await make_rig(device([{"name": "spindle_speed"}, {"name": "alarm_code"}], state=STATE))
    script = [(0, 0, 0), (10, 1200, 0), (70, 1200, 3), (75, 0, 0), (100, 1200, 0)]
    for t, speed, code in script:
        await rig.feed(T0 + t, spindle_speed=speed, alarm_code=code)
    await rig.feed(T0 + 130, spindle_speed=BAD, alarm_code=BAD)  # the device is down
    await rig.feed(T0 + 150, spindle_speed=BAD, alarm_code=BAD)
    states = ["idle", "running", "alarm", "idle", "running", "stopped"]
    assert [v for _, v in rig.published("state")] == states
    assert [r["state"] for r in rig.retained] == states
    last = rig.retained[-1]
    assert last["runtime"] == {"alarm": 5.0, "idle": 35.0, "running": 90.0, "stopped": 0.0}
    assert last["since"] == round((T0 + 130) * 1000)
    assert rig.published("runtime.running")[-1] == (T0 + 130, 90.0)


async def test_run_time_per_state_survives_a_restart(make_rig: Any, tmp_path: Path) -> None:
    dev = device([{"name": "spindle_speed"}, {"name": "alarm_code"}], state=STATE)
    rig = await make_rig(dev, tmp_path / "d")
    for t in range(0, 61, 10):
        await rig.feed(T0 + t, spindle_speed=1000, alarm_code=0)
    await rig.processing.stop()  # saves; a crash would lose at most persist_every seconds
    saved = json.loads((tmp_path / "d" / "processing" / "pump-1.json").read_text())
    assert saved["state"]["runtime"] == {"running": 60.0}
    again = await make_rig(dev, tmp_path / "d")
    # a night switched off adds to no state; after it, run time goes on from the saved total
    for t in range(50_000, 50_031, 10):
        await again.feed(T0 + t, spindle_speed=1000, alarm_code=0)
    assert again.retained[0]["runtime"] == {"running": 60.0}
    assert again.published("runtime.running")[-1][1] == 60.0
    await again.feed(T0 + 50_000 + 3600, spindle_speed=1000, alarm_code=0)
    assert again.published("runtime.running")[-1][1] == 60.0 + 3600


async def test_a_corrupt_state_file_starts_afresh(make_rig: Any, tmp_path: Path) -> None:
    (tmp_path / "c" / "processing").mkdir(parents=True)
    (tmp_path / "c" / "processing" / "pump-1.json").write_text("{not json")
    rig = await make_rig(
        device([{"name": "s"}], state={"rules": [{"state": "on", "when": "s > 0"}]}), tmp_path / "c"
    )
    await rig.feed(T0, s=1)
    assert rig.published("state") == [(T0, "on")]


async def test_a_config_reload_keeps_run_time_and_totals(make_rig: Any) -> None:
    tags = [
        {"name": "spindle_speed"},
        {"name": "alarm_code"},
        {"name": "parts", "counter": {"kind": "parts"}},
    ]
    rig = await make_rig(device(tags, state=STATE))
    for t in range(0, 31, 10):
        await rig.feed(T0 + t, spindle_speed=1000, alarm_code=0, parts=100 + t)
    changed = device([*tags, {"name": "temp", "deadband": 1}], state=STATE)
    rig.processing.devices_changed([changed])
    assert rig.processing.processors["pump-1"].device is changed
    await rig.feed(T0 + 40, spindle_speed=1000, alarm_code=0, parts=150, temp=20.0)
    assert rig.processing.processors["pump-1"].state is not None
    assert rig.processing.processors["pump-1"].state.runtime["running"] == 40.0
    assert rig.published("parts.total")[-1][1] == 50.0
    rig.processing.devices_changed([])  # removed: saved at the next save, then forgotten
    await rig.processing.save()
    assert "pump-1" not in rig.processing.processors
    saved = json.loads(rig.processing._files.path("pump-1").read_text())
    assert saved["counters"]["parts"]["total"] == 50.0


async def test_a_scalar_sampled_length_times_is_a_waveform(make_rig: Any) -> None:
    wf = {"sample_rate": 10, "length": 100, "features": ["rms", "dominant_frequency"]}
    rig = await make_rig(device([{"name": "temp", "waveform": wf}]))
    for i in range(250):  # a 1 Hz oscillation sampled at 10 Hz, amplitude 2 around 60
        await rig.feed(T0 + i / 10, temp=60 + 2 * math.sin(2 * math.pi * i / 10))
    rms = rig.published("temp.rms")
    assert [round(ts - T0, 1) for ts, _ in rms] == [9.9, 19.9]  # every 100 samples
    assert rms[0][1] == pytest.approx(2 / math.sqrt(2), rel=1e-4)
    assert rig.published("temp.dominant_frequency")[0][1] == pytest.approx(1.0, abs=0.01)
    assert rig.published("temp") == []


async def test_an_alarm_with_states_is_judged_only_in_them(make_rig: Any) -> None:
    tags = [
        {"name": "spindle_speed"},
        {"name": "alarm_code"},
        {
            "name": "vib",
            "alarms": [{"name": "low", "on": "< 1", "off": "> 2", "states": ["running"]}],
        },
    ]
    rig = await make_rig(device(tags, state=STATE))
    for i in range(10):  # stopped: no vibration, and that is no alarm
        await rig.feed(T0 + i, spindle_speed=0, alarm_code=0, vib=0.1)
    assert rig.events() == []
    await rig.feed(T0 + 10, spindle_speed=1000, alarm_code=0, vib=0.1)  # running and still
    assert [e["event"] for e in rig.events()] == ["raise"]
