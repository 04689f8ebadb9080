"""Diffusion-weighted imaging: mono-exponential ADC and segmented IVIM, voxel-wise and batched.

Units: b in s/mm^2, ADC / D / D* in mm^2/s, f a fraction, S0 in the units of the signal.

ADC, S(b) = S0 exp(-b ADC):

* ``"wls"``: log-linear weighted least squares, weights = predicted signal^2 from an
  ordinary log-linear fit (the variance of log S is sigma^2 / S^2); closed form, the fast
  estimate and the start of the non-linear fit.
* ``"nlls"`` (default): non-linear least squares on the signal, bounded
  Levenberg-Marquardt from the WLS estimate. Unbiased by the log transform, but not by
  the noise floor of magnitude images: at b = 0 SNR 5 it is ~10-20 % low.
* ``"rician"``: least squares of the Rician expectation E[M](S0 exp(-b ADC), sigma)
  (:mod:`~primage.kinetics.rician`) from the NLLS estimate, with the noise sigma given
  (scalar or per voxel). Not biased low at low SNR; equal to NLLS at high SNR. Its SE is
  the first-order (sandwich) covariance with the Rician variance of every signal, so it
  is the real uncertainty of a voxel near the floor, not its residual scatter.

Standard errors come from the fit covariance, residual variance RSS / (n - 2) times
inv(J^T J) (n: number of signals), so they need at least three signals; goodness of fit
is R^2 of the signal. Voxels with a non-positive signal at any used b-value cannot be
log-fitted: they are left out (NaN in the arrays, 0 in written maps) and counted.

IVIM, S(b) = S0 [(1 - f) exp(-b D) + f exp(-b D*)], segmented: (1) D and the intercept
S_int = S0 (1 - f) from a mono-exponential fit to b >= ``b_threshold``; (2) with D and
S_int fixed, the perfusion term A exp(-b D*) is fitted to all b-values: a grid over D*
with A >= 0 in closed form, then bounded Levenberg-Marquardt on (A, D*);
S0 = S_int + A and f = A / S0.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

from primage.errors import PrimageInputError
from primage.kinetics.fitting import inverse_small, levenberg_marquardt, standard_errors
from primage.kinetics.series import VoxelSeries, load_series, map_chunks, report
from primage.kinetics.values import check_b_values

ADC_UNIT = "mm^2/s"
#: Default bounds of the non-linear ADC fit (mm^2/s); free water at 37 C is about 3.0e-3.
ADC_BOUNDS = (0.0, 5e-3)
#: Default bounds of D* (mm^2/s) for IVIM.
DSTAR_BOUNDS = (5e-3, 0.1)
#: b-values are scaled to ms/um^2 (b / 1000) inside the fits, so ADC is ~1 there.
_B_SCALE = 1e-3


@dataclass
class AdcFit:
    """Voxel-wise mono-exponential fit (arrays of n voxels; NaN where no fit was possible)."""

    adc: np.ndarray  # mm^2/s
    s0: np.ndarray  # signal units
    adc_se: np.ndarray  # mm^2/s
    s0_se: np.ndarray
    r2: np.ndarray  # coefficient of determination of the signal fit
    rss: np.ndarray  # residual sum of squares (signal units^2)
    fitted: np.ndarray  # bool: a fit was made

    def predict(self, b_values: np.ndarray) -> np.ndarray:
        """Fitted signals (n, len(b_values))."""
        b = np.asarray(b_values, dtype=float)
        return self.s0[:, None] * np.exp(-np.outer(self.adc, b))


def average_repeated(
    signal: np.ndarray, b_values: np.ndarray, mode: str = "none"
) -> tuple[np.ndarray, np.ndarray]:
    """Combine signals of repeated b-values (repetitions or diffusion directions).

    ``mode``: ``"none"`` (keep every signal: the fit weighs repeats naturally),
    ``"arithmetic"`` (mean of repetitions) or ``"geometric"`` (geometric mean over
    directions: the trace-weighted signal, whose ADC is the mean diffusivity). Returns
    ``(signal, b_values)`` with b sorted ascending when combined.
    """
    b_values = np.asarray(b_values, dtype=float)
    if mode == "none":
        return signal, b_values
    if mode not in ("arithmetic", "geometric"):
        raise PrimageInputError(f"unknown averaging {mode!r}: use none, arithmetic or geometric")
    unique = np.unique(b_values)
    combined = np.empty((signal.shape[0], unique.size))
    for position, b in enumerate(unique):
        group = signal[:, b_values == b]
        if mode == "arithmetic":
            combined[:, position] = group.mean(axis=1)
        else:
            with np.errstate(divide="ignore", invalid="ignore"):
                positive = np.all(group > 0, axis=1)
                geometric = np.exp(np.log(np.where(group > 0, group, 1.0)).mean(axis=1))
            combined[:, position] = np.where(positive, geometric, 0.0)
    return combined, unique


def select_b_values(
    b_values: np.ndarray, bmin: float | None = None, bmax: float | None = None
) -> np.ndarray:
    """Boolean selection of b-values in [bmin, bmax]; at least two distinct ones must remain."""
    b_values = np.asarray(b_values, dtype=float)
    keep = np.ones(b_values.size, dtype=bool)
    if bmin is not None:
        keep &= b_values >= bmin
    if bmax is not None:
        keep &= b_values <= bmax
    if np.unique(b_values[keep]).size < 2:
        raise PrimageInputError(
            f"fewer than two distinct b-values remain in [{bmin or 0:g}, "
            f"{'inf' if bmax is None else f'{bmax:g}'}] s/mm^2 (b-values: {b_values.tolist()})"
        )
    return keep


def _exponential_model(b: np.ndarray):
    """A S(b) = a exp(-b d) model for the batched solver, params (a, d)."""

    def model(params: np.ndarray, _rows: np.ndarray):
        decay = np.exp(-np.outer(b, params[1]))  # (B, n)
        prediction = params[0] * decay
        return prediction, np.stack([decay, -b[:, None] * prediction])

    return model


def _rician_model(b: np.ndarray, sigma: np.ndarray):
    """E[M](a exp(-b d), sigma) for the batched solver, params (a, d); ``sigma`` (n,) per row."""
    # Imported here: rician needs scipy.special, which every ADC command would otherwise
    # load at start-up (~0.3 s) for a method it does not use.
    from primage.kinetics.rician import rician_mean, rician_mean_slope

    def model(params: np.ndarray, rows: np.ndarray):
        decay = np.exp(-np.outer(b, params[1]))  # (B, n)
        amplitude = params[0] * decay
        noise = sigma[rows]
        slope = rician_mean_slope(amplitude, noise)
        jacobian = np.stack([slope * decay, -b[:, None] * slope * amplitude])
        return rician_mean(amplitude, noise), jacobian

    return model


def _sandwich_se(jacobian: np.ndarray, variance: np.ndarray) -> np.ndarray:
    """SEs (n, P) of a least-squares fit with known data variances (M, n): the square roots
    of the diagonal of inv(J^T J) (J^T V J) inv(J^T J), Jacobian (P, M, n)."""
    normal = np.einsum("pmn,qmn->npq", jacobian, jacobian)
    middle = np.einsum("pmn,mn,qmn->npq", jacobian, variance, jacobian)
    inverse = inverse_small(normal)
    covariance = np.einsum("npq,nqr,nrs->nps", inverse, middle, inverse)
    return standard_errors(covariance)


def _loglinear(log_signal: np.ndarray, b: np.ndarray, weights: np.ndarray | None):
    """Closed-form (weighted) fit of log S = ln S0 - b D for every voxel: (ln S0, D, cov)."""
    # The weighted sums as matrix products against (1, b, b^2): one BLAS call each
    # instead of a reduction along the short b axis of every voxel (several times faster).
    powers = np.stack([np.ones_like(b), b, b * b], axis=1)  # (B, 3)
    if weights is None:
        s, sb, sbb = (np.broadcast_to(column, log_signal.shape[:1]) for column in powers.sum(0))
        sy, sby = (log_signal @ powers[:, :2]).T
    else:
        s, sb, sbb = (weights @ powers).T
        sy, sby = ((weights * log_signal) @ powers[:, :2]).T
    with np.errstate(divide="ignore", invalid="ignore"):
        det = s * sbb - sb * sb
        intercept = (sbb * sy - sb * sby) / det
        slope = (sb * sy - s * sby) / det  # of -b: D = -(d log S / d b)
    return intercept, slope, (s, sb, sbb, det)


def fit_monoexponential(
    y: np.ndarray,
    b: np.ndarray,
    start: np.ndarray,
    lower: float,
    upper: float,
    *,
    max_iterations: int = 50,
    setol: float = 1e-2,
    rtol: float = 1e-8,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Least-squares S = a exp(-b d) for every column of ``y`` (len(b), n) at once, by
    variable projection: for a given d the best a >= 0 is linear (a = y.e / e.e), so only d
    is iterated (Gauss-Newton on the projected residual, Golub-Pereyra, with step halving;
    ``lower <= d <= upper``). Stops when a step moves d by less than ``setol`` of its
    standard error or lowers the RSS by less than ``rtol`` relative. Returns a, d and the
    covariance (n, 2, 2) of (a, d): RSS / (len(b) - 2) x inv(J^T J), as
    :func:`levenberg_marquardt` gives it; the same minimum at about a third of its time
    (tested against it). The voxels still iterating are kept compact, so the few slow
    ones cost little.
    """
    points, n = y.shape
    column = b[:, None]
    dof = max(points - 2, 1)

    def dot(p, q):
        return np.einsum("bn,bn->n", p, q)

    def project(d_values, data):
        decay = np.exp(-column * d_values)
        energy = dot(decay, decay)
        overlap = dot(data, decay)
        amplitude = np.maximum(overlap / energy, 0.0)
        residual = data - amplitude * decay
        return decay, energy, overlap, amplitude, residual, dot(residual, residual)

    d_out = np.clip(np.asarray(start, dtype=float), lower, upper)
    # The voxels still iterating, compacted as they finish (columns of the 2D arrays).
    index, data, d = np.arange(n), y, d_out.copy()
    decay, energy, overlap, amplitude, residual, rss = project(d, data)
    scale = np.ones(n)  # step fraction: cut after a step that did not lower the RSS
    for _ in range(max_iterations):
        slope = -column * decay  # d(decay)/dd
        # d(amplitude)/dd of the projection (0 where the amplitude sits on its bound)
        da = (dot(data, slope) * energy - overlap * 2.0 * dot(decay, slope)) / energy**2
        da[amplitude <= 0] = 0.0
        jacobian = -(da * decay + amplitude * slope)  # d(residual)/dd
        curvature = np.maximum(dot(jacobian, jacobian), 1e-300)
        trial = np.clip(d - dot(jacobian, residual) / curvature * scale, lower, upper)
        se = np.sqrt(np.maximum(rss, 0.0) / dof / curvature)
        t_decay, t_energy, t_overlap, t_amplitude, t_residual, t_rss = project(trial, data)
        better = t_rss <= rss
        gain = rss - t_rss
        small = np.abs(trial - d) <= setol * se
        d = np.where(better, trial, d)
        scale = np.where(better, 1.0, scale * 0.25)
        done = (better & (small | (gain <= rtol * np.maximum(rss, 1e-300)))) | (
            ~better & (small | (scale < 1e-6))
        )
        rss = np.where(better, t_rss, rss)
        d_out[index[done]] = d[done]
        if done.all():
            break
        keep = np.flatnonzero(~done) if done.any() else slice(None)
        index, d, scale, rss, better = index[keep], d[keep], scale[keep], rss[keep], better[keep]
        data = data[:, keep]
        decay = np.where(better, t_decay[:, keep], decay[:, keep])
        residual = np.where(better, t_residual[:, keep], residual[:, keep])
        energy = np.where(better, t_energy[keep], energy[keep])
        overlap = np.where(better, t_overlap[keep], overlap[keep])
        amplitude = np.where(better, t_amplitude[keep], amplitude[keep])
    d_out[index] = d
    decay, energy, overlap, amplitude, residual, rss = project(d_out, y)
    by_d = -amplitude * column * decay
    saa, sad, sdd = energy, dot(decay, by_d), dot(by_d, by_d)
    with np.errstate(divide="ignore", invalid="ignore"):
        factor = (rss / (points - 2) if points > 2 else np.full(n, np.nan)) / (saa * sdd - sad**2)
        covariance = np.empty((n, 2, 2))
        covariance[:, 0, 0], covariance[:, 1, 1] = sdd * factor, saa * factor
        covariance[:, 0, 1] = covariance[:, 1, 0] = -sad * factor
    return amplitude, d_out, covariance


