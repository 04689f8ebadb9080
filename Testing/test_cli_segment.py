"""``primage segment``: compare, agreement, postprocess, and bad input (exit 2, no output)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from primage.cli import main
from primage.segmentation.metrics import METRIC_NAMES


def _write(path, array, spacing=(0.8, 0.8, 3.0), pixel=np.uint8):
    image = sitk.GetImageFromArray(np.asarray(array, pixel))
    image.SetSpacing(spacing)
    sitk.WriteImage(image, str(path))
    return str(path)


def _blob(shift=0):
    array = np.zeros((10, 30, 30), np.uint8)
    array[3:7, 8 + shift : 20 + shift, 9:21] = 1
    array[4:6, 12 + shift : 16 + shift, 12:16] = 2
    return array


@pytest.fixture
def masks(tmp_path):
    return [_write(tmp_path / f"obs{i}.nii.gz", _blob(i)) for i in range(3)]


def _run(argv, capsys):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.err


def test_compare_writes_metrics_per_label(tmp_path, masks, capsys):
    output = tmp_path / "metrics.json"
    code, err = _run(
        ["segment", "compare", "-r", masks[0], "-t", masks[1], "-o", str(output)], capsys
    )
    assert code == 0, err
    record = json.loads(output.read_text())
    assert [row["label"] for row in record["labels"]] == [1, 2]
    assert set(METRIC_NAMES) <= set(record["labels"][0])
    assert record["labels"][0]["hausdorff"] == pytest.approx(0.8)
    code, _ = _run(
        ["segment", "compare", "-r", masks[0], "-t", masks[1], "--label", "2", "-o", str(output)],
        capsys,
    )
    assert code == 0 and [r["label"] for r in json.loads(output.read_text())["labels"]] == [2]
    code, _ = _run(
        [
            "segment",
            "compare",
            "-r",
            masks[0],
            "-t",
            masks[1],
            "--surface",
            "corner",
            "-o",
            str(output),
        ],
        capsys,
    )
    record = json.loads(output.read_text())
    assert code == 0 and record["surface_definition"].startswith("corner")
    assert record["labels"][0]["hausdorff"] == pytest.approx(0.8)


def test_compare_allow_empty_writes_null_with_reason(tmp_path, masks, capsys):
    empty = _write(tmp_path / "empty.nii.gz", np.zeros((10, 30, 30)))
    output = tmp_path / "metrics.json"
    code, err = _run(
        ["segment", "compare", "-r", masks[0], "-t", empty, "--allow-empty", "-o", str(output)],
        capsys,
    )
    assert code == 0, err
    row = json.loads(output.read_text())["labels"][0]
    assert row["hausdorff"] is None and row["fnr"] == 1.0
    assert "test mask is empty" in " ".join(row["notes"])


def test_agreement_writes_pairwise_and_staple(tmp_path, masks, capsys):
    out = tmp_path / "agreement"
    code, err = _run(
        ["segment", "agreement", *sum((["--mask", m] for m in masks), []), "-o", str(out), "-q"],
        capsys,
    )
    assert code == 0, err
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "agreement.json",
        "pairwise.csv",
        "staple_consensus.nii.gz",
        "staple_observers.csv",
        "staple_probability_label1.nii.gz",
        "staple_probability_label2.nii.gz",
    ]
    record = json.loads((out / "agreement.json").read_text())
    assert len(record["pairwise"]) == 6  # 3 pairs x 2 labels
    assert len(record["staple"]["observers"]) == 6
    assert (
        (out / "pairwise.csv")
        .read_text()
        .splitlines()[0]
        .startswith("observer_a,observer_b,label,dice")
    )
    consensus = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "staple_consensus.nii.gz")))
    assert np.array_equal(consensus, _blob(1))  # the middle observer is the majority


def test_agreement_of_two_masks_has_no_staple(tmp_path, masks, capsys):
    out = tmp_path / "two"
    code, _ = _run(
        ["segment", "agreement", "--mask", masks[0], "--mask", masks[1], "-o", str(out)], capsys
    )
    assert code == 0
    assert json.loads((out / "agreement.json").read_text())["staple"] is None


def test_postprocess(tmp_path, capsys):
    array = _blob()
    array[8, 2, 2] = 1  # island
    seg = _write(tmp_path / "seg.nii.gz", array)
    out = tmp_path / "post.nii.gz"
    code, err = _run(
        ["segment", "postprocess", "-i", seg, "-o", str(out), "--steps", "largest,fill,close:1"],
        capsys,
    )
    assert code == 0, err
    result = sitk.GetArrayFromImage(sitk.ReadImage(str(out)))
    assert result[8, 2, 2] == 0 and (result == 2).sum() == (array == 2).sum()
    assert json.loads((tmp_path / "post.json").read_text())["steps"][0]["step"] == "largest"


BAD = {
    "different grids": lambda d, m: [
        "compare",
        "-r",
        m[0],
        "-t",
        _write(d / "g.nii.gz", _blob(), spacing=(1, 1, 1)),
    ],
    "empty reference": lambda d, m: [
        "compare",
        "-r",
        _write(d / "e.nii.gz", np.zeros((10, 30, 30))),
        "-t",
        m[0],
    ],
    "empty test": lambda d, m: [
        "compare",
        "-r",
        m[0],
        "-t",
        _write(d / "e.nii.gz", np.zeros((10, 30, 30))),
    ],
    "label absent": lambda d, m: ["compare", "-r", m[0], "-t", m[1], "--label", "7"],
    "non-integer": lambda d, m: [
        "compare",
        "-r",
        m[0],
        "-t",
        _write(d / "f.nrrd", _blob() * 0.5, pixel=np.float32),
    ],
    "missing file": lambda d, m: ["compare", "-r", m[0], "-t", str(d / "nope.nii.gz")],
    "output is input": lambda d, m: [
        "compare",
        "-r",
        m[0],
        "-t",
        m[1],
        "--label",
        "1",
        "--label",
        "2",
    ],
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_exits_2_with_one_line_and_no_output(tmp_path, masks, capsys, case):
    inputs = tmp_path / "in"
    inputs.mkdir()
    argv = ["segment", *BAD[case](inputs, masks)]
    output = tmp_path / "out" / "metrics.json"
    argv += ["-o", masks[1] if case == "output is input" else str(output)]
    before = {p.name for p in tmp_path.rglob("*")}
    code, err = _run(argv, capsys)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("primage: error: ") and "Traceback" not in err
    assert {p.name for p in tmp_path.rglob("*")} == before


@pytest.mark.parametrize(
    "argv",
    [
        ["agreement", "--mask", "A"],
        ["postprocess", "-i", "IN", "-o", "OUT.nii.gz", "--steps", "open:3"],
        ["agreement", "--mask", "A", "--mask", "B", "--name", "x"],
    ],
)
def test_bad_agreement_and_postprocess_input(tmp_path, masks, capsys, argv):
    argv = [a.replace("IN", masks[0]).replace("OUT", str(tmp_path / "o")) for a in argv]
    code, err = _run(
        ["segment", *argv, *(["-o", str(tmp_path / "d")] if argv[0] == "agreement" else [])], capsys
    )
    assert code == 2 and err.count("\n") == 1
    assert not (tmp_path / "d").exists() and not (tmp_path / "o.nii.gz").exists()


def test_help_through_a_subprocess():
    result = subprocess.run(
        [sys.executable, "-m", "primage", "segment", "compare", "--help"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0 and "--reference" in result.stdout
