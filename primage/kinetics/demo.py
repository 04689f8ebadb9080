"""The kinetics section of ``primage demo``: ADC, iAUC60 and Fit-Cluster-Fit on the
synthetic digital patient, measured against its ground truth.

:func:`run_demo` reads a case folder written by :func:`primage.synthetic.write_case`,
writes the maps into ``output_folder`` and returns Markdown lines for the demo report.
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from primage.io import read_image, write_image, write_json
from primage.progress import ProgressCallback, sub_progress

VIABLE, NECROSIS = 8, 9


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = a.sum() + b.sum()
    return float(2 * np.sum(a & b) / total) if total else float("nan")


def _truth_iauc60(truth: dict, tissue: str, times: np.ndarray) -> float:
    """iAUC60 of the noise-free, bias-free signal curve of a tissue (same frames, same method)."""
    from primage.kinetics.dce import mean_curve_arrival, semi_quantitative
    from primage.synthetic import spgr_signal

    dce = truth["dce"]
    sequence = dce["sequence"]
    t10 = next(v["t10"] for v in truth["tissues"].values() if v["name"] == tissue)
    concentration = np.asarray(dce["concentration_curves"][tissue])
    r1 = 1.0 / t10 + sequence["relaxivity_per_mM_per_s"] * concentration
    curve = spgr_signal(1.0, r1, sequence["repetition_time_s"], sequence["flip_angle_deg"])
    arrival = mean_curve_arrival(curve, times)
    frames = int(np.count_nonzero(times <= arrival + 1e-9))
    result = semi_quantitative(
        curve[None, :], times, baseline_frames=frames, global_arrival=arrival
    )
    return float(result.iauc60[0])


def run_demo(
    case_folder: str | Path, output_folder: str | Path, progress: ProgressCallback | None = None
) -> list[str]:
    """ADC, iAUC60 and FCF on a digital-patient case; returns Markdown report lines.

    Writes into ``output_folder``: ``adc.nii.gz``, ``adc_se.nii.gz``, ``iauc60.nii.gz``,
    ``fcf_adc_habitats.nii.gz``, ``fcf_adc_confidence.nii.gz``, ``fcf_adc.json``, the same
    for ``fcf_iauc60``, and ``kinetics_summary.json`` (the figures of the report).
    """
    from primage.kinetics.dce import dce_maps
    from primage.kinetics.dwi import adc_maps
    from primage.kinetics.fcf import fcf_maps
    from primage.kinetics.values import parse_values

    case, out = Path(case_folder), Path(output_folder)
    out.mkdir(parents=True, exist_ok=True)
    truth = json.loads((case / "ground_truth.json").read_text())
    b_values = parse_values(case / "dwi.bval", role="b-values")
    times = parse_values(case / "dce.times", role="frame times")
    dwi = read_image(case / "dwi.nii.gz", dimension=4, role="DWI")
    dce = read_image(case / "dce.nii.gz", dimension=4, role="DCE")
    tissues_image = read_image(case / "tissues.nii.gz", role="tissues")
    tumour = read_image(case / "tumour.nii.gz", role="tumour")
    tissues = sitk.GetArrayFromImage(tissues_image)
    body = sitk.Cast(tissues_image > 0, sitk.sitkUInt8)
    viable, necrosis = tissues == VIABLE, tissues == NECROSIS
    adc_truth = {label: truth["tissues"][str(label)]["adc"] for label in (VIABLE, NECROSIS, 5)}
    started = time.perf_counter()

    def step(start: float, stop: float):
        return sub_progress(progress, start, stop)

    with warnings.catch_warnings():
        # Background voxels of the body mask with a zero signal are expected here.
        warnings.simplefilter("ignore")
        t0 = time.perf_counter()
        adc = adc_maps(dwi, b_values, body, progress=step(0.0, 0.3))
        adc_seconds = time.perf_counter() - t0
        t0 = time.perf_counter()
        semi = dce_maps(dce, times, body, progress=step(0.3, 0.6))
        dce_seconds = time.perf_counter() - t0
    fcf_adc = fcf_maps(dwi, b_values, tumour, parameter="adc", progress=step(0.6, 0.8))
    fcf_iauc = fcf_maps(dce, times, tumour, parameter="iauc60", progress=step(0.8, 0.95))
    for name in ("adc", "adc_se"):
        write_image(adc.maps[name], out / f"{name}.nii.gz")
    write_image(semi.maps["iauc60"], out / "iauc60.nii.gz")
    for name, result in (("fcf_adc", fcf_adc), ("fcf_iauc60", fcf_iauc)):
        write_image(result.habitats, out / f"{name}_habitats.nii.gz")
        write_image(result.confidence, out / f"{name}_confidence.nii.gz")
        write_json(result.result.record(), out / f"{name}.json")

    adc_map = sitk.GetArrayFromImage(adc.maps["adc"])
    iauc_map = sitk.GetArrayFromImage(semi.maps["iauc60"])
    iauc_truth = {
        VIABLE: _truth_iauc60(truth, "tumour", times),
        NECROSIS: _truth_iauc60(truth, "necrosis", times),
        5: _truth_iauc60(truth, "liver", times),
    }
    names = {VIABLE: "viable tumour", NECROSIS: "necrosis", 5: "liver"}
    summary: dict = {"adc": {}, "iauc60": {}, "fcf": {}, "seconds": {}}
    for label, name in names.items():
        region = tissues == label
        summary["adc"][name] = {
            "truth": adc_truth[label],
            "median": float(np.median(adc_map[region])),
            "iqr": float(np.subtract(*np.percentile(adc_map[region], [75, 25]))),
            "median_se": float(np.median(sitk.GetArrayFromImage(adc.maps["adc_se"])[region])),
        }
        summary["iauc60"][name] = {
            "truth": iauc_truth[label],
            "median": float(np.median(iauc_map[region])),
            "iqr": float(np.subtract(*np.percentile(iauc_map[region], [75, 25]))),
        }
    # Habitats against the tissue labels: ADC habitat 1 (low) = viable tumour, 2 = necrosis;
    # iAUC60 habitat 1 (low) = necrosis, 2 = viable tumour.
    for key, result, low, high, truths in (
        ("adc", fcf_adc, viable, necrosis, (adc_truth[VIABLE], adc_truth[NECROSIS])),
        ("iauc60", fcf_iauc, necrosis, viable, (iauc_truth[NECROSIS], iauc_truth[VIABLE])),
    ):
        labels = sitk.GetArrayFromImage(result.habitats)
        rows = []
        for habitat, region, value_truth in zip(
            result.result.habitats, (low, high), truths, strict=True
        ):
            rows.append(
                {
                    **habitat.record(),
                    "truth": value_truth,
                    "dice": _dice(labels == habitat.label, region),
                }
            )
        summary["fcf"][key] = rows
    summary["seconds"] = {
        "adc_body": round(adc_seconds, 2),
        "dce_body": round(dce_seconds, 2),
        "total": round(time.perf_counter() - started, 2),
        "body_voxels": int(np.count_nonzero(tissues)),
    }
    write_json(summary, out / "kinetics_summary.json")
    if progress is not None:
        progress(1.0, "kinetics demo done")
    return _report(summary, b_values, times)


def _report(summary: dict, b_values: np.ndarray, times: np.ndarray) -> list[str]:
    seconds = summary["seconds"]
    lines = [
        "## Kinetics: ADC, iAUC60 and Fit-Cluster-Fit",
        "",
        f"Voxel-wise maps over the body ({seconds['body_voxels']} voxels): ADC by non-linear "
        f"least squares over b = {', '.join(f'{b:g}' for b in b_values)} s/mm^2 "
        f"({seconds['adc_body']} s); DCE semi-quantitative maps over {len(times)} frames "
        f"({seconds['dce_body']} s). The iAUC60 truth is the same analysis of the tissue's "
        "noise-free, bias-free signal curve (from the ground-truth concentration curve), so "
        "the difference shows the effect of noise and bias only.",
        "",
        "| region | ADC truth (mm^2/s) | ADC median | ADC IQR | median SE | iAUC60 truth (s) "
        "| iAUC60 median | iAUC60 IQR |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, adc in summary["adc"].items():
        iauc = summary["iauc60"][name]
        lines.append(
            f"| {name} | {adc['truth']:.2e} | {adc['median']:.3e} | {adc['iqr']:.2e} | "
            f"{adc['median_se']:.1e} | {iauc['truth']:.2f} | {iauc['median']:.2f} | "
            f"{iauc['iqr']:.2f} |"
        )
    lines += [
        "",
        "Fit-Cluster-Fit in the tumour mask (2 habitats by 1D k-means, confidence >= 0.70; "
        "Dice against the tissue the habitat should find: ADC 1 = viable tumour, 2 = "
        "necrosis; iAUC60 1 = necrosis, 2 = viable tumour):",
        "",
        "| parameter | habitat | kept / total | robust value +- SE | voxel mean | voxel median "
        "| truth | Dice |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key, rows in summary["fcf"].items():
        for row in rows:
            fmt = ".3e" if key == "adc" else ".2f"
            lines.append(
                f"| {row['parameter']} | {row['label']} | {row['voxels_kept']} / "
                f"{row['voxels_total']} | {row['value']:{fmt}} +- {row['se']:.1e} | "
                f"{row['voxel_mean']:{fmt}} | {row['voxel_median']:{fmt}} | "
                f"{row['truth']:{fmt}} | {row['dice']:.3f} |"
            )
    lines += ["", f"Kinetics total: {seconds['total']} s.", ""]
    return lines
