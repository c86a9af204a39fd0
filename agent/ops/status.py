"""What the agent is doing, gathered for people: the status page, ``/status.json``, ``edge-agent
status`` and ``edge-agent read``.

The poll loops do not know about any of this. The board sits on the two paths every device
already reports through (its batch sink and its status sink) and keeps the last values, state and
a short error history per device; a logging handler keeps the last warnings. The snapshot is built
on the event loop (the HTTP server's thread asks for it), so it reads one consistent state.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import operator
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agent.core.buffer import BufferStats, OutputBacklog
from agent.core.processing.calculated import calculated_of
from agent.south.scheduler import BatchSink, StatusSink, all_good
from drivers.base import Batch, Quality, Reading

if TYPE_CHECKING:  # the runtime builds the agent; ops reads it, never imports app at run time
    from agent.app.runtime import Agent

_tag_of = operator.attrgetter("tag")

#: Batches per device over which the error rate is computed.
ERROR_WINDOW = 100
#: Warnings and errors kept for the page.
RECENT_ERRORS = 20


@dataclass
class DeviceView:
    """One device as the board last saw it."""

    state: str | None = None
    reason: str | None = None
    since: float | None = None
    last_batch: float | None = None
    last_seq: int | None = None
    values: dict[str, Reading] = field(default_factory=dict)
    outcomes: collections.deque[bool] = field(
        default_factory=lambda: collections.deque(maxlen=ERROR_WINDOW)
    )

    @property
    def error_rate(self) -> float | None:
        """Share of recent batches with some tag not good; None before the first batch."""
        if not self.outcomes:
            return None
        return sum(1 for ok in self.outcomes if not ok) / len(self.outcomes)


class StatusBoard:
    """Last values, states and warnings, fed by tees on the devices' sinks."""

    def __init__(self) -> None:
        self.devices: dict[str, DeviceView] = {}
        self.recent = RecentErrors()
        self._waiters: dict[str, list[asyncio.Future[list[Reading]]]] = {}

    def view(self, device: str) -> DeviceView:
        return self.devices.setdefault(device, DeviceView())

    def forget(self, device: str) -> None:
        self.devices.pop(device, None)
        for fut in self._waiters.pop(device, []):
            if not fut.done():
                fut.set_exception(LookupError(f"device {device!r} was removed"))

    # -- the tees ---------------------------------------------------------------------------------

    def batch_sink(self, inner: BatchSink) -> BatchSink:
        """``inner`` (the pipeline), observed: the batch is recorded whether or not it commits."""

        async def submit(batch: Batch) -> None:
            try:
                await inner(batch)
            finally:
                self.observe(batch)

        return submit

    def status_sink(self, target: Callable[[], StatusSink]) -> StatusSink:
        """The publisher's status sink (asked for each time: a reload may replace the publisher),
        observed."""
        return _StatusTee(self, target)

    def observe(self, batch: Batch) -> None:
        if not batch.readings and batch.events:
            return  # the device's own events, not a poll's outcome
        view = self.view(batch.device)
        view.last_batch = batch.ts
        view.last_seq = batch.seq
        view.outcomes.append(all_good(batch.readings))
        view.values.update(zip(map(_tag_of, batch.readings), batch.readings, strict=True))
        for fut in self._waiters.pop(batch.device, []):
            if not fut.done():
                fut.set_result(list(batch.readings))

    def state_changed(self, device: str, state: str, reason: str | None, ts: float) -> None:
        view = self.view(device)
        view.state, view.reason, view.since = state, reason, ts

    async def next_readings(self, device: str, timeout: float) -> list[Reading]:
        """The readings of the device's next batch: what ``edge-agent read`` shows while the
        agent runs, taken from the agent's own poll so nothing else touches the port."""
        fut: asyncio.Future[list[Reading]] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(device, []).append(fut)
        try:
            return await asyncio.wait_for(fut, timeout)
        finally:
            waiting = self._waiters.get(device, [])
            if fut in waiting:
                waiting.remove(fut)


class _StatusTee:
    def __init__(self, board: StatusBoard, target: Callable[[], StatusSink]) -> None:
        self._board = board
        self._target = target

    def device_status(self, device: str, state: str, reason: str | None, ts: float) -> None:
        self._board.state_changed(device, state, reason, ts)
        self._target().device_status(device, state, reason, ts)


