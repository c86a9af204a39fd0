"""``edge-agent fleet list|push|diff``: the operator's side, talking only to the broker.

``list`` reads every gateway's retained ``health``; ``push`` validates the file here first, signs
it, sends it to the gateways (canaries one at a time, then the rest in waves) and waits for each
one's ``config/state``, stopping at the first refusal or rollback; ``diff`` compares a file with
what a gateway runs (its retained ``config/current``).
"""

from __future__ import annotations

import argparse
import difflib
import io
import json
import os
import queue
import re
import ssl
import sys
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from ruamel.yaml import YAML

from agent.app.config import ConfigErrors, load_config
from agent.app.config.models import FLEET_SECTIONS
from agent.app.config.yamlpos import parse_yaml
from agent.app.console import EXIT_CONFIG, EXIT_OK, EXIT_RUNTIME
from agent.app.fleet.push import Refused, check_sections
from agent.app.fleet.sign import DEFAULT_KEY_ENV, FleetKeyError, read_key, signature
from drivers.base import Driver

DEFAULT_PREFIX = "edge/{gw}"
#: Retained messages come right after the subscription; this long without one means all came.
QUIET = 0.3


def add_parser(sub: Any) -> None:
    """``fleet`` and its subcommands (INTERFACES.md, "Fleet": keep the flags)."""
    fleet = sub.add_parser("fleet", help="configure and watch gateways through the broker")
    fleet_sub = fleet.add_subparsers(dest="fleet_command", required=True, metavar="COMMAND")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--broker", default="127.0.0.1:1883", metavar="HOST:PORT")
    common.add_argument(
        "--prefix",
        default=DEFAULT_PREFIX,
        metavar="TEMPLATE",
        help="a gateway's topic prefix, {gw} its id (default edge/{gw})",
    )
    common.add_argument("--username", metavar="USER")
    common.add_argument("--password-env", metavar="NAME", help="variable holding the password")
    common.add_argument("--tls", action="store_true", help="TLS to the broker")
    common.add_argument("--ca-file", metavar="FILE")
    common.add_argument("--cert-file", metavar="FILE")
    common.add_argument("--cert-key", metavar="FILE", help="private key of --cert-file")
    common.add_argument(
        "--wait",
        type=float,
        metavar="SECONDS",
        default=3.0,
        help="seconds to wait for retained health at most (default 3)",
    )
    lst = fleet_sub.add_parser("list", parents=[common], help="every gateway's health, a table")
    lst.add_argument("--state", choices=["ok", "degraded", "stale"], help="only these")
    lst.add_argument(
        "--stale",
        type=float,
        metavar="SECONDS",
        default=90.0,
        help="health older than this many seconds is stale (default 90)",
    )
    lst.add_argument("--json", action="store_true", help="the health documents as JSON")
    push = fleet_sub.add_parser("push", parents=[common], help="sign and push a config file")
    push.add_argument("file", metavar="FILE")
    targets = push.add_mutually_exclusive_group(required=True)
    targets.add_argument("--to", nargs="+", metavar="GW")
    targets.add_argument("--all", action="store_true", help="every gateway with a health")
    push.add_argument(
        "--canary",
        type=int,
        default=0,
        metavar="N",
        help="these first N gateways one at a time before the rest",
    )
    push.add_argument(
        "--parallel",
        type=int,
        default=1,
        metavar="N",
        help="after the canaries, push to N gateways at a time (default 1)",
    )
    push.add_argument("--version", type=int, required=True, metavar="N")
    push.add_argument("--key-env", metavar="NAME", help=f"default {DEFAULT_KEY_ENV}")
    push.add_argument("--key-file", metavar="FILE")
    push.add_argument(
        "--timeout",
        type=float,
        metavar="SECONDS",
        default=120.0,
        help="seconds to wait for each gateway's result (default 120)",
    )
    diff = fleet_sub.add_parser("diff", parents=[common], help="a file against a gateway's")
    diff.add_argument("gw", metavar="GW")
    diff.add_argument("file", metavar="FILE")


