"""Benchmark: the primage preprocessing engine against plain SimpleITK calls.

For each filter and for the whole t2w preset, the same operation is run through primage
(``run_steps`` / ``primage.preprocessing.filters``) and directly with SimpleITK (the
"peer") with identical settings, on the synthetic T2w (96x96x40 voxels). It prints the
best-of-N wall time of each, their ratio (primage / peer; ~1 means the engine adds no
overhead), the largest voxel difference between the two results (they must agree), and
the N4 accuracy (correlation of log fields with the known bias field inside the body).

Run: ``make benchmark`` or ``python benchmarks/bench_preprocessing.py [--repeats N]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from primage.preprocessing import filters as F  # noqa: E402
from primage.preprocessing import load_preset, run_steps  # noqa: E402
from primage.synthetic import make_digital_patient  # noqa: E402


def best_times(ours, peer, repeats: int):
    """Best wall times (s) of ``ours`` and ``peer`` over ``repeats`` interleaved runs
    (interleaving keeps CPU frequency drift from favouring either), and their results."""
    best_ours = best_peer = float("inf")
    result_ours = result_peer = None
    for _ in range(repeats):
        start = time.perf_counter()
        result_ours = ours()
        best_ours = min(best_ours, time.perf_counter() - start)
        start = time.perf_counter()
        result_peer = peer()
        best_peer = min(best_peer, time.perf_counter() - start)
    return best_ours, best_peer, result_ours, result_peer


# --- the peer: SimpleITK called directly with the same settings -----------------------


def peer_n4(image: sitk.Image, control_points, iterations=(50, 30), shrink=2):
    image = sitk.Cast(image, sitk.sitkFloat32)
    mask = sitk.OtsuThreshold(image, 0, 1, 200)
    mask = sitk.Cast(mask * sitk.Cast(image > 0, sitk.sitkUInt8), sitk.sitkUInt8)
    corrector = sitk.N4BiasFieldCorrectionImageFilter()
    corrector.SetMaximumNumberOfIterations(list(iterations))
    corrector.SetNumberOfControlPoints(list(control_points))
    corrector.Execute(sitk.Shrink(image, [shrink] * 3), sitk.Shrink(mask, [shrink] * 3))
    bias = sitk.Exp(corrector.GetLogBiasFieldAsImage(image))
    return sitk.Divide(image, bias), bias


def peer_diffusion(image, time_step, conductance=1.0, iterations=2):
    return sitk.GradientAnisotropicDiffusion(
        sitk.Cast(image, sitk.sitkFloat32), time_step, conductance, 1, iterations
    )


def peer_nlm(image, noise_sd, radius=1, iterations=2, samples=20, search=5.0):
    unit = sitk.Cast(image, sitk.sitkFloat32)
    unit.SetSpacing((1.0, 1.0, 1.0))
    flt = sitk.PatchBasedDenoisingImageFilter()
    flt.SetPatchRadius(radius)
    flt.SetNumberOfIterations(iterations)
    flt.SetNumberOfSamplePatches(samples)
    flt.SetSampleVariance(search**2)
    flt.SetKernelBandwidthEstimation(False)
    flt.SetKernelBandwidthSigma(5.0 * noise_sd)
    out = flt.Execute(unit)
    out.CopyInformation(image)
    return out


def peer_zscore(image):
    array = sitk.GetArrayFromImage(image).astype(np.float64)
    out = sitk.GetImageFromArray(((array - array.mean()) / array.std()).astype(np.float32))
    out.CopyInformation(image)
    return out


def peer_resample(image, spacing):
    size = [
        int(round(n * s / t))
        for n, s, t in zip(image.GetSize(), image.GetSpacing(), spacing, strict=True)
    ]
    return sitk.Resample(
        sitk.Cast(image, sitk.sitkFloat32), size, sitk.Transform(), sitk.sitkLinear,
        image.GetOrigin(), spacing, image.GetDirection(), 0.0, sitk.sitkFloat32,
    )  # fmt: skip


def max_difference(a: sitk.Image, b: sitk.Image) -> float:
    return float(np.abs(sitk.GetArrayFromImage(a) - sitk.GetArrayFromImage(b)).max())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs per measurement (best)")
    args = parser.parse_args(argv)
    start_all = time.perf_counter()

    patient = make_digital_patient(0)
    t2w = patient.t2w
    t2w_float = sitk.Cast(t2w, sitk.sitkFloat32)
    body = sitk.GetArrayFromImage(patient.tissues) > 0
    true_bias = sitk.GetArrayFromImage(patient.truth_images["bias_field"]).astype(np.float64)
    time_step = F.stable_time_step(t2w)
    noise_sd = F.estimate_noise_sd(t2w_float)
    control_points = F.n4_control_points(t2w, 50.0)
    preset_steps = load_preset("t2w")["steps"]
    repeats = args.repeats
    F.n4_bias_correction(t2w)  # warm-up: first ITK calls pay one-off start-up costs

    def preset_peer():
        corrected, bias = peer_n4(t2w, control_points)
        return peer_diffusion(corrected, time_step), bias

    # (name, primage callable, peer callable, result-to-image, repeats)
    cases = [
        (
            "t2w preset (N4 + diffusion)",
            lambda: run_steps(t2w, preset_steps),
            preset_peer,
            (lambda r: r.image, lambda r: r[0]),
            repeats,
        ),
        (
            "n4 (50 mm, [50,30], shrink 2)",
            lambda: F.n4_bias_correction(t2w),
            lambda: peer_n4(t2w, control_points),
            (lambda r: r[0], lambda r: r[0]),
            repeats,
        ),
        (
            "anisotropic_diffusion (1, 2 it)",
            lambda: F.anisotropic_diffusion(t2w),
            lambda: peer_diffusion(t2w, time_step),
            (lambda r: r, lambda r: r),
            repeats,
        ),
        (
            "curvature_flow (5 it)",
            lambda: F.curvature_flow(t2w),
            lambda: sitk.CurvatureFlow(t2w_float, time_step, 5),
            (lambda r: r, lambda r: sitk.Cast(r, sitk.sitkFloat32)),
            repeats,
        ),
        (
            "bilateral (2 mm, 3 x noise)",
            lambda: F.bilateral(t2w, 2.0, 3.0 * noise_sd),
            lambda: sitk.Bilateral(t2w_float, 2.0, 3.0 * noise_sd, 100),
            (lambda r: r, lambda r: r),
            repeats,
        ),
        (
            "non_local_means (r1, 2 it, 20)",
            lambda: F.non_local_means(t2w),
            lambda: peer_nlm(t2w, noise_sd),
            (lambda r: r, lambda r: r),
            1,  # a few seconds each: one run
        ),
        (
            "zscore (whole image)",
            lambda: F.zscore(t2w),
            lambda: peer_zscore(t2w),
            (lambda r: r, lambda r: r),
            repeats,
        ),
        (
            "histogram_match (256, 7)",
            lambda: F.histogram_match(t2w, patient.t1w),
            lambda: sitk.HistogramMatching(
                t2w_float, sitk.Cast(patient.t1w, sitk.sitkFloat32), 256, 7, True
            ),
            (lambda r: r, lambda r: r),
            repeats,
        ),
        (
            "resample to 1 mm (linear)",
            lambda: F.resample_to_spacing(t2w, (1.0, 1.0, 1.0)),
            lambda: peer_resample(t2w, (1.0, 1.0, 1.0)),
            (lambda r: r, lambda r: r),
            repeats,
        ),
    ]

    print(
        f"Synthetic T2w {t2w.GetSize()} voxels, spacing {t2w.GetSpacing()} mm; "
        f"SimpleITK {sitk.Version_MajorVersion()}.{sitk.Version_MinorVersion()}."
        f"{sitk.Version_PatchVersion()}, best of {repeats} runs, "
        f"{sitk.ProcessObject_GetGlobalDefaultNumberOfThreads()} ITK threads"
    )
    header = (
        f"{'operation':34s} {'primage s':>10s} {'peer s':>10s} {'ratio':>7s} {'max |diff|':>11s}"
    )
    print(header)
    print("-" * len(header))
    results = {}
    for name, ours, peer, (ours_image, peer_image), runs in cases:
        t_ours, t_peer, r_ours, r_peer = best_times(ours, peer, runs)
        difference = max_difference(ours_image(r_ours), peer_image(r_peer))
        results[name] = (r_ours, r_peer)
        print(f"{name:34s} {t_ours:10.3f} {t_peer:10.3f} {t_ours / t_peer:7.2f} {difference:11.3g}")

    def correlation(bias: sitk.Image) -> float:
        estimated = sitk.GetArrayFromImage(bias).astype(np.float64)
        return float(np.corrcoef(np.log(estimated[body]), np.log(true_bias[body]))[0, 1])

    ours_n4, peer_n4_result = results["n4 (50 mm, [50,30], shrink 2)"]
    preset_result = results["t2w preset (N4 + diffusion)"][0]
    print()
    print("N4 accuracy (correlation of log bias fields with the truth inside the body):")
    print(f"  primage n4_bias_correction: {correlation(ours_n4[1]):.4f}")
    print(f"  primage t2w preset:         {correlation(preset_result.bias_field):.4f}")
    print(f"  peer (SimpleITK direct):    {correlation(peer_n4_result[1]):.4f}")
    print(f"total benchmark time {time.perf_counter() - start_all:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
