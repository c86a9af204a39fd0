"""Prometheus view of edge processing, read from the processors at scrape time:
``edge_agent_alarm_active{device, alarm}``, ``edge_agent_points_held_back_total{device}`` (what
report by exception saved the uplink) and ``edge_agent_waveforms_analysed_total{device}``."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from agent.core.processing.device import DeviceProcessor


class ProcessingCollector(Collector):
    def __init__(self, processors: Callable[[], Mapping[str, DeviceProcessor]]) -> None:
        self._processors = processors

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        active = GaugeMetricFamily(
            "edge_agent_alarm_active",
            "1 while the alarm is raised, 0 otherwise",
            labels=["device", "alarm"],
        )
        held = CounterMetricFamily(
            "edge_agent_points_held_back",
            "Readings report by exception did not publish (within the deadband)",
            labels=["device"],
        )
        waveforms = CounterMetricFamily(
            "edge_agent_waveforms_analysed",
            "Waveforms whose features were computed",
            labels=["device"],
        )
        # A copy made in one C-level call: the event loop may swap processors during a reload.
        for name, p in list(self._processors().items()):
            for tag in p.tags.values():
                for alarm in tag.alarms:
                    active.add_metric([name, alarm.spec.name], 1 if alarm.active else 0)
            held.add_metric([name], p.held_back)
            waveforms.add_metric([name], p.waveforms)
        yield active
        yield held
        yield waveforms
