"""Kinetics benchmark: the batched fits against a per-voxel scipy.optimize.curve_fit loop.

Run: ``.venv/bin/python benchmarks/bench_kinetics.py`` (``--quick`` for a smoke run,
``--no-volume`` to skip the 256 x 256 x 40 volumes, ``--whole-only`` / ``--no-whole`` for
one part only). Both methods fit the same synthetic series with known truth in one run.

Whole commands first: ``primage kinetics adc|ivim|tofts`` run as their own process (start-up,
reading the gzip NIfTI, checks, fit, writing every map) on the digital patient's
256 x 256 x 30 DWI (8 b-values; IVIM patient for ivim) and a 60-frame Tofts concentration
series on the same grid (made once into ``--cache``), every voxel fitted; the peer loop runs
on a random subsample of the same voxels with and without bounds (without: MINPACK's
Levenberg-Marquardt, the fastest loop), extrapolated; "one memory pass" is a sum over the
frames of the series in memory.

Then the engine alone: The curve_fit loop runs on a subsample of voxels; its
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
import os
import platform
import resource
import sys
import tempfile
import time
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy.optimize import curve_fit
from scipy.signal import lfilter

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _process import run_measured  # noqa: E402

from primage.kinetics.aif import parker_blood, population_aif  # noqa: E402
from primage.kinetics.dwi import adc_maps, fit_adc, fit_ivim  # noqa: E402
from primage.kinetics.tofts import ExponentialConvolution, fit_tofts, tofts_maps  # noqa: E402

B16 = np.linspace(0.0, 1000.0, 16)
B_IVIM = np.array([0, 10, 20, 40, 60, 80, 100, 150, 200, 300, 400, 600, 800, 1000.0])
TIMES = np.arange(60) * 5.0
HCT = 0.42


def rician(clean, sigma, rng):
    return np.hypot(clean + rng.normal(0, sigma, clean.shape), rng.normal(0, sigma, clean.shape))


# --- the peer: one scipy.optimize.curve_fit call (or two) per voxel ------------------------


def _mono(b, s0, d):
    return s0 * np.exp(-b * d)


def _bounds(bounded: bool, lower, upper) -> dict:
    # Without bounds curve_fit runs MINPACK's Levenberg-Marquardt, several times faster
    # than its bounded trust-region solver: the fastest plain per-voxel loop.
    return {"bounds": (lower, upper)} if bounded else {}


def peer_adc(signal: np.ndarray, b: np.ndarray, bounded: bool = True) -> np.ndarray:
    """ADC (mm^2/s) per row by curve_fit of S0 exp(-b ADC), started at (S(0), 1e-3), with
    primage's bounds or none; NaN where curve_fit gives up."""
    out = np.full(len(signal), np.nan)
    for i, row in enumerate(signal):
        try:
            params, _ = curve_fit(
                _mono,
                b,
                row,
                p0=(max(row[0], 1.0), 1e-3),
                **_bounds(bounded, [0, 0], [np.inf, 5e-3]),
            )
            out[i] = params[1]
        except (
            RuntimeError,
            ValueError,
            ArithmeticError,
        ):  # curve_fit gave up: counted as a failure
            pass
    return out


def peer_ivim(signal: np.ndarray, b: np.ndarray, threshold: float = 200.0, bounded: bool = True):
    """Segmented IVIM per row (D, f, D*): curve_fit of b >= threshold, then of (A, D*)."""
    high = b >= threshold
    out = np.full((len(signal), 3), np.nan)
    for i, row in enumerate(signal):
        try:
            (s_int, d_i), _ = curve_fit(
                _mono,
                b[high],
                row[high],
                p0=(max(row[0], 1.0), 1e-3),
                **_bounds(bounded, [0, 0], [np.inf, 5e-3]),
            )
            rest = row - s_int * np.exp(-b * d_i)
            (a, ds), _ = curve_fit(
                _mono,
                b,
                rest,
                p0=(max(rest[0], 1.0), 0.02),
                **_bounds(bounded, [0, 5e-3], [np.inf, 0.1]),
            )
            out[i] = d_i, a / (s_int + a), ds
        except (RuntimeError, ValueError, ArithmeticError):
            pass
    return out.T


