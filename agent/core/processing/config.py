"""Config models of edge processing: the keys a tag and a device take to be processed at the edge.

They belong to the agent, not to the driver contract: the config loader adds them to each
driver's tag and device models (``processed_models``), so an integrator writes them beside the
driver's own keys while drivers know nothing of them. ``agent.core.processing`` gives them meaning.
"""

from __future__ import annotations

import functools
import math
import os
import re
from collections.abc import Sequence
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    create_model,
    model_validator,
)

from agent.core.processing.expr import ExprError, ExprType
from agent.core.processing.expr import infer as infer_expr
from agent.core.processing.expr import parse as parse_expr
from drivers.base import DeviceBase, ProfileBase, StrictModel, TagBase, ValueType
from drivers.base import Duration as _Duration
from drivers.base import Name as _Name
from drivers.base import PositiveDuration as _PositiveDuration
from drivers.base import key_error as _key_error
from drivers.base.rates import has_own_rates, unknown_scan_groups


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def _listed_names(value: Any) -> Any:
    """One name or a list of them."""
    return [value] if isinstance(value, str) else value


def _listed_specs(value: Any) -> Any:
    """One mapping or a list of them."""
    return [value] if isinstance(value, dict) else value


# --------------------------------------------------------------------------------- conditions

_CONDITION = re.compile(r"^\s*(>=|<=|==|!=|>|<)\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$")
_TAG_CONDITION = re.compile(
    r"^\s*([A-Za-z0-9_.-]+)\s*(>=|<=|==|!=|>|<)\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$"
)
Op = Literal[">", ">=", "<", "<=", "==", "!="]


def parse_condition(text: str) -> tuple[Op, float]:
    """``"> 7.1"`` → ``(">", 7.1)``; ``ValueError`` when it is not an operator and a number."""
    m = _CONDITION.match(text)
    if m is None:
        raise ValueError(
            f"invalid condition {text!r}: write an operator (> >= < <= == !=) and a number, "
            "like '> 7.1'"
        )
    return m.group(1), float(m.group(2))  # type: ignore[return-value]


def parse_tag_condition(text: str) -> tuple[str, Op, float]:
    """``"spindle_speed > 50"`` → ``("spindle_speed", ">", 50.0)``."""
    m = _TAG_CONDITION.match(text)
    if m is None:
        raise ValueError(
            f"invalid condition {text!r}: write a tag, an operator (> >= < <= == !=) and a "
            "number, like 'spindle_speed > 50'"
        )
    return m.group(1), m.group(2), float(m.group(3))  # type: ignore[return-value]


def _check_condition(text: str) -> str:
    parse_condition(text)
    return text


def _check_tag_condition(text: str) -> str:
    parse_tag_condition(text)
    return text


#: ``"> 7.1"``: an operator and a number.
Condition = Annotated[str, AfterValidator(_check_condition)]
#: ``"spindle_speed > 50"``: a tag, an operator and a number.
TagCondition = Annotated[str, AfterValidator(_check_tag_condition)]


# ------------------------------------------------------------------------ report by exception

Stat = Literal["min", "max", "mean", "last", "first", "count", "sum", "stddev"]
DEFAULT_STATS: tuple[Stat, ...] = ("min", "max", "mean", "last", "count")


class WindowSpec(_Model):
    """Aggregates over wall-clock-aligned windows, published as ``<tag>.<stat>``."""

    length: _PositiveDuration = Field(
        description="window length; edges fall on multiples of it since the epoch (1m: each minute)"
    )
    stats: list[Stat] = Field(
        default_factory=lambda: list(DEFAULT_STATS),
        min_length=1,
        description="aggregates published at each window's end",
    )
    raw: bool = Field(
        default=False,
        description="also publish the raw values (subject to the deadband); default: aggregates "
        "instead of raw values",
    )


class DeviceProcessing(_Model):
    """Defaults for every tag of the device; a tag's own key overrides the default."""

    deadband: float | None = Field(default=None, ge=0, description="default tag deadband")
    deadband_percent: float | None = Field(
        default=None, gt=0, le=100, description="default tag deadband_percent"
    )
    max_silence: _PositiveDuration | None = Field(
        default=None, description="default tag max_silence"
    )
    window: WindowSpec | None = Field(default=None, description="default tag window")

    @model_validator(mode="after")
    def _one_deadband(self) -> DeviceProcessing:
        if self.deadband is not None and self.deadband_percent is not None:
            raise _key_error("deadband_percent", "give deadband or deadband_percent, not both")
        return self


