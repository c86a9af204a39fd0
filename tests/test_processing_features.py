"""Waveform features against signals whose answers are known analytically."""

from __future__ import annotations

import math

import numpy as np
import pytest

from agent.core.processing.config import BearingSpec, WaveformSpec, ZoneSpec
from agent.core.processing.features import compute, fault_frequencies, iso_zone

FS = 10240.0
N = 4096
T = np.arange(N) / FS
ALL = [
    "rms",
    "peak",
    "peak_to_peak",
    "crest_factor",
    "kurtosis",
    "skewness",
    "dominant_frequency",
]


def spec(**kw: object) -> WaveformSpec:
    return WaveformSpec.model_validate({"sample_rate": FS, "features": ALL, **kw})


@pytest.mark.parametrize(("amplitude", "freq"), [(1.0, 100.0), (2.5, 125.0), (0.01, 1000.0)])
def test_a_sine_has_rms_a_over_root2_crest_root2_kurtosis_1_5(
    amplitude: float, freq: float
) -> None:
    x = amplitude * np.sin(2 * np.pi * freq * T) + 5.0  # a DC offset is not vibration
    f = compute(x, spec())
    tol = 2e-3
    assert f["rms"] == pytest.approx(amplitude / math.sqrt(2), rel=tol)
    assert f["peak"] == pytest.approx(amplitude, rel=tol)
    assert f["peak_to_peak"] == pytest.approx(2 * amplitude, rel=tol)
    assert f["crest_factor"] == pytest.approx(math.sqrt(2), rel=tol)
    assert f["kurtosis"] == pytest.approx(1.5, rel=tol)
    assert f["skewness"] == pytest.approx(0.0, abs=1e-2)
    assert f["dominant_frequency"] == pytest.approx(freq, abs=FS / N / 4)  # a quarter bin


@pytest.mark.parametrize("freq", [123.4, 318.75, 2001.1])
def test_dominant_frequency_between_bins(freq: float) -> None:
    x = np.sin(2 * np.pi * freq * T) + 0.2 * np.sin(2 * np.pi * 50 * T)
    assert compute(x, spec())["dominant_frequency"] == pytest.approx(freq, abs=FS / N / 4)


def test_white_noise_kurtosis_is_3_and_skewness_0() -> None:
    rng = np.random.default_rng(7)
    x = rng.standard_normal(N * 8)
    f = compute(x, spec())
    assert f["kurtosis"] == pytest.approx(3.0, abs=0.15)
    assert f["skewness"] == pytest.approx(0.0, abs=0.05)
    assert f["rms"] == pytest.approx(1.0, rel=0.02)


def test_a_square_wave_has_crest_factor_1_and_kurtosis_1() -> None:
    x = np.sign(np.sin(2 * np.pi * 40 * T + 0.1))
    f = compute(x, spec())
    assert f["crest_factor"] == pytest.approx(1.0, rel=0.01)
    assert f["kurtosis"] == pytest.approx(1.0, rel=0.01)


def test_band_rms_is_the_rms_of_the_tone_inside_the_band() -> None:
    x = 3.0 * np.sin(2 * np.pi * 200 * T) + 1.0 * np.sin(2 * np.pi * 2000 * T)
    f = compute(
        x,
        spec(features=["bands", "rms"], bands={"low": (100, 300), "high": (1500, 2500)}),
    )
    assert f["band_low"] == pytest.approx(3.0 / math.sqrt(2), rel=1e-3)
    assert f["band_high"] == pytest.approx(1.0 / math.sqrt(2), rel=1e-3)
    # Parseval: the bands' energies add up to the whole signal's
    assert f["band_low"] ** 2 + f["band_high"] ** 2 == pytest.approx(f["rms"] ** 2, rel=1e-3)


def test_velocity_rms_integrates_acceleration() -> None:
    # a = A sin(2πft) m/s² → v = A/(2πf) m/s peak, RMS that over √2, in mm/s
    a, freq = 5.0, 80.0
    x = a * np.sin(2 * np.pi * freq * T)
    f = compute(x, spec(features=["velocity_rms", "iso_zone"], quantity="acceleration_ms2"))
    expected = a / (2 * np.pi * freq) / math.sqrt(2) * 1000
    assert f["velocity_rms"] == pytest.approx(expected, rel=5e-3)
    assert f["iso_zone"] == iso_zone(expected, ZoneSpec())
    # the same in g is 9.80665 times as much
    g = compute(x / 9.80665, spec(features=["velocity_rms"], quantity="acceleration_g"))
    assert g["velocity_rms"] == pytest.approx(expected, rel=5e-3)