def peer_tofts(conc: np.ndarray, times: np.ndarray, delay_s: float = 20.0, bounded: bool = True):
    """Standard Tofts per row (Ktrans 1/min, ve) by curve_fit; the model is the exact
    piecewise-linear recursion as a C filter (scipy.signal.lfilter) on a 0.5 s grid of the
    Parker plasma curve, sampled at the frames."""
    fine = np.arange(0.0, times[-1] + 0.25, 0.5)
    plasma = parker_blood(fine, delay_s) / (1 - HCT)
    dt = (fine[1] - fine[0]) / 60.0

    def model(_t, k, kep):
        decay = math.exp(-kep * dt)
        a = (1 - decay) / kep
        b = (1 - decay - kep * dt * decay) / kep**2
        conv = lfilter([a - b / dt, b / dt], [1.0, -decay], plasma)
        conv -= (a - b / dt) * plasma[0]  # the recursion starts at zero
        return k * np.interp(times, fine, conv)

    out = np.full((len(conc), 2), np.nan)
    for i, row in enumerate(conc):
        try:
            (k, kep), _ = curve_fit(
                model, times, row, p0=(0.1, 0.5), **_bounds(bounded, [0, 1e-3], [5, 10])
            )
            out[i] = k, k / kep
        except (RuntimeError, ValueError, ArithmeticError):
            pass
    return out.T


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

    def loop():
        return peer_adc(signal[sub], B16)

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

    def loop():
        return np.stack(peer_ivim(signal[:n_loop], B_IVIM), axis=1)

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

    def loop():
        return np.stack(peer_tofts(conc[:n_loop], TIMES), axis=1)

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


# --- whole commands: the real CLI in a subprocess against the per-voxel peer -----------------

REPO = Path(__file__).resolve().parents[1]
#: The issue's size: a 256 x 256 x 30 DWI of 8 b-values (1.97 M voxels); the same grid for
#: the Tofts concentration series, 60 frames every 5 s.
WHOLE_SIZE = (256, 256, 30)
GOALS = {"adc": 200.0, "ivim": 200.0, "tofts": 150.0}


def whole_inputs(cache: Path, size) -> dict[str, Path]:
    """The digital patient's DWI (mono-exponential and IVIM) and a Tofts concentration
    series on a ``size`` grid, generated once into ``cache`` (outside the repository)."""
    from primage.io import write_image, write_json, write_text
    from primage.synthetic import TISSUES, extended_tofts, make_digital_patient, parker_aif

    folder = Path(cache) / f"kinetics-{size[0]}x{size[1]}x{size[2]}"
    paths = {
        name: folder / name
        for name in ("dwi.nii.gz", "dwi_ivim.nii.gz", "dwi.bval", "conc.nii.gz", "conc.times")
    }
    paths.update(
        {
            name: folder / f"truth_{name}.nii.gz"
            for name in ("adc", "ivim_f", "ivim_dstar", "tissues")
        }
    )
    if (folder / "done.json").exists():
        return paths
    # The default patient's field of view (144 x 144 x 160 mm) on the finer grid.
    spacing = (1.5 * 96 / size[0], 1.5 * 96 / size[1], 4.0 * 40 / size[2])
    times = np.arange(60) * 5.0
    mono = make_digital_patient(0, size=size, spacing=spacing, frame_times_s=times)
    write_image(mono.dwi, paths["dwi.nii.gz"])
    write_text(" ".join(f"{b:g}" for b in mono.b_values) + "\n", paths["dwi.bval"])
    write_image(mono.truth_images["adc"], paths["adc"])
    write_image(mono.tissues, paths["tissues"])
    # Concentration: each tissue's standard Tofts curve (Ktrans, ve of the patient's tissues,
    # the synthetic module's own recursion on a 0.25 s grid, Parker AIF delayed 20 s), plus
    # Gaussian noise of 0.02 mM; vessels hold whole blood, air is noise around 0.
    labels = sitk.GetArrayFromImage(mono.tissues)
    fine = np.arange(0.0, times[-1] + 0.25, 0.25)
    blood = parker_aif(fine, 20.0)
    curves = np.zeros((max(TISSUES) + 1, times.size))
    for label, tissue in TISSUES.items():
        if tissue.name == "vessel":
            curves[label] = np.interp(times, fine, blood)
        elif label:
            tissue_curve = extended_tofts(fine, blood / (1 - HCT), tissue.ktrans, tissue.ve, 0.0)
            curves[label] = np.interp(times, fine, tissue_curve)
    rng = np.random.default_rng(1)
    volumes = []
    for frame in range(times.size):
        volume = curves[labels, frame] + rng.normal(0, 0.02, labels.shape)
        image = sitk.GetImageFromArray(volume.astype(np.float32))
        image.CopyInformation(mono.tissues)
        volumes.append(image)
    write_image(sitk.JoinSeries(volumes, 0.0, 5.0), paths["conc.nii.gz"])
    write_text(" ".join(f"{t:g}" for t in times) + "\n", paths["conc.times"])
    del mono, volumes
    ivim = make_digital_patient(0, size=size, spacing=spacing, ivim=True)
    write_image(ivim.dwi, paths["dwi_ivim.nii.gz"])
    write_image(ivim.truth_images["ivim_f"], paths["ivim_f"])
    write_image(ivim.truth_images["ivim_dstar"], paths["ivim_dstar"])
    write_json({"size": list(size), "spacing_mm": list(spacing)}, folder / "done.json")
    return paths