# --------------------------------------------------------------------------------- waveforms

Feature = Literal[
    "rms",
    "peak",
    "peak_to_peak",
    "crest_factor",
    "kurtosis",
    "skewness",
    "dominant_frequency",
    "bands",
    "envelope",
    "velocity_rms",
    "iso_zone",
]
DEFAULT_FEATURES: tuple[Feature, ...] = ("rms", "peak", "crest_factor", "kurtosis")
#: ISO 10816-1 zone limits (A/B, B/C, C/D) in mm/s RMS, by machine class.
ISO_CLASSES: dict[str, tuple[float, float, float]] = {
    "I": (0.71, 1.8, 4.5),  # small machines, up to 15 kW
    "II": (1.12, 2.8, 7.1),  # medium machines, 15-75 kW, or up to 300 kW on special foundations
    "III": (1.8, 4.5, 11.2),  # large machines on rigid foundations
    "IV": (2.8, 7.1, 18.0),  # large machines on soft foundations
}
FAULT_FREQUENCIES = ("bpfo", "bpfi", "bsf", "ftf")


class BearingSpec(_Model):
    """Rolling-element bearing geometry, from the bearing's data sheet."""

    balls: int = Field(ge=3, le=100, description="number of rolling elements")
    ball_diameter: float = Field(gt=0, description="rolling element diameter (any length unit)")
    pitch_diameter: float = Field(gt=0, description="pitch diameter (same unit)")
    contact_angle: float = Field(default=0.0, ge=0, lt=90, description="contact angle, degrees")

    @model_validator(mode="after")
    def _geometry(self) -> BearingSpec:
        if self.ball_diameter >= self.pitch_diameter:
            raise _key_error("ball_diameter", "ball_diameter must be less than pitch_diameter")
        return self

    def orders(self) -> dict[str, float]:
        """Fault frequencies as multiples of the shaft speed (outer race fixed)."""
        r = self.ball_diameter / self.pitch_diameter * math.cos(math.radians(self.contact_angle))
        n = self.balls
        return {
            "bpfo": n / 2 * (1 - r),
            "bpfi": n / 2 * (1 + r),
            "bsf": self.pitch_diameter / (2 * self.ball_diameter) * (1 - r * r),
            "ftf": 0.5 * (1 - r),
        }


class ZoneSpec(_Model):
    """Vibration severity zones (ISO 10816 / 20816) from velocity RMS in mm/s."""

    machine_class: Literal["I", "II", "III", "IV"] | None = Field(
        default="II", description="ISO 10816-1 machine class whose limits apply"
    )
    limits: tuple[float, float, float] | None = Field(
        default=None,
        description="own A/B, B/C and C/D limits in mm/s (for example from ISO 20816-3); "
        "override machine_class",
    )

    @model_validator(mode="after")
    def _ascending(self) -> ZoneSpec:
        if self.limits is not None and not (0 < self.limits[0] < self.limits[1] < self.limits[2]):
            raise _key_error("limits", "limits must be positive and ascending (A/B, B/C, C/D)")
        return self

    def effective(self) -> tuple[float, float, float]:
        if self.limits is not None:
            return self.limits
        return ISO_CLASSES[self.machine_class or "II"]


Band = tuple[float, float]


