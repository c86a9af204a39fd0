"""Prometheus metrics of every stage, in one registry built at start and passed in (no globals).

The names are the public contract (INTERFACES.md); extensions are additive.
"""

from __future__ import annotations

import bisect
import contextlib
import itertools
import time
from collections.abc import Callable, Iterator, Mapping
from typing import cast

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

from drivers.base import Driver

_POLL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: The buckets' ``le`` labels as prometheus_client writes them (its own formatting, untyped).
_POLL_BOUNDS = (*(cast(Callable[[float], str], floatToGoString)(b) for b in _POLL_BUCKETS), "+Inf")
_PUBLISH_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    """All metrics of one agent process. Tests build their own to read values back."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        # The per-device series: one small record per device in one collector, not five
        # prometheus_client children (each with its locks; a histogram with one per bucket), which
        # cost about 6 kB per device, 1.2 MB at 200 devices. Same names, labels and samples.
        self.devices = DevicePollMetrics()
        r.register(self.devices)
        self.reads = self.devices.family("reads")
        self.read_errors = self.devices.family("read_errors")
        self.poll_duration = self.devices.family("poll_duration")
        self.poll_overruns = self.devices.family("poll_overruns")
        self.device_up = self.devices.family("device_up")
        self.buffer_batches = Gauge(
            "edge_agent_buffer_batches", "Batches in the on-disk buffer", registry=r
        )
        self.buffer_bytes = Gauge(
            "edge_agent_buffer_bytes",
            "Bytes the on-disk buffer occupies (database and WAL)",
            registry=r,
        )
        self.buffer_dropped = Counter(
            "edge_agent_buffer_dropped_batches_total",
            "Oldest batches dropped because the buffer reached buffer.max_size, per destination "
            "that had not sent them",
            ["output"],
            registry=r,
        )
        self.published = Counter(
            "edge_agent_published_batches_total",
            "Batches acknowledged by the destination's broker (PUBACK)",
            ["output"],
            registry=r,
        )
        self.publish_latency = Histogram(
            "edge_agent_publish_latency_seconds",
            "Time from the device's answer to the destination broker's PUBACK",
            ["output"],
            buckets=_PUBLISH_BUCKETS,
            registry=r,
        )
        self.mqtt_connected = Gauge(
            "edge_agent_mqtt_connected",
            "1 while the destination is connected to its broker",
            ["output"],
            registry=r,
        )
        # Extensions beyond the contract's minimum.
        self.buffer_max_bytes = Gauge(
            "edge_agent_buffer_max_bytes",
            "buffer.max_size: the bound edge_agent_buffer_bytes never passes",
            registry=r,
        )
        self.buffer_oldest_age = Gauge(
            "edge_agent_buffer_oldest_age_seconds",
            "Age of the oldest batch still in the buffer (0 when empty)",
            registry=r,
        )
        self.output_backlog = Gauge(
            "edge_agent_output_backlog_batches",
            "Batches in the buffer the destination has not sent yet (set-aside ones included)",
            ["output"],
            registry=r,
        )
        self.output_oldest_age = Gauge(
            "edge_agent_output_oldest_age_seconds",
            "Age of the oldest batch the destination has still to send (0 when none)",
            ["output"],
            registry=r,
        )
        self.buffer_quarantined = Gauge(
            "edge_agent_buffer_quarantined_batches",
            "Batches set aside in the buffer because the format could not pack them",
            registry=r,
        )
        self.quarantined = Counter(
            "edge_agent_quarantined_batches_total",
            "Batches the format could not pack, set aside instead of being sent or deleted",
            ["format"],
            registry=r,
        )
        self.publish_errors = Counter(
            "edge_agent_publish_errors_total",
            "Broker connection attempts that failed or connections that were lost",
            registry=r,
        )
        # Operations (issue 9): clock, reloads, identity for dashboards.
        self.clock_synchronized = Gauge(
            "edge_agent_clock_synchronized",
            "1 when the system clock is NTP-synchronised, 0 when not, -1 when unknown",
            registry=r,
        )
        self.clock_synchronized.set(-1)
        self.config_reloads = Counter(
            "edge_agent_config_reloads_total",
            "Config reloads (SIGHUP) by result: applied or refused (the old config kept running)",
            ["result"],
            registry=r,
        )
        self.info = Gauge(
            "edge_agent_info",
            "Always 1; labels say which gateway and which version",
            ["agent", "version"],
            registry=r,
        )
        # The mqtt section's destination always exists (the contract's series, unlabelled once).
        self.add_output("default")

    def _per_output(self) -> tuple[Counter | Gauge | Histogram, ...]:
        return (
            self.buffer_dropped,
            self.published,
            self.publish_latency,
            self.mqtt_connected,
            self.output_backlog,
            self.output_oldest_age,
        )

    def add_output(self, output: str) -> None:
        """Every per-destination series of ``output``, at zero, from the start (a dashboard
        or an alert should not wait for a first event to see the destination)."""
        for family in self._per_output():
            family.labels(output)

    def forget_output(self, output: str) -> None:
        """Drop a removed destination's series."""
        for family in self._per_output():
            with contextlib.suppress(KeyError):
                family.remove(output)

    def forget_device(self, device: str) -> None:
        """Drop a removed device's series, so dashboards stop showing a machine that is gone."""
        self.devices.forget(device)


