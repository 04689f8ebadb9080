"""`primage radiomics extract` and the extraction engine: equality with pyradiomics, bad input."""

import csv
import dataclasses
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import radiomics
import SimpleITK as sitk
from _primage_images import image_from_array
from _radiomics_data import label_array, textured_image, write_case
from radiomics.featureextractor import RadiomicsFeatureExtractor

from primage.cli import main
from primage.errors import PrimageInputError
from primage.radiomics.extraction import (
    Region,
    _Scheduler,
    build_tasks,
    estimated_cost,
    extract,
    perturb,
    result_rows,
    run_tasks,
)
from primage.radiomics.params import load_params

radiomics.setVerbosity(logging.CRITICAL + 1)
# pykwalify (pyradiomics' parameter validation) uses a deprecated importlib API.
pytestmark = pytest.mark.filterwarnings("ignore:the load_module:DeprecationWarning")


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    return write_case(tmp_path_factory.mktemp("case"))


def _read(path):
    with open(path, newline="") as stream:
        return list(csv.DictReader(stream))


def _run(argv, capsys):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.err


def _refused(code, err, folder):
    """Exit 2, one clear line on stderr, no traceback, nothing written."""
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("primage: error:"), err
    assert "Traceback" not in err
    assert not folder.exists() or list(folder.iterdir()) == []
    return lines[0]