class WaveformSpec(_Model):
    """A waveform tag (a list value, or a scalar sampled ``length`` times) and its features."""

    sample_rate: float = Field(gt=0, description="samples per second of the waveform, Hz")
    length: int | None = Field(
        default=None,
        ge=16,
        le=1_048_576,
        description="for a scalar tag: collect this many readings into one waveform",
    )
    quantity: Literal["acceleration_g", "acceleration_ms2", "velocity_mms", "other"] = Field(
        default="other",
        description="what the samples measure; velocity_rms and iso_zone need one of the first "
        "three",
    )
    features: list[Feature] = Field(
        default_factory=lambda: list(DEFAULT_FEATURES),
        min_length=1,
        description="what to compute from each waveform, published as <tag>.<feature>",
    )
    bands: dict[_Name, Band] = Field(
        default_factory=dict,
        description="named frequency bands [low, high] in Hz; feature bands publishes the RMS "
        "within each as <tag>.band_<name>",
    )
    bearing: BearingSpec | None = Field(
        default=None, description="bearing geometry, for the envelope's fault frequencies"
    )
    shaft_rpm: float | None = Field(default=None, gt=0, description="fixed shaft speed, rpm")
    shaft_rpm_tag: _Name | None = Field(
        default=None, description="tag of the same device holding the shaft speed in rpm"
    )
    envelope_band: Band | None = Field(
        default=None,
        description="band-pass [low, high] Hz before enveloping; default: sample_rate/8 to "
        "sample_rate/2.5 (where impacts ring resonances)",
    )
    tolerance: float = Field(
        default=0.03,
        gt=0,
        le=0.2,
        description="relative width searched around each fault frequency (shaft speed error)",
    )
    velocity_band: Band | None = Field(
        default=None,
        description="band of velocity_rms in Hz; default 10-1000 (ISO 10816), or up to the "
        "Nyquist frequency (sample_rate/2) when that is lower",
    )
    zones: ZoneSpec = Field(default_factory=ZoneSpec, description="severity zone limits")
    raw: bool = Field(default=False, description="also publish the samples themselves")

    @model_validator(mode="after")
    def _consistent(self) -> WaveformSpec:
        nyquist = self.sample_rate / 2
        for name, (lo, hi) in self.bands.items():
            if not 0 <= lo < hi <= nyquist:
                raise _key_error(
                    "bands", f"band {name} [{lo}, {hi}] must have 0 <= low < high <= {nyquist} Hz"
                )
        for key in ("envelope_band", "velocity_band"):
            band = getattr(self, key)
            if band is not None and not 0 <= band[0] < band[1] <= nyquist:
                raise _key_error(key, f"{key} must have 0 <= low < high <= {nyquist} Hz")
        if "bands" in self.features and not self.bands:
            raise _key_error("bands", "feature bands needs bands")
        velocity = {"velocity_rms", "iso_zone"} & set(self.features)
        if velocity and self.quantity == "other":
            raise _key_error(
                "quantity",
                f"{' and '.join(sorted(velocity))} needs quantity (acceleration_g, "
                "acceleration_ms2 or velocity_mms)",
            )
        if self.shaft_rpm is not None and self.shaft_rpm_tag is not None:
            raise _key_error("shaft_rpm_tag", "give shaft_rpm or shaft_rpm_tag, not both")
        if self.bearing is not None and self.shaft_rpm is None and self.shaft_rpm_tag is None:
            raise _key_error("bearing", "bearing fault frequencies need shaft_rpm or shaft_rpm_tag")
        return self

    def effective_velocity_band(self) -> Band:
        return self.velocity_band or (10.0, min(1000.0, self.sample_rate / 2))

    def outputs(self) -> list[str]:
        """The feature names this waveform publishes (``<tag>.<name>``)."""
        out: list[str] = []
        for f in self.features:
            if f == "bands":
                out += [f"band_{name}" for name in self.bands]
            elif f == "envelope":
                out.append("envelope_peak_frequency")
                if self.bearing is not None:
                    out += list(FAULT_FREQUENCIES)
            else:
                out.append(f)
        return out


# ---------------------------------------------------------------------------------- counters


class CounterSpec(_Model):
    """A counter derived at the edge from this tag: parts, or energy in kWh."""

    kind: Literal["parts", "energy", "power"] = Field(
        description="parts: a part counter register; energy: an energy register; power: a power "
        "value integrated over time"
    )
    rollover: int | None = Field(
        default=None,
        ge=1,
        description="the register's largest value before it wraps to 0 (65535 for 16 bits); "
        "without it every decrease is a reset",
    )
    scale: float = Field(
        default=1.0,
        gt=0,
        description="multiplies the value into parts, kWh (energy) or kW (power: 0.001 for W)",
    )
    rate_per: _PositiveDuration = Field(
        default=60.0, description="parts: production rate unit (60: parts per minute)"
    )
    rate_window: _PositiveDuration = Field(
        default=60.0, description="parts: production rate over this trailing period"
    )
    max_gap: _PositiveDuration = Field(
        default=60.0,
        description="power: readings further apart than this are not integrated (device down)",
    )

    def outputs(self) -> list[str]:
        return ["total", "rate"] if self.kind == "parts" else ["kwh"]


# ------------------------------------------------------------------------------------ models

#: The validation context key of the directory relative paths are relative to (the config
#: file's; set by the config loader, ``agent.app.config``).
BASE_DIR = "base_dir"


