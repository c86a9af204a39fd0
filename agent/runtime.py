"""Builds the agent from a validated config and runs it until SIGTERM/SIGINT.

Everything is constructed here, once, and passed in: no module keeps global state, so tests can
run several agents in one process and a reload can build a new set beside the old one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from prometheus_client import start_http_server

from agent.buffer import Buffer, BufferError
from agent.commands import CommandHandler
from agent.drivers import load_drivers
from agent.formats import JsonFormat
from agent.lines import LinePoller
from agent.metrics import DriverErrors, Metrics
from agent.pipeline import Pipeline
from agent.publisher import Publisher
from agent.scheduler import DevicePoller, PolledDevice
from drivers.base import DeviceBase, Driver

log = logging.getLogger(__name__)


class Agent:
    """One running agent: pollers → pipeline → buffer → publisher, plus metrics."""

    def __init__(
        self,
        config: Any,
        drivers: Mapping[str, type[Driver]] | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics or Metrics()
        self._drivers = drivers if drivers is not None else load_drivers()
        self.buffer = Buffer(Path(config.agent.data_dir), config.buffer.max_size, self.metrics)
        self.pipeline = Pipeline(self.buffer)
        mqtt = config.mqtt
        self.format = JsonFormat(config.agent.id, mqtt.topic_prefix or f"edge/{config.agent.id}")
        devices = [d for d in config.devices if getattr(d, "enabled", True)]
        password = mqtt.password.get_secret_value() if mqtt.password is not None else None
        self.publisher = Publisher(
            mqtt,
            mqtt.client_id or config.agent.id,
            password,
            self.buffer,
            self.format,
            self.metrics,
            CommandHandler({d.name: d for d in devices}),
        )
        self.pollers: list[DevicePoller] = []
        self.lines: list[LinePoller] = []
        shared: dict[str, list[tuple[DeviceBase, Driver]]] = {}
        for d in devices:
            driver = self._drivers[d.driver](d)
            key = driver.line_key()
            if key is None:
                self.pollers.append(
                    DevicePoller(d, driver, self.pipeline.submit, self.publisher, self.metrics)
                )
            else:
                shared.setdefault(key, []).append((d, driver))
        for on_line in shared.values():
            line = on_line[0][1].make_line()
            self.lines.append(
                LinePoller(line, on_line, self.pipeline.submit, self.publisher, self.metrics)
            )
        self.metrics.registry.register(DriverErrors({p.device.name: p.driver for p in self.polled}))
        self._tasks: list[asyncio.Task[None]] = []
        self._publisher_task: asyncio.Task[None] | None = None
        self._http: Any = None

    async def start(self) -> None:
        """Open the buffer, serve metrics, start publishing and polling."""
        await self.buffer.open()
        listen = self.config.metrics
        if listen.listen is not None:
            server, _thread = start_http_server(
                listen.port, addr=listen.host, registry=self.metrics.registry
            )
            self._http = server
            log.info("metrics served", extra={"listen": f"{listen.host}:{server.server_port}"})
        self._publisher_task = asyncio.create_task(self.publisher.run(), name="publisher")
        for p in self.polled:
            plan = p.driver.describe_plan()
            log.info("device configured", extra={"device": p.device.name, **plan})
        for poller in self.pollers:
            name = f"poll:{poller.device.name}"
            self._tasks.append(asyncio.create_task(poller.run(), name=name))
        for on_line in self.lines:
            name = f"line:{on_line.line.key}"
            self._tasks.append(asyncio.create_task(on_line.run(), name=name))

    @property
    def polled(self) -> list[PolledDevice]:
        """Every device, whether it has a task of its own or shares a line's."""
        return [*self.pollers, *(d for on_line in self.lines for d in on_line.devices)]

    @property
    def metrics_port(self) -> int | None:
        return int(self._http.server_port) if self._http is not None else None

    async def stop(self) -> None:
        """Stop polling, settle in-flight publishes (or leave them buffered), close the buffer."""
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        task = self._publisher_task
        if task is not None:
            connected = self.publisher.connected.is_set()
            with contextlib.suppress(Exception):
                await self.publisher.stop()
            if connected:  # it disconnects by itself once the window has settled
                with contextlib.suppress(TimeoutError, Exception):
                    await asyncio.wait_for(asyncio.shield(task), 2.0)
            task.cancel()  # still waiting to reconnect, or slow to finish: nothing left to save
            await asyncio.gather(task, return_exceptions=True)
            self._publisher_task = None
        await self.buffer.close()
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None


async def _main(config: Any) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    agent = Agent(config)
    try:
        await agent.start()
    except (OSError, BufferError) as exc:
        # A port in use, a data_dir that is not writable or already used by another agent: say
        # which, in one line, and exit 1 so systemd's Restart= policy sees a runtime failure.
        log.error("cannot start", extra={"error": str(exc)})
        with contextlib.suppress(Exception):
            await agent.stop()
        return 1
    log.info(
        "agent running",
        extra={"agent": config.agent.id, "devices": len(agent.polled)},
    )
    await stop.wait()
    log.info("stopping")
    await agent.stop()
    log.info("stopped")
    return 0


def run_agent(config: Any, config_path: Path | None = None) -> int:
    """Run until SIGTERM/SIGINT; 0 on a clean stop, 1 when the runtime could not start."""
    return asyncio.run(_main(config))
