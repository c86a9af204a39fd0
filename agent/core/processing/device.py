"""One device's processing: what each of its batches becomes before it is buffered.

A batch goes in; out come the batches to commit on the device's data stream (closed windows
first, stamped with their end, then the batch itself with what report by exception kept, the
features and the state), the alarm events, and the retained state message when it changed.
The numpy work is handed to ``compute`` (a worker thread); everything else is cheap and runs
on the event loop, one batch at a time per device, so no state here needs a lock.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from agent.core.processing.alarms import Alarm, Event
from agent.core.processing.calculated import Calculator
from agent.core.processing.config import ZONE_LIMIT, ProcessedDevice, ProcessedTag, WaveformSpec
from agent.core.processing.counters import Counter
from agent.core.processing.exception import Deadband
from agent.core.processing.model import ModelRunner
from agent.core.processing.predict import Figures, Predictor
from agent.core.processing.state import MachineState
from agent.core.processing.values import FeatureValue, tidy
from agent.core.processing.values import number as as_number
from agent.core.processing.windows import Window
from drivers.base import Batch, Quality, Reading

log = logging.getLogger(__name__)

#: Runs ``features.compute(samples, spec, shaft_rpm)`` off the event loop.
Compute = Callable[[Any, WaveformSpec, float | None], Awaitable[dict[str, FeatureValue]]]
#: Runs a blocking call (a prediction's fit, a model's inference) on the worker thread:
#: ``await offload(fn, *args)``.
Offload = Callable[..., Awaitable[Any]]


def needs_processing(device: ProcessedDevice) -> bool:
    """Whether any processing key is set on the device or one of its tags."""
    if device.state is not None or device.processing is not None or device.calculated:
        return True
    return any(
        t.deadband is not None
        or t.deadband_percent is not None
        or t.max_silence is not None
        or t.window is not None
        or t.waveform is not None
        or t.counter is not None
        or t.alarms
        or t.predict
        or t.model is not None
        for t in device.tags
    )


class TagProcessor:
    """The processing of one tag, with the device's defaults filled in."""

    def __init__(self, tag: ProcessedTag, device: ProcessedDevice) -> None:
        defaults = device.processing
        self.name = tag.name
        if tag.deadband is not None or tag.deadband_percent is not None:
            deadband, percent = tag.deadband, tag.deadband_percent
        elif defaults is not None:
            deadband, percent = defaults.deadband, defaults.deadband_percent
        else:
            deadband = percent = None
        silence = tag.max_silence
        if silence is None and defaults is not None:
            silence = defaults.max_silence
        self.rbe = deadband is not None or percent is not None or silence is not None
        self._rbe_args = (deadband, percent, silence)
        self.raw_filter = Deadband(*self._rbe_args) if self.rbe else None
        self.waveform = tag.waveform
        window = tag.window
        if window is None and defaults is not None and tag.waveform is None:
            window = defaults.window
        self.window = Window(window) if window is not None else None
        self.counter = Counter(tag.counter) if tag.counter is not None else None
        self.output_filters: dict[str, Deadband] = {}
        self.alarms = [Alarm(spec, tag.name) for spec in tag.alarms]
        self.predictors: dict[str | None, Predictor] = {}
        for spec in tag.predict:
            threshold = spec.value
            if spec.zone is not None:
                assert tag.waveform is not None  # checked at validation
                threshold = tag.waveform.zones.effective()[ZONE_LIMIT[spec.zone]]
            assert threshold is not None
            self.predictors[spec.feature] = Predictor(spec, spec.prefix(tag.name), threshold)
        model = tag.model
        self.model = (
            ModelRunner(model.onnx, model.inputs, model.outputs) if model is not None else None
        )
        self.samples: list[float] = []  # a scalar waveform being collected
        self.failing = False  # the last waveform's features could not be computed

    def publishes_raw(self, value: Any) -> bool:
        if self.waveform is not None:
            if not isinstance(value, list) and self.waveform.length is None:
                return True  # not a waveform after all: better published than lost
            return self.waveform.raw
        if self.window is not None and as_number(value) is not None:
            return self.window.spec.raw
        return True

    def passes(self, output: str | None, value: Any, ts: float) -> bool:
        """Report by exception on the raw value (``output`` None) or a counter output."""
        if not self.rbe:
            return True
        if output is None:
            assert self.raw_filter is not None
            return self.raw_filter.passes(value, ts)
        filt = self.output_filters.get(output)
        if filt is None:
            filt = self.output_filters[output] = Deadband(*self._rbe_args)
        return filt.passes(value, ts)

    def alarms_on(self, value_name: str | None) -> list[Alarm]:
        return [a for a in self.alarms if a.spec.value == value_name and a.spec.mode != "predicted"]

    def predicted_alarms(self, value_name: str | None) -> list[Alarm]:
        return [a for a in self.alarms if a.spec.value == value_name and a.spec.mode == "predicted"]


