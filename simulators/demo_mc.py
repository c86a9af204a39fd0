"""``make demo-mc``: a press line's Mitsubishi PLC, a local broker and the agent, with the data
printed live.

Runs the press simulator (``simulators.mc_press``: MC protocol 3E, binary, on 127.0.0.1:5007,
strokes counting while the motor runs), a private mosquitto and ``edge-agent run -c
config/demo-mc.yaml``, and prints what the agent publishes until Ctrl-C (or ``--seconds``).
``--encoding ascii`` runs the PLC's port and the agent in ASCII code instead. A command such as
``mosquitto_pub -p 18836 -t edge/demo-mc-gw/press-7/cmd -m '{"id": "1", "write":
{"tonnage_setpoint": 320}}'`` writes the set-point; the reply and the tonnage following it show
up here.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from simulators.demo import demo_parser, run_demo

BROKER_PORT = 18836  # not the other demos' ports: demos can run side by side
MC_PORT = 5007


def main(argv: list[str] | None = None) -> int:
    parser = demo_parser(__doc__, "demo-mc.yaml")
    parser.add_argument("--encoding", choices=("binary", "ascii"), default="binary")
    args = parser.parse_args(argv)
    config = args.config
    with tempfile.TemporaryDirectory(prefix="edge-agent-demo-mc-config-") as tmp:
        if args.encoding == "ascii":  # the agent must speak the code the PLC's port is set to
            text = Path(config).read_text(encoding="utf-8")
            data_dir = str((Path(config).parent / "../data/demo-mc").resolve())
            patched = Path(tmp) / "demo-mc.yaml"
            patched.write_text(
                text.replace("encoding: binary", "encoding: ascii").replace(
                    "../data/demo-mc", data_dir
                ),
                encoding="utf-8",
            )
            config = str(patched)
        return run_demo(
            config=config,
            seconds=args.seconds,
            broker_port=BROKER_PORT,
            simulator=[
                "simulators.mc_press",
                "--port",
                str(MC_PORT),
                "--encoding",
                args.encoding,
            ],
            simulator_port=MC_PORT,
            simulator_name="MC simulator",
            watch_id="demo-mc-watch",
            banner=(
                f"MC demo running: broker 127.0.0.1:{BROKER_PORT}, PLC 127.0.0.1:{MC_PORT} "
                f"(3E {args.encoding}), metrics http://127.0.0.1:9113/metrics; Ctrl-C to stop"
            ),
            workdir_prefix="edge-agent-demo-mc-",
        )


if __name__ == "__main__":
    sys.exit(main())