def _relative_to_config(value: str, info: ValidationInfo) -> str:
    context = info.context if isinstance(info.context, dict) else {}
    base = context.get(BASE_DIR)
    if os.path.isabs(value) or base is None:
        return value
    return os.path.normpath(os.path.join(str(base), value))


class ModelSpec(_Model):
    """The plant's own model: an ONNX file run on the tag's waveform or on a vector of its
    features, on the worker thread; each output published as ``<tag>.<output>``. Needs the
    ``onnx`` extra (``pip install 'edge-agent[onnx]'``: onnxruntime), loaded only when used."""

    onnx: Annotated[str, AfterValidator(_relative_to_config)] = Field(
        description="the model file (relative to the config file); its signature is checked "
        "at validation: one float input, as many outputs as `outputs` names"
    )
    inputs: list[_Name] = Field(
        min_length=1,
        description="[waveform]: the samples, as one row; or the tag's features in the order "
        "the model takes them ([rms, kurtosis, crest_factor])",
    )
    outputs: list[_Name] = Field(
        min_length=1,
        description="names of the model's outputs, in its order (an anomaly score; a class "
        "and its probability), published as <tag>.<name>",
    )

    @model_validator(mode="after")
    def _signature(self) -> ModelSpec:
        if "waveform" in self.inputs and len(self.inputs) > 1:
            raise _key_error("inputs", "waveform is the whole input: not with features")
        from agent.core.processing.model import SignatureError, check_signature

        width = None if self.inputs == ["waveform"] else len(self.inputs)
        try:
            check_signature(self.onnx, width, len(self.outputs))
        except SignatureError as exc:
            raise _key_error("onnx", str(exc)) from None
        return self


# -------------------------------------------------------------------------------- prediction

#: Zone limits a prediction can aim at: the limit at which the zone starts.
ZONE_LIMIT = {"B": 0, "C": 1, "D": 2}


class PredictSpec(_Model):
    """Time to threshold: a trend fitted on one of the tag's values (aggregated, robust, kept in
    the data dir), published as ``<name>.trend``, ``<name>.ttt_h`` and ``<name>.ttt_h_low``
    where ``<name>`` is the tag or ``<tag>.<feature>``. See ``agent.core.processing.predict``."""

    feature: _Name | None = Field(
        default=None,
        description="what is predicted: the tag's value (default) or one of its features or "
        "window stats (velocity_rms, mean...)",
    )
    value: float | None = Field(
        default=None, description="the threshold the value heads for (give value or zone)"
    )
    zone: Literal["B", "C", "D"] | None = Field(
        default=None,
        description="the threshold is where this ISO 10816 zone starts, from the waveform's "
        "zones (on its velocity_rms feature)",
    )
    direction: Literal["up", "down"] = Field(
        default="up",
        description="up: the value rises to the threshold (wear, heat); down: it falls to it "
        "(a pressure, an efficiency). Once beyond it, ttt_h and ttt_h_low are 0",
    )
    horizon: _PositiveDuration = Field(
        default=30 * 86400.0, description="no crossing is published beyond this far ahead"
    )
    confidence: float = Field(
        default=0.9,
        gt=0.5,
        lt=1.0,
        description="of the lower bound ttt_h_low, and of the trend heading for the threshold "
        "at all (one-sided)",
    )
    every: _PositiveDuration = Field(
        default=3600.0,
        description="the values are aggregated into one point (their median) this often",
    )
    history: _PositiveDuration = Field(
        default=30 * 86400.0,
        description="points older than this are dropped; the fit uses the rest",
    )
    min_points: int = Field(
        default=24, ge=8, le=10_000, description="nothing is published before this many points"
    )
    when: Annotated[list[_Name], BeforeValidator(_listed_names)] | None = Field(
        default=None,
        description="take values only while the device's machine state is one of these "
        "(running): idle time and stops do not fake a trend",
    )

    @model_validator(mode="after")
    def _threshold(self) -> PredictSpec:
        if (self.value is None) == (self.zone is None):
            raise _key_error("value", "give the threshold as value or zone, one of them")
        if self.history < self.every * self.min_points:
            raise _key_error(
                "history", "history must hold at least min_points points of every each"
            )
        return self

    def prefix(self, tag: str) -> str:
        """The published name the figures hang from: ``bearing_temp``, ``vibration.rms``."""
        return tag if self.feature is None else f"{tag}.{self.feature}"


