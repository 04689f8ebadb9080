"""Multi-observer agreement (pairwise, STAPLE) and mask post-processing."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from primage.errors import PrimageInputError
from primage.segmentation import (
    pairwise_agreement,
    parse_steps,
    postprocess_label_image,
    staple_consensus,
)
from primage.segmentation.demo import run_demo
from primage.segmentation.postprocess import ball


def _image(array, spacing=(0.8, 0.8, 3.0)) -> sitk.Image:
    image = sitk.GetImageFromArray(np.asarray(array, np.uint8))
    image.SetSpacing(spacing)
    return image


def _blob(shape=(10, 40, 40), centre=(5, 20, 20), radius=(3, 12, 12)) -> np.ndarray:
    grid = np.indices(shape)
    return (
        sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radius, strict=True)) <= 1
    ).astype(np.uint8)


def test_pairwise_table_has_every_pair_and_label():
    truth = _blob()
    truth[4:6, 18:22, 18:22] = 2
    a, b, c = truth.copy(), np.roll(truth, 1, axis=2), np.roll(truth, -1, axis=1)
    rows = pairwise_agreement([_image(a), _image(b), _image(c)], ["A", "B", "C"])
    assert [(r["observer_a"], r["observer_b"], r["label"]) for r in rows] == [
        ("A", "B", 1),
        ("A", "B", 2),
        ("A", "C", 1),
        ("A", "C", 2),
        ("B", "C", 1),
        ("B", "C", 2),
    ]
    assert all(0.0 < r["dice"] < 1.0 for r in rows)
    assert rows[0]["hausdorff"] == pytest.approx(0.8)  # a one-voxel shift along x


def test_staple_recovers_truth_and_ranks_observers():
    truth = _blob()
    good = truth.copy()
    generous = np.maximum(truth, np.roll(truth, 2, axis=2))
    poor = truth.copy()
    poor[:, :, :20] = 0
    result = staple_consensus(
        [_image(good), _image(generous), _image(poor)], ["good", "generous", "poor"]
    )
    consensus = sitk.GetArrayFromImage(result.consensus)
    # Two of three observers agree on every truth voxel; the consensus is the truth.
    np.testing.assert_array_equal(consensus, truth)
    by_name = {row["observer"]: row for row in result.observers}
    assert by_name["good"]["sensitivity"] == pytest.approx(1.0, abs=1e-3)
    assert by_name["poor"]["sensitivity"] < 0.7
    assert by_name["generous"]["specificity"] < by_name["good"]["specificity"]
    assert result.consensus.GetSpacing() == (0.8, 0.8, 3.0)
    assert set(result.probabilities) == {1}


def test_staple_and_pairwise_refuse_bad_input():
    truth = _blob()
    with pytest.raises(PrimageInputError, match="at least 3"):
        staple_consensus([_image(truth), _image(truth)])
    with pytest.raises(PrimageInputError, match="different voxel grids"):
        pairwise_agreement([_image(truth), _image(truth, spacing=(1, 1, 1))])
    with pytest.raises(PrimageInputError, match="empty"):
        pairwise_agreement([_image(truth), _image(np.zeros_like(truth))])
    with pytest.raises(PrimageInputError, match="label 5"):
        staple_consensus([_image(truth)] * 3, labels=[5])


def test_postprocess_steps():
    mask = _blob()
    mask[5, 20, 20] = 0  # a hole
    mask[1, 2:4, 2:4] = 1  # a 4-voxel island (7.7 uL)
    image = _image(mask)
    largest, records = postprocess_label_image(image, "largest")
    assert sitk.GetArrayFromImage(largest)[1, 2, 2] == 0
    assert records[0]["voxels_after"] == records[0]["voxels_before"] - 4
    filled, _ = postprocess_label_image(image, "fill")
    assert sitk.GetArrayFromImage(filled)[5, 20, 20] == 1
    kept, _ = postprocess_label_image(image, [{"step": "min-volume", "min_volume_ml": 0.007}])
    assert sitk.GetArrayFromImage(kept)[1, 2, 2] == 1  # 4 x 1.92 uL = 7.68 uL >= 7 uL
    removed, _ = postprocess_label_image(image, "min-volume:0.008")
    assert sitk.GetArrayFromImage(removed)[1, 2, 2] == 0
    # Closing with 1 mm joins across a one-voxel (0.8 mm) gap in-plane but not along z (3 mm).
    gap = np.zeros((8, 12, 12), np.uint8)
    gap[2:6, 3:9, 2:5] = 1
    gap[2:6, 3:9, 6:9] = 1
    closed, _ = postprocess_label_image(_image(gap), "close:1")
    assert sitk.GetArrayFromImage(closed)[3, 5, 5] == 1
    assert np.array_equal(ball(1.0, (3.0, 0.8, 0.8)).shape, (1, 3, 3))
    # Labels are never overwritten: a core (label 2) is not a hole of the rim (label 1).
    two = _blob()
    two[4:7, 17:23, 17:23] = 2
    filled_two, _ = postprocess_label_image(_image(two), "fill,close:2")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(filled_two) == 2, two == 2)


def test_postprocess_steps_parse_and_refuse():
    assert parse_steps("largest, fill,close:2,min-volume:0.5") == [
        {"step": "largest"},
        {"step": "fill"},
        {"step": "close", "radius_mm": 2.0},
        {"step": "min-volume", "min_volume_ml": 0.5},
    ]
    for bad in ("open:2", "close", "close:x", "close:-1", "fill:3", ""):
        with pytest.raises(PrimageInputError):
            parse_steps(bad)
    with pytest.raises(PrimageInputError, match="empty"):
        postprocess_label_image(_image(np.zeros((4, 4, 4))), "largest")


def test_demo_section(tmp_path):
    from primage.synthetic import make_digital_patient, write_case

    write_case(make_digital_patient(size=(48, 48, 20), spacing=(3.0, 3.0, 8.0)), tmp_path / "case")
    lines = run_demo(tmp_path / "case", tmp_path / "out", model=False)
    assert lines[0] == "## Segmentation agreement"
    table = [line for line in lines if line.startswith("| STAPLE")]
    assert len(table) == 1
    staple_dice = float(table[0].split("|")[2])
    observer_dice = [
        float(line.split("|")[2]) for line in lines if line.startswith(("| generous", "| tight"))
    ]
    assert staple_dice > max(observer_dice)
    assert (tmp_path / "out" / "staple_consensus.nii.gz").is_file()
    assert (tmp_path / "out" / "segmentation_summary.json").is_file()
