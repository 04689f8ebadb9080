"""Kinetics benchmark: the batched fits against a per-voxel scipy.optimize.curve_fit loop.

Run: ``.venv/bin/python benchmarks/bench_kinetics.py`` (``--quick`` for a smoke run,
``--no-volume`` to skip the 256 x 256 x 40 volumes). Both methods fit the same synthetic
series with known truth in one run. The curve_fit loop runs on a subsample of voxels; its
voxels/s is measured on that subsample and the time for all voxels is extrapolated from
it (said so in the output). Accuracy is compared on the same subsample.

* ADC: 16 b-values 0-1000 s/mm^2, Rician noise, SNR 50 at b = 0; the loop fits
  S0 exp(-b ADC) with the same bounds, started at (S(0), 1e-3).
* IVIM: 14 b-values, segmented in both: mono-exponential fit of b >= 200, then (A, D*) with
  D and the intercept fixed; the loop makes two curve_fit calls per voxel.
* Tofts: 60 frames every 5 s, Parker AIF, Gaussian noise 0.01 mM; the loop's model is the
  exact piecewise-linear recursion as a C filter (scipy.signal.lfilter) on a 0.5 s AIF grid,
  sampled at the frames.

Whole volumes: 256 x 256 x 40 voxels, every voxel fitted (no mask), the series in float32;
peak memory is the tracemalloc peak of the fit (numpy allocations), reported as a multiple
of the series size.
"""

from __future__ import annotations

import argparse
import math
import platform
import resource
import sys
import time
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy.optimize import curve_fit
from scipy.signal import lfilter

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from primage.kinetics.aif import parker_blood, population_aif  # noqa: E402
from primage.kinetics.dwi import adc_maps, fit_adc, fit_ivim  # noqa: E402
from primage.kinetics.tofts import ExponentialConvolution, fit_tofts, tofts_maps  # noqa: E402

B16 = np.linspace(0.0, 1000.0, 16)
B_IVIM = np.array([0, 10, 20, 40, 60, 80, 100, 150, 200, 300, 400, 600, 800, 1000.0])
TIMES = np.arange(60) * 5.0
HCT = 0.42


def rician(clean, sigma, rng):
    return np.hypot(clean + rng.normal(0, sigma, clean.shape), rng.normal(0, sigma, clean.shape))


def timed(function):
    start = time.perf_counter()
    result = function()
    return result, time.perf_counter() - start


def row(name, n, seconds, n_loop, loop_seconds, accuracy, loop_accuracy):
    ours = n / seconds
    theirs = n_loop / loop_seconds
    return {
        "model": name,
        "voxels": n,
        "primage_s": seconds,
        "primage_vox_s": ours,
        "loop_voxels": n_loop,
        "loop_s": loop_seconds,
        "loop_vox_s": theirs,
        "loop_extrapolated_s": n / theirs,
        "ratio": ours / theirs,
        "accuracy": accuracy,
        "loop_accuracy": loop_accuracy,
    }


def bench_adc(n, n_loop, rng):
    adc = rng.uniform(0.5e-3, 2.5e-3, n)
    signal = rician(1000.0 * np.exp(-np.outer(adc, B16)), 20.0, rng)
    fit, seconds = timed(lambda: fit_adc(signal, B16))
    sub = np.arange(n_loop)

    def model(b, s0, d):
        return s0 * np.exp(-b * d)

    def loop():
        out = np.empty(n_loop)
        for i in sub:
            try:
                params, _ = curve_fit(
                    model, B16, signal[i], p0=(signal[i, 0], 1e-3), bounds=([0, 0], [np.inf, 5e-3])
                )
            except RuntimeError:  # curve_fit gave up: counted as a failure
                params = (np.nan, np.nan)
            out[i] = params[1]
        return out

    loop_adc, loop_seconds = timed(loop)

    def accuracy(values):
        error = values / adc[sub] - 1
        return (
            f"median |err| {np.nanmedian(np.abs(error)) * 100:.2f} %, bias "
            f"{np.nanmean(error) * 100:+.2f} %, no fit {np.count_nonzero(np.isnan(values))}"
        )

    return row(
        "ADC (16 b)", n, seconds, n_loop, loop_seconds, accuracy(fit.adc[sub]), accuracy(loop_adc)
    )


