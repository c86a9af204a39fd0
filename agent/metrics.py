"""Prometheus metrics of every stage, in one registry built at start and passed in (no globals).

The names are the public contract (INTERFACES.md); extensions are additive.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from drivers.base import Driver

_POLL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_PUBLISH_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    """All metrics of one agent process. Tests build their own to read values back."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.reads = Counter(
            "edge_agent_reads_total",
            "Poll cycles read and committed to the buffer",
            ["device"],
            registry=r,
        )
        self.read_errors = Counter(
            "edge_agent_read_errors_total",
            "Poll cycles in which the device or some tag could not be read",
            ["device"],
            registry=r,
        )
        self.poll_duration = Histogram(
            "edge_agent_poll_duration_seconds",
            "Time one poll cycle took",
            ["device"],
            buckets=_POLL_BUCKETS,
            registry=r,
        )
        self.poll_overruns = Counter(
            "edge_agent_poll_overruns_total",
            "Poll cycles that took longer than the poll interval (the next cycle was skipped)",
            ["device"],
            registry=r,
        )
        self.device_up = Gauge(
            "edge_agent_device_up",
            "1 when the device answered its last poll",
            ["device"],
            registry=r,
        )
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
            "Oldest batches dropped because the buffer reached buffer.max_size",
            registry=r,
        )
        self.published = Counter(
            "edge_agent_published_batches_total",
            "Batches acknowledged by the broker (PUBACK)",
            registry=r,
        )
        self.publish_latency = Histogram(
            "edge_agent_publish_latency_seconds",
            "Time from the device's answer to the broker's PUBACK",
            buckets=_PUBLISH_BUCKETS,
            registry=r,
        )
        self.mqtt_connected = Gauge(
            "edge_agent_mqtt_connected", "1 while connected to the broker", registry=r
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

    def forget_device(self, device: str) -> None:
        """Drop a removed device's series, so dashboards stop showing a machine that is gone."""
        for family in (
            self.reads,
            self.read_errors,
            self.poll_duration,
            self.poll_overruns,
            self.device_up,
        ):
            with contextlib.suppress(KeyError):
                family.remove(device)


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
