"""Habitat phantoms with Rician magnitude noise at mixed SNR, and the naive habitat estimate.

A spherical tumour (radius ``radius`` voxels in a ``size``^3 grid) with a core (radius
``core_radius`` x radius; habitat 1: low ADC, low enhancement) and a rim (habitat 2). A
random ``low_fraction`` of the voxels has the low SNR, the others the high one (SNR at
b = 0 or in the DCE baseline). ``vary="sigma"``: every voxel has the same amplitude and
its own noise sigma (e.g. coil sensitivity); ``vary="s0"``: one sigma, the amplitude
varies (e.g. proton density). Used by the tests and ``benchmarks/bench_fcf.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from primage.kinetics.fcf import kmeans_1d

#: b-values (s/mm^2) and frame times (s) of the phantoms.
PHANTOM_B_VALUES = np.array([0.0, 50.0, 100.0, 200.0, 400.0, 600.0, 800.0, 1000.0])
PHANTOM_TIMES = np.arange(0.0, 240.1, 4.0)


@dataclass
class Phantom:
    """Voxel signals (n, M) of the tumour with per-voxel truth."""

    signal: np.ndarray  # Rician magnitudes
    clean: np.ndarray  # noise-free amplitudes
    sigma: np.ndarray  # (n,) noise SD per voxel
    core: np.ndarray  # (n,) bool: habitat 1
    x: np.ndarray  # b-values (s/mm^2) or frame times (s)


def _sphere_voxels(rng, size, radius, core_radius, low_fraction, snr):
    centre = (size - 1) / 2.0
    z, y, x = np.mgrid[:size, :size, :size] - centre
    r = np.sqrt(x * x + y * y + z * z)
    r = r[r <= radius]
    core = r < core_radius * radius
    low = rng.random(core.size) < low_fraction
    return core, np.where(low, snr[1], snr[0])


def _magnitude(rng, clean, sigma):
    noise = sigma[:, None]
    real = clean + rng.normal(0.0, 1.0, clean.shape) * noise
    return np.hypot(real, rng.normal(0.0, 1.0, clean.shape) * noise)


def _scale(snr, amplitude, vary):
    if vary == "sigma":
        return np.full(snr.size, amplitude), amplitude / snr
    if vary == "s0":
        return amplitude * snr / snr.max(), np.full(snr.size, amplitude / snr.max())
    raise ValueError(f"vary must be 'sigma' or 's0', not {vary!r}")


def mixed_snr_dwi(
    seed: int,
    *,
    adc=(0.7e-3, 1.6e-3),
    snr=(60.0, 5.0),
    low_fraction: float = 0.25,
    vary: str = "sigma",
    size: int = 32,
    radius: float = 14.0,
    core_radius: float = 0.75,
    s0: float = 1000.0,
    b_values: np.ndarray = PHANTOM_B_VALUES,
) -> Phantom:
    """DWI magnitudes of the sphere: ADC ``adc`` = (core, rim) mm^2/s, SNR at b = 0."""
    rng = np.random.default_rng(seed)
    core, voxel_snr = _sphere_voxels(rng, size, radius, core_radius, low_fraction, snr)
    amplitude, sigma = _scale(voxel_snr, s0, vary)
    truth = np.where(core, adc[0], adc[1])
    clean = amplitude[:, None] * np.exp(-np.outer(truth, b_values))
    return Phantom(_magnitude(rng, clean, sigma), clean, sigma, core, np.asarray(b_values))


def mixed_snr_dce(
    seed: int,
    *,
    ktrans=(0.05, 0.4),
    ve=(0.2, 0.3),
    snr=(60.0, 5.0),
    low_fraction: float = 0.25,
    vary: str = "sigma",
    size: int = 32,
    radius: float = 14.0,
    core_radius: float = 0.75,
    times: np.ndarray = PHANTOM_TIMES,
    aif_delay_s: float = 20.0,
) -> Phantom:
    """DCE magnitudes of the sphere: Tofts (Ktrans 1/min, ve) with the Parker AIF, SPGR
    signal (T10 1.3 s, r1 4.5 /(mM s), TR 4 ms, 15 deg), SNR of the baseline."""
    from primage.kinetics.aif import population_aif
    from primage.kinetics.tofts import ExponentialConvolution
    from primage.synthetic import spgr_signal

    rng = np.random.default_rng(seed)
    core, voxel_snr = _sphere_voxels(rng, size, radius, core_radius, low_fraction, snr)
    convolution = ExponentialConvolution(np.asarray(times), population_aif(aif_delay_s))
    curves = []
    for k, v in zip(ktrans, ve, strict=True):
        concentration = k * convolution.evaluate(np.array([k / v]))[:, 0]
        curves.append(spgr_signal(1.0, 1 / 1.3 + 4.5 * concentration, 0.004, 15.0))
    shape = np.where(core[:, None], curves[0][None, :], curves[1][None, :])
    baseline = spgr_signal(1.0, 1 / 1.3, 0.004, 15.0)
    amplitude, sigma = _scale(voxel_snr, 1000.0, vary)
    clean = amplitude[:, None] * shape / baseline
    return Phantom(_magnitude(rng, clean, sigma), clean, sigma, core, np.asarray(times))


def loglinear_adc(signal: np.ndarray, b_values: np.ndarray) -> np.ndarray:
    """Ordinary least-squares fit of log S = log S0 - b ADC per voxel (mm^2/s; NaN where a
    signal is not positive): the usual voxel-wise ADC map."""
    from primage.kinetics.dwi import _loglinear

    signal = np.atleast_2d(np.asarray(signal, dtype=float))
    with np.errstate(divide="ignore", invalid="ignore"):
        log_signal = np.where(signal > 0, np.log(np.where(signal > 0, signal, 1.0)), np.nan)
    _, slope, _ = _loglinear(log_signal, np.asarray(b_values, dtype=float), None)
    return slope


def naive_habitat_value(values: np.ndarray, clusters: int = 2, habitat: int = 1) -> float:
    """The naive habitat value: 1-D k-means of the voxel values, the mean of cluster
    ``habitat`` (1 = lowest centre), no confidence filter, no refit."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    labels, _, _ = kmeans_1d(values, clusters)
    return float(values[labels == habitat].mean())


def voxel_iauc60(signal: np.ndarray, times: np.ndarray) -> np.ndarray:
    """The usual voxel-wise iAUC60 map (s) of ``dce_maps``: each voxel's own bolus arrival,
    baseline up to the mean-curve arrival, pooled noise SD."""
    from primage.kinetics.dce import (
        baseline_variance,
        mean_curve_arrival,
        pooled_noise_sd,
        semi_quantitative,
    )

    signal = np.atleast_2d(np.asarray(signal, dtype=float))
    times = np.asarray(times, dtype=float)
    arrival = mean_curve_arrival(signal.mean(axis=0), times)
    frames = int(np.count_nonzero(times <= arrival + 1e-9))
    noise_sd = pooled_noise_sd(baseline_variance(signal, frames), frames)
    return semi_quantitative(
        signal,
        times,
        baseline_frames=frames,
        global_arrival=arrival,
        noise_sd=noise_sd,
        arrival="voxel",
    ).iauc60
