"""Model inference and training in a separate process (job kinds ``segment`` and ``train``).

The protocol (a JSON specification run by ``python -m primage.jobs SPEC.json``, reports on
stdout) is :mod:`primage.jobs`; these are the segmentation runners, used by the Slicer
module so that its GUI stays responsive while torch works.

``segment`` keys: ``model`` (folder), ``inputs`` (channel image paths, the first is the
output grid), ``device``, ``folds`` (nnU-Net; null = all), ``postprocess`` (steps text or
null), ``output`` (label image path), ``info_output`` (JSON: label names and the model's
provenance).

``train`` keys: ``pairs`` (list of ``[image, mask]`` paths), ``output`` (model folder),
``device``, ``resume``, ``options`` (:class:`~primage.segmentation.deep.TrainOptions`
fields). Each finished epoch is reported as an event ``{"epoch", "loss",
"validation_dice", "learning_rate", "seconds"}``.
"""

from __future__ import annotations

from typing import Any

from primage.errors import PrimageInputError
from primage.io import read_image, write_image, write_json
from primage.jobs import report_event, report_progress
from primage.progress import sub_progress


def run_segment(spec: dict[str, Any]) -> None:
    """Run a model folder on the specification's channel images; writes the labels and info."""
    import numpy as np
    import SimpleITK as sitk

    from primage.segmentation.models import load_model
    from primage.segmentation.postprocess import parse_steps, postprocess_label_image

    steps = parse_steps(spec["postprocess"]) if spec.get("postprocess") else []
    images = [read_image(path, role=f"input {i + 1}") for i, path in enumerate(spec["inputs"])]
    report_progress(0.02, "loading the model")
    model = load_model(spec["model"], device=spec.get("device") or "cpu", folds=spec.get("folds"))
    labels = model.predict(images, progress=sub_progress(report_progress, 0.05, 0.95))
    records = []
    if steps and np.any(sitk.GetArrayViewFromImage(labels)):
        report_progress(0.96, "post-processing")
        labels, records = postprocess_label_image(labels, steps)
    write_image(labels, spec["output"])
    info = {
        "labels": model.labels,
        "model": model.provenance(),
        "postprocess": records,
    }
    write_json(info, spec["info_output"])


def run_train(spec: dict[str, Any]) -> None:
    """Train the built-in DynUNet on the specification's pairs; reports each epoch as an event."""
    from dataclasses import fields

    from primage.segmentation.deep import TrainOptions, train

    known = {f.name for f in fields(TrainOptions)}
    given = dict(spec.get("options") or {})
    unknown = sorted(set(given) - known)
    if unknown:
        raise PrimageInputError(f"unknown training option(s): {', '.join(unknown)}")
    for key in ("patch_size", "filters"):
        if key in given:
            given[key] = tuple(given[key])
    config = train(
        [tuple(pair) for pair in spec["pairs"]],
        spec["output"],
        TrainOptions(**given),
        device=spec.get("device") or "cpu",
        resume=bool(spec.get("resume")),
        progress=report_progress,
        on_epoch=lambda row: report_event({"type": "epoch", **row}),
    )
    report_event(
        {
            "type": "trained",
            "final_validation_dice": config["training"].get("final_validation_dice"),
        }
    )
