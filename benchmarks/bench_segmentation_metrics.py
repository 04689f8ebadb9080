"""Surface-distance metrics on a 256 x 256 x 120 pair: time and error against analytic truth.

Two spheres (radius 60 and 55 mm, centres 8.4 mm apart) voxelised at 0.8 x 0.8 x 3 mm; the
truth comes from densely sampled continuous surfaces (:mod:`primage.segmentation.truth`).
Peers, when installed (``pip install -e .[bench]``): DeepMind's ``surface-distance`` (same
surface points, marching-cubes areas), ``medpy`` (boundary voxels, unweighted) and
SimpleITK's ``HausdorffDistanceImageFilter`` (Hausdorff distance between the voxel sets;
its "average Hausdorff distance" is not a surface distance and is not compared).

Run: ``.venv/bin/python benchmarks/bench_segmentation_metrics.py [--repeat 3]``
"""

from __future__ import annotations

import argparse
import time
import warnings

import SimpleITK as sitk

from primage.segmentation.metrics import compare_masks
from primage.segmentation.truth import sphere_pair


def _best_time(function, repeat: int):
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = function()
        best = min(best, time.perf_counter() - start)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    a, b, truth = sphere_pair(
        size=(256, 256, 120),
        spacing=(0.8, 0.8, 3.0),
        radius_a=60.0,
        radius_b=55.0,
        offset=(4.1, -3.3, 6.5),
    )
    A = sitk.GetArrayFromImage(a).astype(bool)
    B = sitk.GetArrayFromImage(b).astype(bool)
    spacing_zyx = tuple(reversed(a.GetSpacing()))
    results: list[tuple[str, float, dict]] = []

    seconds, row = _best_time(lambda: compare_masks(A, B, spacing_zyx), args.repeat)
    results.append(("primage (subvoxel, default)", seconds, row))
    seconds, row = _best_time(
        lambda: compare_masks(A, B, spacing_zyx, surface="corner"), args.repeat
    )
    results.append(("primage (corner)", seconds, row))

    try:
        import surface_distance
    except ImportError:
        surface_distance = None
    if surface_distance is not None:

        def deepmind():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                s = surface_distance.compute_surface_distances(A, B, spacing_zyx)
            sa, sb = s["surfel_areas_gt"], s["surfel_areas_pred"]
            da, db = s["distances_gt_to_pred"], s["distances_pred_to_gt"]
            return {
                "hausdorff": surface_distance.compute_robust_hausdorff(s, 100),
                "hausdorff95": surface_distance.compute_robust_hausdorff(s, 95),
                "assd": float((da @ sa + db @ sb) / (sa.sum() + sb.sum())),
            }

        seconds, row = _best_time(deepmind, args.repeat)
        results.append(("surface-distance", seconds, row))

    try:
        from medpy.metric import binary as medpy_binary
    except ImportError:
        medpy_binary = None
    if medpy_binary is not None:

        def medpy():
            return {
                "hausdorff": medpy_binary.hd(B, A, spacing_zyx),
                "hausdorff95": medpy_binary.hd95(B, A, spacing_zyx),
                "assd": medpy_binary.assd(B, A, spacing_zyx),
            }

        seconds, row = _best_time(medpy, args.repeat)
        results.append(("medpy", seconds, row))

    def simpleitk():
        hausdorff = sitk.HausdorffDistanceImageFilter()
        hausdorff.Execute(a, b)
        return {"hausdorff": hausdorff.GetHausdorffDistance()}

    seconds, row = _best_time(simpleitk, args.repeat)
    results.append(("SimpleITK HausdorffDistance", seconds, row))

    print(f"grid 256x256x120 at 0.8x0.8x3 mm; best of {args.repeat} runs")
    print("analytic: " + ", ".join(f"{k} {v:.3f} mm" for k, v in truth.items()))
    print(f"{'method':30s} {'time s':>8s} {'HD err':>8s} {'HD95 err':>9s} {'ASSD err':>9s}")
    for name, seconds, row in results:
        errors = [
            f"{row[k] - truth[k]:+.3f}" if k in row else "n/a"
            for k in ("hausdorff", "hausdorff95", "assd")
        ]
        print(f"{name:30s} {seconds:8.3f} {errors[0]:>8s} {errors[1]:>9s} {errors[2]:>9s}")
    print("errors in mm (method - analytic)")


if __name__ == "__main__":
    main()