class RecentErrors(logging.Handler):
    """The last warnings and errors of any logger, for the page ("recent errors")."""

    def __init__(self, size: int = RECENT_ERRORS) -> None:
        super().__init__(logging.WARNING)
        self.entries: collections.deque[dict[str, Any]] = collections.deque(maxlen=size)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            entry: dict[str, Any] = {
                "ts": record.created,
                "level": record.levelname.lower(),
                "logger": record.name,
                "msg": record.getMessage(),
            }
            for key in ("device", "reason", "error", "problem"):
                value = record.__dict__.get(key)
                if value is not None:
                    entry[key] = str(value)
            self.entries.append(entry)
        except Exception:  # a handler must never raise into the code that logged
            self.handleError(record)


def reading_json(r: Reading) -> dict[str, Any]:
    doc: dict[str, Any] = {"value": r.value, "quality": r.quality.value, "ts": r.ts}
    if r.reason is not None:
        doc["reason"] = r.reason
    return doc


def readiness(snap: dict[str, Any]) -> list[str]:
    """Why the agent is not ready, empty when it is: config loaded, buffer open, and the broker
    connected or the buffer still below 90 % of its bound (buffering within limits)."""
    problems: list[str] = []
    buf = snap["buffer"]
    if not snap["agent"]["running"]:
        problems.append("not started")
    if not buf["open"]:
        problems.append("buffer not open")
    full = buf["bytes"] >= 0.9 * buf["max_size"]
    if not snap["broker"]["connected"] and full:
        problems.append("broker disconnected and buffer above 90% of max_size")
    for out in snap.get("outputs", [])[1:]:  # the first is the broker above
        if not out["connected"] and full:
            problems.append(
                f"destination {out['name']} disconnected and buffer above 90% of max_size"
            )
    return problems


def now() -> float:
    return time.time()


def build_snapshot(agent: Agent) -> dict[str, Any]:
    """The whole status as JSON-able data; run on the event loop (see the module docstring)."""
    config = agent.config
    t = now()
    stats = agent.buffer.stats()
    devices = []
    for polled in agent.polled:
        d = polled.device
        view = agent.board.devices.get(d.name) or DeviceView()
        rate = view.error_rate
        devices.append(
            {
                "name": d.name,
                "driver": d.driver,
                "state": view.state or "starting",
                "reason": view.reason,
                "since": view.since,
                "poll_interval": d.poll_interval,
                "last_poll": polled.last_poll,
                "cycles": polled.cycles,
                "last_seq": view.last_seq,
                "error_rate": rate,
                "timestamps_clamped": agent.pipeline_stamps.clamped(d.name),
                "values": {
                    tag.name: reading_json(view.values[tag.name])
                    for tag in (*d.tags, *calculated_of(d))
                    if tag.name in view.values
                },
                "units": {tag.name: tag.unit for tag in (*d.tags, *calculated_of(d)) if tag.unit},
            }
        )
    mqtt = config.mqtt
    snap: dict[str, Any] = {
        "agent": {
            "id": config.agent.id,
            "version": agent.version,
            "running": agent.running,
            "started": agent.started_at,
            "uptime_s": round(t - agent.started_at, 1) if agent.started_at else None,
            "config": str(agent.config_path) if agent.config_path else None,
            "config_loaded": agent.config_loaded_at,
            "reloads": agent.reloads,
        },
        "now": t,
        "broker": {
            "host": mqtt.host,
            "port": mqtt.port,
            "tls": mqtt.tls is not None,
            "connected": agent.publisher.connected.is_set(),
            "sessions": agent.publisher.sessions,
        },
        "buffer": {
            "open": agent.buffer_open,
            "batches": stats.batches,
            "bytes": stats.bytes,
            "max_size": agent.buffer.max_size,
            "oldest_age_s": round(t - stats.oldest_created, 1)
            if stats.oldest_created is not None
            else 0.0,
            "dropped_total": stats.dropped_total,
            "quarantined": stats.quarantined,
            "quarantine_reason": stats.quarantine_reason,
        },
        "outputs": [
            output_json(name, dest.config.mqtt, dest.publisher, stats, t)
            for name, dest in agent.destinations.items()
        ],
        "clock": {
            "synchronized": agent.clock.synchronized,
            "steps": agent.clock.steps,
            "timestamps_clamped": agent.pipeline_stamps.clamped(),
        },
        "devices": devices,
        "recent_errors": list(agent.board.recent.entries)[::-1],
    }
    problems = readiness(snap)
    snap["ready"] = not problems
    snap["problems"] = problems
    return snap


