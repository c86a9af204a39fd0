"""Trend fits for time-to-threshold: a robust linear fit and a robust exponential fit (a level,
then exponential growth from an onset), the better one chosen by BIC, with the confidence band
of the fitted curve from the delta method.

Why these two: wear shows up as a slow drift (linear) or as a flat healthy level followed by an
accelerating rise (the two-stage bearing degradation curve); the criterion only picks the
exponential when its extra parameters pay for themselves (BIC:
``n·ln(RSS/n) + 2k + 2k(k+1)/(n-k-1)``, ``k`` = 2 or 4, and it must be lower by 2).

Robust: Huber weights (``1.345·s``, ``s`` from the median absolute deviation), refitted a few
times, so an odd hour (a process upset, a loose sensor) does not bend the trend.

Times are in days, relative to the last point (``t <= 0`` in the history): the numbers stay well
conditioned and ``exp`` cannot overflow on the history. Pure numpy; called off the event loop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[np.float64]
#: Huber's tuning constant: 95 % efficiency on normal noise.
HUBER = 1.345
#: Reweighting passes (the weights settle in two or three).
PASSES = 4
#: Growth rates tried by the exponential fit, per day: e-folding times from 1 hour to 2 years.
RATES: Array = np.geomspace(1 / 730.0, 24.0, 64)
#: Onsets tried by the exponential fit, evenly over the history.
ONSETS = 64
#: The exponential's growth must show on at least this many points, and grow by no more than
#: MAX_RECENT_GROWTH e-foldings over them.
GROWTH_POINTS = 12
MAX_RECENT_GROWTH = 1.0
#: (rate, onset) pairs evaluated at once.
CHUNK = 16


@dataclass(frozen=True)
class Fit:
    """A fitted curve, ``c + a·t`` (linear) or ``c + a·(exp(b·(t - t0)) - 1)`` after ``t0`` and
    ``c`` before (exponential), t in days from the last point, with the covariance of its
    parameters and its residual scale."""

    model: Literal["linear", "exponential"]
    params: tuple[float, ...]  # (c, a) or (c, a, b, t0)
    cov: Array
    sigma: float  # robust residual standard deviation, units of the value
    bic: float
    points: int
    #: exponential: the (b, t0) grid as a posterior: rates, onsets, c and a of each pair, weights
    posterior: tuple[Array, Array, Array, Array, Array] | None = None

    def value(self, t: Array) -> Array:
        if self.model == "linear":
            c, a = self.params
            return c + a * t
        c, a, b, t0 = self.params
        return c + a * np.expm1(np.minimum(b * np.maximum(t - t0, 0.0), 700.0))

    def slope(self, t: float = 0.0) -> float:
        """Change per day at ``t``."""
        if self.model == "linear":
            return self.params[1]
        _, a, b, t0 = self.params
        if t <= t0:
            return 0.0
        return float(a * b * math.exp(min(b * (t - t0), 700.0)))

    def _gradient(self, t: Array) -> Array:
        """d value / d params at each t: rows are times."""
        if self.model == "linear":
            return np.column_stack((np.ones_like(t), t))
        _, a, b, t0 = self.params
        after = t > t0
        e = np.where(after, np.exp(np.minimum(b * np.maximum(t - t0, 0.0), 700.0)), 0.0)
        return np.column_stack(
            (np.ones_like(t), np.where(after, e - 1.0, 0.0), a * (t - t0) * e, -a * b * e)
        )

    def stderr(self, t: Array) -> Array:
        """Standard error of the fitted curve at each t (delta method)."""
        g = self._gradient(t)
        var: Array = np.einsum("ij,jk,ik->i", g, self.cov, g)
        return np.sqrt(np.maximum(var, 0.0))

    def slope_stderr(self) -> float:
        """Standard error of the slope at t = 0."""
        if self.model == "linear":
            return math.sqrt(max(float(self.cov[1, 1]), 0.0))
        _, a, b, t0 = self.params
        if t0 >= 0:
            return 0.0
        e = math.exp(-b * t0)
        g = np.array([0.0, b * e, a * e * (1 - b * t0), -a * b * b * e])  # d(a·b·e)/d(params)
        return math.sqrt(max(float(g @ self.cov @ g), 0.0))


def _huber(residuals: Array) -> tuple[Array, float]:
    """Huber weights and the robust scale of the residuals."""
    mad = float(np.median(np.abs(residuals - np.median(residuals))))
    sigma = 1.4826 * mad
    if sigma <= 0:
        sigma = float(np.std(residuals)) or 1e-12
    u = np.abs(residuals) / (HUBER * sigma)
    return np.where(u <= 1, 1.0, 1.0 / np.maximum(u, 1e-300)), sigma


def _bic(rss: float, n: int, k: int) -> float:
    rss = max(rss, 1e-300)
    return n * math.log(rss / n) + k * math.log(n)


def _cov(jac: Array, w: Array, sigma: float) -> Array:
    jtwj = jac.T @ (jac * w[:, None])
    try:
        return np.asarray(np.linalg.inv(jtwj) * sigma * sigma, dtype=np.float64)
    except np.linalg.LinAlgError:
        return np.asarray(np.linalg.pinv(jtwj) * sigma * sigma, dtype=np.float64)


def fit_linear(t: Array, y: Array) -> Fit:
    w = np.ones_like(y)
    sigma = 0.0
    x = np.column_stack((np.ones_like(t), t))
    params: Array = np.zeros(2)
    for _ in range(PASSES):
        sw = np.sqrt(w)
        params = np.asarray(np.linalg.lstsq(x * sw[:, None], y * sw, rcond=None)[0], np.float64)
        w, sigma = _huber(y - x @ params)
    rss = float(np.sum(w * (y - x @ params) ** 2))
    return Fit(
        "linear",
        (float(params[0]), float(params[1])),
        _cov(x, w, sigma),
        sigma,
        _bic(rss, len(y), 2),
        len(y),
    )


def _grid(t: Array, y: Array, w: Array, rate: Array, onset: Array) -> tuple[Array, Array, Array]:
    """(c, a) by weighted least squares for every (rate, onset) pair (the closed form of the
    2x2 normal equations), and each pair's weighted residual sum of squares. In chunks of
    pairs, so a month of hourly points stays a few hundred kilobytes of temporaries."""
    c_all = np.empty(len(rate))
    a_all = np.empty(len(rate))
    rss_all = np.empty(len(rate))
    sw, swy, wy = float(w.sum()), float(w @ y), w * y
    for i in range(0, len(rate), CHUNK):
        r, o = rate[i : i + CHUNK], onset[i : i + CHUNK]
        h = np.expm1(r[:, None] * np.maximum(t[None, :] - o[:, None], 0.0))
        swh, swhh, swhy = h @ w, (h * h) @ w, h @ wy
        det = sw * swhh - swh * swh
        ok = det > 1e-9 * np.maximum(sw * swhh, 1e-300)
        det = np.where(ok, det, 1.0)
        a = (sw * swhy - swh * swy) / det
        c = (swy - a * swh) / sw
        resid = y[None, :] - c[:, None] - a[:, None] * h
        c_all[i : i + CHUNK], a_all[i : i + CHUNK] = c, a
        rss_all[i : i + CHUNK] = np.where(ok, (resid * resid) @ w, np.inf)
    return c_all, a_all, rss_all


def fit_exponential(t: Array, y: Array) -> Fit:
    """A level, then exponential growth from an onset: ``c`` until ``t0``, then
    ``c + a·(exp(b·(t - t0)) - 1)`` (the two-stage model of bearing degradation: healthy, then
    a defect that grows the faster the larger it is). (b, t0) on a grid (growth rates, and
    onsets spread over the history; an onset before the first point is the plain
    ``c + a·exp(b·t)``), (c, a) by weighted least squares for each pair, the weights following
    the best pair's residuals.

    The whole grid is kept as a posterior over (b, t0), each pair weighing
    ``exp(-RSS/(2·s²))``: on a young fault a slow and a fast growth fit the points about equally
    well and predict very different crossings; the best pair alone jumps between them from one
    hour to the next, the posterior's median and quantiles do not (``crossing``)."""
    w = np.ones_like(y)
    sigma = 0.0
    # The latest onset leaves GROWTH_POINTS points of growth: a rise seen on three or four
    # points is noise as often as wear, and its extrapolation runs wild.
    latest = float(t[max(len(t) - GROWTH_POINTS, 0)])
    span = latest - float(t[0])
    onsets = np.concatenate(([t[0] - 1.0], t[0] + span * np.linspace(0.0, 1.0, ONSETS)))
    rate = np.repeat(RATES, len(onsets))
    onset = np.tile(onsets, len(RATES))
    # No more than 30 e-foldings over the history (no overflow), and no more than
    # MAX_RECENT_GROWTH over the last GROWTH_POINTS points: a jump on the last few points fits
    # a fast enough exponential perfectly and would predict the threshold within hours.
    recent = max(-latest, 1e-9)
    keep = (rate * -onset <= 30.0) & (rate * recent <= MAX_RECENT_GROWTH)
    rate, onset = rate[keep], onset[keep]
    # The weights settle on a quarter of the grid each way (a sixteenth of the work); the
    # whole grid is evaluated once, under the final weights.
    coarse = (np.arange(len(rate)) % 4 == 0) & (np.searchsorted(RATES, rate) % 4 == 0)
    for _ in range(PASSES):
        c_all, a_all, rss_all = _grid(t, y, w, rate[coarse], onset[coarse])
        best = int(np.argmin(rss_all))
        c, a = float(c_all[best]), float(a_all[best])
        hb = np.expm1(rate[coarse][best] * np.maximum(t - onset[coarse][best], 0.0))
        w, sigma = _huber(y - c - a * hb)
    c_all, a_all, rss_all = _grid(t, y, w, rate, onset)  # under the final weights
    best = int(np.argmin(rss_all))
    c, a = float(c_all[best]), float(a_all[best])
    b, t0 = float(rate[best]), float(onset[best])
    hb = np.expm1(b * np.maximum(t - t0, 0.0))
    rss = float(rss_all[best])
    weight = np.exp(-(rss_all - rss) / (2.0 * max(sigma, 1e-12) ** 2))
    weight /= weight.sum()
    grow = np.where(t > t0, hb + 1.0, 0.0)
    jac = np.column_stack(
        (np.ones_like(t), hb, a * (t - t0) * grow, -a * b * grow)
    )  # d/d(c, a, b, t0)
    return Fit(
        "exponential",
        (c, a, b, t0),
        _cov(jac, w, sigma),
        sigma,
        _bic(rss, len(y), 4),
        len(y),
        (rate, onset, c_all, a_all, weight),
    )


