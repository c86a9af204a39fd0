"""``edge-agent config history`` and ``edge-agent config rollback VERSION``: the versions a
gateway keeps, read and restored on the gateway itself (no broker needed)."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agent.app.config.models import Config
from agent.app.console import EXIT_CONFIG, EXIT_OK, load_or_exit
from agent.app.fleet.push import Refused, build_config, yaml_hash
from agent.app.fleet.store import Entry, FleetStore, StoreState
from drivers.base import Driver


def add_parser(sub: Any) -> None:
    config = sub.add_parser("config", help="the versions the fleet pushed to this gateway")
    config_sub = config.add_subparsers(dest="config_command", required=True, metavar="COMMAND")
    history = config_sub.add_parser("history", help="list the versions kept on disk")
    history.add_argument("-c", "--config", required=True, metavar="FILE")
    rollback = config_sub.add_parser(
        "rollback", help="put a kept version in force (from the next start)"
    )
    rollback.add_argument("-c", "--config", required=True, metavar="FILE")
    rollback.add_argument("version", type=int, metavar="VERSION")


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


def config_command(args: argparse.Namespace, drivers: Mapping[str, type[Driver]]) -> int:
    config = load_or_exit(args.config, drivers, resolve_secrets=False)
    if isinstance(config, int):
        return config
    store = FleetStore(Path(config.agent.data_dir), config.fleet.keep)
    try:
        state = store.load()
    except OSError as exc:
        print(f"edge-agent: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if args.config_command == "history":
        return _history(store, state, args.config)
    return _rollback(store, state, config, Path(args.config), args.version, drivers)


def _history(store: FleetStore, state: StoreState, file: str) -> int:
    on_disk = set(store.versions())
    current = state.current
    if current is None or current.ts <= Path(file).stat().st_mtime:
        print("in force at the next start: the local file")
    else:
        print(f"in force at the next start: version {current.version}")
    rows = [("VERSION", "RESULT", "WHEN", "HASH", "KEPT", "REASON")]
    for item in reversed(state.history):
        version = int(item.get("version", 0))
        mark = "*" if current is not None and current.version == version else " "
        rows.append(
            (
                f"{mark}{version}",
                str(item.get("result", "")),
                _when(item.get("ts")),
                str(item.get("hash", ""))[:12],
                "yes" if version in on_disk else "no",
                str(item.get("reason", "")),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    return EXIT_OK


def _rollback(
    store: FleetStore,
    state: StoreState,
    config: Config,
    path: Path,
    version: int,
    drivers: Mapping[str, type[Driver]],
) -> int:
    if version not in store.versions():
        kept = ", ".join(map(str, store.versions())) or "none"
        print(f"edge-agent: version {version} is not kept (kept: {kept})", file=sys.stderr)
        return EXIT_CONFIG
    text = store.read_version(version)
    try:
        build_config(text, path, drivers, list(config.fleet.allow), resolve_secrets=False)
    except Refused as exc:
        print(f"edge-agent: version {version} does not fit {path} any more:", file=sys.stderr)
        for e in exc.errors:
            print(f"  {e}", file=sys.stderr)
        return EXIT_CONFIG
    digest = yaml_hash(text)
    state.current = Entry(version, digest)
    state.record(version, digest, "restored", "edge-agent config rollback")
    store.save(state)
    print(
        f"version {version} restored: in force from the next start (systemctl restart edge-agent)"
    )
    return EXIT_OK
