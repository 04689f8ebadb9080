"""Standard and extended Tofts models, fitted to every voxel at once.

Model (times in min inside, s at the interface; Ktrans and kep in 1/min, ve and vp
fractions, concentrations in mM)::

    C(t) = vp Cp(t) + Ktrans * integral_0^t Cp(s) exp(-kep (t - s)) ds,   ve = Ktrans / kep

(the standard model has vp = 0). The AIF is taken as zero before the first frame.

The convolution is evaluated on the frame grid by the exact recursion
``E_n = exp(-kep dt_n) E_{n-1} + I_n(kep)``, where the local integral
``I_n(kep) = integral_0^dt_n Cp(t_n - s) exp(-kep s) ds`` is a Taylor series in kep whose
coefficients -- the moments ``integral Cp(t_n - s) s^p ds`` -- are voxel-independent and
computed once on a fine grid (0.1 s) of the AIF. The AIF is therefore resolved finely even
when frames are seconds apart, and ``I`` for all voxels is one matrix product. The
derivative with respect to kep follows the same recursion, so the fit has an exact
Jacobian.

Fit: a grid over kep (log-spaced) with Ktrans (and vp) solved in closed form for every
voxel (matrix products against the voxel-independent basis), then bounded
Levenberg-Marquardt on (Ktrans, kep[, vp]) from the best grid point. Standard errors come
from the fit covariance; SE(ve) by the delta method.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from primage.errors import PrimageInputError
from primage.kinetics.aif import PARKER_ONSET_S, ArterialInput, population_aif
from primage.kinetics.fitting import levenberg_marquardt, standard_errors
from primage.kinetics.series import KineticsWarning, load_series, map_chunks, report
from primage.kinetics.values import check_frame_times

KEP_BOUNDS = (1e-3, 10.0)  # 1/min
KTRANS_BOUNDS = (0.0, 5.0)  # 1/min
TOFTS_UNITS = {
    "ktrans": "1/min",
    "kep": "1/min",
    "ve": "fraction",
    "vp": "fraction",
    "ktrans_se": "1/min",
    "kep_se": "1/min",
    "ve_se": "fraction",
    "vp_se": "fraction",
    "rmse": "mM",
}
#: Step of the fine grid on which the AIF moments are integrated (s).
FINE_STEP_S = 0.1


class ExponentialConvolution:
    """Convolution of one AIF with exp(-kep t) at the frame times, for many kep at once."""

    def __init__(self, times_s: np.ndarray, aif: ArterialInput, kep_max: float = KEP_BOUNDS[1]):
        times_s = np.asarray(times_s, dtype=float)
        aif.check_covers(times_s)
        self.times_min = times_s / 60.0
        self.plasma = aif.plasma(times_s)
        steps = np.diff(self.times_min)
        self.steps = np.concatenate([[0.0], steps])
        self.scale = float(steps.max())
        x_max = kep_max * self.scale
        terms, term = 1, 1.0
        while term > 1e-16 or terms < 4:  # Taylor remainder below double precision
            term *= x_max / terms
            terms += 1
        self.terms = terms
        # moments[n, p] = integral_0^dt_n Cp(t_n - s) (s / scale)^p ds, s in min.
        moments = np.zeros((times_s.size, terms))
        powers = np.arange(terms)
        for n in range(1, times_s.size):
            count = max(2, int(math.ceil(steps[n - 1] * 60.0 / FINE_STEP_S)))
            s = np.linspace(0.0, steps[n - 1], count + 1)
            cp = aif.plasma(times_s[n] - s * 60.0)
            integrand = cp[:, None] * (s[:, None] / self.scale) ** powers[None, :]
            moments[n] = np.trapezoid(integrand, s, axis=0)
        self.moments = moments
        # d(local)/d(kep) uses the moments shifted by one power: kept contiguous and scaled
        # so the derivative is one plain matrix product.
        self.moments_derivative = np.ascontiguousarray(-self.scale * moments[:, 1:])
        # Frames are usually evenly spaced: exp(-kep dt) is then computed once per distinct
        # interval instead of once per frame.
        self.step_values, self.step_index = np.unique(self.steps, return_inverse=True)

    def _coefficients(self, kep: np.ndarray) -> np.ndarray:
        """Taylor coefficients (-kep scale)^p / p!, (P, n)."""
        x = -np.asarray(kep, dtype=float) * self.scale
        coefficients = np.empty((self.terms, x.size))
        coefficients[0] = 1.0
        for p in range(1, self.terms):
            np.multiply(coefficients[p - 1], x / p, out=coefficients[p])
        return coefficients

    def evaluate(self, kep: np.ndarray, derivative: bool = False):
        """Convolution (T, n) in mM min for kep (n,) in 1/min, and d/dkep when asked."""
        kep = np.asarray(kep, dtype=float)
        coefficients = self._coefficients(kep)  # (P, n)
        local = self.moments @ coefficients  # (T, n)
        distinct = np.exp(-np.outer(self.step_values, kep))  # one row per distinct interval
        decay = [distinct[i] for i in self.step_index.ravel()]  # row views, no copy
        conv = np.empty_like(local)
        conv[0] = 0.0
        if derivative:
            d_local = self.moments_derivative @ coefficients[:-1]
            d_conv = np.empty_like(local)
            d_conv[0] = 0.0
        scratch = np.empty(kep.size)
        for n in range(1, conv.shape[0]):
            # In-place updates: this loop over frames runs for every voxel at once.
            if derivative:
                np.multiply(conv[n - 1], self.steps[n], out=scratch)
                np.subtract(d_conv[n - 1], scratch, out=scratch)
                np.multiply(decay[n], scratch, out=d_conv[n])
                d_conv[n] += d_local[n]
            np.multiply(decay[n], conv[n - 1], out=conv[n])
            conv[n] += local[n]
        return (conv, d_conv) if derivative else conv


@dataclass
class ToftsFit:
    """Voxel-wise Tofts fit (arrays of n voxels; NaN where no fit was possible)."""

    ktrans: np.ndarray
    kep: np.ndarray
    ve: np.ndarray
    vp: np.ndarray
    ktrans_se: np.ndarray
    kep_se: np.ndarray
    ve_se: np.ndarray
    vp_se: np.ndarray
    rmse: np.ndarray
    fitted: np.ndarray

    def as_dict(self) -> dict[str, np.ndarray]:
        return {name: getattr(self, name) for name in TOFTS_UNITS}


def fit_tofts(
    concentration: np.ndarray,
    times_s: np.ndarray,
    aif: ArterialInput,
    *,
    extended: bool = False,
    kep_bounds: tuple[float, float] = KEP_BOUNDS,
    ktrans_bounds: tuple[float, float] = KTRANS_BOUNDS,
    grid_points: int = 64,
    convolution: ExponentialConvolution | None = None,
) -> ToftsFit:
    """Fit the (extended) Tofts model to every row of ``concentration`` (n, T) in mM."""
    conc = np.atleast_2d(np.asarray(concentration, dtype=float))
    times_s = np.asarray(times_s, dtype=float)
    n, count = conc.shape
    if count != times_s.size:
        raise PrimageInputError(f"{count} frames per voxel but {times_s.size} frame times")
    if convolution is None:
        convolution = ExponentialConvolution(times_s, aif, kep_bounds[1])
    plasma = convolution.plasma
    nan = np.full(n, np.nan)
    fitted = np.all(np.isfinite(conc), axis=1)
    rows = np.flatnonzero(fitted)
    result = ToftsFit(*(nan.copy() for _ in range(9)), fitted)
    if rows.size == 0:
        return result
    data = conc[rows]

    # Grid over kep; Ktrans (and vp) >= 0 in closed form for every voxel and grid point.
    grid = np.geomspace(kep_bounds[0], kep_bounds[1], grid_points)
    basis = convolution.evaluate(grid)  # (T, J)
    cross = data @ basis  # (n, J)
    norms = (basis**2).sum(axis=0)
    if not extended:
        amplitude = np.clip(cross / norms, *ktrans_bounds)
        cost = amplitude**2 * norms - 2.0 * amplitude * cross
        best = np.argmin(cost, axis=1)
        start = np.vstack([amplitude[np.arange(rows.size), best], grid[best]])
    else:
        cp_cross = data @ plasma  # (n,)
        pp = plasma @ plasma
        bp = basis.T @ plasma  # (J,)
        with np.errstate(divide="ignore", invalid="ignore"):
            det = norms * pp - bp**2
            k_both = (cross * pp - cp_cross[:, None] * bp) / det
            v_both = (cp_cross[:, None] * norms - cross * bp) / det
        both_ok = (k_both >= 0) & (v_both >= 0) & np.isfinite(k_both) & np.isfinite(v_both)
        k_only = np.maximum(cross / norms, 0.0)
        v_only = np.broadcast_to(np.maximum(cp_cross / pp, 0.0)[:, None], cross.shape)

        def cost_of(k, v):
            return (
                k**2 * norms
                + v**2 * pp
                + 2 * k * v * bp
                - 2 * k * cross
                - 2 * v * cp_cross[:, None]
            )

        cost_both = np.where(both_ok, cost_of(k_both, v_both), np.inf)
        cost_k = cost_of(k_only, 0.0)
        cost_v = cost_of(0.0, v_only)
        choice = np.argmin(np.stack([cost_both, cost_k, cost_v]), axis=0)
        k = np.choose(choice, [np.where(both_ok, k_both, 0), k_only, np.zeros_like(k_only)])
        v = np.choose(choice, [np.where(both_ok, v_both, 0), np.zeros_like(k_only), v_only])
        cost = np.min(np.stack([cost_both, cost_k, cost_v]), axis=0)
        best = np.argmin(cost, axis=1)
        pick = np.arange(rows.size), best
        start = np.vstack([np.clip(k[pick], *ktrans_bounds), grid[best], np.clip(v[pick], 0, 1)])

    def model(params: np.ndarray, _rows: np.ndarray):
        conv, d_conv = convolution.evaluate(params[1], derivative=True)  # (T, n)
        prediction = params[0] * conv
        jacobian = np.empty((params.shape[0],) + conv.shape)
        jacobian[0] = conv
        np.multiply(params[0], d_conv, out=jacobian[1])
        if extended:
            prediction += params[2] * plasma[:, None]
            jacobian[2] = plasma[:, None]
        return prediction, jacobian

    lower = [ktrans_bounds[0], kep_bounds[0]] + ([0.0] if extended else [])
    upper = [ktrans_bounds[1], kep_bounds[1]] + ([1.0] if extended else [])
    fit = levenberg_marquardt(model, start, data.T, lower, upper)
    errors = standard_errors(fit.covariance)
    ktrans, kep = fit.params[0], fit.params[1]
    with np.errstate(divide="ignore", invalid="ignore"):
        ve = ktrans / kep
        relative = (
            (errors[:, 0] / ktrans) ** 2
            + (errors[:, 1] / kep) ** 2
            - 2.0 * fit.covariance[:, 0, 1] / (ktrans * kep)
        )
        ve_se = np.abs(ve) * np.sqrt(np.maximum(relative, 0.0))
    result.ktrans[rows] = ktrans
    result.kep[rows] = kep
    result.ve[rows] = ve
    result.ktrans_se[rows] = errors[:, 0]
    result.kep_se[rows] = errors[:, 1]
    result.ve_se[rows] = ve_se
    result.vp[rows] = fit.params[2] if extended else 0.0
    result.vp_se[rows] = errors[:, 2] if extended else np.nan
    result.rmse[rows] = np.sqrt(fit.rss / count)
    return result


def fit_population_delay(
    curve: np.ndarray,
    times_s: np.ndarray,
    *,
    extended: bool = False,
    haematocrit: float = 0.42,
    arrival_s: float | None = None,
    search_s: float = 20.0,
) -> float:
    """Delay (s) of the Parker AIF that best fits one tissue curve (e.g. the mask mean).

    Searched around the arrival-derived guess (``arrival_s`` minus Parker's onset; the
    curve's arrival is detected when not given) every 1 s over +-``search_s``, then every
    0.1 s around the best.
    """
    from primage.kinetics.dce import mean_curve_arrival

    curve = np.asarray(curve, dtype=float)[None, :]
    if arrival_s is None:
        arrival_s = mean_curve_arrival(curve[0], times_s)
    guess = arrival_s - PARKER_ONSET_S

    def cost(delay: float) -> float:
        aif = population_aif(delay, haematocrit)
        fit = fit_tofts(curve, times_s, aif, extended=extended, grid_points=32)
        return float(fit.rmse[0]) if np.isfinite(fit.rmse[0]) else np.inf

    coarse = guess + np.arange(-search_s, search_s + 0.5, 1.0)
    best = coarse[int(np.argmin([cost(d) for d in coarse]))]
    fine = best + np.arange(-1.0, 1.05, 0.1)
    return float(fine[int(np.argmin([cost(d) for d in fine]))])


# --- images -----------------------------------------------------------------------------


@dataclass
class ToftsMaps:
    """Tofts maps (Float32 images, 0 where not fitted), the AIF used and a summary."""

    maps: dict[str, sitk.Image]
    summary: dict
    aif: ArterialInput
    curve: dict


def tofts_maps(
    concentration_image: sitk.Image,
    times,
    aif: ArterialInput | str,
    mask: sitk.Image | None = None,
    *,
    extended: bool = False,
    aif_delay_s: float | None = None,
    haematocrit: float = 0.42,
    progress=None,
) -> ToftsMaps:
    """Ktrans, kep, ve (and vp), their standard errors and the RMSE of a 4D concentration
    series (mM; last axis = time, ``times`` in s).

    ``aif`` is an :class:`ArterialInput` or ``"parker"``; for the population AIF the delay
    is ``aif_delay_s`` or, when None, fitted to the mean curve of the fitted voxels.
    """
    if concentration_image.GetDimension() != 4:
        raise PrimageInputError(
            f"concentration is a {concentration_image.GetDimension()}D image; a 4D series "
            "(one volume per time point) is expected"
        )
    times = check_frame_times(times, concentration_image.GetSize()[3], role="concentration")
    if isinstance(aif, str):
        if aif != "parker":
            raise PrimageInputError(f"unknown population AIF {aif!r}: use parker")
        aif = population_aif(0.0 if aif_delay_s is None else aif_delay_s, haematocrit)
        fit_delay = aif_delay_s is None
    else:
        aif.check_covers(times)
        fit_delay = False
    voxels = load_series(concentration_image, mask, role="concentration", allow_zero_frames=True)
    report(progress, 0.0, "Tofts: mean curve")
    mean = voxels.mean_signal()
    if fit_delay:
        delay = fit_population_delay(mean, times, extended=extended, haematocrit=aif.haematocrit)
        aif = population_aif(delay, aif.haematocrit)
    convolution = ExponentialConvolution(times, aif)
    n = voxels.voxels
    out = {name: np.full(n, np.nan) for name in TOFTS_UNITS}

    def work(start: int, stop: int) -> ToftsFit:
        return fit_tofts(
            voxels.chunk(start, stop), times, aif, extended=extended, convolution=convolution
        )

    for start, stop, fit in map_chunks(
        voxels, work, size=16384, progress=progress, label="Tofts", start=0.05, span=0.9
    ):
        for name, values in fit.as_dict().items():
            out[name][start:stop] = values
    unfitted = int(np.count_nonzero(~np.isfinite(out["ktrans"])))
    if unfitted:
        warnings.warn(
            f"{unfitted} of {n} voxels could not be fitted (0 in the maps)",
            KineticsWarning,
            stacklevel=2,
        )
    mean_fit = fit_tofts(mean[None, :], times, aif, extended=extended, convolution=convolution)
    summary = {
        "model": "extended Tofts" if extended else "standard Tofts",
        "aif": aif.describe(),
        "aif_delay_fitted": fit_delay,
        "frame_times_s": [float(t) for t in times],
        "voxels_fitted": int(n - unfitted),
        "voxels_not_fitted": unfitted,
        "units": dict(TOFTS_UNITS),
        "mean_curve_fit": {name: float(v[0]) for name, v in mean_fit.as_dict().items()},
    }
    if mask is not None:
        from primage.kinetics.dwi import roi_statistics

        summary["roi"] = {name: roi_statistics(out[name]) for name in ("ktrans", "kep", "ve", "vp")}
    fine = np.linspace(times[0], times[-1], 200)
    fine_fit = _predict(mean_fit, fine, aif, extended)
    curve = {"times": times, "concentration": mean, "times_fit": fine, "fit": fine_fit}
    maps = {name: voxels.to_image(values) for name, values in out.items()}
    if not extended:
        maps.pop("vp")
        maps.pop("vp_se")
    report(progress, 1.0, "Tofts: done")
    return ToftsMaps(maps, summary, aif, curve)


def _predict(fit: ToftsFit, times_s: np.ndarray, aif: ArterialInput, extended: bool):
    convolution = ExponentialConvolution(times_s, aif)
    conv = convolution.evaluate(fit.kep)
    prediction = fit.ktrans[None, :] * conv
    if extended:
        prediction = prediction + fit.vp[None, :] * convolution.plasma[:, None]
    return prediction[:, 0]
