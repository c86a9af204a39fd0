"""``systemctl reload`` (SIGHUP): what changed between the running config and the file now.

The rule is "touch only what changed":

* a device whose entry is equal (same keys, same values, profile merged in) keeps its poll task,
  its connection and its cadence, so its stream has no gap;
* a changed device is stopped and started again with the new entry; added and removed devices are
  started and stopped;
* a device whose entry changed only in keys its poller does not use (``commands``, the rate limit
  of cloud writes) keeps its poll task too: the command handler reads the live config at every
  command, so the new limit applies to the next one;
* devices sharing a line (an RS-485 port) are polled by one task, so a line whose set of device
  entries changed restarts as a whole, and an untouched line keeps running;
* destinations (the ``mqtt`` section, ``default``, and each of ``outputs:``) are compared one by
  one: a destination whose section or format inputs changed gets a new session (unacknowledged
  batches stay in the buffer and are sent again by it; the devices keep polling), an added one
  starts with the batches committed from then on, a removed one stops and lets go of its share
  of the buffer, and an unchanged one keeps its session and its in-flight window;
* ``agent``, ``buffer``, ``metrics`` and ``fleet`` changes are not applied: the log says which
  keys need ``systemctl restart``, and the running values stay in force;
* the buffer is never touched.

An invalid file is refused as a whole, one log line per problem, and the running config stays.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from agent.app.config import ConfigErrors, load_config
from agent.app.config.models import Config
from agent.app.outputs import destination_config, destination_sections, dump_section, route_of
from agent.north.formats import build_format
from drivers.base import DeviceBase

if TYPE_CHECKING:  # runtime imports this module; the agent is only read here
    from agent.app.runtime import Agent

log = logging.getLogger(__name__)
_T = TypeVar("_T")

#: Sections that cannot change under a running agent.
RESTART_SECTIONS = ("agent", "buffer", "metrics", "fleet")
#: Device keys read from the live config when used, never by the poller: changing only these
#: leaves the device's poll task (and its connection) alone.
LIVE_DEVICE_KEYS = ("commands",)


@dataclass
class ReloadPlan:
    unchanged: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    #: Devices among ``unchanged`` whose ``LIVE_DEVICE_KEYS`` changed (applied without a restart).
    retuned: list[str] = field(default_factory=list)
    #: Destinations whose section changed (their format's inputs are compared when applied).
    restart_outputs: list[str] = field(default_factory=list)
    added_outputs: list[str] = field(default_factory=list)
    removed_outputs: list[str] = field(default_factory=list)
    needs_restart: list[str] = field(default_factory=list)  # dotted keys

    @property
    def restart_publisher(self) -> bool:
        """Whether the ``default`` destination (the ``mqtt`` section) gets a new session."""
        return "default" in self.restart_outputs

    @property
    def devices_touched(self) -> bool:
        return bool(self.changed or self.added or self.removed)

    def summary(self) -> dict[str, Any]:
        """For the one log line that says what a reload did."""
        return {
            "unchanged": len(self.unchanged),
            "changed": ",".join(self.changed) or "-",
            "added": ",".join(self.added) or "-",
            "removed": ",".join(self.removed) or "-",
            "retuned": ",".join(self.retuned) or "-",
            "publisher_restarted": self.restart_publisher,
            "outputs_restarted": ",".join(self.restart_outputs) or "-",
            "outputs_added": ",".join(self.added_outputs) or "-",
            "outputs_removed": ",".join(self.removed_outputs) or "-",
        }


def active_devices(config: Config) -> dict[str, DeviceBase]:
    return {d.name: d for d in config.active_devices()}


def plan_reload(old: Config, new: Config) -> ReloadPlan:
    """Compare two validated configs (frozen pydantic models compare by value)."""
    plan = ReloadPlan()
    before, after = active_devices(old), active_devices(new)
    for name, device in after.items():
        if name not in before:
            plan.added.append(name)
        elif before[name] == device:
            plan.unchanged.append(name)
        elif before[name].model_copy(update=_live_keys(device)) == device:
            plan.unchanged.append(name)
            plan.retuned.append(name)
        else:
            plan.changed.append(name)
    plan.removed = [name for name in before if name not in after]
    before_out, after_out = destination_sections(old), destination_sections(new)
    plan.added_outputs = [n for n in after_out if n not in before_out]
    plan.removed_outputs = [n for n in before_out if n not in after_out]
    plan.restart_outputs = [
        n
        for n, section in after_out.items()
        if n in before_out and dump_section(before_out[n]) != dump_section(section)
    ]
    for section in RESTART_SECTIONS:
        plan.needs_restart += _changed_keys(
            section, _dump(getattr(old, section)), _dump(getattr(new, section))
        )
    return plan


def _live_keys(device: DeviceBase) -> dict[str, Any]:
    return {key: getattr(device, key) for key in LIVE_DEVICE_KEYS if hasattr(device, key)}


def _dump(model: Any) -> Any:
    return dump_section(model)  # the password compared too, never logged


def _changed_keys(prefix: str, old: Any, new: Any) -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        keys: list[str] = []
        for key in sorted(set(old) | set(new)):
            keys += _changed_keys(f"{prefix}.{key}", old.get(key), new.get(key))
        return keys
    return [] if old == new else [prefix]


async def apply_reload(agent: Agent, path: Path) -> bool:
    """Read ``path`` and apply what changed to the running ``agent``; False (and the running
    config stays) when the file is refused, one log line per problem."""
    try:
        new = await _off_loop(load_config, path, agent.drivers, resolve_secrets=True)
    except ConfigErrors as exc:
        for i in exc.issues:
            # str(i) names the file the problem is in: the config, or a profile file it uses.
            log.error("reload refused", extra={"problem": str(i)})
        agent.metrics.config_reloads.labels("refused").inc()
        return False
    except Exception as exc:  # unreadable file, a driver's validator failing
        log.error("reload refused", extra={"problem": f"{path}: {exc}"})
        agent.metrics.config_reloads.labels("refused").inc()
        return False
    await apply_config(agent, new)
    return True


async def apply_config(agent: Agent, new: Config) -> ReloadPlan:
    """Apply a validated config to the running ``agent``, touching only what changed: the one
    path a SIGHUP and a fleet push (agent/app/fleet) share. The caller holds the reload lock."""
    plan = plan_reload(agent.config, new)
    if plan.needs_restart:
        log.warning(
            "reload: these keys need a restart (systemctl restart edge-agent) and keep "
            "their running values until then",
            extra={"keys": ",".join(plan.needs_restart)},
        )
    # What runs from now on: the new file, less what only a restart can change.
    agent.config = new.model_copy(
        update={
            "agent": agent.config.agent,
            "buffer": agent.config.buffer,
            "metrics": agent.config.metrics,
            "fleet": agent.config.fleet,
        }
    )
    await agent.apply_devices(plan)
    await apply_destinations(agent, plan)
    agent.reloads += 1
    agent.config_loaded_at = time.time()
    agent.metrics.config_reloads.labels("applied").inc()
    log.info("config reloaded", extra=plan.summary())
    return plan


async def apply_destinations(agent: Agent, plan: ReloadPlan) -> None:
    """Per destination: stop the removed ones, tell the buffer who wants what now, start the
    added ones, and give a new session to each whose section changed or whose format the new
    config builds differently (sub-device maps, topic placement, Sparkplug's metric types...);
    the others keep theirs."""
    for name in plan.removed_outputs:
        await agent.remove_destination(name)
    sections = destination_sections(agent.config)
    await agent.buffer.set_routes([route_of(n, s) for n, s in sections.items()])
    for name in plan.added_outputs:
        await agent.add_destination(name)
    for name, dest in list(agent.destinations.items()):
        if name in plan.added_outputs:
            continue
        view = destination_config(agent.config, name)
        fmt = build_format(view)
        route = route_of(name, sections[name])
        if name not in plan.restart_outputs and (
            fmt.spec != dest.format.spec or route != dest.route
        ):
            plan.restart_outputs.append(name)
        if name in plan.restart_outputs:
            await agent.restart_publisher(removed=plan.removed, name=name)
        else:
            dest.config = view  # the devices it sees now (the format did not need rebuilding)
            dest.publisher.refresh(fmt)  # the kept session: tag metadata that changed
    if plan.restart_outputs:
        await agent.release_quarantined("format rebuilt by a reload")


async def _off_loop(fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
    """Run CPU-bound Python (parsing a large YAML file) on a thread without starving the loop.

    A thread alone is not enough: the loop thread must win the GIL back after every select(),
    and by default it waits up to 5 ms each time (``sys.getswitchinterval``); with dozens of
    devices polling that convoy adds up to overruns. A 0.2 ms switch interval while the thread
    runs keeps the loop's polls on schedule; the parse takes a little longer, nobody waits on it.
    """
    previous = sys.getswitchinterval()
    sys.setswitchinterval(min(previous, 0.0002))
    try:
        return await asyncio.to_thread(fn, *args, **kwargs)
    finally:
        sys.setswitchinterval(previous)
