"""Scan rates within a device: which tags are read how often.

An energy meter's totals change slowly and its voltages quickly; splitting it into two devices
would cost a second connection (and, on a line, a second place to configure it). Instead a tag
says ``every: 1m``, or ``scan_group: energy`` for a rate the device names once under
``scan_groups``; every other tag is read at the device's ``poll_interval``.

Tags are grouped by rate, not by name: two groups with the same ``every`` and the tags with that
``every`` of their own are one rate group, read together (a driver that plans requests plans each
rate group once, so tags read together share requests). The agent's scheduler keeps one cadence
per rate group and hands the driver one group per poll (``Driver.poll_group``); see
``agent.south.scheduler``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from drivers.base.config import DeviceBase


@dataclass(frozen=True, slots=True)
class RateGroup:
    """The tags of one device read at one rate, in the device's tag order."""

    every: float  # seconds
    tags: tuple[str, ...]

    @property
    def label(self) -> str:
        """``every 1s``, for logs and ``describe_plan``."""
        return f"every {self.every:g}s"


def tag_rate(device: DeviceBase, tag_every: float | None, scan_group: str | None) -> float:
    """The rate (seconds) of one tag of ``device``; ``KeyError`` when its scan group is not one
    of the device's (validation reports that; see ``unknown_scan_groups``)."""
    if tag_every is not None:
        return float(tag_every)
    if scan_group is not None:
        for group in device.scan_groups:
            if group.name == scan_group:
                return float(group.every)
        raise KeyError(scan_group)
    return float(device.poll_interval)


def unknown_scan_groups(device: DeviceBase) -> Iterable[tuple[int, str]]:
    """``(tag index, group name)`` of each tag naming a scan group the device does not define."""
    known = {g.name for g in device.scan_groups}
    for i, tag in enumerate(device.tags):
        if tag.scan_group is not None and tag.scan_group not in known:
            yield i, tag.scan_group


def has_own_rates(device: DeviceBase) -> bool:
    """Whether any tag asks for a rate of its own (``every`` or ``scan_group``)."""
    return any(t.every is not None or t.scan_group is not None for t in device.tags)


def rate_groups(device: DeviceBase) -> tuple[RateGroup, ...]:
    """The device's rate groups, fastest first; one group of every tag at ``poll_interval``
    when no tag has a rate of its own, or when the device refuses rates (validation has said
    why). A tag naming an unknown scan group is read at ``poll_interval``."""
    if not has_own_rates(device) or device.scan_rates_refused() is not None:
        return (RateGroup(float(device.poll_interval), tuple(t.name for t in device.tags)),)
    by_rate: dict[float, list[str]] = {}
    for tag in device.tags:
        try:
            every = tag_rate(device, tag.every, tag.scan_group)
        except KeyError:
            every = float(device.poll_interval)
        by_rate.setdefault(every, []).append(tag.name)
    return tuple(RateGroup(every, tuple(names)) for every, names in sorted(by_rate.items()))