@dataclass
class Output:
    batches: list[Batch] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    state: dict[str, Any] | None = None


class DeviceProcessor:
    def __init__(
        self, device: ProcessedDevice, saved: dict[str, Any] | None = None, resume: bool = False
    ) -> None:
        self.device = device
        self.name = device.name
        self.tags = {t.name: TagProcessor(t, device) for t in (*device.tags, *device.calculated)}
        self.calculator = Calculator(device.calculated) if device.calculated else None
        #: The tags the device reads: a batch of them all bad is the device down (a batch of
        #: one rate group's tags all bad is not: the other groups may read well).
        self._read_tags = frozenset(t.name for t in device.tags)
        self.state = MachineState(device.state) if device.state is not None else None
        self.latest: dict[str, float] = {}  # last good numeric value of every tag
        self._state_readings: list[Reading] = []
        #: Predictions with a new point in the batch being processed: fitted at its end.
        self._fits: list[tuple[TagProcessor, str | None, Predictor]] = []
        self.held_back = 0  # readings report by exception kept back (for metrics)
        self.waveforms = 0  # waveforms analysed (for metrics)
        self.dirty = False
        names = set(self.tags)
        if self.state is not None and not self.state.tags <= names:
            log.error(
                "state rules name unknown tags: those conditions never hold",
                extra={"device": self.name, "tags": sorted(self.state.tags - names)},
            )
        if saved:
            self.restore(saved, resume)

    # -- persistence ------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"version": 1}
        if self.state is not None:
            doc["state"] = self.state.state()
        counters = {n: t.counter.state() for n, t in self.tags.items() if t.counter is not None}
        if counters:
            doc["counters"] = counters
        alarms = {f"{n}/{a.spec.name}": a.state() for n, t in self.tags.items() for a in t.alarms}
        if alarms:
            doc["alarms"] = alarms
        predict = {p.name: p.state() for t in self.tags.values() for p in t.predictors.values()}
        if predict:
            doc["predict"] = predict
        return doc

    def restore(self, saved: dict[str, Any], resume: bool = False) -> None:
        if self.state is not None and isinstance(saved.get("state"), dict):
            self.state.restore(saved["state"], resume)
        for name, doc in (saved.get("counters") or {}).items():
            tag = self.tags.get(name)
            if tag is not None and tag.counter is not None and isinstance(doc, dict):
                tag.counter.restore(doc)
        alarms = saved.get("alarms") or {}
        for name, tag in self.tags.items():
            for alarm in tag.alarms:
                doc = alarms.get(f"{name}/{alarm.spec.name}")
                if isinstance(doc, dict):
                    alarm.restore(doc)
        predict = saved.get("predict") or {}
        for tag in self.tags.values():
            for predictor in tag.predictors.values():
                doc = predict.get(predictor.name)
                if isinstance(doc, dict):
                    predictor.restore(doc)

    # -- one batch --------------------------------------------------------------------------------

    async def process(
        self, batch: Batch, compute: Compute, offload: Offload | None = None
    ) -> Output:
        """``offload`` runs predictions' fits and models off the event loop (inline when None:
        tests)."""
        out = Output()
        ts = batch.ts
        self._fits = []
        if self.calculator is not None:
            # Into the batch itself: what follows (state, alarms, windows) and whoever holds
            # the batch after the pipeline (the status board) see calculated tags as read ones.
            calculated = self.calculator.readings(batch.readings)
            if calculated:
                batch.readings = [*batch.readings, *calculated]
        if self.state is not None:  # first: alarms may be judged only in some states
            self._machine_state(batch, out)
        closing: dict[float, list[Reading]] = {}
        main: list[Reading] = []
        for windowed in self.tags.values():
            if windowed.window is not None:
                closed = windowed.window.roll(ts)
                if closed is not None:
                    end, stats = closed
                    closing.setdefault(end, []).extend(
                        Reading(f"{windowed.name}.{k}", tidy(v), end) for k, v in stats.items()
                    )
                    for k, v in stats.items():
                        self._alarms(windowed, k, v, end, out, closing[end])
        numbers = [as_number(r.value) for r in batch.readings]
        latest = self.latest
        for r, number in zip(batch.readings, numbers, strict=True):
            if number is not None and r.quality is not Quality.BAD:
                latest[r.tag] = number
        jobs: list[tuple[TagProcessor, Reading, Any, Awaitable[dict[str, FeatureValue]]]] = []
        for r, number in zip(batch.readings, numbers, strict=True):
            tag = self.tags.get(r.tag)
            if tag is None:
                main.append(r)
                continue
            if r.quality is Quality.BAD or r.value is None:
                main.append(r)  # a failing read is always visible
                if tag.raw_filter is not None:
                    tag.raw_filter.forget()
                continue
            publish = tag.publishes_raw(r.value)
            if r.quality is not Quality.GOOD or (publish and tag.passes(None, r.value, r.ts)):
                main.append(r)
            elif publish:
                self.held_back += 1
            if tag.waveform is not None:
                samples = self._samples(tag, r.value)
                if samples is not None:
                    rpm = self._rpm(tag.waveform)
                    jobs.append((tag, r, samples, compute(samples, tag.waveform, rpm)))
                continue
            if number is None:
                continue
            if tag.window is not None:
                tag.window.add(number)
            if tag.counter is not None:
                for k, v in tag.counter.update(number, r.ts).items():
                    if tag.passes(k, v, r.ts):
                        main.append(Reading(f"{tag.name}.{k}", tidy(v), r.ts))
                    self._alarms(tag, k, v, r.ts, out, main)
                self.dirty = True
            if tag.alarms or tag.predictors:
                self._alarms(tag, None, number, r.ts, out, main)
        if jobs:
            results = await asyncio.gather(*(job for *_, job in jobs), return_exceptions=True)
            for (tag, r, samples, _), features in zip(jobs, results, strict=True):
                if isinstance(features, BaseException):
                    main.append(self._not_a_waveform(tag, r, features))
                    continue
                tag.failing = False
                self.waveforms += 1
                values: dict[str, FeatureValue | None] = dict(features)
                if tag.model is not None:
                    values.update(await self._infer(tag, samples, features, offload))
                for k, v in values.items():
                    if v is not None:
                        main.append(Reading(f"{tag.name}.{k}", tidy(v, 6), r.ts))
                    else:
                        main.append(Reading.bad(f"{tag.name}.{k}", r.ts, "model failed"))
                for k, v in values.items():
                    self._alarms(tag, k, v, r.ts, out, main)
        for tag, feature, predictor in self._fits:
            points = list(predictor.points)
            if offload is not None:
                figures: Figures = await offload(predictor.fit, points)
            else:
                figures = predictor.fit(points)
            published = predictor.published(figures, ts)
            main.extend(Reading(f"{predictor.name}.{k}", v, ts) for k, v in published.items())
            current = self.state.current if self.state is not None else None
            for alarm in tag.predicted_alarms(feature):
                if alarm.spec.states is not None and current not in alarm.spec.states:
                    alarm.pause()
                    continue
                alarm.prediction = {**figures.evidence, **published}
                self._judge(alarm, published.get("ttt_h_low", math.inf), ts, out)
        if self.state is not None:
            main.extend(self._state_readings)
        out.batches = [Batch(self.name, end, closing[end]) for end in sorted(closing)]
        if main:
            out.batches.append(Batch(self.name, ts, main))
        return out

    async def _infer(
        self,
        tag: TagProcessor,
        samples: Any,
        features: dict[str, FeatureValue],
        offload: Offload | None,
    ) -> dict[str, FeatureValue | None]:
        """The model's outputs on this waveform; None for each when it fails (a bad reading,
        and one log line per episode)."""
        runner = tag.model
        assert runner is not None
        row = runner.row(samples, features)
        try:
            if row is None:
                raise ValueError(f"an input of {', '.join(runner.inputs)} is not a number")
            if offload is not None:
                outputs: dict[str, FeatureValue] = await offload(runner.infer, row)
            else:
                outputs = runner.infer(row)
        except Exception as exc:  # a model is the plant's code: whatever it raises is reported
            if not runner.failing:
                runner.failing = True
                log.warning(
                    "model failed",
                    extra={"device": self.name, "tag": tag.name, "error": repr(exc)},
                )
            return dict.fromkeys(runner.outputs)
        if runner.failing:
            runner.failing = False
            log.info("model recovered", extra={"device": self.name, "tag": tag.name})
        return dict(outputs)

    def _not_a_waveform(self, tag: TagProcessor, r: Reading, exc: BaseException) -> Reading:
        """A value the features cannot be computed from (strings in the list, say): a bad
        reading, so the failure is visible in the data, and one log line per episode."""
        if not tag.failing:
            tag.failing = True
            log.warning(
                "waveform features failed",
                extra={"device": self.name, "tag": tag.name, "error": repr(exc)},
            )
        return Reading.bad(tag.name, r.ts, "not a waveform")

    def _samples(self, tag: TagProcessor, value: Any) -> list[float] | None:
        """The waveform to analyse now: a list value at once, a scalar once ``length`` of its
        readings are collected."""
        assert tag.waveform is not None
        if isinstance(value, list):
            return value if len(value) >= 2 else None
        number = as_number(value)
        if number is None or tag.waveform.length is None:
            return None
        tag.samples.append(number)
        if len(tag.samples) < tag.waveform.length:
            return None
        samples, tag.samples = tag.samples, []
        return samples

    def _rpm(self, spec: WaveformSpec) -> float | None:
        if spec.shaft_rpm_tag is not None:
            return self.latest.get(spec.shaft_rpm_tag)
        return spec.shaft_rpm

    def _alarms(
        self,
        tag: TagProcessor,
        value_name: str | None,
        value: Any,
        ts: float,
        out: Output,
        readings: list[Reading],
    ) -> None:
        number = as_number(value)
        if number is None:
            return
        current = self.state.current if self.state is not None else None
        predictor = tag.predictors.get(value_name)
        if (
            predictor is not None
            and (predictor.spec.when is None or current in predictor.spec.when)
            and predictor.add(number, ts)
        ):
            self.dirty = True
            if predictor.ready:
                self._fits.append((tag, value_name, predictor))
        for alarm in tag.alarms_on(value_name):
            if alarm.spec.states is not None and current not in alarm.spec.states:
                alarm.pause()
                continue
            measure = self._judge(alarm, number, ts, out)
            if alarm.spec.mode == "anomaly" and measure is not None:
                readings.append(Reading(f"{alarm.watched}.z", round(measure, 4), ts))
            if alarm.spec.mode == "anomaly":
                self.dirty = True

    def _judge(self, alarm: Alarm, number: float, ts: float, out: Output) -> float | None:
        """Feed one value to an alarm; its event, if any, goes to ``out``."""
        event, measure = alarm.update(number, ts, self.name)
        if event is not None:
            out.events.append(event)
            self.dirty = True
            log.info(
                "alarm %s",
                event.doc["event"],
                extra={
                    "device": self.name,
                    "alarm": alarm.spec.name,
                    "tag": alarm.watched,
                    "value": number if math.isfinite(number) else None,
                },
            )
        return measure

    def _machine_state(self, batch: Batch, out: Output) -> None:
        state = self.state
        assert state is not None
        for r in batch.readings:
            if r.tag in state.tags:
                if r.quality is Quality.BAD:
                    state.forget(r.tag)
                else:
                    state.note(r.tag, r.value)
        down = (
            bool(batch.readings)
            and all(r.quality is Quality.BAD for r in batch.readings)
            and self._read_tags <= {r.tag for r in batch.readings}
        )
        changed, due = state.update(batch.ts, down)
        self.dirty = True
        self._state_readings = []
        if changed or due:
            self._state_readings.append(Reading("state", state.current, batch.ts))
            self._state_readings.extend(
                Reading(f"runtime.{k}", round(v, 3), batch.ts)
                for k, v in sorted(state.runtime.items())
            )
        if changed:
            out.state = state.retained(batch.ts)
