"""``primage kinetics``: every action end to end, and every bad input of the issue.

Bad input: exit code 2, exactly one line on stderr ("primage: error: ..."), no traceback,
and nothing written. Documented, warned behaviours (non-positive or NaN voxels left out,
a mask on another grid resampled) exit 0 with one warning line.
"""

import json
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from primage.cli import main
from primage.kinetics.aif import parker_blood, population_aif
from primage.kinetics.tofts import ExponentialConvolution

B_VALUES = [0, 50, 100, 200, 400, 600, 800, 1000]
TIMES = np.arange(0.0, 181.0, 4.0)
SHAPE = (3, 6, 8)  # z, y, x


def _write4d(frames: np.ndarray, path, spacing=(2.0, 2.0, 5.0)):
    volumes = []
    for frame in frames:
        image = sitk.GetImageFromArray(frame.astype(np.float32))
        image.SetSpacing(spacing)
        image.SetOrigin((10.0, -4.0, 2.0))
        volumes.append(image)
    sitk.WriteImage(sitk.JoinSeries(volumes), str(path))
    return str(path)


def _write3d(array: np.ndarray, path, spacing=(2.0, 2.0, 5.0), origin=(10.0, -4.0, 2.0)):
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    sitk.WriteImage(image, str(path))
    return str(path)


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    folder = tmp_path_factory.mktemp("kinetics_case")
    rng = np.random.default_rng(0)
    adc = np.full(SHAPE, 0.8e-3)
    adc[:, :, 4:] = 1.6e-3
    b = np.array(B_VALUES, float)[:, None, None, None]
    dwi = np.hypot(
        900 * np.exp(-b * adc) + rng.normal(0, 5, (len(B_VALUES), *SHAPE)),
        rng.normal(0, 5, (len(B_VALUES), *SHAPE)),
    )
    ktrans = np.where(np.arange(SHAPE[2]) < 4, 0.05, 0.4) * np.ones(SHAPE)
    convolution = ExponentialConvolution(TIMES, population_aif(20.0))
    conc = (ktrans.ravel() * convolution.evaluate(ktrans.ravel() / 0.3)).reshape(-1, *SHAPE)
    signal = 500.0 * (1 + 1.5 * conc) + rng.normal(0, 1.0, conc.shape)
    mask = np.zeros(SHAPE, np.uint8)
    mask[:, 1:5, 1:7] = 1
    paths = {
        "dwi": _write4d(dwi, folder / "dwi.nii.gz"),
        "dce": _write4d(signal, folder / "dce.nii.gz"),
        "conc": _write4d(conc, folder / "conc.nii.gz"),
        "mask": _write3d(mask, folder / "mask.nii.gz"),
        "bval": str(folder / "dwi.bval"),
        "times": str(folder / "dce.times"),
        "folder": folder,
    }
    (folder / "dwi.bval").write_text(" ".join(map(str, B_VALUES)) + "\n")
    (folder / "dce.times").write_text(" ".join(f"{t:g}" for t in TIMES) + "\n")
    return paths


def run(argv, capsys):
    code = main(argv)
    captured = capsys.readouterr()
    return code, [line for line in captured.err.splitlines() if line.strip()]


def test_adc_command_writes_maps_and_summary(case, tmp_path, capsys):
    out = tmp_path / "adc"
    code, err = run(
        [
            "kinetics",
            "adc",
            "--dwi",
            case["dwi"],
            "--bvalues",
            case["bval"],
            "--mask",
            case["mask"],
            "-o",
            str(out),
            "-q",
        ],
        capsys,
    )
    assert code == 0, err
    assert err == []
    for name in ("adc.nii.gz", "adc_se.nii.gz", "s0.nii.gz", "adc_r2.nii.gz", "summary.json"):
        assert (out / name).is_file()
    adc = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "adc.nii.gz")))
    assert np.median(adc[:, 1:5, 1:4]) == pytest.approx(0.8e-3, rel=0.02)
    assert np.median(adc[:, 1:5, 4:7]) == pytest.approx(1.6e-3, rel=0.02)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["unit"] == "mm^2/s" and summary["roi"]["adc"]["voxels"] == 3 * 4 * 6
    code, _ = run(
        [
            "kinetics",
            "adc",
            "--dwi",
            case["dwi"],
            "--bvalues",
            "0,50,100,200,400,600,800,1000",
            "--bmin",
            "200",
            "-o",
            str(tmp_path / "adc2"),
            "-q",
        ],
        capsys,
    )
    assert code == 0
    assert (
        json.loads((tmp_path / "adc2" / "summary.json").read_text())["b_values_used_s_per_mm2"][0]
        == 200
    )