def bench_ivim(n, n_loop, rng):
    d = rng.uniform(0.6e-3, 1.6e-3, n)
    f = rng.uniform(0.05, 0.3, n)
    dstar = rng.uniform(10e-3, 60e-3, n)
    clean = 1000.0 * (
        (1 - f)[:, None] * np.exp(-np.outer(d, B_IVIM))
        + f[:, None] * np.exp(-np.outer(dstar, B_IVIM))
    )
    signal = rician(clean, 10.0, rng)
    fit, seconds = timed(lambda: fit_ivim(signal, B_IVIM))
    high = B_IVIM >= 200

    def mono(b, s, k):
        return s * np.exp(-b * k)

    def loop():
        out = np.empty((n_loop, 3))
        for i in range(n_loop):
            try:
                (s_int, d_i), _ = curve_fit(
                    mono,
                    B_IVIM[high],
                    signal[i, high],
                    p0=(signal[i, 0], 1e-3),
                    bounds=([0, 0], [np.inf, 5e-3]),
                )
                rest = signal[i] - s_int * np.exp(-B_IVIM * d_i)
                (a, ds), _ = curve_fit(
                    mono,
                    B_IVIM,
                    rest,
                    p0=(max(rest[0], 1.0), 0.02),
                    bounds=([0, 5e-3], [np.inf, 0.1]),
                )
            except RuntimeError:  # curve_fit gave up: counted as a failure
                s_int = d_i = a = ds = np.nan
            out[i] = d_i, a / (s_int + a), ds
        return out

    loop_values, loop_seconds = timed(loop)
    sub = slice(0, n_loop)

    def accuracy(dv, fv, dsv):
        return (
            f"D {np.nanmedian(np.abs(dv / d[sub] - 1)) * 100:.1f} %, f {np.nanmedian(np.abs(fv - f[sub])):.3f}, "
            f"D* {np.nanmedian(np.abs(dsv / dstar[sub] - 1)) * 100:.0f} % (median |err|), "
            f"no fit {np.count_nonzero(np.isnan(dv))}"
        )

    return row(
        "IVIM (14 b)",
        n,
        seconds,
        n_loop,
        loop_seconds,
        accuracy(fit.d[sub], fit.f[sub], fit.dstar[sub]),
        accuracy(*loop_values.T),
    )


def bench_tofts(n, n_loop, rng):
    aif = population_aif(20.0, HCT)
    convolution = ExponentialConvolution(TIMES, aif)
    ktrans = rng.uniform(0.02, 0.6, n)
    ve = rng.uniform(0.1, 0.6, n)
    clean = (ktrans * convolution.evaluate(ktrans / ve)).T
    conc = clean + rng.normal(0, 0.01, clean.shape)
    fit, seconds = timed(lambda: fit_tofts(conc, TIMES, aif))
    fine = np.arange(0.0, TIMES[-1] + 0.25, 0.5)
    plasma = parker_blood(fine, 20.0) / (1 - HCT)
    dt = (fine[1] - fine[0]) / 60.0
    step = int(round(5.0 / 0.5))

    def model(_t, k, kep):
        # Exact recursion for a piecewise-linear Cp (as in the synthetic patient), in C.
        decay = math.exp(-kep * dt)
        a = (1 - decay) / kep
        b = (1 - decay - kep * dt * decay) / kep**2
        conv = lfilter([a - b / dt, b / dt], [1.0, -decay], plasma)
        conv -= (a - b / dt) * plasma[0]  # the recursion starts at zero
        return k * conv[::step][: TIMES.size]

    def loop():
        out = np.empty((n_loop, 2))
        for i in range(n_loop):
            try:
                (k, kep), _ = curve_fit(
                    model, TIMES, conc[i], p0=(0.1, 0.5), bounds=([0, 1e-3], [5, 10])
                )
            except RuntimeError:  # curve_fit gave up: counted as a failure
                k = kep = np.nan
            out[i] = k, k / kep
        return out

    loop_values, loop_seconds = timed(loop)
    sub = slice(0, n_loop)

    def accuracy(kv, vv):
        return (
            f"Ktrans {np.nanmedian(np.abs(kv / ktrans[sub] - 1)) * 100:.2f} %, "
            f"ve {np.nanmedian(np.abs(vv - ve[sub])):.4f} (median |err|), "
            f"no fit {np.count_nonzero(np.isnan(kv))}"
        )

    return row(
        "Tofts (60 frames)",
        n,
        seconds,
        n_loop,
        loop_seconds,
        accuracy(fit.ktrans[sub], fit.ve[sub]),
        accuracy(*loop_values.T),
    )


