"""``primage demo``: runs end to end and its figures agree with the ground truth."""

import json

import numpy as np
import pytest
import SimpleITK as sitk

from primage.cli import main
from primage.cli.demo import adc_fit, detrended_sd, log_correlation


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    folder = tmp_path_factory.mktemp("demo")
    keep = folder / "my_notes.txt"  # a user file that the demo must leave alone
    keep.write_text("mine")
    assert main(["demo", "--output-dir", str(folder), "--seed", "0", "--quiet"]) == 0
    return folder


def test_demo_writes_the_case_outputs_and_report(demo):
    case = demo / "case"
    for name in ("t2w.nii.gz", "dwi.nii.gz", "dwi.bval", "dce.times", "ground_truth.json"):
        assert (case / name).is_file()
    out = demo / "preprocessed"
    for modality in ("t2w", "t1w", "dwi", "dce", "ct"):
        assert (out / f"{modality}.nii.gz").is_file()
        record = json.loads((out / f"{modality}.json").read_text())
        assert record["preset"] == modality and record["steps"]
    assert (out / "t2w_bias_field.nii.gz").is_file()
    report = (demo / "report.md").read_text()
    assert "bias log-correlation" in report and "montage.png" in report
    assert (demo / "my_notes.txt").read_text() == "mine"


def test_demo_figures_agree_with_the_ground_truth(demo):
    summary = json.loads((demo / "summary.json").read_text())
    t2w, dwi, dce, ct = (summary["modalities"][m] for m in ("t2w", "dwi", "dce", "ct"))
    assert t2w["bias_log_correlation_body"] > 0.9
    assert t2w["liver_cv_n4"] < t2w["liver_cv_raw"]
    assert t2w["liver_snr_final"] > 1.3 * t2w["liver_snr_n4"]  # diffusion removes noise
    # ... without flattening the tumour contrast (ratio within 2 %).
    assert t2w["tumour_to_soft_tissue_ratio_final"] == pytest.approx(
        t2w["tumour_to_soft_tissue_ratio_n4"], rel=0.02
    )
    assert dwi["tumour_adc_median_final"] == pytest.approx(dwi["tumour_adc_truth"], rel=0.05)
    assert dce["tumour_peak_enhancement_final"] == pytest.approx(
        dce["tumour_peak_enhancement_truth"], rel=0.05
    )
    assert ct["liver_hu_final"] == pytest.approx(ct["liver_hu_truth"], abs=2.0)
    assert ct["output_spacing_mm"] == [1.0, 1.0, 1.0]
    # Speed is a benchmark matter (README: ~70-100 s here), not asserted in tests.
    assert summary["seconds_total"] > 0


def test_demo_segments_the_tumour_with_a_model_trained_on_generated_patients(demo):
    """The segmentation section's default settings: a DynUNet trained on 4 generated patients
    (not the demo patient) finds the demo patient's tumour."""
    # torch and MONAI are part of the test install (make test): missing them is a failure.
    from primage.segmentation.demo import TRAINING_SEEDS

    out = demo / "segmentation"
    model = json.loads((out / "segmentation_summary.json").read_text())["model"]
    assert model["status"] == "trained"
    assert model["training_seeds"] == list(TRAINING_SEEDS)
    assert (model["training_cases"], model["validation_cases"]) == (3, 1)
    assert model["torch_threads"] == 1
    assert 0.5 < model["final_validation_dice"] <= 1.0  # 0.718 measured
    truth = model["versus_truth"]
    assert truth["dice"] >= 0.85, truth  # 0.922 measured (network output alone: 0.720)
    assert truth["hausdorff95"] < 6.0 and truth["assd"] < 2.0, truth  # 3.25 and 1.22 mm
    assert abs(truth["volume_difference_percent"]) < 25.0, truth  # +11.6 %
    # Keeping the largest component removes the network's false positives (kidneys).
    assert truth["dice"] > model["versus_truth_raw"]["dice"]
    assert model["seconds_total"] > 0  # ~28 s on a 2-core machine (not a timed test)

    for name in ("config.json", "model.pth", "training_log.csv"):
        assert (out / "model" / name).is_file()
    predicted = sitk.ReadImage(str(out / "model_tumour.nii.gz"))
    reference = sitk.ReadImage(str(demo / "case" / "tumour.nii.gz"))
    assert predicted.GetSize() == reference.GetSize()
    assert predicted.GetSpacing() == pytest.approx(reference.GetSpacing())
    assert (out / "model_prediction.nii.gz").is_file()
    assert (out / "staple_consensus.nii.gz").is_file()  # the observer part is still there
    report = (demo / "report.md").read_text()
    assert "### Tumour segmented by a model trained on generated patients" in report
    row = next(line for line in report.splitlines() if line.startswith("| model + largest"))
    assert float(row.split("|")[2]) == pytest.approx(truth["dice"], abs=1e-3)


def test_demo_montage_is_a_png_of_five_panels(demo):
    montage = sitk.ReadImage(str(demo / "montage.png"))
    assert montage.GetDimension() == 2 and montage.GetPixelID() == sitk.sitkUInt8
    width, height = montage.GetSize()
    # 5 panels of 96 px plus 4 gaps of 2 px, zoomed x2.
    assert (width, height) == (2 * (5 * 96 + 4 * 2), 2 * 96)


def test_demo_refuses_a_file_as_output_dir(tmp_path, capsys):
    target = tmp_path / "file"
    target.write_text("x")
    assert main(["demo", "--output-dir", str(target), "-q"]) == 2
    assert "not a folder" in capsys.readouterr().err


def test_measurement_helpers_against_known_answers():
    rng = np.random.default_rng(0)
    region = np.zeros((10, 20, 20), bool)
    region[2:8, 3:17, 3:17] = True
    z, y, x = np.indices(region.shape)
    trend = 100 + 3 * x - 2 * y + 0.5 * x * y  # quadratic: removed exactly
    noisy = trend + rng.normal(0, 4.0, region.shape)
    assert detrended_sd(noisy, region) == pytest.approx(4.0, rel=0.1)
    field = np.exp(0.1 * x)
    assert log_correlation(3.0 * field, field, region) == pytest.approx(1.0)
    b = [0.0, 500.0, 1000.0]
    series = np.stack([np.full(region.shape, 800.0 * np.exp(-bv * 1.2e-3)) for bv in b])
    assert np.allclose(adc_fit(series, b, region), 1.2e-3)
