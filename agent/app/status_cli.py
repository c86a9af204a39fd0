"""``edge-agent status`` and ``edge-agent read``: the running agent seen from a shell.

Both talk to the agent's local HTTP listener (``metrics.listen``; agent/ops/http.py), found from the
config file or given with ``--url``. ``read`` goes through the running agent when one answers, so
it never fights the service for a serial port or a Modbus connection slot; with no agent running it
builds the device's driver from the config and polls once itself (commissioning before the
service is enabled).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from agent.app.config.models import parse_listen
from agent.app.console import EXIT_CONFIG, EXIT_OK, EXIT_RUNTIME, load_or_exit
from agent.core.processing.calculated import Calculator, calculated_of
from drivers.base import DeviceError, Driver, Quality, Reading

DEFAULT_CONFIG = Path("/etc/edge-agent/config.yaml")
DEFAULT_URL = "http://127.0.0.1:9108"

#: No proxy: the agent is on this machine, and a gateway's http_proxy must not see its status.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def url_from_listen(listen: str | None) -> str | None:
    """The URL to reach a listener bound to ``listen`` from this machine (a wildcard bind is
    reached on loopback)."""
    if listen is None:
        return None
    host, port = parse_listen(listen)
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def fetch_json(url: str, timeout: float = 5.0, data: bytes | None = None) -> Any:
    headers = {"Accept": "application/json"}
    if data is not None:
        headers["X-Edge-Agent"] = "read"
    request = urllib.request.Request(url, data=data, headers=headers)
    with _OPENER.open(request, timeout=timeout) as response:
        return json.loads(response.read())


# -- status ----------------------------------------------------------------------------------------


def _ago(ts: float | None, now: float) -> str:
    if ts is None:
        return "never"
    return f"{_dur(now - ts)} ago"


def _dur(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds // 60:.0f} min {seconds % 60:.0f} s"
    if seconds < 86400:
        return f"{seconds // 3600:.0f} h {seconds % 3600 // 60:.0f} min"
    return f"{seconds // 86400:.0f} d {seconds % 86400 // 3600:.0f} h"


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def _table(rows: Sequence[Sequence[str]], out: TextIO) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        out.write("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() + "\n")


def print_status(snap: Mapping[str, Any], out: TextIO) -> None:
    now = float(snap["now"])
    a, b, buf, clock = snap["agent"], snap["broker"], snap["buffer"], snap["clock"]
    sync = {True: "synchronised", False: "NOT synchronised (timestamps may be wrong)"}.get(
        clock["synchronized"], "unknown"
    )
    lines = [
        ("gateway", f"{a['id']} (edge-agent {a['version']}, up {_dur(a['uptime_s'] or 0)})"),
        ("config", f"{a['config'] or '-'} (reloads: {a['reloads']})"),
        ("ready", "yes" if snap["ready"] else "NO: " + "; ".join(snap["problems"])),
        (
            "broker",
            f"{b['host']}:{b['port']}{' (TLS)' if b['tls'] else ''} "
            + ("connected" if b["connected"] else "DISCONNECTED, buffering"),
        ),
        (
            "buffer",
            f"{buf['batches']} batches, {_size(buf['bytes'])} of {_size(buf['max_size'])}, "
            f"oldest {_dur(buf['oldest_age_s'])}, dropped {buf['dropped_total']}"
            + (
                f", QUARANTINED {buf['quarantined']}: {buf['quarantine_reason']}"
                if buf.get("quarantined")
                else ""
            ),
        ),
        (
            "clock",
            sync
            + (
                f", {clock['timestamps_clamped']} ts clamped" if clock["timestamps_clamped"] else ""
            ),
        ),
    ]
    for key, value in lines:
        out.write(f"{key:<8} {value}\n")
    out.write("\n")
    rows = [["DEVICE", "DRIVER", "STATE", "LAST POLL", "ERRORS", "REASON"]]
    for d in snap["devices"]:
        rate = d["error_rate"]
        rows.append(
            [
                d["name"],
                d["driver"],
                d["state"],
                _ago(d["last_poll"], now),
                "-" if rate is None else f"{rate * 100:.0f} %",
                d["reason"] or "",
            ]
        )
    if len(rows) > 1:
        _table(rows, out)
    else:
        out.write("no devices configured\n")
    outputs = snap.get("outputs") or []
    if len(outputs) > 1:
        out.write("\n")
        rows = [["DESTINATION", "FORMAT", "BROKER", "STATE", "BACKLOG", "OLDEST", "DROPPED"]]
        for o in outputs:
            rows.append(
                [
                    o["name"],
                    o["format"],
                    ",".join(o["servers"]) + (" (TLS)" if o["tls"] else ""),
                    "connected" if o["connected"] else "DISCONNECTED",
                    str(o["backlog"])
                    + (f" ({o['quarantined']} quarantined)" if o["quarantined"] else ""),
                    _dur(o["oldest_age_s"]),
                    str(o["dropped_total"]),
                ]
            )
        _table(rows, out)
    recent = snap.get("recent_errors") or []
    if recent:
        out.write("\nrecent warnings:\n")
        for e in recent[:5]:
            t = time.strftime("%H:%M:%S", time.gmtime(e["ts"]))
            extra = " ".join(f"{k}={e[k]}" for k in ("device", "reason", "error") if k in e)
            out.write(f"  {t}Z {e['level']:<7} {e['msg']} {extra}".rstrip() + "\n")


def status_command(url: str | None, config: str | None, as_json: bool) -> int:
    target = url or _url_from_config(config)
    if isinstance(target, int):
        return target
    try:
        snap = fetch_json(f"{target.rstrip('/')}/status.json")
    except (OSError, urllib.error.URLError, ValueError) as exc:
        print(f"edge-agent: no agent answers at {target}: {_why(exc)}", file=sys.stderr)
        return EXIT_RUNTIME
    if as_json:
        print(json.dumps(snap, indent=2, ensure_ascii=False))
    else:
        print_status(snap, sys.stdout)
    return EXIT_OK if snap.get("ready") else EXIT_RUNTIME


def _why(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.URLError) and not isinstance(exc, urllib.error.HTTPError):
        return str(exc.reason)
    return str(exc)


def _url_from_config(config: str | None) -> str | int:
    """The listener's URL from the config's ``metrics.listen``; the default config when none is
    named and it exists, else the default listener."""
    from agent.south.registry import load_drivers

    path = config or _default_config()
    if path is None:
        return DEFAULT_URL
    loaded = load_or_exit(path, load_drivers(), resolve_secrets=False)
    if isinstance(loaded, int):
        return loaded
    url = url_from_listen(loaded.metrics.listen)
    if url is None:
        print(f"edge-agent: {path} has metrics.listen: null; no agent to ask", file=sys.stderr)
        return EXIT_CONFIG
    return url


def _default_config() -> str | None:
    """The default config when it is there. One in a directory we may not enter (0750
    root:edge-agent, for a user not in the group) counts as there: loading it then says
    "Permission denied" rather than guessing the listener (or raising)."""
    try:
        return str(DEFAULT_CONFIG) if DEFAULT_CONFIG.exists() else None
    except PermissionError:
        return str(DEFAULT_CONFIG)


# -- read ------------------------------------------------------------------------------------------


def print_readings(rows: list[dict[str, Any]], out: TextIO) -> None:
    has_raw = any("raw" in r for r in rows)
    table = [["TAG", "VALUE", "QUALITY", *(["RAW"] if has_raw else [])]]
    for r in rows:
        quality = r["quality"] + (f": {r['reason']}" if r.get("reason") else "")
        value = "" if r.get("value") is None else json.dumps(r["value"], ensure_ascii=False)
        raw = [_raw_text(r.get("raw"))] if has_raw else []
        table.append([r["tag"], value, quality, *raw])
    _table(table, out)


def _raw_text(raw: Any) -> str:
    if raw is None:
        return ""
    if isinstance(raw, list) and all(isinstance(x, bool) for x in raw):
        return " ".join("1" if x else "0" for x in raw)
    if isinstance(raw, list) and all(isinstance(x, int) for x in raw):
        return " ".join(f"0x{x:04X}" for x in raw)
    if isinstance(raw, bytes):
        return repr(raw)[2:-1]
    return str(raw)


def read_command(config_file: str, device: str, tags: list[str], url: str | None) -> int:
    from agent.south.registry import load_drivers

    drivers = load_drivers()
    config = load_or_exit(config_file, drivers, resolve_secrets=False)
    if isinstance(config, int):
        return config
    entry = next((d for d in config.devices if d.name == device), None)
    if entry is None:
        names = ", ".join(d.name for d in config.devices)
        print(f"edge-agent: no device {device!r} (devices: {names})", file=sys.stderr)
        return EXIT_CONFIG
    known = [t.name for t in (*entry.tags, *calculated_of(entry))]
    unknown = [t for t in tags if t not in known]
    if unknown:
        print(f"edge-agent: unknown tag(s) on {device}: {', '.join(unknown)}", file=sys.stderr)
        return EXIT_CONFIG
    target = url or url_from_listen(config.metrics.listen)
    if target is not None and _agent_answers(target):
        return _read_via_agent(target, device, tags)
    result = asyncio.run(read_directly(drivers[entry.driver](entry), tags))
    if isinstance(result, str):
        print(f"edge-agent: {device}: {result}", file=sys.stderr)
        return EXIT_RUNTIME
    print(f"{device}: polled directly (no agent answers{f' at {target}' if target else ''})")
    print_readings(result, sys.stdout)
    return EXIT_OK if any(r["quality"] == "good" for r in result) else EXIT_RUNTIME


def _agent_answers(url: str) -> bool:
    try:
        with _OPENER.open(f"{url}/healthz", timeout=2) as response:
            return bool(response.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def _read_via_agent(url: str, device: str, tags: list[str]) -> int:
    query = urllib.parse.urlencode([("device", device), *(("tag", t) for t in tags)])
    try:
        doc = fetch_json(f"{url}/read?{query}", timeout=130, data=b"")
    except (OSError, urllib.error.URLError, ValueError) as exc:
        print(f"edge-agent: the running agent did not answer: {_why(exc)}", file=sys.stderr)
        return EXIT_RUNTIME
    if not doc.get("ok"):
        print(f"edge-agent: {doc.get('error')}", file=sys.stderr)
        return EXIT_RUNTIME
    print(f"{device}: next poll of the running agent ({url})")
    print_readings(doc["readings"], sys.stdout)
    return EXIT_OK if doc.get("good") else EXIT_RUNTIME


#: Polls ``read`` makes, one ``poll_interval`` apart, until one has a good reading.
DIRECT_POLLS = 3


async def read_directly(driver: Driver, tags: list[str]) -> list[dict[str, Any]] | str:
    """Connect, poll, close: the rows of the table, or why the device could not be read.

    A poll at once is all a polled device needs. Devices that talk by themselves have had no
    interval yet: a streaming instrument has sent no frame since the port opened (every tag
    ``timeout``), an OPC UA subscription's first values come with its first publish, an event
    counter has had no event. So while a poll has nothing good, it is repeated one
    ``poll_interval`` later, as the agent's next poll would be, at most ``DIRECT_POLLS`` times.
    """
    line = None
    if driver.line_key() is not None:
        line = driver.make_line()
        driver.use_line(line)
    try:
        await driver.connect()
        readings: list[Reading] = await driver.poll()
        for _ in range(DIRECT_POLLS - 1):
            if any(r.quality is Quality.GOOD for r in readings):
                break
            await asyncio.sleep(driver.device.poll_interval)
            readings = await driver.poll() or readings
        raw = dict(driver.raw_values())
        calculated = calculated_of(driver.device)
        if calculated:  # what the agent would compute from this poll
            readings = [*readings, *Calculator(calculated).readings(readings)]
    except DeviceError as exc:
        return f"{exc.reason} ({exc})"
    finally:
        await driver.close()
        if line is not None:
            await line.close()
    rows = []
    wanted = set(tags)
    for r in readings:
        if wanted and r.tag not in wanted:
            continue
        row: dict[str, Any] = {"tag": r.tag, "value": r.value, "quality": r.quality.value}
        if r.quality is not Quality.GOOD and r.reason:
            row["reason"] = r.reason
        if r.tag in raw:
            row["raw"] = raw[r.tag]
        rows.append(row)
    return rows