def test_rician_adc_command_is_not_biased_low_at_snr_5(tmp_path, capsys):
    """``--method rician --noise-sigma``: at SNR 5 (b = 0) the default NLLS map is biased
    low by the Rician floor; the Rician-expectation fit recovers the true ADC."""
    rng = np.random.default_rng(5)
    shape, sigma, adc_true = (4, 10, 10), 20.0, 1.2e-3
    b = np.array(B_VALUES, float)[:, None, None, None]
    clean = 100.0 * np.exp(-b * adc_true) * np.ones((len(B_VALUES), *shape))
    dwi = np.hypot(clean + rng.normal(0, sigma, clean.shape), rng.normal(0, sigma, clean.shape))
    path = _write4d(dwi, tmp_path / "snr5.nii.gz")
    medians = {}
    for method in ("nlls", "rician"):
        extra = ["--noise-sigma", str(sigma)] if method == "rician" else []
        argv = ["kinetics", "adc", "--dwi", path, "--bvalues", ",".join(map(str, B_VALUES))]
        out = tmp_path / method
        code, err = run([*argv, "--method", method, *extra, "-o", str(out), "-q"], capsys)
        assert code == 0, err
        medians[method] = np.median(sitk.GetArrayFromImage(sitk.ReadImage(str(out / "adc.nii.gz"))))
    assert medians["nlls"] < 0.9 * adc_true  # the floor flattens the decay
    assert medians["rician"] == pytest.approx(adc_true, rel=0.05)
    summary = json.loads((tmp_path / "rician" / "summary.json").read_text())
    assert summary["method"] == "rician" and summary["noise_sigma"] == sigma
    code, err = run([*argv, "--method", "rician", "-o", str(tmp_path / "no_sigma")], capsys)
    assert code == 2 and len(err) == 1 and "noise SD" in err[0], err
    assert not (tmp_path / "no_sigma").exists() or not any((tmp_path / "no_sigma").iterdir())


def test_ivim_dce_tofts_fcf_commands(case, tmp_path, capsys):
    code, err = run(
        [
            "kinetics",
            "ivim",
            "--dwi",
            case["dwi"],
            "--bvalues",
            case["bval"],
            "-o",
            str(tmp_path / "ivim"),
            "-q",
        ],
        capsys,
    )
    assert code == 0, err
    assert {p.name for p in (tmp_path / "ivim").iterdir()} >= {
        "ivim_d.nii.gz",
        "ivim_f.nii.gz",
        "ivim_dstar.nii.gz",
    }

    code, err = run(
        [
            "kinetics",
            "dce",
            "--dce",
            case["dce"],
            "--times",
            case["times"],
            "--mask",
            case["mask"],
            "-o",
            str(tmp_path / "dce"),
            "-q",
        ],
        capsys,
    )
    assert code == 0, err
    names = {"iauc60", "ttp", "peak_enhancement", "bolus_arrival", "wash_in", "wash_out"}
    assert {f"{n}.nii.gz" for n in names} <= {p.name for p in (tmp_path / "dce").iterdir()}
    summary = json.loads((tmp_path / "dce" / "summary.json").read_text())
    assert summary["units"]["wash_in"].startswith("1/min")

    code, err = run(
        [
            "kinetics",
            "tofts",
            "--concentration",
            case["conc"],
            "--times",
            case["times"],
            "--population-aif",
            "parker",
            "--aif-delay",
            "20",
            "--extended",
            "-o",
            str(tmp_path / "tofts"),
            "-q",
        ],
        capsys,
    )
    assert code == 0, err
    ktrans = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "tofts" / "ktrans.nii.gz")))
    np.testing.assert_allclose(ktrans[:, :, :4], 0.05, rtol=0.01)
    np.testing.assert_allclose(ktrans[:, :, 4:], 0.4, rtol=0.01)
    assert (tmp_path / "tofts" / "vp.nii.gz").is_file()

    aif = tmp_path / "aif.csv"
    fine = np.arange(0.0, 200.0, 1.0)
    aif.write_text(
        "time_s,plasma_mM\n"
        + "".join(f"{t},{c / 0.58}\n" for t, c in zip(fine, parker_blood(fine, 20.0), strict=True))
    )
    code, err = run(
        [
            "kinetics",
            "tofts",
            "--concentration",
            case["conc"],
            "--times",
            case["times"],
            "--aif",
            str(aif),
            "--mask",
            case["mask"],
            "-o",
            str(tmp_path / "tofts2"),
            "-q",
        ],
        capsys,
    )
    assert code == 0, err
    ve = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "tofts2" / "ve.nii.gz")))
    assert np.abs(ve[:, 1:5, 1:7] - 0.3).max() < 0.01

    for kind in (
        ["--dwi", case["dwi"], "--bvalues", case["bval"]],
        ["--dce", case["dce"], "--times", case["times"]],
    ):
        out = tmp_path / f"fcf{kind[0]}"
        code, err = run(
            ["kinetics", "fcf", *kind, "--mask", case["mask"], "-o", str(out), "-q"], capsys
        )
        assert code == 0, err
        record = json.loads((out / "fcf.json").read_text())
        assert [h["label"] for h in record["habitats"]] == [1, 2]
        assert set(record["habitats"][0]) >= {
            "label",
            "voxels_kept",
            "voxels_total",
            "value",
            "se",
            "voxel_mean",
            "voxel_median",
            "parameter",
            "unit",
        }
        habitats = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "habitats.nii.gz")))
        assert set(np.unique(habitats)) <= {0, 1, 2}
        assert habitats[:, 0, :].max() == 0  # outside the mask


