"""The segmentation section of ``primage demo``: agreement of simulated observers with the
digital patient's ground-truth tumour, and their STAPLE consensus.

Observers are perturbations of the true tumour mask: a second observer who draws generously
(dilation by one in-plane voxel and a 1.5 mm shift), a third who draws tightly (erosion by
one in-plane voxel) and a fourth who misses a slab of the tumour. The section reports the
metrics of each observer against the truth and of the STAPLE consensus of the three others.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from primage.io import read_image, write_image, write_json
from primage.progress import ProgressCallback, no_progress


def simulated_observers(truth: sitk.Image) -> dict[str, sitk.Image]:
    """Perturbed copies of a binary mask standing in for human observers (UInt8, same grid)."""
    binary = sitk.Cast(truth > 0, sitk.sitkUInt8)
    generous = sitk.BinaryDilate(binary, [1, 1, 0])
    # A shift of 1.5 mm along the first physical axis, as a misregistered drawing would be.
    shift = sitk.TranslationTransform(3, (-1.5, 0.0, 0.0))
    generous = sitk.Resample(generous, binary, shift, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    tight = sitk.BinaryErode(binary, [1, 1, 0])
    array = sitk.GetArrayFromImage(binary)
    slices = np.flatnonzero(array.any(axis=(1, 2)))
    partial = array.copy()
    partial[slices[-max(1, len(slices) // 5) :]] = 0  # misses the top fifth of the slices
    partial_image = sitk.GetImageFromArray(partial)
    partial_image.CopyInformation(binary)
    return {"generous": generous, "tight": tight, "partial": partial_image}


def _fmt(value: float, digits: int = 3) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


def run_demo(
    case_folder: str | Path, output_folder: str | Path, progress: ProgressCallback | None = None
) -> list[str]:
    """Agreement and STAPLE on a digital-patient case; returns Markdown report lines.

    Writes ``observer_<name>.nii.gz``, ``staple_consensus.nii.gz`` and
    ``segmentation_summary.json`` into ``output_folder``.
    """
    from primage.segmentation.agreement import staple_consensus
    from primage.segmentation.metrics import compare_label_images

    progress = progress or no_progress
    case_folder, output_folder = Path(case_folder), Path(output_folder)
    truth = sitk.Cast(
        read_image(case_folder / "tumour.nii.gz", role="tumour mask") > 0, sitk.sitkUInt8
    )
    progress(0.1, "simulating observers")
    observers = simulated_observers(truth)
    rows = {}
    for index, (name, mask) in enumerate(observers.items()):
        progress(0.1 + 0.5 * index / len(observers), f"comparing observer {name}")
        rows[name] = compare_label_images(truth, mask, [1])[0]
    progress(0.7, "STAPLE consensus")
    staple = staple_consensus(list(observers.values()), list(observers))
    rows["STAPLE"] = compare_label_images(truth, staple.consensus, [1])[0]
    output_folder.mkdir(parents=True, exist_ok=True)
    for name, mask in observers.items():
        write_image(mask, output_folder / f"observer_{name}.nii.gz")
    write_image(staple.consensus, output_folder / "staple_consensus.nii.gz")
    summary = {
        "versus_truth": {
            name: {k: v for k, v in row.items() if k != "notes"} for name, row in rows.items()
        },
        "staple_observers": staple.observers,
    }
    write_json(summary, output_folder / "segmentation_summary.json")
    progress(1.0, "segmentation done")

    spacing = " x ".join(f"{s:g}" for s in truth.GetSpacing())
    lines = [
        "## Segmentation agreement",
        "",
        f"Simulated observers against the ground-truth tumour ({spacing} mm voxels); "
        "distances in mm, volumes in mL; STAPLE is the consensus of the three observers.",
        "",
        "| mask | Dice | Jaccard | HD | HD95 | ASSD | volume | vol. diff. % | FNR | FPR mod. |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in rows.items():
        lines.append(
            f"| {name} | {_fmt(row['dice'])} | {_fmt(row['jaccard'])} | "
            f"{_fmt(row['hausdorff'], 2)} | {_fmt(row['hausdorff95'], 2)} | {_fmt(row['assd'], 2)} | "
            f"{_fmt(row['volume_test_ml'], 2)} | {_fmt(row['volume_difference_percent'], 1)} | "
            f"{_fmt(row['fnr'])} | {_fmt(row['fpr_modified'])} |"
        )
    lines.append("")
    lines.append(
        "STAPLE estimates (sensitivity / specificity): "
        + ", ".join(
            f"{o['observer']} {o['sensitivity']:.3f} / {o['specificity']:.4f}"
            for o in staple.observers
        )
        + f"; true tumour volume {_fmt(rows['STAPLE']['volume_reference_ml'], 2)} mL."
    )
    lines.append("")
    return lines
