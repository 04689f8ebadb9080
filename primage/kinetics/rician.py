"""Rician magnitude noise: its expectation, the noise floor, and estimates of sigma.

A magnitude MR signal M = |A + n1 + i n2| with n1, n2 ~ Normal(0, sigma^2) is Rician with
true amplitude A >= 0 and noise sigma (signal units). Its moments, used by the fits:

* E[M] = sigma sqrt(pi/2) L_{1/2}(-x), x = A^2 / (2 sigma^2), with
  L_{1/2}(-x) = e^{-x/2} [(1 + x) I0(x/2) + x I1(x/2)] (exponentially scaled Bessel
  functions ``i0e``/``i1e``, so no overflow at high SNR); E[M] -> A + sigma^2 / (2A) at
  high SNR and -> sigma sqrt(pi/2) (the Rayleigh noise floor) when A -> 0.
* E[M^2] = A^2 + 2 sigma^2 exactly, so sum w (M^2 - 2 sigma^2) / sum w is an unbiased
  estimate of the w-weighted mean of A^2, whatever each voxel's A and sigma: the noise
  floor is removed from an average of many voxels without fitting anything per voxel
  (:func:`floor_corrected_mean`).

sigma comes from the user, from the air of the image (:func:`background_sigma`: the Rayleigh
distribution of A = 0 voxels), or from the residuals of the voxel fits, pooled over
voxels by empirical-Bayes shrinkage (:func:`shrink_variances`, Smyth, Stat Appl Genet Mol
Biol 2004;3:3): every voxel keeps its own estimate when the noise level varies across the
mask and shares the pooled one when it does not.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import digamma, i0e, i1e, polygamma

from primage.errors import PrimageInputError

SQRT_HALF_PI = math.sqrt(math.pi / 2.0)


def rician_mean(amplitude, sigma):
    """E[M] of Rician magnitudes with true ``amplitude`` and noise ``sigma`` (broadcast)."""
    a = np.asarray(amplitude, dtype=float)
    s = np.asarray(sigma, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        half = a * a / (4.0 * s * s)  # x / 2
        mean = s * SQRT_HALF_PI * ((1.0 + 2.0 * half) * i0e(half) + 2.0 * half * i1e(half))
    return np.where(s > 0, mean, np.abs(a))


def rician_mean_slope(amplitude, sigma):
    """dE[M]/dA = sqrt(pi/2) A / (2 sigma) e^{-x/2} [I0(x/2) + I1(x/2)]: from 0 at A = 0
    to 1 at high SNR (the information a magnitude keeps about A near the floor)."""
    a = np.asarray(amplitude, dtype=float)
    s = np.asarray(sigma, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        half = a * a / (4.0 * s * s)
        slope = SQRT_HALF_PI * a / (2.0 * s) * (i0e(half) + i1e(half))
    return np.where(s > 0, slope, 1.0)


def rician_variance(amplitude, sigma):
    """Var[M] = A^2 + 2 sigma^2 - E[M]^2: sigma^2 at high SNR, (2 - pi/2) sigma^2 at A = 0."""
    a = np.asarray(amplitude, dtype=float)
    s = np.asarray(sigma, dtype=float)
    return np.maximum(a * a + 2.0 * s * s - rician_mean(a, s) ** 2, 0.0)


def floor_corrected_mean(signal, sigma, weights=None) -> np.ndarray:
    """Noise-floor-free mean magnitude of voxels ``signal`` (n, M), per column (M,).

    sqrt(sum_i w_i (M_i^2 - 2 sigma_i^2) / sum_i w_i): the square root of an unbiased
    estimate of the weighted mean of A^2 (``sigma``: scalar or (n,); ``weights`` (n,),
    default equal). When the voxels share one decay (one ADC, one enhancement curve)
    this is that decay exactly, times the root-mean-square amplitude. Columns whose
    estimate is not positive (signal lost in the floor) are NaN.
    """
    signal = np.atleast_2d(np.asarray(signal, dtype=float))
    sigma = np.broadcast_to(np.asarray(sigma, dtype=float), signal.shape[:1])
    weights = np.ones(signal.shape[0]) if weights is None else np.asarray(weights, dtype=float)
    power = (weights @ (signal * signal) - 2.0 * np.sum(weights * sigma * sigma)) / weights.sum()
    with np.errstate(invalid="ignore"):
        return np.where(power > 0, np.sqrt(np.maximum(power, 0.0)), np.nan)


def shrink_variances(variances, dof: float) -> tuple[np.ndarray, float, float]:
    """Empirical-Bayes moderated variances (Smyth 2004): (moderated (n,), prior s0^2, prior dof).

    ``variances`` (n,) are residual variances with ``dof`` degrees of freedom each. The
    prior (a scaled inverse chi^2) is fitted to the spread of log variances beyond what
    ``dof`` explains: one noise level gives a large prior dof (every voxel ~ the pooled
    value), several levels a small one (every voxel ~ its own). Non-finite inputs stay NaN.
    """
    variances = np.asarray(variances, dtype=float)
    finite = np.isfinite(variances) & (variances > 0)
    out = np.full(variances.shape, np.nan)
    if np.count_nonzero(finite) < 3:
        out[finite] = variances[finite]
        return out, float("nan"), 0.0
    log_var = np.log(variances[finite]) - digamma(dof / 2.0) + math.log(dof / 2.0)
    excess = float(np.var(log_var, ddof=1) - polygamma(1, dof / 2.0))
    if excess <= 1e-6:
        prior_dof = math.inf
    else:
        prior_dof = 2.0 * _inverse_trigamma(excess)
    if math.isinf(prior_dof):
        prior = float(np.exp(np.mean(log_var)))
        out[finite] = prior
        return out, prior, prior_dof
    prior = float(np.exp(np.mean(log_var) + digamma(prior_dof / 2.0) - math.log(prior_dof / 2.0)))
    out[finite] = (prior_dof * prior + dof * variances[finite]) / (prior_dof + dof)
    return out, prior, prior_dof


def _inverse_trigamma(value: float) -> float:
    """y with trigamma(y) = value (Newton on 1/trigamma, as in Smyth 2004)."""
    y = 0.5 + 1.0 / value if value < 1e6 else 1.0 / math.sqrt(value)
    for _ in range(50):
        tri = float(polygamma(1, y))
        step = tri * (1.0 - tri / value) / float(polygamma(2, y))
        y += step
        if -step / y < 1e-8:
            break
    return y


def background_sigma(
    values, *, cutoff: float = 2.5, max_distance: float = 0.05
) -> tuple[float, float]:
    """sigma of the noise from the air of a magnitude image: (sigma, air fraction).

    Air (A = 0) is Rayleigh distributed with mode sigma. Started at the mode of the
    low-intensity histogram, sigma is the fixed point of the second moment of the
    Rayleigh truncated at ``cutoff`` sigma (so tissue above the cutoff does not count):
    E[M^2 | M <= c sigma] = sigma^2 (2 - c^2 q / (1 - q)), q = exp(-c^2 / 2). Exact zeros
    (masked or zero-filled backgrounds carry no noise) are ignored. Raises when the image
    has no noise-like background: fewer than 1 % of its voxels (or under 500) below the
    cutoff, or their distribution farther than ``max_distance`` (Kolmogorov-Smirnov) from
    the truncated Rayleigh (tissue, a filtered or a multi-coil background).
    """
    v = np.asarray(values, dtype=float).ravel()
    v = v[np.isfinite(v) & (v > 0)]
    if v.size < 500:
        raise PrimageInputError("too few non-zero voxels to estimate the noise from the background")
    low = v[v <= np.quantile(v, 0.5)]
    counts, edges = np.histogram(low, bins=256)
    smooth = np.convolve(counts, np.ones(5) / 5.0, mode="same")
    sigma = float((edges[np.argmax(smooth)] + edges[np.argmax(smooth) + 1]) / 2.0)
    q = math.exp(-(cutoff**2) / 2.0)
    factor = 2.0 - cutoff**2 * q / (1.0 - q)
    for _ in range(100):
        inside = v[v <= cutoff * sigma]
        if inside.size < 500:
            break
        new = math.sqrt(float(np.mean(inside * inside)) / factor)
        if abs(new - sigma) <= 1e-6 * sigma:
            sigma = new
            break
        sigma = new
    inside = np.sort(v[v <= cutoff * sigma])
    fraction = inside.size / v.size
    # The values below the cutoff must look Rayleigh (Kolmogorov-Smirnov distance to the
    # truncated Rayleigh CDF): tissue or a filtered background gives another shape.
    if inside.size >= 500 and sigma > 0:
        model = (1.0 - np.exp(-(inside**2) / (2 * sigma**2))) / (1.0 - q)
        steps = np.arange(1, inside.size + 1) / inside.size
        distance = float(np.max(np.abs(steps - model)))
    else:
        distance = 1.0
    if inside.size < 500 or fraction < 0.01 or distance > max_distance:
        raise PrimageInputError(
            "the image has no noise-only background (air) to estimate the noise from "
            f"(Rayleigh fit distance {distance:.2f}); give the noise sigma instead"
        )
    return sigma, fraction
