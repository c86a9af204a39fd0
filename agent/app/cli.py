"""The ``edge-agent`` command: ``validate``, ``schema``, ``run``, ``status``, ``read``, ``sniff``...

Operators script it, so the output and exit codes are a contract (INTERFACES.md): 0 success,
1 runtime failure, 2 bad config or usage; config problems are one ``FILE:LINE:COL: path: message``
line each on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Mapping
from pathlib import Path

from agent.app import status_cli
from agent.app.config import Config, config_schema
from agent.app.console import EXIT_CONFIG, EXIT_OK, EXIT_RUNTIME, load_or_exit
from agent.app.fleet import history as fleet_history
from agent.app.fleet import operator as fleet_operator
from agent.south.registry import DriverConflictError, load_drivers
from drivers.base import DeviceError, Driver, Quality


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edge-agent",
        description="Edge data-collection agent: devices to MQTT, store-and-forward.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    validate = sub.add_parser("validate", help="check a config file without touching devices")
    validate.add_argument("file", metavar="FILE")
    validate.add_argument(
        "--sample",
        nargs=2,
        metavar=("DEVICE", "FRAME"),
        help="show the tags one frame (escapes allowed, e.g. 'ST,GS,+0012.34 kg') yields",
    )
    schema = sub.add_parser("schema", help="print the JSON Schema of the config file")
    schema.add_argument(
        "--markdown", action="store_true", help="print it as the reference page (Markdown)"
    )
    run = sub.add_parser("run", help="run the agent until SIGTERM or SIGINT")
    run.add_argument("-c", "--config", required=True, metavar="FILE")
    run.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    run.add_argument("--log-format", default="text", choices=["text", "json"])
    status = sub.add_parser("status", help="what the running agent is doing (its local listener)")
    status.add_argument("-c", "--config", metavar="FILE", help="find the listener in this config")
    status.add_argument("--url", help="the agent's listener, e.g. http://127.0.0.1:9108")
    status.add_argument("--json", action="store_true", help="print /status.json as it comes")
    read = sub.add_parser(
        "read", help="one poll of a device now: values, quality, raw registers (commissioning)"
    )
    read.add_argument("-c", "--config", required=True, metavar="FILE")
    read.add_argument("device", metavar="DEVICE")
    read.add_argument("tags", nargs="*", metavar="TAG", help="only these tags (default: all)")
    read.add_argument("--url", help="the running agent's listener (default: metrics.listen)")
    discover = sub.add_parser(
        "discover",
        help="browse a device and print a ready-to-edit YAML device entry (commissioning)",
        add_help=False,  # --help goes to the driver, which knows its own options
    )
    discover.add_argument("driver", metavar="DRIVER", help="e.g. opcua")
    discover.add_argument("driver_args", nargs=argparse.REMAINDER, metavar="ARGS")
    scan = sub.add_parser(
        "scan",
        help="list the devices that answer on a line, e.g. scan modbus --port P (commissioning)",
        add_help=False,  # --help goes to the driver, which knows its own options
    )
    scan.add_argument("driver", metavar="DRIVER", help="e.g. modbus, dlt645")
    scan.add_argument("driver_args", nargs=argparse.REMAINDER, metavar="ARGS")
    sniff = sub.add_parser(
        "sniff", help="print what a serial port receives, with escapes and timing"
    )
    sniff.add_argument("port", metavar="PORT")
    sniff.add_argument("--baudrate", type=int, default=9600)
    sniff.add_argument("--parity", default="N", choices=["N", "E", "O", "M", "S"])
    sniff.add_argument("--bytesize", type=int, default=8, choices=[5, 6, 7, 8])
    sniff.add_argument("--stopbits", type=float, default=1, choices=[1, 1.5, 2])
    sniff.add_argument(
        "--terminator", help=r"show whole frames ending so, e.g. '\r\n'; default: every read"
    )
    sniff.add_argument("--count", type=int, help="stop after this many frames")
    sniff.add_argument("--duration", type=float, help="stop after this many seconds")
    # The fleet (agent/app/fleet): the operator's commands, and the versions on a gateway.
    fleet_operator.add_parser(sub)
    fleet_history.add_parser(sub)
    return parser


def _try_sample(
    config: Config, drivers: Mapping[str, type[Driver]], device_name: str, frame: str
) -> int:
    """Print what ``frame`` yields for each tag of the device; 0 when at least one tag is good.

    The parsing is the driver's own (``try_sample``), reached through the registry, so what this
    shows is exactly what the running agent would read."""
    device = next((d for d in config.devices if d.name == device_name), None)
    if device is None:
        names = ", ".join(d.name for d in config.devices)
        print(f"edge-agent: no device {device_name!r} (devices: {names})", file=sys.stderr)
        return EXIT_CONFIG
    readings = drivers[device.driver](device).try_sample(frame)
    if readings is None:
        print(f"edge-agent: driver {device.driver!r} cannot parse samples", file=sys.stderr)
        return EXIT_CONFIG
    for r in readings:
        shown = repr(r.value) if r.quality is Quality.GOOD else f"{r.quality.value}: {r.reason}"
        print(f"  {r.tag} = {shown}")
    return EXIT_OK if any(r.quality is Quality.GOOD for r in readings) else EXIT_RUNTIME


def _sniff(args: argparse.Namespace, drivers: Mapping[str, type[Driver]]) -> int:
    """Run the serial driver's sniffer until --count, --duration or Ctrl-C."""
    serial = drivers.get("serial")
    tool = serial.sniffer() if serial is not None else None
    if tool is None:
        print("edge-agent: sniff needs the serial driver, which is not installed", file=sys.stderr)
        return EXIT_RUNTIME
    try:
        asyncio.run(
            tool(
                args.port,
                sys.stdout,
                baudrate=args.baudrate,
                parity=args.parity,
                bytesize=args.bytesize,
                stopbits=args.stopbits,
                terminator=args.terminator,
                count=args.count,
                duration=args.duration,
            )
        )
    except KeyboardInterrupt:
        return EXIT_OK
    except DeviceError as exc:
        print(f"edge-agent: {exc.reason}: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    except ValueError as exc:
        print(f"edge-agent: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    return EXIT_OK


def _hand_to_driver(
    ability: str, doing: str, args: argparse.Namespace, drivers: Mapping[str, type[Driver]]
) -> int:
    """Hand ``edge-agent discover|scan DRIVER ARGS...`` (``ability``) to the driver's own
    classmethod of that name; a driver without it is refused, naming those that can ``doing``."""
    name = args.driver
    cls = drivers.get(name)
    code = getattr(cls, ability)(args.driver_args) if cls is not None else None
    if code is None:
        able = sorted(n for n, d in drivers.items() if ability in vars(d))
        print(
            f"edge-agent: driver {name!r} cannot {doing} "
            f"(drivers that can: {', '.join(able) or 'none'})",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    return int(code)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code instead of exiting, for tests."""
    args = _parser().parse_args(argv)
    try:
        drivers = load_drivers()
    except DriverConflictError as exc:
        print(f"edge-agent: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    if args.command == "schema":
        if args.markdown:
            from agent.app.reference import config_reference

            sys.stdout.write(config_reference(config_schema(drivers)))
            return EXIT_OK
        print(json.dumps(config_schema(drivers), indent=2))
        return EXIT_OK
    if args.command == "validate":
        config = load_or_exit(args.file, drivers, resolve_secrets=False)
        if isinstance(config, int):
            return config
        print(f"{args.file}: ok ({len(config.devices)} devices, {config.tag_count()} tags)")
        if args.sample is not None:
            return _try_sample(config, drivers, *args.sample)
        return EXIT_OK
    if args.command == "sniff":
        return _sniff(args, drivers)
    if args.command == "fleet":
        return fleet_operator.fleet_command(args, drivers)
    if args.command == "config":
        return fleet_history.config_command(args, drivers)
    if args.command == "discover":
        return _hand_to_driver("discover", "discover devices", args, drivers)
    if args.command == "scan":
        return _hand_to_driver("scan", "scan a line", args, drivers)
    if args.command in ("status", "read"):
        if args.command == "status":
            return status_cli.status_command(args.url, args.config, args.json)
        return status_cli.read_command(args.config, args.device, args.tags, args.url)
    config = load_or_exit(args.config, drivers, resolve_secrets=True)
    if isinstance(config, int):
        return config
    # Imported here: validate and schema must work without the runtime's dependencies loaded
    # (and start fast on a small gateway).
    from agent.app.runtime import run_agent
    from agent.ops.logs import setup_logging

    setup_logging(args.log_level, args.log_format)
    return run_agent(config, Path(args.config))


if __name__ == "__main__":
    sys.exit(main())
