"""``primage preprocess``: in-process through primage.cli.main and as a subprocess."""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from _primage_images import image_from_array, step_phantom, write_zero_spacing_mha

from primage.cli import main
from primage.io import same_geometry, volumes_to_series, write_image

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def case(tmp_path):
    """A small noisy volume (positive, oblique grid) and a mask, written to files."""
    noisy, _ = step_phantom(shape=(20, 28, 28), sigma=8.0)
    image_path = write_image(noisy, tmp_path / "in.nii.gz")
    mask = np.zeros((20, 28, 28), np.uint8)
    mask[4:16, 5:23, 5:23] = 1
    mask_path = write_image(image_from_array(mask), tmp_path / "mask.nrrd")
    return tmp_path, image_path, mask_path


def _bad(capsys, argv):
    """Run a command that must fail on bad input: exit 2, one stderr line, no traceback."""
    code = main(argv)
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert code == 2, captured.err
    assert len(lines) == 1 and lines[0].startswith("primage: error: "), captured.err
    assert "Traceback" not in captured.err
    return lines[0]


def test_preset_run_writes_image_bias_field_and_sidecar(case, capsys):
    folder, image_path, mask_path = case
    out = folder / "out" / "t2w_pp.nii.gz"
    bias = folder / "out" / "bias.nrrd"
    code = main(
        ["preprocess", "-i", str(image_path), "-o", str(out), "--preset", "t2w"]
        + ["--mask", str(mask_path), "--bias-field", str(bias), "--quiet"]
    )
    assert code == 0, capsys.readouterr().err
    result, source = sitk.ReadImage(str(out)), sitk.ReadImage(str(image_path))
    assert result.GetPixelID() == sitk.sitkFloat32 and same_geometry(result, source)
    assert same_geometry(sitk.ReadImage(str(bias)), source)
    sidecar = json.loads((folder / "out" / "t2w_pp.json").read_text())
    assert sidecar["input"]["sha256"] == hashlib.sha256(image_path.read_bytes()).hexdigest()
    assert sidecar["mask"]["path"] == str(mask_path.resolve())
    assert sidecar["preset"] == "t2w"
    assert [s["step"] for s in sidecar["steps"]] == ["n4", "anisotropic_diffusion"]
    assert sidecar["steps"][0]["parameters"]["iterations"] == [50, 30]
    assert sidecar["steps"][0]["mask"] == "given"
    assert sidecar["versions"]["simpleitk"] == sitk.Version_VersionString()
    assert sidecar["nonfinite"] == {"policy": "refuse", "replaced_voxels": 0}
    assert sorted(p.name for p in (folder / "out").iterdir()) == [
        "bias.nrrd",
        "t2w_pp.json",
        "t2w_pp.nii.gz",
    ]


