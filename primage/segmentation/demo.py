"""The segmentation section of ``primage demo``: simulated observers and STAPLE against the
digital patient's ground-truth tumour, then a DynUNet trained on generated patients.

Observers are perturbations of the true tumour mask: a second observer who draws generously
(dilation by one in-plane voxel and a 1.5 mm shift), a third who draws tightly (erosion by
one in-plane voxel) and a fourth who misses a slab of the tumour. The section reports the
metrics of each observer against the truth and of the STAPLE consensus of the three others.

The model part generates a few training patients with :mod:`primage.synthetic` (other seeds
than the demo patient, on the demo case's grid, T2w and tumour mask only), trains the
built-in DynUNet (:mod:`primage.segmentation.deep`) on them into ``model/``, segments the
demo patient's T2w with it, keeps the largest connected component and measures the result
against the ground truth. Training is seeded and runs on one CPU thread, so the reported
figures repeat run after run. torch and MONAI are optional: without them the section says
so in one line and reports the observers only.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from primage.errors import PrimageInputError
from primage.io import read_image, write_image, write_json
from primage.progress import ProgressCallback, no_progress, sub_progress

#: Seeds of the generated training patients (a seed equal to the demo patient's is skipped).
TRAINING_SEEDS = (1001, 1002, 1003, 1004)
#: Training settings of the demo model (:class:`primage.segmentation.deep.TrainOptions`):
#: 3 training + 1 validation patient, ~30 s on one CPU thread.
DEMO_TRAINING = {
    "epochs": 10,
    "iterations_per_epoch": 8,
    "learning_rate": 1e-2,
    "validation_fraction": 0.25,
    "seed": 0,
}
#: torch CPU threads while training and predicting: a fixed count keeps the figures
#: reproducible (the order of floating-point sums depends on it) and one thread does not
#: stall when the machine is busy.
TORCH_THREADS = 1
POSTPROCESSING = "largest"


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


_TABLE_HEAD = [
    "| mask | Dice | Jaccard | HD | HD95 | ASSD | volume | vol. diff. % | FNR | FPR mod. |",
    "|---|---|---|---|---|---|---|---|---|---|",
]


def _table_row(name: str, row: dict) -> str:
    return (
        f"| {name} | {_fmt(row['dice'])} | {_fmt(row['jaccard'])} | "
        f"{_fmt(row['hausdorff'], 2)} | {_fmt(row['hausdorff95'], 2)} | {_fmt(row['assd'], 2)} | "
        f"{_fmt(row['volume_test_ml'], 2)} | {_fmt(row['volume_difference_percent'], 1)} | "
        f"{_fmt(row['fnr'])} | {_fmt(row['fpr_modified'])} |"
    )


def _metrics(row: dict) -> dict:
    return {k: v for k, v in row.items() if k != "notes"}


def run_demo(
    case_folder: str | Path,
    output_folder: str | Path,
    progress: ProgressCallback | None = None,
    *,
    model: bool = True,
    training: dict | None = None,
    training_seeds: Sequence[int] = TRAINING_SEEDS,
) -> list[str]:
    """Agreement, STAPLE and a trained model on a digital-patient case; returns Markdown
    report lines.

    Writes ``observer_<name>.nii.gz``, ``staple_consensus.nii.gz`` and
    ``segmentation_summary.json`` into ``output_folder``; with ``model`` (and torch/MONAI
    installed) also the trained model folder ``model/``, the network's label image
    ``model_prediction.nii.gz`` and its post-processed tumour ``model_tumour.nii.gz``.
    ``training`` overrides :data:`DEMO_TRAINING` (keys of ``TrainOptions``);
    ``training_seeds`` are the seeds of the generated training patients.
    """
    from primage.segmentation.agreement import staple_consensus
    from primage.segmentation.metrics import compare_label_images

    progress = progress or no_progress
    case_folder, output_folder = Path(case_folder), Path(output_folder)
    truth = sitk.Cast(
        read_image(case_folder / "tumour.nii.gz", role="tumour mask") > 0, sitk.sitkUInt8
    )
    progress(0.02, "simulating observers")
    observers = simulated_observers(truth)
    rows = {}
    for index, (name, mask) in enumerate(observers.items()):
        progress(0.02 + 0.08 * index / len(observers), f"comparing observer {name}")
        rows[name] = compare_label_images(truth, mask, [1])[0]
    progress(0.1, "STAPLE consensus")
    staple = staple_consensus(list(observers.values()), list(observers))
    rows["STAPLE"] = compare_label_images(truth, staple.consensus, [1])[0]
    output_folder.mkdir(parents=True, exist_ok=True)
    for name, mask in observers.items():
        write_image(mask, output_folder / f"observer_{name}.nii.gz")
    write_image(staple.consensus, output_folder / "staple_consensus.nii.gz")
    summary = {
        "versus_truth": {name: _metrics(row) for name, row in rows.items()},
        "staple_observers": staple.observers,
    }

    spacing = " x ".join(f"{s:g}" for s in truth.GetSpacing())
    lines = [
        "## Segmentation agreement",
        "",
        f"Simulated observers against the ground-truth tumour ({spacing} mm voxels); "
        "distances in mm, volumes in mL; STAPLE is the consensus of the three observers.",
        "",
        *_TABLE_HEAD,
    ]
    lines += [_table_row(name, row) for name, row in rows.items()]
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

    if model:
        model_summary, model_lines = _model_section(
            case_folder,
            output_folder,
            truth,
            {**DEMO_TRAINING, **(training or {})},
            list(training_seeds),
            sub_progress(progress, 0.12, 0.99),
        )
        summary["model"] = model_summary
        lines += model_lines
    else:
        summary["model"] = {"status": "not run"}
    write_json(summary, output_folder / "segmentation_summary.json")
    progress(1.0, "segmentation done")
    return lines


def _case_seed(case_folder: Path) -> int | None:
    try:
        return int(json.loads((case_folder / "ground_truth.json").read_text("utf-8"))["seed"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _model_section(
    case_folder: Path,
    output_folder: Path,
    truth: sitk.Image,
    training: dict,
    seeds: list[int],
    progress: ProgressCallback,
) -> tuple[dict, list[str]]:
    """Train on generated patients, segment the case, compare with the truth."""
    from primage.segmentation.deep import require_torch

    try:
        torch = require_torch()
    except PrimageInputError as error:
        reason = str(error)
        return (
            {"status": "skipped", "reason": reason},
            [f"Model segmentation skipped: {reason}.", ""],
        )
    from primage.segmentation.deep import TrainOptions, load_model, predict, train
    from primage.segmentation.metrics import compare_label_images
    from primage.segmentation.postprocess import postprocess_label_image
    from primage.synthetic import make_digital_patient

    start = time.perf_counter()
    image = read_image(case_folder / "t2w.nii.gz", role="T2w image")
    case_seed = _case_seed(case_folder)
    if case_seed in seeds:  # never train on the patient the model is tested on
        seeds = [s for s in seeds if s != case_seed] + [max(seeds) + 1]
    progress(0.0, "generating training patients")
    patients = [
        # T2w and tumour are all the model needs: one b-value and two DCE frames keep it fast.
        make_digital_patient(
            seed,
            size=image.GetSize(),
            spacing=image.GetSpacing(),
            b_values=(0.0,),
            frame_times_s=(0.0, 6.0),
        )
        for seed in seeds
    ]
    generation_seconds = time.perf_counter() - start
    options = TrainOptions(**training)
    model_folder = output_folder / "model"
    threads = torch.get_num_threads()
    torch.set_num_threads(TORCH_THREADS)
    try:
        # Train into a fresh folder, then move its files into model/: a rerun of the demo
        # replaces the demo's model files and leaves anything else there alone.
        scratch = Path(tempfile.mkdtemp(prefix=".model-training-", dir=output_folder))
        try:
            config = train(
                [(p.t2w, p.tumour) for p in patients],
                scratch / "model",
                options,
                progress=sub_progress(progress, 0.05, 0.9),
            )
            model_folder.mkdir(exist_ok=True)
            for path in (scratch / "model").iterdir():
                os.replace(path, model_folder / path.name)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        progress(0.9, "segmenting the demo patient with the trained model")
        inference_start = time.perf_counter()
        prediction = predict(load_model(model_folder), [image])
        inference_seconds = time.perf_counter() - inference_start
    finally:
        torch.set_num_threads(threads)

    prediction = sitk.Cast(prediction > 0, sitk.sitkUInt8)
    if sitk.GetArrayViewFromImage(prediction).any():
        tumour, _ = postprocess_label_image(prediction, POSTPROCESSING)
    else:
        tumour = prediction
    write_image(prediction, output_folder / "model_prediction.nii.gz")
    write_image(tumour, output_folder / "model_tumour.nii.gz")
    progress(0.95, "comparing the model's tumour with the truth")
    raw_row = compare_label_images(truth, prediction, [1])[0]
    row = compare_label_images(truth, tumour, [1])[0]
    record = config["training"]
    summary = {
        "status": "trained",
        "network": "MONAI DynUNet (primage.segmentation.deep)",
        "training_seeds": seeds,
        "training_cases": len(seeds) - len(record["validation_cases"]),
        "validation_cases": len(record["validation_cases"]),
        "grid": {"size": list(image.GetSize()), "spacing_mm": list(image.GetSpacing())},
        "options": {**training, "patch_size": record["patch_size"]},
        "torch_threads": TORCH_THREADS,
        "device": record["device"],
        "generation_seconds": round(generation_seconds, 2),
        "training_seconds": record["seconds_total"],
        "final_validation_dice": record["final_validation_dice"],
        "inference_seconds": round(inference_seconds, 2),
        "seconds_total": round(time.perf_counter() - start, 2),
        "postprocessing": POSTPROCESSING,
        "model_folder": "model",
        "prediction": "model_prediction.nii.gz",
        "tumour": "model_tumour.nii.gz",
        "versus_truth_raw": _metrics(raw_row),
        "versus_truth": _metrics(row),
    }
    seed_text = ", ".join(str(s) for s in seeds)
    lines = [
        "### Tumour segmented by a model trained on generated patients",
        "",
        f"primage's DynUNet (MONAI) trained on the T2w and tumour masks of {len(seeds)} "
        f"generated patients (seeds {seed_text}: same anatomy, other tumour outlines and "
        f"noise; {summary['training_cases']} for training, {summary['validation_cases']} for "
        f"validation; {options.epochs} epochs x {options.iterations_per_epoch} iterations, "
        f"seed {options.seed}, {TORCH_THREADS} CPU thread) in {record['seconds_total']:.1f} s; "
        f"final validation Dice {_fmt(record['final_validation_dice'])} (before "
        f"post-processing). It segmented this patient's T2w in {inference_seconds:.1f} s; "
        "the largest connected component is kept (`model_tumour.nii.gz`, model in `model/`).",
        "",
        *_TABLE_HEAD,
        _table_row("model (network output)", raw_row),
        _table_row("model + largest component", row),
        "",
    ]
    return summary, lines