def test_velocity_rms_ignores_what_is_outside_10_to_1000_hz() -> None:
    x = 1.0 * np.sin(2 * np.pi * 5 * T) + 1.0 * np.sin(2 * np.pi * 3000 * T)
    f = compute(x, spec(features=["velocity_rms"], quantity="velocity_mms"))
    assert f["velocity_rms"] < 0.05


@pytest.mark.parametrize(
    ("velocity", "zone"), [(0.5, "A"), (1.12, "B"), (2.0, "B"), (2.8, "C"), (7.0, "C"), (7.1, "D")]
)
def test_iso_10816_class_ii_zones(velocity: float, zone: str) -> None:
    assert iso_zone(velocity, ZoneSpec(machine_class="II")) == zone


def test_own_zone_limits_override_the_class() -> None:
    zones = ZoneSpec(limits=(2.3, 4.5, 7.1))  # ISO 20816-3 group 2, flexible foundation
    assert [iso_zone(v, zones) for v in (2.0, 3.0, 5.0, 8.0)] == ["A", "B", "C", "D"]


def impact_train(rate: float, resonance: float = 3000.0, noise: float = 0.05) -> np.ndarray:
    rng = np.random.default_rng(3)
    x = noise * rng.standard_normal(N)
    for t0 in np.arange(0.0013, T[-1], 1 / rate):
        tail = t0 <= T
        tau = T[tail] - t0
        x[tail] += np.exp(-tau * 600) * np.sin(2 * np.pi * resonance * tau)
    return x


@pytest.mark.parametrize("rate", [37.0, 87.0, 151.3])
def test_an_impact_trains_envelope_spectrum_peaks_at_its_repetition_rate(rate: float) -> None:
    f = compute(impact_train(rate), spec(features=["envelope", "dominant_frequency"]))
    assert f["envelope_peak_frequency"] == pytest.approx(rate, abs=FS / N / 2)
    # while the raw spectrum peaks at the resonance the impacts ring, nowhere near the rate
    assert f["dominant_frequency"] == pytest.approx(3000.0, rel=0.05)


def test_bearing_fault_frequencies_from_geometry() -> None:
    # A 6205-like bearing at 1797 rpm: the textbook BPFO 3.585, BPFI 5.415, BSF 2.357, FTF 0.398
    bearing = BearingSpec(balls=9, ball_diameter=7.94, pitch_diameter=39.04)
    freqs = fault_frequencies(spec(bearing=bearing, shaft_rpm=1797.0), 1797.0)
    shaft = 1797.0 / 60
    assert freqs["bpfo"] / shaft == pytest.approx(3.585, abs=2e-3)
    assert freqs["bpfi"] / shaft == pytest.approx(5.415, abs=2e-3)
    assert freqs["bsf"] / shaft == pytest.approx(2.357, abs=2e-3)
    assert freqs["ftf"] / shaft == pytest.approx(0.398, abs=2e-3)


def test_envelope_amplitude_at_bpfo_stands_out_only_with_a_fault() -> None:
    bearing = BearingSpec(balls=9, ball_diameter=7.94, pitch_diameter=39.04)
    s = spec(features=["envelope"], bearing=bearing, shaft_rpm=1797.0)
    bpfo = fault_frequencies(s, 1797.0)["bpfo"]
    faulty = compute(impact_train(bpfo), s, 1797.0)
    healthy = compute(np.random.default_rng(1).normal(0, 0.05, N), s, 1797.0)
    assert faulty["bpfo"] > 10 * healthy["bpfo"]
    assert faulty["bpfo"] > 3 * faulty["bpfi"]
    assert faulty["bpfo"] > 3 * faulty["ftf"]


def test_a_flat_waveform_gives_zeros_not_nans() -> None:
    f = compute([1.0] * 64, spec())
    assert all(isinstance(v, float) and math.isfinite(v) for v in f.values())
    assert f["rms"] == 0.0
