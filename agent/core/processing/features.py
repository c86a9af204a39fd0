"""Waveform features with numpy: statistics, spectrum, bands, velocity severity, envelope.

Pure functions of one waveform, so they can run on a worker thread (numpy releases the GIL in its
FFTs and reductions) and be tested against signals whose answers are known analytically. Every
feature is computed on the waveform minus its mean: a sensor's DC offset (or an unsigned ADC's
mid-scale) is not vibration.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.core.processing.config import WaveformSpec, ZoneSpec
from agent.core.processing.values import FeatureValue

G = 9.80665  # m/s² per g
Array = npt.NDArray[np.float64]


def fault_frequencies(spec: WaveformSpec, shaft_rpm: float | None) -> dict[str, float]:
    """BPFO, BPFI, BSF and FTF in Hz for this shaft speed (empty without bearing or speed)."""
    if spec.bearing is None or shaft_rpm is None or shaft_rpm <= 0:
        return {}
    shaft_hz = shaft_rpm / 60.0
    return {name: order * shaft_hz for name, order in spec.bearing.orders().items()}


def iso_zone(velocity_rms: float, zones: ZoneSpec) -> str:
    """A (new machine), B (unrestricted long-term operation), C (restricted), D (damage)."""
    ab, bc, cd = zones.effective()
    if velocity_rms < ab:
        return "A"
    if velocity_rms < bc:
        return "B"
    if velocity_rms < cd:
        return "C"
    return "D"


def _band_mask(n: int, fs: float, lo: float, hi: float) -> npt.NDArray[np.bool_]:
    freqs = np.fft.rfftfreq(n, 1.0 / fs)
    return (freqs >= lo) & (freqs <= hi)


def _one_sided_power(spectrum: npt.NDArray[np.complex128], n: int) -> Array:
    """Each rfft bin's share of the mean square (Parseval): their sum is the signal's variance."""
    power: Array = np.abs(spectrum) ** 2 / (n * n)
    power[1:] *= 2.0
    if n % 2 == 0:
        power[-1] /= 2.0  # the Nyquist bin has no mirror image
    return power


def _peak_frequency(magnitude: Array, fs: float, n: int, first_bin: int = 1) -> float:
    """Frequency of the largest bin at or above ``first_bin``, refined between bins by a parabola
    through the peak and its neighbours (error well under one bin for a clean tone)."""
    if len(magnitude) <= first_bin:
        return 0.0
    k = int(np.argmax(magnitude[first_bin:])) + first_bin
    delta = 0.0
    if 0 < k < len(magnitude) - 1:
        a, b, c = magnitude[k - 1], magnitude[k], magnitude[k + 1]
        denom = a - 2 * b + c
        if denom != 0:
            delta = float(0.5 * (a - c) / denom)
    return (k + delta) * fs / n


def envelope_spectrum(x: Array, fs: float, band: tuple[float, float]) -> Array:
    """Amplitude spectrum of the envelope of ``x`` band-passed to ``band``.

    Band-pass and Hilbert transform in one step: keep only the positive frequencies inside the
    band (doubled), so the inverse FFT is the analytic signal of the band-passed waveform, and
    its magnitude the envelope. Impacts that ring a resonance show up in the envelope's spectrum
    at their repetition rate, far below the resonance itself: that is how a bearing fault is seen
    long before it shows in the overall RMS.
    """
    n = len(x)
    spectrum = np.fft.fft(x)
    freqs = np.fft.fftfreq(n, 1.0 / fs)
    keep = (freqs >= band[0]) & (freqs <= band[1])
    analytic = np.fft.ifft(np.where(keep, 2.0 * spectrum, 0.0))
    env = np.abs(analytic)
    env -= env.mean()
    window = np.hanning(n)
    result: Array = np.abs(np.fft.rfft(env * window)) * 2.0 / window.sum()
    return result


def compute(
    samples: Any, spec: WaveformSpec, shaft_rpm: float | None = None
) -> dict[str, FeatureValue]:
    """Every feature ``spec`` asks for, by output name (``rms``, ``band_low``, ``bpfo``...)."""
    x: Array = np.asarray(samples, dtype=np.float64)
    n = len(x)
    fs = spec.sample_rate
    out: dict[str, FeatureValue] = {}
    if n < 2:
        return out
    x = x - x.mean()
    wanted = set(spec.features)
    std = float(np.sqrt(np.mean(x * x)))
    if "rms" in wanted:
        out["rms"] = std
    if "peak" in wanted:
        out["peak"] = float(np.max(np.abs(x)))
    if "peak_to_peak" in wanted:
        out["peak_to_peak"] = float(np.ptp(x))
    if "crest_factor" in wanted:
        out["crest_factor"] = float(np.max(np.abs(x))) / std if std > 0 else 0.0
    if "kurtosis" in wanted:  # Pearson's (not excess): 3 for Gaussian noise, 1.5 for a sine
        out["kurtosis"] = float(np.mean(x**4)) / std**4 if std > 0 else 0.0
    if "skewness" in wanted:
        out["skewness"] = float(np.mean(x**3)) / std**3 if std > 0 else 0.0
    spectrum: npt.NDArray[np.complex128] | None = None
    if wanted & {"dominant_frequency"}:
        window = np.hanning(n)
        out["dominant_frequency"] = _peak_frequency(np.abs(np.fft.rfft(x * window)), fs, n)
    if wanted & {"bands", "velocity_rms", "iso_zone"}:
        spectrum = np.fft.rfft(x)
    if "bands" in wanted and spectrum is not None:
        power = _one_sided_power(spectrum, n)
        for name, (lo, hi) in spec.bands.items():
            out[f"band_{name}"] = float(np.sqrt(power[_band_mask(n, fs, lo, hi)].sum()))
    if wanted & {"velocity_rms", "iso_zone"} and spectrum is not None:
        velocity = velocity_rms(spectrum, n, spec)
        if "velocity_rms" in wanted:
            out["velocity_rms"] = velocity
        if "iso_zone" in wanted:
            out["iso_zone"] = iso_zone(velocity, spec.zones)
    if "envelope" in wanted:
        band = spec.envelope_band or (fs / 8.0, fs / 2.5)
        env = envelope_spectrum(x, fs, band)
        first = max(1, math.ceil(2.0 * n / fs))  # ignore below 2 Hz: the envelope's slow drift
        out["envelope_peak_frequency"] = _peak_frequency(env, fs, n, first)
        for name, f in fault_frequencies(spec, shaft_rpm).items():
            lo, hi = f * (1 - spec.tolerance), f * (1 + spec.tolerance)
            k_lo = max(1, min(math.floor(lo * n / fs), round(f * n / fs) - 1))
            k_hi = min(len(env) - 1, max(math.ceil(hi * n / fs), round(f * n / fs) + 1))
            out[name] = float(env[k_lo : k_hi + 1].max()) if k_hi >= k_lo else 0.0
    return out


def velocity_rms(spectrum: npt.NDArray[np.complex128], n: int, spec: WaveformSpec) -> float:
    """Velocity RMS in mm/s within ``velocity_band``: acceleration integrated in the frequency
    domain (divided by j·2πf), which is what ISO 10816 severity is judged on."""
    fs = spec.sample_rate
    lo, hi = spec.effective_velocity_band()
    mask = _band_mask(n, fs, max(lo, fs / n), hi)  # never divide by the DC bin
    power = _one_sided_power(spectrum, n)[mask]
    if spec.quantity == "velocity_mms":
        return float(np.sqrt(power.sum()))
    to_ms2 = G if spec.quantity == "acceleration_g" else 1.0
    freqs = np.fft.rfftfreq(n, 1.0 / fs)[mask]
    velocity_power = power * (to_ms2 / (2 * np.pi * freqs)) ** 2  # (m/s)²
    return float(np.sqrt(velocity_power.sum()) * 1000.0)
