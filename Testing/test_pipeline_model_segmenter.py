"""The pipeline's ``model`` segmenter: a model trained with `primage segment train`'s engine
on generated cases segments a new case's tumour inside the pipeline (needs the `seg` extra)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
from _pipeline_data import write_small_case

from primage.errors import PrimageInputError
from primage.pipeline import run_cohort
from primage.pipeline.config import validate_config


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    from primage.segmentation.deep import TrainOptions, train

    root = tmp_path_factory.mktemp("model_training")
    cases = [write_small_case(root / f"train{i}", 20 + i, roles=()) for i in range(3)]
    pairs = [(case / "t2w.nii.gz", case / "tumour.nii.gz") for case in cases]
    options = TrainOptions(
        epochs=10, iterations_per_epoch=8, learning_rate=1e-2, validation_fraction=0.34
    )
    train(pairs, root / "model", options)
    return root / "model"


def test_model_segmenter_finds_the_tumour_in_the_pipeline(model_folder, tmp_path):
    cohort = tmp_path / "cohort"
    case = write_small_case(cohort / "case_m", 30, roles=())
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(case / "tumour.nii.gz"))) > 0
    (case / "tumour.nii.gz").rename(tmp_path / "hidden_truth.nii.gz")  # the model must find it
    config = {"steps": ["segment"], "segment": {"method": "model", "model": str(model_folder)}}
    out = tmp_path / "out"
    result = run_cohort(cohort, config, out, workers=0)
    assert result.exit_code == 0, result.failed
    found = sitk.GetArrayFromImage(
        sitk.ReadImage(str(out / "case_m" / "segment" / "tumour.nii.gz"))
    )
    found = found > 0
    dice = 2 * np.sum(found & truth) / (found.sum() + truth.sum())
    assert dice > 0.7, dice
    manifest = json.loads((out / "case_m" / "segment" / "step.json").read_text())
    unit = manifest["units"]["tumour"]
    assert unit["settings"]["method"] == "model"
    # The model's weights are hashed inputs: a retrained model reruns the segmentation.
    assert "model_model.pth" in unit["inputs"] and "model_config.json" in unit["inputs"]

    # Unchanged model and settings: the step is up to date.
    again = run_cohort(cohort, config, out, workers=0)
    assert again.exit_code == 0
    assert json.loads((out / "case_m" / "segment" / "step.json").read_text()) == manifest


def test_model_method_needs_a_valid_model_folder(tmp_path):
    with pytest.raises(PrimageInputError, match=r"segment\.model"):
        validate_config({"segment": {"method": "model"}})
    empty = tmp_path / "not_a_model"
    empty.mkdir()
    with pytest.raises(PrimageInputError, match="segment"):
        validate_config({"segment": {"method": "model", "model": str(empty)}})