def memory_pass(flat: np.ndarray) -> float:
    """Seconds of one pass over the series in memory (sum over frames), best of 3."""
    best = math.inf
    for _ in range(3):
        start = time.perf_counter()
        np.add.reduce(flat, axis=0, dtype=np.float32)
        best = min(best, time.perf_counter() - start)
    return best


def _map_values(path: Path, index: np.ndarray) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path))).ravel()[index].astype(float)


def bench_whole(cache: Path, size, samples: dict[str, int], rng) -> list[dict]:
    """Each command on the generated series against the peer on a random subsample."""
    paths = whole_inputs(cache, size)
    out = Path(cache) / "out"
    tissues = sitk.GetArrayFromImage(sitk.ReadImage(str(paths["tissues"]))).ravel()
    rows = []
    cases = [
        (
            "adc",
            "dwi.nii.gz",
            [
                "kinetics",
                "adc",
                "--dwi",
                str(paths["dwi.nii.gz"]),
                "--bvalues",
                str(paths["dwi.bval"]),
            ],
        ),
        (
            "ivim",
            "dwi_ivim.nii.gz",
            [
                "kinetics",
                "ivim",
                "--dwi",
                str(paths["dwi_ivim.nii.gz"]),
                "--bvalues",
                str(paths["dwi.bval"]),
            ],
        ),
        (
            "tofts",
            "conc.nii.gz",
            [
                "kinetics",
                "tofts",
                "--concentration",
                str(paths["conc.nii.gz"]),
                "--times",
                str(paths["conc.times"]),
                "--population-aif",
                "parker",
                "--aif-delay",
                "20",
            ],
        ),
    ]
    b = np.loadtxt(paths["dwi.bval"])
    times = np.loadtxt(paths["conc.times"])
    for name, series_name, args in cases:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            series = sitk.ReadImage(str(paths[series_name]))
        flat = sitk.GetArrayViewFromImage(series).reshape(series.GetSize()[3], -1)
        voxels = flat.shape[1]
        passed = memory_pass(flat)
        index = np.sort(rng.choice(voxels, samples[name], replace=False))
        signal = flat[:, index].T.astype(float)
        del series, flat
        result = run_measured(
            [sys.executable, "-m", "primage", *args, "--output-dir", str(out / name), "--quiet"],
            cwd=REPO,
        )
        if result["returncode"] != 0:
            raise SystemExit(f"primage {' '.join(args)} failed")
        peers = {}
        for bounded in (False, True):
            start, start_cpu = time.perf_counter(), time.process_time()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # curve_fit's covariance warnings
                if name == "adc":
                    peer = {"adc": peer_adc(signal, b, bounded)}
                elif name == "ivim":
                    d, f, dstar = peer_ivim(signal, b, bounded=bounded)
                    peer = {"ivim_d": d, "ivim_f": f, "ivim_dstar": dstar}
                else:
                    ktrans, ve = peer_tofts(signal, times, bounded=bounded)
                    peer = {"ktrans": ktrans, "ve": ve}
            peers[bounded] = (peer, time.perf_counter() - start, time.process_time() - start_cpu)
        ours = {key: _map_values(out / name / f"{key}.nii.gz", index) for key in peers[True][0]}
        fast = peers[False][1] * voxels / index.size
        rows.append(
            {
                "name": name,
                "voxels": voxels,
                **result,
                "peer_rate": index.size / peers[False][1],
                "peer_n": index.size,
                "peer_s": fast,
                "ratio": fast / result["wall"],
                "ratio_cpu": peers[False][2] * voxels / index.size / result["cpu"],
                "ratio_bounded": peers[True][1] * voxels / index.size / result["wall"],
                "pass": passed,
                "accuracy": _whole_accuracy(
                    name, ours, peers[False][0], peers[True][0], paths, index, tissues[index]
                ),
            }
        )
    return rows