class _DeviceSeries:
    """One device's poll counters, updated on the event loop, read by a scrape on the server's
    thread (single attribute reads and writes under the GIL: no locks needed)."""

    __slots__ = ("buckets", "created", "overruns", "read_errors", "reads", "sum", "up")

    def __init__(self) -> None:
        self.created = time.time()
        self.reads = 0.0
        self.read_errors = 0.0
        self.overruns = 0.0
        self.up = 0.0
        self.buckets = [0.0] * (len(_POLL_BUCKETS) + 1)  # per bucket, not cumulative; +Inf last
        self.sum = 0.0


class _DeviceChild:
    """What ``family.labels(device)`` gives: the prometheus_client calls the pollers make."""

    __slots__ = ("_kind", "_series")

    def __init__(self, series: _DeviceSeries, kind: str) -> None:
        self._series = series
        self._kind = kind

    def inc(self, amount: float = 1.0) -> None:
        if amount < 0:
            raise ValueError("counters can only be incremented by non-negative amounts")
        series = self._series
        if self._kind == "reads":
            series.reads += amount
        elif self._kind == "read_errors":
            series.read_errors += amount
        elif self._kind == "poll_overruns":
            series.overruns += amount
        else:
            raise TypeError(f"{self._kind} is not a counter")

    def set(self, value: float) -> None:
        if self._kind != "device_up":
            raise TypeError(f"{self._kind} is not a gauge")
        self._series.up = float(value)

    def observe(self, amount: float) -> None:
        if self._kind != "poll_duration":
            raise TypeError(f"{self._kind} is not a histogram")
        series = self._series
        series.buckets[bisect.bisect_left(_POLL_BUCKETS, amount)] += 1
        series.sum += amount


class _DeviceFamily:
    """``metrics.reads`` and its siblings: ``labels(device)`` and ``remove(device)`` as on a
    prometheus_client metric with the one label ``device``."""

    def __init__(self, owner: DevicePollMetrics, kind: str) -> None:
        self._owner = owner
        self._kind = kind

    def labels(self, device: str) -> _DeviceChild:
        return _DeviceChild(self._owner.series(device), self._kind)

    def remove(self, device: str) -> None:
        self._owner.forget(device)


class DevicePollMetrics(Collector):
    """``edge_agent_reads_total``, ``_read_errors_total``, ``_poll_duration_seconds``,
    ``_poll_overruns_total`` and ``_device_up``, all ``{device}``, exported at scrape time."""

    def __init__(self) -> None:
        self._devices: dict[str, _DeviceSeries] = {}

    def family(self, kind: str) -> _DeviceFamily:
        return _DeviceFamily(self, kind)

    def series(self, device: str) -> _DeviceSeries:
        found = self._devices.get(device)
        if found is None:
            found = self._devices[device] = _DeviceSeries()
        return found

    def forget(self, device: str) -> None:
        self._devices.pop(device, None)

    def collect(self) -> Iterator[Metric]:
        devices = list(self._devices.items())  # a copy: the loop may add or drop devices
        reads = CounterMetricFamily(
            "edge_agent_reads", "Poll cycles read and committed to the buffer", labels=["device"]
        )
        errors = CounterMetricFamily(
            "edge_agent_read_errors",
            "Poll cycles in which the device or some tag could not be read",
            labels=["device"],
        )
        duration = HistogramMetricFamily(
            "edge_agent_poll_duration_seconds", "Time one poll cycle took", labels=["device"]
        )
        overruns = CounterMetricFamily(
            "edge_agent_poll_overruns",
            "Poll cycles that took longer than the poll interval (the next cycle was skipped)",
            labels=["device"],
        )
        up = GaugeMetricFamily(
            "edge_agent_device_up", "1 when the device answered its last poll", labels=["device"]
        )
        for device, s in devices:
            reads.add_metric([device], s.reads, created=s.created)
            errors.add_metric([device], s.read_errors, created=s.created)
            overruns.add_metric([device], s.overruns, created=s.created)
            up.add_metric([device], s.up)
            counts = list(itertools.accumulate(s.buckets))
            duration.add_metric([device], list(zip(_POLL_BOUNDS, counts, strict=True)), s.sum)
            duration.samples.append(
                Sample("edge_agent_poll_duration_seconds_created", {"device": device}, s.created)
            )
        yield reads
        yield errors
        yield duration
        yield overruns
        yield up


class DriverErrors(Collector):
    """``edge_agent_driver_errors_total{device, kind}``: the errors each driver counts itself
    (a serial frame's checksum, a request's timeout...), read from the drivers at scrape time.

    Read at scrape time rather than mirrored into a Counter so drivers need not know about
    Prometheus (``drivers/`` imports only ``drivers.base``) and no count is copied twice.
    """

    def __init__(self, drivers: Mapping[str, Driver]) -> None:
        self._drivers = dict(drivers)

    def set_drivers(self, drivers: Mapping[str, Driver]) -> None:
        """After a reload: the devices now polled (a new dict, swapped in one assignment, so a
        scrape running on the server's thread sees the old set or the new one)."""
        self._drivers = dict(drivers)

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "edge_agent_driver_errors",
            "Errors counted by the device's driver, by kind (checksum, timeout, no match...)",
            labels=["device", "kind"],
        )
        for device, driver in self._drivers.items():
            for kind, count in sorted(driver.error_counts().items()):
                family.add_metric([device, kind], count)
        yield family
