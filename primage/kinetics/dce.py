"""Dynamic contrast-enhanced MR: semi-quantitative maps and signal-to-concentration conversion.

Units: times in s; relative enhancement RE(t) = S(t) / S_baseline - 1 is a fraction
(0.5 = 50 %); iAUC60 in s (RE x s); slopes in 1/min (RE per minute).

Method, for every voxel at once:

1. Baseline: the mean of the first N frames. N is given, or found automatically as the
   frames up to the bolus arrival of the mean curve of all fitted voxels (the mask).
2. Bolus arrival time (BAT), from each voxel's RE curve. Onset model, for every frame
   interval (t_j, t_j+1]: RE = a (the baseline level) on the frames up to t_j and a
   quadratic q(t) on the frames after it (at least ONSET_FRAMES), fitted by least squares
   to the frames up to the end of the onset (ONSET_EXTRA_FRAMES after the last frame below
   ONSET_LEVEL of the rise, before the peak); the interval with the least residual holds
   the arrival. Inside it BAT is where q(t) = a (a continuous onset); where q(t_j) > a the
   curve steps up somewhere in the interval, which the frames cannot tell: BAT = t_j +
   share x (t_j+1 - t_j) / 2, share = (q(t_j) - a) / (q(t_j+1) - a) (a pure step: the
   middle). Where t_j itself is above a by more than 3 noise SDs and CONVEX_FRACTION of
   the rise (a convex start such as a gamma variate), BAT moves back an interval (up to
   three), to where the line through the first two enhanced frames meets a. The fit is
   repeated once on a window that ends ONSET_REFINE_S after BAT, where the curve rises by
   REFINE_SNR noise SDs in it. Under noise, the continuous knot model (a before the knot,
   a + b u + c u^2 after it, knots every quarter of the shortest frame interval; Cheong et
   al., Phys Med Biol 2003;48:N83) replaces the step model unless the step lowers the
   residual by STEP_EVIDENCE noise variances or the knot lies after a clearly enhanced
   frame (the test above). Arrivals later than 60 s after the mean-curve arrival are not
   considered; voxels whose peak RE is below 5 noise SDs (non-enhancing) take the
   mean-curve arrival, which follows the same definition (its noise from
   ``curve_noise``). All voxels are solved at once: prefix / suffix sums over the frames,
   and matrix products with the knot basis.
3. iAUC60: the integral of RE from BAT to BAT + 60 s over the piecewise-linear curve
   through (BAT, onset value) and the frames after BAT, interpolated at BAT + 60 s (NaN
   when the window passes the last frame); the onset value is a, or the top of the step
   (with the mean-curve arrival: the curve interpolated at BAT). Its standard error
   propagates the signal noise SD (pooled from the baseline frames of all fitted voxels)
   through the integral and the baseline, with BAT and the onset value held fixed.
4. Time to peak: peak time (the frame of maximum RE at or after BAT) minus BAT; peak
   enhancement: the maximum RE; wash-in: (RE_peak - RE(BAT)) / (t_peak - BAT); wash-out:
   (RE_last - RE_peak) / (t_last - t_peak) (NaN when the peak is the last frame); signal
   enhancement ratio SER = RE(BAT + ``ser_early_s``) / RE_last.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk
from scipy import special

from primage.errors import PrimageInputError
from primage.kinetics.fitting import inverse_small
from primage.kinetics.series import (
    KineticsWarning,
    VoxelSeries,
    load_series,
    map_chunks,
    report,
)
from primage.kinetics.values import check_frame_times

#: Output maps of the semi-quantitative analysis and their units.
SEMI_QUANTITATIVE_UNITS = {
    "iauc60": "s (relative enhancement x s)",
    "ttp": "s (from bolus arrival)",
    "peak_enhancement": "fraction (S/S0 - 1)",
    "bolus_arrival": "s (frame time scale)",
    "wash_in": "1/min (relative enhancement per minute)",
    "wash_out": "1/min (relative enhancement per minute)",
    "ser": "ratio",
}
IAUC_WINDOW_S = 60.0


# --- bolus arrival ----------------------------------------------------------------------

#: Frames the onset polynomial needs after the arrival interval (3 coefficients + 1 residual).
ONSET_FRAMES = 3
#: Fraction of the rise (first frame to peak) at which the onset window ends.
ONSET_LEVEL = 0.5
#: Frames kept after the first frame past ONSET_LEVEL.
ONSET_EXTRA_FRAMES = 1
#: Refinement: the onset window ends this long (s) after the first arrival.
ONSET_REFINE_S = 10.0
#: A frame above the baseline by this fraction of the rise is enhanced (convex starts);
#: below it, the smooth tails of a noise-free curve (e.g. a Parker AIF) count as baseline.
CONVEX_FRACTION = 0.01
#: Rise (noise SDs) over the refinement window needed to refine.
REFINE_SNR = 20.0
#: Residual reduction (in noise variances) that a step must bring to be kept.
STEP_EVIDENCE = 4.0


def knot_grid(times: np.ndarray, last: float) -> np.ndarray:
    """Candidate arrival times: every quarter of the shortest frame interval, t0..last (s)."""
    step = float(np.min(np.diff(times))) / 4.0
    last = min(max(last, times[0]), times[-2])
    return times[0] + step * np.arange(int(np.floor((last - times[0]) / step + 1e-9)) + 1)


def fit_arrival(curves: np.ndarray, times: np.ndarray, knots: np.ndarray, window: np.ndarray):
    """Linear-quadratic knot fit of every curve: (arrival time (n,), RSS (n,)).

    ``curves`` (n, T), ``window`` (n, T) bool: the frames each fit may use (up to the
    peak). The normal equations of all knots are built with matrix products against the
    knot basis u^p (voxel-independent), then solved in closed form.
    """
    # u in units of the series length: the normal equations stay well conditioned.
    u = np.maximum(times[None, :] - knots[:, None], 0.0) / (times[-1] - times[0])  # (K, T)
    w = window.astype(float)
    wy = w * curves
    sums = [w.sum(axis=1)[:, None]] + [w @ (u**p).T for p in range(1, 5)]  # (n, K)
    rhs = [wy.sum(axis=1)[:, None]] + [wy @ (u**p).T for p in range(1, 3)]
    normal = np.empty(sums[1].shape + (3, 3))
    for i in range(3):
        for j in range(3):
            normal[..., i, j] = sums[i + j]
    inverse = inverse_small(normal)
    vector = np.stack(np.broadcast_arrays(*rhs), axis=-1)  # (n, K, 3)
    beta = np.einsum("nkij,nkj->nki", inverse, vector)
    rss = (wy * curves).sum(axis=1)[:, None] - np.einsum("nki,nki->nk", beta, vector)
    # A knot needs at least two frames after it inside the window, and one at or before it.
    after = w @ (u > 0).T
    before = w @ (u == 0).T
    rss = np.where((after >= 2) & (before >= 1) & np.isfinite(rss), rss, np.inf)
    best = np.argmin(rss, axis=1)
    arrival = knots[best]
    best_rss = rss[np.arange(rss.shape[0]), best]
    arrival = np.where(np.isfinite(best_rss), arrival, np.nan)
    return arrival, best_rss


def onset_window_end(curves: np.ndarray) -> np.ndarray:
    """Last frame (n,) of each curve's onset window: ONSET_EXTRA_FRAMES after the last frame
    before the peak that is below ONSET_LEVEL of the rise (first frame to peak).

    The last such frame, not the first above the level, so that baseline noise crossing
    the level does not end the window early."""
    curves = np.atleast_2d(curves)
    count = curves.shape[1]
    frame = np.arange(count)
    rows = np.arange(curves.shape[0])
    peak_frame = np.argmax(curves, axis=1)
    start = curves[:, 0]
    level = start + ONSET_LEVEL * (curves[rows, peak_frame] - start)
    below = (curves < level[:, None]) & (frame[None, :] < peak_frame[:, None])
    last_below = np.where(below.any(axis=1), count - 1 - np.argmax(below[:, ::-1], axis=1), 0)
    return np.minimum(last_below + 1 + ONSET_EXTRA_FRAMES, count - 1)


def _suffix(values: np.ndarray) -> np.ndarray:
    """Sum over the frames after j, for every j: (n, T), 0 for the last frame."""
    total = np.cumsum(values[:, ::-1], axis=1)[:, ::-1]
    return np.concatenate([total[:, 1:], np.zeros((values.shape[0], 1))], axis=1)


def fit_onset(curves: np.ndarray, times: np.ndarray, end: np.ndarray, latest, noise=0.0):
    """Onset model fitted to the frames 0..end of each curve: (arrival (n,), onset value (n,)).

    For every interval (t_j, t_j+1] the model is a constant a on the frames 0..j and a
    quadratic q(t) on the frames j+1..end (at least ONSET_FRAMES); the interval with the
    least residual sum of squares wins. Within it, the arrival is the time where q(t) = a
    (the onset is continuous there); where q(t_j) > a the curve jumps (a step) and the
    arrival is t_j, the last frame at baseline. The onset value is q at the arrival: a, or
    the top of the step. Intervals starting after ``latest`` (s) are not considered. All
    sums are prefix / suffix sums over the frames, so every voxel is solved at once.
    """
    curves = np.atleast_2d(curves)
    n, count = curves.shape
    frame = np.arange(count)
    inside = (frame[None, :] <= end[:, None]).astype(float)
    y = inside * np.where(np.isfinite(curves), curves, 0.0)
    centre, scale = 0.5 * (times[0] + times[-1]), 0.5 * (times[-1] - times[0])
    tau = (times - centre) / scale  # conditioning of the quadratic
    before_count = np.cumsum(inside, axis=1)
    before_sum = np.cumsum(y, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        level = before_sum / before_count
        rss = np.cumsum(y * y, axis=1) - before_sum * level
    # Only the intervals that some curve may use: ONSET_FRAMES before its window end, and
    # not after ``latest``.
    latest = np.broadcast_to(np.asarray(latest, dtype=float), (n,))
    last_open = np.searchsorted(times, latest + 1e-9, side="right") - 1
    columns = int(np.clip(np.max(np.minimum(end - ONSET_FRAMES, last_open)) + 1, 1, count - 1))
    sums = [_suffix(inside * tau**p)[:, :columns] for p in range(5)]
    vector = np.stack([_suffix(y * tau**p)[:, :columns] for p in range(3)], axis=-1)
    normal = np.empty((n, columns, 3, 3))
    for i in range(3):
        for j in range(3):
            normal[..., i, j] = sums[i + j]
    beta = np.einsum("nkij,nkj->nki", inverse_small(normal), vector)
    rss = rss[:, :columns] + _suffix(y * y)[:, :columns]
    rss = rss - np.einsum("nki,nki->nk", beta, vector)
    valid = (sums[0] >= ONSET_FRAMES) & np.isfinite(rss)
    valid &= times[None, :columns] <= latest[:, None] + 1e-9
    rss = np.where(valid, rss, np.inf)
    best = np.argmin(rss, axis=1)
    rows = np.arange(n)
    found = np.isfinite(rss[rows, best])
    coefficients = beta[rows, best]
    a = level[rows, best]

    def excess(t):  # q(t) - a
        x = (t - centre) / scale
        return coefficients[:, 0] + coefficients[:, 1] * x + coefficients[:, 2] * x * x - a

    low, high = times[best], times[best + 1]
    at_low, at_high = excess(low), excess(high)
    crossing = (at_low < 0) & (at_high > 0)
    left, right = low.copy(), high.copy()
    for _ in range(40):  # bisection: the bracket shrinks to 1e-12 of the interval
        middle = 0.5 * (left + right)
        up = excess(middle) > 0
        right = np.where(up, middle, right)
        left = np.where(up, left, middle)
    with np.errstate(divide="ignore", invalid="ignore"):
        share = np.clip(np.where(at_high > 0, at_low / at_high, 1.0), 0.0, 1.0)
    stepped = low + 0.5 * (high - low) * share
    arrival = np.where(crossing, 0.5 * (left + right), np.where(at_low >= 0, stepped, high))
    onset = a + np.maximum(excess(arrival), 0.0)
    # A frame that opens the interval but is already clearly above the baseline (a convex
    # start the quadratic cannot follow, e.g. a gamma variate) moves the arrival into the
    # interval before it (up to three times): where the line through the first two
    # enhanced frames meets the baseline level of the frames before them.
    noise = np.broadcast_to(np.asarray(noise, dtype=float), (n,))
    rise = np.max(y, axis=1) - level[rows, best]
    tolerance = np.maximum(3.0 * np.nan_to_num(noise), CONVEX_FRACTION * rise)
    opening, moved = best.copy(), np.zeros(n, dtype=bool)
    for _ in range(3):
        early = (y[rows, opening] - level[rows, opening] > tolerance) & (opening >= 1)
        opening = np.where(early, opening - 1, opening)
        moved |= early
    base = level[rows, opening]
    first, second = y[rows, opening + 1], y[rows, np.minimum(opening + 2, count - 1)]
    step_time = times[np.minimum(opening + 2, count - 1)] - times[opening + 1]
    with np.errstate(divide="ignore", invalid="ignore"):
        reach = times[opening + 1] - (first - base) * step_time / (second - first)
    reach = np.where((second > first) & np.isfinite(reach), reach, times[opening + 1])
    arrival = np.where(moved, np.clip(reach, times[opening], times[opening + 1]), arrival)
    onset = np.where(moved, base, onset)
    return np.where(found, arrival, np.nan), np.where(found, onset, np.nan), rss[rows, best]


def _onset_pass(curves, times, end, latest, noise):
    """One fit of the onset model on the frames 0..end (n,); under noise the continuous
    onset (``fit_arrival``) replaces the step model unless the step reduces the residual
    sum of squares by more than STEP_EVIDENCE noise variances: the free step is one more
    parameter to fit noise with (a chi-square(1) test at p ~ 0.05)."""
    arrival, onset, step_rss = fit_onset(curves, times, end, latest, noise)
    noisy = noise > 0
    if noisy.any():
        last = float(np.min(np.where(np.isfinite(latest), latest, times[-2])))
        last = min(last, float(times[np.max(end[noisy])]))  # no knot beyond every window
        window = np.arange(times.size)[None, :] <= end[noisy, None]
        smooth, smooth_rss = fit_arrival(curves[noisy], times, knot_grid(times, last), window)
        # Its onset value: the baseline level, the mean of the frames up to the knot.
        subset = curves[noisy]
        frame = np.clip(np.searchsorted(times, smooth, side="right") - 1, 0, times.size - 1)
        level = np.cumsum(subset, axis=1) / np.arange(1, times.size + 1)
        level = level[np.arange(frame.size), frame]
        # A knot after a frame that is clearly enhanced (as in fit_onset) does not describe
        # the onset, however the residuals compare.
        rise = np.max(np.where(window, subset, -np.inf), axis=1) - level
        tolerance = np.maximum(3.0 * noise[noisy], CONVEX_FRACTION * rise)
        late = subset[np.arange(frame.size), frame] - level > tolerance
        continuous = (
            np.isfinite(smooth)
            & ~late
            & (smooth_rss - step_rss[noisy] < STEP_EVIDENCE * noise[noisy] ** 2)
        )
        arrival[noisy] = np.where(continuous, smooth, arrival[noisy])
        onset[noisy] = np.where(continuous, level, onset[noisy])
    return arrival, onset


def bolus_arrival(curves: np.ndarray, times: np.ndarray, latest=np.inf, noise=0.0):
    """Bolus arrival (s, (n,)) and onset value (RE at the arrival) of every curve (n, T) of
    relative enhancement; see the module doc. ``noise``: the noise SD of
    each curve (RE units; 0 for noise-free curves); ``latest``: the latest arrival
    considered (s). NaN where no interval can be fitted."""
    curves = np.atleast_2d(np.asarray(curves, dtype=float))
    times = np.asarray(times, dtype=float)
    latest = np.broadcast_to(np.asarray(latest, dtype=float), curves.shape[:1])
    noise = np.broadcast_to(np.nan_to_num(np.asarray(noise, dtype=float)), curves.shape[:1])
    # Noise below 0.1 % of the rise is none: exact curves are treated alike, whether their
    # noise is given as 0 or estimated from rounding-level residues.
    rise = np.max(curves, axis=1) - curves[:, 0]
    noise = np.where(noise > 1e-3 * rise, noise, 0.0)
    end = onset_window_end(curves)
    arrival, onset = _onset_pass(curves, times, end, latest, noise)
    # Refine once on a window that ends ONSET_REFINE_S after the arrival: the quadratic
    # then only describes the first part of the rise (slow or convex starts). Only where
    # the curve rises by REFINE_SNR noise SDs within that window, so that a few noisy
    # frames do not decide alone.
    rows = np.arange(curves.shape[0])
    known = np.isfinite(arrival)
    start = np.where(known, arrival, times[0])
    frame = np.searchsorted(times, start, side="right") - 1
    short = np.searchsorted(times, start + ONSET_REFINE_S, side="right") - 1
    short = np.clip(np.minimum(end, np.maximum(short, frame + ONSET_FRAMES)), 0, None)
    rise = curves[rows, short] - curves[rows, np.clip(frame, 0, None)]
    todo = known & (rise >= REFINE_SNR * noise) & (short < end)
    if todo.any():
        refined, refined_onset = _onset_pass(
            curves[todo], times, short[todo], latest[todo], noise[todo]
        )
        keep = np.isfinite(refined)
        arrival[todo] = np.where(keep, refined, arrival[todo])
        onset[todo] = np.where(keep, refined_onset, onset[todo])
    return arrival, onset


def curve_noise(curve: np.ndarray, times: np.ndarray) -> float:
    """Noise SD of one RE curve from the second differences of its frames before its
    noise-free arrival (all frames when fewer than five): median |second difference| /
    (0.6745 sqrt 6), robust to the odd outlier and barely raised by a smooth trend."""
    arrival, _ = bolus_arrival(curve[None, :], times)
    before = curve[times <= arrival[0]] if np.isfinite(arrival[0]) else curve[:0]
    frames = before if before.size >= 5 else curve
    return float(np.median(np.abs(np.diff(frames, n=2))) / (0.6745 * math.sqrt(6.0)))


def mean_curve_arrival(curve: np.ndarray, times: np.ndarray) -> float:
    """Bolus arrival (s) of one signal curve (e.g. the mean signal of the mask), by the same
    onset model as the voxels, on the curve relative to its first frame, with its noise SD
    from ``curve_noise``."""
    curve = np.asarray(curve, dtype=float)
    times = np.asarray(times, dtype=float)
    relative = curve / curve[0] - 1.0 if curve[0] > 0 else curve - curve[0]
    noise = curve_noise(relative, times)
    arrival, _ = bolus_arrival(relative[None, :], times, noise=noise)
    return float(arrival[0]) if np.isfinite(arrival[0]) else float(times[0])


# --- integrals ---------------------------------------------------------------------------


def _hat_integrals(times: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Integral from times[0] to x (n,) of each piecewise-linear hat function: (n, T).

    Hat function j is 1 at times[j] and 0 at the other frames, so the integral of the
    piecewise-linear curve through (times, values) from a to b is
    ``(H(b) - H(a)) @ values`` -- the trapezoidal rule with interpolation at a and b.
    """
    t = times[None, :]
    x = np.asarray(x, dtype=float)[:, None]
    previous = np.concatenate([[times[0]], times[:-1]])[None, :]
    following = np.concatenate([times[1:], [times[-1]]])[None, :]
    left = t - previous  # 0 for the first hat
    right = following - t  # 0 for the last hat
    with np.errstate(divide="ignore", invalid="ignore"):
        rising = np.where(
            left > 0, np.clip(x - previous, 0, None).clip(max=left) ** 2 / (2 * left), 0.0
        )
        into_fall = np.clip(x - t, 0, None).clip(max=right)
        falling = np.where(right > 0, into_fall - into_fall**2 / (2 * right), 0.0)
    return rising + falling