def _tissue_values(attribute: str, labels: np.ndarray) -> np.ndarray:
    from primage.synthetic import TISSUES

    lookup = np.zeros(max(TISSUES) + 1)
    for label, tissue in TISSUES.items():
        lookup[label] = getattr(tissue, attribute)
    return lookup[labels.astype(int)]


def _whole_accuracy(name, ours, peer, bounded, paths, index, tissue) -> tuple[str, ...]:
    """Median |error| against the truth on the subsample's body voxels, both methods."""
    body = tissue > 0
    if name == "adc":
        truth = {"adc": _map_values(paths["adc"], index)}
    elif name == "ivim":
        truth = {
            "ivim_d": _tissue_values("adc", tissue),
            "ivim_f": _map_values(paths["ivim_f"], index),
        }
    else:
        truth = {"ktrans": _tissue_values("ktrans", tissue)}
    texts = []
    for values in (ours, peer, bounded):
        parts = []
        for key, target in truth.items():
            keep = body & np.isfinite(values[key]) & (target > 0 if key != "ivim_f" else body)
            error = values[key][keep] - target[keep]
            if key == "ivim_f":
                parts.append(f"f {np.median(np.abs(error)):.3f}")
            else:
                parts.append(f"{key} {np.median(np.abs(error / target[keep])) * 100:.1f} %")
        parts.append(f"no fit {int(np.count_nonzero(~np.isfinite(values[next(iter(truth))])))}")
        texts.append(", ".join(parts))
    return tuple(texts)


def print_whole(rows: list[dict], size) -> None:
    print(
        f"\nWhole commands (`python -m primage kinetics ...` in its own process, gzip NIfTI in "
        f"and out, every voxel of {size[0]} x {size[1]} x {size[2]}) against the per-voxel "
        "curve_fit loop (subsample, extrapolated; without bounds = MINPACK Levenberg-Marquardt, "
        "the fastest loop; ratio of CPU seconds in brackets, less sensitive to other load):\n"
    )
    print(
        "| command | voxels | wall s | CPU s | peak RSS | curve_fit vox/s (n) | loop, all voxels "
        "| ratio, wall (CPU) | bounded loop: ratio, wall | goal (wall) | one memory pass "
        "| wall / pass |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        goal = GOALS[r["name"]]
        print(
            f"| {r['name']} | {r['voxels']:,} | {r['wall']:.2f} | {r['cpu']:.2f} | "
            f"{r['rss']:,.0f} MiB | {r['peer_rate']:,.0f} ({r['peer_n']}) | {r['peer_s']:,.0f} s | "
            f"{r['ratio']:,.0f}x ({r['ratio_cpu']:,.0f}x) | {r['ratio_bounded']:,.0f}x | {goal:.0f}x "
            f"{'met' if r['ratio'] >= goal else 'MISSED'} | {r['pass']:.3f} s | "
            f"{r['wall'] / r['pass']:,.0f}x {'(<= 20x)' if r['wall'] <= 20 * r['pass'] else '(> 20x)'} |"
        )
    print("\nAccuracy on the subsample's body voxels (median |error| against the truth):\n")
    print("| command | primage | curve_fit, no bounds | curve_fit, bounded |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['name']} | " + " | ".join(r["accuracy"]) + " |")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke run)")
    parser.add_argument("--no-volume", action="store_true", help="skip the 256x256x40 volumes")
    parser.add_argument(
        "--whole-only", action="store_true", help="only the whole commands (CLI in a subprocess)"
    )
    parser.add_argument("--no-whole", action="store_true", help="skip the whole commands")
    parser.add_argument(
        "--cache",
        default=os.path.join(tempfile.gettempdir(), "primage-bench-cache"),
        help="folder for the generated series (made once; default: %(default)s)",
    )
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    scale = 10 if args.quick else 1
    print(
        f"primage kinetics benchmark; Python {platform.python_version()}, numpy {np.__version__}, "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average "
        f"{os.getloadavg()[0]:.1f} at start"
    )
    size = (64, 64, 10) if args.quick else WHOLE_SIZE
    samples = {"adc": 2000 // scale, "ivim": 1000 // scale, "tofts": 600 // scale}
    if not args.no_whole:
        print_whole(bench_whole(Path(args.cache), size, samples, rng), size)
    if args.whole_only:
        return 0
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