def test_concentration_command(case, tmp_path, capsys):
    output = tmp_path / "conc.nii.gz"
    code, err = run(
        [
            "kinetics",
            "concentration",
            "--dce",
            case["dce"],
            "--times",
            case["times"],
            "--t10",
            "1.3",
            "--flip-angle",
            "15",
            "--tr",
            "0.004",
            "--output",
            str(output),
            "-q",
        ],
        capsys,
    )
    assert code == 0, err
    image = sitk.ReadImage(str(output))
    assert image.GetDimension() == 4 and image.GetSize()[3] == TIMES.size


def test_console_script_exit_code_and_single_line(case, tmp_path):
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "primage",
            "kinetics",
            "adc",
            "--dwi",
            case["dwi"],
            "--bvalues",
            "0,1000",
            "-o",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 2
    assert completed.stderr.strip().count("\n") == 0 and "Traceback" not in completed.stderr
    assert not (tmp_path / "out").exists()


# --- bad input: each a test ------------------------------------------------------------------


def _bad(case, tmp_path, name):
    """argv for each bad input of the issue (and the expected message fragment)."""
    folder = tmp_path
    dwi, dce, conc, mask, bval, times = (
        case[k] for k in ("dwi", "dce", "conc", "mask", "bval", "times")
    )
    out = ["-o", str(folder / "out")]
    if name == "bvalue_count":
        return [
            "kinetics",
            "adc",
            "--dwi",
            dwi,
            "--bvalues",
            "0,500,1000",
            *out,
        ], "3 b-values given but the DWI series has 8"
    if name == "time_count":
        return ["kinetics", "dce", "--dce", dce, "--times", "0,4,8,12", *out], "4 frame times given"
    if name == "one_distinct_bvalue":
        return [
            "kinetics",
            "adc",
            "--dwi",
            dwi,
            "--bvalues",
            ",".join(["500"] * 8),
            *out,
        ], "at least two distinct b-values"
    if name == "unsorted_times":
        shuffled = TIMES.copy()
        shuffled[[3, 4]] = shuffled[[4, 3]]
        return [
            "kinetics",
            "dce",
            "--dce",
            dce,
            "--times",
            ",".join(map(str, shuffled)),
            *out,
        ], "unsorted times"
    if name == "duplicate_times":
        duplicated = TIMES.copy()
        duplicated[5] = duplicated[4]
        return [
            "kinetics",
            "tofts",
            "--concentration",
            conc,
            "--times",
            ",".join(map(str, duplicated)),
            "--population-aif",
            "parker",
            *out,
        ], "duplicate times"
    if name == "all_nonpositive_signal":
        path = _write4d(np.zeros((8, *SHAPE)) - 1.0, folder / "negative.nii.gz")
        return ["kinetics", "adc", "--dwi", path, "--bvalues", bval, *out], "zero or negative"
    if name == "image_3d":
        path = _write3d(np.ones(SHAPE, np.float32), folder / "three_d.nii.gz")
        return ["kinetics", "adc", "--dwi", path, "--bvalues", bval, *out], "single 3D volume"
    if name == "empty_mask":
        path = _write3d(np.zeros(SHAPE, np.uint8), folder / "empty.nii.gz")
        return ["kinetics", "fcf", "--dwi", dwi, "--bvalues", bval, "--mask", path, *out], "empty"
    if name == "mask_not_overlapping":
        path = _write3d(
            np.ones(SHAPE, np.uint8), folder / "far.nii.gz", origin=(500.0, 500.0, 500.0)
        )
        return [
            "kinetics",
            "adc",
            "--dwi",
            dwi,
            "--bvalues",
            bval,
            "--mask",
            path,
            *out,
        ], "does not overlap"
    if name == "aif_shorter":
        aif = folder / "short.csv"
        aif.write_text("time_s,plasma_mM\n0,0\n60,3\n120,1\n")
        return [
            "kinetics",
            "tofts",
            "--concentration",
            conc,
            "--times",
            times,
            "--aif",
            str(aif),
            *out,
        ], "the AIF must cover every frame"
    if name == "nan_frame":
        frames = sitk.GetArrayFromImage(sitk.ReadImage(dwi)).astype(np.float32)
        frames[3] = np.nan
        path = _write4d(frames, folder / "nan.nrrd")
        return [
            "kinetics",
            "adc",
            "--dwi",
            path,
            "--bvalues",
            bval,
            *out,
        ], "frame(s) [3] contain only NaN"
    if name == "output_is_input":
        return [
            "kinetics",
            "fcf",
            "--dwi",
            dwi,
            "--bvalues",
            bval,
            "--mask",
            mask,
            "-o",
            str(case["folder"] / "dwi.nii.gz"),
        ], "not a folder"
    raise AssertionError(name)


