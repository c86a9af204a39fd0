"""Trend fits for time-to-threshold: a robust linear fit and two robust growth curves (a level,
then from an onset exponential growth, or a power of the time since the onset), the best one
chosen by BIC, with the confidence band of the fitted curve from the delta method.

Why these: wear shows up as a slow drift (linear) or as a flat healthy level followed by an
accelerating rise (the two-stage bearing degradation curve). A defect that grows in proportion
to its size is exponential; one whose growth grows steadily with its age (a spall widening at a
constant pace, friction heat) is a power law, ``t**2`` for a quadratic. Each fits the other's
young fault poorly: an exponential fitted to a quadratic rise predicted it 30-44 % early. The
criterion (BIC: ``n·ln(RSS/n) + k·ln(n)``, ``k`` = 2 or 4) picks a curve only when its extra
parameters pay for themselves (lower by 2 than the line's); between the two curves (both k = 4)
the lower BIC is the published model, and the crossing comes from both curves' grids pooled
into one posterior, so the choice flipping between two near-equal fits from one hour to the
next does not make the countdown jump.

Robust: Huber weights (``3·s``, ``s`` from the median absolute deviation), refitted a few
times, so an odd hour (a process upset, a loose sensor) does not bend the trend.

Times are in days, relative to the last point (``t <= 0`` in the history): the numbers stay well
conditioned and ``exp`` cannot overflow on the history. Pure numpy; called off the event loop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from itertools import pairwise
from statistics import NormalDist
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[np.float64]
#: Huber's tuning constant, in robust standard deviations: a residual beyond it weighs less. Not
#: the textbook 1.345: wear makes the noise grow with the level (the pump's hourly medians scatter
#: three times as much at zone C as when healthy), and at 1.345 the latest, noisiest points were
#: discounted as outliers, the fit lagged behind the rise and zone C came an hour or two later
#: than predicted. 3 still discounts a wild reading.
HUBER = 3.0
#: Reweighting passes (the weights settle in two or three).
PASSES = 4
#: Growth rates tried by the exponential fit, per day: e-folding times from 1 hour to 2 years.
RATES: Array = np.geomspace(1 / 730.0, 24.0, 64)
#: Exponents tried by the power-law fit: from a straight rise after the onset (1) to 3.5. Higher
#: powers fit a young quadratic fault as well (with an earlier onset) and predict it early.
POWERS: Array = np.geomspace(1.0, 3.5, 32)
#: Onsets tried by the exponential and the power-law fits, evenly over the history.
ONSETS = 64
#: The exponential's growth must show on at least this many points, and grow by no more than
#: MAX_RECENT_GROWTH e-foldings over them.
GROWTH_POINTS = 12
MAX_RECENT_GROWTH = 1.0
#: (rate, onset) pairs evaluated at once.
CHUNK = 16


Model = Literal["linear", "exponential", "power"]
#: The curves' grid: shapes, onsets, c and a of each pair, its weight, its RSS, and 1 where the
#: pair is exponential (0: power law).
Posterior = tuple[Array, Array, Array, Array, Array, Array, Array]


def _growth(model: Model, shape: Array, dt: Array) -> Array:
    """The growth curve after the onset, 0 at it: ``exp(b·dt) - 1`` or ``dt**p`` (``dt >= 0``,
    shape b or p broadcast against dt)."""
    if model == "exponential":
        return np.expm1(np.minimum(shape * dt, 700.0))
    return np.power(dt, shape)


@dataclass(frozen=True)
class Fit:
    """A fitted curve, ``c + a·t`` (linear), ``c + a·(exp(b·(t - t0)) - 1)`` (exponential) or
    ``c + a·(t - t0)**p`` (power) after ``t0`` and ``c`` before, t in days from the last
    point, with the covariance of its parameters and its residual scale."""

    model: Model
    params: tuple[float, ...]  # (c, a), (c, a, b, t0) or (c, a, p, t0)
    cov: Array
    sigma: float  # robust residual standard deviation, units of the value
    bic: float
    points: int
    #: the curves: the (shape, t0) grid as a posterior: shapes, onsets, c and a of each pair,
    #: weights
    posterior: Posterior | None = None

    def value(self, t: Array) -> Array:
        if self.model == "linear":
            c, a = self.params
            return c + a * t
        c, a, k, t0 = self.params
        return c + a * _growth(self.model, np.full(1, k), np.maximum(t - t0, 0.0))

    def slope(self, t: float = 0.0) -> float:
        """Change per day at ``t``."""
        if self.model == "linear":
            return self.params[1]
        _, a, k, t0 = self.params
        if t <= t0:
            return 0.0
        if self.model == "exponential":
            return float(a * k * math.exp(min(k * (t - t0), 700.0)))
        return float(a * k * (t - t0) ** (k - 1.0))

    def _gradient(self, t: Array) -> Array:
        """d value / d params at each t: rows are times."""
        if self.model == "linear":
            return np.column_stack((np.ones_like(t), t))
        _, a, k, t0 = self.params
        after = t > t0
        dt = np.where(after, t - t0, 1.0)
        if self.model == "exponential":
            e = np.where(after, np.exp(np.minimum(k * dt, 700.0)), 0.0)
            return np.column_stack(
                (np.ones_like(t), np.where(after, e - 1.0, 0.0), a * dt * e, -a * k * e)
            )
        h = np.where(after, dt**k, 0.0)
        return np.column_stack(
            (np.ones_like(t), h, a * h * np.log(dt), np.where(after, -a * k * dt ** (k - 1), 0.0))
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
        _, a, k, t0 = self.params
        if t0 >= 0:
            return 0.0
        if self.model == "exponential":
            e = math.exp(-k * t0)  # d(a·b·e)/d(params)
            g = np.array([0.0, k * e, a * e * (1 - k * t0), -a * k * k * e])
        else:
            age = -t0  # d(a·p·age**(p-1))/d(params)
            g = np.array(
                [
                    0.0,
                    k * age ** (k - 1),
                    a * age ** (k - 1) * (1 + k * math.log(age)),
                    -a * k * (k - 1) * age ** (k - 2),
                ]
            )
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


def _grid(
    model: Model, t: Array, y: Array, w: Array, shape: Array, onset: Array
) -> tuple[Array, Array, Array]:
    """(c, a) by weighted least squares for every (shape, onset) pair (the closed form of the
    2x2 normal equations), and each pair's weighted residual sum of squares. In chunks of
    pairs, so a month of hourly points stays a few hundred kilobytes of temporaries."""
    c_all = np.empty(len(shape))
    a_all = np.empty(len(shape))
    rss_all = np.empty(len(shape))
    sw, swy, wy = float(w.sum()), float(w @ y), w * y
    log_dt, log_onset = t, math.nan
    for block in _blocks(model, onset):
        k, o = shape[block], onset[block]
        if model == "exponential":
            h = _growth(model, k[:, None], np.maximum(t[None, :] - o[:, None], 0.0))
        else:  # one onset: log(t - t0) once, then dt**p as exp(p·log(dt)), as fast as expm1
            if o[0] != log_onset:
                with np.errstate(divide="ignore"):
                    log_dt, log_onset = np.log(np.maximum(t - o[0], 0.0)), float(o[0])
            h = np.exp(k[:, None] * log_dt[None, :])
        swh, swhh, swhy = h @ w, (h * h) @ w, h @ wy
        det = sw * swhh - swh * swh
        ok = det > 1e-9 * np.maximum(sw * swhh, 1e-300)
        det = np.where(ok, det, 1.0)
        a = (sw * swhy - swh * swy) / det
        c = (swy - a * swh) / sw
        resid = y[None, :] - c[:, None] - a[:, None] * h
        c_all[block], a_all[block] = c, a
        rss_all[block] = np.where(ok, (resid * resid) @ w, np.inf)
    return c_all, a_all, rss_all


def _blocks(model: Model, onset: Array) -> list[slice]:
    """The pairs evaluated together: CHUNK at a time for the exponential; for the power law,
    CHUNK at a time within each run of one onset (``_fit_growth`` lays its pairs out onset by
    onset; ``np.power`` costs twice ``expm1``, ``exp`` of a shared log the same)."""
    if model == "exponential":
        return [slice(i, i + CHUNK) for i in range(0, len(onset), CHUNK)]
    bounds = [0, *(np.flatnonzero(np.diff(onset)) + 1).tolist(), len(onset)]
    return [slice(i, min(i + CHUNK, b)) for a, b in pairwise(bounds) for i in range(a, b, CHUNK)]


def fit_exponential(t: Array, y: Array) -> Fit:
    """A level, then exponential growth from an onset: ``c`` until ``t0``, then
    ``c + a·(exp(b·(t - t0)) - 1)`` (the two-stage model of bearing degradation: healthy, then
    a defect that grows the faster the larger it is). See ``_fit_growth``."""
    return _fit_growth("exponential", t, y)


def fit_power(t: Array, y: Array) -> Fit:
    """A level, then a power-law rise from an onset: ``c`` until ``t0``, then
    ``c + a·(t - t0)**p``, ``p`` from 1 (a steady rise that starts) to 3.5 (wear that accelerates
    as a polynomial of its age, not in proportion to its size). See ``_fit_growth``."""
    return _fit_growth("power", t, y)


def _fit_growth(model: Literal["exponential", "power"], t: Array, y: Array) -> Fit:
    """A level, then growth from an onset. (shape, t0) on a grid (growth rates or exponents, and
    onsets spread over the history; an onset before the first point is a curve already under
    way), (c, a) by weighted least squares for each pair, the weights following the best
    pair's residuals.

    The whole grid is kept as a posterior over (shape, t0), each pair weighing
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
    shapes = RATES if model == "exponential" else POWERS
    # The exponential's pairs shape by shape, the power law's onset by onset (see _blocks).
    if model == "exponential":
        shape_i, onset_i = np.divmod(np.arange(len(shapes) * len(onsets)), len(onsets))
    else:
        onset_i, shape_i = np.divmod(np.arange(len(shapes) * len(onsets)), len(shapes))
    shape, onset = shapes[shape_i], onsets[onset_i]
    # No more than MAX_RECENT_GROWTH e-foldings over the last GROWTH_POINTS points (the growth
    # rate now, times their span): a jump on the last few points fits a fast enough curve
    # perfectly and would predict the threshold within hours. The exponential: no more than
    # 30 e-foldings over the history either (no overflow); the power law's rate now is p/age.
    recent = max(-latest, 1e-9)
    if model == "exponential":
        keep = (shape * -onset <= 30.0) & (shape * recent <= MAX_RECENT_GROWTH)
    else:
        keep = shape * recent <= MAX_RECENT_GROWTH * np.maximum(-onset, 1e-9)
    shape, onset = shape[keep], onset[keep]
    # The weights settle on a quarter of the grid each way (a sixteenth of the work); the
    # whole grid is evaluated once, under the final weights.
    coarse = (onset_i[keep] % 4 == 0) & (shape_i[keep] % 4 == 0)
    if not coarse.any():
        coarse[:] = True
    for _ in range(PASSES):
        c_all, a_all, rss_all = _grid(model, t, y, w, shape[coarse], onset[coarse])
        best = int(np.argmin(rss_all))
        c, a = float(c_all[best]), float(a_all[best])
        hb = _growth(model, shape[coarse][best], np.maximum(t - onset[coarse][best], 0.0))
        w, sigma = _huber(y - c - a * hb)
    c_all, a_all, rss_all = _grid(model, t, y, w, shape, onset)  # under the final weights
    best = int(np.argmin(rss_all))
    c, a = float(c_all[best]), float(a_all[best])
    k, t0 = float(shape[best]), float(onset[best])
    rss = float(rss_all[best])
    weight = np.exp(-(rss_all - rss) / (2.0 * max(sigma, 1e-12) ** 2))
    weight /= weight.sum()
    fit = Fit(model, (c, a, k, t0), np.zeros((4, 4)), sigma, _bic(rss, len(y), 4), len(y))
    jac = fit._gradient(t)  # d/d(c, a, shape, t0)
    return Fit(
        model,
        fit.params,
        _cov(jac, w, sigma),
        sigma,
        fit.bic,
        len(y),
        (
            shape,
            onset,
            c_all,
            a_all,
            weight,
            rss_all,
            np.full(len(shape), float(model == "exponential")),
        ),
    )


