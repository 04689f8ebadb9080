"""Fit-Cluster-Fit (FCF) habitats for ADC and iAUC60 (Cerda-Alberich et al., Cancers 2020).

The published steps, with what makes them hold for magnitude images at mixed SNR (Rician
noise, :mod:`~primage.kinetics.rician`):

0. Noise: sigma per voxel, given (scalar or per voxel) or estimated: ADC from the
   residuals of the voxel fits, iAUC60 from the baseline frames, both moderated by
   empirical Bayes (every voxel keeps its own sigma when the noise level varies across
   the tumour, shares the pooled one when it does not).
1. Fit: every voxel in the tumour mask is fitted with its standard error. ADC: the
   Rician-expectation fit (not biased low near the noise floor), SE from its sandwich
   covariance with the Rician variance (the voxel's real uncertainty at low SNR);
   iAUC60: the semi-quantitative analysis, SE propagated from the voxel's own sigma.
2. Cluster: the voxel values are split into k habitats by one-dimensional k-means
   (Lloyd's algorithm started at the quantiles (j - 1/2) / k, so the result is
   deterministic; no random seed is involved). Habitats are numbered by their centre,
   1 = lowest value; in 1D, habitat j is the interval between the midpoints of
   neighbouring centres.
3. Confidence: the probability that a voxel's value lies in its habitat's interval when
   the value is normally distributed with its standard error,
   Phi((upper - v) / se) - Phi((lower - v) / se). Voxels below the confidence threshold
   (default 0.70), or without a valid fit, are excluded (habitat label 0).
4. Average and fit again: the signal (per b-value or per frame) of the kept voxels of
   each habitat is averaged with weights 1/sigma^2 and with the noise floor removed,
   sqrt(sum w (M^2 - 2 sigma^2) / sum w) (E[M^2] = A^2 + 2 sigma^2 exactly, so the
   average has the habitat's own decay or enhancement, not the floor's), and fitted once
   more: the robust habitat value with its SE.

Why: the plain mean of magnitudes carries the Rician floor (sigma^2 / 2A and more at
high b), so its refit was biased low and low-SNR voxels weighed as much as the others;
``method="nlls"`` (ADC) and ``noise="pooled"`` (iAUC60) keep the plain published steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk
from scipy.special import ndtr

from primage.errors import PrimageInputError
from primage.kinetics.rician import floor_corrected_mean, rician_variance, shrink_variances
from primage.kinetics.series import report

CLUSTERING_METHOD = (
    "one-dimensional k-means (Lloyd's algorithm, started at the quantiles (j - 1/2)/k; "
    "deterministic), habitats numbered by increasing centre"
)


def kmeans_1d(values: np.ndarray, k: int, *, max_iterations: int = 300):
    """1D k-means: (labels 1..k per value, centres ascending (k,), thresholds (k-1,))."""
    values = np.asarray(values, dtype=float)
    if k < 1:
        raise PrimageInputError(f"the number of habitats must be >= 1, got {k}")
    distinct = np.unique(values)
    if distinct.size < k:
        raise PrimageInputError(
            f"cannot form {k} habitats from {distinct.size} distinct voxel value(s)"
        )
    centres = np.quantile(values, (np.arange(k) + 0.5) / k)
    labels = None
    for _ in range(max_iterations):
        centres = np.sort(centres)
        thresholds = (centres[1:] + centres[:-1]) / 2.0
        new_labels = np.searchsorted(thresholds, values, side="right")
        counts = np.bincount(new_labels, minlength=k)
        sums = np.bincount(new_labels, weights=values, minlength=k)
        # An emptied cluster (possible with ties) restarts at the value farthest from its centre.
        for empty in np.flatnonzero(counts == 0):
            farthest = int(np.argmax(np.abs(values - centres[new_labels])))
            sums[empty], counts[empty] = values[farthest], 1
        new_centres = sums / counts
        if labels is not None and np.array_equal(new_labels, labels):
            centres = new_centres
            break
        labels, centres = new_labels, new_centres
    order = np.argsort(centres)
    centres = centres[order]
    thresholds = (centres[1:] + centres[:-1]) / 2.0
    labels = np.searchsorted(thresholds, values, side="right") + 1
    return labels, centres, thresholds


def habitat_confidence(
    values: np.ndarray, se: np.ndarray, labels: np.ndarray, thresholds: np.ndarray
) -> np.ndarray:
    """P(value in its habitat's interval) for value ~ Normal(value, se^2), per voxel."""
    values = np.asarray(values, dtype=float)
    se = np.asarray(se, dtype=float)
    bounds = np.concatenate([[-np.inf], thresholds, [np.inf]])
    low = bounds[labels - 1]
    high = bounds[labels]
    with np.errstate(divide="ignore", invalid="ignore"):
        upper = np.where(se > 0, ndtr((high - values) / se), (values < high).astype(float))
        lower = np.where(se > 0, ndtr((low - values) / se), (values < low).astype(float))
    return np.clip(upper - lower, 0.0, 1.0)


@dataclass
class Habitat:
    """One habitat's result (``value``/``se``: the refit of the mean signal)."""

    label: int
    voxels_kept: int
    voxels_total: int
    value: float
    se: float
    voxel_mean: float
    voxel_median: float
    parameter: str
    unit: str
    centre: float
    x: list = field(default_factory=list)  # b-values or times of the mean signal
    signal: list = field(default_factory=list)  # mean signal of the kept voxels
    x_fit: list = field(default_factory=list)
    fit: list = field(default_factory=list)  # fitted curve

    def record(self) -> dict:
        """JSON-ready row (the fields of ``fcf.json``)."""
        return {
            "label": self.label,
            "voxels_kept": self.voxels_kept,
            "voxels_total": self.voxels_total,
            "value": self.value,
            "se": self.se,
            "voxel_mean": self.voxel_mean,
            "voxel_median": self.voxel_median,
            "parameter": self.parameter,
            "unit": self.unit,
            "centre": self.centre,
        }


@dataclass
class FcfResult:
    """Per-voxel habitat labels (0 = excluded) and confidence, plus the habitat table."""

    labels: np.ndarray  # (n,) int
    confidence: np.ndarray  # (n,)
    values: np.ndarray  # (n,) voxel-wise value
    se: np.ndarray  # (n,) its standard error
    habitats: list[Habitat]
    thresholds: np.ndarray
    parameter: str
    unit: str
    confidence_threshold: float
    notes: dict = field(default_factory=dict)

    def record(self) -> dict:
        """JSON-ready summary (the content of ``fcf.json``)."""
        return {
            "parameter": self.parameter,
            "unit": self.unit,
            "clusters": len(self.habitats),
            "confidence_threshold": self.confidence_threshold,
            "clustering": CLUSTERING_METHOD,
            "thresholds": [float(t) for t in self.thresholds],
            "voxels_in_mask": int(self.labels.size),
            "voxels_without_fit": int(np.count_nonzero(~np.isfinite(self.values))),
            "habitats": [habitat.record() for habitat in self.habitats],
            **self.notes,
        }


def _cluster(values, se, k, confidence_threshold):
    if not 0.0 <= confidence_threshold <= 1.0:
        raise PrimageInputError(f"confidence must be in [0, 1], got {confidence_threshold}")
    valid = np.isfinite(values) & np.isfinite(se)
    if np.count_nonzero(valid) < k:
        raise PrimageInputError(
            f"only {np.count_nonzero(valid)} voxel(s) of the mask have a valid fit; "
            f"{k} habitats cannot be formed"
        )
    labels = np.zeros(values.size, dtype=int)
    confidence = np.zeros(values.size)
    cluster_labels, centres, thresholds = kmeans_1d(values[valid], k)
    labels[valid] = cluster_labels
    confidence[valid] = habitat_confidence(values[valid], se[valid], cluster_labels, thresholds)
    kept = valid & (confidence >= confidence_threshold)
    return labels, confidence, kept, centres, thresholds


def _finish(labels, kept, values, centres, k):
    for label in range(1, k + 1):
        members = (labels == label) & kept
        yield label, members, int(np.count_nonzero(labels == label))


def _noise_sigma(noise_sigma, n: int):
    """A given noise sigma as (n,) per voxel, or None to estimate it."""
    if noise_sigma is None:
        return None
    sigma = np.asarray(noise_sigma, dtype=float)
    if sigma.ndim > 1 or (sigma.ndim == 1 and sigma.size != n):
        raise PrimageInputError(f"noise sigma: give one value or one per voxel ({n})")
    if not np.all(np.isfinite(sigma) & (sigma > 0)):
        raise PrimageInputError("the noise sigma must be finite and > 0 (signal units)")
    return np.broadcast_to(sigma, (n,)).astype(float)


def residual_sigma(signal: np.ndarray, b_values: np.ndarray) -> tuple[np.ndarray, dict]:
    """Per-voxel noise sigma of DWI magnitudes from the residuals of the voxel fits.

    NLLS residual variances (n - 2 degrees of freedom) are moderated by empirical Bayes
    (:func:`~primage.kinetics.rician.shrink_variances`), then refined once with the
    Rician fit: its residual variance divided by the mean Var[M] / sigma^2 of the fitted
    signals (below 1 near the floor, where magnitudes scatter less than sigma). Returns
    (sigma (n,), JSON-ready notes); NaN where a voxel has no fit.
    """
    from primage.kinetics.dwi import fit_adc

    dof = b_values.size - 2
    if dof < 1:
        raise PrimageInputError("estimating the noise from residuals needs at least 3 signals")
    first = fit_adc(signal, b_values, method="nlls")
    variance, _, _ = shrink_variances(first.rss / dof, dof)
    sigma = np.sqrt(variance)
    ok = np.isfinite(sigma) & (sigma > 0)
    rician = fit_adc(signal[ok], b_values, method="rician", sigma=sigma[ok])
    amplitude = rician.predict(b_values)
    ratio = rician_variance(amplitude, sigma[ok, None]).mean(axis=1) / sigma[ok] ** 2
    refined = np.full(sigma.shape, np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        refined[ok] = rician.rss / dof / ratio
    variance, prior, prior_dof = shrink_variances(refined, dof)
    notes = {
        "noise_sigma_source": "voxel fit residuals, empirical-Bayes moderated",
        "noise_sigma_prior": math.sqrt(prior) if prior > 0 else float("nan"),
        "noise_sigma_prior_dof": prior_dof if math.isfinite(prior_dof) else "inf",
    }
    return np.sqrt(variance), notes


def _mean_signal(signal, sigma, members):
    """Step 4's habitat signal: with sigma, the 1/sigma^2-weighted, noise-floor-corrected
    mean (:func:`~primage.kinetics.rician.floor_corrected_mean`); without, the plain mean."""
    if sigma is None:
        return signal[members].mean(axis=0)
    weights = 1.0 / sigma[members] ** 2
    return floor_corrected_mean(signal[members], sigma[members], weights)


def fcf_adc(
    signal: np.ndarray,
    b_values: np.ndarray,
    *,
    clusters: int = 2,
    confidence: float = 0.70,
    method: str = "rician",
    noise_sigma=None,
) -> FcfResult:
    """Fit-Cluster-Fit of the ADC of every row of ``signal`` (voxels of the tumour, len(b)).

    ``method``: the voxel fit, ``"rician"`` (default; the noise-floor-aware steps of the
    module docstring) or ``"nlls"``/``"wls"`` (the plain published steps: unweighted mean
    signal). ``noise_sigma`` (signal units; a scalar or one per voxel): None estimates
    it per voxel from the fit residuals (:func:`residual_sigma`).
    """
    from primage.kinetics.dwi import ADC_UNIT, fit_adc

    signal = np.atleast_2d(np.asarray(signal, dtype=float))
    b_values = np.asarray(b_values, dtype=float)
    sigma = _noise_sigma(noise_sigma, signal.shape[0])
    notes = {"voxel_fit": method}
    if method == "rician":
        if sigma is None:
            sigma, estimate = residual_sigma(signal, b_values)
            notes |= estimate
        else:
            notes["noise_sigma_source"] = "given"
        valid = np.isfinite(sigma) & (sigma > 0)
        fit = fit_adc(signal, b_values, method=method, sigma=np.where(valid, sigma, 0.0))
        fit.adc[~valid] = fit.adc_se[~valid] = np.nan
        notes["noise_sigma_median"] = float(np.nanmedian(sigma))
        notes["mean_signal"] = (
            "1/sigma^2-weighted, noise floor removed: sqrt(mean(M^2 - 2 sigma^2))"
        )
    else:
        fit = fit_adc(signal, b_values, method=method)
        sigma = None
        notes["mean_signal"] = "arithmetic mean of the magnitudes"
    labels, conf, kept, centres, thresholds = _cluster(fit.adc, fit.adc_se, clusters, confidence)
    habitats = []
    b_fit = np.linspace(0.0, float(b_values.max()), 50)
    for label, members, total in _finish(labels, kept, fit.adc, centres, clusters):
        value = se = mean = median = float("nan")
        mean_signal, curve = np.full(b_values.size, np.nan), np.full(b_fit.size, np.nan)
        if members.any():
            mean_signal = _mean_signal(signal, sigma, members)
            # b-values whose signal is lost in the noise floor carry no decay information.
            usable = np.isfinite(mean_signal)
            if np.unique(b_values[usable]).size >= 2:
                refit = fit_adc(mean_signal[None, usable], b_values[usable], method="nlls")
                value, se = float(refit.adc[0]), float(refit.adc_se[0])
                curve = refit.predict(b_fit)[0]
            mean, median = float(fit.adc[members].mean()), float(np.median(fit.adc[members]))
        habitats.append(
            Habitat(
                label,
                int(members.sum()),
                total,
                value,
                se,
                mean,
                median,
                "ADC",
                ADC_UNIT,
                float(centres[label - 1]),
                b_values.tolist(),
                mean_signal.tolist(),
                b_fit.tolist(),
                curve.tolist(),
            )
        )
    labels = np.where(kept, labels, 0)
    return FcfResult(
        labels, conf, fit.adc, fit.adc_se, habitats, thresholds, "ADC", ADC_UNIT, confidence, notes
    )


def fcf_iauc60(
    signal: np.ndarray,
    times: np.ndarray,
    *,
    clusters: int = 2,
    confidence: float = 0.70,
    baseline_frames: int | None = None,
    arrival: str = "global",
    noise: str = "voxel",
) -> FcfResult:
    """Fit-Cluster-Fit of the iAUC60 of every row of ``signal`` (voxels of the tumour, T).

    ``noise="voxel"`` (default): each voxel's noise SD is its baseline SD, moderated by
    empirical Bayes; it sets the voxel's iAUC60 SE (so the confidence of a low-SNR voxel
    is its own), the 1/sigma^2 weights and the noise-floor correction of the habitat mean
    signal, whose refit uses the SD of that weighted mean. ``noise="pooled"``: the plain
    published steps (one pooled SD, unweighted mean signal).
    """
    from primage.kinetics.dce import (
        SEMI_QUANTITATIVE_UNITS,
        baseline_variance,
        mean_curve_arrival,
        pooled_noise_sd,
        semi_quantitative,
    )

    if noise not in ("voxel", "pooled"):
        raise PrimageInputError(f"unknown FCF noise model {noise!r}: use voxel or pooled")
    signal = np.atleast_2d(np.asarray(signal, dtype=float))
    times = np.asarray(times, dtype=float)
    mean = signal.mean(axis=0)
    global_arrival = mean_curve_arrival(mean, times)
    if baseline_frames is None:
        baseline_frames = int(np.count_nonzero(times <= global_arrival + 1e-9))
    variances = baseline_variance(signal, baseline_frames)
    noise_sd = pooled_noise_sd(variances, baseline_frames)
    if not np.isfinite(noise_sd):
        raise PrimageInputError(
            "iAUC60 uncertainty needs at least two baseline frames (give --baseline-frames >= 2)"
        )
    options = dict(baseline_frames=baseline_frames, global_arrival=global_arrival)
    voxel = semi_quantitative(signal, times, noise_sd=noise_sd, arrival=arrival, **options)
    notes = {"noise": noise}
    sigma = None
    if noise == "voxel":
        moderated, _, prior_dof = shrink_variances(variances, baseline_frames - 1)
        sigma = np.sqrt(np.where(np.isfinite(moderated), moderated, noise_sd**2))
        # The iAUC60 variance is linear in the noise variance: rescale to each voxel's SD.
        voxel.iauc60_se = voxel.iauc60_se * sigma / noise_sd
        notes["noise_sd_prior_dof"] = prior_dof if math.isfinite(prior_dof) else "inf"
        notes["mean_signal"] = (
            "1/sigma^2-weighted, noise floor removed: sqrt(mean(M^2 - 2 sigma^2))"
        )
    labels, conf, kept, centres, thresholds = _cluster(
        voxel.iauc60, voxel.iauc60_se, clusters, confidence
    )
    unit = SEMI_QUANTITATIVE_UNITS["iauc60"]
    habitats = []
    for label, members, total in _finish(labels, kept, voxel.iauc60, centres, clusters):
        value = se = mean_value = median = float("nan")
        mean_signal = np.full(times.size, np.nan)
        if members.any():
            mean_signal = _mean_signal(signal, sigma, members)
            if sigma is None:
                mean_sd = noise_sd / math.sqrt(members.sum())
            else:
                mean_sd = 1.0 / math.sqrt(float(np.sum(1.0 / sigma[members] ** 2)))
            if np.all(np.isfinite(mean_signal)):
                refit = semi_quantitative(
                    mean_signal[None, :], times, noise_sd=mean_sd, arrival="voxel", **options
                )
                value, se = float(refit.iauc60[0]), float(refit.iauc60_se[0])
            mean_value = float(voxel.iauc60[members].mean())
            median = float(np.median(voxel.iauc60[members]))
        baseline = mean_signal[:baseline_frames].mean()
        enhancement = mean_signal / baseline - 1.0
        habitats.append(
            Habitat(
                label,
                int(members.sum()),
                total,
                value,
                se,
                mean_value,
                median,
                "iAUC60",
                unit,
                float(centres[label - 1]),
                times.tolist(),
                enhancement.tolist(),
                times.tolist(),
                enhancement.tolist(),
            )
        )
    labels = np.where(kept, labels, 0)
    notes |= {
        "baseline_frames": baseline_frames,
        "mean_curve_bolus_arrival_s": global_arrival,
        "noise_sd": noise_sd,
        "curves": "relative enhancement of the habitat mean signal",
    }
    return FcfResult(
        labels,
        conf,
        voxel.iauc60,
        voxel.iauc60_se,
        habitats,
        thresholds,
        "iAUC60",
        unit,
        confidence,
        notes,
    )


@dataclass
class FcfMaps:
    """Habitat label map (UInt8, 0 = excluded or outside), confidence map and result."""

    habitats: sitk.Image
    confidence: sitk.Image
    result: FcfResult


def fcf_maps(
    series_image: sitk.Image,
    values,
    mask: sitk.Image,
    *,
    parameter: str,
    clusters: int = 2,
    confidence: float = 0.70,
    baseline_frames: int | None = None,
    noise_sigma: float | None = None,
    progress=None,
) -> FcfMaps:
    """Fit-Cluster-Fit on a 4D series inside ``mask``: ``parameter`` is "adc" (``values``:
    b-values, s/mm^2) or "iauc60" (``values``: frame times, s). ``noise_sigma`` (ADC only,
    signal units): the magnitude noise SD if known; None estimates it per voxel."""
    from primage.kinetics.dce import prepare_dce
    from primage.kinetics.dwi import _prepare_dwi

    if mask is None:
        raise PrimageInputError("Fit-Cluster-Fit needs a tumour mask")
    if not 2 <= clusters <= 10:
        raise PrimageInputError(f"clusters must be between 2 and 10, got {clusters}")
    if not 0.0 <= confidence <= 1.0:
        raise PrimageInputError(f"confidence must be in [0, 1], got {confidence}")
    if parameter == "adc":
        voxels, b_values, keep = _prepare_dwi(series_image, values, mask, None, None, "none")
        report(progress, 0.0, "FCF adc: fitting voxels")
        signal = voxels.chunk(0, voxels.voxels)
        result = fcf_adc(
            signal, b_values, clusters=clusters, confidence=confidence, noise_sigma=noise_sigma
        )
    elif parameter == "iauc60":
        voxels, times = prepare_dce(series_image, values, mask)
        report(progress, 0.0, "FCF iauc60: fitting voxels")
        signal = voxels.chunk(0, voxels.voxels)
        result = fcf_iauc60(
            signal, times, clusters=clusters, confidence=confidence, baseline_frames=baseline_frames
        )
    else:
        raise PrimageInputError(f"unknown FCF parameter {parameter!r}: use adc or iauc60")
    report(progress, 0.9, f"FCF {parameter}: maps")
    labels = voxels.to_image(result.labels.astype(float), pixel=sitk.sitkUInt8)
    conf = voxels.to_image(result.confidence)
    report(progress, 1.0, f"FCF {parameter}: done")
    return FcfMaps(labels, conf, result)