BAD_INPUTS = [
    "bvalue_count",
    "time_count",
    "one_distinct_bvalue",
    "unsorted_times",
    "duplicate_times",
    "all_nonpositive_signal",
    "image_3d",
    "empty_mask",
    "mask_not_overlapping",
    "aif_shorter",
    "nan_frame",
    "output_is_input",
]


@pytest.mark.parametrize("name", BAD_INPUTS)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(case, tmp_path, capsys, name):
    argv, fragment = _bad(case, tmp_path, name)
    code, err = run(argv, capsys)  # without --quiet: no progress may come before the error
    assert code == 2
    assert len(err) == 1, err
    assert err[0].startswith("primage: error:") and fragment in err[0], err[0]
    out = tmp_path / "out"
    assert not out.exists() or not any(out.iterdir())


def test_partly_nonpositive_and_nan_voxels_are_left_out_with_a_warning(case, tmp_path, capsys):
    frames = sitk.GetArrayFromImage(sitk.ReadImage(case["dwi"])).astype(np.float32)
    frames[5, 0, 0, 0] = 0.0  # one voxel with a zero signal at b = 600
    frames[2, 1, 2, 3] = np.nan  # one voxel with a NaN
    path = _write4d(frames, tmp_path / "holes.nrrd")
    code, err = run(
        [
            "kinetics",
            "adc",
            "--dwi",
            path,
            "--bvalues",
            case["bval"],
            "-o",
            str(tmp_path / "o"),
            "-q",
        ],
        capsys,
    )
    assert code == 0
    assert len(err) == 2 and all(line.startswith("primage: warning:") for line in err), err
    adc = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "o" / "adc.nii.gz")))
    assert adc[0, 0, 0] == 0.0 and adc[1, 2, 3] == 0.0 and adc[2, 3, 3] > 0
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["voxels_not_fitted"] == 1 and summary["voxels_excluded_nonfinite"] == 1


def test_mask_on_another_grid_is_resampled_with_a_warning(case, tmp_path, capsys):
    fine = np.zeros((6, 12, 16), np.uint8)
    fine[:, 2:10, 2:14] = 1
    path = _write3d(
        fine, tmp_path / "fine_mask.nii.gz", spacing=(1.0, 1.0, 2.5), origin=(9.5, -4.5, 0.75)
    )
    code, err = run(
        [
            "kinetics",
            "adc",
            "--dwi",
            case["dwi"],
            "--bvalues",
            case["bval"],
            "--mask",
            path,
            "-o",
            str(tmp_path / "o"),
            "-q",
        ],
        capsys,
    )
    assert code == 0
    assert len(err) == 1 and "resampled to the image grid" in err[0]
