"""``make demo-pdm``: a pump wearing out its bearing over a month, compressed into minutes, and
what the agent's edge processing makes of it, printed as it reaches the broker.

Runs the degrading pump (``simulators.degrading_pump``, 14,400 times faster than real time: a
day every six seconds, the bearing fault from day 10, end of life on day 30), a private
mosquitto, and ``edge-agent run -c config/pdm-demo.yaml``; then subscribes to everything the
agent publishes and prints features, state changes and alarm events, until Ctrl-C (or
``--seconds``). It talks to the agent only over MQTT, as a cloud consumer would.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from typing import Any

import paho.mqtt.client as mqtt

from simulators.demo import ROOT, demo_parser, run_demo

BROKER_PORT = 18831  # not the plain demo's 18830/5020/9108: both demos can run side by side
MODBUS_PORT = 5021
TIME_SCALE = 14400.0  # four hours of wear per second

#: What a data line shows, in this order (others are left out to keep a line readable).
SHOWN = (
    "age_days",
    "state",
    "speed",
    "bearing_temp",
    "vibration.rms",
    "vibration.velocity_rms",
    "vibration.iso_zone",
    "vibration.bpfo",
    "vibration.kurtosis",
    "vibration.kurtosis.z",
    "parts.total",
    "parts.rate",
    "power.mean",
    "power.kwh",
)


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}" if abs(value) >= 100 else f"{value:.4g}"
    return str(value)


def countdown(values: dict[str, Any], time_scale: float = TIME_SCALE) -> str | None:
    """The prediction of zone C in the pump's days: the agent counts its own hours and days, the
    pump's time runs ``time_scale`` times faster."""
    trend = values.get("vibration.velocity_rms.trend")
    hours = values.get("vibration.velocity_rms.ttt_h")
    low = values.get("vibration.velocity_rms.ttt_h_low")
    if not isinstance(trend, int | float):
        return None
    shown = f"trend {trend / time_scale:+.3f} mm/s per pump day"
    if isinstance(hours, int | float) and isinstance(low, int | float):
        days = 3600 * time_scale / 86400
        shown += f", zone C in {hours * days:.1f} pump days (>= {low * days:.1f} at 90 %)"
    return shown


def describe(topic: str, doc: Any, time_scale: float = TIME_SCALE) -> str | None:
    """One line for a message, or None for those not worth a line (status heartbeats)."""
    kind = topic.rsplit("/", 1)[-1]
    if kind == "data" and isinstance(doc, dict):
        values = doc.get("values", {})
        shown = [f"{k}={_short(values[k])}" for k in SHOWN if k in values]
        left = countdown(values, time_scale)
        if left is not None:
            shown.append(left)
        runtime = {k.split(".", 1)[1]: v for k, v in values.items() if k.startswith("runtime.")}
        if runtime:
            # the agent's own seconds: the pump's time runs faster, the agent's does not
            shown.append("runtime=" + ",".join(f"{k}:{v:.0f}s" for k, v in runtime.items()))
        return f"data  seq={doc.get('seq')} " + " ".join(shown) if shown else None
    if kind == "event" and isinstance(doc, dict):
        mark = "ALARM" if doc.get("event") == "raise" else "clear"
        return (
            f"{mark} {doc.get('alarm')} ({doc.get('severity')}): {doc.get('tag')} "
            f"{_short(doc.get('value'))} {doc.get('condition')}"
        )
    if kind == "state" and isinstance(doc, dict):
        return f"state {doc.get('state')}"
    return f"{kind}  {json.dumps(doc)}"


def _on_message(msg: mqtt.MQTTMessage, time_scale: float = TIME_SCALE) -> None:
    try:
        doc: Any = json.loads(msg.payload)
    except ValueError:
        doc = msg.payload.decode(errors="replace")
    line = describe(msg.topic, doc, time_scale)
    if line is not None:
        print(f"{time.strftime('%H:%M:%S')} {line}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = demo_parser(__doc__.split("\n\n")[0], "pdm-demo.yaml")
    parser.add_argument("--time-scale", type=float, default=TIME_SCALE)
    args = parser.parse_args(argv)

    # A fresh bearing each run: the run time and counter totals of a previous run would not match.
    shutil.rmtree(ROOT / "data" / "pdm-demo" / "processing", ignore_errors=True)
    return run_demo(
        config=args.config,
        seconds=args.seconds,
        broker_port=BROKER_PORT,
        simulator=[
            "simulators.degrading_pump",
            "--port",
            str(MODBUS_PORT),
            "--time-scale",
            str(args.time_scale),
            "--wear-law",
            "exponential",
        ],
        simulator_port=MODBUS_PORT,
        simulator_name="pump simulator",
        watch_id="pdm-demo-watch",
        on_message=lambda msg: _on_message(msg, args.time_scale),
        banner=(
            f"pdm demo: broker 127.0.0.1:{BROKER_PORT}, pump 127.0.0.1:{MODBUS_PORT} "
            f"(x{args.time_scale:g}: a day every {86400 / args.time_scale:.0f} s; fault from "
            "day 10, end of life day 30, and a countdown to zone C); Ctrl-C to stop"
        ),
        workdir_prefix="edge-agent-pdm-demo-",
    )


if __name__ == "__main__":
    sys.exit(main())