class Broker:
    """A small synchronous MQTT session for the commands: messages land in a queue."""

    def __init__(self, args: argparse.Namespace) -> None:
        host, _, port = args.broker.rpartition(":")
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self._subacks: queue.Queue[int] = queue.Queue()
        self._connected = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"edge-agent-fleet-{uuid.uuid4().hex[:12]}"
        )
        if args.username:
            password = None
            if args.password_env:
                password = os.environ.get(args.password_env)
            self.client.username_pw_set(args.username, password)
        if args.tls or args.ca_file:
            ctx = ssl.create_default_context(cafile=args.ca_file)
            if args.cert_file:
                ctx.load_cert_chain(args.cert_file, args.cert_key)
            self.client.tls_set_context(ctx)
        self.client.on_connect = lambda c, u, f, rc, p: self._connected.set()
        self.client.on_message = lambda c, u, m: self.messages.put(m)
        self.client.on_subscribe = lambda c, u, mid, codes, p: self._subacks.put(mid)
        self.client.connect(host.strip("[]") or "127.0.0.1", int(port or 1883), keepalive=30)
        self.client.loop_start()
        if not self._connected.wait(10):
            raise OSError(f"no answer from the broker {args.broker}")

    def subscribe(self, topic: str) -> None:
        self.client.subscribe(topic, qos=1)
        self._subacks.get(timeout=10)

    def publish(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(10)

    def retained(self, wait: float) -> list[mqtt.MQTTMessage]:
        """What arrives until nothing has for ``QUIET`` seconds (or ``wait`` in all)."""
        got: list[mqtt.MQTTMessage] = []
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                got.append(self.messages.get(timeout=QUIET))
            except queue.Empty:
                break
        return got

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _topic_re(template: str, suffix: str) -> re.Pattern[str]:
    head, _, tail = template.partition("{gw}")
    return re.compile(re.escape(head) + r"([^/]+)" + re.escape(tail) + re.escape(suffix) + "$")


def _filter(template: str, suffix: str) -> str:
    return template.replace("{gw}", "+") + suffix


def read_health(broker: Broker, template: str, wait: float) -> dict[str, dict[str, Any]]:
    """Every gateway's retained health, by gateway id."""
    broker.subscribe(_filter(template, "/health"))
    pattern = _topic_re(template, "/health")
    found: dict[str, dict[str, Any]] = {}
    for msg in broker.retained(wait):
        m = pattern.match(msg.topic)
        if m is None or not msg.payload:
            continue
        try:
            doc = json.loads(msg.payload)
        except ValueError:
            continue
        if isinstance(doc, dict):
            found[m.group(1)] = doc
    return found


def gateway_state(doc: Mapping[str, Any], now_ms: int, stale_s: float) -> str:
    ts = doc.get("ts")
    if not isinstance(ts, int) or now_ms - ts > stale_s * 1000:
        return "stale"
    return "ok" if doc.get("state") == "ok" else "degraded"


def health_table(health: Mapping[str, Mapping[str, Any]], stale_s: float, state: str | None) -> str:
    """The ``list`` table, one gateway a row, sorted by id."""
    now_ms = int(time.time() * 1000)
    rows = [("GATEWAY", "STATE", "CONFIG", "DEVICES", "OUTPUTS", "BACKLOG", "CLOCK", "AGE")]
    for gw in sorted(health):
        doc = health[gw]
        st = gateway_state(doc, now_ms, stale_s)
        if state is not None and st != state:
            continue
        devices = doc.get("devices") or {}
        outputs = doc.get("outputs") or {}
        up = sum(1 for d in devices.values() if isinstance(d, dict) and d.get("state") == "up")
        conn = sum(1 for o in outputs.values() if isinstance(o, dict) and o.get("connected"))
        backlog = sum(int(o.get("backlog") or 0) for o in outputs.values() if isinstance(o, dict))
        config = doc.get("config") or {}
        ts = doc.get("ts")
        age = f"{(now_ms - ts) / 1000:.0f}s" if isinstance(ts, int) else "?"
        rows.append(
            (
                gw,
                st,
                f"v{config.get('version', '?')}",
                f"{up}/{len(devices)} up",
                f"{conn}/{len(outputs)} connected",
                str(backlog),
                "sync" if doc.get("clock_synchronized") else "unsync",
                age,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return (
        "\n".join(
            "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
        )
        + "\n"
    )


def check_file(file: str, drivers: Mapping[str, type[Driver]]) -> str | None:
    """The file's text when it would pass a gateway's checks (as far as this machine can
    tell: the gateway checks against its own sections and its ``fleet.allow`` again); None
    after printing every problem as ``FILE:LINE:COL: path: message``."""
    try:
        text = Path(file).read_text(encoding="utf-8-sig")
    except OSError as exc:
        print(f"edge-agent: cannot read {file}: {exc.strerror or exc}", file=sys.stderr)
        return None
    problems: list[str] = []
    try:
        check_sections(text, list(FLEET_SECTIONS))
        load_config(
            Path(file),
            drivers,
            text=text,
            underlay={"agent": {"id": "fleet-check"}},
            base_dir=Path(file).parent,
        )
    except Refused as exc:
        problems = [f"{file}:{e}" if e[:1].isdigit() else e for e in exc.errors]
    except ConfigErrors as exc:
        problems = [
            f"{file}:{i.line}:{i.col}: {i.path}: {i.message}" if i.file == file else str(i)
            for i in exc.issues
        ]
    for p in problems:
        print(p, file=sys.stderr)
    return None if problems else text


def _waves(targets: list[str], canary: int, parallel: int) -> Iterable[list[str]]:
    canaries, rest = targets[:canary], targets[canary:]
    for gw in canaries:
        yield [gw]
    step = max(1, parallel)
    for i in range(0, len(rest), step):
        yield rest[i : i + step]


def push_command(args: argparse.Namespace, drivers: Mapping[str, type[Driver]]) -> int:
    text = check_file(args.file, drivers)
    if text is None:
        return EXIT_CONFIG
    try:
        key = read_key(args.key_env, Path(args.key_file) if args.key_file else None)
    except FleetKeyError as exc:
        print(f"edge-agent: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    push_id = uuid.uuid4().hex
    payload = json.dumps(
        {
            "id": push_id,
            "version": args.version,
            "yaml": text,
            "sig": signature(key, args.version, text),
        }
    ).encode()
    broker = Broker(args)
    try:
        targets = list(args.to) if args.to else sorted(read_health(broker, args.prefix, args.wait))
        if not targets:
            print("edge-agent: no gateway to push to (no retained health)", file=sys.stderr)
            return EXIT_RUNTIME
        broker.subscribe(_filter(args.prefix, "/config/state"))
        pattern = _topic_re(args.prefix, "/config/state")
        results: dict[str, dict[str, Any]] = {}
        for wave in _waves(targets, args.canary, args.parallel):
            for gw in wave:
                broker.publish(args.prefix.replace("{gw}", gw) + "/config/set", payload)
            _await_results(broker, pattern, push_id, set(wave), results, args.timeout)
            failed = False
            for gw in wave:
                state = results.get(gw)
                if state is None:
                    print(f"{gw}: no answer within {args.timeout:g} s")
                    failed = True
                    continue
                print(f"{gw}: {state['result']} (version {state.get('version')})")
                for error in state.get("errors") or []:
                    print(f"  {error}")
                failed = failed or state["result"] != "applied"
            if failed:
                left = len(targets) - targets.index(wave[-1]) - 1
                print(f"rollout stopped: {left} gateway(s) not pushed", file=sys.stderr)
                return EXIT_RUNTIME
        print(f"applied on {len(targets)} gateway(s)")
        return EXIT_OK
    finally:
        broker.close()


def _await_results(
    broker: Broker,
    pattern: re.Pattern[str],
    push_id: str,
    wanted: set[str],
    results: dict[str, dict[str, Any]],
    timeout: float,
) -> None:
    deadline = time.monotonic() + timeout
    while wanted - results.keys():
        left = deadline - time.monotonic()
        if left <= 0:
            return
        try:
            msg = broker.messages.get(timeout=left)
        except queue.Empty:
            return
        m = pattern.match(msg.topic)
        if m is None:
            continue
        try:
            doc = json.loads(msg.payload)
        except ValueError:
            continue
        if isinstance(doc, dict) and doc.get("id") == push_id and m.group(1) in wanted:
            results[m.group(1)] = doc


def normalized(text: str) -> list[str]:
    """The pushable sections of a config as YAML lines, so formatting does not count."""
    data = parse_yaml(text, "<diff>").data
    data = {k: v for k, v in (data or {}).items() if k in FLEET_SECTIONS}
    yaml = YAML(typ="safe", pure=True)
    yaml.default_flow_style = False
    out = io.StringIO()
    yaml.dump(data, out)
    return out.getvalue().splitlines(keepends=True)


def diff_command(args: argparse.Namespace) -> int:
    try:
        mine = normalized(Path(args.file).read_text(encoding="utf-8-sig"))
    except (OSError, ConfigErrors) as exc:
        print(f"edge-agent: {args.file}: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    broker = Broker(args)
    try:
        topic = args.prefix.replace("{gw}", args.gw) + "/config/current"
        broker.subscribe(topic)
        got = [m for m in broker.retained(args.wait) if m.topic == topic and m.payload]
    finally:
        broker.close()
    if not got:
        print(f"edge-agent: {args.gw} has published no config/current", file=sys.stderr)
        return EXIT_RUNTIME
    doc = json.loads(got[-1].payload)
    theirs = normalized(doc.get("yaml") or "")
    label = f"{args.gw} (version {doc.get('version')}, {doc.get('source')})"
    lines = list(difflib.unified_diff(theirs, mine, fromfile=label, tofile=args.file))
    sys.stdout.writelines(lines)
    return EXIT_RUNTIME if lines else EXIT_OK


def fleet_command(args: argparse.Namespace, drivers: Mapping[str, type[Driver]]) -> int:
    try:
        if args.fleet_command == "push":
            return push_command(args, drivers)
        if args.fleet_command == "diff":
            return diff_command(args)
        broker = Broker(args)
        try:
            health = read_health(broker, args.prefix, args.wait)
        finally:
            broker.close()
    except OSError as exc:
        print(f"edge-agent: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    if args.json:
        print(json.dumps(health, indent=1))
    else:
        sys.stdout.write(health_table(health, args.stale, args.state))
    return EXIT_OK