def test_cli_equals_pyradiomics_execute(case, tmp_path, capsys):
    """Every value equals RadiomicsFeatureExtractor(params).execute(image, mask, label=N)."""
    output = tmp_path / "out" / "features.csv"
    code, err = _run(
        [
            "radiomics", "extract", "--image", str(case["t2w"]), "--image", f"CT={case['ct']}",
            "--mask", str(case["labels"]), "--label", "1", "--label", "2",
            "--params", str(case["params"]), "--output", str(output), "--quiet",
        ],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    rows = _read(output)
    assert [(r["image"], r["label"]) for r in rows] == [
        ("t2w", "1"), ("t2w", "2"), ("CT", "1"), ("CT", "2")
    ]  # fmt: skip
    assert list(rows[0])[:2] == ["image", "label"]
    extractor = RadiomicsFeatureExtractor(str(case["params"]))
    for row in rows:
        image = case["t2w"] if row["image"] == "t2w" else case["ct"]
        expected = extractor.execute(str(image), str(case["labels"]), label=int(row["label"]))
        features = {k: float(v) for k, v in expected.items() if not k.startswith("diagnostics")}
        assert len(features) == 14 + 18 + 3 + 2
        for name, value in features.items():
            assert float(row[name]) == value, (row["image"], row["label"], name)
        assert row["error"] == ""
    side = _read(tmp_path / "out" / "features.diagnostics.csv")
    assert len(side) == 4 and side[0]["diagnostics_Versions_PyRadiomics"]
    assert side[0]["diagnostics_primage_voxels"] == str(int((label_array() == 1).sum()))


def test_all_labels_parallel_equals_serial(case):
    parameters = load_params(params_file=case["params"])
    images = {"t2w": str(case["t2w"])}
    serial = extract(images, str(case["labels"]), parameters=parameters, workers=1)
    parallel = extract(images, str(case["labels"]), parameters=parameters, workers=2)
    assert [r.task.region_name for r in serial] == ["1", "2", "5", "7"]
    assert [r.features for r in serial] == [r.features for r in parallel]
    assert [r.error for r in serial] == [r.error for r in parallel]
    assert "single voxel" in serial[3].error  # label 7: the other rows are still computed
    assert all(r.ok for r in serial[:3])


def test_progress_reports_every_pair(case):
    reports = []
    extract(
        {"a": str(case["t2w"]), "b": str(case["ct"])},
        str(case["labels"]),
        labels=[1, 2],
        parameters=load_params(params_file=case["params"]),
        workers=1,
        progress=lambda fraction, message: reports.append((fraction, message)),
    )
    assert [f for f, _ in reports] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert reports[-1][1] == "4/4 b x 2"


def test_diagnostics_modes(case, tmp_path, capsys):
    base = ["radiomics", "extract", "--image", str(case["t2w"]), "--mask", str(case["labels"])]
    base += ["--label", "1", "--params", str(case["params"]), "--quiet", "--workers", "1"]
    code, _ = _run([*base, "--output", str(tmp_path / "c.csv"), "--diagnostics", "columns"], capsys)
    assert code == 0
    row = _read(tmp_path / "c.csv")[0]
    assert "diagnostics_primage_settings_hash" in row and "original_firstorder_Mean" in row
    code, _ = _run([*base, "--output", str(tmp_path / "n.csv"), "--diagnostics", "none"], capsys)
    assert code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.csv", "n.csv"]
    assert not any(k.startswith("diagnostics") for k in _read(tmp_path / "n.csv")[0])


def test_preset_with_modalities(case):
    """The primage preset: CT by its name gets 25 HU bins without normalisation."""
    results = extract(
        {"T2w": str(case["t2w"]), "CT": str(case["ct"])},
        str(case["labels"]),
        labels=[2],
        parameters=load_params("primage"),
        workers=1,
    )
    t2w, ct = results
    assert len(t2w.features) == 107 and len(ct.features) == 107
    assert ct.diagnostics["diagnostics_primage_modality"] == "ct"
    assert '"binWidth": 25' in ct.diagnostics["diagnostics_Configuration_Settings"]
    assert '"normalize": false' in ct.diagnostics["diagnostics_Configuration_Settings"]
    assert '"normalize": true' in t2w.diagnostics["diagnostics_Configuration_Settings"]


def test_force2d_for_planar_images(tmp_path):
    """A planar (one-slice) image named MIBG: 2D extraction with 2D shape features."""
    rng = np.random.default_rng(3)
    counts = rng.poisson(50.0, (1, 64, 64)).astype(np.float32)
    counts[0, 20:40, 25:45] += 200.0
    labels = np.zeros((1, 64, 64), np.uint8)
    labels[0, 18:42, 22:48] = 1
    image = image_from_array(counts, spacing=(2.2, 2.2, 1.0), direction=(1, 0, 0, 0, 1, 0, 0, 0, 1))
    mask = image_from_array(labels, spacing=(2.2, 2.2, 1.0), direction=(1, 0, 0, 0, 1, 0, 0, 0, 1))
    parameters = load_params("primage")
    (result,) = extract({"MIBG": image}, mask, parameters=parameters, workers=1)
    assert result.ok, result.error
    assert not any(name.startswith("original_shape_") for name in result.features)
    direct = RadiomicsFeatureExtractor(parameters.for_modality("mibg")).execute(
        image, mask, label=1
    )
    for name, value in result.features.items():
        assert value == float(direct[name]), name
    # The region's area in mm^2: 24 x 26 pixels of 2.2 x 2.2 mm.
    assert result.features["original_shape2D_PixelSurface"] == pytest.approx(24 * 26 * 2.2 * 2.2)


def test_mask_on_another_grid_is_resampled_nearest_neighbour(case, tmp_path):
    labels = sitk.ReadImage(str(case["labels"]))
    finer = sitk.Resample(
        labels,
        [s * 2 for s in labels.GetSize()],
        sitk.Transform(),
        sitk.sitkNearestNeighbor,
        labels.GetOrigin(),
        [s / 2 for s in labels.GetSpacing()],
        labels.GetDirection(),
        0,
        labels.GetPixelID(),
    )
    path = tmp_path / "fine.nii.gz"
    sitk.WriteImage(finer, str(path))
    parameters = load_params(params_file=case["params"])
    with pytest.warns(UserWarning, match="nearest-neighbour"):
        (moved,) = extract(
            {"t2w": str(case["t2w"])}, str(path), labels=[2], parameters=parameters, workers=1
        )
    (same,) = extract(
        {"t2w": str(case["t2w"])}, str(case["labels"]), labels=[2], parameters=parameters, workers=1
    )
    assert moved.diagnostics["diagnostics_primage_mask_resampled"] == "yes"
    # Labels are kept exactly (no blending): the same voxels as the original mask.
    assert moved.features == same.features


def test_perturbations_change_the_region_as_documented():
    labels = np.zeros((12, 12, 12), np.uint8)
    labels[3:9, 3:9, 3:9] = 4
    mask = image_from_array(labels)
    image = image_from_array(textured_image((12, 12, 12)))
    count = lambda m: int((sitk.GetArrayFromImage(m) == 4).sum())  # noqa: E731
    assert count(perturb(image, mask, 4, "erode")[1]) == 4**3
    assert count(perturb(image, mask, 4, "dilate")[1]) == 6**3 + 6 * 6**2  # face neighbours
    moved = sitk.GetArrayFromImage(perturb(image, mask, 4, "translate")[1]) == 4
    assert moved.sum() == 6**3 and moved[3:9, 4:10, 4:10].all()
    noisy, same = perturb(image, mask, 4, "noise", seed=1)
    difference = sitk.GetArrayFromImage(noisy) - sitk.GetArrayFromImage(image)
    inside = labels == 4
    sd = sitk.GetArrayFromImage(image)[inside].std()
    assert difference.std() == pytest.approx(0.1 * sd, rel=0.1)
    assert count(same) == 6**3


# --- bad input: each gives exit code 2, one line, nothing written (or a row error) -------


def test_absent_label_is_a_row_error_or_a_refusal(case, tmp_path, capsys):
    output = tmp_path / "out" / "f.csv"
    base = ["radiomics", "extract", "--image", str(case["t2w"]), "--mask", str(case["labels"])]
    base += ["--params", str(case["params"]), "--output", str(output), "--quiet"]
    code, err = _run([*base, "--label", "1", "--label", "9"], capsys)
    assert code == 0
    assert err.startswith("primage: warning: 1 of 2") and "label 9" in err
    rows = _read(output)
    assert rows[0]["error"] == "" and "label 9 has no voxel" in rows[1]["error"]
    assert rows[1]["original_firstorder_Mean"] == ""
    output.unlink()
    (tmp_path / "out" / "f.diagnostics.csv").unlink()
    code, err = _run([*base, "--label", "9"], capsys)
    assert "nothing could be computed" in _refused(code, err, tmp_path / "out")


def test_single_voxel_region(case, tmp_path, capsys):
    folder = tmp_path / "out"
    code, err = _run(
        ["radiomics", "extract", "--image", str(case["t2w"]), "--mask", str(case["labels"]),
         "--label", "7", "--params", str(case["params"]), "--output", str(folder / "f.csv"), "-q"],
        capsys,
    )  # fmt: skip
    assert "single voxel" in _refused(code, err, folder)


def test_empty_mask_is_refused(case, tmp_path, capsys):
    empty = tmp_path / "empty.nii.gz"
    sitk.WriteImage(sitk.Cast(sitk.ReadImage(str(case["labels"])) * 0, sitk.sitkUInt8), str(empty))
    folder = tmp_path / "out"
    code, err = _run(
        ["radiomics", "extract", "--image", str(case["t2w"]), "--mask", str(empty),
         "--output", str(folder / "f.csv")],
        capsys,
    )  # fmt: skip
    assert "the mask is empty" in _refused(code, err, folder)


def test_mask_that_is_not_integer_valued(case, tmp_path, capsys):
    probability = sitk.Cast(sitk.ReadImage(str(case["labels"])), sitk.sitkFloat32) * 0.37
    path = tmp_path / "probability.nii.gz"
    sitk.WriteImage(probability, str(path))
    folder = tmp_path / "out"
    code, err = _run(
        ["radiomics", "extract", "--image", str(case["t2w"]), "--mask", str(path),
         "--output", str(folder / "f.csv")],
        capsys,
    )  # fmt: skip
    assert "not integer-valued" in _refused(code, err, folder)


def test_mask_and_image_that_do_not_overlap(case, tmp_path, capsys):
    elsewhere = sitk.ReadImage(str(case["labels"]))
    elsewhere.SetOrigin([o + 500.0 for o in elsewhere.GetOrigin()])
    path = tmp_path / "elsewhere.nii.gz"
    sitk.WriteImage(elsewhere, str(path))
    folder = tmp_path / "out"
    code, err = _run(
        ["radiomics", "extract", "--image", str(case["t2w"]), "--mask", str(path), "--label", "1",
         "--params", str(case["params"]), "--output", str(folder / "f.csv"), "--quiet"],
        capsys,
    )  # fmt: skip
    err = err.replace("primage: warning: the mask is on another voxel grid", "")
    lines = [line for line in err.splitlines() if line.startswith("primage: error")]
    assert len(lines) == 1 and "does not overlap" in lines[0]
    assert code == 2 and not folder.exists()


def test_4d_image_is_refused(case, tmp_path, capsys):
    volume = sitk.ReadImage(str(case["t2w"]))
    series = sitk.JoinSeries([volume, volume])
    path = tmp_path / "series.nii.gz"
    sitk.WriteImage(series, str(path))
    folder = tmp_path / "out"
    code, err = _run(
        ["radiomics", "extract", "--image", str(path), "--mask", str(case["labels"]),
         "--output", str(folder / "f.csv")],
        capsys,
    )  # fmt: skip
    assert "4D series" in _refused(code, err, folder)


def test_nan_voxels_inside_the_mask(case, tmp_path, capsys):
    values = textured_image()
    values[12, 16, 10] = np.nan  # inside the sphere (label 1), outside the box (label 2)
    # MetaImage keeps NaN; ITK's NIfTI reader would turn it into 0.
    path = tmp_path / "nan.mha"
    sitk.WriteImage(image_from_array(values), str(path))
    parameters = load_params(params_file=case["params"])
    sphere, box = extract(
        {"nan": str(path)}, str(case["labels"]), labels=[1, 2], parameters=parameters, workers=1
    )
    assert "1 NaN or infinite voxels" in sphere.error and box.ok
    folder = tmp_path / "out"
    code, err = _run(
        ["radiomics", "extract", "--image", str(path), "--mask", str(case["labels"]), "--label", "1",
         "--params", str(case["params"]), "--output", str(folder / "f.csv"), "--quiet"],
        capsys,
    )  # fmt: skip
    assert "NaN" in _refused(code, err, folder)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("setting:\n  binwidth: 25\n", "unknown key 'binwidth'"),
        ("setting:\n  binWidth: wide\n", "setting.binWidth = 'wide' has the wrong type"),
    ],
)
def test_parameter_file_with_unknown_key_or_wrong_type(case, tmp_path, capsys, text, message):
    params = tmp_path / "bad.yaml"
    params.write_text(text)
    folder = tmp_path / "out"
    code, err = _run(
        ["radiomics", "extract", "--image", str(case["t2w"]), "--mask", str(case["labels"]),
         "--params", str(params), "--output", str(folder / "f.csv")],
        capsys,
    )  # fmt: skip
    assert message in _refused(code, err, folder)


