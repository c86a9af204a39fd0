"""``make demo``: a simulated machine, a local broker and the agent, with the data printed live.

Runs three processes (the Modbus simulator, mosquitto on its own port with its own config, and
``edge-agent run -c config/demo.yaml``) and subscribes to everything the agent publishes, until
Ctrl-C; then stops them all. It talks to the agent only over MQTT, as a cloud consumer would.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

ROOT = Path(__file__).resolve().parent.parent
DEMO_BROKER_PORT = 18830  # not 1883: Debian's mosquitto package runs a system broker there
DEMO_MODBUS_PORT = 5020


def _wait_port(port: int, proc: subprocess.Popen[bytes], what: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"{what} exited with code {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"{what} did not listen on port {port}")


def _mosquitto() -> str:
    for candidate in (shutil.which("mosquitto"), "/usr/sbin/mosquitto"):
        if candidate and Path(candidate).exists():
            return candidate
    sys.exit("mosquitto is not installed (make demo installs it: apt-get install mosquitto)")


def print_message(msg: mqtt.MQTTMessage) -> None:
    """One line per message: a data batch as ``name=value`` pairs, anything else as JSON."""
    try:
        doc: Any = json.loads(msg.payload)
    except ValueError:
        doc = msg.payload
    when = time.strftime("%H:%M:%S")
    if msg.topic.endswith("/data") and isinstance(doc, dict):
        values = ", ".join(f"{k}={v}" for k, v in doc.get("values", {}).items())
        bad = doc.get("quality")
        print(
            f"{when} {msg.topic} seq={doc.get('seq')} {values}"
            + (f"  quality={bad}" if bad else "")
        )
    else:
        text = doc.decode(errors="replace") if isinstance(doc, bytes) else json.dumps(doc)
        print(f"{when} {msg.topic} {text}")
    sys.stdout.flush()


def run_demo(
    *,
    config: str,
    seconds: float,
    broker_port: int,
    simulator: list[str],
    simulator_port: int,
    simulator_name: str,
    watch_id: str,
    banner: str,
    workdir_prefix: str,
    on_message: Callable[[mqtt.MQTTMessage], None] = print_message,
) -> int:
    """Run a private mosquitto on ``broker_port``, the simulator module ``simulator`` (its
    arguments after ``-m``) until it listens on ``simulator_port``, and ``edge-agent run -c
    config``; hand every message the agent publishes to ``on_message`` until Ctrl-C (or
    ``seconds``), then stop them all. Both demos are this, with their own machine and printout."""
    bindir = Path(sys.executable).parent
    workdir = Path(tempfile.mkdtemp(prefix=workdir_prefix))
    conf = workdir / "mosquitto.conf"
    conf.write_text(
        f"listener {broker_port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        "log_dest none\n"
    )
    procs: list[subprocess.Popen[bytes]] = []
    stop = False

    def on_signal(signum: int, frame: Any) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    client: mqtt.Client | None = None
    try:
        broker = subprocess.Popen([_mosquitto(), "-c", str(conf)])
        procs.append(broker)
        _wait_port(broker_port, broker, "mosquitto")
        sim = subprocess.Popen([sys.executable, "-m", *simulator], cwd=ROOT)
        procs.append(sim)
        _wait_port(simulator_port, sim, simulator_name)
        agent = subprocess.Popen([str(bindir / "edge-agent"), "run", "-c", config])
        procs.append(agent)

        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=watch_id)
        client.on_message = lambda c, u, m: on_message(m)
        client.connect("127.0.0.1", broker_port)
        client.subscribe("edge/#", qos=1)
        client.loop_start()
        print(banner, flush=True)
        deadline = time.monotonic() + seconds if seconds else None
        while not stop and (deadline is None or time.monotonic() < deadline):
            if agent.poll() is not None:
                print(f"agent exited with code {agent.returncode}")
                return agent.returncode or 1
            time.sleep(0.2)
        return 0
    finally:
        if client is not None:
            client.loop_stop()
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
        shutil.rmtree(workdir, ignore_errors=True)
        print("demo stopped")


def demo_parser(description: str, config: str) -> argparse.ArgumentParser:
    """The options every demo runner takes: ``--config`` (``config/CONFIG`` by default) and
    ``--seconds``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", default=str(ROOT / "config" / config))
    parser.add_argument("--seconds", type=float, default=0, help="stop after this long (0: Ctrl-C)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = demo_parser(__doc__, "demo.yaml").parse_args(argv)
    return run_demo(
        config=args.config,
        seconds=args.seconds,
        broker_port=DEMO_BROKER_PORT,
        simulator=["simulators.modbus_tcp", "--port", str(DEMO_MODBUS_PORT)],
        simulator_port=DEMO_MODBUS_PORT,
        simulator_name="simulator",
        watch_id="demo-watch",
        banner=(
            f"demo running: broker 127.0.0.1:{DEMO_BROKER_PORT}, simulator 127.0.0.1:"
            f"{DEMO_MODBUS_PORT}, metrics http://127.0.0.1:9108/metrics; Ctrl-C to stop"
        ),
        workdir_prefix="edge-agent-demo-",
    )


if __name__ == "__main__":
    sys.exit(main())