def _pooled(exponential: Fit, power: Fit, sigma: float) -> Posterior:
    """Both curves' grids as one posterior, each pair weighing ``exp(-RSS/(2·s²))`` against the
    best pair of either."""
    assert exponential.posterior is not None and power.posterior is not None
    e, p = exponential.posterior, power.posterior
    rss = np.concatenate((e[5], p[5]))
    weight = np.exp(-(rss - rss.min()) / (2.0 * max(sigma, 1e-12) ** 2))
    kind = np.concatenate((np.ones(len(e[0])), np.zeros(len(p[0]))))
    return (
        np.concatenate((e[0], p[0])),
        np.concatenate((e[1], p[1])),
        np.concatenate((e[2], p[2])),
        np.concatenate((e[3], p[3])),
        weight / weight.sum(),
        rss,
        kind,
    )


def best_fit(t: Array, y: Array) -> Fit:
    """The linear, the exponential and the power-law fit, the lowest BIC wins; a curve must
    beat the line by 2 (ties: linear, the simpler)."""
    linear = fit_linear(t, y)
    if len(y) < 8:
        return linear
    exponential, power = fit_exponential(t, y), fit_power(t, y)
    curve = min((exponential, power), key=lambda f: f.bic)
    if not curve.bic < linear.bic - 2.0:
        return linear
    return replace(curve, posterior=_pooled(exponential, power, curve.sigma))


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
    method) does. The curves: the median and the ``1 - confidence`` quantile of the crossing
    times over the pooled posterior of (shape, t0), each pair's crossing solved in closed form
    (``t0 + ln(1 + (threshold - c)/a)/b`` or ``t0 + ((threshold - c)/a)**(1/p)``; a pair that
    never gets there counts as never)."""
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
    posterior: Posterior,
    threshold: float,
    horizon_days: float,
    confidence: float,
) -> Crossing:
    shape, onset, c, a, weight, _, kind = posterior
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        x = (threshold - c) / a
        days = onset + np.where(
            kind > 0, np.log1p(x) / shape, np.power(np.maximum(x, 0.0), 1.0 / shape)
        )
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