def fit_adc(
    signal: np.ndarray,
    b_values: np.ndarray,
    *,
    method: str = "nlls",
    bounds: tuple[float, float] = ADC_BOUNDS,
    sigma=None,
) -> AdcFit:
    """Mono-exponential fit of every row of ``signal`` (n voxels, len(b_values)).

    Rows with a non-positive or non-finite signal are not fitted (NaN). ``method``:
    ``"nlls"`` (default), ``"wls"`` or ``"rician"`` (needs ``sigma``, the magnitude noise
    SD in signal units: a scalar or one per row); see the module docstring.
    """
    if method not in ("nlls", "wls", "rician"):
        raise PrimageInputError(f"unknown ADC method {method!r}: use nlls, wls or rician")
    signal = np.atleast_2d(np.asarray(signal, dtype=float))
    if method == "rician":
        if sigma is None:
            raise PrimageInputError("the Rician ADC fit needs the noise sigma (signal units)")
        sigma = np.broadcast_to(np.asarray(sigma, dtype=float), signal.shape[:1])
        if not np.all(np.isfinite(sigma) & (sigma >= 0)):
            raise PrimageInputError("the noise sigma must be finite and >= 0")
    b = np.asarray(b_values, dtype=float) * _B_SCALE
    n, count = signal.shape
    if count != b.size:
        raise PrimageInputError(f"{count} signals per voxel but {b.size} b-values")
    nan = np.full(n, np.nan)
    result = AdcFit(
        nan.copy(),
        nan.copy(),
        nan.copy(),
        nan.copy(),
        nan.copy(),
        nan.copy(),
        np.zeros(n, dtype=bool),
    )
    fitted = np.all(np.isfinite(signal) & (signal > 0), axis=1)
    rows = np.flatnonzero(fitted)
    if rows.size == 0:
        return result
    scale = signal[rows].max(axis=1)
    y = signal[rows] / scale[:, None]
    log_y = np.log(y)
    # Ordinary then weighted log-linear fit (weights: predicted signal^2).
    intercept, slope, _ = _loglinear(log_y, b, None)
    weights = np.exp(2.0 * (intercept[:, None] - np.outer(slope, b)))
    intercept, slope, (s, sb, sbb, det) = _loglinear(log_y, b, weights)
    dof = count - 2
    if method == "wls":
        residual = log_y - (intercept[:, None] - np.outer(slope, b))
        with np.errstate(divide="ignore", invalid="ignore"):
            variance = (weights * residual**2).sum(axis=1) / dof if dof > 0 else np.nan
            slope_se = np.sqrt(variance * s / det)
            s0_se = np.exp(intercept) * np.sqrt(variance * sbb / det)
        s0 = np.exp(intercept)
        adc = slope
    else:
        start = np.clip(slope, *np.array(bounds) / _B_SCALE)
        start[~np.isfinite(start)] = 1.0
        s0, adc, covariance = fit_monoexponential(
            np.ascontiguousarray(y.T), b, start, bounds[0] / _B_SCALE, bounds[1] / _B_SCALE
        )
        errors = standard_errors(covariance)
        s0_se, slope_se = errors[:, 0], errors[:, 1]
    prediction = s0[:, None] * np.exp(-np.outer(adc, b))
    if method == "rician":
        noise = sigma[rows] / scale
        model = _rician_model(b, noise)
        lower, upper = [0.0, bounds[0] / _B_SCALE], [np.inf, bounds[1] / _B_SCALE]
        fit = levenberg_marquardt(model, np.vstack([s0, adc]), y.T, lower, upper)
        s0, adc = fit.params
        expected, jacobian = model(fit.params, np.arange(rows.size))
        amplitude = s0[None, :] * np.exp(-np.outer(b, adc))
        from primage.kinetics.rician import rician_variance

        errors = _sandwich_se(jacobian, rician_variance(amplitude, noise))
        s0_se, slope_se = errors[:, 0], errors[:, 1]
        prediction = expected.T
    rss = ((y - prediction) ** 2).sum(axis=1)
    tss = ((y - y.mean(axis=1, keepdims=True)) ** 2).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        r2 = np.where(tss > 0, 1.0 - rss / tss, np.nan)
    result.adc[rows] = adc * _B_SCALE
    result.adc_se[rows] = slope_se * _B_SCALE
    result.s0[rows] = s0 * scale
    result.s0_se[rows] = s0_se * scale
    result.r2[rows] = r2
    result.rss[rows] = rss * scale**2
    result.fitted[rows] = True
    return result


