"""``make demo-s7``: an injection-moulding machine's S7 PLC, a local broker and the agent, with the
data printed live.

Runs the moulding-machine simulator (``simulators.s7_moulding``: python-snap7's S7 server with
the machine's data blocks, granting a PDU of 240 bytes as an S7-1200 does), a private mosquitto
and ``edge-agent run -c config/demo-s7.yaml``, and prints what the agent publishes until Ctrl-C
(or ``--seconds``). A command such as ``mosquitto_pub -p 18834 -t edge/demo-s7-gw/mould-3/cmd
-m '{"id": "1", "write": {"barrel_setpoint": 245}}'`` writes the set-point; the reply and the
zone temperatures following it show up here.
"""

from __future__ import annotations

import sys

from simulators.demo import demo_parser, run_demo

BROKER_PORT = 18834  # not the other demos' ports: demos can run side by side
S7_PORT = 1102  # 102 needs root


def main(argv: list[str] | None = None) -> int:
    args = demo_parser(__doc__, "demo-s7.yaml").parse_args(argv)
    return run_demo(
        config=args.config,
        seconds=args.seconds,
        broker_port=BROKER_PORT,
        simulator=["simulators.s7_moulding", "--port", str(S7_PORT), "--pdu", "240"],
        simulator_port=S7_PORT,
        simulator_name="S7 simulator",
        watch_id="demo-s7-watch",
        banner=(
            f"S7 demo running: broker 127.0.0.1:{BROKER_PORT}, PLC 127.0.0.1:{S7_PORT}, "
            "metrics http://127.0.0.1:9111/metrics; Ctrl-C to stop"
        ),
        workdir_prefix="edge-agent-demo-s7-",
    )


if __name__ == "__main__":
    sys.exit(main())