PREDICT_OUTPUTS = ("trend", "ttt_h", "ttt_h_low")


# ------------------------------------------------------------------------------------ alarms


def _overlap(on: tuple[Op, float], off: tuple[Op, float]) -> bool:
    """True when some value satisfies both conditions (the alarm would flap) or they leave no
    hysteresis direction (``on`` upward needs ``off`` downward)."""
    (op1, a), (op2, b) = on, off
    if op1 in (">", ">="):
        return op2 not in ("<", "<=") or b > a
    if op1 in ("<", "<="):
        return op2 not in (">", ">=") or b < a
    return False


class AlarmSpec(_Model):
    """A condition watched on one of the tag's values; raises and clears events."""

    name: _Name = Field(description="the alarm's name in events")
    value: _Name | None = Field(
        default=None,
        description="what is watched: the tag's value (default) or one of its features or "
        "window stats (rms, mean...)",
    )
    mode: Literal["level", "rate", "anomaly", "predicted"] = Field(
        default="level",
        description="level: the value; rate: its change per `per`; anomaly: its z-score against "
        "an EWMA mean and variance; predicted: the lower bound of the time until the tag's "
        "predict: threshold (ttt_h_low) against `within`",
    )
    on: Condition | None = Field(
        default=None,
        description="raise when this holds, like '> 7.1' (predicted: '< within' in hours)",
    )
    off: Condition | None = Field(
        default=None,
        description="clear when this holds, like '< 6.5' (hysteresis); default: when on no "
        "longer holds",
    )
    for_: _Duration = Field(
        default=0.0,
        alias="for",
        description="on (and off) must hold this long before the alarm raises (clears)",
    )
    per: _PositiveDuration = Field(default=60.0, description="rate: change per this long")
    within: _PositiveDuration | None = Field(
        default=None,
        description="predicted: raise when the threshold may be reached within this long "
        "(ttt_h_low below it); clear when ttt_h_low is above 1.25 times it or no crossing is "
        "predicted any more",
    )
    learn: _Duration = Field(
        default=3600.0,
        description="anomaly: learning period (no alarm) while the mean and variance settle",
    )
    half_life: _PositiveDuration = Field(
        default=3600.0,
        description="anomaly: how fast the EWMA mean and variance forget (a value this old "
        "weighs half); a drift slower than this is learnt as normal, not flagged",
    )
    severity: Literal["info", "warning", "critical"] = Field(
        default="warning", description="carried in the alarm's events"
    )
    states: list[_Name] | None = Field(
        default=None,
        description="judge only while the device's machine state is one of these (running); "
        "in other states the alarm keeps its state and its delay restarts",
    )

    @model_validator(mode="after")
    def _hysteresis(self) -> AlarmSpec:
        if self.mode == "predicted":
            if self.within is None:
                raise _key_error("within", "a predicted alarm needs within (like 14d)")
            for key in ("on", "off"):
                if getattr(self, key) is not None:
                    raise _key_error(key, f"a predicted alarm takes within, not {key}")
            return self
        if self.on is None:
            raise _key_error("on", "Field required")
        if self.within is not None:
            raise _key_error("within", "within belongs to mode: predicted")
        if self.off is not None and _overlap(parse_condition(self.on), parse_condition(self.off)):
            raise _key_error(
                "off", f"off {self.off!r} overlaps on {self.on!r}: the alarm would chatter"
            )
        return self

    def conditions(self) -> tuple[str, str | None]:
        """``on`` and ``off``; a predicted alarm's from ``within``, in hours, with hysteresis."""
        if self.mode == "predicted":
            assert self.within is not None
            hours = self.within / 3600.0
            return f"< {hours:g}", f"> {hours * PREDICTED_HYSTERESIS:g}"
        assert self.on is not None
        return self.on, self.off


#: A predicted alarm clears when ttt_h_low is this many times ``within`` (or none is predicted).
PREDICTED_HYSTERESIS = 1.25


# ----------------------------------------------------------------------------- machine state