@dataclass
class IvimFit:
    """Voxel-wise segmented IVIM fit (arrays of n voxels; NaN where no fit was possible)."""

    d: np.ndarray  # mm^2/s
    f: np.ndarray  # fraction
    dstar: np.ndarray  # mm^2/s
    s0: np.ndarray
    d_se: np.ndarray  # mm^2/s, from the high-b fit
    fitted: np.ndarray

    def predict(self, b_values: np.ndarray) -> np.ndarray:
        b = np.asarray(b_values, dtype=float)
        return self.s0[:, None] * (
            (1 - self.f[:, None]) * np.exp(-np.outer(self.d, b))
            + self.f[:, None] * np.exp(-np.outer(self.dstar, b))
        )


def fit_ivim(
    signal: np.ndarray,
    b_values: np.ndarray,
    *,
    b_threshold: float = 200.0,
    dstar_bounds: tuple[float, float] = DSTAR_BOUNDS,
    d_bounds: tuple[float, float] = ADC_BOUNDS,
) -> IvimFit:
    """Segmented IVIM fit of every row of ``signal`` (see the module docstring)."""
    signal = np.atleast_2d(np.asarray(signal, dtype=float))
    b_values = np.asarray(b_values, dtype=float)
    high = b_values >= b_threshold
    if np.unique(b_values[high]).size < 2:
        raise PrimageInputError(
            f"IVIM needs at least two distinct b-values >= {b_threshold:g} s/mm^2 for D; "
            f"got {b_values.tolist()}"
        )
    if not np.any(~high):
        raise PrimageInputError(
            f"IVIM needs b-values below {b_threshold:g} s/mm^2 for f and D*; got {b_values.tolist()}"
        )
    if not 0 < dstar_bounds[0] < dstar_bounds[1]:
        raise PrimageInputError(f"D* bounds must satisfy 0 < low < high: {dstar_bounds}")
    n = signal.shape[0]
    nan = np.full(n, np.nan)
    result = IvimFit(nan.copy(), nan.copy(), nan.copy(), nan.copy(), nan.copy(), np.zeros(n, bool))
    diffusion = fit_adc(signal[:, high], b_values[high], method="nlls", bounds=d_bounds)
    fitted = diffusion.fitted & np.all(np.isfinite(signal), axis=1)
    rows = np.flatnonzero(fitted)
    if rows.size == 0:
        return result
    b = b_values * _B_SCALE
    scale = signal[rows].max(axis=1)
    intercept = diffusion.s0[rows] / scale
    d = diffusion.adc[rows] / _B_SCALE
    perfusion = signal[rows] / scale[:, None] - intercept[:, None] * np.exp(-np.outer(d, b))
    # Grid over D* with the amplitude A >= 0 in closed form: a start near the global optimum.
    grid = np.geomspace(*(np.array(dstar_bounds) / _B_SCALE), 48)
    basis = np.exp(-np.outer(grid, b))  # (G, B)
    projection = perfusion @ basis.T  # (n, G)
    norms = (basis**2).sum(axis=1)
    amplitude = np.maximum(projection / norms, 0.0)
    cost = -2.0 * amplitude * projection + amplitude**2 * norms
    best = np.argmin(cost, axis=1)
    start = np.vstack([amplitude[np.arange(rows.size), best], grid[best]])
    fit = levenberg_marquardt(
        _exponential_model(b),
        start,
        perfusion.T,
        [0.0, dstar_bounds[0] / _B_SCALE],
        [np.inf, dstar_bounds[1] / _B_SCALE],
    )
    amplitude, dstar = fit.params
    s0 = intercept + amplitude
    with np.errstate(divide="ignore", invalid="ignore"):
        fraction = np.where(s0 > 0, amplitude / s0, np.nan)
    result.d[rows] = d * _B_SCALE
    result.d_se[rows] = diffusion.adc_se[rows]
    result.f[rows] = fraction
    result.dstar[rows] = dstar * _B_SCALE
    result.s0[rows] = s0 * scale
    result.fitted[rows] = True
    return result