def test_step_flags_with_a_mask_normalise_inside_it(case, capsys):
    folder, image_path, mask_path = case
    out = folder / "z.mha"
    code = main(
        ["preprocess", "-i", str(image_path), "-o", str(out), "--denoise", "anisotropic"]
        + ["--normalise", "zscore", "--mask", str(mask_path), "--sidecar", str(folder / "rec.json")]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "step 2/2: zscore" in captured.err  # console progress on stderr
    values = sitk.GetArrayFromImage(sitk.ReadImage(str(out))).astype(float)
    inside = sitk.GetArrayFromImage(sitk.ReadImage(str(mask_path))) > 0
    assert values[inside].mean() == pytest.approx(0.0, abs=1e-4)
    assert values[inside].std() == pytest.approx(1.0, rel=1e-4)
    record = json.loads((folder / "rec.json").read_text())
    assert [s["step"] for s in record["steps"]] == ["anisotropic_diffusion", "zscore"]


def test_steps_file_and_resample_flag(case, capsys):
    folder, image_path, _ = case
    steps = folder / "steps.json"
    steps.write_text(
        json.dumps([{"step": "resample", "spacing_mm": 2.0, "interpolator": "bspline"}])
    )
    out = folder / "r.nii.gz"
    assert (
        main(["preprocess", "-i", str(image_path), "-o", str(out), "--steps", str(steps), "-q"])
        == 0
    )
    assert sitk.ReadImage(str(out)).GetSpacing() == (2.0, 2.0, 2.0)
    out2 = folder / "r2.nii.gz"
    argv = [
        "preprocess",
        "-i",
        str(image_path),
        "-o",
        str(out2),
        "--resample-spacing",
        "2",
        "2",
        "2",
        "-q",
    ]
    assert main(argv) == 0
    assert sitk.ReadImage(str(out2)).GetSize() == sitk.ReadImage(str(out)).GetSize()


def test_list_presets(capsys):
    assert main(["preprocess", "--list-presets"]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert names == ["ct", "dce", "dwi", "t1w", "t2w"]


def test_mask_on_another_grid_is_warned_and_used(case, capsys):
    folder, image_path, _ = case
    coarse = image_from_array(np.ones((10, 14, 14), np.uint8), spacing=(2.4, 2.0, 5.0))
    mask_path = write_image(coarse, folder / "coarse_mask.nii.gz")
    out = folder / "o.nii.gz"
    code = main(
        ["preprocess", "-i", str(image_path), "-o", str(out), "--normalise", "zscore"]
        + ["--mask", str(mask_path), "-q"]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "primage: warning:" in captured.err and "nearest-neighbour" in captured.err
    assert out.exists()


# --- bad input: exit 2, one line, nothing written --------------------------------------


def test_missing_input(tmp_path, capsys):
    line = _bad(
        capsys,
        [
            "preprocess",
            "-i",
            str(tmp_path / "none.nii.gz"),
            "-o",
            str(tmp_path / "o.nii.gz"),
            "--n4",
        ],
    )
    assert "does not exist" in line
    assert list(tmp_path.iterdir()) == []


def test_text_file_named_like_an_image(tmp_path, capsys):
    fake = tmp_path / "x.nii.gz"
    fake.write_text("hello\n")
    line = _bad(capsys, ["preprocess", "-i", str(fake), "-o", str(tmp_path / "o.nii.gz"), "--n4"])
    assert "not an image" in line


def test_4d_input_is_refused(tmp_path, capsys):
    noisy, _ = step_phantom(shape=(6, 8, 8))
    series = write_image(volumes_to_series([noisy, noisy]), tmp_path / "series.nii.gz")
    line = _bad(
        capsys,
        ["preprocess", "-i", str(series), "-o", str(tmp_path / "o.nii.gz"), "--preset", "dwi"],
    )
    assert "4D series of 2 volumes" in line


def test_empty_mask_is_refused(case, capsys):
    folder, image_path, _ = case
    empty = write_image(image_from_array(np.zeros((20, 28, 28), np.uint8)), folder / "empty.nii.gz")
    line = _bad(
        capsys,
        [
            "preprocess",
            "-i",
            str(image_path),
            "-o",
            str(folder / "o.nii.gz"),
            "--n4",
            "--mask",
            str(empty),
        ],
    )
    assert "mask is empty" in line
    assert not (folder / "o.nii.gz").exists()


def test_nonfinite_voxels_are_refused_unless_replaced(tmp_path, capsys):
    noisy, _ = step_phantom(shape=(10, 12, 12))
    array = sitk.GetArrayFromImage(noisy)
    array[0, 0, :2] = np.nan
    array[5, 5, 5] = np.inf
    bad = image_from_array(array)
    path = write_image(bad, tmp_path / "nan.nrrd")
    out = tmp_path / "o.nii.gz"
    line = _bad(capsys, ["preprocess", "-i", str(path), "-o", str(out), "--denoise", "anisotropic"])
    assert "3 NaN/infinite" in line and "--nonfinite zero" in line
    assert not out.exists()
    argv = [
        "preprocess",
        "-i",
        str(path),
        "-o",
        str(out),
        "--denoise",
        "anisotropic",
        "--nonfinite",
        "zero",
        "-q",
    ]
    assert main(argv) == 0
    assert np.isfinite(sitk.GetArrayFromImage(sitk.ReadImage(str(out)))).all()
    assert json.loads((tmp_path / "o.json").read_text())["nonfinite"]["replaced_voxels"] == 3


def test_zero_spacing_is_refused(tmp_path, capsys):
    path = write_zero_spacing_mha(tmp_path / "zero.mha")
    line = _bad(capsys, ["preprocess", "-i", str(path), "-o", str(tmp_path / "o.nii.gz"), "--n4"])
    assert "spacing" in line


def test_output_equal_to_input_is_refused_and_input_untouched(case, capsys):
    folder, image_path, _ = case
    before = image_path.read_bytes()
    line = _bad(
        capsys,
        ["preprocess", "-i", str(image_path), "-o", str(folder / "." / image_path.name), "--n4"],
    )
    assert "also an input" in line
    assert image_path.read_bytes() == before


def test_a_failing_step_leaves_no_output_and_no_temporary_file(tmp_path, capsys):
    constant = write_image(
        image_from_array(np.full((8, 8, 8), 5.0, np.float32)), tmp_path / "c.nii.gz"
    )
    steps = tmp_path / "steps.json"
    steps.write_text(json.dumps([{"step": "anisotropic_diffusion"}, {"step": "zscore"}]))
    before = sorted(p.name for p in tmp_path.iterdir())
    line = _bad(
        capsys,
        [
            "preprocess",
            "-i",
            str(constant),
            "-o",
            str(tmp_path / "o.nii.gz"),
            "--steps",
            str(steps),
            "--quiet",  # progress lines (not errors) would precede the error line
        ],
    )
    assert "constant" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == before


@pytest.mark.parametrize(
    "extra, fragment",
    [
        ([], "nothing to do"),
        (["--preset", "t2w", "--n4"], "only one of"),
        (["--preset", "t9w"], "unknown preset"),
        (["--n4", "--bias-field", "b.txt"], "no image file ending"),
        (["--denoise", "anisotropic", "--bias-field", "b.nii.gz"], "needs an n4 step"),
        (["--normalise", "zscore", "--sidecar", "SAME"], "must be different files"),
        (["--steps", "missing.json"], "does not exist"),
    ],
)
def test_usage_mistakes(case, capsys, monkeypatch, extra, fragment):
    folder, image_path, _ = case
    monkeypatch.chdir(folder)
    extra = [str(folder / "o.nii.gz") if e == "SAME" else e for e in extra]
    line = _bad(
        capsys, ["preprocess", "-i", str(image_path), "-o", str(folder / "o.nii.gz")] + extra
    )
    assert fragment in line


def test_unknown_step_in_a_steps_file(case, capsys):
    folder, image_path, _ = case
    steps = folder / "s.json"
    steps.write_text(json.dumps([{"step": "n4", "iteration": [3]}]))
    line = _bad(
        capsys,
        [
            "preprocess",
            "-i",
            str(image_path),
            "-o",
            str(folder / "o.nii.gz"),
            "--steps",
            str(steps),
        ],
    )
    assert "'iteration'" in line and "allowed:" in line


def test_output_without_an_image_ending(case, capsys):
    folder, image_path, _ = case
    line = _bad(
        capsys, ["preprocess", "-i", str(image_path), "-o", str(folder / "out.txt"), "--n4"]
    )
    assert "no image file ending" in line


# --- as a separate process -------------------------------------------------------------


def _module(*args):
    return subprocess.run(
        [sys.executable, "-m", "primage", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )


def test_python_dash_m_primage_runs_preprocess(case):
    folder, image_path, _ = case
    out = folder / "sub.nrrd"
    completed = _module(
        "preprocess", "-i", str(image_path), "-o", str(out), "--denoise", "curvature"
    )
    assert completed.returncode == 0, completed.stderr
    assert out.exists() and (folder / "sub.json").exists()


def test_python_dash_m_primage_bad_input_gives_one_line_and_exit_2(tmp_path):
    completed = _module(
        "preprocess", "-i", str(tmp_path / "no.nii.gz"), "-o", str(tmp_path / "o.nii.gz"), "--n4"
    )
    assert completed.returncode == 2
    assert completed.stderr.count("\n") == 1 and "Traceback" not in completed.stderr
    assert completed.stderr.startswith("primage: error: input file does not exist")


def test_an_itk_failure_is_one_line_with_exit_1(case, capsys, monkeypatch):
    import primage.preprocessing

    def broken(*args, **kwargs):
        raise RuntimeError("Exception thrown in SimpleITK\nITK ERROR: something went wrong")

    monkeypatch.setattr(primage.preprocessing, "run_steps", broken)
    folder, image_path, _ = case
    code = main(["preprocess", "-i", str(image_path), "-o", str(folder / "o.nii.gz"), "--n4", "-q"])
    err = capsys.readouterr().err
    assert code == 1
    assert err == "primage: error: preprocessing failed: ITK ERROR: something went wrong\n"
    assert not (folder / "o.nii.gz").exists()


def test_nonfinite_reference_is_refused(case, capsys):
    folder, image_path, _ = case
    array = np.ones((6, 6, 6), np.float32)
    array[0, 0, 0] = np.nan
    # NRRD keeps NaN; ITK's NIfTI reader turns NaN voxels into 0 when reading.
    reference = write_image(image_from_array(array), folder / "ref.nrrd")
    steps = folder / "hm.json"
    steps.write_text(json.dumps([{"step": "histogram_match"}]))
    line = _bad(
        capsys,
        ["preprocess", "-i", str(image_path), "-o", str(folder / "o.nii.gz")]
        + ["--steps", str(steps), "--reference", str(reference), "-q"],
    )
    assert "reference image has 1 NaN/infinite" in line