def _listed(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


class StateRule(_Model):
    state: _Name = Field(description="the state when every condition holds")
    when: Annotated[list[TagCondition], BeforeValidator(_listed)] = Field(
        description="'tag op number', or a list of them that must all hold"
    )

    def conditions(self) -> list[tuple[str, Op, float]]:
        return [parse_tag_condition(c) for c in self.when]


class StateSpec(_Model):
    """Machine state from the device's tags: the first rule that holds wins."""

    rules: list[StateRule] = Field(min_length=1, description="checked in order")
    default: _Name = Field(default="idle", description="the state when no rule holds")
    down: _Name = Field(default="stopped", description="the state while the device is down")
    report_every: _PositiveDuration = Field(
        default=60.0, description="publish the run time per state at least this often"
    )


# ----------------------------------------------------------------------------------- checks


def input_type(value_type: ValueType | None) -> ExprType:
    """What a tag of this declared type is in an expression."""
    if value_type is None:
        return "any"
    return "bool" if value_type == "bool" else "text" if value_type == "string" else "number"


def tag_outputs(
    name: str,
    window: WindowSpec | None,
    waveform: WaveformSpec | None,
    counter: CounterSpec | None,
) -> list[str]:
    """Feature names (after ``<tag>.``) a tag publishes; alarms may watch any of them."""
    out: list[str] = []
    if window is not None:
        out += list(window.stats)
    if waveform is not None:
        out += waveform.outputs()
    if counter is not None:
        out += counter.outputs()
    return out


def check_tag_processing(tag: Any) -> None:
    """Rules across a tag's processing keys (called from ``TagProcessing``)."""
    if tag.deadband is not None and tag.deadband_percent is not None:
        raise _key_error("deadband_percent", "give deadband or deadband_percent, not both")
    known = tag_outputs(tag.name, tag.window, tag.waveform, tag.counter)
    model = getattr(tag, "model", None)
    if model is not None:
        check_model(tag, model, known)
        known = [*known, *model.outputs]
    predicted = check_predict(tag, known)
    for i, alarm in enumerate(tag.alarms):
        if alarm.mode == "predicted":
            if alarm.value not in predicted:
                what = "its value" if alarm.value is None else repr(alarm.value)
                raise _key_error(
                    "alarms",
                    f"alarms.{i}.value: tag {tag.name} predicts nothing for {what}: add "
                    "predict: with that feature",
                )
            continue
        if alarm.value is None:
            if tag.waveform is not None and tag.waveform.length is None:
                raise _key_error(
                    "alarms",
                    f"alarms.{i}: a waveform's value is a list: watch a feature (value: rms...)",
                )
            continue
        stats = set(Stat.__args__)  # type: ignore[attr-defined]
        if alarm.value not in known and not (tag.window is None and alarm.value in stats):
            raise _key_error(
                "alarms",
                f"alarms.{i}.value: tag {tag.name} publishes no {alarm.value!r}"
                + (f" (it publishes: {', '.join(known)})" if known else ""),
            )


def check_model(tag: Any, model: ModelSpec, known: list[str]) -> None:
    """A model runs on a waveform tag: its inputs are the waveform or features the tag
    computes, its outputs names the tag does not publish already."""
    if tag.waveform is None:
        raise _key_error("model", "a model runs on a waveform: add waveform: to the tag")
    for name in model.inputs:
        if name != "waveform" and name not in known:
            raise _key_error(
                "model",
                f"model.inputs: tag {tag.name} computes no {name!r} (it computes: "
                f"{', '.join(known)})",
            )
    for name in model.outputs:
        if name in known:
            raise _key_error("model", f"model.outputs: {name!r} is already a feature of the tag")


def check_predict(tag: Any, known: list[str]) -> set[str | None]:
    """A tag's predictions: features it publishes, zones on velocity_rms, one per value.
    Returns the features predicted (None: the tag's value)."""
    seen: set[str | None] = set()
    stats = set(Stat.__args__)  # type: ignore[attr-defined]
    for i, spec in enumerate(getattr(tag, "predict", ())):
        where = f"predict.{i}" if len(tag.predict) > 1 else "predict"
        if spec.feature is None:
            if tag.waveform is not None and tag.waveform.length is None:
                raise _key_error(
                    "predict", f"{where}: a waveform's value is a list: predict a feature"
                )
        elif spec.feature not in known and not (tag.window is None and spec.feature in stats):
            raise _key_error(
                "predict",
                f"{where}.feature: tag {tag.name} publishes no {spec.feature!r}"
                + (f" (it publishes: {', '.join(known)})" if known else ""),
            )
        if spec.zone is not None and (tag.waveform is None or spec.feature != "velocity_rms"):
            raise _key_error(
                "predict", f"{where}.zone: zones apply to a waveform's velocity_rms feature"
            )
        if spec.feature in seen:
            raise _key_error("predict", f"{where}: {spec.prefix(tag.name)} is already predicted")
        seen.add(spec.feature)
    return seen


def check_scan_rates(device: Any) -> None:
    """Tags' scan groups exist, and the device reads tags at rates of their own at all."""
    for i, group in unknown_scan_groups(device):
        known = ", ".join(g.name for g in device.scan_groups) or "none"
        raise _key_error(
            "tags", f"tags.{i}.scan_group: no scan group {group!r} (scan_groups has: {known})"
        )
    refused = device.scan_rates_refused()
    if refused is not None and has_own_rates(device):
        raise _key_error("tags", f"every and scan_group are not possible here: {refused}")


def check_calculated(device: Any) -> None:
    """Calculated tags: names free, inputs known (the device's tags and the calculated tags
    before), types that fit (``agent.core.processing.expr.infer``)."""
    types: dict[str, ExprType] = {t.name: input_type(t.value_type()) for t in device.tags}
    for i, calc in enumerate(getattr(device, "calculated", ())):
        if calc.name in types:
            raise _key_error(
                "calculated", f"calculated.{i}.name: {calc.name!r} is already a tag of the device"
            )
        try:
            types[calc.name] = infer_expr(parse_expr(calc.expr), types)
        except ExprError as exc:
            raise _key_error("calculated", f"calculated.{i}.expr: {exc}") from None


def check_device_processing(device: Any, *, merged: bool = False) -> None:
    """Rules across a device's tags (called from ``DeviceProcessing``). The rules that name
    other tags wait for a device with a profile until its profile's tags are merged in: the
    config loader calls this again then with ``merged=True``."""
    names = {t.name for t in device.tags}
    complete = merged or device.profile is None
    if complete:
        check_scan_rates(device)
        check_calculated(device)
        names |= {c.name for c in getattr(device, "calculated", ())}
    state = device.state
    if state is not None:
        for reserved in ("state", "runtime"):
            if reserved in names:
                raise _key_error(
                    "state", f"a device with state: cannot have a tag named {reserved!r}"
                )
        if complete:
            for i, rule in enumerate(state.rules):
                for tag, _, _ in rule.conditions():
                    if tag not in names:
                        raise _key_error(
                            "state", f"rules.{i}.when: unknown tag {tag!r} of device {device.name}"
                        )
    if state is None:
        for tag in device.tags:
            if any(a.states is not None for a in getattr(tag, "alarms", ())):
                raise _key_error(
                    "tags", f"tag {tag.name}: an alarm with states needs the device's state:"
                )
            if any(p.when is not None for p in getattr(tag, "predict", ())):
                raise _key_error(
                    "tags", f"tag {tag.name}: a prediction with when needs the device's state:"
                )
    if complete:
        for tag in device.tags:
            wf = getattr(tag, "waveform", None)
            if wf is not None and wf.shaft_rpm_tag is not None and wf.shaft_rpm_tag not in names:
                raise _key_error(
                    "tags", f"tag {tag.name}: shaft_rpm_tag {wf.shaft_rpm_tag!r} is not a tag"
                )


# ------------------------------------------------------------- the keys, added to drivers' models


class TagProcessing(StrictModel):
    """The processing keys of a tag, added to every driver's tag model."""

    deadband: float | None = Field(
        default=None, ge=0, description="report by exception: publish only changes beyond this"
    )
    deadband_percent: float | None = Field(
        default=None, gt=0, le=100, description="deadband as a percentage of the last value"
    )
    max_silence: _PositiveDuration | None = Field(
        default=None, description="report by exception: publish anyway after this long"
    )
    window: WindowSpec | None = Field(default=None, description="aggregates over time windows")
    waveform: WaveformSpec | None = Field(default=None, description="waveform features")
    counter: CounterSpec | None = Field(default=None, description="parts or energy counter")
    alarms: list[AlarmSpec] = Field(default_factory=list, description="alarms on this tag")
    model: ModelSpec | None = Field(
        default=None, description="an ONNX model run on the waveform or on its features"
    )
    predict: Annotated[list[PredictSpec], BeforeValidator(_listed_specs)] = Field(
        default_factory=list,
        description="time to threshold of the tag's value or of its features (one mapping or "
        "a list)",
    )

    @model_validator(mode="after")
    def _check_processing(self) -> Any:
        check_tag_processing(self)
        return self


class DeviceProcessingKeys(StrictModel):
    """The processing keys of a device, added to every driver's device model."""

    processing: DeviceProcessing | None = Field(
        default=None, description="processing defaults for every tag of the device"
    )
    state: StateSpec | None = Field(default=None, description="machine state rules")
    calculated: list[CalculatedTag] = Field(
        default_factory=list,
        description="tags the agent computes from the device's tags with expr (apparent "
        "power, a unit conversion), each published like a tag the device read",
    )

    @model_validator(mode="after")
    def _check_processing(self) -> Any:
        check_device_processing(self)
        return self


class ProcessedTag(TagProcessing, TagBase):
    """A tag with the processing keys: every driver's tag model becomes a subclass of it (see
    ``processed_models``), so processing code is typed by it."""


def _check_expr(text: str) -> str:
    """Syntax and grammar at the value itself (types wait for the device's tags)."""
    try:
        parse_expr(text)
    except ExprError as exc:
        raise ValueError(str(exc)) from None
    return text


class CalculatedTag(ProcessedTag):
    """A tag computed by the agent from the device's other tags (``calculated:``), published
    like any tag; every processing key works on it. See ``agent.core.processing.calculated``."""

    expr: Annotated[str, AfterValidator(_check_expr)] = Field(
        description="the formula over the device's tags: + - * / // % **, < <= > >= == !=, "
        "and or not, min max abs round if; tag('name-with-dash') for names that are not "
        "identifiers"
    )

    @model_validator(mode="after")
    def _no_rate(self) -> CalculatedTag:
        for key in ("every", "scan_group"):
            if getattr(self, key) is not None:
                raise _key_error(
                    key, f"a calculated tag has no {key}: it is computed when its inputs are read"
                )
        return self


class ProcessedDevice(DeviceProcessingKeys, DeviceBase):
    """A device with the processing keys, whose tags have them too; like ``ProcessedTag``, the
    base of every driver's device model as the agent loads it."""

    tags: Sequence[ProcessedTag] = Field(default_factory=list)


def _tag_model(device_model: type[DeviceBase]) -> type[TagBase]:
    """The tag class a driver's device model lists (``tags: Sequence[X]``)."""
    annotation = device_model.model_fields["tags"].annotation
    args = get_args(annotation)
    tag = args[0] if args else annotation
    if not (isinstance(tag, type) and issubclass(tag, TagBase)):
        raise TypeError(f"{device_model.__name__}.tags does not list a TagBase subclass")
    return tag


@functools.cache
def processed_models(
    device_model: type[DeviceBase], profile_model: type[ProfileBase]
) -> tuple[type[DeviceBase], type[ProfileBase]]:
    """A driver's device and profile models with the processing keys added to the device and
    to each of its tags, under the driver's own class names (the schema's and the errors' names
    stay the driver's). The YAML is unchanged: the keys sit beside the driver's own.

    The driver's class comes first among the bases: pydantic takes an inherited field from the
    first base that has it, so the driver's narrowed keys (``driver: Literal[...]``) and a key
    it declares itself (OPC UA's ``deadband``, which it also hands the server) win. The keys
    are listed in the order of the class hierarchy from its root: the contract's, the processing
    keys (``ProcessedTag`` lists ``TagProcessing`` before ``TagBase`` for that), the driver's."""
    tag = _tag_model(device_model)
    processed_tag = (
        ProcessedTag
        if tag is TagBase
        else create_model(
            tag.__name__,
            __base__=(tag, ProcessedTag),
            __module__=tag.__module__,
            __doc__=tag.__doc__,
        )
    )
    tags: Any = (
        Sequence[processed_tag],  # type: ignore[valid-type]
        Field(default_factory=list, description=device_model.model_fields["tags"].description),
    )
    device: type[DeviceBase] = create_model(
        device_model.__name__,
        __base__=(ProcessedDevice,)
        if device_model is DeviceBase
        else (device_model, ProcessedDevice),
        __module__=device_model.__module__,
        __doc__=device_model.__doc__,
        tags=tags,
    )
    profile = create_model(
        profile_model.__name__,
        __base__=profile_model,
        __module__=profile_model.__module__,
        __doc__=profile_model.__doc__,
        tags=tags,
    )
    return device, profile
