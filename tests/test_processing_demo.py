"""What ``make demo-pdm`` prints for each kind of message (the demo itself uses fixed ports and
runs by hand)."""

from __future__ import annotations

from simulators.demo_pdm import describe


def test_a_data_line_shows_features_in_order_and_run_time_in_seconds() -> None:
    doc = {
        "seq": 7,
        "values": {
            "vibration.bpfo": 0.0253123,
            "speed": 1480,
            "parts.total": 130012.0,
            "runtime.running": 30.4,
            "runtime.idle": 6.0,
            "energy": 2903.78,  # not among the shown values
        },
    }
    line = describe("edge/gw/pump-1/data", doc)
    assert line == (
        "data  seq=7 speed=1480 vibration.bpfo=0.02531 parts.total=130012 "
        "runtime=running:30s,idle:6s"
    )


def test_alarm_events_and_state_are_one_line_each() -> None:
    raise_ = {
        "event": "raise",
        "alarm": "bearing_outer_race",
        "severity": "warning",
        "tag": "vibration.bpfo",
        "value": 0.0261834,
        "condition": "> 0.02",
    }
    assert describe("edge/gw/pump-1/event", raise_) == (
        "ALARM bearing_outer_race (warning): vibration.bpfo 0.02618 > 0.02"
    )
    clear = {**raise_, "event": "clear", "condition": "< 0.01"}
    assert describe("edge/gw/pump-1/event", clear).startswith("clear bearing_outer_race")
    assert describe("edge/gw/pump-1/state", {"state": "running"}) == "state running"
    assert describe("edge/gw/pump-1/data", {"seq": 1, "values": {"other": 1}}) is None


def test_the_countdown_to_zone_c_is_shown_in_pump_days() -> None:
    values = {
        "vibration.velocity_rms.trend": 1440.0,  # mm/s per agent day: 0.1 per pump day
        "vibration.velocity_rms.ttt_h": 0.01,  # the agent's hours: 36 s
        "vibration.velocity_rms.ttt_h_low": 0.005,
    }
    line = describe("edge/gw/pump-1/data", {"seq": 3, "values": values}, time_scale=14400)
    # 36 s of the agent at 14,400 times: 6 pump days
    assert line == (
        "data  seq=3 trend +0.100 mm/s per pump day, zone C in 6.0 pump days (>= 3.0 at 90 %)"
    )
    no_crossing = {"vibration.velocity_rms.trend": -14.4}
    line = describe("edge/gw/pump-1/data", {"seq": 4, "values": no_crossing})
    assert line == "data  seq=4 trend -0.001 mm/s per pump day"
