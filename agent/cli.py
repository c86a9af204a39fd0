"""The ``edge-agent`` command: ``validate``, ``schema`` and ``run``.

Operators script it, so the output and exit codes are a contract (INTERFACES.md): 0 success,
1 runtime failure, 2 bad config or usage; config problems are one ``FILE:LINE:COL: path: message``
line each on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from pathlib import Path

from agent.config import Config, ConfigErrors, config_schema, load_config
from agent.drivers import DriverConflictError, load_drivers
from drivers.base import Driver

EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_CONFIG = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edge-agent",
        description="Edge data-collection agent: devices to MQTT, store-and-forward.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    validate = sub.add_parser("validate", help="check a config file without touching devices")
    validate.add_argument("file", metavar="FILE")
    sub.add_parser("schema", help="print the JSON Schema of the config file")
    run = sub.add_parser("run", help="run the agent until SIGTERM or SIGINT")
    run.add_argument("-c", "--config", required=True, metavar="FILE")
    run.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    run.add_argument("--log-format", default="text", choices=["text", "json"])
    return parser


def _load(file: str, drivers: Mapping[str, type[Driver]], *, resolve_secrets: bool) -> Config | int:
    """The config, or the exit code after printing why not. Issues are printed with FILE as the
    user typed it, so the lines match what their editor or CI has open."""
    try:
        return load_config(Path(file), drivers, resolve_secrets=resolve_secrets)
    except ConfigErrors as exc:
        for i in exc.issues:
            print(f"{file}:{i.line}:{i.col}: {i.path}: {i.message}", file=sys.stderr)
        return EXIT_CONFIG
    except OSError as exc:
        print(f"edge-agent: cannot read {file}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_CONFIG
    except Exception as exc:
        # Not the file's fault (a driver's validator raising something other than ValueError,
        # say): one clear line and the runtime-failure code, not a traceback posing as a verdict.
        print(
            f"edge-agent: internal error while checking {file}: {type(exc).__name__}: {exc}",
            file=sys.stderr,
        )
        return EXIT_RUNTIME


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code instead of exiting, for tests."""
    args = _parser().parse_args(argv)
    try:
        drivers = load_drivers()
    except DriverConflictError as exc:
        print(f"edge-agent: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    if args.command == "schema":
        print(json.dumps(config_schema(drivers), indent=2))
        return EXIT_OK
    if args.command == "validate":
        config = _load(args.file, drivers, resolve_secrets=False)
        if isinstance(config, int):
            return config
        print(f"{args.file}: ok ({len(config.devices)} devices, {config.tag_count()} tags)")
        return EXIT_OK
    config = _load(args.config, drivers, resolve_secrets=True)
    if isinstance(config, int):
        return config
    # Imported here: validate and schema must work without the runtime's dependencies loaded
    # (and start fast on a small gateway).
    from agent.logs import setup_logging
    from agent.runtime import run_agent

    setup_logging(args.log_level, args.log_format)
    return run_agent(config, Path(args.config))


if __name__ == "__main__":
    sys.exit(main())
