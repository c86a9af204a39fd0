"""Prometheus view of edge processing, read from the processors at scrape time:
``edge_agent_alarm_active{device, alarm}``, ``edge_agent_points_held_back_total{device}`` (what
report by exception saved the uplink), ``edge_agent_waveforms_analysed_total{device}``, and for
models (``model:``) ``edge_agent_model_inferences_total{device, tag}`` and
``edge_agent_model_inference_seconds_total{device, tag}`` (their ratio: time per inference)."""

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
        inferences = CounterMetricFamily(
            "edge_agent_model_inferences",
            "Inferences of the tag's ONNX model",
            labels=["device", "tag"],
        )
        inference_seconds = CounterMetricFamily(
            "edge_agent_model_inference_seconds",
            "Time spent in the tag's ONNX model, seconds",
            labels=["device", "tag"],
        )
        # A copy made in one C-level call: the event loop may swap processors during a reload.
        for name, p in list(self._processors().items()):
            for tag in p.tags.values():
                for alarm in tag.alarms:
                    active.add_metric([name, alarm.spec.name], 1 if alarm.active else 0)
                if tag.model is not None:
                    inferences.add_metric([name, tag.name], tag.model.inferences)
                    inference_seconds.add_metric([name, tag.name], tag.model.seconds)
            held.add_metric([name], p.held_back)
            waveforms.add_metric([name], p.waveforms)
        yield active
        yield held
        yield waveforms
        yield inferences
        yield inference_seconds