def best_fit(t: Array, y: Array) -> Fit:
    """The linear and the exponential fit, the lower BIC wins (ties: linear, the simpler)."""
    linear = fit_linear(t, y)
    if len(y) < 8:
        return linear
    exponential = fit_exponential(t, y)
    return exponential if exponential.bic < linear.bic - 2.0 else linear


@dataclass(frozen=True)
class Crossing:
    """When the fitted curve reaches the threshold, in hours from the last point."""

    hours: float | None  # the fitted curve; None when not within the horizon
    hours_low: float | None  # the curve's confidence bound towards the threshold


def crossing(
    fit: Fit, threshold: float, horizon_days: float, confidence: float, rising: bool = True
) -> Crossing:
    """First time within ``horizon_days`` the fit reaches ``threshold``, and the earlier time at
    ``confidence``, for a value ``rising`` to the threshold (or falling to it). 0 when the
    fitted value is beyond it already; no crossing when the trend now does not head for it
    with that confidence (flat, reversing, or not distinguishable from noise).

    Linear: where the line meets the threshold, and where its one-sided confidence band (delta
    method) does. Exponential: the median and the ``1 - confidence`` quantile of the crossing
    times over the posterior of (b, t0), each pair's crossing solved in closed form
    (``t0 + ln(1 + (threshold - c)/a)/b``; a pair that never gets there counts as never)."""
    z = NormalDist().inv_cdf(confidence)
    now = float(fit.value(np.zeros(1))[0])
    if (now >= threshold) if rising else (now <= threshold):
        return Crossing(0.0, 0.0)
    slope, se = fit.slope(), fit.slope_stderr()
    heading = slope > z * se if rising else slope < -z * se
    if not heading:
        return Crossing(None, None)
    if fit.posterior is not None:
        return _posterior_crossing(fit.posterior, threshold, horizon_days, confidence)
    t = np.linspace(0.0, horizon_days, 2049)
    centre = fit.value(t)
    band = fit.stderr(t) * z
    bound = centre + band if rising else centre - band
    hours = _first(t, centre, threshold, rising)
    if hours is None:
        return Crossing(None, None)
    return Crossing(hours, _first(t, bound, threshold, rising))


