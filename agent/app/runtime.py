"""Builds the agent from a validated config and runs it until SIGTERM/SIGINT.

Everything is constructed here, once, and passed in: no module keeps global state, so tests can
run several agents in one process and a reload can build a new set beside the old one.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import logging
import signal
import time
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any, TypeVar

from agent.app.config import Config
from agent.app.outputs import Destination, Fanout, build_destination, destination_sections
from agent.app.reload import ReloadPlan, active_devices, apply_reload
from agent.core.buffer import DEFAULT_OUTPUT, Buffer, BufferError, Route
from agent.core.clock import ClockWatch, DeviceStamps
from agent.core.pipeline import Pipeline
from agent.core.processing import Processing
from agent.north.formats import Format
from agent.north.publisher import Publisher
from agent.ops.http import StatusServer
from agent.ops.memory import limit_arenas, settle_memory
from agent.ops.metrics import DriverErrors, Metrics
from agent.ops.notify import Notifier
from agent.ops.processing_metrics import ProcessingCollector
from agent.ops.status import StatusBoard, StatusView, describe, report_status
from agent.south.commands import CommandHandler
from agent.south.lines import LinePoller
from agent.south.registry import load_drivers
from agent.south.scheduler import DevicePoller, PolledDevice
from drivers.base import DeviceBase, Driver

log = logging.getLogger(__name__)

#: The shortest spacing between two groups of staggered polls (see ``Agent._add_pollers``).
STAGGER_SLOT = 0.1

_T = TypeVar("_T")


class Agent:
    """One running agent: pollers → pipeline → buffer → publisher, plus metrics."""

    def __init__(
        self,
        config: Config,
        drivers: Mapping[str, type[Driver]] | None = None,
        metrics: Metrics | None = None,
        *,
        config_path: Path | None = None,
        notifier: Notifier | None = None,
    ) -> None:
        self.config = config
        self.config_path = config_path
        self.metrics = metrics or Metrics()
        self.notifier = notifier or Notifier({})
        self.drivers = drivers if drivers is not None else load_drivers()
        self.buffer = Buffer(
            Path(config.agent.data_dir),
            config.buffer.max_size,
            self.metrics,
            commit_interval=config.buffer.commit_interval,
        )
        devices = config.active_devices()
        # Live: a reload updates it in place, so the command handler sees added/removed devices.
        self.device_configs: dict[str, DeviceBase] = {d.name: d for d in devices}
        # One for the agent's life, handed to every publisher: each device's rate limit (its
        # ``commands`` key, read per command) keeps its tokens across a publisher restart.
        self.commands = CommandHandler(self.device_configs, self._write_target)
        #: Every destination by name, ``default`` (the ``mqtt`` section) first: each with its
        #: own format, session and share of the buffer (agent/app/outputs.py).
        self.destinations: dict[str, Destination] = {
            name: build_destination(config, name, self._make_publisher)
            for name in destination_sections(config)
        }
        self.fanout = Fanout(lambda: [d.publisher for d in self.destinations.values()])
        self.processing = self._build_processing(devices)
        # Read at scrape time; registered here so that core knows nothing of the exposition.
        self.metrics.registry.register(ProcessingCollector(lambda: self.processing.processors))
        self.pipeline = Pipeline(self.buffer, self.processing)
        # The status board watches every device's batches and state changes (agent/ops/status.py).
        self.board = StatusBoard()
        self._sink = self.board.batch_sink(self.pipeline.submit)
        self._status = self.board.status_sink(lambda: self.fanout)
        self.pollers: list[DevicePoller] = []
        self.lines: list[LinePoller] = []
        self._add_pollers(devices)
        self._driver_errors = DriverErrors({p.device.name: p.driver for p in self.polled})
        self.metrics.registry.register(self._driver_errors)
        self.metrics.registry.register(self.pipeline.stamps)
        self.clock = ClockWatch(self.metrics.clock_synchronized)
        self._tasks: list[asyncio.Task[None]] = []
        self._task_of: dict[int, asyncio.Task[None]] = {}  # id(poller or line) -> its task
        self._http: StatusServer | None = None
        self.version = _version()
        self.running = False
        self.buffer_open = False
        self.started_at: float | None = None
        self.config_loaded_at = time.time()
        self.reloads = 0
        self._reload_lock = asyncio.Lock()
        #: Told the file's path after a reload from it applied (the fleet session: the file is
        #: the config in force now, its health says so).
        self.reload_listeners: list[Callable[[Path], None]] = []

    @property
    def reload_lock(self) -> asyncio.Lock:
        """Held while a config is applied (a SIGHUP, a fleet push): one apply at a time."""
        return self._reload_lock

    @property
    def publisher(self) -> Publisher:
        """The ``default`` destination's session (the ``mqtt`` section)."""
        return self.destinations[DEFAULT_OUTPUT].publisher

    @property
    def format(self) -> Format:
        return self.destinations[DEFAULT_OUTPUT].format

    def _make_publisher(self, config: Config, route: Route, fmt: Format) -> Publisher:
        """``config`` as the destination sees it (its section as ``mqtt``)."""
        mqtt = config.mqtt
        password = mqtt.password.get_secret_value() if mqtt.password is not None else None
        default_id = (
            config.agent.id
            if route.output == DEFAULT_OUTPUT
            else f"{config.agent.id}-{route.output}"
        )
        return Publisher(
            mqtt,
            mqtt.client_id or default_id,
            password,
            self.buffer,
            fmt,
            self.metrics,
            self.commands,
            route,
        )

    def _write_target(self, device: str) -> PolledDevice | None:
        """Commands' way to a device: its poller, looked up per command (a reload replaces
        pollers), which writes between polls (agent/south/scheduler.py says how)."""
        return next((p for p in self.polled if p.device.name == device), None)

    def _add_pollers(self, devices: list[DeviceBase]) -> list[DevicePoller | LinePoller]:
        """Build pollers for ``devices`` (lone devices get one each, devices sharing a line one
        per line) and list them; ``start`` or a reload starts their tasks."""
        made: list[DevicePoller | LinePoller] = []
        shared: dict[str, list[tuple[DeviceBase, Driver]]] = {}
        lone: list[tuple[DeviceBase, Driver]] = []
        for d in devices:
            driver = self.drivers[d.driver](d)
            key = driver.line_key()
            if key is None:
                lone.append((d, driver))
            else:
                shared.setdefault(key, []).append((d, driver))
        for k, (d, driver) in enumerate(lone):
            # Polls spread over the interval in slots at least STAGGER_SLOT apart: a steady stream
            # for the buffer and the broker instead of one burst per tick, while the devices of a
            # slot still share one group commit (one fsync), which the SD card needs.
            slots = max(1, min(len(lone), int(d.poll_interval / STAGGER_SLOT)))
            phase = d.poll_interval * (k % slots) / slots
            poller = DevicePoller(d, driver, self._sink, self._status, self.metrics, phase=phase)
            self.pollers.append(poller)
            made.append(poller)
        for on_line in shared.values():
            line = on_line[0][1].make_line()
            line_poller = LinePoller(line, on_line, self._sink, self._status, self.metrics)
            self.lines.append(line_poller)
            made.append(line_poller)
        return made

    def _start_poller(self, poller: DevicePoller | LinePoller) -> None:
        if isinstance(poller, LinePoller):
            name = f"line:{poller.line.key}"
        else:
            name = f"poll:{poller.device.name}"
            plan = poller.driver.describe_plan()
            log.info("device configured", extra={"device": poller.device.name, **plan})
        task = asyncio.create_task(poller.run(), name=name)
        self._tasks.append(task)
        self._task_of[id(poller)] = task

    def _build_processing(self, devices: list[DeviceBase]) -> Processing:
        """Edge processing (deadbands, windows, features, state, alarms) between the pollers and
        the buffer; its state lives in ``<data_dir>/processing/``, the machine state is retained
        on ``<prefix>/<device>/state``."""
        return Processing(
            devices,
            Path(self.config.agent.data_dir),
            # Through the fan-out, not a publisher: a reload may replace publishers.
            lambda device, payload: self.fanout.retain(device, "state", payload),
        )

    async def start(self) -> None:
        """Open the buffer, serve metrics, start publishing and polling."""
        logging.getLogger().addHandler(self.board.recent)
        self.started_at = time.time()
        self.metrics.info.labels(self.config.agent.id, self.version).set(1)
        self.metrics.buffer_max_bytes.set(self.buffer.max_size)
        await self.buffer.open()
        await self.buffer.set_routes([d.route for d in self.destinations.values()])
        self.buffer_open = True
        await self.release_quarantined("agent started")
        await self.processing.start()
        listen = self.config.metrics
        if listen.listen is not None:
            assert listen.host is not None and listen.port is not None
            server = StatusServer(
                listen.host,
                listen.port,
                self.metrics.registry,
                StatusView(self),
                asyncio.get_running_loop(),
            )
            server.start()
            self._http = server
            log.info("metrics served", extra={"listen": f"{listen.host}:{server.port}"})
        for dest in self.destinations.values():
            self._start_destination(dest)
        for lone in self.pollers:
            self._start_poller(lone)
        for on_line in self.lines:
            self._start_poller(on_line)
        self._tasks.append(asyncio.create_task(self.clock.run(), name="clock"))
        self._tasks.append(asyncio.create_task(self.notifier.watchdog(), name="watchdog"))
        if self.notifier.enabled:
            self._tasks.append(asyncio.create_task(report_status(self), name="status"))
        self.running = True

    @property
    def polled(self) -> list[PolledDevice]:
        """Every device, whether it has a task of its own or shares a line's."""
        return [*self.pollers, *(d for on_line in self.lines for d in on_line.devices)]

    @property
    def metrics_port(self) -> int | None:
        return self._http.port if self._http is not None else None

    @property
    def pipeline_stamps(self) -> DeviceStamps:
        return self.pipeline.stamps

    # -- reload -----------------------------------------------------------------------------------

    async def reload(self, path: Path | None = None) -> bool:
        """Re-read the config file and apply what changed (agent/app/reload.py says what that
        means).

        False when the new file is refused (every problem logged); the running config stays."""
        path = path or self.config_path
        if path is None:
            log.error("reload refused: the agent was not started from a config file")
            return False
        async with self._reload_lock:
            self.notifier.reloading()
            try:
                applied = await apply_reload(self, path)
            finally:
                self.notifier.ready(describe(self))
            if applied:
                for listener in list(self.reload_listeners):
                    listener(path)
            return applied

    async def apply_devices(self, plan: ReloadPlan) -> None:
        """Stop, start and restart pollers as the reload plan says (a shared line restarts
        whole when one of its devices changed or joins it)."""
        gone = set(plan.changed) | set(plan.removed)
        fresh = active_devices(self.config)
        restart: list[DeviceBase] = [fresh[n] for n in (*plan.changed, *plan.added)]
        stopping: list[DevicePoller | LinePoller] = []
        stopping += [p for p in self.pollers if p.device.name in gone]
        for on_line in self.lines:
            names = {d.device.name for d in on_line.devices}
            # A line restarts whole when any of its devices changed or one joins it.
            joins = any(self.drivers[d.driver](d).line_key() == on_line.line.key for d in restart)
            if names & gone or joins:
                stopping.append(on_line)
                restart += [fresh[n] for n in names - gone if n in fresh]
        for old in stopping:
            task = self._task_of.pop(id(old), None)
            if task is not None:
                await _cancel(
                    task,
                    f"poller of {old.line.key if isinstance(old, LinePoller) else old.device.name}",
                )
                self._tasks.remove(task)
            if isinstance(old, LinePoller):
                self.lines.remove(old)
            else:
                self.pollers.remove(old)
        for name in plan.removed:
            self.board.forget(name)
            self.metrics.forget_device(name)
            self.fanout.device_status(name, "down", "removed from config", time.time())
        self.device_configs.clear()
        self.device_configs.update(fresh)
        # Processing keeps the run time, counter totals and alarms of changed devices.
        self.processing.devices_changed(list(fresh.values()))
        made = self._add_pollers(restart)
        self._driver_errors.set_drivers({p.device.name: p.driver for p in self.polled})
        if self.running:
            for new_poller in made:
                self._start_poller(new_poller)

    def _start_destination(self, dest: Destination) -> None:
        dest.task = asyncio.create_task(dest.publisher.run(), name=f"publisher:{dest.name}")

    async def add_destination(self, name: str) -> None:
        """Start a destination the config gained (a reload): a new session that takes the
        batches committed from now on."""
        dest = build_destination(self.config, name, self._make_publisher)
        self.destinations[name] = dest
        self._carry_over(dest, None, ())
        if self.running:
            self._start_destination(dest)
        log.info("destination added", extra={"output": name})

    async def remove_destination(self, name: str) -> None:
        """Stop a destination the config lost; its share of the buffer is let go by the
        buffer's ``set_routes``."""
        dest = self.destinations.pop(name)
        await self._stop_destination(dest)
        self.metrics.forget_output(name)
        log.info("destination removed", extra={"output": name})

    async def restart_publisher(
        self, removed: Collection[str] = (), name: str = DEFAULT_OUTPUT
    ) -> None:
        """A new session for destination ``name`` with its new settings and format; the buffer
        keeps what was in flight, the other destinations keep their sessions.

        The devices this reload ``removed`` are said down by the new session too: the old one
        told the broker only if it was connected, and a platform would otherwise keep a removed
        device online for good (a retained status, an attribute, a sub-device state)."""
        old = self.destinations[name]
        await self._stop_destination(old)
        dest = build_destination(self.config, name, self._make_publisher)
        self.destinations[name] = dest
        self._carry_over(dest, old.publisher, removed)
        if self.running:
            self._start_destination(dest)
        log.info("publisher restarted with the new settings", extra={"output": name})

    def _carry_over(
        self, dest: Destination, old: Publisher | None, removed: Collection[str]
    ) -> None:
        """What a new session must say at once: every device's retained state, the removed
        devices down, the latest machine states."""
        publisher = dest.publisher
        for device, view in self.board.devices.items():
            if view.state is not None and view.since is not None:
                publisher.device_status(device, view.state, view.reason, view.since)
        for device in removed:
            publisher.device_status(device, "down", "removed from config", time.time())
        sides = old.sides if old is not None else self.processing_sides()
        for (device, kind), payload in sides.items():
            if device in self.device_configs:
                publisher.retain(device, kind, payload)

    def processing_sides(self) -> dict[tuple[str, str], bytes]:
        """The latest side documents any running session holds (for a new destination)."""
        sides: dict[tuple[str, str], bytes] = {}
        for dest in self.destinations.values():
            sides.update(dest.publisher.sides)
        return sides

    async def release_quarantined(self, why: str) -> None:
        """Give batches an earlier format could not pack another try (a fixed agent, a changed
        format): packed now, or quarantined again and counted."""
        try:
            n = await self.buffer.release_quarantined()
        except BufferError as exc:
            log.error("cannot release quarantined batches", extra={"error": str(exc)})
            return
        if n:
            log.info(
                "quarantined batches released for another try", extra={"batches": n, "why": why}
            )

    async def stop(self) -> None:
        """Stop polling, settle in-flight publishes (or leave them buffered), close the buffer."""
        await _cancel_all(self._tasks, "poller")
        self._tasks.clear()
        self._task_of.clear()
        self.running = False
        await self.processing.stop()
        await asyncio.gather(*(self._stop_destination(d) for d in self.destinations.values()))
        await self.buffer.close()
        self.buffer_open = False
        if self._http is not None:
            await asyncio.to_thread(self._http.stop)
            self._http = None
        logging.getLogger().removeHandler(self.board.recent)

    async def _stop_destination(self, dest: Destination) -> None:
        task = dest.task
        if task is not None:
            connected = dest.publisher.connected.is_set()
            with contextlib.suppress(Exception):
                await dest.publisher.stop()
            if connected:  # it disconnects by itself once the window has settled
                with contextlib.suppress(TimeoutError, Exception):
                    await asyncio.wait_for(asyncio.shield(task), 2.0)
            # Still waiting to reconnect, or slow to finish: nothing left to save.
            await _cancel(task, f"publisher:{dest.name}")
            dest.task = None