def window_weights(times: np.ndarray, start: np.ndarray, length: float) -> np.ndarray:
    """Weights (n, T) with integral_{start}^{start+length} RE dt = weights @ RE per voxel."""
    return _hat_integrals(times, start + length) - _hat_integrals(times, start)


def iauc_weights(times: np.ndarray, start: np.ndarray, length: float, onset: np.ndarray):
    """Weights (n, T) and onset weight (n,) of the integral of RE from ``start`` (the
    arrival) over ``length`` s: ``weights @ RE + onset_weight * onset``.

    Where ``onset`` (bool, n) is set, the curve from the arrival to the next frame is the
    line from the onset value (the fitted value at the arrival: the baseline level, or the
    top of a step) to that frame, instead of the line between the frames around the
    arrival, which would start the integral part-way up the rise. Elsewhere the onset
    weight is 0 and the integral is the plain trapezoidal rule (``window_weights``).
    """
    start = np.asarray(start, dtype=float)
    weights = window_weights(times, start, length)
    following = np.clip(np.searchsorted(times, start, side="right"), 1, times.size - 1)
    previous = following - 1
    span = times[following] - start
    covered = np.minimum(span, length)
    with np.errstate(divide="ignore", invalid="ignore"):
        # Integral over [start, start + covered] of the hat that is 1 at start and 0 at
        # the next frame: the part of the integrand that the onset value replaces.
        onset_weight = np.where(span > 0, covered * (1.0 - covered / (2.0 * span)), 0.0)
    onset_weight = np.where(onset & np.isfinite(start), onset_weight, 0.0)
    fraction = (start - times[previous]) / (times[following] - times[previous])
    rows = np.arange(start.size)
    weights[rows, previous] -= onset_weight * (1.0 - fraction)
    weights[rows, following] -= onset_weight * fraction
    return weights, onset_weight