def _posterior_crossing(
    posterior: tuple[Array, Array, Array, Array, Array],
    threshold: float,
    horizon_days: float,
    confidence: float,
) -> Crossing:
    rate, onset, c, a, weight = posterior
    with np.errstate(divide="ignore", invalid="ignore"):
        x = (threshold - c) / a
        days = onset + np.log1p(x) / rate
    days = np.where((x > 0) & np.isfinite(days), np.maximum(days, 0.0), np.inf)
    order = np.argsort(days)
    cumulative = np.cumsum(weight[order])

    def quantile(q: float) -> float:
        i = min(int(np.searchsorted(cumulative, q)), len(order) - 1)
        return float(days[order[i]])

    median, low = quantile(0.5), quantile(1.0 - confidence)
    if not median <= horizon_days:
        return Crossing(None, None)
    return Crossing(median * 24.0, low * 24.0)


def _first(t: Array, curve: Array, threshold: float, rising: bool) -> float | None:
    """Hours until ``curve`` first reaches ``threshold`` (linear between grid points)."""
    reached = curve >= threshold if rising else curve <= threshold
    if not reached.any():
        return None
    i = int(np.argmax(reached))
    if i == 0:
        return 0.0
    y0, y1 = float(curve[i - 1]), float(curve[i])
    frac = (threshold - y0) / (y1 - y0) if y1 != y0 else 1.0
    return (float(t[i - 1]) + frac * float(t[i] - t[i - 1])) * 24.0


def figures(fit: Fit) -> dict[str, Any]:
    """The fit as evidence in an event: model, parameters and scale, rounded."""
    return {
        "model": fit.model,
        "params": [float(f"{p:.6g}") for p in fit.params],
        "sigma": float(f"{fit.sigma:.4g}"),
        "points": fit.points,
    }