async def _main(config: Config, config_path: Path | None = None) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    notifier = Notifier()
    fleet_boot = None
    if config.fleet.enabled and config_path is not None:
        # The precedence rule (agent/app/fleet/boot.py): the file, or a pushed version applied
        # after the file last changed.
        from agent.app.fleet.boot import boot_config

        try:
            fleet_boot = boot_config(config, config_path, load_drivers())
        except OSError as exc:
            log.error("cannot start", extra={"error": str(exc)})
            return 1
        config = fleet_boot.config
    agent = Agent(config, config_path=config_path, notifier=notifier)
    reloads: set[asyncio.Task[bool]] = set()

    def on_hup() -> None:
        task = asyncio.create_task(agent.reload(), name="reload")
        reloads.add(task)
        task.add_done_callback(_reload_done)

    def _reload_done(task: asyncio.Task[bool]) -> None:
        reloads.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # A bug, not a bad file: say so loudly; the agent keeps running what it has.
            log.error("reload failed", exc_info=task.exception())

    loop.add_signal_handler(signal.SIGHUP, on_hup)
    try:
        await agent.start()
    except (OSError, BufferError) as exc:
        # A port in use, a data_dir that is not writable or already used by another agent: say
        # which, in one line, and exit 1 so systemd's Restart= policy sees a runtime failure.
        log.error("cannot start", extra={"error": str(exc)})
        notifier.status(f"cannot start: {exc}")
        with contextlib.suppress(Exception):
            await agent.stop()
        return 1
    fleet = None
    if fleet_boot is not None and config_path is not None:
        from agent.app.fleet.agent import FleetGateway

        fleet = FleetGateway(agent, fleet_boot, config_path, agent.drivers)
        await fleet.start()
    log.info(
        "agent running",
        extra={"agent": config.agent.id, "devices": len(agent.polled)},
    )
    notifier.ready(describe(agent))
    # Everything built at start lives as long as the process (agent.ops.memory).
    settle_memory()
    await stop.wait()
    log.info("stopping")
    notifier.stopping()
    loop.remove_signal_handler(signal.SIGHUP)
    for task in list(reloads):
        await _cancel(task, "reload", wait_first=10.0)
    if fleet is not None:
        await fleet.stop()
    await agent.stop()
    log.info("stopped")
    return 0


