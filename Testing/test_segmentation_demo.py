"""The segmentation section of ``primage demo``: its model part reruns safely and never
trains on the tested patient (needs the `seg` extra); without torch the section says so and
still reports the simulated observers. The demo's default settings on the demo patient are
tested through the whole demo in ``test_demo.py``."""

from __future__ import annotations

import json

import pytest

from primage.errors import PrimageInputError
from primage.segmentation import demo as segmentation_demo
from primage.synthetic import make_digital_patient, write_case

SMALL = {"size": (48, 48, 16), "spacing": (3.0, 3.0, 10.0)}


def _summary(folder):
    return json.loads((folder / "segmentation_summary.json").read_text())


def test_short_training_reruns_into_the_same_folder(tmp_path):
    """Rerunning replaces the demo's model files and leaves other files alone."""
    pytest.importorskip("torch")
    pytest.importorskip("monai")
    case = tmp_path / "case"
    write_case(make_digital_patient(1001, **SMALL), case)  # collides with a training seed
    out = tmp_path / "segmentation"
    quick = {"epochs": 1, "iterations_per_epoch": 2}
    segmentation_demo.run_demo(case, out, training=quick, training_seeds=(1001, 1002))
    first = _summary(out)["model"]
    assert first["training_seeds"] == [1002, 1003]  # never the tested patient's seed
    (out / "model" / "notes.txt").write_text("mine")
    segmentation_demo.run_demo(case, out, training=quick, training_seeds=(1001, 1002))
    second = _summary(out)["model"]
    assert (out / "model" / "notes.txt").read_text() == "mine"
    assert not [p for p in out.iterdir() if p.name.startswith(".model-training")]
    # Seeded, one thread: the same figures again.
    assert second["versus_truth"]["dice"] == first["versus_truth"]["dice"]
    assert second["final_validation_dice"] == first["final_validation_dice"]


def test_without_torch_the_section_says_so_and_reports_the_observers(tmp_path, monkeypatch):
    from primage.segmentation import deep

    def missing():
        raise PrimageInputError(
            "deep-learning segmentation needs torch and MONAI (torch is missing); "
            + deep.INSTALL_HINT
        )

    monkeypatch.setattr(deep, "require_torch", missing)
    case = tmp_path / "case"
    write_case(make_digital_patient(0, **SMALL), case)
    out = tmp_path / "segmentation"
    lines = segmentation_demo.run_demo(case, out)
    skipped = [line for line in lines if line.startswith("Model segmentation skipped")]
    assert len(skipped) == 1 and "pip install 'primage[seg]'" in skipped[0]
    assert any(line.startswith("| STAPLE") for line in lines)
    summary = _summary(out)
    assert summary["model"]["status"] == "skipped"
    assert "STAPLE" in summary["versus_truth"]
    assert (out / "staple_consensus.nii.gz").is_file()
    assert not (out / "model").exists() and not (out / "model_tumour.nii.gz").exists()