# --- statistics -------------------------------------------------------------------------


def roi_statistics(values: np.ndarray) -> dict:
    """Mean, median, SD, 5/25/75/95th percentiles and count of the finite values."""
    values = np.asarray(values, dtype=float)
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return {"voxels": 0}
    p5, p25, p75, p95 = np.percentile(finite, [5, 25, 75, 95])
    return {
        "voxels": int(finite.size),
        "mean": float(finite.mean()),
        "median": float(np.median(finite)),
        "sd": float(finite.std(ddof=1)) if finite.size > 1 else 0.0,
        "p5": float(p5),
        "p25": float(p25),
        "p75": float(p75),
        "p95": float(p95),
    }


# --- images -----------------------------------------------------------------------------


@dataclass
class DwiMaps:
    """Parameter maps on the series grid (Float32; 0 where no fit) and a JSON-ready summary.

    ``maps`` maps a name ("adc", "adc_se", "s0", "r2" or "ivim_d", "ivim_f", "ivim_dstar",
    "ivim_s0") to an image; ``curve`` holds the ROI-mean signal and its fit for plots:
    ``{"b": ..., "signal": ..., "b_fit": ..., "fit": ...}``.
    """

    maps: dict[str, sitk.Image]
    summary: dict
    curve: dict = field(default_factory=dict)