def volume_image(frames_fn, count, shape):
    volumes = []
    for index in range(count):
        image = sitk.GetImageFromArray(frames_fn(index).astype(np.float32))
        image.SetSpacing((0.9, 0.9, 4.0))
        volumes.append(image)
    return sitk.JoinSeries(volumes)


def bench_volumes(shape, rng):
    """Whole-volume ADC and Tofts fits; returns rows of (name, seconds, peak memory)."""
    voxels = int(np.prod(shape))
    results = []
    adc = rng.uniform(0.5e-3, 2.5e-3, shape).astype(np.float32)
    series = volume_image(
        lambda i: rician(1000.0 * np.exp(-B16[i] * adc), 20.0, rng), B16.size, shape
    )
    size = voxels * B16.size * 4
    tracemalloc.start()
    _, seconds = timed(lambda: adc_maps(series, B16))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    results.append(("ADC, 16 b-values", seconds, voxels / seconds, size, peak))
    del series

    convolution = ExponentialConvolution(TIMES, population_aif(20.0, HCT))
    # 256 tissue types (Ktrans, ve) spread over the volume: every voxel is fitted anyway.
    kinds = rng.integers(0, 256, shape)
    k_kind = rng.uniform(0.02, 0.6, 256)
    ve_kind = rng.uniform(0.1, 0.6, 256)
    curves = (k_kind * convolution.evaluate(k_kind / ve_kind)).astype(np.float32)  # (T, 256)
    series = volume_image(
        lambda i: curves[i][kinds] + rng.normal(0, 0.01, shape), TIMES.size, shape
    )
    size = voxels * TIMES.size * 4
    tracemalloc.start()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, seconds = timed(lambda: tofts_maps(series, TIMES, "parker", aif_delay_s=20.0))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    results.append(("Tofts, 60 frames", seconds, voxels / seconds, size, peak))
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke run)")
    parser.add_argument("--no-volume", action="store_true", help="skip the 256x256x40 volumes")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    scale = 10 if args.quick else 1
    print(
        f"primage kinetics benchmark; Python {platform.python_version()}, numpy {np.__version__}, "
        f"{platform.processor() or platform.machine()}"
    )
    rows = [
        bench_adc(200_000 // scale, 2000 // scale, rng),
        bench_ivim(100_000 // scale, 1000 // scale, rng),
        bench_tofts(50_000 // scale, 300 // scale, rng),
    ]
    print(
        "\n| model | voxels | primage s | primage vox/s | curve_fit loop vox/s (on N voxels) "
        "| loop time for all voxels (extrapolated) | ratio |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['model']} | {r['voxels']} | {r['primage_s']:.2f} | {r['primage_vox_s']:,.0f} | "
            f"{r['loop_vox_s']:,.0f} (on {r['loop_voxels']}) | {r['loop_extrapolated_s']:,.0f} s | "
            f"{r['ratio']:,.0f}x |"
        )
    print("\nAccuracy on the loop's subsample (same voxels, same noise):\n")
    print("| model | primage | curve_fit loop |\n|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['accuracy']} | {r['loop_accuracy']} |")
    if not args.no_volume:
        shape = (40 // scale, 256, 256)
        print(
            f"\nWhole volumes {shape[2]} x {shape[1]} x {shape[0]} ({int(np.prod(shape)):,} voxels, "
            "all fitted):\n"
        )
        print(
            "| fit | seconds | voxels/s | series (float32) | peak traced memory | peak / series |"
        )
        print("|---|---|---|---|---|---|")
        for name, seconds, rate, size, peak in bench_volumes(shape, rng):
            print(
                f"| {name} | {seconds:.1f} | {rate:,.0f} | {size / 2**20:.0f} MiB | "
                f"{peak / 2**20:.0f} MiB | {peak / size:.2f} |"
            )
        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"\nProcess peak RSS (includes building the synthetic series): {maxrss:,.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
