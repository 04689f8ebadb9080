"""Registration QC: similarity, masks, landmarks, Jacobian, verdict, snapshots."""

import json

import numpy as np
import pytest
import SimpleITK as sitk

from primage.errors import PrimageInputError
from primage.registration.qc import (
    dice,
    has_deformable_part,
    jacobian_range,
    landmark_errors,
    mean_surface_distance,
    mutual_information,
    normalised_correlation,
    quality_control,
    read_landmarks,
    summary_text,
    write_snapshots,
)
from primage.registration.truth import smooth_deformation, synthetic_registration_pair


@pytest.fixture(scope="module")
def pair():
    return synthetic_registration_pair()


def _box(size=(20, 20, 20), low=(5, 5, 5), high=(10, 10, 10), spacing=(1.0, 1.0, 2.0)):
    array = np.zeros(tuple(reversed(size)), np.uint8)
    array[low[2] : high[2], low[1] : high[1], low[0] : high[0]] = 1
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    return image


def test_dice_and_surface_distance_known_values():
    a = _box()
    b = _box(low=(6, 5, 5), high=(11, 10, 10))  # shifted by one voxel (1 mm) along x
    assert dice(a, a) == 1.0
    assert dice(a, b) == pytest.approx(2 * 4 / 10)
    assert mean_surface_distance(a, a) == 0.0
    assert 0.2 < mean_surface_distance(a, b) < 1.0  # only the x faces move, by 1 mm
    assert mean_surface_distance(a, a * 0) is None


def test_similarity_measures():
    rng = np.random.default_rng(0)
    x = rng.normal(size=5000)
    assert normalised_correlation(x, 2 * x + 1) == pytest.approx(1.0)
    assert mutual_information(x, x**2) > 5 * mutual_information(x, rng.normal(size=5000))
    assert np.isnan(normalised_correlation(x, np.zeros_like(x)))


def test_landmarks_csv_and_markups_json(tmp_path):
    csv = tmp_path / "points.csv"
    csv.write_text("# fixed points\nlabel,x,y,z\nA,1,2,3\nB,-4,5.5,6\n")
    assert read_landmarks(csv).tolist() == [[1, 2, 3], [-4, 5.5, 6]]
    markups = {
        "markups": [
            {"coordinateSystem": "RAS", "controlPoints": [{"position": [1.0, 2.0, 3.0]}]},
            {"coordinateSystem": "LPS", "controlPoints": [{"position": [1.0, 2.0, 3.0]}]},
        ]
    }
    path = tmp_path / "points.mrk.json"
    path.write_text(json.dumps(markups))
    assert read_landmarks(path).tolist() == [[-1, -2, 3], [1, 2, 3]]  # RAS converted to LPS
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(PrimageInputError, match="x, y, z"):
        read_landmarks(tmp_path / "bad.csv")
    (tmp_path / "bad.json").write_text('{"nope": 1}')
    with pytest.raises(PrimageInputError, match="markups"):
        read_landmarks(tmp_path / "bad.json")
    translation = sitk.TranslationTransform(3, (1.0, 0.0, 0.0))
    errors = landmark_errors(np.zeros((2, 3)), np.array([[1.0, 0, 0], [1.0, 3.0, 0]]), translation)
    assert errors.tolist() == [0.0, 3.0]
    with pytest.raises(PrimageInputError, match="pair up"):
        landmark_errors(np.zeros((2, 3)), np.zeros((3, 3)), translation)


def test_jacobian_detects_folding(pair):
    fixed = pair[0]
    gentle = smooth_deformation(fixed, 2.0, 30.0, seed=1)
    low, high = jacobian_range(gentle, fixed)
    assert 0 < low < 1 < high and has_deformable_part(gentle)
    folding = smooth_deformation(fixed, 40.0, 20.0, seed=1)
    assert jacobian_range(folding, fixed)[0] <= 0
    qc = quality_control(fixed, fixed, folding)
    assert qc["verdict"] == "review" and any("folds" in r for r in qc["reasons"])
    assert not has_deformable_part(sitk.Euler3DTransform())


def test_verdict_ok_after_the_true_transform_and_review_with_advice(pair):
    fixed, moving, fixed_mask, moving_mask, truth = pair
    good = quality_control(fixed, moving, truth, fixed_mask=fixed_mask, moving_mask=moving_mask)
    assert good["verdict"] == "ok" and good["reason"] == "all checks passed"
    assert good["dice_after"] > 0.9 > good["dice_before"]
    assert good["metric_after"]["mutual_information"] > good["metric_before"]["mutual_information"]
    assert good["surface_distance_after_mm"] < good["surface_distance_before_mm"]
    bad = quality_control(
        fixed, moving, truth.GetInverse(), fixed_mask=fixed_mask, moving_mask=moving_mask
    )
    assert bad["verdict"] == "review"
    assert any("Dice" in r for r in bad["reasons"]) and "rerun with a mask" in bad["advice"]
    masked = quality_control(
        fixed,
        moving,
        truth.GetInverse(),
        fixed_mask=fixed_mask,
        moving_mask=moving_mask,
        masks_used=True,
    )
    assert "rerun with a mask" not in masked["advice"]
    text = summary_text(bad)
    assert text.startswith("Verdict: review") and "Dice:" in text and "Advice:" in text
    # Landmarks: errors before/after and a threshold.
    points = np.array([fixed.TransformIndexToPhysicalPoint((20, 20, k)) for k in (5, 10, 15)])
    moved = np.array([truth.TransformPoint(p.tolist()) for p in points])
    with_landmarks = quality_control(
        fixed,
        moving,
        truth,
        fixed_landmarks=points,
        moving_landmarks=moved,
        thresholds={"tre_max_mm": 0.5},
    )
    assert with_landmarks["tre_after_mm"]["mean"] == 0.0 and with_landmarks["verdict"] == "ok"
    assert with_landmarks["tre_before_mm"]["mean"] > 3.0


def test_snapshots_are_pngs_before_and_after(tmp_path, pair):
    fixed, moving, fixed_mask, _moving_mask, truth = pair
    names = write_snapshots(fixed, moving, truth, tmp_path / "qc", fixed_mask=fixed_mask)
    assert sorted(names) == [
        "checkerboard_after",
        "checkerboard_before",
        "fusion_after",
        "fusion_before",
    ]
    fusion = sitk.ReadImage(str(tmp_path / names["fusion_after"]))
    assert fusion.GetNumberOfComponentsPerPixel() == 3 and fusion.GetDimension() == 2
    board = sitk.ReadImage(str(tmp_path / names["checkerboard_before"]))
    assert board.GetNumberOfComponentsPerPixel() == 1
    assert board.GetSize()[0] > 2 * board.GetSize()[1] / 2  # three panels side by side

    # After the true transform the fused slices agree better than before.
    def disagreement(name):
        rgb = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / names[name]))).astype(float)
        return np.abs(rgb[..., 0] - rgb[..., 1]).mean()

    assert not list(tmp_path.glob(".*part*"))
    assert disagreement("fusion_after") != disagreement("fusion_before")