def output_json(
    name: str, section: Any, publisher: Any, stats: BufferStats, t: float
) -> dict[str, Any]:
    """One destination as the status shows it: where, in which dialect, connected or not, and
    its share of the buffer (what it has still to send, since when, what it lost)."""
    share = (stats.outputs or {}).get(name) or OutputBacklog(0, None, 0)
    servers = getattr(section, "servers", None) or [f"{section.host}:{section.port}"]
    return {
        "name": name,
        "format": section.format,
        "servers": list(servers),
        "tls": section.tls is not None,
        "devices": list(section.devices) if getattr(section, "devices", None) else None,
        "streams": list(section.streams) if getattr(section, "streams", None) else None,
        "connected": publisher.connected.is_set(),
        "sessions": publisher.sessions,
        "backlog": share.batches,
        "oldest_age_s": round(t - share.oldest_created, 1)
        if share.oldest_created is not None
        else 0.0,
        "dropped_total": share.dropped_total,
        "quarantined": share.quarantined,
        "quarantine_reason": share.quarantine_reason,
    }


class StatusView:
    """What the HTTP listener asks of the running agent (``agent.ops.http.StatusSource``): the
    snapshot and a commissioning read, both run on the event loop."""

    def __init__(self, agent: Agent) -> None:
        self._agent = agent

    async def snapshot(self) -> dict[str, Any]:
        return build_snapshot(self._agent)

    async def read_device(self, device: str, tags: list[str]) -> dict[str, Any]:
        """The device's next poll, as ``edge-agent read`` shows it; see ``StatusBoard``."""
        agent = self._agent
        polled = next((p for p in agent.polled if p.device.name == device), None)
        if polled is None:
            names = ", ".join(p.device.name for p in agent.polled)
            return {"ok": False, "error": f"no device {device!r} (devices: {names})"}
        known = [t.name for t in (*polled.device.tags, *calculated_of(polled.device))]
        unknown = [t for t in tags if t not in known]
        if unknown:
            return {"ok": False, "error": f"unknown tag(s) {', '.join(unknown)} on {device}"}
        wanted = tags or known
        # Tags read at rates of their own come in batches of their rate group: wait for the
        # next batch of each group a wanted tag is in (calculated tags come with their inputs).
        groups = [g for g in polled.groups if set(g.tags) & set(wanted)] or list(polled.groups)
        timeout = 2 * max(g.every for g in groups) + 10.0
        readings: list[Reading] = []
        missing = {t for g in groups for t in g.tags if t in wanted}
        deadline = time.monotonic() + timeout
        try:
            while True:
                batch = await agent.board.next_readings(device, deadline - time.monotonic())
                readings += batch
                missing -= {r.tag for r in batch}
                if not missing or len(polled.groups) == 1:
                    break
        except TimeoutError:
            if not readings:
                return {"ok": False, "error": f"no poll of {device} within {timeout:.0f} s"}
        except LookupError as exc:
            return {"ok": False, "error": str(exc)}
        by_tag = {r.tag: r for r in readings}
        return {
            "ok": True,
            "device": device,
            "via": "agent",
            "readings": [{"tag": t, **reading_json(by_tag[t])} for t in wanted if t in by_tag],
            "good": any(r.quality is Quality.GOOD for r in readings),
        }


def describe(agent: Agent) -> str:
    """One line for ``systemctl status``."""
    up = sum(1 for v in agent.board.devices.values() if v.state == "up")
    broker = "connected" if agent.publisher.connected.is_set() else "disconnected"
    line = f"{up}/{len(agent.polled)} devices up, broker {broker}"
    others = [d for n, d in agent.destinations.items() if n != "default"]
    if others:
        live = sum(d.publisher.connected.is_set() for d in others)
        line += f", {live}/{len(others)} more destinations connected"
    return line


async def report_status(agent: Agent, every: float = 10.0) -> None:
    """Keep ``systemctl status``'s one line current (sent only when it changes)."""
    last = ""
    while True:
        await asyncio.sleep(every)
        line = describe(agent)
        if line != last:
            agent.notifier.status(line)
            last = line