def _prepare_dwi(series_image, b_values, mask, bmin, bmax, average):
    frames = series_image.GetSize()[3] if series_image.GetDimension() == 4 else None
    if frames is None:
        raise PrimageInputError(
            f"DWI is a {series_image.GetDimension()}D image; a 4D series (one volume per "
            "b-value along the 4th axis) is expected"
        )
    b_values = check_b_values(b_values, frames)
    keep = select_b_values(b_values, bmin, bmax)
    if average != "none" and np.unique(b_values[keep]).size < 2:
        raise PrimageInputError("fewer than two distinct b-values after averaging")
    voxels = load_series(series_image, mask, role="DWI")
    # Checked before any work (and any progress output): a log/exponential fit needs a
    # positive signal.
    if voxels.count_positive(np.flatnonzero(keep)) == 0:
        where = "in the mask" if mask is not None else "of the image"
        raise PrimageInputError(
            f"no voxel {where} can be fitted: every one has a zero or negative DWI signal "
            "at some used b-value"
        )
    return voxels, b_values, keep


def _chunk_signal(voxels: VoxelSeries, start, stop, keep, b_values, average):
    signal = voxels.chunk(start, stop)[:, keep]
    return average_repeated(signal, b_values[keep], average)


def _nonpositive_note(count: int, total: int, where: str) -> str | None:
    if not count:
        return None
    return (
        f"{count} of {total} voxels {where} have a zero or negative signal at a used b-value "
        "and were left out of the log/exponential fit (0 in the maps)"
    )