def run_agent(config: Config, config_path: Path | None = None) -> int:
    """Run until SIGTERM/SIGINT (SIGHUP reloads the config); 0 on a clean stop, 1 when the
    runtime could not start."""
    limit_arenas()
    return asyncio.run(_main(config, config_path))


async def _cancel(task: asyncio.Task[Any], what: str, wait_first: float = 0.0) -> None:
    """Cancel ``task`` (after ``wait_first`` seconds of letting it finish) and wait for it, but
    not forever: a task stuck in a library's close must not hang a reload or a stop."""
    if wait_first:
        await asyncio.wait({task}, timeout=wait_first)
    await _cancel_all([task], what)
    if task.done() and not task.cancelled() and task.exception() is not None:
        log.warning("task failed", extra={"task": what, "error": repr(task.exception())})


async def _cancel_all(tasks: Collection[asyncio.Task[Any]], what: str, limit: float = 5.0) -> None:
    """Cancel the tasks and wait until they are done, cancelling again while any is not.

    Why again: on Python 3.11 ``asyncio.wait_for`` drops a cancellation that arrives in the same
    loop iteration as the awaited answer (gh-86296, fixed in 3.12), and pymodbus waits for every
    answer with it; a poller that swallowed its cancellation this way would keep polling and hang
    the stop. A task still running after ``limit`` seconds is logged and left behind."""
    pending = {t for t in tasks if not t.done()}
    deadline = asyncio.get_running_loop().time() + limit
    while pending:
        for t in pending:
            t.cancel()
        left = deadline - asyncio.get_running_loop().time()
        if left <= 0:
            log.warning("task did not stop, left behind", extra={"task": what, "limit_s": limit})
            return
        _, pending = await asyncio.wait(pending, timeout=min(0.5, left))


def _version() -> str:
    try:
        return importlib.metadata.version("edge-agent")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