def interpolate_rows(times: np.ndarray, values: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Linear interpolation of each row of ``values`` (n, T) at its own time x (n,)."""
    x = np.asarray(x, dtype=float)
    j = np.clip(np.searchsorted(times, x, side="right") - 1, 0, times.size - 2)
    fraction = (x - times[j]) / (times[j + 1] - times[j])
    rows = np.arange(values.shape[0])
    return values[rows, j] + fraction * (values[rows, j + 1] - values[rows, j])


# --- semi-quantitative ---------------------------------------------------------------------


@dataclass
class SemiQuantitative:
    """Voxel-wise semi-quantitative parameters (arrays of n voxels; NaN where undefined)."""

    bolus_arrival: np.ndarray
    iauc60: np.ndarray
    iauc60_se: np.ndarray
    ttp: np.ndarray
    peak_enhancement: np.ndarray
    wash_in: np.ndarray
    wash_out: np.ndarray
    ser: np.ndarray
    baseline: np.ndarray  # mean baseline signal
    fitted: np.ndarray  # bool: baseline > 0

    def as_dict(self) -> dict[str, np.ndarray]:
        return {name: getattr(self, name) for name in SEMI_QUANTITATIVE_UNITS} | {
            "iauc60_se": self.iauc60_se
        }


def baseline_variance(signal: np.ndarray, baseline_frames: int) -> np.ndarray:
    """Per-voxel sample variance of the baseline frames (NaN with fewer than two)."""
    if baseline_frames < 2:
        return np.full(signal.shape[0], np.nan)
    return signal[:, :baseline_frames].var(axis=1, ddof=1)


def pooled_noise_sd(variances: np.ndarray, baseline_frames: int) -> float:
    """Signal noise SD pooled over voxels: the median baseline variance, made unbiased for
    Gaussian noise (median of chi^2_k / k), so a few moving or enhancing voxels do not
    inflate it. NaN with fewer than two baseline frames."""
    variances = np.asarray(variances, dtype=float)
    variances = variances[np.isfinite(variances)]
    if baseline_frames < 2 or variances.size == 0:
        return float("nan")
    dof = baseline_frames - 1
    # The median of chi^2_dof, as scipy.stats.chi2.ppf(0.5, dof) computes it (scipy.stats
    # itself costs a second of import time in every kinetics process).
    chi2_median = 2.0 * special.gammaincinv(dof / 2.0, 0.5)
    return float(math.sqrt(np.median(variances) * dof / chi2_median))


def semi_quantitative(
    signal: np.ndarray,
    times: np.ndarray,
    *,
    baseline_frames: int,
    global_arrival: float,
    noise_sd: float = float("nan"),
    arrival: str = "voxel",
    ser_early_s: float = 60.0,
    window_s: float = IAUC_WINDOW_S,
) -> SemiQuantitative:
    """Semi-quantitative parameters of every row of ``signal`` (n, T); see the module doc.

    ``global_arrival`` (s) is the mean-curve arrival (used for non-enhancing voxels, and
    for all voxels with ``arrival="global"``); ``noise_sd`` the signal noise SD (for the
    iAUC60 standard error and the enhancement test; NaN: no SE, every voxel enhancing).
    """
    signal = np.atleast_2d(np.asarray(signal, dtype=float))
    times = np.asarray(times, dtype=float)
    n, count = signal.shape
    baseline = signal[:, :baseline_frames].mean(axis=1)
    fitted = np.isfinite(baseline) & (baseline > 0) & np.all(np.isfinite(signal), axis=1)
    safe = np.where(fitted, baseline, 1.0)
    enhancement = signal / safe[:, None] - 1.0
    enhancement[~fitted] = 0.0

    peak_frame = np.argmax(enhancement, axis=1)
    rows = np.arange(n)
    if arrival == "global":
        bat = np.full(n, float(global_arrival))
        onset = np.full(n, np.nan)
    elif arrival == "voxel":
        bat, onset = bolus_arrival(
            enhancement, times, latest=global_arrival + window_s, noise=noise_sd / safe
        )
        with np.errstate(invalid="ignore"):
            enhancing = enhancement[rows, peak_frame] >= 5.0 * noise_sd / safe
        if not np.isfinite(noise_sd):
            enhancing = np.ones(n, dtype=bool)
        own = enhancing & np.isfinite(bat)
        bat = np.where(own, bat, global_arrival)
        onset = np.where(own, onset, np.nan)
    else:
        raise PrimageInputError(f"unknown arrival mode {arrival!r}: use voxel or global")

    # Peak at or after arrival.
    after = times[None, :] >= bat[:, None] - 1e-9
    peak_frame = np.argmax(np.where(after, enhancement, -np.inf), axis=1)
    peak = enhancement[rows, peak_frame]
    peak_time = times[peak_frame]
    at_arrival = interpolate_rows(times, enhancement, bat)
    minute = 60.0
    with np.errstate(divide="ignore", invalid="ignore"):
        ttp = peak_time - bat
        wash_in = np.where(ttp > 0, (peak - at_arrival) / ttp * minute, np.nan)
        last = enhancement[:, -1]
        wash_out = np.where(
            peak_time < times[-1], (last - peak) / (times[-1] - peak_time) * minute, np.nan
        )
        early_time = bat + ser_early_s
        early = interpolate_rows(times, enhancement, np.minimum(early_time, times[-1]))
        ser = np.where((early_time <= times[-1]) & (last != 0), early / last, np.nan)

    weights, onset_weight = iauc_weights(times, bat, window_s, np.isfinite(onset))
    inside = bat + window_s <= times[-1] + 1e-9
    iauc = np.einsum("nt,nt->n", weights, enhancement) + onset_weight * np.nan_to_num(onset)
    iauc = np.where(inside, iauc, np.nan)
    # SE of iAUC60: RE_j = S_j / S_b - 1 with S_b the mean of the first N frames; first
    # order propagation of independent noise (SD sigma) in every frame, BAT and the onset
    # value held fixed.
    sigma = noise_sd
    weighted_signal = np.einsum("nt,nt->n", weights, signal)
    baseline_weight = weights[:, :baseline_frames].sum(axis=1)
    variance = (
        (weights**2).sum(axis=1) / safe**2
        + weighted_signal**2 / (safe**4 * baseline_frames)
        - 2.0 * weighted_signal * baseline_weight / (safe**3 * baseline_frames)
    ) * sigma**2
    iauc_se = np.where(inside, np.sqrt(np.maximum(variance, 0.0)), np.nan)

    def masked(values):
        return np.where(fitted, values, np.nan)

    return SemiQuantitative(
        bolus_arrival=masked(bat),
        iauc60=masked(iauc),
        iauc60_se=masked(iauc_se),
        ttp=masked(ttp),
        peak_enhancement=masked(peak),
        wash_in=masked(wash_in),
        wash_out=masked(wash_out),
        ser=masked(ser),
        baseline=baseline,
        fitted=fitted,
    )


# --- signal to concentration -------------------------------------------------------------


def spgr_concentration(
    signal: np.ndarray,
    baseline_frames: int,
    *,
    t10_s: float | np.ndarray,
    flip_angle_deg: float,
    repetition_time_s: float,
    relaxivity: float,
) -> np.ndarray:
    """Contrast-agent concentration (mM) from spoiled gradient-echo signals (n, T).

    With E = exp(-TR R1) the SPGR signal is S = M0 sin(a) (1 - E) / (1 - cos(a) E). M0
    follows from the baseline signal and the pre-contrast T1 (``t10_s``, s; a scalar or
    one per voxel); each frame gives R1 in closed form and C = (R1 - 1/T10) / r1
    (``relaxivity`` in 1/(mM s)). Frames whose signal is beyond the SPGR maximum give NaN.
    """
    signal = np.atleast_2d(np.asarray(signal, dtype=float))
    if not (0 < flip_angle_deg < 180 and repetition_time_s > 0 and relaxivity > 0):
        raise PrimageInputError(
            "SPGR conversion needs 0 < flip angle < 180 deg, TR > 0 s and relaxivity > 0"
        )
    t10 = np.broadcast_to(np.asarray(t10_s, dtype=float), signal.shape[:1])
    if np.any(t10 <= 0):
        raise PrimageInputError("T10 must be > 0 s")
    alpha = math.radians(flip_angle_deg)
    r10 = 1.0 / t10
    e10 = np.exp(-repetition_time_s * r10)
    baseline = signal[:, :baseline_frames].mean(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = signal / baseline[:, None] * ((1 - e10) / (1 - math.cos(alpha) * e10))[:, None]
        e1 = (1.0 - ratio) / (1.0 - math.cos(alpha) * ratio)
        r1 = -np.log(e1) / repetition_time_s
        concentration = (r1 - r10[:, None]) / relaxivity
    concentration[~np.isfinite(concentration)] = np.nan
    return concentration


def concentration_image(
    series_image: sitk.Image,
    times,
    *,
    t10_s: float,
    flip_angle_deg: float,
    repetition_time_s: float,
    relaxivity: float = 4.5,
    baseline_frames: int | None = None,
) -> tuple[sitk.Image, int]:
    """4D concentration (mM, Float32; 0 where undefined) of a 4D SPGR signal series, and the
    baseline frame count used (automatic from the mean-curve arrival when None)."""
    voxels, times = prepare_dce(series_image, times)
    _, _, baseline_frames, _ = dynamic_statistics(voxels, times, baseline_frames)
    frames = sitk.GetArrayFromImage(series_image).astype(np.float32)
    flat = frames.reshape(frames.shape[0], -1)
    for start in range(0, flat.shape[1], 32768):
        part = flat[:, start : start + 32768].T.astype(float)
        conc = spgr_concentration(
            part,
            baseline_frames,
            t10_s=t10_s,
            flip_angle_deg=flip_angle_deg,
            repetition_time_s=repetition_time_s,
            relaxivity=relaxivity,
        )
        flat[:, start : start + 32768] = np.nan_to_num(conc, nan=0.0, posinf=0.0, neginf=0.0).T
    image = sitk.GetImageFromArray(frames, isVector=False)
    image.CopyInformation(series_image)
    return image, baseline_frames


# --- images -----------------------------------------------------------------------------


@dataclass
class DceMaps:
    """Semi-quantitative maps (Float32 images, 0 where undefined) and a JSON-ready summary;
    ``curve`` holds the mean curve and its frame times for plots."""

    maps: dict[str, sitk.Image]
    summary: dict
    curve: dict = field(default_factory=dict)


def prepare_dce(series_image: sitk.Image, times, mask=None, *, role: str = "DCE"):
    """Check a DCE series and its frame times; returns (VoxelSeries, times)."""
    if series_image.GetDimension() != 4:
        raise PrimageInputError(
            f"{role} is a {series_image.GetDimension()}D image; a 4D series (one volume per "
            "time point along the 4th axis) is expected"
        )
    times = check_frame_times(times, series_image.GetSize()[3], role=role)
    return load_series(series_image, mask, role=role), times


def dynamic_statistics(voxels: VoxelSeries, times: np.ndarray, baseline_frames: int | None):
    """Mean curve, its arrival, the baseline frame count and the pooled noise SD."""
    mean = voxels.mean_signal()
    global_arrival = mean_curve_arrival(mean, times)
    if baseline_frames is None:
        baseline_frames = int(np.count_nonzero(times <= global_arrival + 1e-9))
    if not 1 <= baseline_frames < times.size - 1:
        raise PrimageInputError(
            f"baseline frames must be between 1 and {times.size - 2} (frames: {times.size}), "
            f"got {baseline_frames}"
        )
    variances = np.concatenate(
        [
            baseline_variance(voxels.chunk(start, stop), baseline_frames)
            for start, stop in voxels.chunks()
        ]
    )
    return mean, global_arrival, baseline_frames, pooled_noise_sd(variances, baseline_frames)


def dce_maps(
    series_image: sitk.Image,
    times,
    mask: sitk.Image | None = None,
    *,
    baseline_frames: int | None = None,
    arrival: str = "voxel",
    ser_early_s: float = 60.0,
    progress=None,
) -> DceMaps:
    """Semi-quantitative maps of a 4D DCE series (last axis = time, ``times`` in s)."""
    voxels, times = prepare_dce(series_image, times, mask)
    source = "given" if baseline_frames is not None else "automatic"
    mean, global_arrival, baseline_frames, noise_sd = dynamic_statistics(
        voxels, times, baseline_frames
    )
    if global_arrival + IAUC_WINDOW_S > times[-1]:
        raise PrimageInputError(
            f"the series ends at {times[-1]:g} s, less than 60 s after the bolus arrival "
            f"({global_arrival:g} s): iAUC60 cannot be computed"
        )
    report(progress, 0.05, "DCE: fitting")
    n = voxels.voxels
    names = (*SEMI_QUANTITATIVE_UNITS, "iauc60_se")
    out = {name: np.full(n, np.nan) for name in names}

    def work(start: int, stop: int) -> dict:
        return semi_quantitative(
            voxels.chunk(start, stop),
            times,
            baseline_frames=baseline_frames,
            global_arrival=global_arrival,
            noise_sd=noise_sd,
            arrival=arrival,
            ser_early_s=ser_early_s,
        ).as_dict()

    for start, stop, result in map_chunks(
        voxels, work, size=8192, progress=progress, label="DCE", start=0.05, span=0.9
    ):
        for name in names:
            out[name][start:stop] = result[name]
    unfitted = int(np.count_nonzero(~np.isfinite(out["bolus_arrival"])))
    if unfitted == n:
        raise PrimageInputError("no voxel has a positive baseline signal: nothing to analyse")
    if unfitted:
        where = "in the mask" if mask is not None else "of the image"
        warnings.warn(
            f"{unfitted} of {n} voxels {where} have a zero or negative baseline signal and "
            "were left out (0 in the maps)",
            KineticsWarning,
            stacklevel=2,
        )
    summary = {
        "frame_times_s": [float(t) for t in times],
        "baseline_frames": baseline_frames,
        "baseline_frames_source": source,
        "mean_curve_bolus_arrival_s": global_arrival,
        "arrival": arrival,
        "noise_sd": noise_sd,
        "ser_early_s": ser_early_s,
        "voxels_fitted": int(n - unfitted),
        "voxels_not_fitted": unfitted,
        "units": dict(SEMI_QUANTITATIVE_UNITS) | {"iauc60_se": SEMI_QUANTITATIVE_UNITS["iauc60"]},
    }
    if mask is not None:
        from primage.kinetics.dwi import roi_statistics

        summary["roi"] = {name: roi_statistics(out[name]) for name in SEMI_QUANTITATIVE_UNITS}
        mean_result = semi_quantitative(
            mean[None, :],
            times,
            baseline_frames=baseline_frames,
            global_arrival=global_arrival,
            noise_sd=noise_sd / math.sqrt(n),
            arrival="voxel",
            ser_early_s=ser_early_s,
        )
        summary["roi"]["mean_curve"] = {
            name: float(value[0]) for name, value in mean_result.as_dict().items()
        }
    report(progress, 1.0, "DCE: done")
    maps = {name: voxels.to_image(values) for name, values in out.items()}
    curve = {"times": times, "signal": mean}
    return DceMaps(maps, summary, curve)