def adc_maps(
    series_image: sitk.Image,
    b_values,
    mask: sitk.Image | None = None,
    *,
    bmin: float | None = None,
    bmax: float | None = None,
    average: str = "none",
    method: str = "nlls",
    bounds: tuple[float, float] = ADC_BOUNDS,
    noise_sigma: float | None = None,
    progress=None,
) -> DwiMaps:
    """ADC, its standard error, S0 and R^2 maps of a 4D DWI series (last axis = b).

    ``method="rician"`` fits the Rician expectation of the magnitudes and needs
    ``noise_sigma``, the magnitude noise SD in signal units (e.g. from the air).

    With a mask only its voxels are fitted and the summary gets ROI statistics of the
    ADC and the fit of the ROI-mean signal. Voxels that cannot be fitted (non-positive
    signal) are 0 in the maps and counted in the summary (and a warning is issued).
    """
    import warnings

    from primage.kinetics.series import KineticsWarning

    if method == "rician" and (noise_sigma is None or not noise_sigma > 0):
        raise PrimageInputError(
            "the Rician ADC fit needs the magnitude noise SD (noise_sigma / --noise-sigma > 0, "
            "in signal units)"
        )
    sigma = noise_sigma if method == "rician" else None
    voxels, b_values, keep = _prepare_dwi(series_image, b_values, mask, bmin, bmax, average)
    n = voxels.voxels
    out = {name: np.full(n, np.nan) for name in ("adc", "adc_se", "s0", "r2")}
    used_b = average_repeated(np.zeros((1, int(keep.sum()))), b_values[keep], average)[1]
    report(progress, 0.0, "ADC: fitting")

    def work(start: int, stop: int) -> AdcFit:
        signal, b = _chunk_signal(voxels, start, stop, keep, b_values, average)
        return fit_adc(signal, b, method=method, bounds=bounds, sigma=sigma)

    for start, stop, fit in map_chunks(voxels, work, progress=progress, label="ADC"):
        out["adc"][start:stop] = fit.adc
        out["adc_se"][start:stop] = fit.adc_se
        out["s0"][start:stop] = fit.s0
        out["r2"][start:stop] = fit.r2
    unfitted = int(np.count_nonzero(~np.isfinite(out["adc"])))
    where = "in the mask" if mask is not None else "of the image"
    note = _nonpositive_note(unfitted, n, where)
    if note and unfitted == n:
        raise PrimageInputError(
            f"no voxel {where} can be fitted: every one has a zero or negative DWI signal"
        )
    if note:
        warnings.warn(note, KineticsWarning, stacklevel=2)
    summary = {
        "parameter": "ADC",
        "unit": ADC_UNIT,
        "method": method,
        "noise_sigma": sigma,
        "b_values_s_per_mm2": [float(v) for v in b_values],
        "b_values_used_s_per_mm2": [float(v) for v in used_b],
        "bmin": bmin,
        "bmax": bmax,
        "averaging": average,
        "voxels_fitted": int(n - unfitted),
        "voxels_not_fitted": unfitted,
        "voxels_excluded_nonfinite": voxels.excluded_nonfinite,
        "maps": {"adc": ADC_UNIT, "adc_se": ADC_UNIT, "s0": "signal", "r2": "1"},
    }
    curve = {}
    if mask is not None:
        summary["roi"] = {
            "adc": roi_statistics(out["adc"]),
            "adc_se": roi_statistics(out["adc_se"]),
        }
        mean = voxels.mean_signal()[keep]
        mean_signal, mean_b = average_repeated(mean[None, :], b_values[keep], average)
        # A mean of magnitudes keeps their Rician expectation (floor included) with less
        # scatter: the same model and sigma apply.
        roi_fit = fit_adc(mean_signal, mean_b, method=method, bounds=bounds, sigma=sigma)
        summary["roi"]["mean_signal_fit"] = {
            "adc": float(roi_fit.adc[0]),
            "adc_se": float(roi_fit.adc_se[0]),
            "s0": float(roi_fit.s0[0]),
            "r2": float(roi_fit.r2[0]),
            "b_values_s_per_mm2": [float(v) for v in mean_b],
            "mean_signal": [float(v) for v in mean_signal[0]],
        }
        b_fit = np.linspace(0.0, float(mean_b.max()), 50)
        curve = {
            "b": mean_b,
            "signal": mean_signal[0],
            "b_fit": b_fit,
            "fit": roi_fit.predict(b_fit)[0],
        }
    report(progress, 1.0, "ADC: done")
    maps = {name: voxels.to_image(values) for name, values in out.items()}
    return DwiMaps(maps, summary, curve)


