"""Motion correction of dynamic series against known rigid motions."""

import numpy as np
import pytest
import SimpleITK as sitk

from primage.errors import PrimageInputError
from primage.registration.motion import (
    correct_motion,
    framewise_displacement,
    motion_parameters,
    motion_settings,
    parse_reference,
    table_csv,
)
from primage.registration.truth import grid_image, known_affine, render_phantom


@pytest.fixture(scope="module")
def series():
    grid = grid_image((40, 36, 16), (2.0, 2.0, 4.0), (10.0, -5.0, 20.0), 10.0)
    still, _ = render_phantom(grid, (0.0, 300.0, 650.0, 150.0), seed=21)
    centre = np.array(
        still.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in still.GetSize()])
    )
    motions = {
        1: known_affine(centre, (0.0, 0.0, 3.0), (2.0, -1.0, 0.5)),
        3: known_affine(centre, (2.0, -2.0, 0.0), (-1.5, 2.0, -1.0)),
    }
    frames = []
    for index in range(4):
        frame = still * (1.0 + 0.2 * index)  # contrast changes from frame to frame
        if index in motions:
            frame = sitk.Resample(frame, frame, motions[index].GetInverse(), sitk.sitkLinear, 0.0)
        frames.append(sitk.Cast(frame, sitk.sitkFloat32))
    return frames, motions, centre


def test_known_motions_are_recovered(series):
    frames, motions, centre = series
    result = correct_motion(frames, values=[0, 6, 12, 18])
    assert result.reference == {"kind": "index", "index": 0}
    assert len(result.volumes) == 4 and result.volumes[0].GetSize() == frames[0].GetSize()
    assert np.array_equal(
        sitk.GetArrayFromImage(result.volumes[0]), sitk.GetArrayFromImage(frames[0])
    )  # the reference frame is copied, not interpolated
    for index, motion in motions.items():
        row = result.table[index]
        expected = motion_parameters(motion, centre)
        for key in ("tx_mm", "ty_mm", "tz_mm"):
            assert row[key] == pytest.approx(expected[key], abs=0.4), (index, key)
        for key in ("rx_deg", "ry_deg", "rz_deg"):
            assert row[key] == pytest.approx(expected[key], abs=0.5), (index, key)
        assert row["mutual_information_after"] > row["mutual_information_before"]
    assert result.table[2]["framewise_displacement_mm"] > 3.0  # back from frame 1's motion
    assert result.table[0]["value"] == 0.0 and result.table[3]["value"] == 18.0
    text = table_csv(result.table)
    assert text.splitlines()[0].startswith("frame,value,tx_mm") and len(text.splitlines()) == 5


def test_other_references_and_affine(series):
    frames, motions, centre = series
    by_index = correct_motion(frames, reference="1", transform="rigid")
    assert by_index.reference == {"kind": "index", "index": 1}
    assert [by_index.table[1][k] for k in ("tx_mm", "ty_mm", "tz_mm")] == [0.0, 0.0, 0.0]
    assert abs(by_index.table[0]["tx_mm"]) > 1.0  # frame 0 seen from the moved frame 1
    baseline = correct_motion(
        frames[:3], reference="mean-baseline", baseline_frames=1, transform="affine"
    )
    assert baseline.reference == {"kind": "mean-baseline", "frames": [0]}
    assert baseline.transforms[1].GetName() == "AffineTransform"
    expected = motion_parameters(motions[1], centre)
    assert baseline.table[1]["tx_mm"] == pytest.approx(expected["tx_mm"], abs=0.5)


def test_framewise_displacement_definition():
    rows = [
        {"tx_mm": 0, "ty_mm": 0, "tz_mm": 0, "rx_deg": 0, "ry_deg": 0, "rz_deg": 0},
        {"tx_mm": 1, "ty_mm": -2, "tz_mm": 0, "rx_deg": 0, "ry_deg": 0, "rz_deg": 180 / np.pi / 50},
    ]
    assert framewise_displacement(rows) == pytest.approx([0.0, 4.0])  # 1 + 2 + 50 mm x 0.02 rad


def test_bad_motion_input(series):
    frames, _motions, _centre = series
    with pytest.raises(PrimageInputError, match="at least 2 frames"):
        correct_motion(frames[:1])
    with pytest.raises(PrimageInputError, match="does not exist"):
        parse_reference(7, 4, 3)
    with pytest.raises(PrimageInputError, match="first, mean-baseline"):
        parse_reference("last", 4, 3)
    with pytest.raises(PrimageInputError, match="baseline_frames"):
        parse_reference("mean-baseline", 4, 9)
    with pytest.raises(PrimageInputError, match="another voxel grid"):
        correct_motion([frames[0], sitk.Shrink(frames[1], [2, 2, 1])])
    with pytest.raises(PrimageInputError, match="rigid or affine|must be one of"):
        motion_settings("bspline")
    with pytest.raises(PrimageInputError, match="index values"):
        correct_motion(frames, values=[0, 1])