def test_other_refusals(case, tmp_path, capsys):
    folder = tmp_path / "out"
    base = [
        "radiomics",
        "extract",
        "--mask",
        str(case["labels"]),
        "--output",
        str(folder / "f.csv"),
    ]
    for extra, message in [
        (["--image", str(case["t2w"]), "--label", "0"], "labels must be > 0"),
        (["--image", str(case["t2w"]), "--image", str(case["t2w"])], "two images are called 't2w'"),
        (["--image", str(case["t2w"]), "--workers", "0"], "--workers must be at least 1"),
        (["--image", str(case["t2w"]), "--modality", "t2w"], "--modality expects NAME=VALUE"),
        (["--image", str(case["t2w"]), "--modality", "t2w=pet"], "unknown modality 'pet'"),
        (["--image", str(tmp_path / "missing.nii.gz")], "does not exist"),
    ]:
        code, err = _run(base + extra, capsys)
        assert message in _refused(code, err, folder)
    code, err = _run(
        ["radiomics", "extract", "--image", str(case["t2w"]), "--mask", str(case["labels"]),
         "--output", str(case["labels"])],
        capsys,
    )  # fmt: skip
    assert "is also an input" in _refused(code, err, folder)


def test_command_line_in_a_subprocess(case, tmp_path):
    """The console entry: exit 2 with one line and no traceback, and --help."""
    folder = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "primage", "radiomics", "extract", "--image", str(case["t2w"]),
         "--mask", str(case["labels"]), "--label", "7", "--output", str(folder / "f.csv")],
        capture_output=True, text=True, timeout=120, cwd=Path(__file__).resolve().parents[1],
    )  # fmt: skip
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("primage: error")]
    assert len(errors) == 1 and "Traceback" not in result.stderr
    assert not folder.exists()
    for action in ("extract", "robustness", "harmonize"):
        helped = subprocess.run(
            [sys.executable, "-m", "primage", "radiomics", action, "--help"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert helped.returncode == 0 and "--output" in helped.stdout


def test_result_rows_layout():
    with pytest.raises(PrimageInputError, match="diagnostics must be"):
        result_rows([], diagnostics="side")


def test_demo_patient_report(tmp_path):
    """The demo step on a small digital patient: features and ground-truth checks."""
    from primage.radiomics.demo import run_demo
    from primage.synthetic import make_digital_patient
    from primage.synthetic import write_case as write_patient

    patient = make_digital_patient(0, size=(48, 48, 20), spacing=(3.0, 3.0, 8.0))
    write_patient(patient, tmp_path / "case")
    lines = run_demo(tmp_path / "case", tmp_path / "demo")
    text = "\n".join(lines)
    assert text.startswith("## Radiomics")
    assert "| ct |" in text and "| t2w |" in text and "error" not in text
    rows = _read(tmp_path / "demo" / "radiomics_features.csv")
    assert [r["image"] for r in rows] == ["t2w", "t1w", "ct"]
    volume_line = next(line for line in lines if line.startswith("- Tumour volume"))
    deviation = float(volume_line.rsplit(":", 1)[1].strip().rstrip("%.").strip())
    assert abs(deviation) < 15.0, volume_line
    with pytest.raises(PrimageInputError, match="lacks"):
        run_demo(tmp_path / "nothing", tmp_path / "demo2")


def test_filtered_image_types_equal_pyradiomics(case, tmp_path):
    """Wavelet, LoG, square, square root, logarithm, exponential and gradient images."""
    params = tmp_path / "filters.yaml"
    params.write_text(
        "setting:\n  binWidth: 10\nimageType:\n  Original: {}\n  Wavelet: {}\n"
        "  LoG: {sigma: [1.0, 2.0]}\n  Square: {}\n  SquareRoot: {}\n  Logarithm: {}\n"
        "  Exponential: {}\n  Gradient: {}\nfeatureClass:\n  firstorder: [Mean, Entropy]\n"
    )
    (result,) = extract(
        {"t2w": str(case["t2w"])},
        str(case["labels"]),
        labels=[2],
        parameters=load_params(params_file=params),
        workers=1,
    )
    assert result.ok and len(result.features) == 2 * (1 + 8 + 2 + 5)
    direct = RadiomicsFeatureExtractor(str(params)).execute(
        str(case["t2w"]), str(case["labels"]), label=2
    )
    assert result.features == {k: float(v) for k, v in direct.items() if not k.startswith("diag")}


def test_estimated_cost_counts_the_grid_pyradiomics_computes_on(case, tmp_path):
    """Bounding box voxels (on the resampled grid plus padding when resampling) x images."""
    fast = load_params(params_file=case["params"])
    tasks = build_tasks(
        {"t2w": str(case["t2w"])},
        [Region(str(label), str(case["labels"]), label) for label in (1, 2, 5, 9)],
        fast,
    )
    # label 1: sphere of radius 6 (13^3 box), 2: 16 x 20 x 8 box, 5: 4^3 cube, 9: absent.
    assert [estimated_cost(task) for task in tasks] == [13**3, 16 * 20 * 8, 4**3, 0.0]
    missing = dataclasses.replace(tasks[0], mask=str(tmp_path / "nothing.nii.gz"))
    assert estimated_cost(missing) == 0.0  # the task itself says why when it runs
    binarized = dataclasses.replace(tasks[0], binarize=True, label=1)
    # Every non-zero voxel: from the cube's corner (2, 2, 2) to the single voxel (22, 30, 30).
    assert estimated_cost(binarized) == 21 * 29 * 29
    resampling = dataclasses.replace(
        tasks[1],
        params={
            "setting": {"resampledPixelSpacing": [0.5, 0, 2.0], "interpolator": "sitkBSpline"},
            "imageType": {"Original": {}, "Wavelet": {}, "LoG": {"sigma": [1.0, 2.0]}},
        },
    )
    spacing = sitk.ReadImage(str(case["labels"])).GetSpacing()
    # x: 8 voxels to 0.5 mm, y: kept (0), z: 16 voxels to 2 mm; 5 voxels padding each side.
    expected = (8 * spacing[0] / 0.5 + 10) * (20 + 10) * (16 * spacing[2] / 2.0 + 10)
    assert estimated_cost(resampling) == pytest.approx(expected * (1 + 8 + 2))


def test_sorted_parallel_run_equals_plain_pyradiomics(case, tmp_path):
    """Two parameter sets interleaved, run largest first on 2 processes: every row equals
    RadiomicsFeatureExtractor(params).execute, in the order the tasks were given."""
    fine = tmp_path / "fine.yaml"
    fine.write_text(case["params"].read_text().replace("binWidth: 10", "binWidth: 4"))
    tasks = []
    for params_file in (case["params"], fine):
        parameters = load_params(params_file=params_file)
        regions = [Region(str(label), str(case["labels"]), label) for label in (5, 1, 2)]
        tasks += build_tasks({params_file.stem: str(case["ct"])}, regions, parameters)
    scheduler = _Scheduler(tasks, 1, lambda fraction, message: None, None)
    scheduler._sort()
    # Largest region first (2, then 1, then 5), the given order between equal costs.
    assert scheduler.order == [2, 5, 1, 4, 0, 3]
    results = run_tasks(tasks, workers=2)
    assert [(r.task.image_name, r.task.region_name) for r in results] == [
        (t.image_name, t.region_name) for t in tasks
    ]
    for task, result in zip(tasks, results, strict=True):
        expected = RadiomicsFeatureExtractor(task.params).execute(
            str(case["ct"]), str(case["labels"]), label=task.label
        )
        assert result.ok, result.error
        assert result.features == {
            k: float(v) for k, v in expected.items() if not k.startswith("diagnostics")
        }
    assert results[0].features != results[3].features  # the two parameter sets differ