def ivim_maps(
    series_image: sitk.Image,
    b_values,
    mask: sitk.Image | None = None,
    *,
    b_threshold: float = 200.0,
    average: str = "none",
    dstar_bounds: tuple[float, float] = DSTAR_BOUNDS,
    progress=None,
) -> DwiMaps:
    """Segmented IVIM maps ``ivim_d`` (mm^2/s), ``ivim_f`` (fraction), ``ivim_dstar``
    (mm^2/s) and ``ivim_s0`` of a 4D DWI series, with a summary (ROI statistics with a mask)."""
    import warnings

    from primage.kinetics.series import KineticsWarning

    voxels, b_values, keep = _prepare_dwi(series_image, b_values, mask, None, None, average)
    # Validate the b-value layout before any work (raises on a bad layout).
    fit_ivim(
        np.ones((1, b_values.size)), b_values, b_threshold=b_threshold, dstar_bounds=dstar_bounds
    )
    n = voxels.voxels
    names = ("ivim_d", "ivim_f", "ivim_dstar", "ivim_s0")
    out = {name: np.full(n, np.nan) for name in names}
    report(progress, 0.0, "IVIM: fitting")

    def work(start: int, stop: int) -> IvimFit:
        signal, b = _chunk_signal(voxels, start, stop, keep, b_values, average)
        return fit_ivim(signal, b, b_threshold=b_threshold, dstar_bounds=dstar_bounds)

    for start, stop, fit in map_chunks(voxels, work, progress=progress, label="IVIM"):
        for name, values in zip(names, (fit.d, fit.f, fit.dstar, fit.s0), strict=True):
            out[name][start:stop] = values
    unfitted = int(np.count_nonzero(~np.isfinite(out["ivim_d"])))
    where = "in the mask" if mask is not None else "of the image"
    if unfitted == n:
        raise PrimageInputError(
            f"no voxel {where} can be fitted: every one has a zero or negative DWI signal"
        )
    note = _nonpositive_note(unfitted, n, where)
    if note:
        warnings.warn(note, KineticsWarning, stacklevel=2)
    summary = {
        "model": "IVIM, segmented fit",
        "b_threshold_s_per_mm2": b_threshold,
        "dstar_bounds_mm2_per_s": list(dstar_bounds),
        "b_values_s_per_mm2": [float(v) for v in b_values],
        "averaging": average,
        "voxels_fitted": int(n - unfitted),
        "voxels_not_fitted": unfitted,
        "maps": {
            "ivim_d": ADC_UNIT,
            "ivim_f": "fraction",
            "ivim_dstar": ADC_UNIT,
            "ivim_s0": "signal",
        },
    }
    curve = {}
    if mask is not None:
        summary["roi"] = {name: roi_statistics(out[name]) for name in names[:3]}
        mean_signal, mean_b = average_repeated(
            voxels.mean_signal()[keep][None, :], b_values[keep], average
        )
        roi_fit = fit_ivim(mean_signal, mean_b, b_threshold=b_threshold, dstar_bounds=dstar_bounds)
        summary["roi"]["mean_signal_fit"] = {
            "d": float(roi_fit.d[0]),
            "f": float(roi_fit.f[0]),
            "dstar": float(roi_fit.dstar[0]),
            "s0": float(roi_fit.s0[0]),
        }
        b_fit = np.linspace(0.0, float(mean_b.max()), 80)
        curve = {
            "b": mean_b,
            "signal": mean_signal[0],
            "b_fit": b_fit,
            "fit": roi_fit.predict(b_fit)[0],
        }
    report(progress, 1.0, "IVIM: done")
    maps = {name: voxels.to_image(values) for name, values in out.items()}
    return DwiMaps(maps, summary, curve)
