"""``primage register`` and ``primage register motion`` end to end, and every bad input.

Bad input: exit code 2, exactly one line on stderr, no traceback and no output file.
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from primage.cli import main
from primage.registration.truth import (
    grid_image,
    known_affine,
    render_phantom,
    synthetic_registration_pair,
    transform_error,
)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("register-inputs")
    fixed, moving, fixed_mask, moving_mask, truth = synthetic_registration_pair()
    paths = {
        "fixed": folder / "fixed.nii.gz",
        "moving": folder / "moving.nrrd",
        "fixed_mask": folder / "fixed_tumour.nii.gz",
        "moving_mask": folder / "moving_tumour.nii.gz",
    }
    sitk.WriteImage(sitk.Cast(fixed, sitk.sitkInt16), str(paths["fixed"]))
    sitk.WriteImage(sitk.Cast(moving, sitk.sitkInt16), str(paths["moving"]))
    sitk.WriteImage(fixed_mask, str(paths["fixed_mask"]))
    sitk.WriteImage(moving_mask, str(paths["moving_mask"]))
    paths["truth"] = truth
    paths["fixed_image"] = sitk.ReadImage(str(paths["fixed"]))
    paths["fixed_mask_image"] = fixed_mask
    return paths


@pytest.fixture(scope="module")
def registered(files, tmp_path_factory):
    out = tmp_path_factory.mktemp("register-outputs")
    args = [
        "register",
        "--fixed", str(files["fixed"]),
        "--moving", str(files["moving"]),
        "--fixed-mask", str(files["fixed_mask"]),
        "--moving-mask", str(files["moving_mask"]),
        "--stages", "rigid",
        "--output-transform", str(out / "moving_to_fixed.h5"),
        "--output-volume", str(out / "moving_registered.nii.gz"),
        "--qc", str(out / "qc.json"),
        "--quiet",
    ]  # fmt: skip
    assert main(args) == 0
    return out


def test_register_writes_transform_volume_qc_and_sidecar(files, registered):
    transform = sitk.ReadTransform(str(registered / "moving_to_fixed.h5"))
    error = transform_error(
        transform, files["truth"], files["fixed_image"], files["fixed_mask_image"]
    )
    assert error["mean_mm"] < 0.8, error
    volume = sitk.ReadImage(str(registered / "moving_registered.nii.gz"))
    assert volume.GetSize() == files["fixed_image"].GetSize()
    qc = json.loads((registered / "qc.json").read_text())
    for key in ("metric_before", "metric_after", "dice_before", "dice_after", "verdict", "reason"):
        assert key in qc
    assert qc["verdict"] == "ok" and qc["dice_after"] > 0.85 > qc["dice_before"]
    assert sorted(qc["snapshots"]) == [
        "checkerboard_after",
        "checkerboard_before",
        "fusion_after",
        "fusion_before",
    ]
    for name in qc["snapshots"].values():
        assert (registered / name).is_file() and name.endswith(".png")
    sidecar = json.loads((registered / "moving_to_fixed.json").read_text())
    assert sidecar["command"] == "register" and len(sidecar["fixed"]["sha256"]) == 64
    assert [s["stage"] for s in sidecar["stages"]] == ["rigid"]
    assert sidecar["convention"].startswith("fixed -> moving")


def test_tfm_output_initial_transform_and_label_resampling(files, tmp_path, registered):
    out = tmp_path / "again.tfm"
    args = [
        "register", "--fixed", str(files["fixed"]), "--moving", str(files["moving_mask"]),
        "--stages", "rigid", "--initial-transform", str(registered / "moving_to_fixed.h5"),
        "--output-transform", str(out), "--output-volume", str(tmp_path / "labels.nii.gz"), "-q",
    ]  # fmt: skip
    assert main(args) == 0
    labels = sitk.ReadImage(str(tmp_path / "labels.nii.gz"))
    assert labels.GetPixelID() == sitk.sitkUInt8  # a label map: nearest neighbour, type kept
    record = json.loads((tmp_path / "again.json").read_text())
    assert record["interpolation"] == "nearest"
    assert record["initialisation"]["method"] == "initial transform"


def test_landmarks_in_qc(files, tmp_path):
    fixed = files["fixed_image"]
    points = np.array([fixed.TransformIndexToPhysicalPoint((22, 20, k)) for k in (6, 10, 14)])
    moved = np.array([files["truth"].TransformPoint(p.tolist()) for p in points])
    for name, values in (("f.csv", points), ("m.csv", moved)):
        rows = "\n".join(",".join(f"{v:.6f}" for v in p) for p in values)
        (tmp_path / name).write_text("x,y,z\n" + rows + "\n")
    args = [
        "register", "--fixed", str(files["fixed"]), "--moving", str(files["moving"]),
        "--stages", "rigid", "--output-transform", str(tmp_path / "t.h5"),
        "--qc", str(tmp_path / "qc.json"), "--no-snapshots", "-q",
        "--fixed-landmarks", str(tmp_path / "f.csv"), "--moving-landmarks", str(tmp_path / "m.csv"),
    ]  # fmt: skip
    assert main(args) == 0
    qc = json.loads((tmp_path / "qc.json").read_text())
    assert qc["tre_before_mm"]["mean"] > 3.0 and qc["tre_after_mm"]["mean"] < 0.8
    assert qc["snapshots"] == {} and not list(tmp_path.glob("*.png"))


def test_a_failed_optimisation_writes_the_start_and_says_so(files, tmp_path):
    # A deliberately bad user preset: 40 mm steps, two iterations, few samples.
    preset = {
        "name": "bad",
        "description": "deliberately bad",
        "reference": "none",
        "stages": [
            {
                "stage": "rigid",
                "shrink_factors": [1],
                "smoothing_sigmas_voxels": [0.0],
                "samples": [500],
                "iterations": [2],
                "rounds": [1],
                "learning_rate": 40.0,
                "relaxation": 0.99,
            }
        ],
    }
    (tmp_path / "bad.json").write_text(json.dumps(preset))
    args = [
        "register", "--fixed", str(files["fixed"]), "--moving", str(files["moving"]),
        "--preset", str(tmp_path / "bad.json"), "--output-transform", str(tmp_path / "t.tfm"),
        "--qc", str(tmp_path / "qc.json"), "--no-snapshots", "-q",
    ]  # fmt: skip
    assert main(args) == 0
    transform = sitk.ReadTransform(str(tmp_path / "t.tfm"))
    # The start (the headers' alignment: identity), not the bad optimisation's result.
    assert transform_error(transform, sitk.Transform(), files["fixed_image"])["max_mm"] < 1e-9
    qc = json.loads((tmp_path / "qc.json").read_text())
    assert qc["start_returned"] is True and qc["optimisation"]["kept"] == "start"
    assert "optimisation not kept" in qc["reason"] and qc["advice"]
    sidecar = json.loads((tmp_path / "t.json").read_text())
    assert sidecar["acceptance"]["kept"] == "start"
    assert sidecar["initialisation"]["candidates"][0]["method"] == "headers"


def test_moving_equal_to_fixed_gives_identity(files, tmp_path):
    args = [
        "register", "--fixed", str(files["fixed"]), "--moving", str(files["fixed"]),
        "--output-transform", str(tmp_path / "id.tfm"), "-q",
    ]  # fmt: skip
    assert main(args) == 0
    transform = sitk.ReadTransform(str(tmp_path / "id.tfm"))
    assert transform_error(transform, sitk.Transform(), files["fixed_image"])["max_mm"] == 0.0
    assert json.loads((tmp_path / "id.json").read_text())["identical_inputs"] is True


def test_mask_on_another_grid_is_resampled_with_a_warning(files, tmp_path, capsys):
    coarse = sitk.Shrink(sitk.ReadImage(str(files["fixed_mask"])), [2, 2, 1])
    sitk.WriteImage(coarse, str(tmp_path / "coarse.nii.gz"))
    args = [
        "register", "--fixed", str(files["fixed"]), "--moving", str(files["moving"]),
        "--fixed-mask", str(tmp_path / "coarse.nii.gz"), "--stages", "rigid",
        "--output-transform", str(tmp_path / "t.h5"), "-q",
    ]  # fmt: skip
    assert main(args) == 0
    assert "primage: warning: fixed mask is on another voxel grid" in capsys.readouterr().err


def test_list_presets_and_help(capsys):
    assert main(["register", "--list-presets"]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in ("mr-mr", "mr-ct", "pet-ct", "dwi-to-t2", "dce-to-t2"))
    for argv in (["register", "--help"], ["register", "motion", "--help"]):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 0
    assert "--reference" in capsys.readouterr().out


# --- bad input: exit 2, one line, no traceback, no outputs ------------------------------------


def _bad_inputs(files, folder: Path) -> dict:
    fixed = sitk.ReadImage(str(files["fixed"]))
    far = sitk.Image(sitk.ReadImage(str(files["moving"])))
    far.SetOrigin((np.array(far.GetOrigin()) + [600.0, 0.0, 0.0]).tolist())
    sitk.WriteImage(far, str(folder / "far.nii.gz"))
    sitk.WriteImage(sitk.JoinSeries([fixed, fixed]), str(folder / "series.nii.gz"))
    sitk.WriteImage(fixed[:, :, 8], str(folder / "slice.nii.gz"))
    sitk.WriteImage(sitk.ReadImage(str(files["fixed_mask"])) * 0, str(folder / "empty.nii.gz"))
    elsewhere = sitk.ReadImage(str(files["fixed_mask"]))
    elsewhere.SetOrigin((np.array(elsewhere.GetOrigin()) + 900.0).tolist())
    sitk.WriteImage(elsewhere, str(folder / "elsewhere.nii.gz"))
    nan = sitk.Cast(fixed, sitk.sitkFloat32)
    nan.SetPixel(5, 5, 5, float("nan"))
    # ITK reads NaN in NIfTI files as 0: NRRD keeps them.
    sitk.WriteImage(nan, str(folder / "nan.nrrd"))
    (folder / "broken.h5").write_text("this is not a transform")
    base = ["register", "--fixed", str(files["fixed"]), "--moving", str(files["moving"])]
    out = ["--output-transform", str(folder / "out.h5"), "--output-volume", str(folder / "out.nii.gz"),
           "--qc", str(folder / "qc.json")]  # fmt: skip
    moving_far = [
        "register",
        "--fixed",
        str(files["fixed"]),
        "--moving",
        str(folder / "far.nii.gz"),
    ]
    return {
        "no overlap": (moving_far + ["--initialisation", "none"] + out, "do not overlap"),
        "4D fixed": (
            ["register", "--fixed", str(folder / "series.nii.gz"), "--moving", str(files["moving"])]
            + out,
            "4D series",
        ),
        "2D against 3D": (
            ["register", "--fixed", str(files["fixed"]), "--moving", str(folder / "slice.nii.gz")]
            + out,
            "2D",
        ),
        "empty mask": (base + ["--fixed-mask", str(folder / "empty.nii.gz")] + out, "empty"),
        "mask elsewhere": (
            base + ["--moving-mask", str(folder / "elsewhere.nii.gz")] + out,
            "does not overlap",
        ),
        "NaN voxels": (
            ["register", "--fixed", str(folder / "nan.nrrd"), "--moving", str(files["moving"])]
            + out,
            "NaN",
        ),
        "unreadable initial transform": (
            base + ["--initial-transform", str(folder / "broken.h5")] + out,
            "not an ITK transform",
        ),
        "missing initial transform": (
            base + ["--initial-transform", str(folder / "none.h5")] + out,
            "does not exist",
        ),
        "output is an input": (
            base
            + [
                "--output-transform",
                str(folder / "out.h5"),
                "--output-volume",
                str(files["moving"]),
            ],  # fmt: skip
            "also an input",
        ),
        "bad transform ending": (base + ["--output-transform", str(folder / "t.nii")], "must end"),
        "unknown stage": (base + ["--stages", "rigid,warp"] + out, "must be one of"),
        "landmarks without qc": (
            base
            + [
                "--output-transform",
                str(folder / "out.h5"),
                "--fixed-landmarks",
                "a.csv",
                "--moving-landmarks",
                "b.csv",
            ],  # fmt: skip
            "give --qc",
        ),
        "motion on a 3D image": (
            [
                "register",
                "motion",
                "--series",
                str(files["fixed"]),
                "--output",
                str(folder / "out.nii.gz"),
                "--motion-table",
                str(folder / "m.csv"),
            ],  # fmt: skip
            "4D series",
        ),
        "motion bad reference": (
            [
                "register",
                "motion",
                "--series",
                str(folder / "series.nii.gz"),
                "--reference",
                "9",
                "--output",
                str(folder / "out.nii.gz"),
                "--motion-table",
                str(folder / "m.csv"),
            ],  # fmt: skip
            "does not exist",
        ),
    }


BAD_CASES = [
    "no overlap",
    "4D fixed",
    "2D against 3D",
    "empty mask",
    "mask elsewhere",
    "NaN voxels",
    "unreadable initial transform",
    "missing initial transform",
    "output is an input",
    "bad transform ending",
    "unknown stage",
    "landmarks without qc",
    "motion on a 3D image",
    "motion bad reference",
]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_exits_2_with_one_line_and_no_outputs(files, tmp_path, capsys, case):
    argv, message = _bad_inputs(files, tmp_path)[case]
    before = set(tmp_path.iterdir())
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("primage: error:")]
    assert len(errors) == 1 and message in errors[0], err
    assert "Traceback" not in "\n".join(err)
    assert set(tmp_path.iterdir()) == before, "a bad input left files behind"


def test_nan_voxels_can_be_replaced(files, tmp_path):
    nan = sitk.Cast(sitk.ReadImage(str(files["moving"])), sitk.sitkFloat32)
    nan.SetPixel(2, 2, 2, float("nan"))
    sitk.WriteImage(nan, str(tmp_path / "nan.nrrd"))
    args = [
        "register", "--fixed", str(files["fixed"]), "--moving", str(tmp_path / "nan.nrrd"),
        "--stages", "rigid", "--nonfinite", "zero", "--output-transform", str(tmp_path / "t.h5"), "-q",
    ]  # fmt: skip
    assert main(args) == 0


def test_bad_input_through_a_real_process_has_no_traceback(files, tmp_path):
    completed = subprocess.run(
        [sys.executable, "-m", "primage", "register", "--fixed", str(files["fixed"]),
         "--moving", str(tmp_path / "missing.nii.gz"), "--output-transform", str(tmp_path / "t.h5")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert completed.returncode == 2
    assert completed.stderr.strip().splitlines() == [
        f"primage: error: moving image file does not exist: {tmp_path / 'missing.nii.gz'}"
    ]


# --- motion -------------------------------------------------------------------------------------


def test_motion_command(tmp_path):
    grid = grid_image((36, 32, 14), (2.0, 2.0, 4.0), (10.0, -5.0, 20.0), 10.0)
    still, _ = render_phantom(grid, (0.0, 300.0, 650.0, 150.0), seed=5)
    centre = still.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in still.GetSize()])
    moved = sitk.Resample(
        still * 1.3, still, known_affine(centre, (0, 0, 2), (2.0, -1.5, 1.0)).GetInverse()
    )
    series = sitk.JoinSeries([still, moved, still * 1.6], 0.0, 6.0)
    sitk.WriteImage(series, str(tmp_path / "dce.nii.gz"))
    (tmp_path / "dce.times").write_text("0 6 12\n")
    args = [
        "register", "motion", "--series", str(tmp_path / "dce.nii.gz"),
        "--values", str(tmp_path / "dce.times"), "--reference", "mean-baseline",
        "--baseline-frames", "1", "--output", str(tmp_path / "dce_mc.nii.gz"),
        "--motion-table", str(tmp_path / "motion.csv"), "-q",
    ]  # fmt: skip
    assert main(args) == 0
    corrected = sitk.ReadImage(str(tmp_path / "dce_mc.nii.gz"))
    assert corrected.GetSize() == series.GetSize() and corrected.GetSpacing()[3] == 6.0
    lines = (tmp_path / "motion.csv").read_text().splitlines()
    assert lines[0].startswith("frame,value,tx_mm") and len(lines) == 4
    row = dict(zip(lines[0].split(","), lines[2].split(","), strict=True))
    assert float(row["value"]) == 6.0 and abs(float(row["tx_mm"]) - 2.0) < 0.5
    record = json.loads((tmp_path / "dce_mc.json").read_text())
    assert record["reference"] == {"kind": "mean-baseline", "frames": [0]}
    assert record["max_framewise_displacement_mm"] > 3.0
